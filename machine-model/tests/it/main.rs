//! The machine-model integration tests: one binary, one module per topic.

mod components;
mod fuzz_corpus;
mod ui;
