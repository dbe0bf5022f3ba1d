//! How kiln reports an error to the user: one line on stderr. Below every command module, so the
//! CLI and the runner's monitor report the same way.

/// Prints an error as one line, `kiln: outer: inner: root cause`, the way ripgrep does: what
/// failed, then why.
pub fn report_error(err: &anyhow::Error) {
    let mut line = String::from("kiln: ");
    for (i, cause) in err.chain().enumerate() {
        if i > 0 {
            line.push_str(": ");
        }
        line.push_str(&cause.to_string());
    }
    eprintln!("{line}");
}
