//! The `docker-compose.yaml` rendering: a typed Compose model (only what we emit) serialised through the
//! quoting YAML writer. Compatible with Compose v2 and with docker-compose 1.29 (no `version:` key, quoted
//! short port syntax with a host address, since 1.29's long syntax has no `host_ip`; GPU reservation through
//! `deploy.resources.reservations.devices` with an explicit count, only for real GPUs).

use std::collections::BTreeMap;

use machine_model::profile::{DockerOptions, ExtraService, GpuMode};
use serde::Serialize;

use crate::profiles::Loaded;

#[derive(Serialize)]
struct Compose {
    services: BTreeMap<String, Service>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    volumes: BTreeMap<String, Empty>,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Clone, Serialize, Default)]
struct Service {
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    build: Option<Build>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    command: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    env_file: Vec<String>,
    /// Names only (pass-through from the environment Compose runs in) or literal `KEY=value` items.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    environment: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_grace_period: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shm_size: Option<String>,
    /// Short syntax `HOST_IP:PUBLISHED:TARGET/tcp`, always quoted by the writer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    extra_hosts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    volumes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    healthcheck: Option<Healthcheck>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    depends_on: BTreeMap<String, DependsOn>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deploy: Option<Deploy>,
}

#[derive(Clone, Serialize)]
struct Build {
    context: String,
    dockerfile: String,
    args: BTreeMap<String, String>,
}

#[derive(Clone, Serialize)]
struct Healthcheck {
    test: Vec<String>,
    interval: String,
    timeout: String,
    retries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_period: Option<String>,
}

#[derive(Clone, Serialize)]
struct DependsOn {
    condition: &'static str,
}

#[derive(Clone, Serialize)]
struct Deploy {
    resources: Resources,
}

#[derive(Clone, Serialize, Default)]
struct Resources {
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<Limits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reservations: Option<Reservations>,
}

#[derive(Clone, Serialize)]
struct Limits {
    #[serde(skip_serializing_if = "Option::is_none")]
    cpus: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<String>,
}

#[derive(Clone, Serialize)]
struct Reservations {
    devices: Vec<Device>,
}

#[derive(Clone, Serialize)]
struct Device {
    driver: &'static str,
    /// A single machine: how many GPUs (any). Exclusive with `device_ids`.
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u32>,
    /// A machine sharing its host (`docker.host`): exactly these GPU indices.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    device_ids: Vec<String>,
    capabilities: Vec<&'static str>,
}

/// A named volume in a short-syntax volume string (`name:/path`), if it is one.
fn named_volume(spec: &str) -> Option<&str> {
    let source = spec.split(':').next()?;
    let named =
        !source.is_empty() && !source.starts_with(['.', '/', '~', '$']) && spec.contains(':');
    named.then_some(source)
}

/// Secrets pass through by name from the environment Compose runs in (or `--env-file .env.secrets`);
/// values built from a secret are Compose templates (`${NAME}`), so no secret value is ever written here.
///
/// A variable the workers need that `.env` leaves unset (no component or profile gives it a value, e.g.
/// `CLOUD_STORAGE_PROVIDER`) passes through by name too: otherwise the runtime refuses to start on it and no
/// environment Compose runs in could supply it.
///
/// `MACHINE_ID_APPEND_HOSTNAME` passes through the same way: set it in the shell when scaling the service
/// (`--scale machine=N`), so each container reports as `<MACHINE_ID>-<hostname>`. So does
/// `MACHINE_CONTROL_TOKEN`, the token of the health port's POST routes (in `.env.secrets`), the broker's
/// TLS variables (`HUB_REDIS_TLS_*`, [`machine_model::catalog::BROKER_TLS_VARS`]), and each
/// planned service's extra arguments variable (`COMFY_ARGS`), appended to the service's command at start.
pub(crate) fn environment(l: &Loaded) -> Vec<String> {
    let mut env: Vec<String> = l.resolved.secrets().into_iter().map(|s| s.name).collect();
    for name in needs_without_value(l) {
        if !env.iter().any(|e| e == name) {
            env.push(name.to_string());
        }
    }
    env.sort();
    env.push("MACHINE_ID_APPEND_HOSTNAME".into());
    // The health port's control token (POST routes); unset, those routes stay off.
    env.push("MACHINE_CONTROL_TOKEN".into());
    // The broker's TLS files (paths in the container: mount them with the profile's docker.volumes)
    // and the insecure switch, from the shell or `--env-file .env.secrets`.
    env.extend(machine_model::catalog::BROKER_TLS_VARS.map(String::from));
    // A service's extra arguments at start (`COMFY_ARGS`), from the shell Compose runs in.
    for service in &l.plan.services_needed {
        if let Some(var) = machine_model::catalog::service(service).and_then(|s| s.extra_args_env) {
            env.push(var.to_string());
        }
    }
    for var in l.resolved.secret_dependent().filter(|v| !v.is_secret()) {
        env.push(format!("{}={}", var.name, var.value.to_template()));
    }
    env
}

/// Variables the workers need (the plan's `secrets`: secrets and other required variables) to which
/// `.env` gives no value, e.g. `CLOUD_STORAGE_PROVIDER`: the operator supplies them like secrets.
pub(crate) fn needs_without_value(l: &Loaded) -> Vec<&'static str> {
    let derived = machine_model::derived::env_vars(&l.profile, &l.plan);
    l.plan
        .secrets
        .iter()
        .map(|need| need.name)
        .filter(|name| {
            !l.resolved.literals().any(|(k, _)| k == *name)
                && !derived.iter().any(|(k, _)| k == name)
        })
        .collect()
}

/// A port published on `host_ip` under its own number.
fn port(host_ip: std::net::Ipv4Addr, port: u16) -> String {
    format!("{host_ip}:{port}:{port}/tcp")
}

/// Seconds as a Compose duration.
fn secs(s: u32) -> String {
    format!("{s}s")
}

/// Seconds as a Compose duration in whole minutes where they divide (`300` → `5m`).
fn minutes(s: u32) -> String {
    if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        secs(s)
    }
}

/// The machine's image name, the same in Compose and Kubernetes.
pub fn image(profile: &str) -> String {
    format!("machine-runtime:{profile}")
}

/// The compose model of a profile's plan.
fn model(l: &Loaded) -> anyhow::Result<Compose> {
    let d = &l.profile.docker;
    let mut services = BTreeMap::new();
    let mut volumes = BTreeMap::new();

    let mut machine = machine_service(l);
    // Mock GPUs are the runtime's fake inventory (`MACHINE_FAKE_GPUS` in .env): reserving them would make
    // the container unstartable on hosts without the nvidia driver.
    let real_gpus = l.profile.machine.gpu_mode == GpuMode::Actual;
    machine.deploy = machine_deploy(l, real_gpus);
    add_named_volumes(&mut volumes, &d.volumes);

    for (name, extra) in &d.services {
        if extra
            .when
            .as_ref()
            .is_some_and(|c| !c.holds(&l.profile.components))
        {
            continue;
        }
        let condition = if extra.healthcheck.is_some() {
            "service_healthy"
        } else {
            "service_started"
        };
        machine
            .depends_on
            .insert(name.clone(), DependsOn { condition });
        add_named_volumes(&mut volumes, &extra.volumes);
        services.insert(name.clone(), extra_service(d, extra));
    }
    match d.host {
        None => {
            services.insert("machine".into(), machine);
        }
        Some(host) => {
            for (name, service) in shared_host_machines(l, &machine, host.machines, real_gpus)? {
                services.insert(name, service);
            }
        }
    }
    // No top-level `name:`: docker-compose 1.x rejects it, and the folder (generated/<profile>) names the
    // project already.
    Ok(Compose { services, volumes })
}

/// The `machine` service (one machine alone on its host), without its `deploy` section and the
/// `depends_on` of the profile's extra services.
fn machine_service(l: &Loaded) -> Service {
    let p = &l.plan;
    let d = &l.profile.docker;
    let mut machine = Service {
        image: Some(image(&p.profile)),
        build: Some(Build {
            // The repository root, seen from generated/<profile>/.
            context: "../..".into(),
            dockerfile: "Dockerfile".into(),
            args: BTreeMap::from([("PROFILE".to_string(), p.profile.clone())]),
        }),
        env_file: vec![".env".into()],
        environment: environment(l),
        restart: Some(d.restart.as_str().into()),
        stop_signal: Some("SIGTERM".into()),
        // Workers stop first, then services, each within its kill timeout; leave a margin for the reaping.
        stop_grace_period: Some(secs(stop_budget_secs(l))),
        shm_size: d.shm_size.clone(),
        volumes: d.volumes.clone(),
        // `host.docker.internal` (the API and monitor of local profiles) resolves on Linux too (Docker 20.10+).
        extra_hosts: vec!["host.docker.internal:host-gateway".into()],
        healthcheck: Some(Healthcheck {
            test: vec![
                "CMD".into(),
                "machine-runtime".into(),
                "health".into(),
                "--port".into(),
                p.health_port.to_string(),
                "--wait".into(),
                super::DOCKER_HEALTH_WAIT_S.to_string(),
            ],
            interval: secs(super::DOCKER_HEALTH.interval_s),
            timeout: secs(super::DOCKER_HEALTH.timeout_s),
            retries: super::DOCKER_HEALTH.retries,
            start_period: Some(minutes(super::DOCKER_HEALTH.start_period_s)),
        }),
        ..Service::default()
    };
    if d.expose_ports {
        machine.ports = p
            .ports()
            .into_iter()
            .map(|(p, _)| port(d.host_ip, p))
            .collect();
    }
    machine
}

/// The machine's `deploy.resources`: the profile's limits, and a reservation of the plan's GPUs when
/// they are `real_gpus`; `None` when there is neither.
fn machine_deploy(l: &Loaded, real_gpus: bool) -> Option<Deploy> {
    let p = &l.plan;
    let limits = l.profile.docker.resources.as_ref().map(|r| Limits {
        cpus: r.cpus.map(|c| c.to_string()),
        memory: r.memory.clone(),
    });
    let reservations = (p.uses_gpus() && real_gpus).then(|| Reservations {
        devices: vec![Device {
            driver: "nvidia",
            count: Some(p.gpus),
            device_ids: Vec::new(),
            capabilities: vec!["gpu"],
        }],
    });
    (limits.is_some() || reservations.is_some()).then_some(Deploy {
        resources: Resources {
            limits,
            reservations,
        },
    })
}

/// Adds the named volumes among the short-syntax volume strings `specs` to the top-level `volumes`.
fn add_named_volumes(volumes: &mut BTreeMap<String, Empty>, specs: &[String]) {
    for v in specs {
        if let Some(name) = named_volume(v) {
            volumes.insert(name.to_string(), Empty {});
        }
    }
}

/// The service of one of the profile's extra services (`docker.services`).
fn extra_service(d: &DockerOptions, extra: &ExtraService) -> Service {
    Service {
        image: Some(extra.image.clone()),
        command: extra.command.clone(),
        environment: extra
            .environment
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
        restart: Some(d.restart.as_str().into()),
        ports: if d.expose_ports {
            extra.ports.iter().map(|&p| port(d.host_ip, p)).collect()
        } else {
            Vec::new()
        },
        volumes: extra.volumes.clone(),
        healthcheck: extra.healthcheck.as_ref().map(|h| Healthcheck {
            test: std::iter::once("CMD".to_string())
                .chain(h.test.iter().cloned())
                .collect(),
            interval: secs(h.interval_s),
            timeout: secs(h.timeout_s),
            retries: h.retries,
            start_period: None,
        }),
        ..Service::default()
    }
}

/// The services of `machines` machines sharing one host (`docker.host`), made from the single
/// `machine`: `machine-<n>` with machine id `<MACHINE_ID>-<n>`, GPUs `n × gpus` … by index
/// (`device_ids`: a `count` would give every machine the same GPUs), and published ports moved up by
/// `n × stride`, the stride the smallest multiple of 100 that spans one machine's ports.
///
/// Errors: a published port past 65535.
fn shared_host_machines(
    l: &Loaded,
    machine: &Service,
    machines: u32,
    real_gpus: bool,
) -> anyhow::Result<Vec<(String, Service)>> {
    let p = &l.plan;
    let d = &l.profile.docker;
    let ports: Vec<u16> = p.ports().into_iter().map(|(port, _)| port).collect();
    let (low, high) = (
        ports.iter().copied().min().unwrap_or(0),
        ports.iter().copied().max().unwrap_or(0),
    );
    let stride = (u32::from(high - low) + 1).div_ceil(100) * 100;
    let mut out = Vec::new();
    for n in 0..machines {
        let mut service = machine.clone();
        service
            .environment
            .push(format!("MACHINE_ID={}-{n}", p.machine_id));
        if d.expose_ports {
            service.ports = Vec::new();
            for &port in &ports {
                let published = u32::from(port) + n * stride;
                let published = u16::try_from(published).map_err(|_| {
                    anyhow::anyhow!(
                        "{}: /docker/host/machines: machine {n}'s port {port} would be published on {published}, past 65535; run fewer machines on the host or set docker.expose_ports to false",
                        l.source.file
                    )
                })?;
                service
                    .ports
                    .push(format!("{}:{published}:{port}/tcp", d.host_ip));
            }
        }
        if let (true, Some(deploy)) = (real_gpus && p.uses_gpus(), service.deploy.as_mut())
            && let Some(reservations) = deploy.resources.reservations.as_mut()
        {
            reservations.devices = vec![Device {
                driver: "nvidia",
                count: None,
                device_ids: (n * p.gpus..(n + 1) * p.gpus)
                    .map(|i| i.to_string())
                    .collect(),
                capabilities: vec!["gpu"],
            }];
        }
        out.push((format!("machine-{n}"), service));
    }
    Ok(out)
}

/// Seconds Compose should wait after SIGTERM: the final broker status (published before any app is
/// signalled) + the slowest worker's drain + slowest service grace + margin. A worker busy with a
/// job gets its `kill_timeout` to finish; one still busy then is killed and its job handed back to
/// the queue (bounded by `JOB_HANDBACK_TIMEOUT_MS`); one that finished in time is signalled and gets,
/// like every app, its `kill_timeout` between the signal and SIGKILL. The worst of the two: twice its
/// `kill_timeout`, or once plus the hand-back.
pub fn stop_budget_secs(l: &Loaded) -> u32 {
    let worker = l
        .plan
        .workers
        .iter()
        .map(|w| w.restart.kill_timeout_ms)
        .max()
        .unwrap_or(0);
    let service = l
        .plan
        .services
        .iter()
        .map(|s| s.restart.kill_timeout_ms)
        .max()
        .unwrap_or(0);
    let broker = machine_model::catalog::BROKER_SHUTDOWN_TIMEOUT_MS;
    let drain = (2 * worker).max(worker + machine_model::catalog::JOB_HANDBACK_TIMEOUT_MS);
    (broker + drain + service).div_ceil(1000) + 5
}

/// The compose file; a second comment line warns against `--scale` where GPUs are reserved by count.
///
/// Errors: see [`shared_host_machines`].
pub fn render(l: &Loaded) -> anyhow::Result<String> {
    let value = serde_json::to_value(model(l)?).expect("the compose model serialises");
    let warning = scale_warning(l)
        .map(|w| format!("# {w}\n"))
        .unwrap_or_default();
    Ok(format!(
        "# {}\n{warning}{}",
        super::header(&l.source.name),
        super::yaml::to_string(&value)
    ))
}

/// Why `docker compose up --scale machine=N` is wrong for this profile: its one machine reserves real
/// GPUs by `count`, a per-container reservation, so every replica would get the same GPUs
/// (NVIDIA/nvidia-container-toolkit#521, docker/compose#11863). `None` without such a reservation.
pub fn scale_warning(l: &Loaded) -> Option<String> {
    let real = l.profile.machine.gpu_mode == GpuMode::Actual;
    (real && l.plan.uses_gpus() && l.profile.docker.host.is_none()).then(|| {
        format!(
            "do not `--scale machine=N`: the reservation of {} GPU(s) is per container, so every replica would get the same GPUs; for several machines on one host set docker.host {{\"gpus\": <host GPUs>, \"machines\": N}} in profiles/{}.json",
            l.plan.gpus, l.source.name
        )
    })
}
