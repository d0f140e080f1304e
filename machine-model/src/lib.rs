//! The shared model of a machine: profile, worker spec, service catalog and plan.
pub mod install;
