//! The `.env` rendering: every machine variable, one quoting rule, no secret values.

use anyhow::bail;

use crate::profiles::Loaded;

/// The machine variables of a plan and profile, in a fixed order.
pub fn machine_vars(l: &Loaded) -> Vec<(String, String)> {
    let p = &l.plan;
    let m = &l.profile.machine;
    let mut v: Vec<(String, String)> = vec![
        ("MACHINE_PROFILE".into(), p.profile.clone()),
        ("MACHINE_ID".into(), p.machine_id.clone()),
        ("WORKER_CONNECTORS".into(), p.worker_spec.clone()),
        // The existing runtime reads WORKERS; same value, one source.
        ("WORKERS".into(), p.worker_spec.clone()),
        ("MACHINE_GPU_COUNT".into(), p.gpus.to_string()),
        ("NUM_GPUS".into(), p.gpus.to_string()),
        ("MACHINE_HAS_GPU".into(), (p.gpus > 0).to_string()),
        ("MACHINE_RAM_GB".into(), m.ram_gb.to_string()),
        (
            "MACHINE_ALLOW_FEWER_GPUS".into(),
            m.allow_fewer_gpus.to_string(),
        ),
        ("MACHINE_HEALTH_PORT".into(), p.health_port.to_string()),
        ("WORKSPACE_DIR".into(), p.workspace.clone()),
    ];
    if let Some(model) = &m.gpu_model {
        v.push(("MACHINE_GPU_MODEL".into(), model.clone()));
    }
    if p.gpus > 0 {
        // NVML needs `utility`, CUDA `compute`; the toolkit's default changed across versions.
        v.push((
            "NVIDIA_DRIVER_CAPABILITIES".into(),
            "compute,utility".into(),
        ));
    }
    v
}

/// One `KEY='value'` line. Single quotes are literal for dotenv readers, `node --env-file` and Compose
/// `env_file` alike (no `$` interpolation, `#` kept); values that single quotes cannot carry are refused.
/// docker-compose 1.x (python-dotenv) still expands `${…}` and unescapes `\\` inside single quotes, and a
/// trailing `\` escapes the closing quote for dotenvy and python-dotenv, so those are refused too.
pub fn line(key: &str, value: &str) -> anyhow::Result<String> {
    if value.contains('\'') || value.contains('\n') || value.contains('\r') {
        bail!(
            "value of {key} contains a single quote or a line break, which .env files cannot carry identically for every reader"
        );
    }
    if value.contains("${") || value.contains("\\\\") || value.ends_with('\\') {
        bail!(
            "value of {key} contains `${{`, `\\\\` or ends with `\\`, which docker-compose 1.x reads differently from other .env readers; rewrite the value"
        );
    }
    Ok(format!("{key}='{value}'"))
}

pub fn render(l: &Loaded) -> anyhow::Result<String> {
    let mut out = format!("# {}\n", super::header(&l.source.name));
    out += "# Secrets are not here: put them in .env.secrets beside this file (git-ignored) or the environment.\n";
    out += "\n# machine\n";
    for (k, v) in machine_vars(l) {
        out += &line(&k, &v)?;
        out.push('\n');
    }
    if !l.profile.env.is_empty() {
        out += "\n# profile env\n";
        for (k, v) in &l.profile.env {
            out += &line(k, v)?;
            out.push('\n');
        }
    }
    Ok(out)
}
