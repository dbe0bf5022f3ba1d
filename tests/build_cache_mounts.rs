//! `RUN --mount=type=cache` sharing modes across steps that run at the same time.

mod build_support;
mod common;

use build_support::*;

/// Two stages run at once, each waits for the other through a shared cache mount, then lists its
/// `sharing=private` cache: each must see only its own marker. A third step, later, gets the
/// persistent instance back and sees what the first user of it left.
#[test]
fn private_cache_mounts_are_not_shared_by_concurrent_steps() {
    let root = root_with_busybox();
    let step = |me: &str, other: &str| {
        format!(
            "FROM busybox:latest AS {me}\n\
             RUN --mount=type=cache,id=rendezvous,target=/rv \
                 --mount=type=cache,id=priv,sharing=private,target=/c \
                 sh -c 'touch /c/{me} /rv/{me}; i=0; \
                 while [ ! -e /rv/{other} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
                 ls /c > /seen-{me}'\n"
        )
    };
    let dockerfile = format!(
        "{}{}FROM busybox:latest\n\
         COPY --from=a /seen-a /seen-a\nCOPY --from=b /seen-b /seen-b\n\
         RUN --mount=type=cache,id=priv,sharing=private,target=/c ls /c > /seen-later\n",
        step("a", "b"),
        step("b", "a")
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    build_ok(
        root.path(),
        &[
            "-t",
            "priv",
            "--max-parallelism",
            "2",
            ctx.path().to_str().unwrap(),
        ],
    );
    let fs = rootfs_of(root.path(), "priv");
    let seen = |f: &str| std::fs::read_to_string(fs.path().join(f)).unwrap();
    let (a, b) = (seen("seen-a"), seen("seen-b"));
    assert!(
        a.split_whitespace().eq(["a"]) && b.split_whitespace().eq(["b"]),
        "a saw {a:?}, b saw {b:?}"
    );
    let later = seen("seen-later");
    assert!(
        later.split_whitespace().eq(["a"]) || later.split_whitespace().eq(["b"]),
        "the later step saw {later:?}"
    );
}
