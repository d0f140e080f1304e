//! Integration tests of machine-runtime: one binary, one module per topic.

mod broker;
mod redis_server;
