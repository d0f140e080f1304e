//! Install recipes: the data that says how an internal service is put on disk (checkouts, venvs, commands).
//!
//! A recipe is plain data; `machine-runtime` executes it (`machine_runtime::install`). String values may
//! contain placeholders that the runtime resolves from its environment before hashing and running:
//!
//! - the one `${VAR}` grammar of the workspace, [`crate::components::interpolate`]: `${VAR}` (unset is
//!   an error naming the variable), `${VAR:-default}` (defaults nest:
//!   `${COMFYUI_COMMIT:-${COMFYUI_BRANCH:-<sha>}}`), `${VAR:?message}`, `$$` for a literal `$`;
//! - `${INSTALL_DIR}` is reserved: the absolute path of the version directory being built. It is not
//!   part of the hash (the directory name contains the hash) and is substituted only when a step runs.
//!
//! Every path in a recipe is relative to the service's install directory and may not leave it.

use serde::{Deserialize, Serialize};

/// The ComfyUI commit installed when `COMFYUI_COMMIT` and `COMFYUI_BRANCH` are both unset or empty: the
/// head of the queue's fork's `master` ("Merge branch 'websocket_version'", ComfyUI 0.3.12), the commit a
/// real `comfyui` job was measured to complete on (worker contract §7). The old machine checked out the
/// fork's `forward` branch; the fork's snapshot we read has no `forward` branch, so this pins `master`.
pub const COMFYUI_PINNED_COMMIT: &str = "3fb07a804f1738b8f8c8b0d535eaccc72a9ddc7b";

/// The ComfyUI repository cloned when `COMFYUI_REPO_URL` is unset or empty: the job queue's fork, the only
/// ComfyUI that takes a prompt over its WebSocket the way the worker's `comfyui` connector sends it
/// (upstream ComfyUI ignores it and every job times out).
pub const COMFYUI_DEFAULT_REPO: &str = "https://github.com/stakeordie/ComfyUI.git";

/// The Playwright Python package version installed when `PLAYWRIGHT_VERSION` is not set.
pub(crate) const PLAYWRIGHT_PINNED_VERSION: &str = "1.55.0";

/// How one internal service is installed: a directory under the workspace and the ordered steps that fill it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct InstallRecipe {
    /// Name of the install directory under the workspace (e.g. `ComfyUI` gives `/workspace/ComfyUI`).
    pub dir: String,
    /// Steps run in order inside a fresh version directory; the install is switched to only when all succeed.
    pub steps: Vec<Step>,
}

/// One step of an install recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    /// Check out a git repository at a commit, branch or tag.
    GitCheckout {
        /// Repository URL (`https://`, `ssh://`, `file://`); may carry placeholders.
        repo: String,
        /// A full 40-hex commit (preferred: reproducible), or a branch or tag name resolved at install time.
        rev: String,
        /// Checkout directory relative to the install directory; `.` checks out into the install directory itself.
        dest: String,
        /// Fetch only the one commit (`--depth 1`), falling back to a full fetch when the server refuses.
        shallow: bool,
        /// Time limit for the whole step in seconds; the runtime's default when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
    /// Create a Python virtual environment and install requirements into it.
    PythonVenv {
        /// Virtual environment directory relative to the install directory.
        dir: String,
        /// A requirements file relative to the install directory, installed with `pip install -r`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requirements: Option<String>,
        /// Extra requirement specifiers installed with pip (e.g. `playwright==1.55.0`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        packages: Vec<String>,
        /// Time limit for the whole step in seconds; the runtime's default when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
    /// Check out a list of ComfyUI custom nodes, each into `<dir>/<name>`.
    CustomNodes {
        /// Directory holding the nodes, relative to the install directory (ComfyUI: `custom_nodes`).
        dir: String,
        /// A virtual environment (relative to the install directory) into which each node's
        /// `requirements.txt`, when it has one, is installed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        venv: Option<String>,
        /// The nodes to check out, in order.
        nodes: Vec<CustomNode>,
        /// Time limit for the whole step in seconds; the runtime's default when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
    /// Keep directories outside the versions, in `<workspace>/.persist/<dir>/<path>`, so what the service
    /// writes there at run time (models, inputs, outputs) survives reinstalls. Each path becomes a symlink
    /// to its shared directory; entries the new version ships that the shared directory lacks are moved in.
    Persist {
        /// Directories relative to the install directory (ComfyUI: `models`, `input`, `output`, `user`).
        paths: Vec<String>,
    },
    /// Put a release tarball (its one top folder stripped) or a local folder's content into `dest`, then
    /// check that the files of `expect` are there.
    Fetch {
        /// An `https://`, `http://` or `file://` URL of a `.tar.gz`, or an absolute path of a folder or a
        /// `.tar.gz`; may carry placeholders.
        source: String,
        /// The tarball's SHA-256 (64 hex digits); empty or absent: not checked (the marker records it anyway).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        /// Destination relative to the install directory; `.` fills the install directory itself.
        dest: String,
        /// Files (relative to `dest`) the result must contain; their absence fails the step.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        expect: Vec<String>,
        /// Time limit for the whole step in seconds; the runtime's default when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
    /// Run a program (no shell) inside the install directory.
    Command {
        /// Program and arguments; the program is looked up on `PATH` unless it contains a `/`.
        argv: Vec<String>,
        /// Working directory relative to the install directory; the install directory when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        /// Extra environment variables as `[name, value]` pairs, added to the runtime's environment.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        env: Vec<(String, String)>,
        /// Time limit for the step in seconds; the runtime's default when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
}

/// A ComfyUI custom node: a repository checked out at a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CustomNode {
    /// Directory name of the node under the custom nodes directory.
    pub name: String,
    /// Repository URL; may carry placeholders.
    pub repo: String,
    /// A full 40-hex commit (preferred), or a branch or tag name.
    pub rev: String,
}

impl Step {
    /// The step's kind as written in recipes (`git-checkout`, `python-venv`, `custom-nodes`, `command`).
    pub fn kind(&self) -> &'static str {
        match self {
            Step::GitCheckout { .. } => "git-checkout",
            Step::PythonVenv { .. } => "python-venv",
            Step::CustomNodes { .. } => "custom-nodes",
            Step::Persist { .. } => "persist",
            Step::Fetch { .. } => "fetch",
            Step::Command { .. } => "command",
        }
    }

    /// The step's own time limit in seconds, if it sets one (`persist` only moves files and has none).
    pub fn timeout_secs(&self) -> Option<u64> {
        match self {
            Step::Persist { .. } => None,
            Step::GitCheckout { timeout_secs, .. }
            | Step::PythonVenv { timeout_secs, .. }
            | Step::CustomNodes { timeout_secs, .. }
            | Step::Fetch { timeout_secs, .. }
            | Step::Command { timeout_secs, .. } => *timeout_secs,
        }
    }
}

/// ComfyUI with no custom nodes: see [`comfyui_recipe_with_nodes`].
pub fn comfyui_recipe() -> InstallRecipe {
    comfyui_recipe_with_nodes(Vec::new())
}

/// ComfyUI: a shallow checkout of `COMFYUI_REPO_URL` (else [`COMFYUI_DEFAULT_REPO`]) at `COMFYUI_COMMIT`
/// (else `COMFYUI_BRANCH`, else [`COMFYUI_PINNED_COMMIT`]; an empty value counts as unset), a venv `venv` with `pip install -r requirements.txt`, then `nodes` under
/// `custom_nodes` with their requirements installed into the same venv; `models`, `input`, `output` and
/// `user` persist across reinstalls (see [`Step::Persist`]).
///
/// The service runs `venv/bin/python main.py` in `<workspace>/ComfyUI`.
pub(crate) fn comfyui_recipe_with_nodes(nodes: Vec<CustomNode>) -> InstallRecipe {
    let mut steps = vec![
        Step::GitCheckout {
            repo: format!("${{COMFYUI_REPO_URL:-{COMFYUI_DEFAULT_REPO}}}"),
            rev: format!("${{COMFYUI_COMMIT:-${{COMFYUI_BRANCH:-{COMFYUI_PINNED_COMMIT}}}}}"),
            dest: ".".to_owned(),
            shallow: true,
            timeout_secs: Some(600),
        },
        Step::PythonVenv {
            dir: "venv".to_owned(),
            requirements: Some("requirements.txt".to_owned()),
            packages: Vec::new(),
            timeout_secs: Some(3600),
        },
    ];
    if !nodes.is_empty() {
        steps.push(Step::CustomNodes {
            dir: "custom_nodes".to_owned(),
            venv: Some("venv".to_owned()),
            nodes,
            timeout_secs: Some(3600),
        });
    }
    steps.push(Step::Persist {
        paths: ["models", "input", "output", "user"]
            .map(str::to_owned)
            .to_vec(),
    });
    InstallRecipe {
        dir: "ComfyUI".to_owned(),
        steps,
    }
}

/// Playwright: a venv `venv` with the Python package `playwright==${PLAYWRIGHT_VERSION}`, then
/// `python -m playwright install --with-deps chromium` with the browser kept inside the install
/// directory (`browsers/`, so a new version never shares or breaks the old one's browser).
///
/// The service must run with `PLAYWRIGHT_BROWSERS_PATH=<workspace>/playwright/browsers`, e.g.
/// `venv/bin/playwright run-server --port <port> --host 127.0.0.1` in `<workspace>/playwright`.
/// `--with-deps` installs the browser's system libraries with apt, so it needs root (image build time).
pub fn playwright_recipe() -> InstallRecipe {
    InstallRecipe {
        dir: "playwright".to_owned(),
        steps: vec![
            Step::PythonVenv {
                dir: "venv".to_owned(),
                requirements: None,
                packages: vec![format!(
                    "playwright==${{PLAYWRIGHT_VERSION:-{PLAYWRIGHT_PINNED_VERSION}}}"
                )],
                timeout_secs: Some(900),
            },
            Step::Command {
                argv: [
                    "venv/bin/python",
                    "-m",
                    "playwright",
                    "install",
                    "--with-deps",
                    "chromium",
                ]
                .map(str::to_owned)
                .to_vec(),
                cwd: None,
                env: vec![(
                    "PLAYWRIGHT_BROWSERS_PATH".to_owned(),
                    "${INSTALL_DIR}/browsers".to_owned(),
                )],
                timeout_secs: Some(1800),
            },
        ],
    }
}

/// The environment variable that replaces the worker bundle's source at install time.
pub(crate) const WORKER_BUNDLE_URL_VAR: &str = "WORKER_BUNDLE_URL";

/// The environment variable that gives the checksum of a `WORKER_BUNDLE_URL` tarball.
pub(crate) const WORKER_BUNDLE_SHA256_VAR: &str = "WORKER_BUNDLE_SHA256";

/// The worker bundle from `bundle` (a profile's, or [`WorkerBundle::catalog_default`]): one `fetch` into
/// `<workspace>/worker-bundled`, expecting [`crate::catalog::WORKER_BUNDLE_FILES`].
///
/// `WORKER_BUNDLE_URL` replaces the source and `WORKER_BUNDLE_SHA256` the checksum (so a profile that pins
/// a checksum needs both to be overridden). The resolved source and checksum are part of the install hash:
/// the same source installs once, a new one installs and switches atomically.
pub fn worker_bundle_recipe(bundle: &crate::profile::WorkerBundle) -> InstallRecipe {
    // Every `$` doubled: the profile's text is taken as written (components::interpolate's `$$`).
    let literal = |s: &str| s.replace('$', "$$");
    InstallRecipe {
        dir: crate::catalog::WORKER_BUNDLE_DIR.to_owned(),
        steps: vec![Step::Fetch {
            source: format!("${{{WORKER_BUNDLE_URL_VAR}:-{}}}", literal(&bundle.source)),
            sha256: Some(format!(
                "${{{WORKER_BUNDLE_SHA256_VAR}:-{}}}",
                literal(bundle.sha256.as_deref().unwrap_or_default())
            )),
            dest: ".".to_owned(),
            expect: crate::catalog::WORKER_BUNDLE_FILES
                .iter()
                .map(|f| f.to_string())
                .collect(),
            timeout_secs: Some(600),
        }],
    }
}

/// The built-in recipe for a service name (`comfyui`, `playwright`, `worker-bundle` from its catalog
/// default source), for callers without a catalog.
pub fn builtin_recipe(service: &str) -> Option<InstallRecipe> {
    if service == crate::catalog::WORKER_BUNDLE_INSTALL {
        return Some(worker_bundle_recipe(
            &crate::profile::WorkerBundle::catalog_default(),
        ));
    }
    crate::catalog::service(service)
        .and_then(|s| s.install)
        .map(|recipe| recipe())
}

/// Names accepted by [`builtin_recipe`].
pub const BUILTIN_RECIPES: &[&str] = &["comfyui", "playwright", "worker-bundle"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipes_round_trip_through_json_with_kebab_case_kinds() {
        for recipe in [comfyui_recipe(), playwright_recipe()] {
            let json = serde_json::to_string(&recipe).unwrap();
            let back: InstallRecipe = serde_json::from_str(&json).unwrap();
            assert_eq!(back, recipe);
        }
        let json = serde_json::to_value(comfyui_recipe()).unwrap();
        assert_eq!(json["steps"][0]["kind"], "git-checkout");
        assert_eq!(json["steps"][1]["kind"], "python-venv");
    }

    #[test]
    fn unknown_fields_in_a_step_are_rejected() {
        let err = serde_json::from_str::<InstallRecipe>(
            r#"{"dir":"x","steps":[{"kind":"command","argv":["true"],"shell":true}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("shell"), "{err}");
    }

    #[test]
    fn comfyui_rev_prefers_commit_then_branch_then_pin() {
        let Step::GitCheckout { rev, .. } = &comfyui_recipe().steps[0] else {
            panic!("first step is a checkout")
        };
        assert_eq!(
            rev,
            &format!("${{COMFYUI_COMMIT:-${{COMFYUI_BRANCH:-{COMFYUI_PINNED_COMMIT}}}}}")
        );
        assert_eq!(COMFYUI_PINNED_COMMIT.len(), 40);
    }

    #[test]
    fn the_worker_bundle_recipe_takes_the_override_and_escapes_the_source() {
        let recipe = worker_bundle_recipe(&crate::profile::WorkerBundle {
            source: "/srv/b${x}".into(),
            version: None,
            sha256: Some("ab".into()),
        });
        assert_eq!(recipe.dir, "worker-bundled");
        let Step::Fetch {
            source,
            sha256,
            expect,
            ..
        } = &recipe.steps[0]
        else {
            panic!("a fetch step")
        };
        assert_eq!(source, "${WORKER_BUNDLE_URL:-/srv/b$${x}}");
        assert_eq!(sha256.as_deref(), Some("${WORKER_BUNDLE_SHA256:-ab}"));
        assert_eq!(
            expect,
            &[
                "redis-direct-worker.js",
                "package.json",
                "src/config/service-mapping.json"
            ]
        );
        assert_eq!(
            builtin_recipe("worker-bundle").unwrap().steps[0].kind(),
            "fetch"
        );
    }

    #[test]
    fn custom_nodes_step_only_when_there_are_nodes() {
        assert_eq!(comfyui_recipe().steps.len(), 3);
        let with = comfyui_recipe_with_nodes(vec![CustomNode {
            name: "n".into(),
            repo: "file:///r".into(),
            rev: "main".into(),
        }]);
        assert_eq!(with.steps[2].kind(), "custom-nodes");
        assert_eq!(with.steps[3].kind(), "persist");
    }
}
