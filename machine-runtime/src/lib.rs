//! machine-runtime as a library: every concern in its own module, `main.rs` only dispatches.

pub mod broker;
pub mod gpu;
pub mod install;
pub mod profiles;
pub mod reality;
pub mod simulate;
pub mod simulate_worker;
