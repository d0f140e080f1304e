//! Tests of [`super::build`]: GPU pins, worker environments, programs and their lookup.

use std::path::Path;

use super::*;
use crate::ecosystem::Interpreter;

const UUIDS: [&str; 2] = [
    "GPU-00000000-0000-0000-0000-000000000000",
    "GPU-00000000-0000-0000-0000-000000000001",
];
const MIG: &str = "MIG-11111111-0000-0000-0000-000000000000";

fn ctx(env: &[(&str, &str)]) -> Context {
    Context {
        runtime_env: env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
        gpu_uuids: UUIDS.iter().map(|s| s.to_string()).collect(),
        mig_uuids: vec![(1, MIG.to_string())],
        current_exe: PathBuf::from("/usr/local/bin/machine-runtime"),
    }
}

fn env_of(cmd: &ChildCommand, key: &str) -> Option<String> {
    cmd.env
        .get(OsStr::new(key))
        .map(|v| v.to_string_lossy().into_owned())
}

#[test]
fn pins_gpu_apps_by_uuid_and_empties_cvd_for_others() {
    let mut svc = AppSpec::new("comfyui-gpu1", "python3");
    svc.gpu = Some(1);
    svc.env.insert("CUDA_VISIBLE_DEVICES".into(), "1".into());
    let cmd = build(&svc, &ctx(&[("CUDA_VISIBLE_DEVICES", "0,1")])).unwrap();
    assert_eq!(
        env_of(&cmd, "CUDA_VISIBLE_DEVICES").as_deref(),
        Some(UUIDS[1])
    );
    assert_eq!(
        env_of(&cmd, "CUDA_DEVICE_ORDER").as_deref(),
        Some("PCI_BUS_ID")
    );
    assert_eq!(env_of(&cmd, "WORKER_GPU_ID").as_deref(), Some("1"));
    assert_eq!(
        cmd.gpu,
        Some(GpuPin {
            index: 1,
            uuid: UUIDS[1].into()
        })
    );

    let mut worker = AppSpec::new("comfyui-worker-0", "node");
    worker.env.insert("WORKER_GPU_ID".into(), "0".into());
    let cmd = build(&worker, &ctx(&[])).unwrap();
    assert_eq!(
        env_of(&cmd, "CUDA_VISIBLE_DEVICES").as_deref(),
        Some(UUIDS[0])
    );

    let mut legacy = AppSpec::new("legacy", "x");
    legacy.env.insert("CUDA_VISIBLE_DEVICES".into(), "1".into());
    assert_eq!(build(&legacy, &ctx(&[])).unwrap().gpu.unwrap().index, 1);

    let api = AppSpec::new("openai-worker-0", "node");
    let cmd = build(&api, &ctx(&[("CUDA_VISIBLE_DEVICES", "0")])).unwrap();
    assert_eq!(env_of(&cmd, "CUDA_VISIBLE_DEVICES").as_deref(), Some(""));
    assert_eq!(
        env_of(&cmd, "CUDA_DEVICE_ORDER").as_deref(),
        Some("PCI_BUS_ID")
    );
    assert_eq!(cmd.gpu, None);
}

#[test]
fn keeps_or_translates_every_pin_written_in_env_or_args() {
    let cvd = |value: &str| {
        let mut app = AppSpec::new("tp", "python3");
        app.env.insert("CUDA_VISIBLE_DEVICES".into(), value.into());
        build(&app, &ctx(&[]))
    };
    let both = format!("{},{}", UUIDS[0], UUIDS[1]);
    let cmd = cvd("0,1").unwrap();
    assert_eq!(env_of(&cmd, "CUDA_VISIBLE_DEVICES"), Some(both.clone()));
    assert_eq!(cmd.visible.len(), 2);
    assert_eq!(cmd.gpu, None);
    assert_eq!(
        env_of(&cvd(UUIDS[1]).unwrap(), "CUDA_VISIBLE_DEVICES").as_deref(),
        Some(UUIDS[1])
    );
    // A prefix, as CUDA allows, must name one GPU (the two here differ in the last digit).
    assert!(
        cvd("GPU-00000000")
            .unwrap_err()
            .to_string()
            .contains("the start of more than one GPU's UUID")
    );
    let cmd = cvd(MIG).unwrap();
    assert_eq!(env_of(&cmd, "CUDA_VISIBLE_DEVICES").as_deref(), Some(MIG));
    assert_eq!(cmd.gpu.unwrap().index, 1);
    for none in ["", "-1"] {
        let cmd = cvd(none).unwrap();
        assert_eq!(env_of(&cmd, "CUDA_VISIBLE_DEVICES").as_deref(), Some(""));
    }
    for (value, why) in [
        (
            "0,7",
            "GPU 7 does not exist: this machine has 2 GPUs (indices 0-1)",
        ),
        ("GPU-ffff", "no GPU of this machine has the UUID GPU-ffff"),
        (
            "MIG-0000",
            "no MIG device of this machine has the UUID MIG-0000",
        ),
        ("cuda0", "entry \"cuda0\" is not a GPU index"),
        ("1,1", "names a GPU listed earlier"),
    ] {
        let err = cvd(value).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "app \"tp\": env CUDA_VISIBLE_DEVICES is \"{value}\": "
            )) && err.contains(why),
            "{value}: {err}"
        );
    }

    let mut nvidia = AppSpec::new("n", "x");
    nvidia
        .env
        .insert("NVIDIA_VISIBLE_DEVICES".into(), "all".into());
    let cmd = build(&nvidia, &ctx(&[])).unwrap();
    assert_eq!(env_of(&cmd, "CUDA_VISIBLE_DEVICES"), Some(both.clone()));
    nvidia
        .env
        .insert("NVIDIA_VISIBLE_DEVICES".into(), "1".into());
    let cmd = build(&nvidia, &ctx(&[])).unwrap();
    assert_eq!(
        env_of(&cmd, "CUDA_VISIBLE_DEVICES").as_deref(),
        Some(UUIDS[1])
    );

    let mut comfy = AppSpec::new("comfy", "main.py");
    comfy.args = vec!["--cuda-device".into(), "1".into()];
    let cmd = build(&comfy, &ctx(&[])).unwrap();
    assert_eq!(
        env_of(&cmd, "CUDA_VISIBLE_DEVICES").as_deref(),
        Some(UUIDS[1])
    );
    comfy.args = vec!["--cuda-device=3".into()];
    assert!(
        build(&comfy, &ctx(&[]))
            .unwrap_err()
            .to_string()
            .contains("args --cuda-device is \"3\": GPU 3 does not exist")
    );
    let mut torch = AppSpec::new("torch", "serve.py");
    torch.args = vec!["--device".into(), "cuda:1".into()];
    let cmd = build(&torch, &ctx(&[])).unwrap();
    assert_eq!(env_of(&cmd, "CUDA_VISIBLE_DEVICES"), Some(both));
    torch.args = vec!["--device".into(), "cpu".into()];
    let cmd = build(&torch, &ctx(&[])).unwrap();
    assert_eq!(env_of(&cmd, "CUDA_VISIBLE_DEVICES").as_deref(), Some(""));

    // machine_gpu and a pin in env must agree.
    let mut pinned = AppSpec::new("svc", "x");
    pinned.gpu = Some(0);
    pinned.env.insert("CUDA_VISIBLE_DEVICES".into(), "1".into());
    assert!(
        build(&pinned, &ctx(&[]))
            .unwrap_err()
            .to_string()
            .contains("the app is pinned to GPU 0")
    );
}

#[test]
fn refuses_missing_or_inconsistent_gpus() {
    let mut app = AppSpec::new("comfyui-gpu2", "x");
    app.gpu = Some(2);
    assert_eq!(
        build(&app, &ctx(&[])).unwrap_err().to_string(),
        "app \"comfyui-gpu2\" is pinned to GPU 2, but this machine has 2 GPUs (indices 0-1); start on a machine with that GPU or re-plan for the GPUs present"
    );
    let none = Context {
        gpu_uuids: Vec::new(),
        ..ctx(&[])
    };
    assert!(
        build(&app, &none)
            .unwrap_err()
            .to_string()
            .contains("this machine has no GPU")
    );
    app.gpu = Some(0);
    app.env.insert("WORKER_GPU_ID".into(), "1".into());
    assert_eq!(
        build(&app, &ctx(&[])).unwrap_err(),
        CommandError::GpuDisagrees {
            app: "comfyui-gpu2".into(),
            gpu: 0,
            env: "1".into()
        }
    );
    app.gpu = None;
    app.env.insert("WORKER_GPU_ID".into(), "one".into());
    assert!(matches!(
        build(&app, &ctx(&[])),
        Err(CommandError::BadGpuIndex { .. })
    ));
}

#[test]
fn merges_env_and_recomputes_worker_id() {
    let mut app = AppSpec::new("comfyui-worker-0", "node");
    app.connector = Some("comfyui".into());
    app.index = Some(0);
    app.env.insert("MACHINE_ID".into(), "built".into());
    app.env
        .insert("WORKER_ID".into(), "built-worker-comfyui-0".into());
    app.env.insert("HUB_REDIS_URL".into(), "redis://x".into());
    let cmd = build(
        &app,
        &ctx(&[
            ("MACHINE_ID", "m7"),
            ("PATH", "/bin"),
            ("HUB_REDIS_URL", "redis://outer"),
        ]),
    )
    .unwrap();
    assert_eq!(env_of(&cmd, "MACHINE_ID").as_deref(), Some("m7"));
    assert_eq!(
        env_of(&cmd, "WORKER_ID").as_deref(),
        Some("m7-worker-comfyui-0")
    );
    assert_eq!(env_of(&cmd, "PATH").as_deref(), Some("/bin"));
    assert_eq!(env_of(&cmd, "HUB_REDIS_URL").as_deref(), Some("redis://x"));

    // Without a MACHINE_ID at runtime the generated ids stay.
    let cmd = build(&app, &ctx(&[])).unwrap();
    assert_eq!(
        env_of(&cmd, "WORKER_ID").as_deref(),
        Some("built-worker-comfyui-0")
    );
}

#[test]
fn a_worker_sees_only_its_own_spec_and_needs_and_the_machine_settings_win() {
    let runtime = ctx(&[
        ("WORKERS", "openai:4,gemini:2"),
        ("WORKER_CONNECTORS", "openai:4,gemini:2"),
        ("OPENAI_API_KEY", "sk-1"),
        ("OPENAI_IMAGE_MODEL", "m"),
        ("GEMINI_API_KEY", "g-1"),
        ("HUB_REDIS_URL", "redis://r"),
        ("WORKER_POLL_INTERVAL_MS", "250"),
        ("WORKER_WEBSOCKET_AUTH_TOKEN", "tok"),
    ]);
    let mut gemini = AppSpec::new("gemini-worker-0", "redis-direct-worker.js");
    gemini.connector = Some("gemini".into());
    gemini.index = Some(0);
    gemini.required_env = vec!["GEMINI_API_KEY".into()];
    gemini.env.insert("WORKERS".into(), "gemini".into());
    gemini.env.insert("POLL_INTERVAL_MS".into(), "1000".into());
    let cmd = build(&gemini, &runtime).unwrap();
    assert_eq!(env_of(&cmd, "WORKERS").as_deref(), Some("gemini"));
    // Not in its own env: derived from the connector, never the machine's spec.
    assert_eq!(env_of(&cmd, "WORKER_CONNECTORS").as_deref(), Some("gemini"));
    assert_eq!(env_of(&cmd, "CONNECTORS").as_deref(), Some("gemini"));
    assert_eq!(env_of(&cmd, "GEMINI_API_KEY").as_deref(), Some("g-1"));
    assert_eq!(env_of(&cmd, "OPENAI_API_KEY"), None);
    assert_eq!(env_of(&cmd, "OPENAI_IMAGE_MODEL"), None);
    assert_eq!(env_of(&cmd, "HUB_REDIS_URL").as_deref(), Some("redis://r"));
    assert_eq!(env_of(&cmd, "POLL_INTERVAL_MS").as_deref(), Some("250"));
    assert_eq!(env_of(&cmd, "WEBSOCKET_AUTH_TOKEN").as_deref(), Some("tok"));

    // A service keeps the runtime's environment as it is.
    let svc = AppSpec::new("comfyui-gpu0", "python3");
    let cmd = build(&svc, &runtime).unwrap();
    assert_eq!(env_of(&cmd, "OPENAI_API_KEY").as_deref(), Some("sk-1"));
    assert_eq!(env_of(&cmd, "POLL_INTERVAL_MS"), None);
}

#[test]
fn looks_bare_programs_up_on_the_childs_path() {
    let mut app = AppSpec::new("a", "sh");
    app.env
        .insert("PATH".into(), "/nonexistent:/bin:/usr/bin".into());
    let cmd = build(&app, &ctx(&[])).unwrap();
    let resolved = PathBuf::from(cmd.resolved_program());
    assert!(
        resolved.is_absolute() && resolved.ends_with("sh"),
        "{resolved:?}"
    );
    let app = AppSpec::new("a", "no-such-program-anywhere");
    let cmd = build(&app, &ctx(&[("PATH", "/bin")])).unwrap();
    assert_eq!(cmd.resolved_program(), "no-such-program-anywhere");
}

#[test]
fn a_program_found_once_is_looked_up_again_only_when_it_is_gone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (early, late) = (dir.path().join("early"), dir.path().join("late"));
    std::fs::create_dir_all(&early).unwrap();
    std::fs::create_dir_all(&late).unwrap();
    let put = |folder: &Path| {
        let file = folder.join("the-tool");
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        file
    };
    let path = format!("{}:{}", early.display(), late.display());
    let cmd = build(&AppSpec::new("a", "the-tool"), &ctx(&[("PATH", &path)])).unwrap();
    let in_late = put(&late);
    assert_eq!(PathBuf::from(cmd.resolved_program()), in_late);
    // Remembered: a copy put earlier on PATH is not seen while the first one stays.
    let in_early = put(&early);
    assert_eq!(PathBuf::from(cmd.resolved_program()), in_late);
    // Gone from there: a start's checks that began before it was last found take it as found...
    let checking = std::time::Instant::now();
    assert_eq!(PathBuf::from(cmd.resolved_program()), in_late);
    std::fs::remove_file(&in_late).unwrap();
    let found = cmd.find_program_checked_since(checking).unwrap();
    assert_eq!(PathBuf::from(found), in_late);
    // ...any later look-up looks it up again.
    assert_eq!(PathBuf::from(cmd.resolved_program()), in_early);
    std::fs::remove_file(&in_early).unwrap();
    assert_eq!(cmd.resolved_program(), "the-tool");
}

#[test]
fn a_program_is_looked_up_on_the_apps_path_from_its_cwd_then_on_the_runtimes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rel")).unwrap();
    let tool = dir.path().join("rel/rel-tool");
    std::fs::write(&tool, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A relative PATH folder is the app's cwd's, as for the child's execvp after its chdir.
    let mut app = AppSpec::new("a", "rel-tool");
    app.cwd = Some(dir.path().to_path_buf());
    let cmd = build(&app, &ctx(&[("PATH", "rel")])).unwrap();
    assert_eq!(PathBuf::from(cmd.find_program().unwrap()), tool);
    // Not on the app's PATH: the runtime's own PATH (this test's), as PM2's `which` finds it.
    let cmd = build(&AppSpec::new("a", "sh"), &ctx(&[("PATH", "/nonexistent")])).unwrap();
    let found = PathBuf::from(cmd.find_program().unwrap());
    assert!(found.is_absolute() && found.ends_with("sh"), "{found:?}");
    // A file of that name that is not executable is named.
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cmd = build(&app, &ctx(&[("PATH", "rel")])).unwrap();
    assert_eq!(cmd.find_program(), Err(Some(tool)));
}

#[test]
fn resolves_program_like_pm2() {
    let c = ctx(&[]);
    let mut app = AppSpec::new("a", "server.py");
    app.args = vec!["--port".into(), "1".into()];
    app.cwd = Some("/srv".into());
    let cmd = build(&app, &c).unwrap();
    // Not in /srv here, so it stays relative: python3 resolves it in its cwd, /srv.
    assert_eq!(cmd.display(), "python3 server.py --port 1");
    assert_eq!(cmd.cwd.as_deref(), Some(Path::new("/srv")));

    let mut app = AppSpec::new("a", "./bin/tool");
    app.cwd = Some("/srv".into());
    assert_eq!(build(&app, &c).unwrap().display(), "/srv/./bin/tool");

    let mut app = AppSpec::new("a", "sleep");
    app.cwd = Some("/nonexistent".into());
    app.args = vec!["5".into()];
    assert_eq!(build(&app, &c).unwrap().display(), "sleep 5");

    let mut app = AppSpec::new("a", "worker.js");
    app.interpreter = Interpreter::Program("/usr/bin/node".into());
    app.interpreter_args = vec!["--max-old-space-size=512".into()];
    assert_eq!(
        build(&app, &c).unwrap().display(),
        "/usr/bin/node --max-old-space-size=512 worker.js"
    );

    let mut app = AppSpec::new("a", "run.sh");
    app.interpreter = Interpreter::None;
    assert_eq!(build(&app, &c).unwrap().display(), "run.sh");

    let mut app = AppSpec::new("sim", SELF_SCRIPT);
    app.args = vec!["simulate".into(), "--port".into(), "8299".into()];
    app.interpreter = Interpreter::Program("node".into());
    assert_eq!(
        build(&app, &c).unwrap().display(),
        "/usr/local/bin/machine-runtime simulate --port 8299"
    );
}

#[test]
fn workers_get_the_broker_ca_as_node_extra_ca_certs() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\nOURS\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    std::fs::write(
        &bundle,
        "-----BEGIN CERTIFICATE-----\nTHEIRS\n-----END CERTIFICATE-----",
    )
    .unwrap();
    let (ca, bundle) = (ca.to_str().unwrap(), bundle.to_str().unwrap());
    let mut worker = AppSpec::new("simulation-worker-0", "node");
    worker.env.insert("WORKER_ID".into(), "m-worker-0".into());
    let cmd = build(&worker, &ctx(&[("HUB_REDIS_TLS_CA_FILE", ca)])).unwrap();
    assert_eq!(env_of(&cmd, "NODE_EXTRA_CA_CERTS").as_deref(), Some(ca));
    // A file the environment already names is kept: Node gets one bundle of both.
    let c = ctx(&[
        ("HUB_REDIS_TLS_CA_FILE", ca),
        ("NODE_EXTRA_CA_CERTS", bundle),
    ]);
    let combined = env_of(&build(&worker, &c).unwrap(), "NODE_EXTRA_CA_CERTS").unwrap();
    let text = std::fs::read_to_string(&combined).unwrap();
    assert!(
        text.contains("THEIRS\n-----END CERTIFICATE-----\n-----BEGIN"),
        "{text}"
    );
    assert!(text.contains("OURS"), "{text}");
    // The same inputs give the same file.
    assert_eq!(
        env_of(&build(&worker, &c).unwrap(), "NODE_EXTRA_CA_CERTS").unwrap(),
        combined
    );
    // A service (not a worker) is left alone; no CA, nothing added.
    let service = AppSpec::new("comfyui-gpu0", "python3");
    let cmd = build(&service, &ctx(&[("HUB_REDIS_TLS_CA_FILE", ca)])).unwrap();
    assert_eq!(env_of(&cmd, "NODE_EXTRA_CA_CERTS"), None);
    let cmd = build(&worker, &ctx(&[])).unwrap();
    assert_eq!(env_of(&cmd, "NODE_EXTRA_CA_CERTS"), None);
}

/// A builder looks at each script path once for all its apps, and each app still gets its own
/// answer: a bare script name present in the app's cwd runs from there, one absent is left for PATH.
#[test]
fn a_builders_apps_each_find_their_script_in_their_cwd_or_on_path() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tool"), "#!/bin/sh\n").unwrap();
    let app = |name: &str, script: &str, cwd: &Path| {
        let mut app = AppSpec::new(name, script);
        app.interpreter = Interpreter::None;
        app.cwd = Some(cwd.to_path_buf());
        app
    };
    let ctx = ctx(&[("PATH", "/usr/bin:/bin")]);
    let mut builder = Builder::new(&ctx);
    let programs: Vec<OsString> = [
        app("a", "tool", dir.path()),
        app("b", "tool", dir.path()),
        app("c", "tool", other.path()),
        app("d", "sleep", dir.path()),
    ]
    .iter()
    .map(|a| builder.build(a).unwrap().program)
    .collect();
    let in_dir = dir.path().join("tool").into_os_string();
    assert_eq!(
        programs,
        [in_dir.clone(), in_dir, "tool".into(), "sleep".into()]
    );
}
