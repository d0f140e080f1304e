//! The shared model of a machine: profile, worker-spec grammar, service catalog, components, plan and ecosystem.
//!
//! Data flows one way: profile (+ component files) → [`plan::Plan`] → renderings
//! ([`ecosystem::Ecosystem`], and the xtask's .env and compose files). The runtime consumes the same plan.

pub mod catalog;
pub mod comfyui_install;
pub mod components;
pub mod derived;
pub mod diag;
pub mod ecosystem;
#[doc(hidden)]
pub mod fuzz;
pub mod install;
pub mod lenient;
pub mod load;
pub mod plan;
pub mod pointer;
pub mod profile;
pub mod readiness;
pub mod service_args;
pub mod spec;
pub mod suggest;
pub mod worker_bundle;

pub use diag::Diagnostic;
pub use plan::{Overrides, Plan, PlanErrors};
pub use profile::Profile;
pub use spec::WorkerSpec;
