//! Times parsing a generated 10,000-line Dockerfile (typed parse, which includes the line-level
//! parse) and prints the median of 50 runs.
//!
//! Run: `cargo bench --bench parse` (release profile). Target: under 10 ms.

use std::time::{Duration, Instant};

/// A realistic mix: multi-stage, continuations with comments, heredocs, exec form, flags.
fn generate(lines: usize) -> String {
    let mut s = String::from("# syntax=docker/dockerfile:1\nARG BASE=debian:bookworm\n");
    let mut i = 0;
    while s.lines().count() < lines {
        i += 1;
        s.push_str(&format!(
            "FROM ${{BASE}} AS stage{i}\n\
             ARG VERSION={i}\n\
             ENV APP_HOME=/opt/app{i} PATH=/opt/app{i}/bin:$PATH\n\
             LABEL org.opencontainers.image.title=\"app {i}\" version=$VERSION\n\
             WORKDIR $APP_HOME\n\
             RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \\\n\
             \x20   apt-get update && \\\n\
             \x20   # a comment inside the continuation\n\
             \x20   apt-get install -y --no-install-recommends curl ca-certificates && \\\n\
             \x20   rm -rf /var/lib/apt/lists/*\n\
             COPY --chown=1000:1000 --chmod=755 src/ include/ ./\n\
             COPY <<EOF /etc/app.conf\n\
             name=app{i}\n\
             version=$VERSION\n\
             EOF\n\
             RUN [\"/bin/sh\", \"-c\", \"make -j4 all\"]\n\
             EXPOSE 8080/tcp 9090\n\
             HEALTHCHECK --interval=30s --timeout=3s CMD curl -f http://localhost:8080/ || exit 1\n\
             USER 1000:1000\n\
             ENTRYPOINT [\"/opt/app/bin/app\"]\n\
             CMD [\"--serve\"]\n\n"
        ));
    }
    s
}

fn main() {
    let text = generate(10_000);
    let line_count = text.lines().count();
    let mut times: Vec<Duration> = Vec::new();
    let mut instructions = 0;
    for _ in 0..50 {
        let start = Instant::now();
        let df = kiln::dockerfile::parse(&text).expect("generated Dockerfile parses");
        times.push(start.elapsed());
        instructions = df.instructions.len();
        std::hint::black_box(df);
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "parse: {line_count} lines, {instructions} instructions: median {:.3} ms (min {:.3} ms, max {:.3} ms, 50 runs)",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
}
