//! ComfyUI as the machine starts it, against a real install: a local git repository stands in for the
//! queue's fork, installed by `machine-runtime install --profile dev-full` (real git, a real venv), whose
//! `main.py` records the argument vector it was started with. What is checked: the command line (the
//! machine's flags, the per-instance folders made before the start, `COMFY_ARGS` split like a shell),
//! the refusals of a bad `COMFY_ARGS` (nothing started), and that `install --check` and `up` resolve the
//! same "configured ComfyUI" with and without overrides, the generated `.env` included.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::up_support::{
    BIN, Runtime, STAND_IN_BUNDLE, fixture_repo, free_port_run, install_profile, wait_for,
};

/// A `main.py` that writes its arguments and whether its two folders exist to
/// `$WORKSPACE_DIR/argv-<port>.json` (temp file, then rename), then waits to be stopped; the install's
/// probe (`--quick-test-for-ci`) exits 0 at once.
const RECORDING_MAIN: &str = r#"import json, os, sys, time
argv = sys.argv[1:]
if "--quick-test-for-ci" in argv:
    sys.exit(0)  # the install's probe: starts and exits, as the fork does
def after(flag):
    return argv[argv.index(flag) + 1] if flag in argv else None
folders = [after("--output-directory"), after("--temp-directory")]
record = {"argv": argv, "folders_exist": [bool(f) and os.path.isdir(f) for f in folders]}
path = os.path.join(os.environ["WORKSPACE_DIR"], "argv-%s.json" % after("--port"))
with open(path + ".tmp", "w") as f:
    json.dump(record, f)
os.rename(path + ".tmp", path)
while True:
    time.sleep(60)
"#;

/// A workspace with ComfyUI (the recording stand-in, at `commit` of a local repository) and the
/// stand-in worker bundle installed for dev-full, and the environment that installed it.
struct Installed {
    _tmp: tempfile::TempDir,
    workspace: PathBuf,
    repo_url: String,
    commit: String,
    port: String,
}

impl Installed {
    fn new() -> Installed {
        let tmp = tempfile::tempdir().unwrap();
        let (repo_url, commit) = fixture_repo(
            &tmp.path().join("ComfyUI-fork"),
            "master",
            &[
                ("main.py", RECORDING_MAIN),
                ("requirements.txt", "# offline fixture\n"),
            ],
        );
        let installed = Installed {
            workspace: tmp.path().join("workspace"),
            repo_url,
            commit,
            port: free_port_run(8).to_string(),
            _tmp: tmp,
        };
        install_profile("dev-full", &installed.env(&[]));
        installed
    }

    /// The environment of this machine: the install's overrides, then `extra` (later wins; an empty
    /// value is passed as empty).
    fn env<'a>(&'a self, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env = vec![
            ("WORKSPACE_DIR", self.workspace.to_str().unwrap()),
            ("WORKER_BUNDLE_URL", STAND_IN_BUNDLE),
            ("COMFYUI_REPO_URL", self.repo_url.as_str()),
            ("COMFYUI_COMMIT", self.commit.as_str()),
            ("COMFYUI_BASE_PORT", self.port.as_str()),
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("MACHINE_FAKE_GPUS", "1"),
            // The ComfyUI worker only: dev-full's openai worker would need its secrets.
            ("WORKER_CONNECTORS", "comfyui:1:gpu"),
        ];
        env.extend_from_slice(extra);
        env
    }

    /// `up --profile dev-full` with `env` and, when `unset` names them, those variables removed.
    fn up(&self, env: &[(&str, &str)], unset: &[&str]) -> Runtime {
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.retain(|(k, _)| !unset.contains(k));
        let rt = Runtime::spawn(
            tempfile::tempdir().unwrap(),
            &["up", "--profile", "dev-full"],
            &env,
            &[],
        );
        for name in unset {
            assert!(
                std::env::var_os(name).is_none(),
                "{name} leaks in from the test's environment"
            );
        }
        rt
    }

    /// `install --check --profile dev-full` with `env` minus `unset`: exit code and stderr.
    fn check(&self, env: &[(&str, &str)], unset: &[&str]) -> (Option<i32>, String) {
        let mut cmd = Command::new(BIN);
        cmd.args(["install", "--check", "--profile", "dev-full"]);
        for (k, v) in env.iter().filter(|(k, _)| !unset.contains(k)) {
            cmd.env(k, v);
        }
        for name in unset {
            cmd.env_remove(name);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// What the stand-in recorded for the instance on this machine's port, once it has.
    fn recorded(&self, rt: &Runtime) -> Value {
        let path = self.workspace.join(format!("argv-{}.json", self.port));
        wait_for(
            "the ComfyUI stand-in to record its arguments",
            || rt.output(),
            || {
                let text = std::fs::read_to_string(&path).ok()?;
                serde_json::from_str(&text).ok()
            },
        )
    }
}

/// The install hash a "recipe changed: hash OLD -> NEW" line names as wanted (NEW), if any.
fn wanted_hash(text: &str) -> Option<String> {
    let line = text
        .lines()
        .find(|l| l.contains("comfyui (recipe changed: hash"))?;
    let start = line.find("comfyui (recipe changed: hash")?;
    let rest = &line[start..];
    let new = rest.split(" -> ").nth(1)?;
    Some(new.chars().take_while(char::is_ascii_hexdigit).collect())
}

#[test]
fn comfyui_starts_with_the_machine_s_flags_its_own_folders_and_comfy_args_last() {
    let m = Installed::new();
    let mut rt = m.up(
        &m.env(&[(
            "COMFY_ARGS",
            "--preview-method auto  --extra-model-paths-config 'my paths.yaml' \"--x=a b\"",
        )]),
        &[],
    );
    let record = m.recorded(&rt);
    let ws = m.workspace.display();
    let expected: Vec<String> = [
        "--listen".to_owned(),
        "0.0.0.0".to_owned(),
        "--port".to_owned(),
        m.port.clone(),
        "--output-directory".to_owned(),
        format!("{ws}/ComfyUI/output/gpu0"),
        "--temp-directory".to_owned(),
        format!("{ws}/ComfyUI/temp/gpu0"),
        "--preview-method".to_owned(),
        "auto".to_owned(),
        "--extra-model-paths-config".to_owned(),
        "my paths.yaml".to_owned(),
        "--x=a b".to_owned(),
    ]
    .to_vec();
    assert_eq!(
        record["argv"],
        serde_json::json!(expected),
        "{}",
        rt.output()
    );
    assert_eq!(record["folders_exist"], serde_json::json!([true, true]));
    // The output folder is inside the persisted output/, which survives reinstalls.
    let persisted = m.workspace.join(".persist/ComfyUI/output/gpu0");
    assert!(
        persisted.is_dir(),
        "{} is not a folder",
        persisted.display()
    );
    // An install that matches: no warning about it.
    assert!(
        !rt.output().contains("install comfyui differs"),
        "{}",
        rt.output()
    );
    rt.signal(libc::SIGTERM);
    rt.wait_exit();
}

#[test]
fn a_comfy_args_repeating_the_machine_s_flags_or_with_an_open_quote_refuses_the_start() {
    let m = Installed::new();
    let mut rt = m.up(
        &m.env(&[("COMFY_ARGS", "--listen 0.0.0.0 --fast --port=9000 --cpu")]),
        &[],
    );
    let status = rt.wait_exit();
    let out = rt.output();
    assert!(!status.success(), "{out}");
    for (position, word, why) in [
        (1, "\"--listen\"", "is set by the machine"),
        (4, "\"--port=9000\" (as --port)", "is set by the machine"),
        (5, "\"--cpu\"", "is the machine's decision"),
    ] {
        let line = format!("  - COMFY_ARGS word {position}: {word} {why}");
        assert_eq!(out.matches(&line).count(), 1, "{line}\n{out}");
    }
    assert!(!out.contains("COMFY_ARGS word 3"), "{out}");
    // Nothing started: the stand-in never ran, and no instance folder was made.
    assert!(!m.workspace.join(format!("argv-{}.json", m.port)).exists());
    assert!(!m.workspace.join(".persist/ComfyUI/output/gpu0").exists());

    let mut rt = m.up(&m.env(&[("COMFY_ARGS", "--fast 'open")]), &[]);
    assert!(!rt.wait_exit().success());
    assert!(
        rt.output().contains(
            "  - COMFY_ARGS has an unclosed single quote: --fast 'open; close the quote (words are split like a shell would)"
        ),
        "{}",
        rt.output()
    );
    assert!(!m.workspace.join(format!("argv-{}.json", m.port)).exists());
}

#[test]
fn install_check_and_up_agree_on_the_configured_comfyui() {
    let m = Installed::new();
    const VARS: [&str; 3] = ["COMFYUI_REPO_URL", "COMFYUI_COMMIT", "COMFYUI_BRANCH"];

    // With the overrides it was installed with: current for both.
    let with = m.env(&[]);
    let (code, stderr) = m.check(&with, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let mut rt = m.up(&with, &[]);
    m.recorded(&rt);
    assert!(!rt.output().contains("differs"), "{}", rt.output());
    rt.signal(libc::SIGTERM);
    rt.wait_exit();

    // Without overrides (unset), with empty ones, and with what the generated .env of dev-full says
    // about ComfyUI: each is the pinned fork, which is not what is installed; `install --check` and
    // `up` both say so, naming the same wanted install hash.
    let generated = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../generated/dev-full/.env"),
    )
    .unwrap();
    let from_env_file: Vec<(String, String)> = generated
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| VARS.contains(k))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect();
    assert_eq!(
        from_env_file,
        Vec::<(String, String)>::new(),
        "the generated .env must leave the ComfyUI source to the pin"
    );
    let empty: Vec<(&str, &str)> = m.env(&VARS.map(|v| (v, "")));
    let mut wanted = Vec::new();
    for (how, env, unset) in [("unset", m.env(&[]), &VARS[..]), ("empty", empty, &[][..])] {
        let (code, stderr) = m.check(&env, unset);
        assert_eq!(code, Some(1), "{how}: {stderr}");
        let by_check = wanted_hash(&stderr).unwrap_or_else(|| panic!("{how}: {stderr}"));
        let mut rt = m.up(&env, unset);
        let by_up = wait_for(
            "up's warning about the install",
            || rt.output(),
            || {
                let out = rt.output();
                out.contains("install comfyui differs from what this environment asks for")
                    .then(|| {
                        wanted_hash(&out.replace(
                            "install comfyui differs from what this environment asks for (",
                            "comfyui (",
                        ))
                    })
                    .flatten()
            },
        );
        assert_eq!(by_check, by_up, "{how}: install --check and up disagree");
        rt.signal(libc::SIGTERM);
        rt.wait_exit();
        wanted.push(by_check);
    }
    assert_eq!(wanted[0], wanted[1], "an empty override must mean the pin");
}
