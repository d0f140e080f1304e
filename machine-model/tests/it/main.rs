//! machine-model integration tests: one binary, one module per topic.

mod ui;
