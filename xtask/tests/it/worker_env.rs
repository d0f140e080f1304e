//! Every worker of every generated `ecosystem.config.json` carries the environment the worker bundle
//! reads (worker contract §3), checked against the contract's table written out here, the profile's
//! generated `.env` (the machine's settings) and the service the worker waits for.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{assert_no_problems, generated, profiles, read, read_json};

/// Contract §3: the machine setting, the name the worker reads, and the default.
const SETTINGS: &[(&str, &str, &str)] = &[
    ("WORKER_POLL_INTERVAL_MS", "POLL_INTERVAL_MS", "1000"),
    ("WORKER_JOB_TIMEOUT_MINUTES", "JOB_TIMEOUT_MINUTES", "30"),
    (
        "WORKER_QUALITY_LEVELS",
        "QUALITY_LEVELS",
        "fast,balanced,quality",
    ),
    ("WORKER_DEBUGGING_ENABLED", "DEBUGGING_ENABLED", "false"),
    ("WORKER_DEVELOPMENT_MODE", "DEVELOPMENT_MODE", "false"),
    ("LOG_LEVEL", "LOG_LEVEL", "info"),
];

/// Contract §3 and the mapping: the variables each type needs at start.
fn needs(connector: &str) -> &'static [&'static str] {
    match connector {
        "openai" => &[
            "OPENAI_API_KEY",
            "OPENAI_IMAGE_MODEL",
            "CLOUD_STORAGE_PROVIDER",
        ],
        "openai-response" => &["OPENAI_API_KEY", "CLOUD_STORAGE_PROVIDER"],
        "gemini" => &["GEMINI_API_KEY", "GEMINI_NANO_BANANA_URL"],
        "comfyui-remote" => &["WORKER_COMFYUI_REMOTE_HOST"],
        "ollama" => &["OLLAMA_HOST", "OLLAMA_PORT", "OLLAMA_DEFAULT_MODEL"],
        _ => &[],
    }
}

/// The generated `.env` of a profile, read by dotenvy.
fn dotenv(profile: &str) -> BTreeMap<String, String> {
    let path = generated(profile).join(".env");
    let text = read(&path);
    dotenvy::from_read_iter(text.as_bytes())
        .map(|item| item.unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

fn check_worker(
    label: &str,
    app: &Value,
    machine: &BTreeMap<String, String>,
    ports: &BTreeMap<String, u64>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let name = app["name"].as_str().unwrap_or("?");
    let connector = app["machine_connector"].as_str().unwrap_or("?");
    let env: BTreeMap<String, String> = app["env"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("<not a string>").to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let mut expect = |key: &str, want: &str| {
        if env.get(key).map(String::as_str) != Some(want) {
            problems.push(format!(
                "{label}: {name}: {key} is {:?}, expected {want:?}",
                env.get(key)
            ));
        }
    };
    let machine_id = machine.get("MACHINE_ID").cloned().unwrap_or_default();
    let index = app["machine_index"].as_u64().unwrap_or(u64::MAX);
    expect(
        "WORKER_ID",
        &format!("{machine_id}-worker-{connector}-{index}"),
    );
    expect("MACHINE_ID", &machine_id);
    for var in ["WORKERS", "WORKER_CONNECTORS", "CONNECTORS"] {
        expect(var, connector);
    }
    expect("UNIFIED_MACHINE_STATUS", "true");
    expect("NODE_ENV", "production");
    for (setting, var, default) in SETTINGS {
        let want = machine.get(*setting).map_or(*default, String::as_str);
        expect(var, want);
    }
    let service_port = app["machine_wait_for"]
        .as_array()
        .and_then(|w| w.first())
        .and_then(|s| s.as_str())
        .and_then(|s| ports.get(s));
    match connector {
        "comfyui" | "emprops-app" => {
            expect("COMFYUI_HOST", "127.0.0.1");
            expect(
                "COMFYUI_PORT",
                &service_port.map(|p| p.to_string()).unwrap_or_default(),
            );
        }
        "simulation-websocket" => expect(
            "SIMULATION_WEBSOCKET_URL",
            &format!("ws://127.0.0.1:{}", service_port.copied().unwrap_or(0)),
        ),
        _ => {}
    }
    match app["machine_gpu"].as_u64() {
        Some(gpu) => expect("CUDA_VISIBLE_DEVICES", &gpu.to_string()),
        None => expect("CUDA_VISIBLE_DEVICES", ""),
    }
    // Needed variables and the auth token are passed by name, never written here.
    for secret in ["WEBSOCKET_AUTH_TOKEN", "WORKER_WEBSOCKET_AUTH_TOKEN"]
        .iter()
        .chain(needs(connector))
    {
        if env.contains_key(*secret) {
            problems.push(format!(
                "{label}: {name}: {secret} is written into the file"
            ));
        }
    }
    let required: Vec<&str> = app["machine_required_env"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if required != needs(connector) {
        problems.push(format!(
            "{label}: {name}: machine_required_env is {required:?}, expected {:?}",
            needs(connector)
        ));
    }
    for (field, want) in [
        ("script", "redis-direct-worker.js"),
        ("interpreter", "node"),
        ("cwd", "/workspace/worker-bundled"),
    ] {
        if app[field] != want {
            problems.push(format!(
                "{label}: {name}: {field} is {}, expected {want:?}",
                app[field]
            ));
        }
    }
    problems
}

#[test]
fn every_generated_worker_carries_the_contract_environment() {
    let mut problems = Vec::new();
    let mut workers = 0;
    for profile in profiles() {
        let label = format!("generated/{profile}/ecosystem.config.json");
        let eco = read_json(&generated(&profile).join("ecosystem.config.json"));
        let machine = dotenv(&profile);
        let apps = eco["apps"].as_array().cloned().unwrap_or_default();
        let ports: BTreeMap<String, u64> = apps
            .iter()
            .filter_map(|a| Some((a["name"].as_str()?.to_owned(), a["machine_port"].as_u64()?)))
            .collect();
        for app in apps.iter().filter(|a| a["machine_role"] == "worker") {
            workers += 1;
            problems.extend(check_worker(&label, app, &machine, &ports));
        }
    }
    assert!(workers > 0, "no worker in any generated ecosystem");
    assert_no_problems("the workers' environment", &problems);
}

/// The .env value of a setting reaches the workers under the worker's name: api-gateway's profile sets
/// `WORKER_POLL_INTERVAL_MS` (its fast polling used to be written as an unprefixed name nobody read).
#[test]
fn api_gateway_polls_fast() {
    let machine = dotenv("api-gateway");
    assert_eq!(machine["WORKER_POLL_INTERVAL_MS"], "500");
    assert!(!machine.contains_key("POLL_INTERVAL_MS"));
    let eco = read_json(&generated("api-gateway").join("ecosystem.config.json"));
    for app in eco["apps"].as_array().unwrap() {
        assert_eq!(app["env"]["POLL_INTERVAL_MS"], "500", "{}", app["name"]);
    }
}
