//! Entry points of the fuzz targets (`fuzz/`, cargo-fuzz), shared with the corpus replay test
//! (`tests/it/fuzz_corpus.rs`) so the stable toolchain runs every checked-in input through exactly
//! what the fuzzer runs. Each takes arbitrary bytes and must never panic; the checks inside are
//! properties that hold for every input (a normalised spec parses back to itself, ...).

use crate::components::{self, ComponentSet, SecretDecls};
use crate::load::{self, ProfileSource};
use crate::spec::WorkerSpec;

/// Worker spec and plan: the first line is a `WORKER_CONNECTORS` spec, the second (optional) a GPU
/// count. The spec is parsed; a valid one must print to a normal form that parses back to itself;
/// then a profile with that spec and GPU count is checked and planned.
pub fn worker_spec_and_plan(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (spec, rest) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(parsed) = WorkerSpec::parse(spec) {
        let normal = parsed.to_string();
        let again = WorkerSpec::parse(&normal)
            .unwrap_or_else(|e| panic!("normal form {normal:?} of {spec:?} does not parse: {e}"));
        assert_eq!(again.to_string(), normal, "normal form is not stable");
    }
    let gpus = rest.trim().parse::<u32>().unwrap_or(0) % 9;
    let profile = serde_json::json!({
        "components": {},
        "workers": spec,
        "machine": {"gpus": gpus},
    });
    let _ = load::check(&ProfileSource {
        name: "fuzz".into(),
        file: "profiles/fuzz.json".into(),
        text: profile.to_string(),
    });
}

/// The profile loader: the bytes as the text of `profiles/fuzz.json` (invalid UTF-8 included, as
/// [`load::read_utf8`] reads it).
pub fn profile(data: &[u8]) {
    let text = match std::str::from_utf8(data) {
        Ok(text) => text.to_owned(),
        Err(_) => {
            let file =
                std::env::temp_dir().join(format!("machine-fuzz-{}.json", std::process::id()));
            if std::fs::write(&file, data).is_ok() {
                let err = load::read_utf8(&file, "profiles/fuzz.json")
                    .expect_err("invalid UTF-8 must be refused");
                assert!(err.to_string().starts_with("profiles/fuzz.json:"), "{err}");
                let _ = std::fs::remove_file(&file);
            }
            return;
        }
    };
    let _ = load::check(&ProfileSource {
        name: "fuzz".into(),
        file: "profiles/fuzz.json".into(),
        text,
    });
}

/// The components dialect: the bytes as `profiles/components/fuzz.env`, then every section of it
/// resolved alone and all together.
pub fn components(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (set, _diags) = ComponentSet::from_texts(
        "profiles/components",
        [("fuzz", "profiles/components/fuzz.env", text)],
    );
    let Some(file) = set.get("fuzz") else {
        return;
    };
    let sections: Vec<String> = file.section_names().map(str::to_owned).collect();
    let secrets = SecretDecls::new();
    let mut selections: Vec<Vec<components::Selection>> = sections
        .iter()
        .map(|s| vec![components::Selection::new("fuzz", [s.clone()])])
        .collect();
    selections.push(vec![components::Selection::new("fuzz", sections.clone())]);
    for selection in &selections {
        let input = components::ResolveInput {
            secrets: &secrets,
            ..components::ResolveInput::new("fuzz", "profiles/fuzz.json", selection)
        };
        if let Ok(resolved) = components::resolve(&set, &input) {
            for (key, value) in resolved.literals() {
                let _ = components::dotenv_line(key, value);
            }
        }
    }
}
