//! machine-runtime as a library: every concern in its own module, `main.rs` only dispatches.

pub mod gpu;
pub mod profiles;
pub mod simulate;
