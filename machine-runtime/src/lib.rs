//! machine-runtime as a library: every concern in its own module, `main.rs` only dispatches.

pub mod broker;
pub mod command;
pub mod ecosystem;
pub mod gpu;
pub mod health;
pub mod install;
pub mod preflight;
pub mod probe;
pub mod profiles;
pub mod reality;
pub mod reaper;
pub mod signals;
pub mod simulate;
pub mod supervisor;
pub mod up;
