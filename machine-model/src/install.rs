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

use crate::profile::{ComfyuiCustomNode, ComfyuiOptions};

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
        /// A pip constraints file relative to the install directory (`pip install -c`), pinning every
        /// package pip may pick, requirements and their dependencies alike.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        constraints: Option<String>,
        /// Time limit for the whole step in seconds; the runtime's default when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
    /// Write the pip constraints file made for the revision in use: the one of `files` whose commit is
    /// `rev`, else the first with a warning (a revision without a file of its own).
    PipConstraints {
        /// The file to write, relative to the install directory (e.g. `pip-constraints.txt`).
        path: String,
        /// The revision being installed (a placeholder expression, resolved like the checkout's `rev`).
        rev: String,
        /// The constraints files kept in this repository, the default first.
        files: Vec<ConstraintsFile>,
    },
    CustomNodes {
        /// Directory holding the nodes, relative to the install directory (ComfyUI: `custom_nodes`).
        dir: String,
        /// A virtual environment (relative to the install directory) into which each node's
        /// `requirements.txt`, when it has one, is installed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        venv: Option<String>,
        /// The nodes to check out, in order.
        nodes: Vec<CustomNode>,
        /// A pip constraints file (relative to the install directory) applied to the nodes' requirements.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        constraints: Option<String>,
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
        /// Files the machine writes when the fetched content lacks them (the worker bundle's service
        /// mapping, which the release tarball does not hold); the install log and the marker say which
        /// were provided. Checked against `expect` afterwards.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        provide: Vec<ProvidedFile>,
        /// Time limit for the whole step in seconds; the runtime's default when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
    /// Download files over `https://`, `http://` or `file://` with `curl`, each checked against its
    /// SHA-256: a file already there with that checksum is kept, one that differs after download is
    /// deleted and fails the step.
    Download {
        /// The files, in order.
        files: Vec<DownloadFile>,
        /// Time limit for the whole step in seconds; the runtime's default when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
    /// Run a program (no shell) in the new version to prove it works before it is switched in (e.g.
    /// ComfyUI's `main.py --quick-test-for-ci`); another exit status than `expect_exit` fails the install
    /// with the program's last lines of output.
    Probe {
        /// Program and arguments; a relative program with a `/` is inside the install directory.
        argv: Vec<String>,
        /// Working directory relative to the install directory; the install directory when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        /// The exit status that means success.
        #[serde(default)]
        expect_exit: i32,
        /// Time limit for the probe in seconds; the runtime's default when absent.
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
    /// Whether the node's `requirements.txt`, when it has one, is installed into the step's venv.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub requirements: bool,
    /// Extra environment variables as `[name, value]` pairs for the node's git and pip commands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, String)>,
}

fn yes() -> bool {
    true
}

fn is_yes(value: &bool) -> bool {
    *value
}

/// One pip constraints file kept in this repository, for one commit of the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ConstraintsFile {
    /// The full 40-hex commit the file was made for.
    pub commit: String,
    /// The file's content, written as is (no placeholders).
    pub content: String,
}

/// A file a `fetch` step writes when the fetched content lacks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ProvidedFile {
    /// Where the file goes, relative to the fetch's `dest` (e.g. `src/config/service-mapping.json`).
    pub path: String,
    /// Where the content comes from, for the install log and the marker (one short phrase).
    pub origin: String,
    /// The file's content, written as is (no placeholders).
    pub content: String,
}

/// A file downloaded by a `download` step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DownloadFile {
    /// `https://`, `http://` or `file://` URL; may carry placeholders.
    pub url: String,
    /// The file's SHA-256, 64 hex digits (required: a download is always checked).
    pub sha256: String,
    /// Where the file goes, relative to the install directory (e.g. `models/vae/x.safetensors`).
    pub dest: String,
}

impl Step {
    /// The step's kind as written in recipes (`git-checkout`, `python-venv`, `custom-nodes`, `command`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Step::GitCheckout { .. } => "git-checkout",
            Step::PythonVenv { .. } => "python-venv",
            Step::PipConstraints { .. } => "pip-constraints",
            Step::Download { .. } => "download",
            Step::Probe { .. } => "probe",
            Step::CustomNodes { .. } => "custom-nodes",
            Step::Persist { .. } => "persist",
            Step::Fetch { .. } => "fetch",
            Step::Command { .. } => "command",
        }
    }

    /// The step's own time limit in seconds, if it sets one (`persist` and `pip-constraints` only write
    /// files and have none).
    pub fn timeout_secs(&self) -> Option<u64> {
        match self {
            Step::Persist { .. } | Step::PipConstraints { .. } => None,
            Step::Download { timeout_secs, .. } | Step::Probe { timeout_secs, .. } => *timeout_secs,
            Step::GitCheckout { timeout_secs, .. }
            | Step::PythonVenv { timeout_secs, .. }
            | Step::CustomNodes { timeout_secs, .. }
            | Step::Fetch { timeout_secs, .. }
            | Step::Command { timeout_secs, .. } => *timeout_secs,
        }
    }
}

/// The ComfyUI commit the committed constraints file was made for (the queue's fork, [`COMFYUI_PINNED_COMMIT`]).
pub const COMFYUI_CONSTRAINTS_COMMIT: &str = "3fb07a804f1738b8f8c8b0d535eaccc72a9ddc7b";

/// The pip constraints files kept in this repository for ComfyUI, one per commit, the default first:
/// `machine-model/comfyui/constraints-<commit[..8]>.txt` (a `pip freeze`; its header says how it was made).
pub const COMFYUI_CONSTRAINTS: &[(&str, &str)] = &[(
    COMFYUI_CONSTRAINTS_COMMIT,
    include_str!("../comfyui/constraints-3fb07a80.txt"),
)];

/// Where the ComfyUI recipe writes its constraints file, beside the venv in the install directory.
pub const COMFYUI_CONSTRAINTS_FILE: &str = "pip-constraints.txt";

/// Python packages the ComfyUI recipe always installs besides `requirements.txt`: the fork imports
/// `requests` at start-up but its requirements no longer pull it in (the constraints pin its version).
pub const COMFYUI_BASE_PACKAGES: &[&str] = &["requests"];

/// ComfyUI with nothing added by a profile: see [`comfyui_recipe_for`].
pub fn comfyui_recipe() -> InstallRecipe {
    comfyui_recipe_for(&ComfyuiOptions::default())
}

/// ComfyUI as a profile's `comfyui` section asks for:
///
/// 1. a shallow checkout of `COMFYUI_REPO_URL` at `COMFYUI_COMMIT` (else `COMFYUI_BRANCH`, else
///    [`COMFYUI_PINNED_COMMIT`]);
/// 2. `pip-constraints.txt`, the constraints of that commit ([`COMFYUI_CONSTRAINTS`]; another commit
///    gets the default one's, with a warning);
/// 3. a venv `venv` with `pip install -r requirements.txt requests <packages> -c pip-constraints.txt`;
/// 4. the custom nodes under `custom_nodes` by `install_order` (then as listed), their requirements into
///    the same venv with the same constraints;
/// 5. `models`, `input`, `output` and `user` kept across reinstalls (see [`Step::Persist`]);
/// 6. the models downloaded into `models/<folder>/<file>` (so into the kept folder), sha256-checked;
/// 7. a probe: `venv/bin/python main.py --quick-test-for-ci --cpu` must exit 0 (ComfyUI imports, loads
///    its nodes and exits) before the new version is switched in.
///
/// The profile's values are taken literally (every `$` escaped). The service runs `venv/bin/python
/// main.py` in `<workspace>/ComfyUI`.
pub fn comfyui_recipe_for(options: &ComfyuiOptions) -> InstallRecipe {
    let literal = |s: &str| s.replace('$', "$$");
    let rev = format!("${{COMFYUI_COMMIT:-${{COMFYUI_BRANCH:-{COMFYUI_PINNED_COMMIT}}}}}");
    let constraints = Some(COMFYUI_CONSTRAINTS_FILE.to_owned());
    let mut steps = vec![
        Step::GitCheckout {
            repo: format!("${{COMFYUI_REPO_URL:-{COMFYUI_DEFAULT_REPO}}}"),
            rev: rev.clone(),
            dest: ".".to_owned(),
            shallow: true,
            timeout_secs: Some(600),
        },
        Step::PipConstraints {
            path: COMFYUI_CONSTRAINTS_FILE.to_owned(),
            rev,
            files: COMFYUI_CONSTRAINTS
                .iter()
                .map(|(commit, content)| ConstraintsFile {
                    commit: (*commit).to_owned(),
                    content: (*content).to_owned(),
                })
                .collect(),
        },
        Step::PythonVenv {
            dir: "venv".to_owned(),
            requirements: Some("requirements.txt".to_owned()),
            packages: COMFYUI_BASE_PACKAGES
                .iter()
                .map(|p| (*p).to_owned())
                .chain(options.packages.iter().map(|p| literal(p)))
                .collect(),
            constraints: constraints.clone(),
            timeout_secs: Some(3600),
        },
    ];
    if !options.custom_nodes.is_empty() {
        let mut ordered: Vec<&ComfyuiCustomNode> = options.custom_nodes.iter().collect();
        // Stable: nodes with the same order (or none) keep the profile's order; `None` sorts last.
        ordered.sort_by_key(|n| n.install_order.map_or((1, 0), |o| (0, o)));
        steps.push(Step::CustomNodes {
            dir: "custom_nodes".to_owned(),
            venv: Some("venv".to_owned()),
            nodes: ordered
                .into_iter()
                .map(|n| CustomNode {
                    name: literal(&n.name),
                    repo: literal(&n.url),
                    rev: literal(&n.commit),
                    requirements: n.requirements,
                    env: n
                        .env
                        .iter()
                        .map(|(k, v)| (literal(k), literal(v)))
                        .collect(),
                })
                .collect(),
            constraints,
            timeout_secs: Some(3600),
        });
    }
    steps.push(Step::Persist {
        paths: ["models", "input", "output", "user"]
            .map(str::to_owned)
            .to_vec(),
    });
    if !options.models.is_empty() {
        steps.push(Step::Download {
            files: options
                .models
                .iter()
                .map(|m| DownloadFile {
                    url: literal(&m.url),
                    sha256: m.sha256.to_ascii_lowercase(),
                    dest: literal(&format!("models/{}", m.target())),
                })
                .collect(),
            timeout_secs: Some(4 * 3600),
        });
    }
    steps.push(Step::Probe {
        argv: ["venv/bin/python", "main.py", "--quick-test-for-ci", "--cpu"]
            .map(str::to_owned)
            .to_vec(),
        cwd: None,
        expect_exit: 0,
        timeout_secs: Some(600),
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
                constraints: None,
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
/// `<workspace>/worker-bundled`, expecting [`crate::worker_bundle::WORKER_BUNDLE_FILES`]; a bundle without its
/// own service mapping (the release tarball) gets the catalog's copy, [`crate::worker_bundle::WORKER_SERVICE_MAPPING`].
///
/// `WORKER_BUNDLE_URL` replaces the source and `WORKER_BUNDLE_SHA256` the checksum (so a profile that pins
/// a checksum needs both to be overridden). The resolved source and checksum are part of the install hash:
/// the same source installs once, a new one installs and switches atomically.
pub fn worker_bundle_recipe(bundle: &crate::profile::WorkerBundle) -> InstallRecipe {
    // Every `$` doubled: the profile's text is taken as written (components::interpolate's `$$`).
    let literal = |s: &str| s.replace('$', "$$");
    InstallRecipe {
        dir: crate::worker_bundle::WORKER_BUNDLE_DIR.to_owned(),
        steps: vec![Step::Fetch {
            source: format!("${{{WORKER_BUNDLE_URL_VAR}:-{}}}", literal(&bundle.source)),
            sha256: Some(format!(
                "${{{WORKER_BUNDLE_SHA256_VAR}:-{}}}",
                literal(bundle.sha256.as_deref().unwrap_or_default())
            )),
            dest: ".".to_owned(),
            expect: crate::worker_bundle::WORKER_BUNDLE_FILES
                .iter()
                .map(|f| f.to_string())
                .collect(),
            // The release tarball holds no service mapping (worker contract §1): the worker's own
            // mapping, as this catalog keeps it, goes where the worker looks relative to its folder.
            provide: vec![ProvidedFile {
                path: crate::worker_bundle::WORKER_BUNDLE_MAPPING.to_owned(),
                origin: crate::worker_bundle::WORKER_SERVICE_MAPPING_ORIGIN.to_owned(),
                content: crate::worker_bundle::WORKER_SERVICE_MAPPING.to_owned(),
            }],
            timeout_secs: Some(600),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ComfyuiCustomNode;

    #[test]
    fn the_pinned_comfyui_commit_has_its_own_constraints() {
        // A new pin without its constraints file would install with another commit's pins and a warning.
        assert_eq!(COMFYUI_CONSTRAINTS[0].0, COMFYUI_PINNED_COMMIT);
        assert!(
            COMFYUI_CONSTRAINTS[0].1.contains("\nsetuptools=="),
            "setuptools pinned"
        );
        assert!(
            COMFYUI_CONSTRAINTS[0].1.contains("\nrequests=="),
            "requests pinned"
        );
    }

    #[test]
    fn recipes_round_trip_through_json_with_kebab_case_kinds() {
        for recipe in [comfyui_recipe(), playwright_recipe()] {
            let json = serde_json::to_string(&recipe).unwrap();
            let back: InstallRecipe = serde_json::from_str(&json).unwrap();
            assert_eq!(back, recipe);
        }
        let json = serde_json::to_value(comfyui_recipe()).unwrap();
        assert_eq!(json["steps"][0]["kind"], "git-checkout");
        assert_eq!(json["steps"][1]["kind"], "pip-constraints");
        assert_eq!(json["steps"][2]["kind"], "python-venv");
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
            crate::catalog::builtin_recipe("worker-bundle")
                .unwrap()
                .steps[0]
                .kind(),
            "fetch"
        );
        let Step::Fetch { provide, .. } = &recipe.steps[0] else {
            panic!("a fetch step")
        };
        assert_eq!(provide.len(), 1);
        assert_eq!(provide[0].path, "src/config/service-mapping.json");
        let mapping: serde_json::Value = serde_json::from_str(&provide[0].content).unwrap();
        assert!(
            mapping["workers"]["comfyui"].is_object(),
            "the worker's mapping"
        );
        assert!(provide[0].origin.contains("data/service-mapping.json"));
    }

    fn kinds(recipe: &InstallRecipe) -> Vec<&'static str> {
        recipe.steps.iter().map(Step::kind).collect()
    }

    #[test]
    fn the_default_comfyui_recipe_pins_the_venv_and_probes_before_the_switch() {
        let recipe = comfyui_recipe();
        assert_eq!(
            kinds(&recipe),
            [
                "git-checkout",
                "pip-constraints",
                "python-venv",
                "persist",
                "probe"
            ]
        );
        let Step::PipConstraints { path, rev, files } = &recipe.steps[1] else {
            panic!("constraints second")
        };
        let Step::GitCheckout { rev: checkout, .. } = &recipe.steps[0] else {
            panic!("checkout first")
        };
        assert_eq!((path.as_str(), rev), (COMFYUI_CONSTRAINTS_FILE, checkout));
        assert_eq!(files[0].commit, COMFYUI_CONSTRAINTS_COMMIT);
        let Step::PythonVenv {
            packages,
            constraints,
            requirements,
            ..
        } = &recipe.steps[2]
        else {
            panic!("venv third")
        };
        assert_eq!(packages, &["requests"]);
        assert_eq!(constraints.as_deref(), Some(COMFYUI_CONSTRAINTS_FILE));
        assert_eq!(requirements.as_deref(), Some("requirements.txt"));
        let Step::Probe {
            argv, expect_exit, ..
        } = &recipe.steps[4]
        else {
            panic!("probe last")
        };
        assert_eq!(
            argv,
            &["venv/bin/python", "main.py", "--quick-test-for-ci", "--cpu"]
        );
        assert_eq!(*expect_exit, 0);
    }

    #[test]
    fn the_constraints_file_is_a_header_and_exact_pins_including_requests() {
        let (commit, content) = COMFYUI_CONSTRAINTS[0];
        assert_eq!(commit, COMFYUI_CONSTRAINTS_COMMIT);
        assert!(content.starts_with(&format!("# pip constraints for ComfyUI {commit}")));
        assert!(content.ends_with('\n'));
        let pins: Vec<&str> = content.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(pins.len() > 20, "{pins:?}");
        for line in &pins {
            let (name, version) = line
                .split_once("==")
                .unwrap_or_else(|| panic!("{line:?} is not name==version"));
            assert!(
                !name.is_empty() && !version.is_empty() && !version.contains(' '),
                "{line:?}"
            );
        }
        assert!(pins.iter().any(|l| l.starts_with("requests==")));
        assert!(pins.iter().any(|l| l.starts_with("torch==")));
    }

    #[test]
    fn a_profile_adds_packages_ordered_nodes_and_models_taken_literally() {
        let node = |name: &str, order: Option<u32>| ComfyuiCustomNode {
            name: name.into(),
            url: format!("https://example.com/{name}.git"),
            commit: "a".repeat(40),
            requirements: name != "b",
            install_order: order,
            env: [("TOKEN".to_owned(), "$x".to_owned())].into(),
        };
        let options = ComfyuiOptions {
            packages: vec!["opencv-python-headless==4.10.0.84".into()],
            custom_nodes: vec![
                node("a", None),
                node("b", Some(2)),
                node("c", Some(1)),
                node("d", None),
            ],
            models: vec![crate::profile::ComfyuiModel {
                url: "https://example.com/m/v1.safetensors?x=$y".into(),
                sha256: "AB".repeat(32),
                folder: "checkpoints".into(),
                file_name: None,
            }],
            ..ComfyuiOptions::default()
        };
        let recipe = comfyui_recipe_for(&options);
        assert_eq!(
            kinds(&recipe),
            [
                "git-checkout",
                "pip-constraints",
                "python-venv",
                "custom-nodes",
                "persist",
                "download",
                "probe"
            ]
        );
        let Step::PythonVenv { packages, .. } = &recipe.steps[2] else {
            panic!("venv")
        };
        assert_eq!(packages, &["requests", "opencv-python-headless==4.10.0.84"]);
        let Step::CustomNodes {
            nodes,
            constraints,
            venv,
            ..
        } = &recipe.steps[3]
        else {
            panic!("nodes")
        };
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["c", "b", "a", "d"]);
        assert!(!nodes[1].requirements && nodes[0].requirements);
        assert_eq!(nodes[0].env, [("TOKEN".to_owned(), "$$x".to_owned())]);
        assert_eq!(nodes[0].rev, "a".repeat(40));
        assert_eq!(constraints.as_deref(), Some(COMFYUI_CONSTRAINTS_FILE));
        assert_eq!(venv.as_deref(), Some("venv"));
        let Step::Download { files, .. } = &recipe.steps[5] else {
            panic!("download")
        };
        assert_eq!(
            files,
            &[DownloadFile {
                url: "https://example.com/m/v1.safetensors?x=$$y".into(),
                sha256: "ab".repeat(32),
                dest: "models/checkpoints/v1.safetensors".into(),
            }]
        );
        // The same options give the same recipe (the install hash depends on nothing else).
        assert_eq!(comfyui_recipe_for(&options), recipe);
    }
}
