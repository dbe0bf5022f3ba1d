//! .dockerignore against the examples in Docker's documentation, the places where docker differs
//! from gitignore, the Dockerfile-specific ignore file, and subtree pruning.

use kiln::dockerfile::DockerIgnore;

fn di(lines: &[&str]) -> DockerIgnore {
    DockerIgnore::from_patterns(lines).unwrap()
}

#[test]
fn docs_example_temp_patterns() {
    let d = DockerIgnore::parse("# comment\n*/temp*\n*/*/temp*\ntemp?\n").unwrap();
    // */temp*: names starting with temp in any immediate subdirectory of the root.
    assert!(d.is_excluded("somedir/temporary.txt"));
    assert!(d.is_excluded("somedir/temp"));
    // */*/temp*: two levels below the root.
    assert!(d.is_excluded("somedir/subdir/temporary.txt"));
    // temp?: in the root, temp plus one character.
    assert!(d.is_excluded("tempa"));
    assert!(d.is_excluded("tempb"));
    assert!(!d.is_excluded("temp"));
    assert!(!d.is_excluded("temporary.txt"));
    assert!(!d.is_excluded("a/b/c/temporary.txt"));
    assert!(!d.is_excluded("# comment"));
}

#[test]
fn docs_example_root_relative() {
    // "/foo/bar and foo/bar both exclude a file or directory named bar in the foo subdirectory"
    for p in ["/foo/bar", "foo/bar", "./foo/bar/"] {
        let d = di(&[p]);
        assert!(d.is_excluded("foo/bar"), "{p}");
        assert!(d.is_excluded("foo/bar/inside.txt"), "{p}");
        assert!(!d.is_excluded("x/foo/bar"), "{p}");
        assert!(!d.is_excluded("foo"), "{p}");
    }
}

#[test]
fn docs_example_double_star() {
    let d = di(&["**/*.go"]);
    assert!(d.is_excluded("main.go"));
    assert!(d.is_excluded("cmd/kiln/main.go"));
    assert!(!d.is_excluded("main.rs"));
}

#[test]
fn docs_example_exceptions_last_match_wins() {
    let d = di(&["*.md", "!README.md"]);
    assert!(d.is_excluded("CHANGES.md"));
    assert!(!d.is_excluded("README.md"));

    let d = di(&["*.md", "!README*.md", "README-secret.md"]);
    assert!(d.is_excluded("README-secret.md"));
    assert!(!d.is_excluded("README-public.md"));
    assert!(d.is_excluded("other.md"));

    let d = di(&["*.md", "README-secret.md", "!README*.md"]);
    assert!(!d.is_excluded("README-secret.md"));
    assert!(!d.is_excluded("README.md"));
}

#[test]
fn docs_example_include_only_with_star_then_exceptions() {
    let d = di(&["*", "!src", "!Cargo.toml"]);
    assert!(!d.is_excluded("src/main.rs"));
    assert!(!d.is_excluded("Cargo.toml"));
    assert!(d.is_excluded("target/debug/kiln"));
    assert!(d.is_excluded(".git"));
}

#[test]
fn docs_example_cleaning() {
    // Leading/trailing white space and . / .. elements are cleaned away.
    let d = di(&["  ./build/../dist/  ", "# not a comment unless column 1"]);
    assert!(d.is_excluded("dist/app.js"));
    assert!(!d.is_excluded("build/x"));
    assert_eq!(d.patterns()[0], "dist");
}

#[test]
fn differs_from_gitignore() {
    // gitignore: a bare name matches at any depth. Docker: only at the root.
    let d = di(&["node_modules"]);
    assert!(d.is_excluded("node_modules/x/y.js"));
    assert!(!d.is_excluded("web/node_modules/x.js"));
    // gitignore: `*.log` matches at any depth. Docker: only in the root.
    let d = di(&["*.log"]);
    assert!(d.is_excluded("a.log"));
    assert!(!d.is_excluded("logs/a.log"));
    // A trailing slash does not mean "directories only" after cleaning.
    let d = di(&["cache/"]);
    assert!(d.is_excluded("cache"));
    // gitignore cannot re-include a file inside an excluded directory; docker can.
    let d = di(&["dir", "!dir/keep.txt"]);
    assert!(d.is_excluded("dir/other.txt"));
    assert!(!d.is_excluded("dir/keep.txt"));
}

#[test]
fn pruning_only_when_no_exception_can_reach_inside() {
    let d = di(&[
        "dir",
        "!dir/keep.txt",
        "node_modules",
        "**/*.tmp",
        "!src/**/important.tmp",
    ]);
    assert!(!d.can_prune_dir("dir"));
    assert!(d.can_prune_dir("node_modules"));
    assert!(!d.can_prune_dir("src"));
    // An exception with a leading ** can reach into any directory: never prune.
    let d = di(&["node_modules", "!**/important.tmp"]);
    assert!(!d.can_prune_dir("node_modules"));
    assert!(!d.is_excluded("node_modules/x/important.tmp"));
    let d = di(&["build", "!other/file"]);
    assert!(d.can_prune_dir("build"));
    assert!(d.can_prune_dir("build/sub"));
    let d = di(&["*", "!src/**"]);
    assert!(d.can_prune_dir("target"));
    assert!(!d.can_prune_dir("src"));
}

#[test]
fn load_prefers_the_dockerfile_specific_file() {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join(".dockerignore"), "from-context\n").unwrap();
    std::fs::create_dir(ctx.path().join("build")).unwrap();
    let df = ctx.path().join("build/app.Dockerfile");
    std::fs::write(&df, "FROM scratch\n").unwrap();

    let d = DockerIgnore::load(ctx.path(), Some(&df)).unwrap();
    assert!(d.is_excluded("from-context"));

    std::fs::write(
        ctx.path().join("build/app.Dockerfile.dockerignore"),
        "specific\n",
    )
    .unwrap();
    let d = DockerIgnore::load(ctx.path(), Some(&df)).unwrap();
    assert!(d.is_excluded("specific"));
    assert!(!d.is_excluded("from-context"));
    assert_eq!(
        d.source.as_deref(),
        Some(
            ctx.path()
                .join("build/app.Dockerfile.dockerignore")
                .as_path()
        )
    );

    let empty = tempfile::tempdir().unwrap();
    assert!(DockerIgnore::load(empty.path(), None).unwrap().is_empty());
}

#[test]
fn bad_patterns_are_errors() {
    assert!(DockerIgnore::parse("[oops\n")
        .unwrap_err()
        .contains("line 1"));
    assert!(DockerIgnore::parse("ok\n!\n").is_err());
}

/// A real walk over a directory tree with pruning gives the same set as checking every file.
#[test]
fn pruned_walk_matches_full_walk() {
    let ctx = tempfile::tempdir().unwrap();
    for f in [
        "src/main.rs",
        "src/gen/out.tmp",
        "src/gen/important.tmp",
        "node_modules/a/b/c.js",
        "dir/keep.txt",
        "dir/drop.txt",
        "README.md",
    ] {
        let p = ctx.path().join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "x").unwrap();
    }
    let d = di(&[
        "dir",
        "!dir/keep.txt",
        "node_modules",
        "**/*.tmp",
        "!src/**/important.tmp",
    ]);
    let rel = |p: &std::path::Path| {
        p.strip_prefix(ctx.path())
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let mut full: Vec<String> = walkdir::WalkDir::new(ctx.path())
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| rel(e.path()))
        .filter(|r| !d.is_excluded(r))
        .collect();
    let mut pruned_dirs = Vec::new();
    let mut pruned: Vec<String> = Vec::new();
    let mut it = walkdir::WalkDir::new(ctx.path()).min_depth(1).into_iter();
    while let Some(e) = it.next() {
        let e = e.unwrap();
        let r = rel(e.path());
        if e.file_type().is_dir() {
            if d.can_prune_dir(&r) {
                pruned_dirs.push(r);
                it.skip_current_dir();
            }
        } else if !d.is_excluded(&r) {
            pruned.push(r);
        }
    }
    full.sort();
    pruned.sort();
    assert_eq!(full, pruned);
    assert_eq!(pruned_dirs, vec!["node_modules"]);
    assert_eq!(
        full,
        vec![
            "README.md",
            "dir/keep.txt",
            "src/gen/important.tmp",
            "src/main.rs"
        ]
    );
}
