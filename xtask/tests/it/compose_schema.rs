//! Every generated `docker-compose.yaml` against both vendored Compose schemas (`xtask/tests/vendor/compose-spec`).
//!
//! - `compose-spec.json` (compose-spec, draft-07) and `compose-spec.compose-go.json` (compose-go, the copy
//!   Compose v2 embeds, draft 2020-12), each compiled with its draft pinned and format validation on.
//! - Compose v2 validates the compose-go copy with a custom `duration` format (Go's `time.ParseDuration`), so
//!   that format is registered here with the same grammar ([`is_go_duration`]) instead of being ignored as
//!   unknown. The vendored copy declares no `"format": "duration"` today; the checker is there for the day it
//!   does, and `compose_rules` applies it to every duration the files contain.

use std::path::PathBuf;

use jsonschema::{Draft, Validator};
use serde_json::{Value, json};

use crate::{assert_no_problems, generated, profiles, read, read_json, root};

/// The vendored Compose schemas, inside the repository (`xtask/tests/vendor/compose-spec`, Apache-2.0, with
/// their origin and licence in that folder).
pub fn vendor_schemas() -> PathBuf {
    root().join("xtask/tests/vendor/compose-spec")
}

/// Go's `time.ParseDuration` grammar: `0`, or an optional sign and one or more `<decimal><unit>` groups with
/// units `ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h` (`1h30m`, `1.5s`, `.5s`, `5.s`).
pub fn is_go_duration(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    if s == "0" {
        return true;
    }
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..digits_end];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return false;
        }
        rest = &rest[digits_end..];
        // `ms` is tried before `m`, so `5ms` is five milliseconds, not five minutes and a stray `s`.
        let Some(unit) = ["ns", "us", "µs", "μs", "ms", "s", "m", "h"]
            .into_iter()
            .find(|u| rest.starts_with(u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

/// The two validators, named by their file.
pub fn validators() -> Vec<(&'static str, Validator)> {
    let dir = vendor_schemas();
    let compile = |file: &'static str, draft: Draft| {
        let schema = read_json(&dir.join(file));
        let validator = jsonschema::options()
            .with_draft(draft)
            .should_validate_formats(true)
            .with_format("duration", is_go_duration)
            .build(&schema)
            .unwrap_or_else(|e| panic!("compiling {file}: {e}"));
        (file, validator)
    };
    vec![
        compile("compose-spec.json", Draft::Draft7),
        compile("compose-spec.compose-go.json", Draft::Draft202012),
    ]
}

/// Every violation of `instance` under every validator: `<label>: <schema file>: <instance path>: <message>`.
fn violations(validators: &[(&str, Validator)], label: &str, instance: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (file, validator) in validators {
        for error in validator.iter_errors(instance) {
            let path = error.instance_path().as_str();
            let path = if path.is_empty() { "/" } else { path };
            out.push(format!("{label}: {file}: {path}: {error}"));
        }
    }
    out
}

#[test]
fn every_generated_compose_file_is_valid_against_both_vendored_schemas() {
    let validators = validators();
    let mut problems = Vec::new();
    for profile in profiles() {
        let label = format!("generated/{profile}/docker-compose.yaml");
        let text = read(&generated(&profile).join("docker-compose.yaml"));
        match serde_yaml::from_str::<Value>(&text) {
            Ok(instance) => problems.extend(violations(&validators, &label, &instance)),
            Err(e) => problems.push(format!("{label}: not YAML: {e}")),
        }
    }
    assert_no_problems("the generated compose files", &problems);
}

/// The validators are not vacuous: a file with the mistakes a renderer could make is rejected by both, each
/// mistake reported at its instance path.
#[test]
fn both_schemas_reject_a_broken_compose_file() {
    let broken = json!({
        "version": "3.9",
        "services": {
            "machine": {
                "image": "machine-runtime:x",
                "portz": ["22:22"],
                "deploy": {"resources": {"reservations": {"devices": [
                    {"capabilities": "gpu", "count": 2}
                ]}}},
                "depends_on": {"redis": {"condition": "healthy"}}
            }
        }
    });
    let validators = validators();
    for (file, validator) in &validators {
        let paths: Vec<String> = validator
            .iter_errors(&broken)
            .map(|e| e.instance_path().as_str().to_string())
            .collect();
        for expected in [
            "/services/machine",
            "/services/machine/deploy/resources/reservations/devices/0/capabilities",
            // `depends_on` is a list or a map (`oneOf`), so the error lands on `depends_on` itself.
            "/services/machine/depends_on",
        ] {
            assert!(
                paths.iter().any(|p| p == expected),
                "{file} did not report {expected}; it reported {paths:?}"
            );
        }
    }
}

#[test]
fn go_duration_grammar() {
    for ok in [
        "0",
        "5s",
        "30s",
        "5m",
        "1h30m",
        "1.5s",
        ".5s",
        "5.s",
        "100ms",
        "10us",
        "3µs",
        "2h45m0.5s",
        "-1s",
    ] {
        assert!(is_go_duration(ok), "{ok:?} is a Go duration");
    }
    for bad in [
        "", "5", "s", "5 s", "5sec", "1d", "1.2.3s", ".s", "30s ", "+", "1h-30m",
    ] {
        assert!(!is_go_duration(bad), "{bad:?} is not a Go duration");
    }
}
