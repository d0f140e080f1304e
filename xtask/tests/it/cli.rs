//! The `cargo xtask plan` output contract (JSON shape, the seed's examples, errors) and `env-build`'s
//! idempotence, through the built binary.

use serde_json::Value;

use crate::{plan_json, read, root, run, temp_root, xtask, xtask_in};

/// (name, gpu) of each entry of a plan list.
fn names_and_gpus(list: &Value) -> Vec<(String, Option<u64>)> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|x| {
            (
                x["name"].as_str().expect("a name").to_string(),
                x["gpu"].as_u64(),
            )
        })
        .collect()
}

fn pairs(items: &[(&str, Option<u64>)]) -> Vec<(String, Option<u64>)> {
    items.iter().map(|(n, g)| (n.to_string(), *g)).collect()
}

#[test]
fn plan_json_has_the_contracted_shape() {
    let plan = plan_json("gpu-mixed", &[]);
    let workers = plan["workers"].as_array().expect("`workers` is a list");
    let services = plan["services"].as_array().expect("`services` is a list");
    assert!(!workers.is_empty() && !services.is_empty(), "{plan:#}");
    for w in workers {
        assert!(w["name"].is_string(), "worker name: {w}");
        assert!(w["connector"].is_string(), "worker connector: {w}");
        assert!(
            matches!(w["binding"].as_str(), Some("gpu" | "cpu" | "shared")),
            "worker binding: {w}"
        );
        assert!(
            w["gpu"].is_u64() || w["gpu"].is_null(),
            "worker gpu index or null: {w}"
        );
        let env = w["env"].as_object().expect("worker env is an object");
        assert!(
            env.values().all(Value::is_string),
            "worker env values are strings: {w}"
        );
    }
    for s in services {
        assert!(s["name"].is_string(), "service name: {s}");
        assert!(s["service"].is_string(), "service service: {s}");
        assert!(
            s["gpu"].is_u64() || s["gpu"].is_null(),
            "service gpu index or null: {s}"
        );
        assert!(
            s["port"].is_u64() || s["port"].is_null(),
            "service port number or null: {s}"
        );
    }
    // gpu-mixed is comfyui:2:gpu,openai:4:shared on 2 GPUs.
    assert_eq!(
        names_and_gpus(&plan["workers"]),
        pairs(&[
            ("comfyui-worker-0", Some(0)),
            ("comfyui-worker-1", Some(1)),
            ("openai-worker-0", None),
            ("openai-worker-1", None),
            ("openai-worker-2", None),
            ("openai-worker-3", None),
        ])
    );
    let w0 = &plan["workers"][0]["env"];
    assert_eq!(w0["CUDA_VISIBLE_DEVICES"], "0", "{w0}");
    assert_eq!(w0["WORKER_GPU_ID"], "0", "{w0}");
    assert_eq!(
        plan["workers"][2]["env"]["CUDA_VISIBLE_DEVICES"], "",
        "no GPU for API workers"
    );
}

#[test]
fn plan_gives_the_seed_examples() {
    let plan = plan_json("gpu-mixed", &["--workers", "comfyui:4:gpu", "--gpus", "2"]);
    assert_eq!(
        names_and_gpus(&plan["services"]),
        pairs(&[("comfyui-gpu0", Some(0)), ("comfyui-gpu1", Some(1))])
    );
    assert_eq!(
        names_and_gpus(&plan["workers"]),
        pairs(&[
            ("comfyui-worker-0", Some(0)),
            ("comfyui-worker-1", Some(1)),
            ("comfyui-worker-2", Some(0)),
            ("comfyui-worker-3", Some(1)),
        ])
    );
    let ports: Vec<u64> = plan["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["port"].as_u64())
        .collect();
    assert_eq!(ports, [8188, 8189]);

    let plan = plan_json(
        "gpu-mixed",
        &[
            "--workers",
            "comfyui:2,openai:6:shared,simulation-websocket:1:cpu",
            "--gpus",
            "2",
        ],
    );
    let services: Vec<(String, Option<u64>)> = names_and_gpus(&plan["services"]);
    assert_eq!(
        services.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["comfyui-gpu0", "comfyui-gpu1", "simulation-service"]
    );
    let workers: Vec<String> = names_and_gpus(&plan["workers"])
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mut expected = vec![
        "comfyui-worker-0".to_string(),
        "comfyui-worker-1".to_string(),
    ];
    expected.extend((0..6).map(|i| format!("openai-worker-{i}")));
    expected.push("simulation-websocket-worker-0".into());
    assert_eq!(workers, expected);
}

/// Invalid input: non-zero exit, nothing on stdout, the error (with a suggestion where there is one) on
/// stderr.
#[test]
fn plan_rejects_invalid_input_on_stderr() {
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["plan", "gpu-mixed", "--workers", "comfyu:2"],
            &[
                "unknown connector \"comfyu\"",
                "did you mean \"comfyui\"?",
                "item 1",
            ],
        ),
        (
            &["plan", "gpu-mixed", "--gpus", "0"],
            &["gpu-bound workers", "0 GPUs"],
        ),
        (
            &["plan", "gpu-mixd"],
            &[
                "unknown profile \"gpu-mixd\"",
                "did you mean \"gpu-mixed\"?",
            ],
        ),
        (
            &[
                "plan",
                "gpu-mixed",
                "--workers",
                "comfyui:0:gpu",
                "--format",
                "json",
            ],
            &["comfyui:0:gpu"],
        ),
    ];
    for (args, needles) in cases {
        let out = run(xtask().args(args));
        assert!(!out.ok(), "xtask {args:?} should fail: {out}");
        assert!(
            out.stdout.is_empty(),
            "xtask {args:?} printed to stdout: {out}"
        );
        for needle in needles {
            assert!(
                out.stderr.contains(needle),
                "xtask {args:?}: stderr lacks {needle:?}: {out}"
            );
        }
    }
}

#[test]
fn plan_text_has_the_table_headers() {
    let out = run(xtask().args(["plan", "gpu-mixed"]));
    assert!(out.ok(), "{out}");
    for header in [
        "NAME",
        "SERVICE",
        "GPU",
        "PORT",
        "WORKER_ID",
        "BINDING",
        "SECRETS",
    ] {
        assert!(
            out.stdout.contains(header),
            "the text plan lacks the {header} column:\n{}",
            out.stdout
        );
    }
    for row in [
        "comfyui-gpu0",
        "comfyui-worker-1",
        "openai-worker-3",
        "8189",
    ] {
        assert!(
            out.stdout.contains(row),
            "the text plan lacks {row}:\n{}",
            out.stdout
        );
    }
}

/// `env-build gpu-mixed` on the checked-in inputs rewrites nothing (run on a copy so a stale checkout is
/// reported, not silently fixed).
#[test]
fn env_build_leaves_the_checked_in_files_unchanged() {
    let dir = temp_root();
    let out = run(xtask_in(dir.path()).args(["env-build", "gpu-mixed"]));
    assert!(out.ok(), "{out}");
    for file in [".env", "docker-compose.yaml", "ecosystem.config.json"] {
        let path = format!("generated/gpu-mixed/{file}");
        assert!(
            out.stdout.contains(&format!("unchanged {path}")),
            "env-build did not leave {path} unchanged: {out}"
        );
        assert_eq!(
            read(&dir.path().join(&path)),
            read(&root().join(&path)),
            "{path}"
        );
    }
    assert!(!out.stdout.contains("wrote"), "{out}");
}

#[test]
fn output_into_a_pipe_closed_early_ends_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let mut child = xtask()
        // About 2 MB of JSON: far more than a pipe holds, so writes go on after the reader is gone.
        .args([
            "plan",
            "api-only",
            "--workers",
            "mock:2000",
            "--format",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The read end is closed now (dropped); the rest of the output goes into a broken pipe.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {err}",
        out.status
    );
}

/// The xtask acts on the checkout it runs in, found from the current directory (issue 21: one binary shared
/// by two clones through `CARGO_TARGET_DIR` read the other clone's profiles): run from a subfolder of a copy
/// with one profile renamed, `list` shows the copy's profiles; run outside any workspace it fails saying so.
#[test]
fn the_checkout_is_found_from_the_current_directory() {
    let copy = temp_root();
    std::fs::write(
        copy.path().join("Cargo.toml"),
        "[workspace]\nmembers = []\n",
    )
    .unwrap();
    std::fs::rename(
        copy.path().join("profiles/gpu-mixed.json"),
        copy.path().join("profiles/only-in-the-copy.json"),
    )
    .unwrap();
    let mut cmd = xtask();
    cmd.current_dir(copy.path().join("generated/api-only"))
        .arg("list");
    let out = run(&mut cmd);
    assert!(out.ok(), "{out}");
    assert!(out.stdout.contains("only-in-the-copy"), "{out}");
    assert!(
        !out.stdout.lines().any(|l| l.starts_with("gpu-mixed ")),
        "{out}"
    );

    let outside = tempfile::tempdir().unwrap();
    let mut cmd = xtask();
    cmd.current_dir(outside.path()).arg("list");
    let out = run(&mut cmd);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains("no Cargo.toml with [workspace] at or above")
            && out.stderr.contains("inside a checkout"),
        "{out}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out}");
}

/// A profile whose `$schema` is not the generated schema's path is refused by env-build with one message at
/// the field naming the right path, exit 1, and nothing is written (issue 21: it passed and wrote files).
#[test]
fn a_wrong_schema_path_is_refused_and_nothing_is_written() {
    let copy = temp_root();
    let file = copy.path().join("profiles/gpu-mixed.json");
    let text = read(&file);
    assert!(
        text.contains("\"../schemas/profile.schema.json\""),
        "{text}"
    );
    std::fs::write(
        &file,
        text.replace(
            "\"../schemas/profile.schema.json\"",
            "\"../schema/profile.json\"",
        ),
    )
    .unwrap();
    let out_dir = copy.path().join("generated/gpu-mixed");
    std::fs::remove_dir_all(&out_dir).unwrap();
    let out = run(xtask_in(copy.path()).args(["env-build", "--all"]));
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains(
            "profiles/gpu-mixed.json:2:14: /$schema: $schema is \"../schema/profile.json\", which is not the profile schema; allowed: \"../schemas/profile.schema.json\""
        ),
        "{out}"
    );
    assert_eq!(out.stderr.matches("/$schema").count(), 1, "{out}");
    assert!(!out_dir.exists(), "env-build wrote files: {out}");
    assert!(!out.stdout.contains("wrote"), "{out}");
}
