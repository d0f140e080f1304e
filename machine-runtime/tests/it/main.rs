//! machine-runtime integration tests: one binary, one module per topic.

// Spawning tools (redis-server, node, docker, git, the runtime binary) is the point here; the
// runtime's own children go through machine_runtime::command::new_child (clippy.toml).
#![allow(clippy::disallowed_methods)]

mod broker;
mod broker_tls;
mod build_script;
mod cli;
mod comfyui;
mod comfyui_standin;
mod docker;
mod fuzz_corpus;
mod gpu;
mod healthcheck;
mod hostile;
mod install;
mod job_push;
mod job_queue;
mod lease;
mod log_lines;
mod metrics;
mod pm2_compat;
mod redis_server;
mod simulate;
mod swarm;
mod ui;
mod up_broker;
mod up_comfyui;
mod up_drain;
mod up_ecosystem;
mod up_flood;
mod up_follow;
mod up_handback;
mod up_health;
mod up_jobs;
mod up_leftover;
mod up_monitor;
mod up_monitor_card;
mod up_supervise;
mod up_support;
mod up_worker_status;
mod worker_bundle;
