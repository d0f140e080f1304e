//! The rules a compose file must follow beyond the schema, checked against the plan (`xtask plan --format
//! json`) and the profile: GPU reservation, ports, the local Redis, header, final newline, no obsolete keys.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::compose_schema::{is_go_duration, vendor_schemas};
use crate::{assert_no_problems, generated, plan_json, profiles, read, read_json, root};

/// Keys the Compose schemas mark `deprecated`, as (enclosing property, key); the root's enclosing property
/// is `""`.
fn deprecated_keys(schema: &Value) -> BTreeSet<(String, String)> {
    fn walk(v: &Value, parent: &str, out: &mut BTreeSet<(String, String)>) {
        match v {
            Value::Object(o) => {
                for (k, child) in o {
                    match (k.as_str(), child) {
                        ("properties", Value::Object(props)) => {
                            for (name, sub) in props {
                                if sub.get("deprecated") == Some(&Value::Bool(true)) {
                                    out.insert((parent.to_string(), name.clone()));
                                }
                                walk(sub, name, out);
                            }
                        }
                        ("definitions" | "$defs", Value::Object(defs)) => {
                            for (name, sub) in defs {
                                walk(sub, &format!("#{name}"), out);
                            }
                        }
                        _ => walk(child, parent, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, parent, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(schema, "", &mut out);
    out
}

/// Service keys that are legacy for what we do: `gpus` (docker-compose 1.x rejects it; the reservation is
/// the portable form), `runtime` (the pre-reservation nvidia runtime), `links`/`external_links` and
/// `volume_driver` (legacy per the Compose docs).
const LEGACY_SERVICE_KEYS: [&str; 5] = [
    "gpus",
    "runtime",
    "links",
    "external_links",
    "volume_driver",
];

/// Every (parent key, key, path) of a YAML value; the root's parent key is `""`.
fn keys(v: &Value, parent: &str, path: &str, out: &mut Vec<(String, String, String)>) {
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                let p = format!("{path}/{k}");
                out.push((parent.to_string(), k.clone(), p.clone()));
                keys(child, k, &p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                keys(child, parent, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Whether the profile's Redis component selects `local` (its section, or the last of its list: later wins).
fn redis_is_local(profile: &Value) -> bool {
    match &profile["components"]["redis"] {
        Value::String(s) => s == "local",
        Value::Array(a) => a.last().and_then(Value::as_str) == Some("local"),
        _ => false,
    }
}

/// (host address, target, published, protocol) of a compose port list in the short syntax
/// `HOST_IP:PUBLISHED:TARGET/PROTOCOL`; anything else is kept whole as the host address, so it never matches.
fn port_items(ports: Option<&Value>) -> Vec<(String, u64, u64, String)> {
    let mut v: Vec<_> = ports
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let text = p
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| p.to_string());
            let parsed = text.split_once('/').and_then(|(addr, protocol)| {
                let mut parts = addr.rsplitn(3, ':');
                let target = parts.next()?.parse().ok()?;
                let published = parts.next()?.parse().ok()?;
                let host = parts.next()?.to_string();
                Some((host, target, published, protocol.to_string()))
            });
            parsed.unwrap_or((text, 0, 0, String::new()))
        })
        .collect();
    v.sort();
    v
}

fn tcp(host_ip: &str, ports: impl IntoIterator<Item = u64>) -> Vec<(String, u64, u64, String)> {
    let mut v: Vec<_> = ports
        .into_iter()
        .map(|p| (host_ip.to_string(), p, p, "tcp".to_string()))
        .collect();
    v.sort();
    v
}

/// The problems of one profile's compose file.
fn check(name: &str, deprecated: &BTreeSet<(String, String)>) -> Vec<String> {
    let label = format!("generated/{name}/docker-compose.yaml");
    let text = read(&generated(name).join("docker-compose.yaml"));
    let profile = read_json(&root().join("profiles").join(format!("{name}.json")));
    let plan = plan_json(name, &[]);
    let mut problems = Vec::new();
    let mut problem = |s: String| problems.push(format!("{label}: {s}"));

    let header = format!("# @generated by cargo xtask env-build {name} from profiles/{name}.json");
    if !text.lines().next().is_some_and(|l| l.starts_with(&header)) {
        problem(format!("the first line is not the header {header:?}…"));
    }
    if !text.ends_with('\n') || text.ends_with("\n\n") {
        problem("does not end with exactly one newline".into());
    }
    let compose: Value = match serde_yaml::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            problem(format!("not YAML: {e}"));
            return problems;
        }
    };
    let services = compose["services"].as_object().cloned().unwrap_or_default();
    // One `machine`, or with docker.host one `machine-<n>` per machine sharing the host.
    let host_machines = profile["docker"]["host"]["machines"].as_u64();
    let machine_names: Vec<String> = match host_machines {
        Some(n) => (0..n).map(|i| format!("machine-{i}")).collect(),
        None => vec!["machine".to_owned()],
    };
    for name in &machine_names {
        if !services.contains_key(name) {
            problem(format!("no `{name}` service"));
        }
    }
    if host_machines.is_some() && services.contains_key("machine") {
        problem("docker.host is set but there is a single `machine` service too".into());
    }
    let Some(machine) = services.get(&machine_names[0]) else {
        return problems;
    };
    if host_machines.is_some() {
        // Distinct machine ids: the literal MACHINE_ID of each service.
        let ids: BTreeSet<String> = machine_names
            .iter()
            .filter_map(|n| services.get(n))
            .filter_map(|s| {
                s["environment"]
                    .as_array()?
                    .iter()
                    .find_map(|e| e.as_str()?.strip_prefix("MACHINE_ID=").map(str::to_owned))
            })
            .collect();
        if ids.len() != machine_names.len() {
            problem(format!(
                "{} machines share the host but their MACHINE_IDs are {ids:?}, expected one each",
                machine_names.len()
            ));
        }
    }

    // GPU reservation: exactly the planned GPUs, with an explicit integer count, when the plan pins anything.
    let uses_gpus = plan["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(plan["services"].as_array().into_iter().flatten())
        .any(|x| !x["gpu"].is_null());
    let gpus = plan["gpus"].as_u64().expect("the plan's gpus is a number");
    for (n, machine_name) in machine_names.iter().enumerate() {
        let Some(machine) = services.get(machine_name) else {
            continue;
        };
        let devices = machine.pointer("/deploy/resources/reservations/devices");
        // Mock GPUs: no reservation (it is fatal without the nvidia driver), the fake inventory in .env instead.
        let mock = profile["machine"]["gpu_mode"].as_str() == Some("mock");
        if mock {
            if devices.is_some() {
                problem(
                    "machine.gpu_mode is mock but the machine reserves GPUs (fatal on CPU hosts)"
                        .into(),
                );
            }
            let env = read(&generated(name).join(".env"));
            let fake = format!("MACHINE_FAKE_GPUS='{gpus}'");
            if !env.lines().any(|l| l == fake) {
                problem(format!(
                    "machine.gpu_mode is mock but generated/{name}/.env has no line {fake} (the runtime would look for real GPUs)"
                ));
            }
        } else if uses_gpus {
            match devices.and_then(Value::as_array).map(Vec::as_slice) {
                Some([device]) if host_machines.is_some() => {
                    // Each machine its own GPUs, by index: a count would give all of them the same ones.
                    let first = n as u64 * gpus;
                    let expected: Vec<Value> = (first..first + gpus)
                        .map(|i| Value::from(i.to_string()))
                        .collect();
                    if device.get("device_ids") != Some(&Value::Array(expected.clone())) {
                        problem(format!(
                            "services.{machine_name} devices[0].device_ids is {:?}, expected {expected:?}",
                            device.get("device_ids")
                        ));
                    }
                    if device.get("count").is_some() {
                        problem(format!(
                            "services.{machine_name} devices[0] has a count beside device_ids"
                        ));
                    }
                }
                Some([device]) => {
                    if device.get("count").and_then(Value::as_u64) != Some(gpus) {
                        problem(format!(
                            "devices[0].count is {:?}, expected the integer {gpus} (the planned GPUs)",
                            device.get("count")
                        ));
                    }
                    if device.get("capabilities") != Some(&serde_json::json!(["gpu"])) {
                        problem(format!(
                            "devices[0].capabilities is {:?}, expected [gpu]",
                            device.get("capabilities")
                        ));
                    }
                    if device.get("device_ids").is_some() {
                        problem(
                            "devices[0] has device_ids beside count (Compose rejects both)".into(),
                        );
                    }
                    if device.get("driver").and_then(Value::as_str) != Some("nvidia") {
                        problem(format!(
                            "devices[0].driver is {:?}, expected nvidia",
                            device.get("driver")
                        ));
                    }
                }
                other => problem(format!(
                    "the plan pins GPUs but services.machine.deploy.resources.reservations.devices is {other:?}, expected one device"
                )),
            }
        } else if devices.is_some() {
            problem(
                "a CPU-only plan has a GPU reservation (fatal on hosts without the nvidia driver)"
                    .into(),
            );
        }
    }
    for (other, service) in &services {
        if !machine_names.contains(other)
            && service.pointer("/deploy/resources/reservations").is_some()
        {
            problem(format!(
                "services.{other} reserves devices; only the machine may"
            ));
        }
    }

    // Ports: only when the profile exposes them, exactly the planned ones, on the profile's host address
    // (this host only unless the profile says otherwise).
    let expose = profile["docker"]["expose_ports"].as_bool().unwrap_or(false);
    let host_ip = profile["docker"]["host_ip"].as_str().unwrap_or("127.0.0.1");
    for (service_name, service) in &services {
        let got = port_items(service.get("ports"));
        let expected = if !expose {
            Vec::new()
        } else if machine_names.contains(service_name) {
            let health = plan["health_port"]
                .as_u64()
                .expect("the plan's health_port");
            let planned = plan["services"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["port"].as_u64());
            tcp(host_ip, std::iter::once(health).chain(planned))
        } else {
            tcp(
                host_ip,
                profile["docker"]["services"][service_name]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_u64),
            )
        };
        // Machines sharing a host publish the same container ports on their own host ports.
        let comparable = |v: &[(String, u64, u64, String)]| {
            let mut v: Vec<_> = v
                .iter()
                .map(|(h, published, target, p)| {
                    let published =
                        if host_machines.is_some() && machine_names.contains(service_name) {
                            *target
                        } else {
                            *published
                        };
                    (h.clone(), published, *target, p.clone())
                })
                .collect();
            v.sort();
            v
        };
        if comparable(&got) != comparable(&expected) {
            problem(format!(
                "services.{service_name}.ports is {got:?}, expected {expected:?} (expose_ports: {expose})"
            ));
        }
    }
    let mut published = BTreeSet::new();
    for (service_name, service) in &services {
        for (host, port, _, protocol) in port_items(service.get("ports")) {
            if !published.insert((host.clone(), port, protocol.clone())) {
                problem(format!(
                    "services.{service_name} publishes {host}:{port}/{protocol}, which another service publishes too"
                ));
            }
        }
    }

    // host.docker.internal (the local API and monitor) resolves on Linux only through this mapping.
    let hosts = machine.get("extra_hosts").cloned().unwrap_or(Value::Null);
    if !hosts
        .as_array()
        .is_some_and(|h| h.iter().any(|x| x == "host.docker.internal:host-gateway"))
    {
        problem(format!(
            "services.machine.extra_hosts is {hosts}, expected to map host.docker.internal:host-gateway"
        ));
    }

    // The local Redis: present, healthy-gated, only when the profile selects it.
    let local = redis_is_local(&profile);
    let condition = machine
        .pointer("/depends_on/redis/condition")
        .and_then(Value::as_str);
    match (local, services.get("redis")) {
        (true, None) => {
            problem("the profile's redis is local but there is no redis service".into())
        }
        (true, Some(redis)) => {
            if condition != Some("service_healthy") {
                problem(format!(
                    "machine depends on redis with condition {condition:?}, expected service_healthy"
                ));
            }
            if redis.get("healthcheck").is_none() {
                problem("the redis service has no healthcheck".into());
            }
        }
        (false, Some(_)) => {
            problem("a redis service although the profile's redis is not local".into())
        }
        (false, None) => {
            if machine.pointer("/depends_on/redis").is_some() {
                problem("machine depends on a redis service that is not there".into());
            }
        }
    }

    // No obsolete or legacy keys, and durations Compose v2 can parse.
    let mut all = Vec::new();
    keys(&compose, "", "", &mut all);
    for (parent, key, path) in &all {
        if deprecated.contains(&(parent.clone(), key.clone())) {
            problem(format!(
                "{path}: `{key}` is deprecated in the Compose schema"
            ));
        }
        if parent.is_empty() && key == "version" {
            problem("a top-level `version` key (obsolete)".into());
        }
        if path.starts_with("/services/")
            && path.matches('/').count() == 3
            && LEGACY_SERVICE_KEYS.contains(&key.as_str())
        {
            problem(format!("{path}: legacy key `{key}`"));
        }
    }
    for (name, service) in &services {
        let env = service.get("environment").cloned().unwrap_or(Value::Null);
        if env.to_string().contains("NVIDIA_VISIBLE_DEVICES") {
            problem(format!(
                "services.{name} sets NVIDIA_VISIBLE_DEVICES, which only the nvidia runtime honours; use the reservation"
            ));
        }
        for pointer in [
            "/stop_grace_period",
            "/healthcheck/interval",
            "/healthcheck/timeout",
            "/healthcheck/start_period",
            "/healthcheck/start_interval",
        ] {
            if let Some(v) = service.pointer(pointer)
                && !v.as_str().is_some_and(is_go_duration)
            {
                problem(format!(
                    "services.{name}{pointer} is {v}, not a Go duration"
                ));
            }
        }
    }
    problems
}

#[test]
fn compose_files_follow_the_gpu_port_redis_and_format_rules() {
    let mut deprecated = BTreeSet::new();
    for file in ["compose-spec.json", "compose-spec.compose-go.json"] {
        deprecated.extend(deprecated_keys(&read_json(&vendor_schemas().join(file))));
    }
    // The walker maps schema locations to instance keys by the enclosing property; a deprecated key defined
    // directly in a definition would need another mapping.
    for (parent, key) in &deprecated {
        assert!(
            !parent.starts_with('#'),
            "the Compose schema deprecates `{key}` directly in definition {parent}; teach compose_rules where it lives"
        );
    }
    assert!(
        deprecated.contains(&(String::new(), "version".to_string())),
        "the walker found no deprecated top-level `version`: {deprecated:?}"
    );

    let mut problems = Vec::new();
    for name in profiles() {
        problems.extend(check(&name, &deprecated));
    }
    assert_no_problems("the compose rules", &problems);
}

/// The rules above are not vacuous for this repository: both kinds of profile exist, and the seed's CPU
/// profiles are classified as CPU (no reservation) by their plans.
#[test]
fn profiles_cover_gpu_and_cpu_local_and_remote_redis() {
    let mut gpu = Vec::new();
    let mut cpu = Vec::new();
    let mut local = 0;
    for name in profiles() {
        let plan = plan_json(&name, &[]);
        let pins = plan["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|w| !w["gpu"].is_null());
        if pins {
            gpu.push(name.clone())
        } else {
            cpu.push(name.clone())
        }
        let profile = read_json(&root().join("profiles").join(format!("{name}.json")));
        local += usize::from(redis_is_local(&profile));
    }
    let profile = |name: &str| read_json(&root().join("profiles").join(format!("{name}.json")));
    assert_eq!(
        profile("full-local")["machine"]["gpu_mode"],
        "mock",
        "full-local (any laptop) should simulate its GPUs"
    );
    assert!(
        gpu.iter().any(|n| profile(n)["machine"]["gpu_mode"]
            .as_str()
            .unwrap_or("actual")
            == "actual"),
        "no real-GPU profile: the reservation rule is never exercised"
    );
    for seed_cpu in ["api-only", "api-gateway"] {
        assert!(
            cpu.iter().any(|n| n == seed_cpu),
            "{seed_cpu} should plan no GPU (cpu: {cpu:?}, gpu: {gpu:?})"
        );
    }
    assert!(
        !gpu.is_empty(),
        "no GPU profile: the reservation rule is never exercised"
    );
    assert!(
        local > 0 && local < profiles().len(),
        "local and remote Redis should both occur"
    );
}
