//! The machine-model integration tests: one binary, one module per topic.

// Spawning tools (redis-server, node, docker, git, the runtime binary) is the point here; the
// runtime's own children go through machine_runtime::command::new_child (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod components;
mod fuzz_corpus;
mod ui;
