//! Loading and checking profile files through the model with every problem located:
//! `profiles/x.json:LINE:COL`, the JSON pointer, what is wrong and what is allowed. The profile
//! validator (`machine-profile-check`, called by build.rs and the xtask alike) adds the JSON Schema
//! and the component files on top.

use std::path::Path;

pub use crate::diag::Diagnostic;
use crate::diag::Position;
use crate::plan::{Overrides, Plan, PlanError, PlanErrors};
use crate::pointer::escape_pointer;
use crate::profile::{Profile, valid_profile_name};

/// A profile file's name and text.
#[derive(Debug, Clone)]
pub struct ProfileSource {
    /// The profile name (file stem).
    pub name: String,
    /// The file as shown to people.
    pub file: String,
    /// The file's text.
    pub text: String,
}

impl ProfileSource {
    /// An error about the value at `pointer` of this profile, located in its text.
    pub fn diagnostic(&self, pointer: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::in_json(&self.file, &self.text, pointer, message)
    }
}

/// Reads every `*.json` in `dir` (sorted by name), as shown relative to `shown_dir`.
pub fn read_dir(dir: &Path, shown_dir: &str) -> std::io::Result<Vec<ProfileSource>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") || !path.is_file() {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let file = format!("{shown_dir}/{name}.json");
        let text = read_utf8(&path, &file)?;
        out.push(ProfileSource {
            name: name.to_string(),
            file,
            text,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Reads a text file that must be UTF-8. Invalid UTF-8 is an `InvalidData` error naming the file
/// as `shown`, the line and column of the first bad byte and the byte, e.g.
/// `profiles/p.json:3:14: not valid UTF-8 (byte 0xff); save the file as UTF-8`.
pub(crate) fn read_utf8(path: &Path, shown: &str) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        // Columns count characters, like every other position in our messages.
        let column = String::from_utf8_lossy(&good[line_start..]).chars().count() + 1;
        let bad = e.as_bytes()[good.len()];
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{shown}:{line}:{column}: not valid UTF-8 (byte 0x{bad:02x}); save the file as UTF-8"),
        )
    })
}

/// Parses and checks one profile through the model: shape, worker spec, plan, conditions.
///
/// Errors: every problem found, each located (see [`Diagnostic`]); a serde shape error (unknown field,
/// wrong type) stops the check there, with the whole document as its pointer (`/`).
pub fn check(source: &ProfileSource) -> Result<(Profile, Plan), Vec<Diagnostic>> {
    let at = |pointer: &str, message: String| source.diagnostic(pointer, message);
    let mut diags: Vec<Diagnostic> = name_problem(source).into_iter().collect();
    let profile = match parse_profile(source) {
        Ok(profile) => profile,
        Err(diag) => {
            diags.push(diag);
            return Err(diags);
        }
    };
    diags.extend(
        profile_problems(&profile)
            .into_iter()
            .map(|(pointer, message)| at(&pointer, message)),
    );
    let plan = Plan::build(&source.name, &profile, &Overrides::default());
    if let Ok(plan) = &plan {
        diags.extend(
            service_options_problems(&profile, plan)
                .into_iter()
                .map(|(pointer, message)| at(&pointer, message)),
        );
    }
    match plan {
        Ok(plan) if diags.is_empty() => Ok((profile, plan)),
        Ok(_) => Err(diags),
        Err(errors) => {
            diags.extend(plan_diagnostics(source, errors));
            Err(diags)
        }
    }
}

/// The error of a profile whose file name is not a valid profile name.
fn name_problem(source: &ProfileSource) -> Option<Diagnostic> {
    if valid_profile_name(&source.name) {
        return None;
    }
    Some(
        Diagnostic::error(
            &source.file,
            Some(Position::new(1, 1)),
            format!(
                "profile name \"{}\" is invalid; file names are lowercase letters, digits and '-', starting with a letter",
                source.name
            ),
        )
        .with_pointer(""),
    )
}

/// The profile's text as a [`Profile`]; a serde error (syntax, unknown field, wrong type) at its line and
/// column, with the whole document as its pointer.
fn parse_profile(source: &ProfileSource) -> Result<Profile, Diagnostic> {
    serde_json::from_str(&source.text).map_err(|e| {
        Diagnostic::error(
            &source.file,
            Some(Position::at(e.line().max(1), e.column().max(1))),
            serde_message(&e),
        )
        .with_pointer("")
    })
}

/// The problems of a parsed profile the planner does not see, as (JSON pointer, message), in this order:
/// service conditions, `$schema`, fleet sizes, Kubernetes services, the ComfyUI install section.
fn profile_problems(profile: &Profile) -> Vec<(String, String)> {
    let mut out = condition_problems(profile);
    if let Some(schema) = &profile.schema
        && schema != crate::profile::SCHEMA_REF
    {
        out.push((
            "/$schema".into(),
            format!(
                "$schema is \"{schema}\", which is not the profile schema; allowed: \"{}\" (the generated schema, relative to profiles/), or no $schema",
                crate::profile::SCHEMA_REF
            ),
        ));
    }
    out.extend(fleet_problems(profile));
    for (name, service) in &profile.docker.services {
        if service.kubernetes && service.ports.is_empty() {
            out.push((
                format!("/docker/services/{}/kubernetes", escape_pointer(name)),
                format!(
                    "service \"{name}\" runs in Kubernetes but lists no ports; add its container ports (e.g. \"ports\": [6379]) so the cluster Service can reach it"
                ),
            ));
        }
    }
    out.extend(crate::comfyui_install::check(&profile.comfyui));
    out
}

/// Service conditions (`docker.services.<name>.when`) naming a component the profile does not select.
fn condition_problems(profile: &Profile) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, service) in &profile.docker.services {
        if let Some(cond) = &service.when
            && profile.components.get(&cond.component).is_none()
        {
            let known: Vec<&str> = profile
                .components
                .0
                .iter()
                .map(|(c, _)| c.as_str())
                .collect();
            out.push((
                format!("/docker/services/{}/when/component", escape_pointer(name)),
                format!(
                    "condition names component \"{}\", which this profile does not select; selected components: {}",
                    cond.component,
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            ));
        }
    }
    out
}

/// `replicas` out of its range, and a `docker.host` whose machine count is out of range or whose
/// machines need more GPUs than it has.
fn fleet_problems(profile: &Profile) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !crate::profile::REPLICAS_RANGE.contains(&profile.replicas) {
        out.push((
            "/replicas".into(),
            format!(
                "replicas is {}; a fleet has {} to {} machines",
                profile.replicas,
                crate::profile::REPLICAS_RANGE.start(),
                crate::profile::REPLICAS_RANGE.end()
            ),
        ));
    }
    if let Some(host) = profile.docker.host {
        let range = crate::profile::HOST_MACHINES_RANGE;
        if !range.contains(&host.machines) {
            out.push((
                "/docker/host/machines".into(),
                format!(
                    "docker.host.machines is {}; a host runs {} to {} machines",
                    host.machines,
                    range.start(),
                    range.end()
                ),
            ));
        } else if host.machines * profile.machine.gpus > host.gpus {
            let fit = host.gpus / profile.machine.gpus;
            out.push((
                "/docker/host/gpus".into(),
                format!(
                    "{} machines × {} GPUs (machine.gpus) need {} GPUs but the host has {}; run at most {fit} machine(s) of {} GPUs on it (docker.host.machines), or give each fewer GPUs",
                    host.machines,
                    profile.machine.gpus,
                    host.machines * profile.machine.gpus,
                    host.gpus,
                    profile.machine.gpus
                ),
            ));
        }
    }
    out
}

/// The command-line options of a profile's service sections (`comfyui.cpu`, `comfyui.args`), as
/// (JSON pointer, message): an argument repeating a flag the machine sets, and options for a service no
/// worker of the profile runs on. The latter is an error, not a warning: a section that nothing reads
/// is a mistake the profile's author would otherwise never hear about (their ComfyUI is elsewhere).
fn service_options_problems(profile: &Profile, plan: &Plan) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in crate::catalog::SERVICES {
        let Some(options) = entry.profile_options.map(|options| options(profile)) else {
            continue;
        };
        let section = entry.name;
        for (i, message) in crate::service_args::problems(entry, &options.args) {
            out.push((
                format!("/{section}/args/{i}"),
                format!("{section}.args[{i}]: {message}"),
            ));
        }
        if !plan.services_needed.contains(&entry.name) {
            let mut fields = vec![("cpu", options.cpu), ("args", !options.args.is_empty())];
            if section == "comfyui" {
                // What the install adds to ComfyUI: never installed when no worker needs ComfyUI.
                let c = &profile.comfyui;
                fields.extend([
                    ("packages", !c.packages.is_empty()),
                    ("custom_nodes", !c.custom_nodes.is_empty()),
                    ("models", !c.models.is_empty()),
                ]);
            }
            let set: Vec<&str> = fields
                .into_iter()
                .filter_map(|(field, set)| set.then_some(field))
                .collect();
            for field in set {
                out.push((
                    format!("/{section}/{field}"),
                    format!(
                        "{section}.{field} is set, but no worker of this profile runs on the {section} service (workers: {}); remove it, or add a worker that does (e.g. {section}:1:gpu)",
                        profile.workers
                    ),
                ));
            }
        }
    }
    out
}

/// The plan's errors, each located at the profile field it is about (`/workers` for the worker spec,
/// `/machine/gpus`, `/machine/health_port`, `/machine/id`, `/components` for machine settings).
pub fn plan_diagnostics(source: &ProfileSource, errors: PlanErrors) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    for e in errors.0 {
        let pointer = match &e {
            PlanError::Spec(spec) => {
                diags.extend(
                    spec.0
                        .iter()
                        .map(|s| source.diagnostic("/workers", s.to_string())),
                );
                continue;
            }
            PlanError::GpuBindingWithoutGpus { .. } | PlanError::TooManyGpus(_) => "/machine/gpus",
            PlanError::PortCollision { .. } => "/machine/health_port",
            PlanError::MachineId(_) => "/machine/id",
            PlanError::Setting { .. } => "/components",
        };
        diags.push(source.diagnostic(pointer, e.to_string()));
    }
    diags
}

/// serde_json's message without its trailing " at line X column Y" (the diagnostic carries the position).
fn serde_message(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pointer::locate;

    /// The problems `check` reports for a profile text, as they are printed.
    fn problems(text: &str) -> Vec<String> {
        check(&source(text))
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const TEXT: &str = "{\n  \"description\": \"d\",\n  \"workers\": \"comfyu:1\",\n  \"machine\": {\"gpus\": 0, \"ram_gb\": 1},\n  \"list\": [1, {\"a\": [true]}]\n}\n";

    #[test]
    fn locates_pointers() {
        assert_eq!(locate(TEXT, "/workers"), (3, 14));
        assert_eq!(locate(TEXT, "/machine/ram_gb"), (4, 36));
        assert_eq!(locate(TEXT, "/list/1/a/0"), (5, 22));
        // A missing member points at its closest existing ancestor.
        assert_eq!(locate(TEXT, "/machine/nope"), (4, 14));
        assert_eq!(locate(TEXT, ""), (1, 1));
        assert_eq!(locate("{\"a~/b\": 1}", "/a~0~1b"), (1, 10));
    }

    fn source(text: &str) -> ProfileSource {
        ProfileSource {
            name: "x".into(),
            file: "profiles/x.json".into(),
            text: text.into(),
        }
    }

    #[test]
    fn comfyui_args_repeating_the_machine_s_flags_and_options_nothing_reads_are_located() {
        let text = r#"{
  "description": "d",
  "workers": "comfyui:1:gpu",
  "machine": {"gpus": 1, "ram_gb": 1},
  "comfyui": {"args": ["--fast", "--listen", "--port=9000", "--output-directory", "/x"]}
}
"#;
        let shown = problems(text);
        assert_eq!(shown.len(), 3, "{shown:#?}");
        assert!(
            shown[0].starts_with("profiles/x.json:5:34: /comfyui/args/1: comfyui.args[1]: \"--listen\" is set by the machine (every comfyui instance gets --listen, --port, --output-directory, --temp-directory, and --cpu when"),
            "{shown:#?}"
        );
        assert!(
            shown[1].contains("comfyui.args[2]: \"--port=9000\" (as --port) is set by the machine"),
            "{shown:#?}"
        );
        assert!(
            shown[2].contains("comfyui.args[3]: \"--output-directory\" is set by the machine")
                && shown[2].ends_with("; remove it"),
            "{shown:#?}"
        );

        let text = r#"{
  "description": "d",
  "workers": "openai:1",
  "machine": {"gpus": 0, "ram_gb": 1},
  "comfyui": {"cpu": true, "args": ["--port"]}
}
"#;
        let shown = problems(text);
        assert_eq!(shown.len(), 3, "{shown:#?}");
        assert!(
            shown[0].contains("/comfyui/args/0: comfyui.args[0]: \"--port\""),
            "{shown:#?}"
        );
        assert!(
            shown[1].contains("/comfyui/cpu: comfyui.cpu is set, but no worker of this profile runs on the comfyui service (workers: openai:1); remove it, or add a worker that does (e.g. comfyui:1:gpu)"),
            "{shown:#?}"
        );
        assert!(
            shown[2].contains("/comfyui/args: comfyui.args is set"),
            "{shown:#?}"
        );

        // What the install would add to ComfyUI is refused there too: it would never be installed.
        let text = r#"{
  "description": "d",
  "workers": "openai:1",
  "machine": {"gpus": 0, "ram_gb": 1},
  "comfyui": {"packages": ["einops==0.8.2"]}
}
"#;
        let shown = problems(text);
        assert_eq!(shown.len(), 1, "{shown:#?}");
        assert!(
            shown[0].contains("/comfyui/packages: comfyui.packages is set, but no worker of this profile runs on the comfyui service"),
            "{shown:#?}"
        );

        // The machine's own flags are fine in a profile that does not repeat them.
        let ok = r#"{"description": "d", "workers": "comfyui:1:gpu", "machine": {"gpus": 1, "ram_gb": 1},
  "comfyui": {"cpu": true, "args": ["--preview-method", "auto"]}}"#;
        assert!(check(&source(ok)).is_ok());
    }

    #[test]
    fn reports_spec_errors_at_the_workers_field() {
        let errs = check(&source(TEXT)).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            shown,
            [
                "profiles/x.json:5:8: /: unknown field `list`, expected one of `$schema`, `description`, `components`, `workers`, `worker_bundle`, `machine`, `replicas`, `docker`, `env`, `comfyui`"
            ]
        );
        let fixed = TEXT.replace(",\n  \"list\": [1, {\"a\": [true]}]", "");
        let errs = check(&source(&fixed)).unwrap_err();
        let shown: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
        assert_eq!(shown.len(), 1);
        assert!(
            shown[0].starts_with("profiles/x.json:3:14: /workers: worker spec item 1 \"comfyu:1\""),
            "{shown:?}"
        );
        assert!(shown[0].contains("did you mean \"comfyui\"?"), "{shown:?}");
    }

    #[test]
    fn reports_conditions_on_missing_components_and_gpu_problems() {
        let text = r#"{"description":"d","workers":"comfyui:1","machine":{"gpus":0,"ram_gb":1},
"docker":{"services":{"redis":{"image":"redis:7","when":{"component":"redis","variant":"local"}}}}}"#;
        let shown = problems(text);
        assert_eq!(
            shown,
            [
                "profiles/x.json:2:70: /docker/services/redis/when/component: condition names component \"redis\", which this profile does not select; selected components: none",
                "profiles/x.json:1:60: /machine/gpus: gpu-bound workers (comfyui) on a machine planned with 0 GPUs; set machine.gpus (or --gpus) or bind them to cpu where the connector allows it",
            ]
        );
    }

    #[test]
    fn reports_a_host_with_too_few_gpus_and_a_host_of_zero_machines() {
        let text = r#"{"description":"d","workers":"comfyui:2:gpu","machine":{"gpus":3,"ram_gb":1},
"docker":{"host":{"gpus":8,"machines":4}}}"#;
        let shown = problems(text);
        assert_eq!(
            shown,
            [
                "profiles/x.json:2:26: /docker/host/gpus: 4 machines × 3 GPUs (machine.gpus) need 12 GPUs but the host has 8; run at most 2 machine(s) of 3 GPUs on it (docker.host.machines), or give each fewer GPUs",
            ]
        );
        let text = r#"{"description":"d","workers":"comfyui:2:gpu","machine":{"gpus":2,"ram_gb":1},
"docker":{"host":{"gpus":8,"machines":0}}}"#;
        let shown = problems(text);
        assert_eq!(
            shown,
            [
                "profiles/x.json:2:39: /docker/host/machines: docker.host.machines is 0; a host runs 1 to 64 machines",
            ]
        );
        let text = r#"{"description":"d","workers":"comfyui:2:gpu","machine":{"gpus":2,"ram_gb":1},
"docker":{"host":{"gpus":8,"machines":4}}}"#;
        assert!(check(&source(text)).is_ok());
    }

    #[test]
    fn reports_a_fleet_of_zero_and_a_cluster_service_without_ports() {
        let text = r#"{"description":"d","workers":"openai:1","machine":{"gpus":0,"ram_gb":1},"replicas":0,
"docker":{"services":{"redis":{"image":"redis:7","kubernetes":true}}}}"#;
        let shown = problems(text);
        assert_eq!(
            shown,
            [
                "profiles/x.json:1:84: /replicas: replicas is 0; a fleet has 1 to 1000 machines",
                "profiles/x.json:2:63: /docker/services/redis/kubernetes: service \"redis\" runs in Kubernetes but lists no ports; add its container ports (e.g. \"ports\": [6379]) so the cluster Service can reach it",
            ]
        );
    }
}
