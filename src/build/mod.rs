//! `kiln build`: the build engine. A Dockerfile becomes a graph of steps (`graph`), solved on
//! tokio with a content-addressed cache (`solver`, `cache`); COPY/ADD are file operations
//! (`copy`, `archive`) over a build context (`context`) whose files are hashed as BuildKit's
//! contenthash does (`contenthash`); progress goes to a terminal, plain lines or JSON (`progress`).

pub mod archive;
pub mod cache;
pub mod contenthash;
pub mod context;
pub mod copy;
pub mod engine;
pub mod exec;
pub mod export;
pub mod fetch;
pub mod frontend;
pub mod fsutil;
pub mod git;
pub mod graph;
pub mod imageconfig;
pub mod options;
pub mod progress;
pub mod solver;
#[cfg(test)]
mod solver_tests;
