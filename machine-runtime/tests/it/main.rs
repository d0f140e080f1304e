//! machine-runtime integration tests: one binary, one module per topic.

mod build_script;
mod gpu;
mod simulate;
mod ui;
