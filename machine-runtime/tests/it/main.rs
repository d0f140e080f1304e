//! Integration tests of machine-runtime (one test binary; one module per topic).

mod up_ecosystem;
mod up_health;
mod up_supervise;
mod up_support;
