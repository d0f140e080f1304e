//! Drift: on a temporary copy of the inputs (`XTASK_ROOT`), editing or deleting a profile makes
//! `xtask check` fail naming the stale files and the fix, until `env-build`/`codegen` is run; and
//! `install-hooks` wires the check into a real git pre-commit hook.

use std::path::Path;
use std::process::Command;

use crate::{Output, read, run, temp_root, tool, xtask_in};

fn check(root: &Path) -> Output {
    run(xtask_in(root).arg("check"))
}

fn assert_fresh(root: &Path, when: &str) {
    let out = check(root);
    assert!(out.ok(), "xtask check should pass {when}: {out}");
    assert!(out.stdout.contains("are fresh"), "{when}: {out}");
}

fn stale_message(file: &str) -> String {
    format!("{file} is stale; run `cargo xtask codegen`")
}

#[test]
fn editing_a_profile_makes_check_fail_until_env_build() {
    let dir = temp_root();
    let root = dir.path();
    assert_fresh(root, "on an untouched copy");

    let profile = root.join("profiles/gpu-mixed.json");
    let text = read(&profile);
    let edited = text.replace(
        "comfyui:2:gpu,openai:4:shared",
        "comfyui:2:gpu,openai:5:shared",
    );
    assert_ne!(
        text, edited,
        "profiles/gpu-mixed.json no longer has the worker spec this test edits"
    );
    std::fs::write(&profile, edited).unwrap();

    let out = check(root);
    assert_eq!(out.code, Some(1), "check must fail on a stale .env: {out}");
    for file in [
        "generated/gpu-mixed/.env",
        "generated/gpu-mixed/ecosystem.config.json",
        "generated/gpu-mixed/kubernetes.yaml",
        "generated/gpu-mixed/stack.yaml",
    ] {
        assert!(
            out.stderr.contains(&stale_message(file)),
            "check does not name {file}: {out}"
        );
    }
    // The short diff shows what changes.
    assert!(
        out.stderr
            .contains("  -WORKER_CONNECTORS='comfyui:2:gpu,openai:4:shared'")
            && out
                .stderr
                .contains("  +WORKER_CONNECTORS='comfyui:2:gpu,openai:5:shared'"),
        "check shows no diff of the .env: {out}"
    );
    for other in ["api-only", "prod-gpu", "dev-full"] {
        assert!(
            !out.stderr.contains(&format!("generated/{other}/")),
            "check blames {other}: {out}"
        );
    }

    let out = run(xtask_in(root).args(["env-build", "gpu-mixed"]));
    assert!(out.ok(), "{out}");
    assert!(
        out.stdout.contains("wrote     generated/gpu-mixed/.env"),
        "{out}"
    );
    assert_fresh(root, "after env-build");
    assert!(read(&root.join("generated/gpu-mixed/.env")).contains("openai:5:shared"));
}

#[test]
fn a_hand_edited_generated_file_is_stale() {
    let dir = temp_root();
    let root = dir.path();
    let file = root.join("generated/prod-gpu/docker-compose.yaml");
    let text = read(&file);
    std::fs::write(&file, text.replace("count: 4", "count: 3")).unwrap();
    let out = check(root);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains(&stale_message("generated/prod-gpu/docker-compose.yaml")),
        "{out}"
    );
    assert!(
        out.stderr.contains("-              count: 3")
            && out.stderr.contains("+              count: 4"),
        "{out}"
    );
    // Windows line endings alone are not drift.
    std::fs::write(&file, text.replace('\n', "\r\n")).unwrap();
    assert_fresh(root, "with CRLF line endings only");
}

#[test]
fn deleting_a_profile_makes_its_generated_folder_stale() {
    let dir = temp_root();
    let root = dir.path();
    std::fs::remove_file(root.join("profiles/api-only.json")).unwrap();
    let out = check(root);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains("generated/api-only/ belongs to no profile; run `cargo xtask codegen`"),
        "{out}"
    );
    let out = run(xtask_in(root).arg("codegen"));
    assert!(out.ok(), "{out}");
    assert!(
        !root.join("generated/api-only").exists(),
        "codegen left generated/api-only"
    );
    assert_fresh(root, "after codegen");
}

#[test]
fn a_stale_schema_is_drift_too() {
    let dir = temp_root();
    let root = dir.path();
    let schema = root.join("schemas/profile.schema.json");
    std::fs::write(&schema, read(&schema).replace("\"title\"", "\"titel\"")).unwrap();
    let out = check(root);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains(&stale_message("schemas/profile.schema.json")),
        "{out}"
    );
}

fn git(dir: &Path) -> Command {
    let mut cmd = Command::new(tool("git", "install git (`apt-get install -y git`)"));
    cmd.current_dir(dir)
        .env("GIT_AUTHOR_NAME", "xtask test")
        .env("GIT_AUTHOR_EMAIL", "xtask@test.invalid")
        .env("GIT_COMMITTER_NAME", "xtask test")
        .env("GIT_COMMITTER_EMAIL", "xtask@test.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null");
    cmd
}

/// `install-hooks` writes an executable pre-commit hook running `cargo xtask check`, and git runs it: a
/// `cargo` stand-in first on `PATH` records its arguments and decides whether the commit goes through.
#[test]
fn install_hooks_wires_the_check_into_git() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    let out = run(git(repo).args(["init", "-q"]));
    assert!(out.ok(), "{out}");

    let out = run(xtask_in(repo).arg("install-hooks"));
    assert!(out.ok(), "{out}");
    let hook = repo.join(".git/hooks/pre-commit");
    let text = read(&hook);
    assert!(text.starts_with("#!"), "the hook has no shebang:\n{text}");
    assert!(
        text.contains("cargo xtask check"),
        "the hook does not run the check:\n{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&hook).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "the hook is not executable ({mode:o})");
    }
    // Installing again is fine.
    let out = run(xtask_in(repo).arg("install-hooks"));
    assert!(out.ok(), "a second install-hooks failed: {out}");

    // git runs the hook; its verdict decides the commit.
    let bin = dir.path().join("fake-bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("cargo-args");
    let fake_cargo = bin.join("cargo");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::fs::write(repo.join("file"), "x\n").unwrap();
    assert!(run(git(repo).args(["add", "file"])).ok());
    for (verdict, commits) in [(1, false), (0, true)] {
        std::fs::write(
            &fake_cargo,
            format!(
                "#!/bin/sh\necho \"$@\" >> '{}'\nexit {verdict}\n",
                log.display()
            ),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&fake_cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let out = run(git(repo)
            .env("PATH", &path)
            .args(["commit", "-q", "-m", "test"]));
        assert_eq!(
            out.ok(),
            commits,
            "cargo exiting {verdict}: the commit went through: {}: {out}",
            out.ok()
        );
    }
    assert_eq!(
        read(&log),
        "xtask check\nxtask check\n",
        "the hook ran something else"
    );

    // Someone else's hook is not overwritten.
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    let out = run(xtask_in(repo).arg("install-hooks"));
    assert!(!out.ok(), "install-hooks replaced a foreign hook: {out}");
    assert!(out.stderr.contains("not ours"), "{out}");
}

/// Outside a git checkout `install-hooks` fails naming the folder and git's own answer, and writes nothing.
#[test]
fn install_hooks_outside_a_git_checkout_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("not-a-repo");
    std::fs::create_dir(&root).unwrap();
    // git must not find a repository above the temporary folder either.
    let out = run(xtask_in(&root)
        .env("GIT_CEILING_DIRECTORIES", dir.path())
        .arg("install-hooks"));
    assert!(!out.ok(), "install-hooks succeeded outside git: {out}");
    assert!(
        out.stderr.contains("is not a git checkout") && out.stderr.contains("not-a-repo"),
        "{out}"
    );
    assert!(
        out.stderr.contains("git rev-parse --git-path hooks"),
        "git's command is not named: {out}"
    );
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "install-hooks wrote into a folder that is no checkout"
    );
}

/// `.pre-commit-hooks.yaml` offers the same check to the pre-commit framework, for every folder whose change
/// can make it fail.
#[test]
fn the_pre_commit_manifest_runs_the_check() {
    let path = crate::root().join(".pre-commit-hooks.yaml");
    let hooks: serde_json::Value =
        serde_yaml::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let [hook] = hooks.as_array().expect("a list of hooks").as_slice() else {
        panic!("expected exactly one hook: {hooks}");
    };
    assert_eq!(hook["id"], "machine-generated-fresh");
    assert_eq!(hook["entry"], "cargo xtask check");
    assert_eq!(hook["language"], "system");
    assert_eq!(hook["pass_filenames"], false);
    let files = hook["files"].as_str().expect("a files pattern");
    for dir in ["profiles", "schemas", "generated", "machine-model", "xtask"] {
        assert!(
            files.starts_with("^(")
                && files.ends_with(")/")
                && files[2..files.len() - 2].split('|').any(|d| d == dir),
            "the files pattern {files:?} does not cover {dir}/"
        );
    }
}
