//! The one profile validator, called by `machine-runtime/build.rs` (which bakes the result into typed
//! constants, [`bake::source`]) and by the xtask's loader (env-build, check, plan, list, …), so that
//! `cargo build` and `cargo xtask check` give the same verdict, with the same messages, on every profile.
//!
//! [`validate_profiles`] reads every `<dir>/*.json` and the component files `<dir>/components/*.env`, and
//! checks each profile in one run against:
//!
//! 1. the JSON Schema ([`Schema`], draft-07: `schemas/profile.schema.json`, generated from the model);
//! 2. the model ([`machine_model::load::check`]: shape, worker spec, plan, compose conditions);
//! 3. the component files: the selection resolves, compose conditions name sections that exist, and
//!    nothing overrides a variable the plan derives ([`machine_model::derived::env_vars`]);
//! 4. the plan again with the machine settings the components give.
//!
//! Every problem of every profile comes back at once, one [`Diagnostic`] each, shown as
//! `profiles/x.json:LINE:COL: /pointer: what is wrong; allowed: …`.

pub mod bake;
mod schema;

use std::path::{Path, PathBuf};

use machine_model::components::{self, ComponentSet, EnvVar, Resolved, SecretDecls};
use machine_model::load::{self, ProfileSource, escape_pointer};
use machine_model::{Overrides, Plan, Profile};
use serde_json::Value;

pub use machine_model::Diagnostic;
pub use schema::Schema;
use schema::{Located, offset_of};

/// A profile that passed every check.
#[derive(Debug, Clone)]
pub struct Validated {
    /// Its name (file stem), file as shown and text.
    pub source: ProfileSource,
    /// The parsed profile.
    pub profile: Profile,
    /// Its plan, with the machine settings (base ports, worker tunables) its components and `env` give.
    pub plan: Plan,
    /// Its variables from components and `env`, with secrets as references.
    pub resolved: Resolved,
}

/// The files [`validate_profiles`] reads under `dir`: every `*.json` and every `components/*.env`,
/// sorted (for a build script's `cargo::rerun-if-changed` lines). Unreadable directories give nothing.
pub fn input_files(dir: &Path) -> Vec<PathBuf> {
    let list = |dir: &Path, ext: &str| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
            .collect();
        files.sort();
        files
    };
    let mut files = list(dir, "json");
    files.extend(list(&dir.join("components"), "env"));
    files
}

/// Validates every `<dir>/*.json` (shown in messages as `<shown_dir>/x.json`, e.g. `profiles/x.json`)
/// with the component files of `<dir>/components` against `schema`, the model and the plan.
///
/// Returns the profiles sorted by name. Errors: every problem of every profile and component file, in
/// file order and, within a profile, in document order; also when the directory cannot be read or holds
/// no profile.
pub fn validate_profiles(
    dir: &Path,
    shown_dir: &str,
    schema: &Schema,
) -> Result<Vec<Validated>, Vec<Diagnostic>> {
    let sources = load::read_dir(dir, shown_dir).map_err(|e| {
        vec![Diagnostic::error(
            shown_dir,
            None,
            format!("cannot read the profiles directory ({e})"),
        )]
    })?;
    if sources.is_empty() {
        return Err(vec![Diagnostic::error(
            shown_dir,
            None,
            "no *.json profiles found; add at least one (e.g. copy profiles/gpu-mixed.json)",
        )]);
    }
    let (set, component_diags) =
        ComponentSet::load_dir_as(&dir.join("components"), &format!("{shown_dir}/components"));
    let mut problems: Vec<Diagnostic> = component_diags
        .into_iter()
        .filter(Diagnostic::is_error)
        .collect();
    let mut validated = Vec::new();
    for source in sources {
        match validate_one(&set, schema, &source) {
            Ok((profile, plan, resolved)) => validated.push(Validated {
                source,
                profile,
                plan,
                resolved,
            }),
            Err(diags) => problems.extend(diags),
        }
    }
    if problems.is_empty() {
        Ok(validated)
    } else {
        Err(problems)
    }
}

/// One profile through the schema, the model, its components and the plan with settings.
fn validate_one(
    set: &ComponentSet,
    schema: &Schema,
    source: &ProfileSource,
) -> Result<(Profile, Plan, Resolved), Vec<Diagnostic>> {
    let schema_diags = schema.check(source);
    let (profile, plan) = match load::check(source) {
        Ok(checked) if schema_diags.is_empty() => checked,
        result => return Err(merge(source, schema_diags, with_spec(source, result.err()))),
    };
    let resolved = resolve(set, source, &profile, &plan)?;
    let settings = resolved
        .literals()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let overrides = Overrides {
        settings,
        ..Overrides::default()
    };
    match Plan::build(&source.name, &profile, &overrides) {
        Ok(plan) => Ok((profile, plan, resolved)),
        Err(errors) => Err(load::plan_diagnostics(source, errors)),
    }
}

// ---------------------------------------------------------------------------------------------
// Merging the schema's and the model's findings.

/// The prefixes of serde's own shape errors; the schema reports the same problems with a pointer and
/// what is allowed. Any other serde message is one of the model's (e.g. a component listed twice).
const SERDE_SHAPE_PREFIXES: &[&str] = &[
    "unknown field",
    "missing field",
    "invalid type",
    "invalid value",
    "unknown variant",
    "invalid length",
];

/// One list per profile, in document order: the schema's findings, minus those the model says more
/// precisely (same pointer), plus the model's findings, minus serde shape errors inside a value the
/// schema already reported.
fn merge(
    source: &ProfileSource,
    schema_diags: Vec<Located>,
    model_diags: Vec<Diagnostic>,
) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::new();
    let model_pointers: Vec<&str> = model_diags
        .iter()
        .filter_map(|d| d.pointer.as_deref())
        .filter(|p| !p.is_empty())
        .collect();
    for located in &schema_diags {
        if !model_pointers.contains(&located.diag.pointer.as_deref().unwrap_or_default()) {
            out.push(located.diag.clone());
        }
    }
    for diag in model_diags {
        let serde_shape = diag.pointer.as_deref().is_none_or(str::is_empty)
            && SERDE_SHAPE_PREFIXES
                .iter()
                .any(|p| diag.message.starts_with(p));
        if serde_shape && let Some(position) = diag.position {
            let at = offset_of(
                &source.text,
                position.line as usize,
                position.column as usize,
            );
            if schema_diags
                .iter()
                .any(|l| l.span.0 <= at && at <= l.span.1)
            {
                continue;
            }
        }
        out.push(diag);
    }
    out.sort_by_key(|d| d.position);
    out.dedup_by(|a, b| a.to_string() == b.to_string());
    out
}

/// The model's findings, plus the worker spec's when the model stopped before checking it (serde
/// gives up at the first shape error, but a typo in `workers` is worth reporting in the same run).
fn with_spec(source: &ProfileSource, model_diags: Option<Vec<Diagnostic>>) -> Vec<Diagnostic> {
    let mut diags = model_diags.unwrap_or_default();
    if diags
        .iter()
        .any(|d| d.pointer.as_deref() == Some("/workers"))
    {
        return diags;
    }
    let Ok(value) = serde_json::from_str::<Value>(&source.text) else {
        return diags;
    };
    if let Some(Err(errors)) = value
        .get("workers")
        .and_then(Value::as_str)
        .map(machine_model::WorkerSpec::parse)
    {
        diags.extend(
            errors
                .0
                .iter()
                .map(|e| source.diagnostic("/workers", e.to_string())),
        );
    }
    diags
}

// ---------------------------------------------------------------------------------------------
// The component files.

/// Resolves a profile's component selection and `env`; checks that compose conditions name sections that
/// exist and that nothing overrides a variable the plan derives.
fn resolve(
    set: &ComponentSet,
    source: &ProfileSource,
    profile: &Profile,
    plan: &Plan,
) -> Result<Resolved, Vec<Diagnostic>> {
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
            problems.push(source.diagnostic(
                &format!("/docker/services/{}/when/variant", escape_pointer(name)),
                format!(
                    "component {} has no section \"{}\"{hint} (sections: {})",
                    cond.component,
                    cond.variant,
                    sections.join(", ")
                ),
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
            problems.extend(diags.into_iter().filter(Diagnostic::is_error));
            return Err(problems);
        }
    };
    // Variables the plan derives come from the profile's typed fields, not from components.
    let derived = machine_model::derived::env_vars(profile, plan);
    for var in resolved.vars() {
        if let Some((_, value)) = derived.iter().find(|(k, _)| *k == var.name)
            && var.value.as_literal() != Some(value.as_str())
        {
            problems.push(Diagnostic::error(
                &source.file,
                None,
                format!(
                    "{} is derived from the profile (value {value}); set it through the profile's typed fields, not components or env (origin: {})",
                    var.name, var.origin
                ),
            ));
        }
    }
    if problems.is_empty() {
        Ok(resolved)
    } else {
        Err(problems)
    }
}
