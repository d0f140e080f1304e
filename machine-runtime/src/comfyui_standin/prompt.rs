//! Prompts for the ComfyUI stand-in: the nodes it knows (`EmptyImage`, `SaveImage`), checking a prompt the
//! way the fork's `execution.validate_prompt` does (same error types, messages and `node_errors` shape),
//! the order nodes run in, the output cache (a node whose inputs did not change since the last prompt is not
//! run again, as in the fork's classic cache), and running a node.
//!
//! A prompt is ComfyUI's API format: `{"<node id>": {"class_type": "...", "inputs": {...}}, ...}`; an input
//! is a value or a link `["<node id>", <output index>]`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use serde_json::{Map, Value, json};

use super::png;

/// ComfyUI's `MAX_RESOLUTION` (nodes.py), the largest width or height of an image.
pub const MAX_RESOLUTION: i64 = 16_384;
/// Largest image batch an `EmptyImage` may make here, in bytes of float32 pixels (as torch would allocate):
/// beyond it the node fails the way an allocation failure does in the fork.
const MAX_TENSOR_BYTES: u64 = 1 << 30;

/// The type of a node input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InputType {
    /// `INT` with its default, min, max.
    Int(i64, i64, i64),
    /// `STRING` with its default.
    Str(&'static str),
    /// `IMAGE`, only ever linked.
    Image,
}

impl InputType {
    fn name(self) -> &'static str {
        match self {
            InputType::Int(..) => "INT",
            InputType::Str(_) => "STRING",
            InputType::Image => "IMAGE",
        }
    }

    /// The `(type, options)` pair the fork reports as `input_config`.
    fn config(self) -> Value {
        match self {
            InputType::Int(default, min, max) => {
                json!([self.name(), {"default": default, "min": min, "max": max, "step": 1}])
            }
            InputType::Str(default) => json!([self.name(), {"default": default}]),
            InputType::Image => json!([self.name(), {}]),
        }
    }
}

/// A node class the stand-in can run.
struct NodeClass {
    name: &'static str,
    /// Required inputs in declaration order.
    inputs: &'static [(&'static str, InputType)],
    return_types: &'static [&'static str],
    output_node: bool,
}

const NODE_CLASSES: &[NodeClass] = &[
    NodeClass {
        name: "EmptyImage",
        inputs: &[
            ("width", InputType::Int(512, 1, MAX_RESOLUTION)),
            ("height", InputType::Int(512, 1, MAX_RESOLUTION)),
            ("batch_size", InputType::Int(1, 1, 4096)),
            ("color", InputType::Int(0, 0, 0xFF_FFFF)),
        ],
        return_types: &["IMAGE"],
        output_node: false,
    },
    NodeClass {
        name: "SaveImage",
        inputs: &[
            ("images", InputType::Image),
            ("filename_prefix", InputType::Str("ComfyUI")),
        ],
        return_types: &[],
        output_node: true,
    },
];

/// The node classes the stand-in runs, by name (what `/object_info` would list).
pub fn known_classes() -> Vec<&'static str> {
    NODE_CLASSES.iter().map(|c| c.name).collect()
}

fn class(name: &str) -> Option<&'static NodeClass> {
    NODE_CLASSES.iter().find(|c| c.name == name)
}

/// A prompt the fork would queue: the output nodes to run and the (empty or partial) `node_errors`.
#[derive(Debug, Clone, PartialEq)]
pub struct Valid {
    /// Output nodes whose inputs validated, in prompt order.
    pub outputs: Vec<String>,
    /// Errors of outputs that did not validate (the fork still queues the prompt when one output is good).
    pub node_errors: Value,
}

/// A prompt the fork refuses: its `error` object and `node_errors` (an empty list when none).
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// `{"type", "message", "details", "extra_info"}`.
    pub error: Value,
    /// `{"<node id>": {"errors": [...], "dependent_outputs": [...], "class_type": "..."}}`, or `[]`.
    pub node_errors: Value,
}

fn error_object(kind: &str, message: &str, details: &str, extra: Value) -> Value {
    json!({"type": kind, "message": message, "details": details, "extra_info": extra})
}

/// Python's `str()` of a JSON value, as the fork formats values into messages.
fn py_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        other => python_json(other),
    }
}

/// Python's `int()` of a JSON value, with the error text Python gives.
fn py_int(value: &Value) -> Result<i64, String> {
    match value {
        Value::Bool(b) => Ok(i64::from(*b)),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64().and_then(|f| {
                    let t = f.trunc();
                    // Python ints are unbounded; a float beyond i64 is refused here instead.
                    (t.is_finite() && t.abs() < 9.2e18).then_some(t as i64)
                })
            })
            .ok_or_else(|| format!("cannot convert float {n} to integer")),
        Value::String(s) => {
            let cleaned = s.trim().replace('_', "");
            cleaned
                .parse::<i64>()
                .map_err(|_| format!("invalid literal for int() with base 10: '{s}'"))
        }
        Value::Null => Err(
            "int() argument must be a string, a bytes-like object or a real number, not 'NoneType'"
                .to_owned(),
        ),
        Value::Array(_) => Err(
            "int() argument must be a string, a bytes-like object or a real number, not 'list'"
                .to_owned(),
        ),
        Value::Object(_) => Err(
            "int() argument must be a string, a bytes-like object or a real number, not 'dict'"
                .to_owned(),
        ),
    }
}

/// `json.dumps` with Python's defaults (`", "` and `": "` separators, non-ASCII escaped): the text the
/// fork writes into a PNG's `prompt` chunk.
pub fn python_json(value: &Value) -> String {
    fn string(out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    fn walk(out: &mut String, value: &Value) {
        match value {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(&n.to_string()),
            Value::String(s) => string(out, s),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    walk(out, item);
                }
                out.push(']');
            }
            Value::Object(map) => {
                out.push('{');
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    string(out, k);
                    out.push_str(": ");
                    walk(out, v);
                }
                out.push('}');
            }
        }
    }
    let mut out = String::new();
    walk(&mut out, value);
    out
}

/// A link input: exactly a two-item list (the fork's `is_link` also wants a string id and an int index,
/// checked where it matters).
fn as_link(value: &Value) -> Option<&Vec<Value>> {
    value.as_array()
}

/// `validated[id]`: whether the node is valid and its reasons.
type Verdicts = BTreeMap<String, (bool, Vec<Value>)>;

/// What one required input of a node came to.
enum InputCheck {
    /// A reason the node is invalid (one of the fork's error objects).
    Error(Value),
    /// A link to a node that is valid (`true`) or not.
    Linked(bool),
    /// A literal value, converted to the input's type.
    Converted(Value),
}

/// `validate_inputs` of one node; `Err` is an exception the fork would raise (its message).
fn validate_node(
    prompt: &mut Map<String, Value>,
    id: &str,
    verdicts: &mut Verdicts,
) -> Result<bool, String> {
    if let Some((ok, _)) = verdicts.get(id) {
        return Ok(*ok);
    }
    let class_name = prompt[id]["class_type"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let Some(node_class) = class(&class_name) else {
        return Err(format!("'{class_name}'"));
    };
    let mut errors = Vec::new();
    let mut valid = true;
    for &(name, ty) in node_class.inputs {
        let value = prompt[id].get("inputs").and_then(|i| i.get(name)).cloned();
        let Some(value) = value else {
            errors.push(error_object(
                "required_input_missing",
                "Required input is missing",
                name,
                json!({"input_name": name}),
            ));
            continue;
        };
        let check = match as_link(&value) {
            Some(link) => check_link(prompt, verdicts, name, ty, link, &value)?,
            None => convert_input(name, ty, &value),
        };
        match check {
            InputCheck::Error(error) => errors.push(error),
            InputCheck::Linked(ok) => valid &= ok,
            // The fork writes the converted value back into the prompt it queues.
            InputCheck::Converted(converted) => {
                if let Some(inputs) = prompt[id].get_mut("inputs").and_then(Value::as_object_mut) {
                    inputs.insert(name.to_owned(), converted);
                }
            }
        }
    }
    let ok = errors.is_empty() && valid;
    verdicts.insert(id.to_owned(), (ok, errors));
    Ok(ok)
}

/// A linked input (`value`, which is `link`): its shape, the type the linked node returns, then
/// that node's own validation (recorded in `verdicts`). `Err` is an exception the fork would raise.
fn check_link(
    prompt: &mut Map<String, Value>,
    verdicts: &mut Verdicts,
    name: &str,
    ty: InputType,
    link: &[Value],
    value: &Value,
) -> Result<InputCheck, String> {
    let info = ty.config();
    if link.len() != 2 {
        return Ok(InputCheck::Error(error_object(
            "bad_linked_input",
            "Bad linked input, must be a length-2 list of [node_id, slot_index]",
            name,
            json!({"input_name": name, "input_config": info, "received_value": value}),
        )));
    }
    // The fork indexes the prompt and the return types without a guard: a bad link raises.
    let from = link[0].as_str().ok_or_else(|| py_str(&link[0]))?;
    let from_class = prompt
        .get(from)
        .and_then(|n| n.get("class_type"))
        .and_then(Value::as_str)
        .ok_or_else(|| format!("'{from}'"))?;
    let from_class = class(from_class).ok_or_else(|| format!("'{from_class}'"))?;
    let slot = link[1]
        .as_i64()
        .ok_or_else(|| "tuple indices must be integers or slices, not str".to_owned())?;
    let count = i64::try_from(from_class.return_types.len()).unwrap_or(0);
    let index = if slot < 0 { count + slot } else { slot };
    let received = usize::try_from(index)
        .ok()
        .and_then(|i| from_class.return_types.get(i))
        .ok_or_else(|| "tuple index out of range".to_owned())?;
    if *received != ty.name() {
        return Ok(InputCheck::Error(error_object(
            "return_type_mismatch",
            "Return type mismatch between linked nodes",
            &format!(
                "{name}, received_type({received}) mismatch input_type({})",
                ty.name()
            ),
            json!({"input_name": name, "input_config": info, "received_type": received,
                   "linked_node": value}),
        )));
    }
    let from = from.to_owned();
    match validate_node(prompt, &from, verdicts) {
        Ok(ok) => Ok(InputCheck::Linked(ok)),
        Err(exception) => {
            let reasons = vec![error_object(
                "exception_during_inner_validation",
                "Exception when validating inner node",
                &exception,
                json!({"input_name": name, "input_config": info,
                       "exception_message": exception, "exception_type": "KeyError",
                       "traceback": [], "linked_node": value}),
            )];
            verdicts.insert(from, (false, reasons));
            Ok(InputCheck::Linked(false))
        }
    }
}

/// A literal input value converted to the input's type (`"512"` → 512) and checked against its bounds.
fn convert_input(name: &str, ty: InputType, value: &Value) -> InputCheck {
    let info = ty.config();
    let converted = match ty {
        InputType::Int(..) => py_int(value).map(Value::from),
        InputType::Str(_) => Ok(Value::String(py_str(value))),
        InputType::Image => Ok(value.clone()),
    };
    let converted = match converted {
        Ok(v) => v,
        Err(exception) => {
            return InputCheck::Error(error_object(
                "invalid_input_type",
                &format!("Failed to convert an input value to a {} value", ty.name()),
                &format!("{name}, {}, {exception}", py_str(value)),
                json!({"input_name": name, "input_config": info, "received_value": value,
                       "exception_message": exception}),
            ));
        }
    };
    if let (InputType::Int(_, min, max), Some(n)) = (ty, converted.as_i64()) {
        let bound = if n < min {
            Some((
                "value_smaller_than_min",
                format!("Value {n} smaller than min of {min}"),
            ))
        } else if n > max {
            Some((
                "value_bigger_than_max",
                format!("Value {n} bigger than max of {max}"),
            ))
        } else {
            None
        };
        if let Some((kind, message)) = bound {
            return InputCheck::Error(error_object(
                kind,
                &message,
                name,
                json!({"input_name": name, "input_config": info, "received_value": n}),
            ));
        }
    }
    InputCheck::Converted(converted)
}

/// Checks a prompt as the fork's `validate_prompt` does, converting input values in place (`"512"` → 512).
///
/// `Err(Err(message))` is an exception the fork would raise instead of answering (a prompt that is not an
/// object); it logs it and, over the WebSocket, answers nothing.
pub fn validate(prompt: &mut Value) -> Result<Result<Valid, Invalid>, String> {
    let Some(map) = prompt.as_object_mut() else {
        return Err(format!(
            "'{}' object has no attribute 'keys'",
            match prompt {
                Value::Array(_) => "list",
                Value::String(_) => "str",
                Value::Number(_) => "int",
                Value::Bool(_) => "bool",
                _ => "NoneType",
            }
        ));
    };
    let outputs = match output_nodes(map) {
        Ok(outputs) => outputs,
        Err(invalid) => return Ok(Err(*invalid)),
    };
    let mut verdicts = Verdicts::new();
    let mut good = Vec::new();
    let mut failed: Vec<(String, Vec<Value>)> = Vec::new();
    let mut node_errors = Map::new();
    for output in &outputs {
        let (ok, reasons) = match validate_node(map, output, &mut verdicts) {
            Ok(ok) => (ok, verdicts[output].1.clone()),
            Err(exception) => {
                let reasons = vec![error_object(
                    "exception_during_validation",
                    "Exception when validating node",
                    &exception,
                    json!({"exception_type": "KeyError", "traceback": []}),
                )];
                verdicts.insert(output.clone(), (false, reasons.clone()));
                (false, reasons)
            }
        };
        if ok {
            good.push(output.clone());
            continue;
        }
        failed.push((output.clone(), reasons));
        add_node_errors(&mut node_errors, map, &verdicts, output);
    }
    if good.is_empty() {
        let details: Vec<String> = failed
            .iter()
            .flat_map(|(_, reasons)| reasons.iter())
            .map(|r| format!("{}: {}", py_str(&r["message"]), py_str(&r["details"])))
            .collect();
        return Ok(Err(Invalid {
            error: error_object(
                "prompt_outputs_failed_validation",
                "Prompt outputs failed validation",
                &details.join("\n"),
                json!({}),
            ),
            node_errors: Value::Object(node_errors),
        }));
    }
    Ok(Ok(Valid {
        outputs: good,
        node_errors: Value::Object(node_errors),
    }))
}

/// The ids of the prompt's output nodes; every node must name a known `class_type` and there must be
/// at least one output, else the fork's answer for the first problem.
fn output_nodes(map: &Map<String, Value>) -> Result<Vec<String>, Box<Invalid>> {
    let mut outputs = Vec::new();
    for (id, node) in map {
        let Some(class_type) = node.get("class_type") else {
            return Err(Box::new(Invalid {
                error: error_object(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    &format!("Node ID '#{id}'"),
                    json!({}),
                ),
                node_errors: json!([]),
            }));
        };
        let name = py_str(class_type);
        let Some(node_class) = class_type.as_str().and_then(class) else {
            return Err(Box::new(Invalid {
                error: error_object(
                    "invalid_prompt",
                    &format!("Cannot execute because node {name} does not exist."),
                    &format!("Node ID '#{id}'"),
                    json!({}),
                ),
                node_errors: json!([]),
            }));
        };
        if node_class.output_node {
            outputs.push(id.clone());
        }
    }
    if outputs.is_empty() {
        return Err(Box::new(Invalid {
            error: error_object("prompt_no_outputs", "Prompt has no outputs", "", json!({})),
            node_errors: json!([]),
        }));
    }
    Ok(outputs)
}

/// Adds every invalid node with reasons to `node_errors` (once each), with `output` among the outputs
/// that depend on it.
fn add_node_errors(
    node_errors: &mut Map<String, Value>,
    map: &Map<String, Value>,
    verdicts: &Verdicts,
    output: &str,
) {
    for (node_id, (valid, reasons)) in verdicts {
        if *valid || reasons.is_empty() {
            continue;
        }
        let entry = node_errors.entry(node_id.clone()).or_insert_with(|| {
            json!({"errors": reasons, "dependent_outputs": [],
                   "class_type": map[node_id]["class_type"]})
        });
        if let Some(list) = entry["dependent_outputs"].as_array_mut() {
            list.push(Value::String(output.to_owned()));
        }
    }
}

/// What a node produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A batch of single-colour images (`IMAGE`).
    Images {
        /// Pixels across.
        width: u32,
        /// Pixels down.
        height: u32,
        /// Images in the batch.
        batch: u32,
        /// The colour, 8 bits per channel.
        rgb: [u8; 3],
    },
    /// Nothing (an output node such as `SaveImage`).
    None,
}

/// A node that failed: what the fork puts into `execution_error`.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFailure {
    /// The Python exception's message.
    pub message: String,
    /// Its full type name (`Exception`, `RuntimeError`).
    pub kind: String,
    /// `current_inputs`: each input's values as strings.
    pub inputs: Value,
}

/// Where `SaveImage` writes and what it embeds.
#[derive(Debug, Clone)]
pub struct SaveContext<'a> {
    /// The output folder (absolute).
    pub output_dir: &'a Path,
    /// The prompt as queued (embedded as `prompt` unless metadata is off).
    pub prompt: &'a Value,
    /// `extra_data.extra_pnginfo`, each key embedded as its own text chunk.
    pub extra_pnginfo: Option<&'a Value>,
    /// `--disable-metadata`.
    pub disable_metadata: bool,
}

/// One channel of `EmptyImage`'s colour the way the fork turns it into a pixel: `c / 255` stored as
/// float32, times 255 in float32, clipped, truncated to uint8.
fn channel(c: i64) -> u8 {
    let stored = (c as f64 / 255.0) as f32;
    let value = (255.0f32 * stored).clamp(0.0, 255.0);
    value as u8
}

/// `os.path.normpath` of a relative or absolute path, as text.
fn normpath(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// A path made absolute and normalised without touching the file system (`os.path.abspath`).
fn abspath(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(p) => out.push(p),
            _ => {}
        }
    }
    out
}

/// The fork's `%width%`, `%height%`, `%year%` … substitutions in a filename prefix (local time).
fn compute_vars(prefix: &str, width: u32, height: u32) -> String {
    let mut out = prefix
        .replace("%width%", &width.to_string())
        .replace("%height%", &height.to_string());
    if out.contains('%') {
        let now = libc_local_time();
        for (name, value) in [
            ("%year%", now.0.to_string()),
            ("%month%", format!("{:02}", now.1)),
            ("%day%", format!("{:02}", now.2)),
            ("%hour%", format!("{:02}", now.3)),
            ("%minute%", format!("{:02}", now.4)),
            ("%second%", format!("{:02}", now.5)),
        ] {
            out = out.replace(name, &value);
        }
    }
    out
}

/// The local time as (year, month, day, hour, minute, second).
fn libc_local_time() -> (i32, i32, i32, i32, i32, i32) {
    // SAFETY: time(NULL) and localtime_r with a zeroed, owned `tm`; no pointer outlives the call.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        (
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec,
        )
    }
}

/// The counter of the next file for `filename` in `folder`: one more than the largest
/// `<filename>_<counter>_…` there, else 1 (the fork's `get_save_image_path`); creates the folder.
fn next_counter(folder: &Path, filename: &str, prefix_len: usize) -> std::io::Result<u64> {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(folder)?;
            return Ok(1);
        }
        Err(e) => return Err(e),
    };
    let mut best: Option<u64> = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let chars: Vec<char> = name.chars().collect();
        let head: String = chars.iter().take(prefix_len + 1).collect();
        let tail: String = chars.iter().skip(prefix_len + 1).collect();
        let digits = tail
            .split('_')
            .next()
            .unwrap_or("")
            .parse::<u64>()
            .unwrap_or(0);
        if head.ends_with('_') && head[..head.len() - 1] == *filename {
            best = Some(best.map_or(digits, |b| b.max(digits)));
        }
    }
    Ok(best.map_or(1, |b| b + 1))
}

/// `SaveImage`: writes each image of the batch as `<prefix>_<counter:05>_.png` into the output folder (a
/// subfolder when the prefix has one), through a temporary file and a rename; returns the `ui` output
/// `{"images": [{"filename", "subfolder", "type": "output"}]}`.
fn save_images(images: &Output, prefix: &str, ctx: &SaveContext<'_>) -> Result<Value, NodeFailure> {
    let Output::Images {
        width,
        height,
        batch,
        rgb,
    } = *images
    else {
        return Err(failure("images is not an IMAGE", "TypeError", json!({})));
    };
    let inputs = json!({"images": [format!("<IMAGE batch {batch} of {width}x{height}>")],
                        "filename_prefix": [prefix]});
    let prefix = if prefix.contains('%') {
        compute_vars(prefix, width, height)
    } else {
        prefix.to_owned()
    };
    let normal = normpath(&prefix);
    let (subfolder, filename) = match normal.rsplit_once('/') {
        Some((dir, file)) => (dir.to_owned(), file.to_owned()),
        None => (String::new(), normal.clone()),
    };
    let output_dir = abspath(ctx.output_dir);
    let folder = abspath(&output_dir.join(&subfolder));
    if !folder.starts_with(&output_dir) {
        let message = format!(
            "**** ERROR: Saving image outside the output folder is not allowed.\n full_output_folder: {}\n         output_dir: {}",
            folder.display(),
            output_dir.display()
        );
        return Err(failure(&message, "Exception", inputs));
    }
    let prefix_len = prefix.rsplit('/').next().unwrap_or(&prefix).chars().count();
    let io_failure = |e: std::io::Error, what: &Path| {
        failure(
            &format!(
                "[Errno {}] {e}: '{}'",
                e.raw_os_error().unwrap_or(0),
                what.display()
            ),
            "OSError",
            inputs.clone(),
        )
    };
    let mut counter =
        next_counter(&folder, &filename, prefix_len).map_err(|e| io_failure(e, &folder))?;
    let mut texts: Vec<(String, String)> = Vec::new();
    if !ctx.disable_metadata {
        texts.push(("prompt".to_owned(), python_json(ctx.prompt)));
        if let Some(Value::Object(extra)) = ctx.extra_pnginfo {
            for (key, value) in extra {
                texts.push((key.clone(), python_json(value)));
            }
        }
    }
    let texts: Vec<(&str, &str)> = texts
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut results = Vec::new();
    for index in 0..batch {
        let name = format!(
            "{}_{counter:05}_.png",
            filename.replace("%batch_num%", &index.to_string())
        );
        let path = folder.join(&name);
        let temp = folder.join(format!(".{name}.tmp"));
        let written = std::fs::File::create(&temp).and_then(|file| {
            let mut out = std::io::BufWriter::new(file);
            png::write_solid_rgb(&mut out, width, height, rgb, &texts)?;
            let file = out
                .into_inner()
                .map_err(std::io::IntoInnerError::into_error)?;
            file.sync_all()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&temp, &path)) {
            let _ = std::fs::remove_file(&temp);
            return Err(io_failure(e, &path));
        }
        results.push(json!({"filename": name, "subfolder": subfolder, "type": "output"}));
        counter += 1;
    }
    Ok(json!({"images": results}))
}

fn failure(message: &str, kind: &str, inputs: Value) -> NodeFailure {
    NodeFailure {
        message: message.to_owned(),
        kind: kind.to_owned(),
        inputs,
    }
}

/// Runs one node whose inputs are resolved (`linked` holds the outputs of the nodes it links to); returns
/// its output and its `ui` output (`None` when the node shows nothing).
pub fn run_node(
    node: &Value,
    linked: &HashMap<String, Output>,
    ctx: &SaveContext<'_>,
) -> Result<(Output, Option<Value>), NodeFailure> {
    let inputs = node.get("inputs").cloned().unwrap_or_else(|| json!({}));
    let int = |name: &str| inputs.get(name).and_then(Value::as_i64).unwrap_or(0);
    match node["class_type"].as_str().unwrap_or_default() {
        "EmptyImage" => {
            let (width, height, batch, color) =
                (int("width"), int("height"), int("batch_size"), int("color"));
            let bytes = [width, height, batch, 3, 4]
                .iter()
                .try_fold(1u64, |acc, n| {
                    acc.checked_mul(u64::try_from(*n).unwrap_or(0))
                })
                .unwrap_or(u64::MAX);
            if bytes > MAX_TENSOR_BYTES {
                return Err(failure(
                    &format!(
                        "[enforce fail at alloc_cpu.cpp:114] data. DefaultCPUAllocator: not enough memory: you tried to allocate {bytes} bytes. (the machine-comfyui stand-in allows {MAX_TENSOR_BYTES})"
                    ),
                    "RuntimeError",
                    json!({"width": [width], "height": [height], "batch_size": [batch], "color": [color]}),
                ));
            }
            let u = |n: i64| u32::try_from(n).unwrap_or(1);
            Ok((
                Output::Images {
                    width: u(width),
                    height: u(height),
                    batch: u(batch),
                    rgb: [
                        channel(color >> 16 & 0xFF),
                        channel(color >> 8 & 0xFF),
                        channel(color & 0xFF),
                    ],
                },
                None,
            ))
        }
        "SaveImage" => {
            let from = inputs["images"][0].as_str().unwrap_or_default();
            let images = linked.get(from).cloned().unwrap_or(Output::None);
            let prefix = inputs["filename_prefix"].as_str().unwrap_or("ComfyUI");
            let ui = save_images(&images, prefix, ctx)?;
            Ok((Output::None, Some(ui)))
        }
        other => Err(failure(&format!("'{other}'"), "KeyError", json!({}))),
    }
}

/// The order the fork's execution list runs the nodes `outputs` need: dependencies first; among the nodes
/// ready, output nodes first, then prompt order. Nodes in `cached` are not run, and their inputs are not
/// needed; cached outputs are still visited (the fork reports them as `executed`).
pub fn execution_order(
    prompt: &Map<String, Value>,
    outputs: &[String],
    cached: &BTreeSet<String>,
) -> Vec<String> {
    let mut needed: Vec<String> = Vec::new();
    let mut stack: Vec<String> = outputs.to_vec();
    while let Some(id) = stack.pop() {
        if needed.contains(&id) {
            continue;
        }
        needed.push(id.clone());
        if cached.contains(&id) {
            continue;
        }
        for dep in links_of(prompt, &id) {
            if !cached.contains(&dep) {
                stack.push(dep);
            }
        }
    }
    let order_in_prompt = |id: &String| prompt.keys().position(|k| k == id).unwrap_or(usize::MAX);
    needed.sort_by_key(order_in_prompt);
    let mut done: Vec<String> = Vec::new();
    while done.len() < needed.len() {
        let ready: Vec<&String> = needed
            .iter()
            .filter(|id| !done.contains(id))
            .filter(|id| {
                cached.contains(*id)
                    || links_of(prompt, id)
                        .iter()
                        .all(|d| done.contains(d) || cached.contains(d) || !needed.contains(d))
            })
            .collect();
        let Some(next) = ready
            .iter()
            .find(|id| outputs.contains(id))
            .or_else(|| ready.first())
            .map(|id| (*id).clone())
        else {
            // A cycle: the fork refuses it at run time; stop here, the rest never runs.
            break;
        };
        done.push(next);
    }
    done
}

/// The node ids `id` links to, in input-name order.
pub fn links_of(prompt: &Map<String, Value>, id: &str) -> Vec<String> {
    let mut inputs: Vec<(&String, &Value)> = prompt
        .get(id)
        .and_then(|n| n.get("inputs"))
        .and_then(Value::as_object)
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    inputs.sort_by(|a, b| a.0.cmp(b.0));
    inputs
        .into_iter()
        .filter_map(|(_, v)| v.as_array())
        .filter(|l| l.len() == 2)
        .filter_map(|l| l[0].as_str().map(str::to_owned))
        .collect()
}

/// The cache key of a node: its class, its inputs (links replaced by the linked node's place among its
/// ancestors) and the same for every ancestor, as the fork's `CacheKeySetInputSignature` builds it.
pub fn signature(prompt: &Map<String, Value>, id: &str) -> String {
    let mut ancestors: Vec<String> = Vec::new();
    let mut order: HashMap<String, usize> = HashMap::new();
    fn ancestry(
        prompt: &Map<String, Value>,
        id: &str,
        ancestors: &mut Vec<String>,
        order: &mut HashMap<String, usize>,
    ) {
        for dep in links_of(prompt, id) {
            if !order.contains_key(&dep) {
                ancestors.push(dep.clone());
                order.insert(dep.clone(), ancestors.len() - 1);
                ancestry(prompt, &dep, ancestors, order);
            }
        }
    }
    ancestry(prompt, id, &mut ancestors, &mut order);
    let immediate = |node_id: &str| -> Value {
        let Some(node) = prompt.get(node_id) else {
            return json!(["missing"]);
        };
        let mut sig = vec![node["class_type"].clone()];
        let mut inputs: Vec<(&String, &Value)> = node
            .get("inputs")
            .and_then(Value::as_object)
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        inputs.sort_by(|a, b| a.0.cmp(b.0));
        for (key, value) in inputs {
            let link = value
                .as_array()
                .filter(|l| l.len() == 2)
                .and_then(|l| l[0].as_str().map(|from| (from, l[1].clone())));
            match link {
                Some((from, socket)) => {
                    sig.push(json!([key, ["ANCESTOR", order.get(from), socket]]));
                }
                None => sig.push(json!([key, value])),
            }
        }
        Value::Array(sig)
    };
    let mut all = vec![immediate(id)];
    all.extend(ancestors.iter().map(|a| immediate(a)));
    Value::Array(all).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workflow(width: Value, prefix: &str) -> Value {
        json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": 4, "batch_size": 1, "color": 0xFF8000}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
        })
    }

    #[test]
    fn a_good_prompt_validates_and_its_values_are_converted() {
        let mut prompt = workflow(json!("8"), "out");
        let valid = validate(&mut prompt).unwrap().unwrap();
        assert_eq!(valid.outputs, ["2"]);
        assert_eq!(valid.node_errors, json!({}));
        assert_eq!(prompt["1"]["inputs"]["width"], 8);
    }

    #[test]
    fn unknown_classes_and_missing_outputs_are_refused_as_the_fork_does() {
        let mut prompt = json!({"1": {"class_type": "KSampler", "inputs": {}}});
        let invalid = validate(&mut prompt).unwrap().unwrap_err();
        assert_eq!(
            invalid.error,
            json!({"type": "invalid_prompt", "message": "Cannot execute because node KSampler does not exist.",
                   "details": "Node ID '#1'", "extra_info": {}})
        );
        assert_eq!(invalid.node_errors, json!([]));
        let mut prompt = json!({"1": {"inputs": {}}});
        let invalid = validate(&mut prompt).unwrap().unwrap_err();
        assert_eq!(
            invalid.error["message"],
            "Cannot execute because a node is missing the class_type property."
        );
        let mut prompt = json!({"1": {"class_type": "EmptyImage", "inputs": {}}});
        let invalid = validate(&mut prompt).unwrap().unwrap_err();
        assert_eq!(invalid.error["type"], "prompt_no_outputs");
        assert!(validate(&mut json!([1])).is_err());
    }

    #[test]
    fn input_errors_name_the_node_and_its_output() {
        let mut prompt = workflow(json!(0), "out");
        prompt["1"]["inputs"]
            .as_object_mut()
            .unwrap()
            .remove("height");
        let invalid = validate(&mut prompt).unwrap().unwrap_err();
        assert_eq!(invalid.error["type"], "prompt_outputs_failed_validation");
        let errors = &invalid.node_errors["1"]["errors"];
        assert_eq!(errors[0]["type"], "value_smaller_than_min");
        assert_eq!(errors[0]["message"], "Value 0 smaller than min of 1");
        assert_eq!(errors[1]["type"], "required_input_missing");
        assert_eq!(errors[1]["details"], "height");
        assert_eq!(invalid.node_errors["1"]["dependent_outputs"], json!(["2"]));
        assert_eq!(invalid.node_errors["1"]["class_type"], "EmptyImage");
        assert!(invalid.node_errors.get("2").is_none());

        let mut prompt = workflow(json!("wide"), "out");
        let invalid = validate(&mut prompt).unwrap().unwrap_err();
        assert_eq!(
            invalid.node_errors["1"]["errors"][0]["details"],
            "width, wide, invalid literal for int() with base 10: 'wide'"
        );
        let mut prompt = workflow(json!(8), "out");
        prompt["2"]["inputs"]["images"] = json!(["9", 0]);
        let invalid = validate(&mut prompt).unwrap().unwrap_err();
        assert_eq!(
            invalid.node_errors["2"]["errors"][0]["type"],
            "exception_during_validation"
        );
    }

    #[test]
    fn the_order_runs_dependencies_first_and_skips_what_is_cached() {
        let prompt = workflow(json!(8), "out");
        let map = prompt.as_object().unwrap();
        let none = BTreeSet::new();
        assert_eq!(execution_order(map, &["2".into()], &none), ["1", "2"]);
        let cached = BTreeSet::from(["2".to_owned()]);
        assert_eq!(execution_order(map, &["2".into()], &cached), ["2"]);
        let other = workflow(json!(9), "out");
        assert_ne!(
            signature(map, "2"),
            signature(other.as_object().unwrap(), "2")
        );
        let renamed = json!({"7": map["1"], "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "out"}}});
        assert_eq!(
            signature(map, "2"),
            signature(renamed.as_object().unwrap(), "8")
        );
    }

    #[test]
    fn save_image_numbers_files_like_the_fork_and_stays_in_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("shot_00007_.png"), "").unwrap();
        std::fs::write(dir.path().join("shots_00020_.png"), "").unwrap();
        let prompt = json!({});
        let ctx = SaveContext {
            output_dir: dir.path(),
            prompt: &prompt,
            extra_pnginfo: None,
            disable_metadata: false,
        };
        let images = Output::Images {
            width: 2,
            height: 2,
            batch: 2,
            rgb: [1, 2, 3],
        };
        let ui = save_images(&images, "shot", &ctx).unwrap();
        assert_eq!(
            ui,
            json!({"images": [{"filename": "shot_00008_.png", "subfolder": "", "type": "output"},
                              {"filename": "shot_00009_.png", "subfolder": "", "type": "output"}]})
        );
        let ui = save_images(&images, "sub/dir/x_%width%", &ctx).unwrap();
        assert_eq!(ui["images"][0]["filename"], "x_2_00001_.png");
        assert_eq!(ui["images"][0]["subfolder"], "sub/dir");
        assert!(dir.path().join("sub/dir/x_2_00002_.png").is_file());
        let escape = save_images(&images, "../out", &ctx).unwrap_err();
        assert_eq!(escape.kind, "Exception");
        assert!(
            escape
                .message
                .contains("Saving image outside the output folder is not allowed")
        );
    }

    #[test]
    fn colours_become_pixels_as_in_float32_and_json_is_pythons() {
        assert_eq!([channel(0), channel(0x80), channel(0xFF)], [0, 128, 255]);
        assert_eq!(
            python_json(&json!({"a": [1, "é"], "b": null})),
            "{\"a\": [1, \"\\u00e9\"], \"b\": null}"
        );
    }
}
