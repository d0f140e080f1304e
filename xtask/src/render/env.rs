//! The `.env` rendering: the variables the plan derives, then the components' and profile's literal values,
//! each written with the one quoting rule every reader agrees on. No secret, nor any value built from one.

use anyhow::bail;
use machine_model::components::dotenv_line;

use crate::profiles::Loaded;

pub fn render(l: &Loaded) -> anyhow::Result<String> {
    let derived = machine_model::derived::env_vars(&l.profile, &l.plan);
    let mut out = format!("# {}\n", super::header(&l.source.name));
    out += "# Secrets are not here: see .env.secrets.example beside this file.\n";
    let mut problems = Vec::new();
    let mut section = |title: &str, vars: Vec<(&str, &str)>, out: &mut String| {
        if vars.is_empty() {
            return;
        }
        *out += &format!("\n# {title}\n");
        for (k, v) in vars {
            match dotenv_line(k, v) {
                Ok(line) => {
                    *out += &line;
                    out.push('\n');
                }
                // Named where the value was written (component line, profile position), not
                // in the .env that was never written.
                Err(e) => problems.push(format!("{}: {e}", origin_of(l, k))),
            }
        }
    };
    section(
        "derived from the plan",
        derived
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        &mut out,
    );
    let from_components: Vec<(&str, &str)> = l
        .resolved
        .literals()
        .filter(|(k, _)| !derived.iter().any(|(d, _)| d == k))
        .collect();
    section("from components and profile env", from_components, &mut out);
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(out)
}

/// Where variable `key` of `l` was written, for messages: the component file and line, the
/// profile's `env` entry (file:line:column), or the profile itself for derived variables.
fn origin_of(l: &Loaded, key: &str) -> String {
    use machine_model::components::Origin;
    match l
        .resolved
        .vars()
        .iter()
        .find(|v| v.name == key)
        .map(|v| &v.origin)
    {
        Some(Origin::Profile {
            file,
            position: None,
        }) => {
            let (line, column) =
                machine_model::pointer::locate(&l.source.text, &format!("/env/{key}"));
            format!("{file}:{line}:{column}: /env/{key}")
        }
        Some(origin) => format!("{origin}: {key}"),
        None => format!("{} (derived from the profile): {key}", l.source.file),
    }
}

/// What `.env.secrets.example` asks to fill in, as (variable, who needs it), in file order: the profile's
/// secrets, then the workers' required variables that no component gives a value (the machine refuses to
/// start without them, so they are filled in like secrets). `cargo xtask secrets` lists the same.
pub fn to_fill_in(l: &Loaded) -> Vec<(String, String)> {
    let secrets = l.resolved.secrets();
    let mut out: Vec<(String, String)> = secrets
        .iter()
        .map(|s| (s.name.to_string(), s.needed_by.join(", ")))
        .collect();
    for name in super::compose::needs_without_value(l) {
        if secrets.iter().any(|s| s.name == name) {
            continue;
        }
        let workers: Vec<&str> = l
            .plan
            .secrets
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.connectors.clone())
            .unwrap_or_default();
        let needed_by = format!("the {} workers (no component sets it)", workers.join(", "));
        out.push((name.to_string(), needed_by));
    }
    out
}

/// `.env.secrets.example`: the names of every secret the machine needs ([`to_fill_in`]), no values.
pub fn secrets_example(l: &Loaded) -> String {
    let mut out = format!("# {}\n", super::header(&l.source.name));
    out += "# Copy to .env.secrets (git-ignored) and fill in; Compose passes these through to the machine.\n";
    for (name, needed_by) in to_fill_in(l) {
        out += &format!("# needed by {needed_by}\n{name}=\n");
    }
    out += "# optional: the token of the health port's POST routes (/restart/..., /refresh-status)\n#MACHINE_CONTROL_TOKEN=\n";
    out += "# optional, for a rediss:// broker: PEM files of its CA and of this machine's client certificate and\n# key (mutual TLS), as paths inside the container (mount them); INSECURE=true turns certificate checks off\n";
    for var in machine_model::catalog::BROKER_TLS_VARS {
        out += &format!("#{var}=\n");
    }
    out
}
