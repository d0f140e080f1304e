//! `cargo xtask plan`: the allocation table, as text or as the JSON contract other tools read.

use anyhow::Context;
use machine_model::{Overrides, Plan};

use crate::profiles;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub fn run(
    profile: &str,
    workers: Option<String>,
    gpus: Option<u32>,
    format: Format,
) -> anyhow::Result<()> {
    let loaded = profiles::load_one(profile)?;
    let plan = Plan::build(
        &loaded.source.name,
        &loaded.profile,
        &Overrides {
            workers,
            gpus,
            // The same machine settings (base ports, worker tunables) as the generated files.
            settings: loaded
                .resolved
                .literals()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Overrides::default()
        },
    )
    .with_context(|| format!("planning profile {profile}"))?;
    match format {
        Format::Json => println!("{}", json(&plan)),
        Format::Text => print!("{}", text(&plan)),
    }
    Ok(())
}

/// The JSON contract: `workers` (name, connector, binding, gpu, env) and `services` (name, service, gpu, port),
/// plus the rest of the plan.
pub fn json(plan: &Plan) -> String {
    serde_json::to_string_pretty(plan).expect("plans serialise")
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| format!("{s:<w$}", w = widths[c]))
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}

pub fn text(plan: &Plan) -> String {
    let mut out = format!(
        "profile {}  machine {}  gpus {}  health port {}\nworkers {}\ninstall: {}\n\nservices\n",
        plan.profile,
        plan.machine_id,
        plan.gpus,
        plan.health_port,
        plan.worker_spec,
        if plan.install.is_empty() {
            "nothing".to_string()
        } else {
            plan.install.join(", ")
        }
    );
    let mut rows = vec![vec![
        "NAME".into(),
        "SERVICE".into(),
        "GPU".into(),
        "PORT".into(),
        "READY WHEN".into(),
    ]];
    for s in &plan.services {
        rows.push(vec![
            s.name.clone(),
            s.service.to_string(),
            s.gpu.map_or("-".into(), |g| g.to_string()),
            s.port.map_or("-".into(), |p| p.to_string()),
            match &s.readiness {
                machine_model::plan::Probe::Http { url, .. } => format!("GET {url}"),
                machine_model::plan::Probe::Tcp { host, port, .. } => format!("tcp {host}:{port}"),
            },
        ]);
    }
    if plan.services.is_empty() {
        out += "  (none)\n";
    } else {
        out += &table(&rows);
    }
    out += "\nworkers\n";
    let mut rows = vec![vec![
        "NAME".into(),
        "WORKER_ID".into(),
        "BINDING".into(),
        "GPU".into(),
        "SERVICE".into(),
        "SECRETS".into(),
    ]];
    for w in &plan.workers {
        rows.push(vec![
            w.name.clone(),
            w.worker_id.clone(),
            w.binding.to_string(),
            w.gpu.map_or("-".into(), |g| g.to_string()),
            w.service_instance.clone().unwrap_or_else(|| "-".into()),
            if w.secrets.is_empty() {
                "-".into()
            } else {
                w.secrets.join(",")
            },
        ]);
    }
    out += &table(&rows);
    out += "\nworker env (besides the machine's .env)\n";
    for w in &plan.workers {
        let env: Vec<String> = w.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out += &format!("  {}: {}\n", w.name, env.join(" "));
    }
    out
}
