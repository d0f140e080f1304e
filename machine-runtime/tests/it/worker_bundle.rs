//! The worker bundle as an installed part, with the real binary, real `tar` and real files: installed from
//! a folder or a `file://` tarball (top folder stripped; a release tarball without a service mapping gets
//! the machine's copy), skipped when the source is the same, refused
//! when it is not a bundle or its checksum differs; and `up --profile` refusing, before anything
//! starts, a missing bundle, a connector the installed bundle's mapping lacks and a missing
//! `required_env`.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::up_support::{BIN, Runtime, STAND_IN_BUNDLE, free_port, wait_for};

/// `machine-runtime install` with `args` in a clean environment plus `env`: exit code and stderr.
fn install(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .arg("install")
        .args(args)
        .env_remove("WORKER_BUNDLE_URL")
        .env_remove("WORKER_BUNDLE_SHA256")
        .env_remove("WORKER_CONNECTORS")
        .env_remove("WORKSPACE_DIR")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A copy of the stand-in bundle under `dir/<name>/`.
fn copy_bundle(dir: &Path, name: &str) -> std::path::PathBuf {
    let to = dir.join(name);
    let status = Command::new("cp")
        .args(["-R", STAND_IN_BUNDLE])
        .arg(&to)
        .status()
        .unwrap();
    assert!(status.success());
    to
}

/// A `.tar.gz` of `folder` with one top folder `emp-job-queue-worker/`, like a release.
fn tarball(folder: &Path, out: &Path) {
    let staging = out.with_extension("staging");
    fs::create_dir_all(&staging).unwrap();
    let top = staging.join("emp-job-queue-worker");
    let status = Command::new("cp")
        .arg("-R")
        .arg(folder)
        .arg(&top)
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("tar")
        .arg("-czf")
        .arg(out)
        .arg("-C")
        .arg(&staging)
        .arg("emp-job-queue-worker")
        .status()
        .unwrap();
    assert!(status.success());
}

fn sha256(file: &Path) -> String {
    let out = Command::new("sha256sum").arg(file).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn a_folder_installs_once_and_the_same_source_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let ws_arg = ws.to_str().unwrap();
    let env = [("WORKER_BUNDLE_URL", STAND_IN_BUNDLE)];
    let (code, stderr) = install(&["--profile", "full-local", "--workspace", ws_arg], &env);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("profile full-local needs worker-bundle"),
        "{stderr}"
    );
    let installed = ws.join("worker-bundled");
    assert!(fs::symlink_metadata(&installed).unwrap().is_symlink());
    for file in machine_model::worker_bundle::WORKER_BUNDLE_FILES {
        assert_eq!(
            fs::read(installed.join(file)).unwrap(),
            fs::read(Path::new(STAND_IN_BUNDLE).join(file)).unwrap(),
            "{file}"
        );
    }
    let marker: serde_json::Value =
        serde_json::from_slice(&fs::read(ws.join(".installed/worker-bundle.json")).unwrap())
            .unwrap();
    assert_eq!(marker["fetches"][0]["source"], STAND_IN_BUNDLE, "{marker}");

    let (code, stderr) = install(&["--profile", "full-local", "--workspace", ws_arg], &env);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("install: 0 installed, 1 up to date"),
        "{stderr}"
    );
    let (code, stderr) = install(
        &["--check", "--profile", "full-local", "--workspace", ws_arg],
        &env,
    );
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn a_tarball_is_extracted_with_its_top_folder_stripped_and_its_checksum_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("emp-job-queue-worker.tar.gz");
    tarball(Path::new(STAND_IN_BUNDLE), &archive);
    let url = format!("file://{}", archive.display());
    let ws = tmp.path().join("ws");
    let ws_arg = ws.to_str().unwrap();

    // A wrong checksum: refused, nothing switched.
    let wrong = "0".repeat(64);
    let (code, stderr) = install(
        &["--services", "worker-bundle", "--workspace", ws_arg],
        &[
            ("WORKER_BUNDLE_URL", url.as_str()),
            ("WORKER_BUNDLE_SHA256", wrong.as_str()),
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("expected {wrong}; check the source")),
        "{stderr}"
    );
    assert!(!ws.join("worker-bundled").exists());

    let sum = sha256(&archive);
    let (code, stderr) = install(
        &["--services", "worker-bundle", "--workspace", ws_arg],
        &[
            ("WORKER_BUNDLE_URL", url.as_str()),
            ("WORKER_BUNDLE_SHA256", sum.as_str()),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(ws.join("worker-bundled/redis-direct-worker.js").is_file());
    assert!(
        ws.join("worker-bundled/src/config/service-mapping.json")
            .is_file()
    );
    let marker: serde_json::Value =
        serde_json::from_slice(&fs::read(ws.join(".installed/worker-bundle.json")).unwrap())
            .unwrap();
    assert_eq!(marker["fetches"][0]["sha256"], sum.as_str(), "{marker}");
}

/// A tarball shaped like the published release (contract §1): one top folder holding only
/// `redis-direct-worker.js`, `package.json` and `README.md`, no service mapping.
fn release_tarball(dir: &Path) -> std::path::PathBuf {
    let folder = dir.join("release");
    fs::create_dir_all(&folder).unwrap();
    for file in ["redis-direct-worker.js", "package.json"] {
        fs::copy(Path::new(STAND_IN_BUNDLE).join(file), folder.join(file)).unwrap();
    }
    fs::write(folder.join("README.md"), "# EMP Job Queue Worker\n").unwrap();
    let archive = dir.join("emp-job-queue-worker.tar.gz");
    tarball(&folder, &archive);
    archive
}

#[test]
fn a_release_tarball_without_a_mapping_gets_the_machines_copy_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = release_tarball(tmp.path());
    let url = format!("file://{}", archive.display());
    let ws = tmp.path().join("ws");
    let ws_arg = ws.to_str().unwrap();
    let (code, stderr) = install(
        &["--services", "worker-bundle", "--workspace", ws_arg],
        &[("WORKER_BUNDLE_URL", url.as_str())],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{url} holds no src/config/service-mapping.json; the machine writes the machine's copy of the worker's service mapping (machine-model/data/service-mapping.json) there"
        )),
        "{stderr}"
    );
    let installed = ws.join("worker-bundled");
    assert_eq!(
        fs::read_to_string(installed.join("src/config/service-mapping.json")).unwrap(),
        machine_model::worker_bundle::WORKER_SERVICE_MAPPING
    );
    assert!(installed.join("README.md").is_file());
    let marker: serde_json::Value =
        serde_json::from_slice(&fs::read(ws.join(".installed/worker-bundle.json")).unwrap())
            .unwrap();
    let provided = &marker["fetches"][0]["provided"];
    assert_eq!(
        provided[0]["path"], "src/config/service-mapping.json",
        "{marker}"
    );
    assert!(
        provided[0]["origin"]
            .as_str()
            .unwrap()
            .contains("machine-model/data/service-mapping.json"),
        "{marker}"
    );
    assert_eq!(provided.as_array().unwrap().len(), 1, "{marker}");

    // A bundle with its own mapping keeps it: nothing provided, and the log says so.
    let own = tmp.path().join("own.tar.gz");
    tarball(Path::new(STAND_IN_BUNDLE), &own);
    let own_url = format!("file://{}", own.display());
    let (code, stderr) = install(
        &["--services", "worker-bundle", "--workspace", ws_arg],
        &[("WORKER_BUNDLE_URL", own_url.as_str())],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{own_url} has its own src/config/service-mapping.json; the machine's copy is not used"
        )),
        "{stderr}"
    );
    let marker: serde_json::Value =
        serde_json::from_slice(&fs::read(ws.join(".installed/worker-bundle.json")).unwrap())
            .unwrap();
    assert!(marker["fetches"][0].get("provided").is_none(), "{marker}");
    assert_eq!(
        fs::read(installed.join("src/config/service-mapping.json")).unwrap(),
        fs::read(Path::new(STAND_IN_BUNDLE).join("src/config/service-mapping.json")).unwrap()
    );
}

#[test]
fn up_runs_workers_from_a_release_tarball_with_the_profiles_settings() {
    // The workers find the provided mapping where the real worker looks (relative to its folder) and
    // come up; `up` raises no warning about the install it just made.
    let tmp = tempfile::tempdir().unwrap();
    let archive = release_tarball(tmp.path());
    let url = format!("file://{}", archive.display());
    // Nothing listens at the broker's address: each worker, past reading its mapping, says it retries.
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let rt = Runtime::start_profile(
        "full-local",
        &[
            ("MACHINE_FAKE_GPUS", "2"),
            ("WORKER_BUNDLE_URL", url.as_str()),
            ("HUB_REDIS_URL", dead.as_str()),
        ],
    );
    for i in 0..4 {
        let prefix = format!("[simulation-websocket-worker-{i}]");
        wait_for(
            &format!("{prefix} to read its mapping and reach for the broker"),
            || rt.output(),
            || {
                rt.output()
                    .lines()
                    .any(|l| l.starts_with(&prefix) && l.contains("redis: connecting to"))
                    .then_some(())
            },
        );
    }
    let out = rt.output();
    assert!(!out.contains("Service mapping not found"), "{out}");

    // The workers' LOG_LEVEL is the one the profile's generated files give (its `env`), not the catalog
    // default: `up --profile` plans with the profile's own settings when the environment sets none.
    let dotenv = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../generated/full-local/.env"),
    )
    .unwrap();
    let generated = dotenv
        .lines()
        .find_map(|l| l.strip_prefix("LOG_LEVEL="))
        .expect("the generated .env sets LOG_LEVEL")
        .trim_matches('\'');
    assert_eq!(generated, "debug", "profile full-local asks for debug");
    let pid = rt.app_status("simulation-websocket-worker-0")["pid"]
        .as_u64()
        .unwrap();
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(
        vars.contains(&format!("LOG_LEVEL={generated}")),
        "{:?}",
        vars.iter()
            .filter(|v| v.contains("LOG"))
            .collect::<Vec<_>>()
    );
    assert!(!out.contains("not found in service mapping"), "{out}");
    assert!(!out.contains("differs from what this environment"), "{out}");
}

#[test]
fn up_takes_the_bundle_installed_from_a_configured_source_as_current() {
    // Installed with WORKER_BUNDLE_URL (as an image build does), started without it: no warning that
    // the install differs; started with another source: the warning, naming it.
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let ws_arg = ws.to_str().unwrap().to_owned();
    let (code, stderr) = install(
        &["--profile", "full-local", "--workspace", &ws_arg],
        &[("WORKER_BUNDLE_URL", STAND_IN_BUNDLE)],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let marker: serde_json::Value =
        serde_json::from_slice(&fs::read(ws.join(".installed/worker-bundle.json")).unwrap())
            .unwrap();
    assert_eq!(
        marker["configured_by"],
        serde_json::json!(["WORKER_BUNDLE_URL"]),
        "{marker}"
    );
    assert!(marker["unconfigured_hash"].is_string(), "{marker}");
    // `install --check` agrees with `up`: current without the variable.
    let (code, stderr) = install(
        &["--check", "--profile", "full-local", "--workspace", &ws_arg],
        &[],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let other = copy_bundle(tmp.path(), "other");
    let dead = format!("redis://127.0.0.1:{}", free_port());
    for (source, warned) in [(None, false), (Some(other.to_str().unwrap()), true)] {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::up_support::free_port_run(8).to_string();
        let mut env = vec![
            ("WORKSPACE_DIR", ws_arg.as_str()),
            ("MACHINE_FAKE_GPUS", "2"),
            ("HUB_REDIS_URL", dead.as_str()),
            ("SIMULATION_BASE_PORT", port.as_str()),
        ];
        env.extend(source.map(|s| ("WORKER_BUNDLE_URL", s)));
        let mut rt = Runtime::spawn(dir, &["up", "--profile", "full-local"], &env, &[]);
        // The install check runs before anything starts.
        let out = wait_for(
            "the apps to be up",
            || rt.output(),
            || {
                let out = rt.output();
                out.contains("apps are up and ready").then_some(out)
            },
        );
        assert_eq!(
            out.contains("install worker-bundle differs from what this environment asks for"),
            warned,
            "WORKER_BUNDLE_URL={source:?}:\n{out}"
        );
        rt.signal(libc::SIGTERM);
        rt.wait_exit();
    }
}

#[test]
fn a_folder_that_is_not_a_bundle_is_refused_and_the_old_one_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let ws_arg = ws.to_str().unwrap();
    let (code, stderr) = install(
        &["--services", "worker-bundle", "--workspace", ws_arg],
        &[("WORKER_BUNDLE_URL", STAND_IN_BUNDLE)],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let broken = copy_bundle(tmp.path(), "broken");
    fs::remove_file(broken.join("package.json")).unwrap();
    fs::remove_file(broken.join("redis-direct-worker.js")).unwrap();
    let (code, stderr) = install(
        &["--services", "worker-bundle", "--workspace", ws_arg],
        &[("WORKER_BUNDLE_URL", broken.to_str().unwrap())],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("lacks redis-direct-worker.js, package.json (expected redis-direct-worker.js, package.json, src/config/service-mapping.json)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("the previous install of worker-bundle, if any, is still active"),
        "{stderr}"
    );
    assert!(ws.join("worker-bundled/redis-direct-worker.js").is_file());

    let (code, stderr) = install(
        &["--services", "worker-bundle", "--workspace", ws_arg],
        &[("WORKER_BUNDLE_URL", "relative/bundle")],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("is neither an http(s):// or file:// URL nor an absolute path"),
        "{stderr}"
    );
}

/// Runs `up --profile full-local` expecting a refusal before anything starts; returns its output.
fn refused(rt: &mut Runtime) -> String {
    let status = rt.wait_exit();
    let out = rt.output();
    assert!(!status.success(), "up started anyway:\n{out}");
    assert!(!out.contains(" started (pid"), "an app was started:\n{out}");
    out
}

#[test]
fn up_refuses_a_missing_bundle_naming_the_install_command() {
    let mut rt = Runtime::start_profile_uninstalled("full-local", &[("MACHINE_FAKE_GPUS", "2")]);
    let out = refused(&mut rt);
    let workspace = rt.dir.path().display().to_string();
    assert!(
        out.contains(&format!(
            "worker bundle missing at {workspace}/worker-bundled/redis-direct-worker.js (needed by simulation-websocket-worker-0, simulation-websocket-worker-1, simulation-websocket-worker-2, simulation-websocket-worker-3); run `machine-runtime install --profile full-local` (or set WORKER_BUNDLE_URL"
        )),
        "{out}"
    );
    assert!(
        out.contains("install worker-bundle is not usable (not installed yet); run `machine-runtime install --profile full-local`"),
        "{out}"
    );
}

#[test]
fn up_refuses_a_connector_the_installed_mapping_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = copy_bundle(tmp.path(), "old-bundle");
    let mapping_path = bundle.join("src/config/service-mapping.json");
    let mut mapping: serde_json::Value =
        serde_json::from_slice(&fs::read(&mapping_path).unwrap()).unwrap();
    mapping["workers"]
        .as_object_mut()
        .unwrap()
        .remove("simulation-websocket");
    fs::write(&mapping_path, mapping.to_string()).unwrap();
    let mut rt = Runtime::start_profile(
        "full-local",
        &[
            ("MACHINE_FAKE_GPUS", "2"),
            ("WORKER_BUNDLE_URL", bundle.to_str().unwrap()),
        ],
    );
    let out = refused(&mut rt);
    assert!(
        out.contains("connector \"simulation-websocket\" (apps simulation-websocket-worker-0, simulation-websocket-worker-1, simulation-websocket-worker-2, simulation-websocket-worker-3) is not a worker type of the installed bundle's"),
        "{out}"
    );
    assert!(
        out.contains("(bundle version 0.0.0-test; its types: emprops-app, comfyui, mock"),
        "{out}"
    );
    assert!(
        out.contains("change the worker spec or install a bundle that has it"),
        "{out}"
    );
}

#[test]
fn a_planned_playwright_worker_is_refused_at_start_by_the_installed_mapping() {
    // The plan takes the seed's `playwright` (service and worker); the installed bundle's mapping has no
    // such type, so `up` refuses, naming the bundle's version and its types.
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let ws_arg = ws.to_str().unwrap();
    let (code, stderr) = install(
        &["--services", "worker-bundle", "--workspace", ws_arg],
        &[("WORKER_BUNDLE_URL", STAND_IN_BUNDLE)],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let mut rt = Runtime::spawn(
        tmp,
        &["up", "--profile", "full-local"],
        &[
            ("WORKSPACE_DIR", ws_arg),
            ("MACHINE_FAKE_GPUS", "2"),
            (
                "WORKER_CONNECTORS",
                "playwright:1:cpu,comfyui-websocket:2:gpu",
            ),
        ],
        &[],
    );
    let out = refused(&mut rt);
    assert!(
        out.contains("connector \"playwright\" (apps playwright-worker-0) is not a worker type of the installed bundle's"),
        "{out}"
    );
    assert!(
        out.contains("(bundle version 0.0.0-test; its types: emprops-app, comfyui, mock"),
        "{out}"
    );
    // The alias planned comfyui workers, which the bundle has.
    assert!(!out.contains("connector \"comfyui\""), "{out}");
    assert!(!out.contains("connector \"comfyui-websocket\""), "{out}");
}

#[test]
fn up_refuses_missing_required_env_all_at_once() {
    let mut rt = Runtime::start_profile(
        "full-local",
        &[
            ("MACHINE_FAKE_GPUS", "2"),
            ("WORKER_CONNECTORS", "openai:1,ollama:1"),
            ("OLLAMA_HOST", "127.0.0.1"),
        ],
    );
    let out = refused(&mut rt);
    for name in [
        "secret OPENAI_API_KEY is not set; the openai worker needs it (openai-worker-0)",
        "variable OPENAI_IMAGE_MODEL is not set",
        "variable CLOUD_STORAGE_PROVIDER is not set",
        "variable OLLAMA_PORT is not set; the ollama worker needs it (ollama-worker-0)",
        "variable OLLAMA_DEFAULT_MODEL is not set",
    ] {
        assert!(out.contains(name), "{name}:\n{out}");
    }
    assert!(!out.contains("OLLAMA_HOST is not set"), "{out}");
}

/// `install --check` after a folder install (issue 21): the same folder and workspace written another way
/// (`file://`, a trailing `/`, `..`) are current; a real change names the complete command that installs
/// it (the variable, the profile and the workspace), with a URL shown as `"$WORKER_BUNDLE_URL"`.
#[test]
fn check_after_a_folder_install_is_current_and_names_the_complete_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let bundle = copy_bundle(tmp.path(), "bundle");
    let (ws_arg, bundle_arg) = (ws.to_str().unwrap(), bundle.to_str().unwrap());
    let (code, err) = install(
        &["--profile", "full-local", "--workspace", ws_arg],
        &[("WORKER_BUNDLE_URL", bundle_arg)],
    );
    assert_eq!(code, Some(0), "{err}");

    let file_url = format!("file://{bundle_arg}");
    let slash = format!("{bundle_arg}/");
    let dotdot = format!("{}/../ws/", ws_arg);
    for (workspace, source) in [
        (ws_arg, None),
        (ws_arg, Some(bundle_arg)),
        (ws_arg, Some(file_url.as_str())),
        (ws_arg, Some(slash.as_str())),
        (dotdot.as_str(), Some(bundle_arg)),
    ] {
        let env: Vec<(&str, &str)> = source
            .map(|s| ("WORKER_BUNDLE_URL", s))
            .into_iter()
            .collect();
        let (code, err) = install(
            &[
                "--check",
                "--profile",
                "full-local",
                "--workspace",
                workspace,
            ],
            &env,
        );
        assert_eq!(
            code,
            Some(0),
            "workspace {workspace}, source {source:?}: {err}"
        );
        assert!(err.contains("1 services installed and current"), "{err}");
    }

    let other = copy_bundle(tmp.path(), "other-bundle");
    let (code, err) = install(
        &["--check", "--profile", "full-local", "--workspace", ws_arg],
        &[("WORKER_BUNDLE_URL", other.to_str().unwrap())],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "; install them with: WORKER_BUNDLE_URL={} machine-runtime install --profile full-local --workspace {ws_arg}",
            other.display()
        )),
        "{err}"
    );
    let (code, err) = install(
        &["--check", "--profile", "full-local", "--workspace", ws_arg],
        &[(
            "WORKER_BUNDLE_URL",
            "https://user:s3cret@example.com/b.tar.gz",
        )],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "install them with: WORKER_BUNDLE_URL=\"$WORKER_BUNDLE_URL\" machine-runtime install --profile full-local --workspace {ws_arg}"
        )),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}
