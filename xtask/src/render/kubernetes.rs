//! The `kubernetes.yaml` rendering: the same plan as `docker-compose.yaml`, for a fleet. Multi-document, in
//! this order: the ConfigMap of the plan's non-secret environment, the headless Service of the health port,
//! the StatefulSet of the machines, then each profile service marked `kubernetes` as a Deployment and a
//! Service of the same name (so host names in URLs such as `redis://redis:6379` resolve in the namespace).
//!
//! - Identity: a StatefulSet gives every pod a stable name (`<profile>-0` …); `MACHINE_ID` is that name
//!   (downward API), and `MACHINE_HEALTH_URL` is built from the pod IP, so each machine reports an address
//!   the monitor can reach.
//! - Secrets: never values. Each secret the machine needs is a `secretKeyRef` into the one Secret the
//!   operator creates (`<profile>-secrets`); values built from a secret use Kubernetes' `$(NAME)` expansion.
//! - Broker TLS: the Secret `<profile>-redis-tls` (optional; `ca.crt`, `tls.crt`, `tls.key`, as cert-manager
//!   writes it) is mounted read-only at `/etc/machine/redis-tls`; the `HUB_REDIS_TLS_*` variables are
//!   optional keys of `<profile>-secrets` (e.g. `HUB_REDIS_TLS_CA_FILE=/etc/machine/redis-tls/ca.crt`).
//! - GPUs: a limit on the NVIDIA device plugin's resource, the `nvidia.com/gpu` toleration, and node
//!   selection on GPU Feature Discovery's labels, by the profile's `machine.gpu_sharing` ([`gpu_placement`]):
//!   whole GPUs (`nvidia.com/gpu`; with a GPU model, `nvidia.com/gpu.product` = NVML's device name with
//!   spaces replaced by '-', `NVIDIA GeForce RTX 4090` → `NVIDIA-GeForce-RTX-4090`), time-sliced replicas
//!   (nodes with `nvidia.com/gpu.replicas` > 1; the product label `-SHARED`, or the resource
//!   `nvidia.com/gpu.shared` when the plugin renames it), or MIG slices (`nvidia.com/mig.strategy`; the
//!   resource `nvidia.com/gpu` with the product label `<product>-MIG-<profile>` for `single`,
//!   `nvidia.com/mig-<profile>` for `mixed`). Nothing GPU-related for a GPU-less plan.
//! - Volumes: named volumes of the machine become volume claim templates (one claim per machine, of
//!   [`CLAIM_SIZE`]); bind mounts (`./dir:/path`) have no cluster equivalent and are left out. Named volumes
//!   of a cluster service are `emptyDir` (a trial broker, not a durable one). `/dev/shm` is a memory-backed
//!   `emptyDir` of the profile's `shm_size`.
//! - Metrics: the machine's `GET /metrics` (the Prometheus text format) is on the health port, so the pod
//!   template and the headless Service carry the `prometheus.io/scrape`, `prometheus.io/port` and
//!   `prometheus.io/path` annotations that annotation-driven scrape configs read, and the port is named
//!   (`health`) for a ServiceMonitor's `endpoints: [{port: health, path: /metrics}]`.
//! - Timing: probes from [`super::MACHINE_HEALTH`] (the compose healthcheck's start period), and
//!   `terminationGracePeriodSeconds` from [`super::compose::stop_budget_secs`].

use machine_model::profile::{GpuSharing, MigStrategy};
use serde_json::{Map, Value, json};

use machine_model::components::interpolate::Part;

use crate::profiles::Loaded;

/// The storage each machine's claim of a named volume requests.
pub const CLAIM_SIZE: &str = "100Gi";

/// The container port name of the health endpoint, which the probes and the Service use.
const HEALTH_PORT_NAME: &str = "health";

/// The name of the Secret the operator creates for a profile.
pub fn secret_name(profile: &str) -> String {
    format!("{profile}-secrets")
}

/// The name of the optional Secret with the broker's CA and client certificate, mounted at
/// [`machine_model::catalog::BROKER_TLS_MOUNT`].
pub fn redis_tls_secret_name(profile: &str) -> String {
    format!("{profile}-redis-tls")
}

/// The name of the ConfigMap holding a profile's non-secret environment.
pub fn config_map_name(profile: &str) -> String {
    format!("{profile}-env")
}

/// The StatefulSet's (and headless Service's) name: the profile's name, so pod names and therefore machine
/// ids are `<profile>-<ordinal>`.
pub fn stateful_set_name(profile: &str) -> String {
    profile.to_string()
}

/// The machine ids of a fleet of `replicas`: the StatefulSet's pod names.
pub fn machine_ids(profile: &str, replicas: u32) -> Vec<String> {
    (0..replicas)
        .map(|i| format!("{}-{i}", stateful_set_name(profile)))
        .collect()
}

/// Where a machine's GPUs come from on Kubernetes: the extended resource its pod requests and the GPU
/// Feature Discovery labels it selects nodes by.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuPlacement {
    /// `nvidia.com/gpu`, `nvidia.com/gpu.shared` or `nvidia.com/mig-<profile>`.
    pub resource: String,
    /// Exact labels: `nvidia.com/gpu.product` (with a GPU model) and `nvidia.com/mig.strategy` (MIG).
    pub node_selector: Map<String, Value>,
    /// Time-sliced: nodes with `nvidia.com/gpu.replicas` above 1 (a node affinity, `Gt`).
    pub time_sliced: bool,
}

/// The resource and node labels for GPUs of `model` (NVML's name, if the profile names one) shared as
/// `sharing` says. The labels are GFD's: time-slicing without renaming suffixes the product with
/// `-SHARED`, MIG `single` with `-MIG-<profile>`; MIG `mixed` keeps the product and names the slice in
/// the resource.
pub fn gpu_placement(model: Option<&str>, sharing: &GpuSharing) -> GpuPlacement {
    let product = |suffix: &str| model.map(|m| gpu_product_label(&format!("{m}{suffix}")));
    let (resource, product, strategy, time_sliced) = match sharing {
        GpuSharing::Exclusive => ("nvidia.com/gpu".to_owned(), product(""), None, false),
        GpuSharing::TimeSlicing { renamed: false } => {
            ("nvidia.com/gpu".to_owned(), product("-SHARED"), None, true)
        }
        GpuSharing::TimeSlicing { renamed: true } => {
            ("nvidia.com/gpu.shared".to_owned(), product(""), None, true)
        }
        GpuSharing::Mig {
            strategy: MigStrategy::Single,
            profile,
        } => (
            "nvidia.com/gpu".to_owned(),
            product(&format!("-MIG-{profile}")),
            Some("single"),
            false,
        ),
        GpuSharing::Mig {
            strategy: MigStrategy::Mixed,
            profile,
        } => (
            format!("nvidia.com/mig-{profile}"),
            product(""),
            Some("mixed"),
            false,
        ),
    };
    let mut node_selector = Map::new();
    if let Some(product) = product {
        node_selector.insert("nvidia.com/gpu.product".into(), json!(product));
    }
    if let Some(strategy) = strategy {
        node_selector.insert("nvidia.com/mig.strategy".into(), json!(strategy));
    }
    GpuPlacement {
        resource,
        node_selector,
        time_sliced,
    }
}

/// GPU Feature Discovery's `nvidia.com/gpu.product` value for an NVML device name: spaces become '-'; any
/// other character a label value cannot hold becomes '-' too, and the value is cut to 63 characters.
pub fn gpu_product_label(model: &str) -> String {
    let mapped: String = model
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cut: String = mapped.chars().take(63).collect();
    cut.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// A Docker size (`8g`, `512m`, `1024`) as a Kubernetes quantity (`8Gi`, `512Mi`, `1024`); Docker's units
/// are binary.
pub fn quantity(docker_size: &str) -> String {
    let s = docker_size.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    match unit.to_ascii_lowercase().as_str() {
        "k" => format!("{digits}Ki"),
        "m" => format!("{digits}Mi"),
        "g" => format!("{digits}Gi"),
        _ => digits.to_string(),
    }
}

/// A volume name as a DNS-1123 label (`comfyui_models` → `comfyui-models`).
fn dns_label(name: &str) -> String {
    let mapped: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let cut: String = mapped.chars().take(63).collect();
    cut.trim_matches('-').to_string()
}

/// A short-syntax named volume (`name:/path[:ro]`): (name, mount path, read-only).
fn named_volume(spec: &str) -> Option<(&str, &str, bool)> {
    let mut parts = spec.split(':');
    let source = parts.next()?;
    let target = parts.next()?;
    let read_only = parts.next() == Some("ro");
    let named = !source.is_empty() && !source.starts_with(['.', '/', '~', '$']);
    named.then_some((source, target, read_only))
}

fn labels(profile: &str, component: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "machine",
        "app.kubernetes.io/instance": profile,
        "app.kubernetes.io/component": component,
    })
}

fn metadata(name: &str, profile: &str, component: &str) -> Value {
    let mut labels = labels(profile, component);
    labels["app.kubernetes.io/managed-by"] = json!("cargo-xtask");
    json!({ "name": name, "labels": labels })
}

/// A value built from secrets in Kubernetes' dependent-variable syntax: secrets as `$(NAME)` (defined
/// earlier in `env`), a literal `$` doubled so it is never expanded.
fn expansion(value: &machine_model::components::interpolate::Value) -> String {
    value
        .parts()
        .iter()
        .map(|part| match part {
            Part::Text(t) => t.replace('$', "$$"),
            Part::Secret(name) => format!("$({name})"),
        })
        .collect()
}

/// The ConfigMap: the plan's derived variables and the literal values, as in `.env`, except `MACHINE_ID`
/// (each pod's own name).
fn config_map(l: &Loaded) -> Value {
    let name = &l.source.name;
    let derived = machine_model::derived::env_vars(&l.profile, &l.plan);
    let mut data = Map::new();
    for (k, v) in &derived {
        if k != "MACHINE_ID" {
            data.insert(k.clone(), json!(v));
        }
    }
    for (k, v) in l.resolved.literals() {
        if !derived.iter().any(|(d, _)| d == k) {
            data.insert(k.to_string(), json!(v));
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(&config_map_name(name), name, "machine"),
        "data": data,
    })
}

/// The container's `env`: identity from the downward API, the routable health URL, the secrets by
/// reference, then the values built from them (after the secrets they expand).
fn machine_env(l: &Loaded) -> Vec<Value> {
    let name = &l.source.name;
    let mut env = vec![
        json!({"name": "MACHINE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "MACHINE_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({
            "name": "MACHINE_HEALTH_URL",
            "value": format!("http://$(MACHINE_POD_IP):{}/health", l.plan.health_port),
        }),
    ];
    let mut from_secret: Vec<String> = l
        .resolved
        .secrets()
        .into_iter()
        .map(|s| s.name.to_string())
        .collect();
    // Variables the workers need that `.env` leaves without a value (e.g. `CLOUD_STORAGE_PROVIDER`)
    // come from the same Secret: otherwise the machine refuses to start on them.
    for need in super::compose::needs_without_value(l) {
        if !from_secret.iter().any(|s| s == need) {
            from_secret.push(need.to_string());
        }
    }
    for key in &from_secret {
        env.push(json!({
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": secret_name(name), "key": key}},
        }));
    }
    // The control token of the health port's POST routes: optional, so the pod starts without it
    // (the routes then answer 403 saying how to enable them).
    env.push(json!({
        "name": "MACHINE_CONTROL_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": secret_name(name), "key": "MACHINE_CONTROL_TOKEN", "optional": true}},
    }));
    // The broker's TLS settings, optional like the token: set e.g. HUB_REDIS_TLS_CA_FILE to
    // /etc/machine/redis-tls/ca.crt in the Secret, with the files in `<profile>-redis-tls`.
    for var in machine_model::catalog::BROKER_TLS_VARS {
        env.push(json!({
            "name": var,
            "valueFrom": {"secretKeyRef": {"name": secret_name(name), "key": var, "optional": true}},
        }));
    }
    for var in l.resolved.secret_dependent().filter(|v| !v.is_secret()) {
        env.push(json!({"name": var.name, "value": expansion(&var.value)}));
    }
    env
}

/// The path of the machine's Prometheus metrics on the health port.
const METRICS_PATH: &str = "/metrics";

/// The annotations annotation-driven Prometheus scrape configs read (`prometheus.io/*`).
fn scrape_annotations(l: &Loaded) -> Value {
    json!({
        "prometheus.io/scrape": "true",
        "prometheus.io/port": l.plan.health_port.to_string(),
        "prometheus.io/path": METRICS_PATH,
    })
}

fn http_probe(path: &str, period_s: u32, timeout_s: u32, failures: u32) -> Value {
    json!({
        "httpGet": {"path": path, "port": HEALTH_PORT_NAME},
        "periodSeconds": period_s,
        "timeoutSeconds": timeout_s,
        "failureThreshold": failures,
    })
}

/// The headless Service: one DNS record per machine (`<pod>.<profile>`), the monitor's way to each
/// machine's health port.
fn headless_service(l: &Loaded) -> Value {
    let name = &l.source.name;
    let mut meta = metadata(&stateful_set_name(name), name, "machine");
    meta["annotations"] = scrape_annotations(l);
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": labels(name, "machine"),
            "ports": [{
                "name": HEALTH_PORT_NAME,
                "port": l.plan.health_port,
                "targetPort": HEALTH_PORT_NAME,
                "protocol": "TCP",
            }],
        },
    })
}

fn stateful_set(l: &Loaded) -> Value {
    let name = &l.source.name;
    let gpus = gpu_placement(
        l.profile.machine.gpu_model.as_deref(),
        &l.profile.machine.gpu_sharing,
    );
    let storage = machine_storage(l);
    let container = machine_container(l, machine_limits(l, &gpus), &storage.mounts);
    let pod = machine_pod(l, container, gpus, &storage.volumes);

    let mut spec = json!({
        "serviceName": stateful_set_name(name),
        "replicas": l.profile.replicas,
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": labels(name, "machine")},
        "template": {
            "metadata": {"labels": labels(name, "machine"), "annotations": scrape_annotations(l)},
            "spec": pod,
        },
    });
    if !storage.claims.is_empty() {
        spec["volumeClaimTemplates"] = json!(storage.claims);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(&stateful_set_name(name), name, "machine"),
        "spec": spec,
    })
}

/// The machine container's `resources.limits`: its GPUs (on `gpus.resource`), and the profile's CPU and
/// memory limits; empty when there is none.
fn machine_limits(l: &Loaded, gpus: &GpuPlacement) -> Map<String, Value> {
    let mut limits = Map::new();
    if l.plan.uses_gpus() {
        limits.insert(gpus.resource.clone(), json!(l.plan.gpus.to_string()));
    }
    if let Some(r) = &l.profile.docker.resources {
        if let Some(cpus) = r.cpus {
            limits.insert("cpu".into(), json!(cpus.to_string()));
        }
        if let Some(memory) = &r.memory {
            limits.insert("memory".into(), json!(quantity(memory)));
        }
    }
    limits
}

/// The machine's storage, in the three places a StatefulSet names it.
struct MachineStorage {
    /// The container's `volumeMounts`.
    mounts: Vec<Value>,
    /// The pod's `volumes`.
    volumes: Vec<Value>,
    /// The StatefulSet's `volumeClaimTemplates`.
    claims: Vec<Value>,
}

/// The machine's storage: a claim per named volume of the profile, the broker's TLS Secret, and
/// `/dev/shm` of the profile's `shm_size`.
fn machine_storage(l: &Loaded) -> MachineStorage {
    let d = &l.profile.docker;
    let mut mounts = Vec::new();
    let mut volumes = Vec::new();
    let mut claims = Vec::new();
    for spec in &d.volumes {
        if let Some((source, target, read_only)) = named_volume(spec) {
            let volume = dns_label(source);
            let mut mount = json!({"name": volume, "mountPath": target});
            if read_only {
                mount["readOnly"] = json!(true);
            }
            mounts.push(mount);
            claims.push(json!({
                "metadata": {"name": volume},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": CLAIM_SIZE}},
                },
            }));
        }
    }
    // The broker's CA and client certificate (cert-manager's Secret shape: ca.crt, tls.crt,
    // tls.key); optional, so a pod without TLS starts without it.
    mounts.push(json!({
        "name": "redis-tls",
        "mountPath": machine_model::catalog::BROKER_TLS_MOUNT,
        "readOnly": true,
    }));
    volumes.push(json!({
        "name": "redis-tls",
        "secret": {"secretName": redis_tls_secret_name(&l.source.name), "optional": true},
    }));
    if let Some(shm) = &d.shm_size {
        mounts.push(json!({"name": "dshm", "mountPath": "/dev/shm"}));
        volumes.push(json!({
            "name": "dshm",
            "emptyDir": {"medium": "Memory", "sizeLimit": quantity(shm)},
        }));
    }
    MachineStorage {
        mounts,
        volumes,
        claims,
    }
}

/// The machine container: image, health port, environment, probes, and the given limits and mounts.
fn machine_container(l: &Loaded, limits: Map<String, Value>, mounts: &[Value]) -> Value {
    let name = &l.source.name;
    let timing = super::MACHINE_HEALTH;
    let mut container = json!({
        "name": "machine",
        "image": super::compose::image(&l.source.name),
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": HEALTH_PORT_NAME, "containerPort": l.plan.health_port, "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": config_map_name(name)}}],
        "env": machine_env(l),
        // The start period is the time ComfyUI may take to load; readiness follows it.
        "startupProbe": http_probe(
            "/ready",
            timing.interval_s.min(10),
            timing.timeout_s,
            timing.start_period_s.div_ceil(timing.interval_s.min(10)),
        ),
        "readinessProbe": http_probe("/ready", timing.interval_s.min(10), timing.timeout_s, timing.retries),
        "livenessProbe": http_probe("/health", timing.interval_s, timing.timeout_s, timing.retries),
    });
    if !limits.is_empty() {
        container["resources"] = json!({ "limits": limits });
    }
    if !mounts.is_empty() {
        container["volumeMounts"] = json!(mounts);
    }
    container
}

/// The machine's pod spec: the container, its stop budget, its volumes, and for a plan with GPUs the
/// node selection and toleration of `gpus`.
fn machine_pod(l: &Loaded, container: Value, gpus: GpuPlacement, volumes: &[Value]) -> Value {
    let mut pod = json!({
        "terminationGracePeriodSeconds": super::compose::stop_budget_secs(l),
        "containers": [container],
    });
    if l.plan.uses_gpus() {
        if !gpus.node_selector.is_empty() {
            pod["nodeSelector"] = Value::Object(gpus.node_selector);
        }
        if gpus.time_sliced {
            pod["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "nvidia.com/gpu.replicas", "operator": "Gt", "values": ["1"]}
                ]}]
            }}});
        }
        pod["tolerations"] = json!([{
            "key": "nvidia.com/gpu",
            "operator": "Exists",
            "effect": "NoSchedule",
        }]);
    }
    if !volumes.is_empty() {
        pod["volumes"] = json!(volumes);
    }
    pod
}

/// The Deployment and Service of each profile service marked `kubernetes` (and whose condition holds).
fn cluster_services(l: &Loaded) -> Vec<Value> {
    let profile = &l.source.name;
    let mut docs = Vec::new();
    for (name, extra) in &l.profile.docker.services {
        let included = extra
            .when
            .as_ref()
            .is_none_or(|c| c.holds(&l.profile.components));
        if !extra.kubernetes || !included {
            continue;
        }
        let mut mounts = Vec::new();
        let mut volumes = Vec::new();
        for spec in &extra.volumes {
            if let Some((source, target, read_only)) = named_volume(spec) {
                let volume = dns_label(source);
                let mut mount = json!({"name": volume, "mountPath": target});
                if read_only {
                    mount["readOnly"] = json!(true);
                }
                mounts.push(mount);
                volumes.push(json!({"name": volume, "emptyDir": {}}));
            }
        }
        let mut container = json!({
            "name": dns_label(name),
            "image": extra.image,
            "ports": extra.ports.iter().map(|p| json!({"containerPort": p, "protocol": "TCP"})).collect::<Vec<_>>(),
        });
        if !extra.command.is_empty() {
            // Compose's `command` replaces the image's CMD, which is Kubernetes' `args`.
            container["args"] = json!(extra.command);
        }
        if !extra.environment.is_empty() {
            container["env"] = json!(
                extra
                    .environment
                    .iter()
                    .map(|(k, v)| json!({"name": k, "value": v}))
                    .collect::<Vec<_>>()
            );
        }
        if let Some(h) = &extra.healthcheck {
            container["readinessProbe"] = json!({
                "exec": {"command": h.test},
                "periodSeconds": h.interval_s,
                "timeoutSeconds": h.timeout_s,
                "failureThreshold": h.retries,
            });
        }
        if !mounts.is_empty() {
            container["volumeMounts"] = json!(mounts);
        }
        let mut pod = json!({ "containers": [container] });
        if !volumes.is_empty() {
            pod["volumes"] = json!(volumes);
        }
        let component = dns_label(name);
        docs.push(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(&component, profile, &component),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels(profile, &component)},
                "template": {
                    "metadata": {"labels": labels(profile, &component)},
                    "spec": pod,
                },
            },
        }));
        docs.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(&component, profile, &component),
            "spec": {
                "selector": labels(profile, &component),
                "ports": extra.ports.iter().map(|p| json!({
                    "name": format!("tcp-{p}"),
                    "port": p,
                    "targetPort": p,
                    "protocol": "TCP",
                })).collect::<Vec<_>>(),
            },
        }));
    }
    docs
}

/// Every document of a profile's `kubernetes.yaml`, in order.
pub fn documents(l: &Loaded) -> Vec<Value> {
    let mut docs = vec![config_map(l), headless_service(l), stateful_set(l)];
    docs.extend(cluster_services(l));
    docs
}

pub fn render(l: &Loaded) -> String {
    let name = &l.source.name;
    let mut out = format!("# {}\n", super::header(name));
    out += &format!(
        "# Apply: kubectl apply -f generated/{name}/kubernetes.yaml (create the Secret {} first when the machine needs secrets; see README)\n",
        secret_name(name)
    );
    for doc in documents(l) {
        out += "---\n";
        out += &super::yaml::to_string(&doc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_product_labels_follow_gpu_feature_discovery() {
        assert_eq!(
            gpu_product_label("NVIDIA GeForce RTX 4090"),
            "NVIDIA-GeForce-RTX-4090"
        );
        assert_eq!(
            gpu_product_label("NVIDIA H100 80GB HBM3"),
            "NVIDIA-H100-80GB-HBM3"
        );
        assert_eq!(gpu_product_label(" A100-SXM4-80GB "), "A100-SXM4-80GB");
        assert_eq!(gpu_product_label("x (y)"), "x--y");
        assert_eq!(gpu_product_label(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn docker_sizes_become_binary_quantities() {
        assert_eq!(quantity("8g"), "8Gi");
        assert_eq!(quantity("512m"), "512Mi");
        assert_eq!(quantity("64k"), "64Ki");
        assert_eq!(quantity("1024"), "1024");
        assert_eq!(quantity("1024b"), "1024");
    }

    #[test]
    fn names_and_ids() {
        assert_eq!(dns_label("comfyui_models"), "comfyui-models");
        assert_eq!(named_volume("m:/x:ro"), Some(("m", "/x", true)));
        assert_eq!(named_volume("./m:/x"), None);
        assert_eq!(
            machine_ids("gpu-mixed", 3),
            ["gpu-mixed-0", "gpu-mixed-1", "gpu-mixed-2"]
        );
    }

    #[test]
    fn secret_values_expand_kubernetes_style() {
        use machine_model::components::interpolate::Value as V;
        assert_eq!(expansion(&V::secret("PW")), "$(PW)");
        assert_eq!(expansion(&V::text("a$b")), "a$$b");
    }
}
