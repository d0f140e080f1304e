//! The integration-test binary of machine-runtime: one module per concern.

mod install;
