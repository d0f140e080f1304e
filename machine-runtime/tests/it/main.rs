//! machine-runtime integration tests: one binary, one module per topic.

mod broker;
mod gpu;
mod install;
mod redis_server;
mod simulate;
