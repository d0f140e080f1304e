//! machine-runtime integration tests: one binary, one module per topic.

mod gpu;
mod simulate;
