//! The installer against real git, real processes and real files: local fixture repositories, no network.
//!
//! `git` is reached through a wrapper placed first on the children's `PATH` that logs every invocation,
//! which is how the tests prove that a skipped install started no git process.

mod dockerfile;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use machine_model::install::{
    COMFYUI_CONSTRAINTS, CustomNode, InstallRecipe, Step, comfyui_recipe, comfyui_recipe_for,
};
use machine_model::profile::{ComfyuiCustomNode, ComfyuiModel, ComfyuiOptions};

use crate::up_support::{fake_wheel, pinned_version, wait_for};
use machine_runtime::install::{
    Env, FailureCause, Freshness, InstallError, InstallOptions, Marker, Outcome, Progress,
    ProgressEvent, check, install,
};

/// A temporary directory holding the workspace, fixture repositories and the git wrapper.
struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let fx = Fixture {
            tmp: tempfile::tempdir().unwrap(),
        };
        let bin = fx.path("bin");
        fs::create_dir(&bin).unwrap();
        let wrapper = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            fx.git_log().display(),
            real_git().display()
        );
        let git = bin.join("git");
        fs::write(&git, wrapper).unwrap();
        make_executable(&git);
        fx
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn workspace(&self) -> PathBuf {
        self.path("workspace")
    }

    fn git_log(&self) -> PathBuf {
        self.path("git-invocations.log")
    }

    /// The git commands run since the last call (one line each).
    fn take_git_invocations(&self) -> Vec<String> {
        let lines = fs::read_to_string(self.git_log())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        let _ = fs::remove_file(self.git_log());
        lines
    }

    /// The test process's environment with the git wrapper first on PATH, git isolated from user config,
    /// and no installer variables inherited from outside.
    fn env(&self) -> Env {
        let mut env = Env::from_process();
        for name in [
            "COMFYUI_REPO_URL",
            "COMFYUI_COMMIT",
            "COMFYUI_BRANCH",
            "WORKSPACE_DIR",
            "PYTHON",
        ] {
            env.remove(name);
        }
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            env.get("PATH").unwrap_or("/usr/bin:/bin")
        );
        env.set("PATH", path);
        env.set("GIT_CONFIG_GLOBAL", "/dev/null");
        env.set("GIT_CONFIG_NOSYSTEM", "1");
        env
    }

    /// [`Fixture::env`] with pip kept off the network: no index, no user or site pip config, packages
    /// only from the test's own wheels folder, which holds `requests` at the version ComfyUI's
    /// constraints pin (ComfyUI's recipe always installs it).
    fn offline_env(&self) -> Env {
        let mut env = self.env();
        for name in ["PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"] {
            env.remove(name);
        }
        env.set("PIP_CONFIG_FILE", "/dev/null");
        env.set("PIP_NO_INDEX", "1");
        let wheels = self.path("wheels");
        let requests = pinned_version("requests");
        fake_wheel(&wheels, "requests", &requests);
        env.set("PIP_FIND_LINKS", wheels.to_string_lossy());
        env
    }

    fn opts(&self, env: Env) -> (InstallOptions, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let mut opts = InstallOptions::from_env(env);
        opts.workspace_dir = self.workspace();
        opts.progress = recorder.clone();
        (opts, recorder)
    }

    fn marker(&self, service: &str) -> Marker {
        let bytes = fs::read(
            self.workspace()
                .join(".installed")
                .join(format!("{service}.json")),
        )
        .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn versions(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.workspace().join(".versions").join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn real_git() -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(|dir| Path::new(dir).join("git"))
        .find(|candidate| candidate.is_file())
        .expect("the tests need git on PATH")
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A git repository made by the test, standing in for ComfyUI or a custom node.
struct Repo {
    dir: PathBuf,
}

impl Repo {
    fn create(dir: PathBuf) -> Self {
        fs::create_dir_all(&dir).unwrap();
        let repo = Repo { dir };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    fn git(&self, args: &[&str]) -> String {
        crate::up_support::git_with(&real_git(), &self.dir, args)
    }

    /// Writes `files`, commits them on the current branch and returns the commit id.
    fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (name, content) in files {
            let path = self.dir.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

/// `python -c <code>` in a venv of the workspace; its stdout, trimmed.
fn venv_python(python: &Path, code: &str) -> String {
    let out = Command::new(python).args(["-c", code]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<ProgressEvent>>,
}

impl Progress for Recorder {
    fn report(&self, event: &ProgressEvent) {
        eprintln!("{event}");
        self.events.lock().unwrap().push(event.clone());
    }
}

impl Recorder {
    fn take(&self) -> Vec<ProgressEvent> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

fn step_failure(err: InstallError) -> Box<machine_runtime::install::StepFailure> {
    match err {
        InstallError::Step(failure) => failure,
        other => panic!("expected a step failure, got: {other}"),
    }
}

/// Gone, or a zombie waiting for its (new) parent to reap it.
fn process_is_dead(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Kills, by pid, a process a test started, should the test fail before the installer did so.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !process_is_dead(self.0) {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

fn comfyui_fixture(fx: &Fixture) -> (Repo, String) {
    let repo = Repo::create(fx.path("ComfyUI-src"));
    let commit = repo.commit(
        &[
            (
                "main.py",
                "import requests\nprint('v1', requests.__version__)\n",
            ),
            ("models/checkpoints/put_checkpoints_here", ""),
            (
                "requirements.txt",
                "# nothing to install in the offline fixture\n",
            ),
        ],
        "v1",
    );
    (repo, commit)
}

#[test]
fn comfyui_installs_once_skips_reinstalls_on_change_and_survives_a_broken_url() {
    let fx = Fixture::new();
    let (repo, c1) = comfyui_fixture(&fx);
    let ws = fx.workspace();
    let recipe = comfyui_recipe();
    let services = [("comfyui", &recipe)];
    let mut env = fx.offline_env();
    env.set("COMFYUI_REPO_URL", repo.url());
    env.set("COMFYUI_COMMIT", &c1);

    // First install: checkout and venv in a version directory, symlinked into place.
    let (opts, progress) = fx.opts(env.clone());
    let started = Instant::now();
    let report = install(&services, &opts).unwrap();
    let first = started.elapsed();
    assert_eq!(report.services.len(), 1);
    assert_eq!(report.services[0].outcome, Outcome::Installed);
    let link = fs::read_link(ws.join("ComfyUI")).unwrap();
    assert_eq!(
        link,
        Path::new(".versions/ComfyUI").join(&report.services[0].hash)
    );
    assert!(
        fs::read_to_string(ws.join("ComfyUI/main.py"))
            .unwrap()
            .contains("print('v1'")
    );
    let marker = fx.marker("comfyui");
    assert_eq!(marker.hash, report.services[0].hash);
    assert_eq!(marker.checkouts[0].commit, c1);
    assert_eq!(marker.requirements[0].path, "pip-constraints.txt");
    assert_eq!(marker.requirements[1].path, "requirements.txt");
    // The constraints kept in the repository are written beside the venv; the fixture's commit has
    // none of its own, so the pinned commit's file is used, with a warning saying so.
    assert_eq!(
        fs::read_to_string(ws.join("ComfyUI/pip-constraints.txt")).unwrap(),
        COMFYUI_CONSTRAINTS[0].1
    );
    // `requests` is installed although requirements.txt does not name it, at the pinned version.
    assert_eq!(
        venv_python(
            &ws.join("ComfyUI/venv/bin/python"),
            "import requests; print(requests.__version__)"
        ),
        pinned_version("requests")
    );
    // The venv was created where it stays: its scripts name the version directory, which never moves,
    // and it works through the symlink.
    let pip = fs::read_to_string(ws.join("ComfyUI/venv/bin/pip")).unwrap();
    let shebang = format!("#!{}/venv/bin/python", ws.join(&link).display());
    assert!(
        pip.starts_with(&shebang),
        "{shebang} vs {}",
        pip.lines().next().unwrap_or_default()
    );
    let out = Command::new(ws.join("ComfyUI/venv/bin/pip"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let git_calls = fx.take_git_invocations();
    assert!(
        git_calls
            .iter()
            .any(|c| c.starts_with(&format!("fetch -q --depth 1 --no-tags {}", repo.url()))),
        "{git_calls:#?}"
    );
    let events = progress.take();
    assert!(events.iter().any(|e| e.to_string().starts_with("install comfyui: step 3/5 python-venv (venv venv, pip install -r requirements.txt, pip install requests, constraints pip-constraints.txt) done in")), "{events:#?}");
    assert!(
        events.iter().any(|e| matches!(e, ProgressEvent::Warning { message, .. }
            if message.starts_with(&format!("revision {c1} has no pip constraints file of its own; using the one made for {}", COMFYUI_CONSTRAINTS[0].0)))),
        "{events:#?}"
    );
    // The probe ran ComfyUI's start-up check in the new version before the switch.
    assert!(
        events.iter().any(|e| e.to_string().starts_with(
            "install comfyui: step 5/5 probe (venv/bin/python main.py --quick-test-for-ci --cpu) done in"
        )),
        "{events:#?}"
    );

    // Second install: same hash, skipped, no git process at all.
    let started = Instant::now();
    let report = install(&services, &opts).unwrap();
    let skip = started.elapsed();
    assert_eq!(report.services[0].outcome, Outcome::Skipped);
    assert_eq!(fx.take_git_invocations(), Vec::<String>::new());
    assert!(
        matches!(progress.take().as_slice(), [ProgressEvent::Skipped { service, .. }] if service == "comfyui")
    );
    eprintln!(
        "timing: first install {:.2}s, skipped install {:.3}ms",
        first.as_secs_f64(),
        skip.as_secs_f64() * 1e3
    );

    // Models live outside the versions: what the repository ships was moved there, and what the service
    // downloads at run time survives the reinstall below.
    assert!(
        ws.join(".persist/ComfyUI/models/checkpoints/put_checkpoints_here")
            .is_file()
    );
    fs::write(
        ws.join("ComfyUI/models/checkpoints/downloaded.safetensors"),
        "weights",
    )
    .unwrap();

    // A new commit: reinstalled into a new version; the old version is removed.
    let c2 = repo.commit(
        &[
            ("main.py", "print('v2')\n"),
            ("models/vae/put_vae_here", ""),
        ],
        "v2",
    );
    env.set("COMFYUI_COMMIT", &c2);
    let (opts, _progress) = fx.opts(env.clone());
    let report = install(&services, &opts).unwrap();
    assert_eq!(report.services[0].outcome, Outcome::Installed);
    assert_ne!(report.services[0].hash, marker.hash);
    assert_eq!(
        fs::read_to_string(ws.join("ComfyUI/main.py")).unwrap(),
        "print('v2')\n"
    );
    assert_eq!(fx.marker("comfyui").checkouts[0].commit, c2);
    assert_eq!(
        fx.versions("ComfyUI"),
        vec![report.services[0].hash.clone()]
    );
    assert_eq!(
        fs::read_to_string(ws.join("ComfyUI/models/checkpoints/downloaded.safetensors")).unwrap(),
        "weights"
    );
    assert!(
        ws.join("ComfyUI/models/vae/put_vae_here").is_file(),
        "new model folders are added"
    );
    fx.take_git_invocations();

    // A broken URL: a clear error; the previous install, symlink and marker are untouched.
    let marker_path = ws.join(".installed/comfyui.json");
    let marker_before = fs::read(&marker_path).unwrap();
    let link_before = fs::read_link(ws.join("ComfyUI")).unwrap();
    env.set("COMFYUI_REPO_URL", "file:///nonexistent/ComfyUI.git");
    let (opts, _progress) = fx.opts(env.clone());
    let err = install(&services, &opts).unwrap_err();
    let message = err.to_string();
    let failure = step_failure(err);
    assert_eq!(
        (
            failure.service.as_str(),
            failure.step,
            failure.total,
            failure.kind
        ),
        ("comfyui", 1, 5, "git-checkout")
    );
    assert!(
        matches!(failure.cause, FailureCause::Exit(ref s) if s.starts_with("exited with status")),
        "{message}"
    );
    assert!(
        failure.command.as_deref().unwrap().contains("git fetch"),
        "{message}"
    );
    assert!(
        failure
            .command
            .as_deref()
            .unwrap()
            .contains("file:///nonexistent/ComfyUI.git"),
        "{message}"
    );
    assert!(
        failure
            .tail
            .iter()
            .any(|l| l.contains("/nonexistent/ComfyUI.git")),
        "{message}"
    );
    assert!(
        message.starts_with("install comfyui failed at step 1/5 git-checkout: `git fetch"),
        "{message}"
    );
    assert!(
        message.contains("previous install of comfyui, if any, is still active"),
        "{message}"
    );
    assert_eq!(fs::read(&marker_path).unwrap(), marker_before);
    assert_eq!(fs::read_link(ws.join("ComfyUI")).unwrap(), link_before);
    assert_eq!(
        fs::read_to_string(ws.join("ComfyUI/main.py")).unwrap(),
        "print('v2')\n"
    );
    assert_eq!(
        fx.versions("ComfyUI").len(),
        1,
        "the failed build was cleaned up"
    );

    // A commit whose ComfyUI does not start: the probe fails, naming its output, and the working
    // install stays active.
    env.set("COMFYUI_REPO_URL", repo.url());
    let broken = repo.commit(
        &[(
            "main.py",
            "import sys\nprint('loading nodes')\nsys.exit('ModuleNotFoundError: No module named foo')\n",
        )],
        "broken",
    );
    env.set("COMFYUI_COMMIT", &broken);
    let (opts, _progress) = fx.opts(env.clone());
    let err = install(&services, &opts).unwrap_err();
    let message = err.to_string();
    let failure = step_failure(err);
    assert_eq!((failure.step, failure.total, failure.kind), (5, 5, "probe"));
    assert!(
        message.contains("main.py --quick-test-for-ci --cpu` exited with status 1 (expected status 0): the new version does not start, so it was not switched in"),
        "{message}"
    );
    assert_eq!(
        failure.tail,
        ["loading nodes", "ModuleNotFoundError: No module named foo"]
    );
    assert_eq!(fs::read(&marker_path).unwrap(), marker_before);
    assert_eq!(fs::read_link(ws.join("ComfyUI")).unwrap(), link_before);
    assert_eq!(fx.versions("ComfyUI").len(), 1);

    // COMFYUI_BRANCH names the revision when COMFYUI_COMMIT is unset.
    repo.git(&["checkout", "-q", "-b", "feature"]);
    let c3 = repo.commit(&[("main.py", "print('feature')\n")], "feature");
    repo.git(&["checkout", "-q", "main"]);
    env.set("COMFYUI_REPO_URL", repo.url());
    env.remove("COMFYUI_COMMIT");
    env.set("COMFYUI_BRANCH", "feature");
    let (opts, _progress) = fx.opts(env);
    assert_eq!(
        install(&services, &opts).unwrap().services[0].outcome,
        Outcome::Installed
    );
    let marker = fx.marker("comfyui");
    assert_eq!(
        (
            marker.checkouts[0].rev.as_str(),
            marker.checkouts[0].commit.as_str()
        ),
        ("feature", c3.as_str())
    );
    assert_eq!(
        fs::read_to_string(ws.join("ComfyUI/main.py")).unwrap(),
        "print('feature')\n"
    );
}

#[test]
fn a_step_past_its_timeout_is_killed_with_its_process_group_and_named() {
    let fx = Fixture::new();
    let pid_file = fx.path("background.pid");
    let script = format!(
        "sleep 30 & echo $! > '{}'; echo started; wait",
        pid_file.display()
    );
    let recipe = InstallRecipe {
        dir: "Slow".into(),
        steps: vec![Step::Command {
            argv: vec!["sh".into(), "-c".into(), script],
            cwd: None,
            env: vec![],
            timeout_secs: Some(2),
        }],
    };
    let (opts, _progress) = fx.opts(fx.env());
    let started = Instant::now();
    let err = install(&[("slow", &recipe)], &opts).unwrap_err();
    eprintln!(
        "timing: a 2s step timeout returned after {:.2}s",
        started.elapsed().as_secs_f64()
    );
    let message = err.to_string();
    let failure = step_failure(err);
    assert_eq!(
        (
            failure.service.as_str(),
            failure.step,
            failure.total,
            failure.kind
        ),
        ("slow", 1, 1, "command")
    );
    assert!(
        matches!(failure.cause, FailureCause::Timeout(limit) if limit == Duration::from_secs(2)),
        "{message}"
    );
    assert!(
        message.contains("ran past the step's 2s limit and was killed with its process group"),
        "{message}"
    );
    assert!(message.contains("sleep 30"), "{message}");
    assert!(failure.tail.contains(&"started".to_owned()), "{message}");
    // The background `sleep` (a grandchild) died with the group.
    let pid: u32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _cleanup = KillOnDrop(pid);
    wait_for("the background sleep is dead", String::new, || {
        process_is_dead(pid).then_some(())
    });
    assert!(!fx.workspace().join("Slow").exists());
    assert!(!fx.workspace().join(".installed/slow.json").exists());
    assert_eq!(fx.versions("Slow"), Vec::<String>::new());
}

#[test]
fn no_services_install_nothing_and_create_nothing() {
    let fx = Fixture::new();
    let (opts, progress) = fx.opts(fx.env());
    let report = install(&[], &opts).unwrap();
    assert!(report.services.is_empty());
    assert!(check(&[], &opts).unwrap().is_empty());
    assert!(!fx.workspace().exists());
    assert!(progress.take().is_empty());
    assert_eq!(fx.take_git_invocations(), Vec::<String>::new());
}

#[test]
fn a_service_requested_twice_is_installed_once_and_dir_conflicts_are_refused() {
    let fx = Fixture::new();
    let repo = Repo::create(fx.path("src"));
    let commit = repo.commit(&[("README", "fixture\n")], "one");
    let runs = fx.path("runs.log");
    let recipe = InstallRecipe {
        dir: "Svc".into(),
        steps: vec![
            Step::GitCheckout {
                repo: repo.url(),
                rev: commit,
                dest: "src".into(),
                shallow: true,
                timeout_secs: None,
            },
            Step::Command {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    format!("echo run >> '{}'", runs.display()),
                ],
                cwd: Some("src".into()),
                env: vec![],
                timeout_secs: None,
            },
        ],
    };
    let (opts, _progress) = fx.opts(fx.env());
    let report = install(&[("svc", &recipe), ("svc", &recipe)], &opts).unwrap();
    assert_eq!(report.services.len(), 1);
    assert_eq!(fs::read_to_string(&runs).unwrap(), "run\n");
    let inits = fx
        .take_git_invocations()
        .iter()
        .filter(|c| c.contains("init"))
        .count();
    assert_eq!(inits, 1);
    assert!(fx.workspace().join("Svc/src/README").is_file());

    let err = install(&[("svc", &recipe), ("other", &recipe)], &opts).unwrap_err();
    assert!(
        matches!(&err, InstallError::Invalid { problems } if problems.len() == 1),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(r#"services "svc" and "other" both install into "Svc""#),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&runs).unwrap(), "run\n");
}

#[test]
fn unresolved_placeholders_are_all_reported_before_anything_runs() {
    let fx = Fixture::new();
    let recipe = InstallRecipe {
        dir: "X".into(),
        steps: vec![Step::GitCheckout {
            repo: "${FIXTURE_REPO_URL}".into(),
            rev: "${FIXTURE_REV}".into(),
            dest: ".".into(),
            shallow: true,
            timeout_secs: None,
        }],
    };
    let mut env = fx.env();
    env.remove("FIXTURE_REPO_URL");
    env.remove("FIXTURE_REV");
    let (opts, _progress) = fx.opts(env);
    let err = install(&[("x", &recipe)], &opts).unwrap_err();
    let InstallError::Invalid { problems } = &err else {
        panic!("expected invalid recipes, got {err}")
    };
    assert_eq!(
        problems,
        &[
            "service x: steps[0].repo: `${FIXTURE_REPO_URL}` is not set; set FIXTURE_REPO_URL or write `${FIXTURE_REPO_URL:-default}`",
            "service x: steps[0].rev: `${FIXTURE_REV}` is not set; set FIXTURE_REV or write `${FIXTURE_REV:-default}`",
        ]
    );
    assert!(!fx.workspace().exists());
}

#[test]
fn a_refused_shallow_fetch_falls_back_to_a_full_fetch() {
    let fx = Fixture::new();
    let repo = Repo::create(fx.path("src"));
    let old = repo.commit(&[("file", "old\n")], "old");
    repo.commit(&[("file", "new\n")], "new");
    // Protocol v0 servers refuse a shallow fetch of a commit that no ref points at.
    let mut env = fx.env();
    env.set("GIT_CONFIG_COUNT", "1");
    env.set("GIT_CONFIG_KEY_0", "protocol.version");
    env.set("GIT_CONFIG_VALUE_0", "0");
    let recipe = InstallRecipe {
        dir: "Pinned".into(),
        steps: vec![Step::GitCheckout {
            repo: repo.url(),
            rev: old.clone(),
            dest: ".".into(),
            shallow: true,
            timeout_secs: None,
        }],
    };
    let (opts, progress) = fx.opts(env);
    install(&[("pinned", &recipe)], &opts).unwrap();
    assert_eq!(
        fs::read_to_string(fx.workspace().join("Pinned/file")).unwrap(),
        "old\n"
    );
    assert_eq!(fx.marker("pinned").checkouts[0].commit, old);
    let events = progress.take();
    assert!(
        events.iter().any(|e| matches!(e, ProgressEvent::StepNote { message, .. } if message.contains("fetching the full history"))),
        "{events:#?}"
    );
    assert!(
        fx.take_git_invocations()
            .iter()
            .any(|c| c.starts_with("fetch -q --tags"))
    );
}

#[test]
fn custom_nodes_are_checked_out_at_their_revisions() {
    let fx = Fixture::new();
    let (comfy, c1) = comfyui_fixture(&fx);
    let node = Repo::create(fx.path("node-src"));
    let node_commit = node.commit(&[("__init__.py", "NODE_CLASS_MAPPINGS = {}\n")], "node");
    let recipe = InstallRecipe {
        dir: "ComfyUI".into(),
        steps: vec![
            Step::GitCheckout {
                repo: comfy.url(),
                rev: c1,
                dest: ".".into(),
                shallow: true,
                timeout_secs: None,
            },
            Step::CustomNodes {
                dir: "custom_nodes".into(),
                venv: None,
                nodes: vec![CustomNode {
                    name: "my-node".into(),
                    repo: node.url(),
                    rev: "main".into(),
                    requirements: true,
                    env: vec![],
                }],
                constraints: None,
                timeout_secs: None,
            },
        ],
    };
    let (opts, _progress) = fx.opts(fx.env());
    install(&[("comfyui", &recipe)], &opts).unwrap();
    assert!(
        fx.workspace()
            .join("ComfyUI/custom_nodes/my-node/__init__.py")
            .is_file()
    );
    let marker = fx.marker("comfyui");
    assert_eq!(marker.checkouts[1].dest, "custom_nodes/my-node");
    assert_eq!(marker.checkouts[1].commit, node_commit);
}

#[test]
fn a_failing_command_reports_status_and_tail_with_secrets_masked() {
    let fx = Fixture::new();
    let mut env = fx.env();
    env.set("HF_TOKEN", "hf_supersecretvalue");
    let recipe = InstallRecipe {
        dir: "Fails".into(),
        steps: vec![
            Step::Command {
                argv: vec!["true".into()],
                cwd: None,
                env: vec![],
                timeout_secs: None,
            },
            Step::Command {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo using hf_supersecretvalue; echo boom >&2; exit 3".into(),
                ],
                cwd: None,
                env: vec![],
                timeout_secs: None,
            },
        ],
    };
    let (opts, _progress) = fx.opts(env);
    let err = install(&[("fails", &recipe)], &opts).unwrap_err();
    let message = err.to_string();
    assert!(!message.contains("supersecret"), "{message}");
    let failure = step_failure(err);
    assert_eq!(
        (failure.step, failure.total, failure.kind),
        (2, 2, "command")
    );
    assert!(
        matches!(&failure.cause, FailureCause::Exit(s) if s == "exited with status 3"),
        "{message}"
    );
    assert_eq!(failure.tail, ["using ***", "boom"]);
    assert!(
        message.contains("`sh -c 'echo using ***; echo boom >&2; exit 3'` exited with status 3"),
        "{message}"
    );

    // Credentials in a repository URL never reach messages.
    let recipe = InstallRecipe {
        dir: "Private".into(),
        steps: vec![Step::GitCheckout {
            repo: "https://user:pw-secret-123@127.0.0.1:9/private.git".into(),
            rev: "main".into(),
            dest: ".".into(),
            shallow: true,
            timeout_secs: Some(120),
        }],
    };
    let (opts, progress) = fx.opts(fx.env());
    let message = install(&[("private", &recipe)], &opts)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("https://***@127.0.0.1:9/private.git"),
        "{message}"
    );
    assert!(!message.contains("pw-secret"), "{message}");
    assert!(
        progress
            .take()
            .iter()
            .all(|e| !e.to_string().contains("pw-secret"))
    );
}

#[test]
fn check_reports_current_and_stale_without_running_anything() {
    let fx = Fixture::new();
    let repo = Repo::create(fx.path("src"));
    let commit = repo.commit(&[("f", "1\n")], "one");
    let recipe = InstallRecipe {
        dir: "Svc".into(),
        steps: vec![Step::GitCheckout {
            repo: repo.url(),
            rev: commit,
            dest: ".".into(),
            shallow: true,
            timeout_secs: None,
        }],
    };
    let (opts, _progress) = fx.opts(fx.env());
    assert!(
        matches!(&check(&[("svc", &recipe)], &opts).unwrap()[0].1, Freshness::Stale(r) if r == "not installed yet")
    );
    install(&[("svc", &recipe)], &opts).unwrap();
    fx.take_git_invocations();
    assert!(matches!(
        &check(&[("svc", &recipe)], &opts).unwrap()[0].1,
        Freshness::Current(_)
    ));
    // The symlink no longer matching the marker is stale, not current.
    fs::remove_file(fx.workspace().join("Svc")).unwrap();
    assert!(
        matches!(&check(&[("svc", &recipe)], &opts).unwrap()[0].1, Freshness::Stale(r) if r.contains("not the install symlink"))
    );
    assert_eq!(fx.take_git_invocations(), Vec::<String>::new());
    // And install repairs it.
    assert_eq!(
        install(&[("svc", &recipe)], &opts).unwrap().services[0].outcome,
        Outcome::Installed
    );
    assert!(fx.workspace().join("Svc/f").is_file());
}

#[test]
fn cli_installs_comfyui_from_a_local_fixture_then_skips() {
    let fx = Fixture::new();
    let (repo, c1) = comfyui_fixture(&fx);
    let ws = fx.workspace();
    let run = |args: &[&str], extra: &[(&str, &str)]| {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_machine-runtime"))
            .arg("install")
            .args(args)
            .env_clear()
            .envs(fx.offline_env().iter())
            .env("COMFYUI_REPO_URL", repo.url())
            .env("COMFYUI_COMMIT", &c1)
            .envs(extra.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("$ machine-runtime install {}\n{stderr}", args.join(" "));
        (out.status.code(), stderr, started.elapsed())
    };
    let ws_arg = ws.to_str().unwrap();

    let (code, stderr, first) = run(
        &["--services", "comfyui,comfyui", "--workspace", ws_arg],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("install comfyui: step 1/5 git-checkout"),
        "{stderr}"
    );
    assert!(
        stderr.contains("install comfyui: installed ComfyUI -> .versions/ComfyUI/"),
        "{stderr}"
    );
    assert!(
        stderr.contains("install: 1 installed, 0 up to date"),
        "{stderr}"
    );
    assert!(ws.join("ComfyUI/main.py").is_file());
    assert!(!fx.take_git_invocations().is_empty());

    // WORKSPACE_DIR is honoured when --workspace is absent.
    let (code, stderr, second) = run(&["--services", "comfyui"], &[("WORKSPACE_DIR", ws_arg)]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("install comfyui: up to date"), "{stderr}");
    assert_eq!(fx.take_git_invocations(), Vec::<String>::new());
    eprintln!(
        "timing: cli first install {:.2}s, cli skip {:.1}ms (whole process)",
        first.as_secs_f64(),
        second.as_secs_f64() * 1e3
    );

    let (code, stderr, _) = run(
        &["--check", "--services", "comfyui", "--workspace", ws_arg],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr, _) = run(
        &["--check", "--services", "comfyui", "--workspace", ws_arg],
        &[("COMFYUI_COMMIT", &"0".repeat(40))],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("not installed or out of date: comfyui (recipe changed: hash "),
        "{stderr}"
    );

    let (code, stderr, _) = run(&["--services", "comfyu", "--workspace", ws_arg], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(r#"no install recipe for service "comfyu" (known: comfyui, playwright, worker-bundle); did you mean "comfyui"?"#),
        "{stderr}"
    );

    // An API-only machine needs no internal service: nothing is installed or created.
    let empty = fx.path("api-only-workspace");
    let (code, stderr, _) = run(
        &["--services", "", "--workspace", empty.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("nothing to install"), "{stderr}");
    assert!(!empty.exists());
}

#[test]
fn an_interrupted_cli_takes_the_running_step_down_with_it() {
    let fx = Fixture::new();
    // A `git` that never finishes, recording its pid (after `exec`, the shell's pid is the sleep's).
    let hang_bin = fx.path("hang-bin");
    fs::create_dir(&hang_bin).unwrap();
    let pid_file = fx.path("hung-git.pid");
    fs::write(
        hang_bin.join("git"),
        format!(
            "#!/bin/sh\necho $$ > '{}'\nexec sleep 60\n",
            pid_file.display()
        ),
    )
    .unwrap();
    make_executable(&hang_bin.join("git"));
    let path = format!("{}:{}", hang_bin.display(), fx.env().get("PATH").unwrap());
    let mut cli = Command::new(env!("CARGO_BIN_EXE_machine-runtime"))
        .args([
            "install",
            "--services",
            "comfyui",
            "--workspace",
            fx.workspace().to_str().unwrap(),
        ])
        .env_clear()
        .envs(fx.env().iter())
        .env("PATH", path)
        .env("COMFYUI_REPO_URL", "file:///unused")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the hanging git has started", String::new, || {
        fs::read_to_string(&pid_file)
            .is_ok_and(|s| s.ends_with('\n'))
            .then_some(())
    });
    let git_pid: u32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _cleanup = KillOnDrop(git_pid);
    let kill = Command::new("kill")
        .args(["-TERM", &cli.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = cli.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    wait_for("the step's process group is dead", String::new, || {
        process_is_dead(git_pid).then_some(())
    });
}

#[test]
fn a_directory_not_made_by_the_installer_is_moved_aside_never_deleted() {
    let fx = Fixture::new();
    let repo = Repo::create(fx.path("src"));
    let commit = repo.commit(&[("f", "new\n")], "one");
    let ws = fx.workspace();
    fs::create_dir_all(ws.join("Svc/models")).unwrap();
    fs::write(ws.join("Svc/models/precious.bin"), "keep me").unwrap();
    let recipe = InstallRecipe {
        dir: "Svc".into(),
        steps: vec![Step::GitCheckout {
            repo: repo.url(),
            rev: commit,
            dest: ".".into(),
            shallow: true,
            timeout_secs: None,
        }],
    };
    let (opts, progress) = fx.opts(fx.env());
    install(&[("svc", &recipe)], &opts).unwrap();
    assert_eq!(fs::read_to_string(ws.join("Svc/f")).unwrap(), "new\n");
    let moved: Vec<PathBuf> = fs::read_dir(&ws)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("Svc.unmanaged-")
        })
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(
        fs::read_to_string(moved[0].join("models/precious.bin")).unwrap(),
        "keep me"
    );
    let events = progress.take();
    assert!(
        events.iter().any(|e| matches!(e, ProgressEvent::Warning { message, .. } if message.contains("not made by this installer"))),
        "{events:#?}"
    );
}

#[test]
fn a_profiles_packages_nodes_and_models_are_installed_pinned_and_a_bad_model_is_refused() {
    let fx = Fixture::new();
    let (comfy, c1) = comfyui_fixture(&fx);
    let ws = fx.workspace();
    let mut env = fx.offline_env();
    env.set("COMFYUI_REPO_URL", comfy.url());
    env.set("COMFYUI_COMMIT", &c1);
    fake_wheel(&fx.path("wheels"), "fixturepkg", "1.0");
    // The node's dependency is reachable only through the node's own env (its PIP_FIND_LINKS).
    let node_wheels = fx.path("node-wheels");
    fake_wheel(&node_wheels, "nodedep", "2.0");

    // Node "a": pinned to its first commit (the branch has moved on), requirements installed.
    let a = Repo::create(fx.path("node-a"));
    let a_pinned = a.commit(
        &[
            ("__init__.py", "NODE_CLASS_MAPPINGS = {}\n"),
            ("requirements.txt", "nodedep==2.0\n"),
        ],
        "a1",
    );
    a.commit(&[("__init__.py", "raise SystemExit('moved')\n")], "a2");
    // Node "b": installs first (install_order 1); its requirements are not wanted and would fail offline.
    let b = Repo::create(fx.path("node-b"));
    let b_commit = b.commit(&[("requirements.txt", "not-on-any-index==9.9\n")], "b1");
    let model_src = fx.path("downloads/v1-5.safetensors");
    fs::create_dir_all(model_src.parent().unwrap()).unwrap();
    fs::write(&model_src, vec![7u8; 300_000]).unwrap();
    let model_sha = sha256_hex(&model_src);

    let node = |name: &str, repo: &Repo, commit: &str, order: Option<u32>| ComfyuiCustomNode {
        name: name.into(),
        url: repo.url(),
        commit: commit.into(),
        requirements: name == "a",
        install_order: order,
        env: Default::default(),
    };
    let mut node_a = node("a", &a, &a_pinned, Some(2));
    node_a.env.insert(
        "PIP_FIND_LINKS".into(),
        format!("{} {}", fx.path("wheels").display(), node_wheels.display()),
    );
    let mut options = ComfyuiOptions {
        packages: vec!["fixturepkg==1.0".into()],
        custom_nodes: vec![node_a, node("b", &b, &b_commit, Some(1))],
        models: vec![ComfyuiModel {
            url: format!("file://{}", model_src.display()),
            sha256: model_sha.to_uppercase(),
            folder: "checkpoints".into(),
            file_name: None,
        }],
        ..ComfyuiOptions::default()
    };
    assert_eq!(
        machine_model::comfyui_install::check(&options),
        Vec::<(String, String)>::new()
    );
    let recipe = comfyui_recipe_for(&options);
    let (opts, progress) = fx.opts(env.clone());
    install(&[("comfyui", &recipe)], &opts).unwrap();

    let root = ws.join("ComfyUI");
    let python = root.join("venv/bin/python");
    assert_eq!(
        venv_python(
            &python,
            "import fixturepkg, nodedep; print(fixturepkg.__version__, nodedep.__version__)"
        ),
        "1.0 2.0"
    );
    assert_eq!(
        fs::read_to_string(root.join("custom_nodes/a/__init__.py")).unwrap(),
        "NODE_CLASS_MAPPINGS = {}\n"
    );
    assert!(root.join("custom_nodes/b/requirements.txt").is_file());
    let marker = fx.marker("comfyui");
    let checkouts: Vec<(&str, &str)> = marker
        .checkouts
        .iter()
        .map(|c| (c.dest.as_str(), c.commit.as_str()))
        .collect();
    assert_eq!(
        checkouts,
        [
            (".", c1.as_str()),
            ("custom_nodes/b", b_commit.as_str()),
            ("custom_nodes/a", a_pinned.as_str())
        ]
    );
    // The model is in the folder kept across reinstalls, checked, and recorded in the marker.
    let model = ws.join(".persist/ComfyUI/models/checkpoints/v1-5.safetensors");
    assert_eq!(fs::read(&model).unwrap(), fs::read(&model_src).unwrap());
    assert!(root.join("models/checkpoints/v1-5.safetensors").is_file());
    assert_eq!(
        marker.fetches[0].dest,
        "models/checkpoints/v1-5.safetensors"
    );
    assert_eq!(
        marker.fetches[0].sha256.as_deref(),
        Some(model_sha.as_str())
    );
    let lines: Vec<String> = progress.take().iter().map(|e| e.to_string()).collect();
    assert!(
        lines.iter().any(|l| l.ends_with(&format!(
            "download: downloading file://{} into models/checkpoints/v1-5.safetensors",
            model_src.display()
        ))),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("models/checkpoints/v1-5.safetensors: 293.0 KiB in ")),
        "{lines:#?}"
    );

    // Reinstalled (forced): the model already there with its checksum is not downloaded again.
    let (mut forced, progress) = fx.opts(env.clone());
    forced.force = true;
    install(&[("comfyui", &recipe)], &forced).unwrap();
    let lines: Vec<String> = progress.take().iter().map(|e| e.to_string()).collect();
    assert!(
        lines.iter().any(|l| l.contains(&format!(
            "models/checkpoints/v1-5.safetensors is already there with SHA-256 {model_sha}; not downloaded again"
        ))),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("downloading")),
        "{lines:#?}"
    );

    // A model whose checksum does not match is refused and deleted; the install before stays active.
    let link_before = fs::read_link(&root).unwrap();
    let marker_before = fs::read(ws.join(".installed/comfyui.json")).unwrap();
    let bad_src = fx.path("downloads/vae.bin");
    fs::write(&bad_src, "not the vae you pinned").unwrap();
    options.models.push(ComfyuiModel {
        url: format!("file://{}", bad_src.display()),
        sha256: "0".repeat(64),
        folder: "vae".into(),
        file_name: Some("pinned-vae.safetensors".into()),
    });
    let recipe = comfyui_recipe_for(&options);
    let (opts, _progress) = fx.opts(env.clone());
    let err = install(&[("comfyui", &recipe)], &opts).unwrap_err();
    let message = err.to_string();
    let failure = step_failure(err);
    assert_eq!(
        (failure.step, failure.total, failure.kind),
        (6, 7, "download")
    );
    assert!(
        message.starts_with(&format!(
            "install comfyui failed at step 6/7 download (model models/vae/pinned-vae.safetensors): the download from file://{} has SHA-256 {}, expected {}; it was refused and deleted",
            bad_src.display(),
            sha256_hex(&bad_src),
            "0".repeat(64)
        )),
        "{message}"
    );
    let vae = ws.join(".persist/ComfyUI/models/vae");
    let left: Vec<_> = fs::read_dir(&vae)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(fs::read_link(&root).unwrap(), link_before);
    assert_eq!(
        fs::read(ws.join(".installed/comfyui.json")).unwrap(),
        marker_before
    );

    // A node whose commit does not exist fails naming the node.
    options.models.pop();
    options.custom_nodes[1].commit = "f".repeat(40);
    let recipe = comfyui_recipe_for(&options);
    let message = install(&[("comfyui", &recipe)], &opts)
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with(&format!(
            "install comfyui failed at step 4/7 custom-nodes (custom node \"b\" ({} @ {})): ",
            b.url(),
            "f".repeat(40)
        )),
        "{message}"
    );
    assert_eq!(fs::read_link(&root).unwrap(), link_before);
}
