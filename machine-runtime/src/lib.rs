//! machine-runtime as a library: every concern in its own module, `main.rs` only dispatches.

pub mod broker;
pub(crate) mod cgroup;
pub mod comfyui_standin;
pub mod command;
pub mod ctl;
pub mod ecosystem;
pub mod env;
#[doc(hidden)]
pub mod fuzz;
pub mod gpu;
pub mod health;
pub(crate) mod health_limits;
pub mod healthcheck;
pub mod http;
pub mod identity;
pub mod install;
pub mod job;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod origins;
pub mod preflight;
pub mod probe;
pub mod procstat;
pub mod profiles;
pub mod reality;
pub(crate) mod reaper;
pub mod signals;
pub mod simulate;
pub mod sink;
pub mod supervisor;
pub mod time;
pub mod up;
