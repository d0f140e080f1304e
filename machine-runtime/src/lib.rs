//! machine-runtime as a library: every concern in its own module, `main.rs` only dispatches.
pub mod command;
pub mod ecosystem;
pub mod health;
pub mod probe;
pub mod reaper;
pub mod signals;
pub mod supervisor;
