//! The binary starts and describes itself.
mod common;

#[test]
fn help_lists_usage() {
    let out = common::kiln_command().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: kiln"));
}

#[test]
fn busybox_fixture_has_a_shell() {
    let root = common::busybox_rootfs();
    assert!(root.join("bin/sh").symlink_metadata().is_ok());
    assert!(common::busybox_tar().metadata().unwrap().len() > 1_000_000);
}
