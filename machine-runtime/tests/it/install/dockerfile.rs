//! The machine image's Dockerfile and .dockerignore, checked structurally (no Docker engine here).
//!
//! A small parser reads instructions (comments dropped, `\` continuations joined) into stages, then the
//! tests check the promises the image makes: a release build stage, a slim runtime stage with what the
//! installer needs, the binary as exec-form entrypoint, the install run at build time, a healthcheck
//! through the binary, and build arguments used only where they are in scope.

use std::path::PathBuf;

#[derive(Debug, Clone)]
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

#[derive(Debug)]
struct Stage {
    base: String,
    name: Option<String>,
    body: Vec<Instruction>,
}

fn repo_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn parse(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        let (content, continues) = match trimmed.strip_suffix('\\') {
            Some(c) => (c.trim_end(), true),
            None => (trimmed, false),
        };
        if !joined.is_empty() {
            joined.push(' ');
        }
        joined.push_str(content);
        if continues {
            pending = Some((start, joined));
        } else {
            let (keyword, args) = joined
                .split_once(char::is_whitespace)
                .unwrap_or((&joined, ""));
            out.push(Instruction {
                line: start,
                keyword: keyword.to_ascii_uppercase(),
                args: args.trim().to_owned(),
            });
        }
    }
    assert!(
        pending.is_none(),
        "the Dockerfile ends inside a `\\` continuation"
    );
    out
}

fn stages(instructions: &[Instruction]) -> (Vec<Instruction>, Vec<Stage>) {
    let mut global = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for ins in instructions {
        if ins.keyword == "FROM" {
            let words: Vec<&str> = ins
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                [_] => None,
                other => panic!(
                    "line {}: FROM {other:?} is not `FROM image [AS name]`",
                    ins.line
                ),
            };
            stages.push(Stage {
                base: words[0].to_owned(),
                name,
                body: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.body.push(ins.clone());
        } else {
            assert_eq!(
                ins.keyword, "ARG",
                "line {}: only ARG may come before the first FROM",
                ins.line
            );
            global.push(ins.clone());
        }
    }
    (global, stages)
}

/// Leading `--name=value` flags and the rest.
fn flags(args: &str) -> (Vec<(String, String)>, String) {
    let mut found = Vec::new();
    let mut rest = args.trim();
    while let Some(flag) = rest.strip_prefix("--") {
        let end = flag.find(char::is_whitespace).unwrap_or(flag.len());
        let (name, value) = flag[..end].split_once('=').unwrap_or((&flag[..end], ""));
        found.push((name.to_owned(), value.to_owned()));
        rest = flag[end..].trim_start();
    }
    (found, rest.to_owned())
}

/// The JSON array of an exec-form instruction.
fn exec_form(ins: &Instruction) -> Vec<String> {
    serde_json::from_str(&ins.args).unwrap_or_else(|e| {
        panic!(
            "line {}: {} must be exec form (a JSON array): {e}",
            ins.line, ins.keyword
        )
    })
}

/// `${NAME}` references in `text`.
fn references(text: &str) -> Vec<String> {
    text.match_indices("${")
        .filter_map(|(i, _)| {
            let rest = &text[i + 2..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
            Some(rest[..end].to_owned())
        })
        .collect()
}

fn declared_name(args: &str) -> String {
    args.split(['=', ' ']).next().unwrap_or_default().to_owned()
}

fn image() -> (Vec<Instruction>, Vec<Stage>) {
    stages(&parse(&repo_file("Dockerfile")))
}

/// A stage's base image with a `${ARG}` base resolved to the global ARG's default (what a plain build uses).
fn default_base(global: &[Instruction], base: &str) -> String {
    let Some(name) = base.strip_prefix("${").and_then(|b| b.strip_suffix('}')) else {
        return base.to_owned();
    };
    global
        .iter()
        .find_map(|i| i.args.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("FROM {base}: the global ARG {name} has no default"))
        .to_owned()
}

fn find<'a>(stage: &'a Stage, keyword: &str) -> Vec<&'a Instruction> {
    stage.body.iter().filter(|i| i.keyword == keyword).collect()
}

#[test]
fn parser_joins_continuations_and_drops_comments() {
    let parsed = parse("# c\nFROM a AS b\nRUN x \\\n  # inner comment\n  && y\nCMD [\"z\"]\n");
    let got: Vec<(usize, &str, &str)> = parsed
        .iter()
        .map(|i| (i.line, i.keyword.as_str(), i.args.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (2, "FROM", "a AS b"),
            (3, "RUN", "x && y"),
            (6, "CMD", "[\"z\"]")
        ]
    );
    assert_eq!(references("a ${B} $C ${D_1:-x}"), ["B", "D_1"]);
}

#[test]
fn builder_stage_compiles_machine_runtime_in_release_mode() {
    let (global, stages) = image();
    assert!(stages.len() >= 2, "a multi-stage build: {stages:#?}");
    let builder = stages
        .iter()
        .find(|s| s.name.as_deref() == Some("builder"))
        .expect("a stage named builder");
    let base = default_base(&global, &builder.base);
    assert!(
        base.starts_with("rust:") && base.ends_with("-bookworm"),
        "{base}"
    );
    let runs: Vec<&str> = find(builder, "RUN")
        .iter()
        .map(|i| i.args.as_str())
        .collect();
    assert!(
        runs.iter()
            .any(|r| r.contains("cargo build --release --locked -p machine-runtime")),
        "the builder must build machine-runtime in release mode: {runs:#?}"
    );
}

#[test]
fn runtime_stage_is_slim_and_carries_what_installs_need() {
    let (global, stages) = image();
    let runtime = stages.last().unwrap();
    assert_eq!(default_base(&global, &runtime.base), "debian:bookworm-slim");
    let apt = find(runtime, "RUN")
        .into_iter()
        .find(|i| i.args.contains("apt-get install"))
        .expect("an apt-get install in the runtime stage");
    // Node.js is Debian's (bookworm: 18, the worker bundle's minimum): no node: image to pull. The layer
    // every profile shares has nothing else: git and Python only where an install needs them.
    for package in ["ca-certificates", "nodejs"] {
        assert!(
            apt.args.split_whitespace().any(|w| w == package),
            "line {}: {package} is not installed",
            apt.line
        );
    }
    for package in ["git", "python3", "python3-venv", "curl"] {
        assert!(
            !apt.args.split_whitespace().any(|w| w == package),
            "line {}: {package} is in the layer every profile shares",
            apt.line
        );
    }
    // The profile's own packages: what the installer says it needs, in the install's layer, curl
    // removed again after the install.
    let install = find(runtime, "RUN")
        .into_iter()
        .find(|i| i.args.contains("machine-runtime install --profile"))
        .expect("the install's RUN");
    for part in [
        "--system-packages",
        "apt-get install -y --no-install-recommends $packages",
        "apt-get purge -y --auto-remove curl",
    ] {
        assert!(
            install.args.contains(part),
            "line {}: the install's RUN lacks {part:?}",
            install.line
        );
    }
    let copies = find(runtime, "COPY");
    let copy_from = |stage: &str, dest: &str| {
        copies.iter().any(|c| {
            let (flags, rest) = flags(&c.args);
            flags.contains(&("from".to_owned(), stage.to_owned())) && rest.ends_with(dest)
        })
    };
    assert!(
        copy_from("builder", "/usr/local/bin/machine-runtime"),
        "the binary is copied from the builder"
    );
    // Every COPY --from names an earlier stage.
    let names: Vec<&str> = stages.iter().filter_map(|s| s.name.as_deref()).collect();
    for stage in &stages {
        for copy in find(stage, "COPY") {
            if let Some((_, from)) = flags(&copy.args).0.into_iter().find(|(k, _)| k == "from") {
                assert!(
                    names.contains(&from.as_str()),
                    "line {}: COPY --from={from} names no stage",
                    copy.line
                );
            }
        }
    }
    let env: String = find(runtime, "ENV")
        .iter()
        .map(|i| i.args.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    for setting in [
        "MACHINE_PROFILE=${PROFILE}",
        "WORKSPACE_DIR=/workspace",
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
    ] {
        assert!(
            env.split_whitespace().any(|w| w == setting),
            "ENV lacks {setting}: {env}"
        );
    }
}

#[test]
fn builds_without_buildkit_and_caches_the_apt_layer_across_profiles() {
    let text = repo_file("Dockerfile");
    // The classic builder (docker-compose 1.29's default) rejects `RUN --mount`; a `# syntax=` line makes
    // BuildKit pull a frontend image from a registry.
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().to_ascii_lowercase().starts_with("# syntax=")),
        "the Dockerfile has a `# syntax=` line"
    );
    let (global, stages) = image();
    for stage in &stages {
        for run in find(stage, "RUN") {
            assert!(
                flags(&run.args).0.is_empty(),
                "line {}: RUN with flags ({}) needs BuildKit",
                run.line,
                run.args
            );
        }
        assert!(
            !default_base(&global, &stage.base).starts_with("node:"),
            "a node: image stage ({})",
            stage.base
        );
    }
    let runtime = stages.last().unwrap();
    let position = |pred: &dyn Fn(&Instruction) -> bool| runtime.body.iter().position(pred);
    let apt = position(&|i| i.keyword == "RUN" && i.args.contains("apt-get install")).unwrap();
    let profile = position(&|i| i.keyword == "ARG" && declared_name(&i.args) == "PROFILE")
        .expect("ARG PROFILE in the runtime stage");
    assert!(
        apt < profile,
        "ARG PROFILE comes before the apt layer, which is then rebuilt for every profile"
    );
}

#[test]
fn services_are_installed_at_build_time_after_the_binary_is_in_place() {
    let (_, stages) = image();
    let runtime = stages.last().unwrap();
    let position = |pred: &dyn Fn(&Instruction) -> bool| runtime.body.iter().position(pred);
    let copy_binary =
        position(&|i| i.keyword == "COPY" && i.args.ends_with("/usr/local/bin/machine-runtime"))
            .unwrap();
    let install = position(&|i| {
        i.keyword == "RUN"
            && i.args
                .contains("machine-runtime install --profile \"${PROFILE}\"")
    })
    .expect("a RUN machine-runtime install --profile \"${PROFILE}\" step");
    assert!(
        copy_binary < install,
        "the install step runs before the binary is copied"
    );
}

/// The simulation service's binary (its own, not a subcommand of PID 1) lies next to machine-runtime, where
/// the runtime starts it from, whichever way the builder stage got the binaries.
#[test]
fn the_simulation_binary_is_copied_next_to_the_runtime() {
    let (_, stages) = image();
    let runtime = stages.last().unwrap();
    let copies: Vec<&str> = find(runtime, "COPY")
        .iter()
        .map(|i| i.args.as_str())
        .filter(|a| a.contains("/usr/local/bin/"))
        .map(|a| a.rsplit(' ').next().unwrap())
        .collect();
    assert!(
        copies.contains(&"/usr/local/bin/machine-runtime")
            && copies.contains(&"/usr/local/bin/machine-simulate"),
        "runtime stage copies {copies:?}"
    );
    let builder = &stages[0];
    let build = find(builder, "RUN")
        .into_iter()
        .find(|i| i.args.contains("MACHINE_RUNTIME_BINARY"))
        .expect("the builder's RUN that places the binaries");
    for placed in [
        "target/release/machine-simulate /out/bin/machine-simulate",
        "\"$simulate\" /out/bin/machine-simulate",
    ] {
        assert!(
            build.args.contains(placed),
            "the builder does not place machine-simulate ({placed}):\n{}",
            build.args
        );
    }
}

#[test]
fn entrypoint_cmd_healthcheck_and_stopsignal_are_exec_form_and_use_the_binary() {
    let (_, stages) = image();
    let runtime = stages.last().unwrap();
    let single = |keyword: &str| {
        let found = find(runtime, keyword);
        assert_eq!(found.len(), 1, "exactly one {keyword} in the runtime stage");
        found[0].clone()
    };
    // Exec form: machine-runtime itself is PID 1 and receives the stop signal, no shell in between.
    assert_eq!(exec_form(&single("ENTRYPOINT")), ["machine-runtime"]);
    let cmd = exec_form(&single("CMD"));
    assert_eq!(cmd.first().map(String::as_str), Some("up"));
    assert!(
        cmd.iter().all(|w| !w.contains('$')),
        "exec form does not expand variables: {cmd:?}"
    );
    assert_eq!(single("STOPSIGNAL").args, "SIGTERM");

    let health = single("HEALTHCHECK");
    let (options, rest) = flags(&health.args);
    let option = |name: &str| {
        options
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        (
            option("interval"),
            option("timeout"),
            option("start-period"),
            option("retries")
        ),
        // The generated compose files' numbers (xtask's DOCKER_HEALTH).
        (Some("1s"), Some("5s"), Some("5m"), Some("30"))
    );
    let rest = rest
        .strip_prefix("CMD")
        .expect("HEALTHCHECK ... CMD")
        .trim();
    let probe = exec_form(&Instruction {
        line: health.line,
        keyword: "HEALTHCHECK CMD".into(),
        args: rest.into(),
    });
    assert_eq!(probe, ["machine-runtime", "health", "--wait", "3"]);
}

#[test]
fn build_arguments_are_used_only_where_they_are_in_scope() {
    let (global, stages) = image();
    let global_args: Vec<String> = global.iter().map(|i| declared_name(&i.args)).collect();
    for stage in &stages {
        // Global ARGs are visible in FROM lines only; inside a stage an ARG or ENV must (re)declare it.
        for name in references(&stage.base) {
            assert!(
                global_args.contains(&name),
                "FROM {} uses ${{{name}}} without a global ARG",
                stage.base
            );
        }
        let mut in_scope: Vec<String> = Vec::new();
        for ins in &stage.body {
            for name in references(&ins.args) {
                assert!(
                    in_scope.contains(&name),
                    "line {}: {} uses ${{{name}}}, which is not declared (ARG/ENV) earlier in this stage",
                    ins.line,
                    ins.keyword
                );
            }
            match ins.keyword.as_str() {
                "ARG" => in_scope.push(declared_name(&ins.args)),
                "ENV" => in_scope.extend(
                    ins.args
                        .split_whitespace()
                        .filter_map(|w| w.split_once('='))
                        .map(|(k, _)| k.to_owned()),
                ),
                _ => {}
            }
        }
    }
}

#[test]
fn dockerignore_keeps_secrets_and_build_outputs_out_but_sources_in() {
    let patterns: Vec<String> = repo_file(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for needed in [".git", "target", "secrets", "**/.env.secret*"] {
        assert!(
            patterns.iter().any(|p| p == needed),
            ".dockerignore lacks {needed}: {patterns:?}"
        );
    }
    // The builder needs the workspace sources, the lock file and the profiles baked in by build.rs.
    for kept in [
        "Cargo.toml",
        "Cargo.lock",
        "machine-model",
        "machine-runtime",
        "profiles",
        "schemas",
        "xtask",
    ] {
        assert!(
            !patterns
                .iter()
                .any(|p| p == kept || p == &format!("{kept}/") || p == "*" || p == "**"),
            ".dockerignore must not exclude {kept}"
        );
    }
}
