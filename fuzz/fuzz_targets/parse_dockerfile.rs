//! Fuzzes the Dockerfile front end: the line-level parser, the typed conversion, the dump
//! printer, stage splitting with variable expansion, the linter, and .dockerignore parsing.
//! Any panic, overflow or hang is a bug.
//!
//! Run (from the repository root; needs a nightly toolchain or RUSTC_BOOTSTRAP=1 on stable):
//!
//! ```sh
//! cargo install cargo-fuzz             # once
//! cd fuzz
//! mkdir -p corpus/parse_dockerfile
//! cp ../../shared/conformance/buildkit-parser/testfiles/*/Dockerfile corpus/parse_dockerfile/ 2>/dev/null; \
//!   for d in ../../shared/conformance/buildkit-parser/testfiles/*/; do \
//!     cp "$d/Dockerfile" "corpus/parse_dockerfile/$(basename "$d")"; done
//! cargo +nightly fuzz run parse_dockerfile corpus/parse_dockerfile -- -max_total_time=600 -jobs=1
//! ```
//!
//! Crashers land in `fuzz/artifacts/parse_dockerfile/`; add each as a regression test in
//! tests/dockerfile_fuzz_regressions.rs.
#![no_main]

use std::collections::HashMap;

use kiln::dockerfile::{self, lint, raw, DockerIgnore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(r) = raw::parse_raw(&text) {
        let _ = r.dump();
        if let Ok(df) = dockerfile::instructions::typed(&text, r.clone()) {
            let _ = lint::check(&df, &r, None);
            if let Ok(st) = dockerfile::stages(&df, &HashMap::new()) {
                for stage in &st.stages {
                    let mut vars = st.vars(&[]);
                    for step in &stage.instructions {
                        let _ = vars.apply(&step.instruction);
                    }
                }
            }
        }
    } else if let Err(e) = raw::parse_raw(&text) {
        let _ = e.render("Dockerfile");
    }
    if let Ok(di) = DockerIgnore::parse(&text) {
        for line in text.lines().take(8) {
            let _ = di.is_excluded(line);
            let _ = di.can_prune_dir(line);
        }
    }
    let _ = dockerfile::expand_words(&text, &|k| (k.len() % 2 == 0).then(|| k.to_string()), '\\');
});
