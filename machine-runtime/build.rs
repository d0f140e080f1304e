//! Validates every `profiles/*.json` (against `schemas/profile.schema.json`, draft-07, and through the
//! model: shape, worker spec, plan, conditions) and bakes them into typed constants in
//! `OUT_DIR/profiles.rs`, included by `src/profiles.rs`.
//!
//! Every problem in every profile is collected first; the build then fails once, with one
//! `cargo::error=profiles/x.json:LINE:COL: /pointer: what is wrong; allowed: …` line per problem.
//! `MACHINE_PROFILES_DIR` replaces the profiles directory (the broken-profile test uses it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use machine_model::load::{self, Diagnostic, ProfileSource};
use serde_json::Value;

/// The environment variable that replaces `<workspace>/profiles`.
const PROFILES_DIR_ENV: &str = "MACHINE_PROFILES_DIR";

fn main() {
    match run() {
        Ok(()) => {}
        Err(problems) => {
            for problem in &problems {
                // One line per problem: Cargo reads build-script output line by line.
                println!("cargo::error={}", one_line(problem));
            }
        }
    }
}

fn run() -> Result<(), Vec<String>> {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .ok_or_else(|| {
            vec![format!(
                "{} has no parent directory",
                manifest_dir.display()
            )]
        })?
        .to_path_buf();
    println!("cargo::rerun-if-env-changed={PROFILES_DIR_ENV}");
    let (dir, shown_dir) = match std::env::var_os(PROFILES_DIR_ENV) {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            let shown = dir.display().to_string();
            (dir, shown)
        }
        _ => (root.join("profiles"), "profiles".to_string()),
    };
    let schema_path = root.join("schemas").join("profile.schema.json");
    println!("cargo::rerun-if-changed={}", dir.display());
    println!("cargo::rerun-if-changed={}", schema_path.display());

    let sources = load::read_dir(&dir, &shown_dir).map_err(|e| {
        vec![format!(
            "{shown_dir}: cannot read the profiles directory ({e}); create it or point {PROFILES_DIR_ENV} at one"
        )]
    })?;
    for source in &sources {
        println!(
            "cargo::rerun-if-changed={}",
            dir.join(format!("{}.json", source.name)).display()
        );
    }
    if sources.is_empty() {
        return Err(vec![format!(
            "{shown_dir}: no *.json profiles found; add at least one (e.g. copy profiles/gpu-mixed.json)"
        )]);
    }

    let schema = Schema::load(&schema_path)?;
    let mut problems = Vec::new();
    let mut baked = Vec::new();
    for source in &sources {
        let schema_diags = schema.check(source);
        match load::check(source) {
            Ok((profile, plan)) if schema_diags.is_empty() => baked.push((source, profile, plan)),
            result => problems.extend(
                merge(source, schema_diags, with_spec(source, result.err()))
                    .iter()
                    .map(ToString::to_string),
            ),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    let code = generate(&baked);
    let out = PathBuf::from(env("OUT_DIR")?).join("profiles.rs");
    write_if_changed(&out, &code)
        .map_err(|e| vec![format!("cannot write {}: {e}", out.display())])?;
    Ok(())
}

fn env(name: &str) -> Result<String, Vec<String>> {
    std::env::var(name).map_err(|e| vec![format!("environment variable {name}: {e}")])
}

fn one_line(s: &str) -> String {
    s.replace("\r\n", "; ").replace('\n', "; ")
}

fn write_if_changed(path: &Path, contents: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    std::fs::write(path, contents)
}

// ---------------------------------------------------------------------------------------------
// Merging the schema's and the model's findings.

/// The prefixes of serde's own shape errors; the schema reports the same problems with a pointer and
/// what is allowed. Any other serde message is one of the model's (e.g. a component listed twice).
const SERDE_SHAPE_PREFIXES: &[&str] = &[
    "unknown field",
    "missing field",
    "invalid type",
    "invalid value",
    "unknown variant",
    "invalid length",
];

/// One list per profile, in document order: the schema's findings, minus those the model says more
/// precisely (same pointer), plus the model's findings, minus serde shape errors inside a value the
/// schema already reported.
fn merge(
    source: &ProfileSource,
    schema_diags: Vec<Located>,
    model_diags: Vec<Diagnostic>,
) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::new();
    let model_pointers: Vec<&str> = model_diags
        .iter()
        .filter(|d| !d.pointer.is_empty())
        .map(|d| d.pointer.as_str())
        .collect();
    for located in &schema_diags {
        if !model_pointers.contains(&located.diag.pointer.as_str()) {
            out.push(located.diag.clone());
        }
    }
    for diag in model_diags {
        let serde_shape = diag.pointer.is_empty()
            && SERDE_SHAPE_PREFIXES
                .iter()
                .any(|p| diag.message.starts_with(p));
        if serde_shape {
            let at = offset_of(&source.text, diag.line, diag.column);
            if schema_diags
                .iter()
                .any(|l| l.span.0 <= at && at <= l.span.1)
            {
                continue;
            }
        }
        out.push(diag);
    }
    out.sort_by_key(|d| (d.line, d.column));
    out.dedup_by(|a, b| a.to_string() == b.to_string());
    out
}

/// The model's findings, plus the worker spec's when the model stopped before checking it (serde
/// gives up at the first shape error, but a typo in `workers` is worth reporting in the same run).
fn with_spec(source: &ProfileSource, model_diags: Option<Vec<Diagnostic>>) -> Vec<Diagnostic> {
    let mut diags = model_diags.unwrap_or_default();
    if diags.iter().any(|d| d.pointer == "/workers") {
        return diags;
    }
    let Ok(value) = serde_json::from_str::<Value>(&source.text) else {
        return diags;
    };
    if let Some(Err(errors)) = value
        .get("workers")
        .and_then(Value::as_str)
        .map(machine_model::WorkerSpec::parse)
    {
        let (line, column) = load::locate(&source.text, "/workers");
        diags.extend(errors.0.iter().map(|e| Diagnostic {
            file: source.file.clone(),
            line,
            column,
            pointer: "/workers".to_string(),
            message: e.to_string(),
        }));
    }
    diags
}

/// A schema finding and the byte span of the value it is about.
struct Located {
    diag: Diagnostic,
    span: (usize, usize),
}

/// The byte offset of a 1-based line and (character) column.
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            return offset
                + l.char_indices()
                    .nth(column.saturating_sub(1))
                    .map_or(l.len(), |(o, _)| o);
        }
        offset += l.len();
    }
    text.len()
}

/// The byte span of the value at `pointer` (the whole text when it cannot be found).
fn span_of(text: &str, pointer: &str) -> (usize, usize) {
    let (line, column) = load::locate(text, pointer);
    let start = offset_of(text, line, column);
    let rest = &text[start..];
    let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
    match values.next() {
        Some(Ok(_)) => (start, start + values.byte_offset()),
        _ => (0, text.len()),
    }
}

// ---------------------------------------------------------------------------------------------
// The JSON Schema.

struct Schema {
    document: Value,
    validator: jsonschema::Validator,
    /// The schema file as shown to people.
    shown: String,
}

impl Schema {
    fn load(path: &Path) -> Result<Schema, Vec<String>> {
        let shown = "schemas/profile.schema.json".to_string();
        let fix = "run `cargo xtask codegen` to regenerate it";
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![format!(
                "{shown}: cannot read the profile schema ({e}); {fix}"
            )]
        })?;
        let document: Value = serde_json::from_str(&text).map_err(|e| {
            vec![format!(
                "{shown}:{}:{}: the profile schema is not JSON ({e}); {fix}",
                e.line(),
                e.column()
            )]
        })?;
        let validator = jsonschema::draft7::new(&document).map_err(|e| {
            vec![format!(
                "{shown}: the profile schema is not a valid draft-07 schema ({e}); {fix}"
            )]
        })?;
        Ok(Schema {
            document,
            validator,
            shown,
        })
    }

    /// Every schema violation of one profile, located. Nothing when the text is not JSON (the model's
    /// parser reports that, with its position).
    fn check(&self, source: &ProfileSource) -> Vec<Located> {
        let Ok(instance) = serde_json::from_str::<Value>(&source.text) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for error in self.validator.iter_errors(&instance) {
            let pointer = error.instance_path().as_str().to_string();
            let node = self.node_of(&error);
            for (pointer, message) in self.explain(&error, &pointer, node) {
                let (line, column) = load::locate(&source.text, &pointer);
                let span = span_of(&source.text, error.instance_path().as_str());
                out.push(Located {
                    diag: Diagnostic {
                        file: source.file.clone(),
                        line,
                        column,
                        pointer,
                        message,
                    },
                    span,
                });
            }
        }
        out
    }

    /// The subschema holding the keyword that failed (`…/minimum` → the subschema with `minimum`).
    fn node_of(&self, error: &jsonschema::ValidationError<'_>) -> Option<&Value> {
        let location = error.absolute_keyword_location()?;
        let fragment = location.fragment()?.as_str();
        let fragment = percent_decode(fragment);
        let parent = match fragment.rfind('/') {
            Some(i) => &fragment[..i],
            None => "",
        };
        self.document.pointer(parent)
    }

    /// What is wrong and what is allowed, per pointer (one error may name several unknown fields).
    fn explain(
        &self,
        error: &jsonschema::ValidationError<'_>,
        pointer: &str,
        node: Option<&Value>,
    ) -> Vec<(String, String)> {
        use jsonschema::error::ValidationErrorKind as K;
        let allowed = match node {
            Some(node) => self.describe(node, 0),
            None => format!("see {}", self.shown),
        };
        let instance = error.instance();
        let message = match error.kind() {
            K::AdditionalProperties { unexpected } => {
                let known: Vec<&str> = node
                    .and_then(|n| n.get("properties"))
                    .and_then(Value::as_object)
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                return unexpected
                    .iter()
                    .map(|field| {
                        let hint =
                            machine_model::suggest::did_you_mean(field, known.iter().copied())
                                .map(|s| format!(" (did you mean \"{s}\"?)"))
                                .unwrap_or_default();
                        (
                            format!("{pointer}/{}", escape_pointer(field)),
                            format!(
                                "unknown field \"{field}\"{hint}; allowed: {}",
                                if known.is_empty() {
                                    "no fields".to_string()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        )
                    })
                    .collect();
            }
            K::Required { property } => {
                format!("missing required field {property}; allowed: {allowed}")
            }
            K::Type { .. } => format!(
                "wrong type: {instance} is {}; allowed: {allowed}",
                kind_of(instance)
            ),
            K::Minimum { limit } | K::ExclusiveMinimum { limit } => {
                format!("{instance} is below the minimum {limit}; allowed: {allowed}")
            }
            K::Maximum { limit } | K::ExclusiveMaximum { limit } => {
                format!("{instance} is above the maximum {limit}; allowed: {allowed}")
            }
            K::Pattern { .. } => format!("{instance} has the wrong form; allowed: {allowed}"),
            K::Enum { .. } | K::Constant { .. } => {
                format!("{instance} is not one of the allowed values; allowed: {allowed}")
            }
            K::AnyOf { .. } | K::OneOfNotValid { .. } | K::OneOfMultipleValid { .. } => {
                format!("{instance} matches none of the allowed forms; allowed: {allowed}")
            }
            K::PropertyNames { error: inner } => {
                let allowed = node
                    .and_then(|n| n.get("propertyNames"))
                    .map_or(allowed, |n| self.describe(n, 0));
                let key = inner.instance();
                let at = match key.as_str() {
                    Some(k) => format!("{pointer}/{}", escape_pointer(k)),
                    None => pointer.to_string(),
                };
                return vec![(at, format!("key {key} is invalid; allowed: keys {allowed}"))];
            }
            _ => format!("{error}; allowed: {allowed}"),
        };
        vec![(pointer.to_string(), message)]
    }

    /// What a subschema allows, in words (`an integer from 0 to 64`, `one of "no", "always"`).
    fn describe(&self, node: &Value, depth: usize) -> String {
        if depth > 6 {
            return format!("see {}", self.shown);
        }
        if let Some(target) = node.get("$ref").and_then(Value::as_str) {
            let target = percent_decode(target.trim_start_matches('#'));
            return match self.document.pointer(&target) {
                Some(t) => self.describe(t, depth + 1),
                None => format!("see {}", self.shown),
            };
        }
        if let Some(c) = node.get("const") {
            return c.to_string();
        }
        if let Some(options) = node.get("enum").and_then(Value::as_array) {
            return one_of(options.iter().map(ToString::to_string).collect());
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            if let Some(branches) = node.get(key).and_then(Value::as_array) {
                let parts: Vec<String> = branches
                    .iter()
                    .map(|b| self.describe(b, depth + 1))
                    .collect();
                if key == "allOf" {
                    return parts.join(" and ");
                }
                // A list of constants reads best as one list.
                if branches.iter().all(|b| b.get("const").is_some()) {
                    return one_of(parts);
                }
                return parts.join(", or ");
            }
        }
        let types: Vec<&str> = match node.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let nullable = types.contains(&"null") && types.len() > 1;
        let main = types.iter().find(|t| **t != "null").copied();
        let mut text = match main {
            Some("integer") | Some("number") => {
                let noun = if main == Some("integer") {
                    "an integer"
                } else {
                    "a number"
                };
                let min = node.get("minimum").map(ToString::to_string);
                let max = node.get("maximum").map(ToString::to_string);
                match (min, max) {
                    (Some(a), Some(b)) => format!("{noun} from {a} to {b}"),
                    (Some(a), None) => format!("{noun} of at least {a}"),
                    (None, Some(b)) => format!("{noun} of at most {b}"),
                    (None, None) => noun.to_string(),
                }
            }
            Some("string") => match node.get("pattern").and_then(Value::as_str) {
                Some(p) => format!("a string matching {p}"),
                None => "a string".to_string(),
            },
            Some("boolean") => "true or false".to_string(),
            Some("array") => match node.get("items") {
                Some(items) => match self.describe(items, depth + 1).as_str() {
                    "a string" => "a list of strings".to_string(),
                    "an integer" => "a list of integers".to_string(),
                    other => format!("a list, each item {other}"),
                },
                None => "a list".to_string(),
            },
            Some("object") => self.describe_object(node, depth),
            Some(other) => other.to_string(),
            None if types.contains(&"null") => "null".to_string(),
            None if node.get("pattern").is_some() => {
                format!("matching {}", node["pattern"].as_str().unwrap_or_default())
            }
            None => format!("see {}", self.shown),
        };
        if nullable {
            text.push_str(", or null");
        }
        text
    }

    fn describe_object(&self, node: &Value, depth: usize) -> String {
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            let required: Vec<&str> = node
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut text = format!(
                "an object with fields {}",
                props.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            if !required.is_empty() {
                let _ = write!(text, " (required: {})", required.join(", "));
            }
            return text;
        }
        match node.get("additionalProperties") {
            Some(values @ Value::Object(_)) => {
                let keys = node
                    .get("propertyNames")
                    .and_then(|p| p.get("pattern"))
                    .and_then(Value::as_str)
                    .map(|p| format!(" with keys matching {p}"))
                    .unwrap_or_default();
                format!(
                    "an object{keys} whose values are {}",
                    self.describe(values, depth + 1)
                )
            }
            _ => "an object".to_string(),
        }
    }
}

fn one_of(options: Vec<String>) -> String {
    format!("one of {}", options.join(", "))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Decodes `%XX` escapes of a URI fragment (the schema's keys are ASCII, but `$schema` is not a
/// plain identifier and may come back encoded).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if bytes[i] == b'%'
            && let Some(Ok(b)) = hex.map(|h| u8::from_str_radix(h, 16))
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Code generation.

fn generate(baked: &[(&ProfileSource, machine_model::Profile, machine_model::Plan)]) -> String {
    let mut code = String::new();
    code.push_str(
        "// @generated by machine-runtime/build.rs from profiles/*.json — do not edit.\n\n",
    );
    let mut names = Vec::new();
    for (source, profile, plan) in baked {
        let ident = const_name(&source.name);
        let m = &profile.machine;
        let _ = write!(
            code,
            "#[doc = {description:?}]\n\
             pub const {ident}: BakedProfile = BakedProfile {{\n    \
             name: {name:?},\n    \
             description: {description:?},\n    \
             workers: ::machine_model::worker_spec!({workers:?}),\n    \
             gpus: {gpus},\n    \
             ram_gb: {ram_gb},\n    \
             gpu_model: {gpu_model},\n    \
             allow_fewer_gpus: {allow_fewer_gpus},\n    \
             health_port: {health_port},\n    \
             machine_id: {machine_id:?},\n    \
             json: {json:?},\n\
             }};\n\n",
            description = profile.description,
            name = source.name,
            workers = profile.workers,
            gpus = m.gpus,
            ram_gb = m.ram_gb,
            gpu_model = match &m.gpu_model {
                Some(g) => format!("Some({g:?})"),
                None => "None".to_string(),
            },
            allow_fewer_gpus = m.allow_fewer_gpus,
            health_port = m.health_port,
            machine_id = plan.machine_id,
            json = source.text,
        );
        names.push(ident);
    }
    code.push_str("/// Every baked profile, sorted by name (usable in `const` contexts).\n");
    code.push_str("pub const PROFILES: &[&BakedProfile] = &[\n");
    for ident in &names {
        let _ = writeln!(code, "    &{ident},");
    }
    code.push_str("];\n\n");
    code
}

/// `gpu-mixed` → `GPU_MIXED` (profile names are checked: lowercase letters, digits, '-').
fn const_name(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}
