//! The generated `.env` files read back by three real readers: dotenvy, `node --env-file`, and docker-compose
//! v1's `env_file`. Each must give exactly the values we meant: the plan's machine variables and the
//! profile's env, and the same set of variables as the file has lines.
//!
//! Tricky values go through the CLI: a temporary profile whose `env` holds them is built with
//! `xtask env-build` (so the test follows whatever quoting the renderer uses) and the readers must give each
//! value back exactly; a value that `.env` files cannot carry identically may instead be refused, naming its
//! key, but never read differently.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::{
    assert_no_problems, compose_command, copy_tree, generated, node, plan_json, profiles, read,
    read_json, root, run, xtask_in,
};

type Vars = BTreeMap<String, String>;

/// A reader: a name and how it reads a file.
type Reader = (&'static str, fn(&Path) -> Result<Vars, String>);

/// dotenvy's reading (without touching this process's environment).
fn dotenvy_reads(file: &Path) -> Result<Vars, String> {
    let iter = dotenvy::from_path_iter(file).map_err(|e| format!("dotenvy: {e}"))?;
    iter.map(|item| item.map_err(|e| format!("dotenvy: {e}")))
        .collect()
}

/// `node --env-file=<file>`'s reading: its whole `process.env`, started with an empty environment.
fn node_reads(file: &Path) -> Result<Vars, String> {
    let out = run(Command::new(node())
        .env_clear()
        .arg(format!("--env-file={}", file.display()))
        .args(["-e", "process.stdout.write(JSON.stringify(process.env))"]));
    if !out.ok() {
        return Err(format!("node --env-file failed: {out}"));
    }
    serde_json::from_str(&out.stdout)
        .map_err(|e| format!("node printed no JSON object ({e}): {out}"))
}

/// docker-compose v1's reading of the file as `env_file: [.env]` (the generated compose file's form), from
/// its normalised `config` output.
fn compose_reads(file: &Path) -> Result<Vars, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::copy(file, dir.path().join(".env")).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.path().join("docker-compose.yaml"),
        "services:\n  m:\n    image: \"busybox\"\n    env_file:\n      - \".env\"\n",
    )
    .map_err(|e| e.to_string())?;
    let out = run(compose_command(dir.path()).args(["-f", "docker-compose.yaml", "config"]));
    if !out.ok() {
        return Err(format!("docker-compose config failed: {out}"));
    }
    let config: Value = serde_yaml::from_str(&out.stdout)
        .map_err(|e| format!("docker-compose printed no YAML ({e}): {out}"))?;
    let env = config["services"]["m"]["environment"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    env.into_iter()
        .map(|(k, v)| match v {
            // `config` escapes `$` as `$$` so its output can be read again.
            Value::String(s) => Ok((k, s.replace("$$", "$"))),
            other => Err(format!("docker-compose read {k} as {other}, not a string")),
        })
        .collect()
}

/// The file's variables as our own oracle reads them: `KEY='value'` lines give `value` literally; other
/// assignment lines give `None` (checked only by the readers agreeing). Comments and blank lines are skipped.
fn lines_of(text: &str) -> Vec<(String, Option<String>)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            let (key, raw) = l.split_once('=').unwrap_or((l, ""));
            let literal = raw
                .strip_prefix('\'')
                .and_then(|r| r.strip_suffix('\''))
                .filter(|inner| !inner.contains('\''))
                .map(str::to_string);
            (key.trim().to_string(), literal)
        })
        .collect()
}

/// Every reader's map must equal `expected` exactly.
fn readers_agree(label: &str, file: &Path, expected: &Vars) -> Vec<String> {
    let mut problems = Vec::new();
    let readers: [Reader; 3] = [
        ("dotenvy", dotenvy_reads),
        ("node --env-file", node_reads),
        ("docker-compose v1 env_file", compose_reads),
    ];
    for (reader, read_with) in readers {
        match read_with(file) {
            Err(e) => problems.push(format!("{label}: {e}")),
            Ok(got) => {
                for (k, v) in expected {
                    match got.get(k) {
                        Some(g) if g == v => {}
                        other => problems.push(format!(
                            "{label}: {reader} reads {k} as {other:?}, meant {v:?}"
                        )),
                    }
                }
                for k in got.keys().filter(|k| !expected.contains_key(*k)) {
                    problems.push(format!(
                        "{label}: {reader} reads a variable {k} the file does not assign"
                    ));
                }
            }
        }
    }
    problems
}

/// The variables a profile's `.env` must carry, from its plan and profile.
fn meant(name: &str) -> Vars {
    let plan = plan_json(name, &[]);
    let profile = read_json(&root().join("profiles").join(format!("{name}.json")));
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let gpus = plan["gpus"].as_u64().expect("the plan's gpus");
    let mut vars: Vars = [
        ("MACHINE_PROFILE", s(&plan["profile"])),
        ("MACHINE_ID", s(&plan["machine_id"])),
        ("WORKER_CONNECTORS", s(&plan["worker_spec"])),
        ("WORKERS", s(&plan["worker_spec"])),
        ("MACHINE_GPU_COUNT", gpus.to_string()),
        ("NUM_GPUS", gpus.to_string()),
        ("MACHINE_HAS_GPU", (gpus > 0).to_string()),
        ("MACHINE_RAM_GB", s(&profile["machine"]["ram_gb"])),
        ("MACHINE_HEALTH_PORT", s(&plan["health_port"])),
        ("WORKSPACE_DIR", s(&plan["workspace"])),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(model) = profile["machine"]["gpu_model"].as_str() {
        vars.insert("MACHINE_GPU_MODEL".into(), model.into());
    }
    for (k, v) in profile["env"].as_object().into_iter().flatten() {
        vars.insert(k.clone(), s(v));
    }
    vars
}

#[test]
fn every_generated_env_file_reads_back_as_meant_in_every_reader() {
    let mut problems = Vec::new();
    for name in profiles() {
        let label = format!("generated/{name}/.env");
        let file = generated(&name).join(".env");
        let text = read(&file);
        let lines = lines_of(&text);
        // The oracle: what the plan and profile mean, then every line of the file (our own reading of the
        // single-quoted form; other forms are left to the readers, which must still agree on them).
        let mut expected = meant(&name);
        for (k, v) in &expected {
            if !lines.iter().any(|(key, _)| key == k) {
                problems.push(format!("{label}: no line assigns {k} (meant {v:?})"));
            }
        }
        for (key, literal) in &lines {
            match (literal, expected.get(key)) {
                (Some(l), Some(m)) if l != m => {
                    problems.push(format!("{label}: {key} is written as {l:?}, meant {m:?}"))
                }
                (Some(l), None) => {
                    expected.insert(key.clone(), l.clone());
                }
                (None, None) => problems.push(format!(
                    "{label}: {key} is not in the KEY='value' form and has no meant value to compare readers to"
                )),
                _ => {}
            }
        }
        problems.extend(readers_agree(&label, &file, &expected));
    }
    assert_no_problems("reading the generated .env files", &problems);
}

/// Values every reader must get back exactly.
const CARRIED: [(&str, &str); 16] = [
    ("T_SPACES", "two words"),
    ("T_PADDED", "  padded  "),
    ("T_DOUBLE_QUOTES", "say \"hi\""),
    ("T_HASH", "a#b"),
    ("T_SPACE_HASH", "a #not-a-comment"),
    ("T_DOLLAR", "$HOME"),
    ("T_DOLLARS", "$$"),
    ("T_DOLLAR_END", "costs 5$"),
    ("T_EQUALS", "a=b=c"),
    ("T_URL", "https://user@example.com/p?a=b&c=d#frag"),
    ("T_UNICODE", "ünïcödé ✓ 日本 🚀"),
    ("T_EMPTY", ""),
    ("T_BACKSLASH", "C:\\path\\nx"),
    ("T_BACKTICKS", "`tick`"),
    ("T_TAB", "tab\tin"),
    ("T_SEMICOLON", "a;b && c | d"),
];

/// Values a `.env` cannot carry identically for every reader: refusing them (naming the key) is allowed,
/// reading them differently is not. docker-compose v1 (python-dotenv) expands `${…}` and unescapes `\\` and
/// `\'` even inside single quotes.
const MAY_REFUSE: [(&str, &str); 8] = [
    ("T_SINGLE_QUOTE", "it's"),
    ("T_NEWLINE", "a\nb"),
    ("T_CARRIAGE_RETURN", "a\rb"),
    ("T_BRACED", "${HOME}"),
    ("T_BRACED_DEFAULT", "${UNSET_X:-fallback}"),
    ("T_DOUBLE_BACKSLASH", "a\\\\b"),
    ("T_TRAILING_BACKSLASH", "C:\\dir\\"),
    ("T_BACKSLASH_QUOTE", "a\\'b"),
];

/// A temporary root with one profile `tricky` (api-only's, with the given env) and the component files.
/// Profile `env` values are templates, so each `$` is written `$$` to mean itself.
fn tricky_root(env: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary root");
    copy_tree(
        &root().join("profiles/components"),
        &dir.path().join("profiles/components"),
    );
    let mut profile = read_json(&root().join("profiles/api-only.json"));
    profile["env"] = env
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.replace('$', "$$"))))
        .collect();
    std::fs::write(
        dir.path().join("profiles/tricky.json"),
        serde_json::to_string_pretty(&profile).expect("json"),
    )
    .expect("writing profiles/tricky.json");
    dir
}

#[test]
fn tricky_values_through_env_build_read_back_exactly() {
    let dir = tricky_root(&CARRIED);
    let out = run(xtask_in(dir.path()).args(["env-build", "tricky"]));
    assert!(
        out.ok(),
        "xtask env-build refused values every reader can carry: {out}"
    );
    let file = dir.path().join("generated/tricky/.env");
    let mut expected = Vars::new();
    for (k, v) in lines_of(&read(&file)) {
        if let Some(v) = v {
            expected.insert(k, v);
        }
    }
    for (k, v) in CARRIED {
        expected.insert(k.to_string(), v.to_string());
    }
    assert_no_problems(
        "tricky values",
        &readers_agree("tricky .env", &file, &expected),
    );
}

#[test]
fn values_no_env_file_can_carry_are_refused_or_read_back_exactly() {
    let mut problems = Vec::new();
    for (key, value) in MAY_REFUSE {
        let dir = tricky_root(&[(key, value)]);
        let out = run(xtask_in(dir.path()).args(["env-build", "tricky"]));
        let file = dir.path().join("generated/tricky/.env");
        if !out.ok() {
            if !out.stderr.contains(key) {
                problems.push(format!(
                    "{key}={value:?}: refused without naming the key: {out}"
                ));
            }
            if file.exists() {
                problems.push(format!("{key}={value:?}: refused, yet a .env was written"));
            }
            continue;
        }
        let mut expected = Vars::new();
        for (k, v) in lines_of(&read(&file)) {
            if let Some(v) = v {
                expected.insert(k, v);
            }
        }
        expected.insert(key.to_string(), value.to_string());
        problems.extend(readers_agree(&format!("{key}={value:?}"), &file, &expected));
    }
    assert_no_problems("values .env files cannot carry", &problems);
}
