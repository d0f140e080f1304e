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
use machine_model::load::{self, ProfileSource};
use machine_model::pointer::escape_pointer;
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
    // std's parse error of a typed field (`docker.host_ip`), reported by the schema's `format`.
    "invalid IPv4 address syntax",
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

/// The model's findings, plus the worker spec's and the comfyui section's when the model stopped before
/// checking them (serde gives up at the first shape error, but a typo in `workers` or a bad custom node
/// commit is worth reporting in the same run).
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
    // The comfyui section's own rules, when that section reads on its own (its shape errors are the
    // schema's to report).
    if !diags.iter().any(|d| {
        d.pointer
            .as_deref()
            .is_some_and(|p| p.starts_with("/comfyui/"))
    }) && let Some(Ok(comfyui)) = value
        .get("comfyui")
        .map(|c| serde_json::from_value::<machine_model::profile::ComfyuiOptions>(c.clone()))
    {
        diags.extend(
            machine_model::comfyui_install::check(&comfyui)
                .into_iter()
                .map(|(pointer, message)| source.diagnostic(&pointer, message)),
        );
    }
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
            let message = format!(
                "{} is derived from the profile (value {value}); set it through the profile's typed fields, not components or env (origin: {})",
                var.name, var.origin
            );
            // Located at the profile's `env` entry when that is where it was set.
            problems.push(match var.origin {
                components::Origin::Profile { .. } => {
                    source.diagnostic(&format!("/env/{}", escape_pointer(&var.name)), message)
                }
                _ => Diagnostic::error(&source.file, None, message),
            });
        }
    }
    if problems.is_empty() {
        Ok(resolved)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The repository root (this crate's parent directory).
    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
    }

    /// The checked-in schema, compiled.
    fn schema() -> Schema {
        Schema::from_file(
            &root().join("schemas/profile.schema.json"),
            "schemas/profile.schema.json",
        )
        .unwrap()
    }

    /// A profiles directory holding `profiles` (name, text) and the repository's component files.
    fn profiles_dir(profiles: &[(&str, &str)]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let components = tmp.path().join("components");
        std::fs::create_dir(&components).unwrap();
        for entry in std::fs::read_dir(root().join("profiles/components")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, components.join(path.file_name().unwrap())).unwrap();
        }
        for (name, text) in profiles {
            std::fs::write(tmp.path().join(format!("{name}.json")), text).unwrap();
        }
        tmp
    }

    /// Validates one profile `p.json` with the text `text` and compares the messages (one line each).
    fn check(text: &str, expected: &[&str]) {
        let dir = profiles_dir(&[("p", text)]);
        let shown: Vec<String> = match validate_profiles(dir.path(), "profiles", &schema()) {
            Ok(_) => Vec::new(),
            Err(diags) => diags.iter().map(Diagnostic::one_line).collect(),
        };
        assert_eq!(shown, expected, "messages of:\n{text}");
    }

    /// A valid profile with `machine` replaced by `machine` and `extra` fields added at the end.
    fn profile(machine: &str, extra: &str) -> String {
        format!(
            "{{\n  \"description\": \"d\",\n  \"components\": {{ \"redis\": [\"default\", \"local\"] }},\n  \"workers\": \"openai:1\",\n  \"machine\": {machine}{extra}\n}}\n"
        )
    }

    const MACHINE: &str = r#"{ "gpus": 0, "ram_gb": 8 }"#;

    #[test]
    fn a_valid_profile_has_no_message() {
        check(&profile(MACHINE, ""), &[]);
    }

    #[test]
    fn unknown_field_with_did_you_mean() {
        check(
            &profile(MACHINE, ",\n  \"dockr\": {}"),
            &[
                "profiles/p.json:6:12: /dockr: unknown field \"dockr\" (did you mean \"docker\"?); allowed: $schema, description, components, workers, worker_bundle, machine, replicas, docker, env, comfyui",
            ],
        );
    }

    const SHA40: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn every_bad_comfyui_install_value_is_reported_at_once() {
        let comfyui = format!(
            r#",
  "comfyui": {{
    "packages": ["torch", "einops==0.8.2", "Einops==0.8.2"],
    "custom_nodes": [
      {{ "name": "n", "url": "https://example.com/n.zip", "commit": "{SHA40}" }},
      {{ "name": "n", "url": "git@github.com:o/n.git", "commit": "main" }},
      {{ "name": "../x", "url": "/srv/x", "commit": "{SHA40}" }}
    ],
    "models": [
      {{ "url": "https://h/a.safetensors", "sha256": "abc", "folder": "/checkpoints" }},
      {{ "url": "https://h/a.safetensors", "sha256": "{a}", "folder": "../vae" }},
      {{ "url": "https://h/b/a.safetensors", "sha256": "{a}", "folder": "vae" }},
      {{ "url": "https://h/c", "sha256": "{a}", "folder": "vae", "file_name": "a.safetensors" }}
    ]
  }}"#,
            a = "a".repeat(64)
        );
        check(
            &profile(MACHINE, &comfyui),
            &[
                "profiles/p.json:7:17: /comfyui/packages: comfyui.packages is set, but no worker of this profile runs on the comfyui service (workers: openai:1); remove it, or add a worker that does (e.g. comfyui:1:gpu)",
                "profiles/p.json:7:18: /comfyui/packages/0: package \"torch\" is not pinned; write name==version (e.g. \"opencv-python-headless==4.10.0.84\"), as pip freeze prints it, so the venv installs the same next year",
                "profiles/p.json:7:44: /comfyui/packages/2: package \"Einops\" is listed twice (also /comfyui/packages/1)",
                "profiles/p.json:8:21: /comfyui/custom_nodes: comfyui.custom_nodes is set, but no worker of this profile runs on the comfyui service (workers: openai:1); remove it, or add a worker that does (e.g. comfyui:1:gpu)",
                "profiles/p.json:9:29: /comfyui/custom_nodes/0/url: custom node \"n\": url \"https://example.com/n.zip\" names a file, not a git repository; allowed: https://host/path, http://host/path, ssh://[user@]host/path, git://host/path, user@host:path (scp-like), file:///path or an absolute path",
                "profiles/p.json:10:17: /comfyui/custom_nodes/1/name: custom node \"n\" is listed twice (also /comfyui/custom_nodes/0); each node has its own folder",
                "profiles/p.json:10:65: /comfyui/custom_nodes/1/commit: custom node \"n\": commit \"main\" is not a full 40-hex commit id; pin one (`git rev-parse HEAD` in the node's repository), branches and tags move",
                "profiles/p.json:11:17: /comfyui/custom_nodes/2/name: custom node name \"../x\" is not a folder name; use letters, digits, `_`, `-` and `.`, starting with a letter, digit or `_` (e.g. \"ComfyUI-Impact-Pack\")",
                "profiles/p.json:13:15: /comfyui/models: comfyui.models is set, but no worker of this profile runs on the comfyui service (workers: openai:1); remove it, or add a worker that does (e.g. comfyui:1:gpu)",
                "profiles/p.json:14:53: /comfyui/models/0/sha256: model https://h/a.safetensors: sha256 \"abc\" is not a SHA-256 (64 hex digits, as `sha256sum` prints it); every model is checked",
                "profiles/p.json:14:70: /comfyui/models/0/folder: model folder \"/checkpoints\" must be a relative folder under ComfyUI/models/ without `.` or `..` parts (letters, digits, `_`, `-`, `.`, `/` between parts; e.g. \"checkpoints\", \"loras/sdxl\")",
                "profiles/p.json:15:131: /comfyui/models/1/folder: model folder \"../vae\" must be a relative folder under ComfyUI/models/ without `.` or `..` parts (letters, digits, `_`, `-`, `.`, `/` between parts; e.g. \"checkpoints\", \"loras/sdxl\")",
                "profiles/p.json:17:139: /comfyui/models/3/file_name: model models/vae/a.safetensors is also the target of /comfyui/models/2; give one of them another file_name or folder",
            ],
        );
    }

    #[test]
    fn an_unknown_node_field_a_model_without_sha256_and_a_branch_for_a_commit_are_reported_together()
     {
        let comfyui = format!(
            r#",
  "comfyui": {{
    "custom_nodes": [
      {{ "name": "n", "url": "/srv/n", "commit": "{SHA40}", "branch": "main" }},
      {{ "name": "m", "url": "/srv/m", "commit": "v1.0" }}
    ],
    "models": [ {{ "url": "https://h/a.safetensors", "folder": "checkpoints" }} ]
  }}"#
        );
        // serde stops at the unknown field; the schema reports it and every shape problem beside it.
        check(
            &profile(MACHINE, &comfyui),
            &[
                "profiles/p.json:8:103: /comfyui/custom_nodes/0/branch: unknown field \"branch\"; allowed: name, url, commit, requirements, install_order, env",
                "profiles/p.json:9:49: /comfyui/custom_nodes/1/commit: \"v1.0\" has the wrong form; allowed: a string matching ^[0-9a-fA-F]{40}$",
                "profiles/p.json:11:17: /comfyui/models/0: missing required field \"sha256\"; allowed: an object with fields url, sha256, folder, file_name (required: url, sha256, folder)",
            ],
        );
    }

    #[test]
    fn wrong_type() {
        check(
            &profile(r#"{ "gpus": "two", "ram_gb": 8 }"#, ""),
            &[
                "profiles/p.json:5:24: /machine/gpus: wrong type: \"two\" is a string; allowed: an integer from 0 to 64",
            ],
        );
    }

    #[test]
    fn value_not_allowed() {
        check(
            &profile(MACHINE, ",\n  \"docker\": { \"restart\": \"sometimes\" }"),
            &[
                "profiles/p.json:6:26: /docker/restart: \"sometimes\" matches none of the allowed forms; allowed: one of \"no\", \"always\", \"on-failure\", \"unless-stopped\"",
            ],
        );
    }

    #[test]
    fn wrong_format() {
        check(
            &profile(MACHINE, ",\n  \"docker\": { \"host_ip\": \"localhost\" }"),
            &[
                "profiles/p.json:6:26: /docker/host_ip: \"localhost\" has the wrong form; allowed: an IPv4 address (e.g. 127.0.0.1)",
            ],
        );
    }

    #[test]
    fn missing_required_field() {
        check(
            "{\n  \"description\": \"d\",\n  \"workers\": \"openai:1\"\n}\n",
            &[
                "profiles/p.json:1:1: /: missing required field \"machine\"; allowed: an object with fields $schema, description, components, workers, worker_bundle, machine, replicas, docker, env, comfyui (required: description, workers, machine)",
            ],
        );
    }

    #[test]
    fn out_of_range_and_wrong_form() {
        check(
            &profile(
                r#"{ "gpus": 0, "ram_gb": 0 }"#,
                ",\n  \"docker\": { \"resources\": { \"memory\": \"48\" } },\n  \"worker_bundle\": { \"source\": \"file:///b\", \"sha256\": \"xyz\" }",
            ),
            &[
                "profiles/p.json:5:37: /machine/ram_gb: 0 is below the minimum 1; allowed: an integer of at least 1",
                "profiles/p.json:6:40: /docker/resources/memory: \"48\" has the wrong form; allowed: a string matching ^[0-9]+[bkmg]$, or null",
                "profiles/p.json:7:55: /worker_bundle/sha256: \"xyz\" has the wrong form; allowed: a string matching ^[0-9a-fA-F]{64}$, or null",
            ],
        );
    }

    #[test]
    fn a_wrong_schema_path_is_refused_naming_the_right_one() {
        // Issue 21: a mistyped `$schema` passed (exit 0, files written) and only the editor lost its checks.
        check(
            "{\n  \"$schema\": \"../schema/profile.schema.json\",\n  \"description\": \"d\",\n  \"workers\": \"openai:1\",\n  \"machine\": { \"gpus\": 0, \"ram_gb\": 8 }\n}\n",
            &[
                "profiles/p.json:2:14: /$schema: $schema is \"../schema/profile.schema.json\", which is not the profile schema; allowed: \"../schemas/profile.schema.json\" (the generated schema, relative to profiles/), or no $schema",
            ],
        );
        check(
            "{\n  \"$schema\": \"../schemas/profile.schema.json\",\n  \"description\": \"d\",\n  \"workers\": \"openai:1\",\n  \"machine\": { \"gpus\": 0, \"ram_gb\": 8 }\n}\n",
            &[],
        );
    }

    #[test]
    fn a_health_port_of_zero_is_refused() {
        // `--health-port 0` (any free port) is for tests; a machine's port must be one others can reach.
        check(
            &profile(r#"{ "gpus": 0, "ram_gb": 8, "health_port": 0 }"#, ""),
            &[
                "profiles/p.json:5:55: /machine/health_port: 0 is below the minimum 1; allowed: an integer from 1 to 65535",
            ],
        );
    }

    #[test]
    fn bad_component_key() {
        check(
            "{\n  \"description\": \"d\",\n  \"components\": { \"Redis\": \"local\" },\n  \"workers\": \"openai:1\",\n  \"machine\": { \"gpus\": 0, \"ram_gb\": 8 }\n}\n",
            &[
                "profiles/p.json:3:28: /components/Redis: key \"Redis\" is invalid; allowed: keys matching ^[a-z][a-z0-9_-]*$",
            ],
        );
    }

    #[test]
    fn bad_worker_spec() {
        check(
            &profile(MACHINE, "").replace("openai:1", "opena:1"),
            &[
                "profiles/p.json:4:14: /workers: worker spec item 1 \"opena:1\" (column 1): unknown connector \"opena\"; did you mean \"openai\"? (known: comfyui, comfyui-remote, emprops-app, simulation-websocket, openai, openai-response, gemini, ollama, mock, playwright)",
            ],
        );
    }

    #[test]
    fn bad_plan() {
        check(
            &profile(MACHINE, "").replace("openai:1", "comfyui:1"),
            &[
                "profiles/p.json:5:24: /machine/gpus: gpu-bound workers (comfyui) on a machine planned with 0 GPUs; set machine.gpus (or --gpus) or bind them to cpu where the connector allows it",
            ],
        );
    }

    #[test]
    fn component_problems() {
        check(
            &profile(
                MACHINE,
                ",\n  \"env\": { \"MACHINE_GPU_COUNT\": \"4\" },\n  \"docker\": { \"services\": { \"redis\": { \"image\": \"redis:7\", \"when\": { \"component\": \"redis\", \"variant\": \"locl\" } } } }",
            ),
            &[
                "profiles/p.json:7:103: /docker/services/redis/when/variant: component redis has no section \"locl\"; did you mean \"local\"? (sections: default, local, remote)",
                "profiles/p.json:6:33: /env/MACHINE_GPU_COUNT: MACHINE_GPU_COUNT is derived from the profile (value 0); set it through the profile's typed fields, not components or env (origin: profile env in profiles/p.json)",
            ],
        );
        check(
            &profile(MACHINE, "").replace("\"local\"]", "\"lokal\"]"),
            &[
                "profiles/p.json: error: profile p selects section \"lokal\" of component redis, which does not exist; profiles/components/redis.env has sections \"default\", \"local\", \"remote\" (help: did you mean \"local\"? select one of the existing sections or add [lokal] to profiles/components/redis.env)",
            ],
        );
    }

    #[test]
    fn every_problem_of_every_profile_in_one_run() {
        let broken = profile(MACHINE, ",\n  \"dockr\": {}").replace("openai:1", "opena:1");
        let good = profile(MACHINE, "");
        let dir = profiles_dir(&[("b", &broken), ("a", &good), ("c", &broken)]);
        let diags = validate_profiles(dir.path(), "profiles", &schema()).unwrap_err();
        let shown: Vec<String> = diags
            .iter()
            .map(|d| format!("{}:{}", d.file, d.pointer.as_deref().unwrap_or("-")))
            .collect();
        assert_eq!(
            shown,
            [
                "profiles/b.json:/workers",
                "profiles/b.json:/dockr",
                "profiles/c.json:/workers",
                "profiles/c.json:/dockr"
            ]
        );
        let dir = profiles_dir(&[("a", &good), ("b", &good)]);
        let names: Vec<String> = validate_profiles(dir.path(), "profiles", &schema())
            .unwrap()
            .into_iter()
            .map(|v| v.source.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn an_empty_directory_and_a_broken_schema_name_the_fix() {
        let dir = profiles_dir(&[]);
        let diags = validate_profiles(dir.path(), "profiles", &schema()).unwrap_err();
        assert_eq!(
            diags[0].one_line(),
            "profiles: error: no *.json profiles found; add at least one (e.g. copy profiles/gpu-mixed.json)"
        );
        let err = Schema::from_text("{\n  \"type\": ", "schemas/profile.schema.json").unwrap_err();
        assert!(
            err.one_line().starts_with(
                "schemas/profile.schema.json:2:10: error: the profile schema is not JSON"
            ) && err
                .one_line()
                .ends_with("run `cargo xtask codegen` to regenerate it"),
            "{}",
            err.one_line()
        );
    }

    #[test]
    fn every_repository_profile_is_valid_and_bakes() {
        let validated = validate_profiles(&root().join("profiles"), "profiles", &schema()).unwrap();
        let code = bake::source(&validated);
        assert!(code.starts_with("// @generated by machine-runtime/build.rs"));
        for v in &validated {
            let ident = v.source.name.to_ascii_uppercase().replace('-', "_");
            assert!(
                code.contains(&format!("pub const {ident}: BakedProfile")),
                "{ident} missing"
            );
        }
        assert_eq!(code, bake::source(&validated), "baking is deterministic");
    }
}
