//! Pre-start checks of what the apps run, before anything starts: every script (an interpreter's
//! script, or a program given as a path) exists, the worker bundle is installed where the workers run,
//! every worker's connector is a worker type of that installed bundle's own service mapping, and (for
//! `up --profile`) every install the plan needs is in place.
//!
//! A program given as a bare name (`sleep`, `python3`) is looked up on `PATH` when it starts and a miss
//! is that app's `errored` state, not a refusal: one typo in a hand-written file does not stop a machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use machine_model::{catalog, worker_bundle};

use crate::ecosystem::{AppSpec, Interpreter, SELF_SCRIPT};

/// What the checks found: problems refuse the start, warnings are logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// One line each, naming the app or install and the fix.
    pub problems: Vec<String>,
    /// One line each.
    pub warnings: Vec<String>,
}

/// Checks the apps' scripts and the worker bundles they run. `install_hint` is the command that puts
/// missing parts in place (e.g. ``machine-runtime install --profile full-local``).
pub(crate) fn check_apps(apps: &[AppSpec], install_hint: &str) -> Vec<String> {
    let mut problems = Vec::new();
    // Bundle folders with the apps that run them, in first-use order.
    let mut bundles: Vec<(PathBuf, Vec<&AppSpec>)> = Vec::new();
    for app in apps {
        if app.script == SELF_SCRIPT {
            continue;
        }
        if app.script == catalog::SIMULATION_PROGRAM {
            // Started from the runtime's own folder (command/program.rs), so a missing one is a broken install.
            if let Some(problem) = std::env::current_exe()
                .ok()
                .and_then(|exe| missing_sibling(app, &exe))
            {
                problems.push(problem);
            }
            continue;
        }
        let Some(path) = script_path(app) else {
            continue;
        };
        let is_bundle = Path::new(&app.script).file_name()
            == Some(std::ffi::OsStr::new(worker_bundle::WORKER_BUNDLE_ENTRY));
        if is_bundle {
            let folder = path.parent().map(Path::to_path_buf).unwrap_or_default();
            match bundles.iter_mut().find(|(f, _)| *f == folder) {
                Some((_, users)) => users.push(app),
                None => bundles.push((folder, vec![app])),
            }
        } else if !path.is_file() {
            problems.push(format!(
                "app \"{}\": script {} does not exist; install it (`{install_hint}`) or fix the app's script and cwd",
                app.name,
                path.display()
            ));
        }
    }
    for (folder, users) in bundles {
        let names: Vec<&str> = users.iter().map(|a| a.name.as_str()).collect();
        let entry = folder.join(worker_bundle::WORKER_BUNDLE_ENTRY);
        if !entry.is_file() {
            problems.push(format!(
                "worker bundle missing at {} (needed by {}); run `{install_hint}` (or set WORKER_BUNDLE_URL to the bundle's tarball URL or folder, then run it)",
                entry.display(),
                names.join(", ")
            ));
            continue;
        }
        problems.extend(check_mapping(&folder, &users, install_hint));
    }
    problems
}

/// The problem when `app`'s program, a binary of the runtime's build, is not next to `exe` (the runtime).
fn missing_sibling(app: &AppSpec, exe: &Path) -> Option<String> {
    let path = exe.with_file_name(&app.script);
    (!path.is_file()).then(|| {
        format!(
            "app \"{}\": {} is missing; it is built with machine-runtime (`cargo build -p machine-runtime --bins`) and belongs next to it (the image copies both to /usr/local/bin)",
            app.name,
            path.display()
        )
    })
}

/// The file an app's command needs: the script run by an interpreter, or a program given as a path;
/// `None` for a bare program name (found on `PATH` at start).
fn script_path(app: &AppSpec) -> Option<PathBuf> {
    let script = Path::new(&app.script);
    let interpreted = match &app.interpreter {
        Interpreter::None => false,
        Interpreter::Program(_) => true,
        Interpreter::Auto => crate::command::interpreter_for(&app.script).is_some(),
    };
    if !interpreted && !app.script.contains('/') {
        return None;
    }
    Some(match &app.cwd {
        Some(cwd) if script.is_relative() => cwd.join(script),
        _ => script.to_path_buf(),
    })
}

/// The `version` of the bundle's `package.json`, or why there is none (for refusal messages only).
fn bundle_version(folder: &Path) -> String {
    let path = folder.join("package.json");
    std::fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|p| p.get("version").and_then(|v| v.as_str()).map(str::to_owned))
        .unwrap_or_else(|| format!("unknown: no version in {}", path.display()))
}

/// Every worker of `users` names a worker type of the bundle's own service mapping.
fn check_mapping(folder: &Path, users: &[&AppSpec], install_hint: &str) -> Vec<String> {
    let path = folder.join(worker_bundle::WORKER_BUNDLE_MAPPING);
    let types: Vec<String> = match std::fs::read(&path).map_err(|e| e.to_string()).and_then(
        |bytes| serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| e.to_string()),
    ) {
        Ok(mapping) => match mapping.get("workers").and_then(|w| w.as_object()) {
            Some(workers) => workers.keys().cloned().collect(),
            None => {
                return vec![format!(
                    "the worker bundle's service mapping {} has no \"workers\" object; reinstall the bundle (`{install_hint}`)",
                    path.display()
                )];
            }
        },
        Err(e) => {
            return vec![format!(
                "the worker bundle at {} has no readable service mapping {} ({e}); reinstall it (`{install_hint}`)",
                folder.display(),
                path.display()
            )];
        }
    };
    let known: Vec<&str> = types.iter().map(String::as_str).collect();
    let version = bundle_version(folder);
    // Connector → apps, so four workers of one unknown type make one line.
    let mut unknown: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for app in users {
        for connector in connectors_of(app) {
            if !known.contains(&connector.as_str()) {
                unknown.entry(connector).or_default().push(&app.name);
            }
        }
    }
    unknown
        .into_iter()
        .map(|(connector, apps)| {
            let hint = machine_model::suggest::did_you_mean(&connector, known.iter().copied())
                .map(|s| format!("; did you mean \"{s}\"?"))
                .unwrap_or_default();
            format!(
                "connector \"{connector}\" (apps {}) is not a worker type of the installed bundle's {}{hint} (bundle version {version}; its types: {}); change the worker spec or install a bundle that has it",
                apps.join(", "),
                path.display(),
                known.join(", ")
            )
        })
        .collect()
}

/// The worker types an app's worker loads: its connector, else what its own `WORKERS`,
/// `WORKER_CONNECTORS` or `CONNECTORS` name (first non-empty, the part before `:` of each item).
fn connectors_of(app: &AppSpec) -> Vec<String> {
    if let Some(c) = &app.connector {
        return vec![c.clone()];
    }
    catalog::MACHINE_WIDE_WORKER_VARS
        .iter()
        .filter_map(|var| app.env.get(*var).filter(|v| !v.trim().is_empty()))
        .map(|spec| {
            spec.split(',')
                .map(|item| item.split(':').next().unwrap_or_default().trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect()
        })
        .next()
        .unwrap_or_default()
}

/// The installs a plan needs, as `up` sees them: a missing or broken install is a problem; one made
/// from another recipe than this environment resolves (an image built with `WORKER_BUNDLE_URL` or
/// `COMFYUI_COMMIT` that the running machine does not set) is a warning, because the installed part
/// still works and refusing would make such an image unstartable.
pub fn check_installs(
    plan: &machine_model::Plan,
    env: crate::install::Env,
    install_hint: &str,
) -> Findings {
    let mut findings = Findings::default();
    let recipes = match crate::install::plan_recipes(plan) {
        Ok(r) => r,
        Err(e) => {
            findings.problems.push(e.to_string());
            return findings;
        }
    };
    let services: Vec<(&str, &crate::install::InstallRecipe)> =
        recipes.iter().map(|(n, r)| (n.as_str(), r)).collect();
    let mut opts = crate::install::InstallOptions::from_env(env);
    opts.workspace_dir = PathBuf::from(&plan.workspace);
    match crate::install::check_for_start(&services, &opts) {
        Ok(states) => {
            for (service, state) in states {
                match state {
                    crate::install::StartState::Current => {}
                    crate::install::StartState::Outdated(reason) => findings.warnings.push(format!(
                        "install {service} differs from what this environment asks for ({reason}); it is used as installed; run `{install_hint}` to update it"
                    )),
                    crate::install::StartState::Missing(reason) => findings.problems.push(format!(
                        "install {service} is not usable ({reason}); run `{install_hint}`"
                    )),
                }
            }
        }
        Err(e) => findings.problems.push(e.to_string()),
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(name: &str, cwd: &Path, connector: &str) -> AppSpec {
        let mut app = AppSpec::new(name, worker_bundle::WORKER_BUNDLE_ENTRY);
        app.interpreter = Interpreter::Program("node".into());
        app.cwd = Some(cwd.to_path_buf());
        app.connector = Some(connector.into());
        app
    }

    #[test]
    fn a_missing_bundle_is_one_line_naming_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("worker-bundled");
        let apps = [
            worker("sim-0", &bundle, "simulation-websocket"),
            worker("sim-1", &bundle, "simulation-websocket"),
        ];
        let problems = check_apps(&apps, "machine-runtime install --profile full-local");
        assert_eq!(
            problems,
            [format!(
                "worker bundle missing at {}/redis-direct-worker.js (needed by sim-0, sim-1); run `machine-runtime install --profile full-local` (or set WORKER_BUNDLE_URL to the bundle's tarball URL or folder, then run it)",
                bundle.display()
            )]
        );
    }

    #[test]
    fn connectors_the_bundle_does_not_know_get_a_suggestion() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path();
        std::fs::create_dir_all(bundle.join("src/config")).unwrap();
        std::fs::write(bundle.join(worker_bundle::WORKER_BUNDLE_ENTRY), "").unwrap();
        std::fs::write(
            bundle.join(worker_bundle::WORKER_BUNDLE_MAPPING),
            r#"{"workers": {"mock": {}, "simulation-websocket": {}}}"#,
        )
        .unwrap();
        let mut by_env = AppSpec::new("w-2", worker_bundle::WORKER_BUNDLE_ENTRY);
        by_env.cwd = Some(bundle.to_path_buf());
        by_env.env.insert("WORKERS".into(), "mocks:1".into());
        let apps = [
            worker("w-0", bundle, "simulation-websocket"),
            worker("w-1", bundle, "gemini"),
            by_env,
        ];
        let problems = check_apps(&apps, "x");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "connector \"gemini\" (apps w-1) is not a worker type of the installed bundle's"
            ),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("connector \"mocks\" (apps w-2)")
                && problems[1].contains("did you mean \"mock\"?"),
            "{problems:?}"
        );
    }

    #[test]
    fn the_simulation_binary_must_be_next_to_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("machine-runtime");
        let app = AppSpec::new("simulation-gpu0", catalog::SIMULATION_PROGRAM);
        assert_eq!(
            missing_sibling(&app, &exe),
            Some(format!(
                "app \"simulation-gpu0\": {}/machine-simulate is missing; it is built with machine-runtime (`cargo build -p machine-runtime --bins`) and belongs next to it (the image copies both to /usr/local/bin)",
                dir.path().display()
            ))
        );
        std::fs::write(dir.path().join("machine-simulate"), "").unwrap();
        assert_eq!(missing_sibling(&app, &exe), None);
    }

    #[test]
    fn scripts_given_as_paths_must_exist_bare_names_are_left_to_path() {
        let mut py = AppSpec::new("comfyui-gpu0", "/nonexistent/ComfyUI/venv/bin/python");
        py.interpreter = Interpreter::None;
        let sleep = AppSpec::new("sleeper", "sleep");
        let mut js = AppSpec::new("tool", "tool.js");
        js.cwd = Some("/nonexistent".into());
        let problems = check_apps(&[py, sleep, js], "hint");
        assert_eq!(
            problems,
            [
                "app \"comfyui-gpu0\": script /nonexistent/ComfyUI/venv/bin/python does not exist; install it (`hint`) or fix the app's script and cwd",
                "app \"tool\": script /nonexistent/tool.js does not exist; install it (`hint`) or fix the app's script and cwd",
            ]
        );
    }
}
