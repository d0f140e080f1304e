//! Finding the repository and loading its profiles and component files, with every problem of every
//! profile reported in one run.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use machine_model::components::{self, ComponentSet, EnvVar, Resolved, SecretDecls};
use machine_model::load::{self, ProfileSource};
use machine_model::{Plan, Profile};

/// The repository root: `XTASK_ROOT` when set (tests run on a copy), else this crate's parent directory.
pub fn root() -> PathBuf {
    if let Some(dir) = std::env::var_os("XTASK_ROOT") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository")
        .to_path_buf()
}

/// A loaded, checked profile.
pub struct Loaded {
    /// Its name and text.
    pub source: ProfileSource,
    /// The parsed profile.
    pub profile: Profile,
    /// Its plan without overrides.
    pub plan: Plan,
    /// Its variables from components and `env`, with secrets as references.
    pub resolved: Resolved,
}

/// Reads every profile under `profiles/` and the component files under `profiles/components/`; fails
/// listing every problem of every profile and component file.
pub fn load_all() -> anyhow::Result<Vec<Loaded>> {
    let dir = root().join("profiles");
    let sources =
        load::read_dir(&dir, "profiles").with_context(|| format!("reading {}", dir.display()))?;
    let (set, component_diags) =
        ComponentSet::load_dir_as(&dir.join("components"), "profiles/components");
    let mut problems: Vec<String> = component_diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.one_line())
        .collect();
    let mut loaded = Vec::new();
    for source in sources {
        match load::check(&source) {
            Ok((profile, plan)) => match resolve(&set, &source, &profile, &plan) {
                Ok(resolved) => match plan_with_settings(&source, &profile, &resolved) {
                    Ok(plan) => loaded.push(Loaded {
                        source,
                        profile,
                        plan,
                        resolved,
                    }),
                    Err(e) => problems.push(e),
                },
                Err(diags) => problems.extend(diags),
            },
            Err(diags) => problems.extend(diags.iter().map(|d| d.to_string())),
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} problem(s) in profiles:\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
    Ok(loaded)
}

/// The plan again, with the machine settings (base ports, worker tunables) the components and `env` give.
fn plan_with_settings(
    source: &ProfileSource,
    profile: &Profile,
    resolved: &Resolved,
) -> Result<Plan, String> {
    let settings = resolved
        .literals()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let overrides = machine_model::Overrides {
        settings,
        ..machine_model::Overrides::default()
    };
    Plan::build(&source.name, profile, &overrides).map_err(|e| format!("{}: {e}", source.file))
}

/// Resolves a profile's component selection and `env`; checks that compose conditions name sections that
/// exist and that nothing overrides a variable the plan derives.
fn resolve(
    set: &ComponentSet,
    source: &ProfileSource,
    profile: &Profile,
    plan: &Plan,
) -> Result<Resolved, Vec<String>> {
    let mut problems = Vec::new();
    let selection: Vec<components::Selection> = profile
        .components
        .0
        .iter()
        .map(|(c, s)| components::Selection::new(c.clone(), s.sections()))
        .collect();
    let env: Vec<EnvVar> = profile
        .env
        .iter()
        .map(|(k, v)| EnvVar::new(k.clone(), v.clone()))
        .collect();
    let mut secrets = SecretDecls::new();
    for need in plan.secrets.iter().filter(|n| n.secret) {
        secrets.declare(
            need.name,
            format!("connector {}", need.connectors.join(", ")),
        );
    }
    for (name, service) in &profile.docker.services {
        if let Some(cond) = &service.when
            && let Some(file) = set.get(&cond.component)
            && file.section(&cond.variant).is_none()
        {
            let sections: Vec<&str> = file.section_names().collect();
            let hint =
                machine_model::suggest::did_you_mean(&cond.variant, sections.iter().copied())
                    .map(|s| format!("; did you mean \"{s}\"?"))
                    .unwrap_or_default();
            let (line, col) = load::locate(
                &source.text,
                &format!("/docker/services/{name}/when/variant"),
            );
            problems.push(format!(
                        "{}:{line}:{col}: /docker/services/{name}/when/variant: component {} has no section \"{}\"{hint} (sections: {})",
                        source.file,
                        cond.component,
                        cond.variant,
                        sections.join(", ")
                    ));
        }
    }
    let input = components::ResolveInput {
        env: &env,
        secrets: &secrets,
        ..components::ResolveInput::new(&source.name, &source.file, &selection)
    };
    let resolved = match components::resolve(set, &input) {
        Ok(r) => r,
        Err(diags) => {
            problems.extend(diags.iter().filter(|d| d.is_error()).map(|d| d.one_line()));
            return Err(problems);
        }
    };
    // Variables the plan derives come from the profile's typed fields, not from components.
    let derived = crate::render::env::derived_vars(profile, plan);
    for var in resolved.vars() {
        if let Some((_, value)) = derived.iter().find(|(k, _)| *k == var.name)
            && var.value.as_literal() != Some(value.as_str())
        {
            problems.push(format!(
                    "{}: {} is derived from the profile (value {value}); set it through the profile's typed fields, not components or env (origin: {})",
                    source.file,
                    var.name,
                    var.origin
                ));
        }
    }
    if problems.is_empty() {
        Ok(resolved)
    } else {
        Err(problems)
    }
}

/// Loads one profile by name, suggesting a close name when it does not exist.
pub fn load_one(name: &str) -> anyhow::Result<Loaded> {
    let all = load_all()?;
    let names: Vec<&str> = all.iter().map(|l| l.source.name.as_str()).collect();
    if let Some(i) = names.iter().position(|n| *n == name) {
        return Ok(all.into_iter().nth(i).expect("index is in range"));
    }
    let hint = machine_model::suggest::did_you_mean(name, names.iter().copied())
        .map(|s| format!("; did you mean \"{s}\"?"))
        .unwrap_or_default();
    bail!(
        "unknown profile \"{name}\"{hint} (profiles: {})",
        names.join(", ")
    )
}
