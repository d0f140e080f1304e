//! machine-runtime integration tests: one binary, one module per topic.

mod broker;
mod build_script;
mod gpu;
mod install;
mod redis_server;
mod simulate;
mod ui;
