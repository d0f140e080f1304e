//! `cargo xtask plan`: the allocation table, as text or as the JSON contract other tools read, and the
//! fleet it makes in Kubernetes (`--replicas`, default the profile's `replicas`).

use anyhow::Context;
use machine_model::{Overrides, Plan};

use crate::profiles;
use crate::render::kubernetes;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

pub fn run(
    profile: &str,
    workers: Option<String>,
    gpus: Option<u32>,
    replicas: Option<u32>,
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
    let replicas = replicas.unwrap_or(loaded.profile.replicas);
    let range = machine_model::profile::REPLICAS_RANGE;
    if !range.contains(&replicas) {
        anyhow::bail!(
            "--replicas {replicas} is out of range; a fleet has {} to {} machines",
            range.start(),
            range.end()
        );
    }
    let fleet = Fleet::of(&plan, replicas);
    match format {
        Format::Json => println!("{}", json_with_fleet(&plan, &fleet)),
        Format::Text => print!("{}{}", text(&plan), fleet.text()),
    }
    Ok(())
}

/// A profile's fleet in Kubernetes: `replicas` machines of one plan, each named by its pod.
#[derive(Debug, serde::Serialize)]
pub struct Fleet {
    /// How many machines.
    pub replicas: u32,
    /// The StatefulSet that runs them.
    pub stateful_set: String,
    /// Their `MACHINE_ID`s: the pod names `<statefulset>-0` … `<statefulset>-<replicas-1>`.
    pub machine_ids: Vec<String>,
    /// GPUs each machine asks for (`nvidia.com/gpu`).
    pub gpus_per_machine: u32,
    /// GPUs of the whole fleet.
    pub gpus: u64,
    /// Worker processes of one machine.
    pub workers_per_machine: usize,
    /// Worker processes of the whole fleet.
    pub workers: usize,
    /// Service instances of one machine.
    pub services_per_machine: usize,
    /// Service instances of the whole fleet.
    pub services: usize,
}

impl Fleet {
    /// The fleet of `replicas` machines of `plan`.
    pub fn of(plan: &Plan, replicas: u32) -> Fleet {
        let n = replicas as usize;
        Fleet {
            replicas,
            stateful_set: kubernetes::stateful_set_name(&plan.profile),
            machine_ids: kubernetes::machine_ids(&plan.profile, replicas),
            gpus_per_machine: plan.gpus,
            gpus: u64::from(plan.gpus) * u64::from(replicas),
            workers_per_machine: plan.workers.len(),
            workers: plan.workers.len() * n,
            services_per_machine: plan.services.len(),
            services: plan.services.len() * n,
        }
    }

    /// The fleet section of the text plan.
    pub fn text(&self) -> String {
        format!(
            "\nfleet (kubernetes: StatefulSet {}, Compose runs one machine)\n{}",
            self.stateful_set,
            table(&[
                vec![
                    "MACHINES".into(),
                    "GPUS/MACHINE".into(),
                    "GPUS".into(),
                    "WORKERS".into(),
                    "SERVICES".into(),
                ],
                vec![
                    self.replicas.to_string(),
                    self.gpus_per_machine.to_string(),
                    self.gpus.to_string(),
                    format!("{} ({} each)", self.workers, self.workers_per_machine),
                    format!("{} ({} each)", self.services, self.services_per_machine),
                ],
            ])
        ) + &format!(
            "machine ids: {}\nworker ids: <machine id>-worker-<connector>-<index> on each machine\n",
            self.machine_ids.join(", ")
        )
    }
}

/// The JSON contract with the fleet added under `fleet`.
pub fn json_with_fleet(plan: &Plan, fleet: &Fleet) -> String {
    let mut value = serde_json::to_value(plan).expect("plans serialise");
    value["fleet"] = serde_json::to_value(fleet).expect("fleets serialise");
    serde_json::to_string_pretty(&value).expect("json serialises")
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
                machine_model::ecosystem::Readiness::Http { url, .. } => format!("GET {url}"),
                machine_model::ecosystem::Readiness::Tcp { host, port, .. } => {
                    format!("tcp {}:{port}", host.as_deref().unwrap_or("127.0.0.1"))
                }
                machine_model::ecosystem::Readiness::Command { command, .. } => {
                    format!("command `{}`", command.join(" "))
                }
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
    if !plan.notes.is_empty() {
        out += "\nnotes\n";
        for note in &plan.notes {
            out += &format!("  {note}\n");
        }
    }
    out += "\nworker env (besides the machine's .env)\n";
    for w in &plan.workers {
        let env: Vec<String> = w.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out += &format!("  {}: {}\n", w.name, env.join(" "));
    }
    out
}
