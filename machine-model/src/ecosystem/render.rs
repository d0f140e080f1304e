//! Renders a [`Plan`] as an ecosystem file: service apps first, then worker apps, each with its
//! catalog lifecycle in PM2's restart fields.

use super::{App, Ecosystem, Millis, Role};
use crate::plan::Plan;

impl From<&Plan> for Ecosystem {
    /// Renders a plan: service apps first, then worker apps.
    fn from(plan: &Plan) -> Ecosystem {
        let mut apps = Vec::with_capacity(plan.services.len() + plan.workers.len());
        for s in &plan.services {
            apps.push(App {
                name: Some(s.name.clone()),
                script: Some(s.script.clone()),
                args: s.args.clone(),
                interpreter: Some(s.interpreter.into()),
                cwd: Some(s.cwd.clone()),
                env: s.env.clone(),
                machine_role: Some(Role::Service),
                machine_gpu: s.gpu,
                machine_port: s.port,
                machine_readiness: Some(s.readiness.clone()),
                machine_service: Some(s.service.to_string()),
                machine_dirs: s.dirs.clone(),
                // A service that gives up leaves its workers useless: the machine must say so.
                machine_essential: true,
                ..restart(s.restart)
            });
        }
        for w in &plan.workers {
            apps.push(App {
                name: Some(w.name.clone()),
                script: Some(w.script.clone()),
                args: w.args.clone(),
                interpreter: Some(w.interpreter.into()),
                cwd: Some(w.cwd.clone()),
                env: w.env.clone(),
                machine_role: Some(Role::Worker),
                machine_gpu: w.gpu,
                machine_wait_for: w.service_instance.iter().cloned().collect(),
                machine_required_env: w.secrets.iter().map(|s| s.to_string()).collect(),
                machine_connector: Some(w.connector.to_string()),
                machine_index: Some(w.index),
                machine_binding: Some(w.binding),
                machine_services: w.advertises.iter().map(|s| s.to_string()).collect(),
                ..restart(w.restart)
            });
        }
        Ecosystem {
            schema: None,
            x_generated: None,
            apps,
        }
    }
}

/// An app holding only a catalog lifecycle, in PM2's restart fields.
fn restart(l: crate::catalog::Lifecycle) -> App {
    App {
        autorestart: Some(true),
        max_restarts: Some(l.max_restarts),
        min_uptime: Some(Millis(l.min_uptime_ms.into())),
        exp_backoff_restart_delay: Some(Millis(l.exp_backoff_restart_delay_ms.into())),
        kill_timeout: Some(Millis(l.kill_timeout_ms.into())),
        kill_signal: Some(l.kill_signal.to_string()),
        ..App::default()
    }
}
