//! The `stack.yaml` rendering: the same plan as `docker-compose.yaml`, as a Docker Swarm stack
//! (`docker stack deploy -c generated/<profile>/stack.yaml <stack>`), a fleet of `replicas` machines on
//! one engine or many. Only what Swarm reads (the Compose file format as `docker stack deploy` takes it):
//!
//! - Image: `image` only, no `build` (Swarm ignores it): build or pull the image on every node first.
//! - Environment: `.env`'s values inline (see [`environment`]), no `env_file`.
//! - Identity: every replica gets `MACHINE_ID=<plan id>-{{.Task.Slot}}` and the host name
//!   `<plan id>-{{.Task.Slot}}` (Swarm's service templates). A slot keeps its number when Swarm replaces
//!   its task (a crash, `docker kill`, an update), so the new container has the old one's id and host name:
//!   it takes over the earlier run's id lease at once (same host, PID 1) and hands back the jobs that run
//!   left with its workers (the runtime does it at start). No two live replicas share a slot.
//! - Updates: `update_config` and `rollback_config` replace one task at a time, `order: stop-first`: the
//!   old task drains (its busy workers finish or hand their jobs back) and releases the id lease before
//!   its successor with the same id starts; start-first would run two machines on one id, and two
//!   machines on one node's GPUs.
//! - Stop: `stop_signal` SIGTERM and `stop_grace_period` the machine's stop budget
//!   ([`super::compose::stop_budget_secs`]), so Swarm never SIGKILLs a draining machine.
//! - Health: the compose healthcheck ([`super::DOCKER_HEALTH`]); Swarm counts a task running, and moves
//!   an update on, only once it is healthy.
//! - GPUs: Swarm has no device requests; real GPUs are `generic_resources` of kind `NVIDIA-GPU`, which the
//!   node advertises (`node-generic-resources` in daemon.json, nvidia the default runtime). Mock GPUs
//!   reserve nothing.
//! - Not rendered: published ports (Swarm publishes on every interface of every node through its routing
//!   mesh, and replicas would share one port; the machines reach the broker, not the other way round),
//!   `restart` and `depends_on` (Swarm ignores both: `deploy.restart_policy` restarts), and `shm_size`
//!   (not in Swarm: `/dev/shm` is a tmpfs mount of that size instead).
//! - The profile's other services (a local Redis) run as one replica each, reached by service name on
//!   the stack's overlay network.

use serde_json::{Value, json};

use machine_model::profile::GpuMode;

use crate::profiles::Loaded;

/// The Swarm template of a task's slot (1 … replicas), stable across its task's replacements.
pub const TASK_SLOT: &str = "{{.Task.Slot}}";

/// The machine id (and host name) of each replica: `<plan id>-{{.Task.Slot}}`.
pub fn machine_id_template(plan_id: &str) -> String {
    format!("{plan_id}-{TASK_SLOT}")
}

/// Seconds as a Compose duration.
fn secs(s: u32) -> String {
    format!("{s}s")
}

/// A Docker size (`8g`, `512m`, `64k`, `1024`) in bytes; `None` when it is not one.
fn bytes(docker_size: &str) -> Option<u64> {
    let s = docker_size.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().ok()?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// The machine's environment, all in the stack file: `docker stack deploy` reads an `env_file` without
/// removing the quotes `.env` puts around values (Compose removes them), so `.env`'s values are written
/// here as `KEY=value` items instead (`$` doubled: the file is interpolated), `MACHINE_ID` per slot. Then,
/// as in the compose file: secrets and needed variables without a value by name (from the shell
/// `docker stack deploy` runs in), the control token, each service's extra arguments variable, and values
/// built from a secret as `${NAME}` templates.
fn environment(l: &Loaded) -> Vec<String> {
    let literal = |k: &str, v: &str| format!("{k}={}", v.replace('$', "$$"));
    let derived = machine_model::derived::env_vars(&l.profile, &l.plan);
    let mut env: Vec<String> = derived
        .iter()
        .map(|(k, v)| {
            if k == "MACHINE_ID" {
                format!("MACHINE_ID={}", machine_id_template(&l.plan.machine_id))
            } else {
                literal(k, v)
            }
        })
        .collect();
    env.extend(
        l.resolved
            .literals()
            .filter(|(k, _)| !derived.iter().any(|(d, _)| d == k))
            .map(|(k, v)| literal(k, v)),
    );
    // Then what the compose file passes through by name (secrets, required variables without a
    // value, the control token, the broker's TLS variables, services' extra arguments), less the
    // hostname suffix: the task slot already makes each id unique.
    env.extend(
        super::compose::environment(l)
            .into_iter()
            .filter(|e| e != "MACHINE_ID_APPEND_HOSTNAME"),
    );
    env
}

/// One task at a time, the old one stopped first (see the module doc); a task that fails within
/// `monitor` rolls the update back.
fn update_config() -> Value {
    json!({
        "parallelism": 1,
        "delay": "0s",
        "order": "stop-first",
        "failure_action": "rollback",
        "monitor": "5s",
    })
}

/// The machine service.
fn machine(l: &Loaded) -> Value {
    let p = &l.plan;
    let d = &l.profile.docker;
    let mut volumes: Vec<Value> = d.volumes.iter().map(|v| json!(v)).collect();
    if let Some(size) = d.shm_size.as_deref().and_then(bytes) {
        volumes.push(json!({
            "type": "tmpfs",
            "target": "/dev/shm",
            "tmpfs": {"size": size},
        }));
    }
    let mut resources = serde_json::Map::new();
    if let Some(r) = &d.resources {
        let mut limits = serde_json::Map::new();
        if let Some(cpus) = r.cpus {
            limits.insert("cpus".into(), json!(cpus.to_string()));
        }
        if let Some(memory) = &r.memory {
            limits.insert("memory".into(), json!(memory));
        }
        if !limits.is_empty() {
            resources.insert("limits".into(), Value::Object(limits));
        }
    }
    if p.uses_gpus() && l.profile.machine.gpu_mode == GpuMode::Actual {
        resources.insert(
            "reservations".into(),
            json!({"generic_resources": [{
                "discrete_resource_spec": {"kind": "NVIDIA-GPU", "value": p.gpus},
            }]}),
        );
    }
    let mut deploy = json!({
        "mode": "replicated",
        "replicas": l.profile.replicas,
        "update_config": update_config(),
        "rollback_config": {"parallelism": 1, "delay": "0s", "order": "stop-first"},
        "restart_policy": {"condition": "any", "delay": "2s"},
    });
    if !resources.is_empty() {
        deploy["resources"] = Value::Object(resources);
    }
    let mut service = json!({
        "image": super::compose::image(&p.profile),
        "hostname": machine_id_template(&p.machine_id),
        "environment": environment(l),
        "stop_signal": "SIGTERM",
        "stop_grace_period": secs(super::compose::stop_budget_secs(l)),
        // `host.docker.internal` (the API and monitor of local profiles): the engine's host gateway.
        "extra_hosts": ["host.docker.internal:host-gateway"],
        "healthcheck": {
            "test": [
                "CMD", "machine-runtime", "health",
                "--port", p.health_port.to_string(),
                "--wait", super::DOCKER_HEALTH_WAIT_S.to_string(),
            ],
            "interval": secs(super::DOCKER_HEALTH.interval_s),
            "timeout": secs(super::DOCKER_HEALTH.timeout_s),
            "retries": super::DOCKER_HEALTH.retries,
            "start_period": secs(super::DOCKER_HEALTH.start_period_s),
        },
        "deploy": deploy,
    });
    if !volumes.is_empty() {
        service["volumes"] = json!(volumes);
    }
    service
}

/// The profile's other services (those whose condition holds), one replica each.
fn extra_services(l: &Loaded) -> Vec<(String, Value)> {
    let d = &l.profile.docker;
    let mut out = Vec::new();
    for (name, extra) in &d.services {
        if extra
            .when
            .as_ref()
            .is_some_and(|c| !c.holds(&l.profile.components))
        {
            continue;
        }
        let mut service = json!({"image": extra.image});
        if !extra.command.is_empty() {
            service["command"] = json!(extra.command);
        }
        if !extra.environment.is_empty() {
            service["environment"] = json!(
                extra
                    .environment
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
            );
        }
        if !extra.volumes.is_empty() {
            service["volumes"] = json!(extra.volumes);
        }
        if let Some(h) = &extra.healthcheck {
            service["healthcheck"] = json!({
                "test": std::iter::once("CMD".to_string()).chain(h.test.iter().cloned()).collect::<Vec<_>>(),
                "interval": secs(h.interval_s),
                "timeout": secs(h.timeout_s),
                "retries": h.retries,
            });
        }
        service["deploy"] = json!({
            "mode": "replicated",
            "replicas": 1,
            "restart_policy": {"condition": "any", "delay": "2s"},
        });
        out.push((name.clone(), service));
    }
    out
}

/// Named volumes of the machine and the other services (`name:/path`), each once.
fn named_volumes(l: &Loaded) -> Vec<String> {
    let d = &l.profile.docker;
    let mut names: Vec<String> = Vec::new();
    let extra = d
        .services
        .values()
        .filter(|s| {
            s.when
                .as_ref()
                .is_none_or(|c| c.holds(&l.profile.components))
        })
        .flat_map(|s| s.volumes.iter());
    for spec in d.volumes.iter().chain(extra) {
        let source = spec.split(':').next().unwrap_or_default();
        let named =
            !source.is_empty() && !source.starts_with(['.', '/', '~', '$']) && spec.contains(':');
        if named && !names.iter().any(|n| n == source) {
            names.push(source.to_string());
        }
    }
    names.sort();
    names
}

/// The stack as a JSON value (services in name order).
pub fn model(l: &Loaded) -> Value {
    let mut services = serde_json::Map::new();
    for (name, service) in extra_services(l) {
        services.insert(name, service);
    }
    services.insert("machine".into(), machine(l));
    let mut stack = json!({ "services": services });
    let volumes = named_volumes(l);
    if !volumes.is_empty() {
        stack["volumes"] = Value::Object(volumes.into_iter().map(|v| (v, json!({}))).collect());
    }
    stack
}

pub fn render(l: &Loaded) -> String {
    let name = &l.source.name;
    format!(
        "# {}\n# Deploy: docker stack deploy -c generated/{name}/stack.yaml {name} (the image {} on every node first; see docs/fleet.md)\n{}",
        super::header(name),
        super::compose::image(name),
        super::yaml::to_string(&model(l))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_become_bytes() {
        assert_eq!(bytes("8g"), Some(8 << 30));
        assert_eq!(bytes("512m"), Some(512 << 20));
        assert_eq!(bytes("64k"), Some(64 << 10));
        assert_eq!(bytes("1024"), Some(1024));
        assert_eq!(bytes("lots"), None);
    }

    #[test]
    fn slot_ids() {
        assert_eq!(machine_id_template("p"), "p-{{.Task.Slot}}");
    }
}
