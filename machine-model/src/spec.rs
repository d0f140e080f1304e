//! The worker spec grammar `connector:count:binding[,…]`: a run-time parser reporting every problem, and a
//! `const fn` checker behind [`worker_spec!`](crate::worker_spec) so a spec embedded in Rust fails to compile.
//!
//! Grammar (whitespace around items and fields is allowed and ignored):
//!
//! ```text
//! spec    = item ( "," item )*
//! item    = connector ":" count [ ":" binding ]
//! count   = positive integer | "auto"
//! binding = "gpu" | "cpu" | "shared"      (must be one the connector allows; default: the connector's)
//! ```
//!
//! `auto` means one worker per planned GPU for a gpu binding, else one. A connector may appear only once.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalog::{self, Binding};

/// How many workers an item asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Count {
    /// An explicit positive number of workers.
    Fixed(u32),
    /// One per planned GPU for gpu-bound workers, else one.
    Auto,
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Count::Fixed(n) => write!(f, "{n}"),
            Count::Auto => f.write_str("auto"),
        }
    }
}

/// One `connector:count:binding` item of a worker spec, validated against the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecItem {
    /// The connector's catalog name.
    pub connector: &'static str,
    /// How many workers.
    pub count: Count,
    /// The resource binding (explicit, or the connector's default).
    pub binding: Binding,
}

/// A parsed, validated worker spec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkerSpec {
    /// The items in the order written (an item under an alias is its connector's, counts added up).
    pub items: Vec<SpecItem>,
    /// The aliases the spec used ([`catalog::ALIASES`]), once each, in the order written.
    pub aliases: Vec<&'static catalog::ConnectorAlias>,
}

impl fmt::Display for WorkerSpec {
    /// The normalised form: every field explicit, no whitespace.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{}:{}", item.connector, item.count, item.binding)?;
        }
        Ok(())
    }
}

/// One problem in a worker spec, naming the item and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("worker spec{}: {message}", item_location(*.item, .text, *.column))]
pub struct SpecError {
    /// 1-based position of the item in the comma-separated list (0 for the whole spec).
    pub item: usize,
    /// 1-based character column where the offending text starts.
    pub column: usize,
    /// The item's text as written (trimmed).
    pub text: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// ` item 2 "openai:x" (column 10)`, or nothing for the whole spec (item 0).
fn item_location(item: usize, text: &str, column: usize) -> String {
    if item == 0 {
        String::new()
    } else {
        format!(" item {item} \"{text}\" (column {column})")
    }
}

/// All problems of one spec, in order; shown one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", crate::diag::lines(.0))]
pub struct SpecErrors(pub Vec<SpecError>);

impl std::str::FromStr for WorkerSpec {
    type Err = SpecErrors;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkerSpec::parse(s)
    }
}

impl WorkerSpec {
    /// Parses and validates a spec, reporting every problem of every item.
    pub fn parse(input: &str) -> Result<WorkerSpec, SpecErrors> {
        if input.trim().is_empty() {
            return Err(SpecErrors(vec![empty_spec_error()]));
        }
        let mut parser = SpecParser::default();
        for item in raw_items(input) {
            parser.item(&item);
        }
        parser.finish()
    }
}

/// The one error of a spec that is empty or only whitespace.
fn empty_spec_error() -> SpecError {
    SpecError {
        item: 0,
        column: 1,
        text: String::new(),
        message: format!(
            "is empty; expected connector:count[:binding], e.g. \"comfyui:2:gpu,openai:4:shared\" (connectors: {})",
            catalog::connector_names().join(", ")
        ),
    }
}

/// One comma-separated item as written.
struct RawItem<'a> {
    /// 1-based position in the list.
    position: usize,
    /// 1-based character column of its first non-blank character in the input.
    column: usize,
    /// The item's text, trimmed.
    text: &'a str,
}

impl RawItem<'_> {
    /// A problem of this item, starting at `column` of the input.
    fn error(&self, column: usize, message: String) -> SpecError {
        SpecError {
            item: self.position,
            column,
            text: self.text.to_string(),
            message,
        }
    }
}

/// The comma-separated items of `input`, with their positions and columns.
fn raw_items(input: &str) -> Vec<RawItem<'_>> {
    let mut offset = 0usize;
    let mut items = Vec::new();
    for (index, raw) in input.split(',').enumerate() {
        let lead = raw.len() - raw.trim_start().len();
        let column = input[..offset + lead].chars().count() + 1;
        offset += raw.len() + 1;
        items.push(RawItem {
            position: index + 1,
            column,
            text: raw.trim(),
        });
    }
    items
}

/// The input column of each `:`-separated field of an item starting at `column`.
fn field_columns(fields: &[&str], column: usize) -> Vec<usize> {
    let mut field_columns = Vec::with_capacity(fields.len());
    let mut c = column;
    for f in fields {
        let lead = f.len() - f.trim_start().len();
        field_columns.push(c + f[..lead].chars().count());
        c += f.chars().count() + 1;
    }
    field_columns
}

/// What one item says once its fields are read: the connector (when known), count and binding (when valid).
struct ItemFields<'a> {
    /// The connector's name as written (maybe an alias).
    written: &'a str,
    /// Whether `written` is an alias.
    aliased: bool,
    /// The connector's catalog entry.
    entry: &'static catalog::ConnectorEntry,
    /// The count, unless it was wrong.
    count: Option<Count>,
    /// The binding (written or the connector's default), unless it was wrong.
    binding: Option<Binding>,
}

/// The state of one [`WorkerSpec::parse`] run: the items so far and every problem found.
#[derive(Default)]
struct SpecParser {
    errors: Vec<SpecError>,
    items: Vec<SpecItem>,
    /// The 1-based input position of each entry of `items` (empty or unknown items are not in `items`).
    item_positions: Vec<usize>,
    /// Whether each entry of `items` came (partly) from an alias: such items merge instead of repeating.
    item_aliased: Vec<bool>,
    aliases: Vec<&'static catalog::ConnectorAlias>,
}

impl SpecParser {
    /// Reads one item: checks its fields, then adds it to the spec (or merges it into an earlier one).
    fn item(&mut self, item: &RawItem<'_>) {
        if item.text.is_empty() {
            self.errors.push(item.error(
                item.column,
                "is empty; remove the extra comma or write connector:count[:binding]".into(),
            ));
            return;
        }
        let fields: Vec<&str> = item.text.split(':').collect();
        let field_columns = field_columns(&fields, item.column);
        if fields.len() < 2 || fields.len() > 3 {
            self.errors.push(item.error(
                item.column,
                format!(
                    "has {} field{}; expected connector:count[:binding] (binding one of gpu, cpu, shared)",
                    fields.len(),
                    if fields.len() == 1 { "" } else { "s" }
                ),
            ));
            return;
        }
        let written = fields[0].trim();
        let alias = catalog::alias(written);
        let name = alias.map_or(written, |a| a.connector);
        if let Some(a) = alias
            && !self.aliases.contains(&a)
        {
            self.aliases.push(a);
        }
        let entry = self.connector(item, name, field_columns[0]);
        let count = match parse_count(fields[1].trim()) {
            Ok(c) => Some(c),
            Err(m) => {
                self.errors.push(item.error(field_columns[1], m));
                None
            }
        };
        let written_binding = fields.get(2).map(|b| (b.trim(), field_columns[2]));
        let binding = self.binding(item, written_binding, entry);
        if let Some(entry) = entry {
            let fields = ItemFields {
                written,
                aliased: alias.is_some(),
                entry,
                count,
                binding,
            };
            self.place(item, &fields, &field_columns);
        }
    }

    /// The catalog entry of connector `name`, or `None` with an error saying it is refused or unknown.
    fn connector(
        &mut self,
        item: &RawItem<'_>,
        name: &str,
        column: usize,
    ) -> Option<&'static catalog::ConnectorEntry> {
        let entry = catalog::connector(name);
        if let Some(r) = catalog::refused(name) {
            self.errors.push(item.error(
                column,
                format!("connector \"{name}\" is refused: {}", r.reason),
            ));
        } else if entry.is_none() {
            let known = catalog::connector_names();
            let hint = match crate::suggest::did_you_mean(name, known.iter().copied()) {
                Some(s) => format!("; did you mean \"{s}\"?"),
                None => String::new(),
            };
            self.errors.push(item.error(
                column,
                format!(
                    "unknown connector \"{name}\"{hint} (known: {})",
                    known.join(", ")
                ),
            ));
        }
        entry
    }

    /// The item's binding: the one written (text and column), checked against the connector, or the
    /// connector's default; `None` with an error when the written one is unknown or not allowed.
    fn binding(
        &mut self,
        item: &RawItem<'_>,
        written: Option<(&str, usize)>,
        entry: Option<&'static catalog::ConnectorEntry>,
    ) -> Option<Binding> {
        let Some((b, column)) = written else {
            return entry.map(|e| e.default_binding);
        };
        match Binding::from_name(b) {
            None => {
                self.errors.push(item.error(
                    column,
                    format!("unknown binding \"{b}\"; allowed: gpu, cpu, shared"),
                ));
                None
            }
            Some(binding) => match entry {
                Some(e) if !e.bindings.contains(&binding) => {
                    self.errors.push(item.error(
                        column,
                        format!(
                            "connector \"{}\" cannot use binding \"{binding}\"; allowed: {}",
                            e.name,
                            e.bindings.iter().map(|b| b.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                    None
                }
                _ => Some(binding),
            },
        }
    }

    /// Adds an item of a known connector: merged into an earlier item of the same connector when either
    /// came from an alias, refused as a repeat otherwise, else appended (even with a wrong count or
    /// binding, so that a later repeat is still found).
    fn place(&mut self, item: &RawItem<'_>, fields: &ItemFields<'_>, field_columns: &[usize]) {
        let e = fields.entry;
        if let Some(first) = self.items.iter().position(|i| i.connector == e.name) {
            if fields.aliased || self.item_aliased[first] {
                self.merge_aliased(item, first, fields, field_columns);
            } else {
                self.errors.push(item.error(
                    field_columns[0],
                    format!(
                        "connector \"{}\" appears again (first as item {}); give each connector once with the total count",
                        e.name,
                        self.item_positions[first]
                    ),
                ));
            }
            return;
        }
        self.item_positions.push(item.position);
        self.item_aliased.push(fields.aliased);
        if let (Some(count), Some(binding)) = (fields.count, fields.binding) {
            self.items.push(SpecItem {
                connector: e.name,
                count,
                binding,
            });
        } else {
            // Keep the connector for duplicate detection even when another field is wrong.
            self.items.push(SpecItem {
                connector: e.name,
                count: Count::Auto,
                binding: e.default_binding,
            });
        }
    }

    /// Adds the count of an item to the earlier item `first` of the same connector, one of them written
    /// under an alias; an error when their bindings differ or a count is `auto`.
    fn merge_aliased(
        &mut self,
        item: &RawItem<'_>,
        first: usize,
        fields: &ItemFields<'_>,
        field_columns: &[usize],
    ) {
        let (written, name) = (fields.written, fields.entry.name);
        // The seed writes `comfyui:2:gpu,comfyui-websocket:2:gpu`: one worker type, counts added.
        let first_item = self.items[first].clone();
        let first_position = self.item_positions[first];
        match (first_item.count, fields.count, fields.binding) {
            (Count::Fixed(a), Some(Count::Fixed(b)), Some(binding))
                if binding == first_item.binding =>
            {
                self.items[first].count = Count::Fixed(a.saturating_add(b).min(MAX_COUNT));
            }
            (_, Some(_), Some(binding)) if binding != first_item.binding => {
                self.errors.push(item.error(
                    field_columns[0],
                    format!(
                        "\"{written}\" plans \"{name}\" workers like item {first_position}, with another binding ({binding}, there {}); give them one binding",
                        first_item.binding
                    ),
                ));
            }
            (_, Some(_), Some(_)) => self.errors.push(item.error(
                field_columns[1],
                format!(
                    "\"{written}\" plans \"{name}\" workers like item {first_position}; counts add up only when both are numbers, not \"auto\"",
                ),
            )),
            _ => {}
        }
        self.item_aliased[first] = true;
    }

    /// The spec, or every problem found.
    fn finish(self) -> Result<WorkerSpec, SpecErrors> {
        if self.errors.is_empty() {
            Ok(WorkerSpec {
                items: self.items,
                aliases: self.aliases,
            })
        } else {
            Err(SpecErrors(self.errors))
        }
    }
}

fn parse_count(text: &str) -> Result<Count, String> {
    if text == "auto" {
        return Ok(Count::Auto);
    }
    if text.is_empty() {
        return Err("count is missing; expected a positive integer or \"auto\"".into());
    }
    if let Some(rest) = text.strip_prefix('-')
        && !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!(
            "count {text} is negative; expected a positive integer or \"auto\""
        ));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "count \"{text}\" is not a number; expected a positive integer or \"auto\""
        ));
    }
    match text.parse::<u32>() {
        Ok(0) => Err("count is 0; expected a positive integer or \"auto\" (remove the item to run no such workers)".into()),
        Ok(n) if n > MAX_COUNT => Err(format!("count {n} is too large; at most {MAX_COUNT} workers per connector")),
        Ok(n) => Ok(Count::Fixed(n)),
        Err(_) => Err(format!("count {text} is too large; at most {MAX_COUNT} workers per connector")),
    }
}

/// The largest count one item may ask for; far above any real machine, low enough to keep plans small.
pub(crate) const MAX_COUNT: u32 = 100_000;

// ---------------------------------------------------------------------------------------------
// Compile-time checking.

/// Checks a spec in a `const` context; the error is a fixed message per kind of mistake.
///
/// [`WorkerSpec::parse`] gives the precise, positioned messages; this exists so that a spec written
/// in Rust source fails to compile (see [`worker_spec!`](crate::worker_spec)).
pub const fn check_const(spec: &str) -> Result<(), &'static str> {
    let b = spec.as_bytes();
    if b.is_empty() {
        return Err("worker spec is empty; expected connector:count[:binding]");
    }
    let mut seen = SeenConnectors::new();
    let mut start = 0;
    while start <= b.len() {
        let mut end = start;
        while end < b.len() && b[end] != b',' {
            end += 1;
        }
        if let Err(message) = check_item_const(b, start, end, &mut seen) {
            return Err(message);
        }
        start = end + 1;
    }
    Ok(())
}

/// Checks the item `b[start..end]` of a spec; `seen` holds the connectors of the items before it and
/// gets this item's.
const fn check_item_const(
    b: &[u8],
    start: usize,
    end: usize,
    seen: &mut SeenConnectors,
) -> Result<(), &'static str> {
    let (fields, n) = match item_fields_const(b, start, end) {
        Ok(fields) => fields,
        Err(message) => return Err(message),
    };
    let (found, aliased) = match connector_const(b, fields[0]) {
        Ok(found) => found,
        Err(message) => return Err(message),
    };
    let is_auto = bytes_eq(b, fields[1].0, fields[1].1, b"auto");
    if let Err(message) = seen.add(found, aliased, is_auto) {
        return Err(message);
    }
    if let Err(message) = count_const(b, fields[1]) {
        return Err(message);
    }
    if n == 3 {
        binding_const(b, fields[2], found)
    } else {
        Ok(())
    }
}

/// The `(start, end)` byte ranges of an item's fields (connector, count, binding), as many as it has.
type FieldRanges = [(usize, usize); 3];

/// The `:`-separated fields of the item `b[start..end]`, each trimmed, as `(start, end)` byte ranges,
/// with how many there are (2 or 3); an error for an empty item or a wrong number of fields.
const fn item_fields_const(
    b: &[u8],
    start: usize,
    end: usize,
) -> Result<(FieldRanges, usize), &'static str> {
    let mut fields: FieldRanges = [(0usize, 0usize); 3];
    let mut n = 0;
    let mut fs = start;
    let mut i = start;
    while i <= end {
        if i == end || b[i] == b':' {
            if n == 3 {
                return Err(
                    "worker spec item has too many fields; expected connector:count[:binding]",
                );
            }
            fields[n] = trim(b, fs, i);
            n += 1;
            fs = i + 1;
        }
        i += 1;
    }
    if n == 1 && fields[0].0 == fields[0].1 {
        return Err("worker spec has an empty item; remove the extra comma");
    }
    if n < 2 {
        return Err("worker spec item is missing its count; expected connector:count[:binding]");
    }
    Ok((fields, n))
}

/// The index in [`catalog::CONNECTORS`] of the connector named by `b[cs..ce]` (an alias names its
/// connector) and whether it was written as an alias; an error for a refused or unknown name.
const fn connector_const(
    b: &[u8],
    (cs, ce): (usize, usize),
) -> Result<(usize, bool), &'static str> {
    let mut written = (b, cs, ce);
    let mut aliased = false;
    let mut a = 0;
    while a < catalog::ALIASES.len() {
        if bytes_eq(b, cs, ce, catalog::ALIASES[a].name.as_bytes()) {
            let target = catalog::ALIASES[a].connector.as_bytes();
            written = (target, 0, target.len());
            aliased = true;
        }
        a += 1;
    }
    let mut found = usize::MAX;
    let mut k = 0;
    while k < catalog::CONNECTORS.len() {
        if bytes_eq(
            written.0,
            written.1,
            written.2,
            catalog::CONNECTORS[k].name.as_bytes(),
        ) {
            found = k;
        }
        k += 1;
    }
    if found == usize::MAX {
        let mut r = 0;
        while r < catalog::REFUSED.len() {
            if bytes_eq(b, cs, ce, catalog::REFUSED[r].name.as_bytes()) {
                return Err(REFUSED_CONNECTOR_MESSAGE);
            }
            r += 1;
        }
        return Err(UNKNOWN_CONNECTOR_MESSAGE);
    }
    Ok((found, aliased))
}

/// The connectors the const checker has seen so far in a spec, once each, in the order written.
struct SeenConnectors {
    /// Index in [`catalog::CONNECTORS`] of each (the first `len` entries are used).
    connector: [usize; catalog::CONNECTORS.len()],
    /// Whether the connector at the same position was written (once) under an alias.
    aliased: [bool; catalog::CONNECTORS.len()],
    /// Whether its count was `auto` (counts under an alias add up, so they must be numbers).
    auto: [bool; catalog::CONNECTORS.len()],
    /// How many are used.
    len: usize,
}

impl SeenConnectors {
    const fn new() -> Self {
        SeenConnectors {
            connector: [usize::MAX; catalog::CONNECTORS.len()],
            aliased: [false; catalog::CONNECTORS.len()],
            auto: [false; catalog::CONNECTORS.len()],
            len: 0,
        }
    }

    /// Notes connector `found` of one item: under an alias the counts add up (both must be numbers);
    /// without one, a connector seen before is an error.
    const fn add(
        &mut self,
        found: usize,
        aliased: bool,
        is_auto: bool,
    ) -> Result<(), &'static str> {
        let mut s = 0;
        let mut again = false;
        while s < self.len {
            if self.connector[s] == found {
                // Under an alias the counts add up; else it repeats.
                if !aliased && !self.aliased[s] {
                    return Err("worker spec names a connector twice; give each connector once");
                }
                if is_auto || self.auto[s] {
                    return Err(
                        "worker spec counts of a connector and its alias add up only when both are numbers",
                    );
                }
                self.aliased[s] = true;
                again = true;
            }
            s += 1;
        }
        if !again {
            self.connector[self.len] = found;
            self.aliased[self.len] = aliased;
            self.auto[self.len] = is_auto;
            self.len += 1;
        }
        Ok(())
    }
}

/// Checks the count field `b[ns..ne]`: `auto` or an integer from 1 to [`MAX_COUNT`].
const fn count_const(b: &[u8], (ns, ne): (usize, usize)) -> Result<(), &'static str> {
    if bytes_eq(b, ns, ne, b"auto") {
        return Ok(());
    }
    if ns == ne {
        return Err("worker spec count is missing; expected a positive integer or \"auto\"");
    }
    let mut value: u64 = 0;
    let mut j = ns;
    while j < ne {
        if !b[j].is_ascii_digit() {
            return Err("worker spec count is not a positive integer or \"auto\"");
        }
        value = value * 10 + (b[j] - b'0') as u64;
        if value > MAX_COUNT as u64 {
            return Err("worker spec count is too large");
        }
        j += 1;
    }
    if value == 0 {
        return Err("worker spec count is 0; expected a positive integer or \"auto\"");
    }
    Ok(())
}

/// Checks the binding field `b[bs..be]`: one of gpu, cpu, shared, and one that connector `found` allows.
const fn binding_const(
    b: &[u8],
    (bs, be): (usize, usize),
    found: usize,
) -> Result<(), &'static str> {
    let binding = if bytes_eq(b, bs, be, b"gpu") {
        Binding::Gpu
    } else if bytes_eq(b, bs, be, b"cpu") {
        Binding::Cpu
    } else if bytes_eq(b, bs, be, b"shared") {
        Binding::Shared
    } else {
        return Err("worker spec binding is not one of gpu, cpu, shared");
    };
    let allowed = catalog::CONNECTORS[found].bindings;
    let mut ok = false;
    let mut a = 0;
    while a < allowed.len() {
        if allowed[a] as u8 == binding as u8 {
            ok = true;
        }
        a += 1;
    }
    if !ok {
        return Err(
            "worker spec binding is not allowed for this connector (see its catalog entry)",
        );
    }
    Ok(())
}

/// The const checker's message for an unknown connector; lists the catalog (a test keeps it true).
pub(crate) const UNKNOWN_CONNECTOR_MESSAGE: &str = "worker spec names an unknown connector; known: comfyui, comfyui-remote, emprops-app, simulation-websocket, openai, openai-response, gemini, ollama, mock, playwright";

/// The const checker's message for a refused connector (`replicate`, `a1111`, ...); the run-time
/// parser gives the reason of each.
pub(crate) const REFUSED_CONNECTOR_MESSAGE: &str = "worker spec names a refused connector (replicate, simulation-http, a1111, simulation); see machine_model::catalog::REFUSED for why";

const fn trim(b: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while s < e && b[s].is_ascii_whitespace() {
        s += 1;
    }
    while e > s && b[e - 1].is_ascii_whitespace() {
        e -= 1;
    }
    (s, e)
}

const fn bytes_eq(b: &[u8], s: usize, e: usize, other: &[u8]) -> bool {
    if e - s != other.len() {
        return false;
    }
    let mut i = 0;
    while i < other.len() {
        if b[s + i] != other[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A worker spec checked at compile time; expands to the `&'static str`.
///
/// ```
/// let spec = machine_model::worker_spec!("comfyui:2:gpu,openai:4:shared");
/// assert_eq!(machine_model::spec::WorkerSpec::parse(spec).unwrap().items.len(), 2);
/// ```
#[macro_export]
macro_rules! worker_spec {
    ($spec:literal) => {{
        // A `const` item rather than an inline `const { }` block: rustc evaluates items in
        // `cargo check` and rust-analyzer too, inline blocks only when their function is compiled.
        const SPEC: &str = match $crate::spec::check_const($spec) {
            Ok(()) => $spec,
            Err(message) => panic!("{}", message),
        };
        SPEC
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let actual = match WorkerSpec::parse(input) {
            Ok(spec) => format!("ok {spec}"),
            Err(e) => e.to_string(),
        };
        assert_eq!(actual, expected, "input: {input:?}");
        // The const checker agrees on validity.
        assert_eq!(
            check_const(input).is_ok(),
            expected.starts_with("ok "),
            "const check of {input:?}"
        );
    }

    #[test]
    fn valid_specs_normalise() {
        check(
            "comfyui:2:gpu,openai:4:shared,simulation-websocket:1:cpu",
            "ok comfyui:2:gpu,openai:4:shared,simulation-websocket:1:cpu",
        );
        check(
            " comfyui : 2 , openai:auto ",
            "ok comfyui:2:gpu,openai:auto:shared",
        );
        check(
            "simulation-websocket:auto:cpu",
            "ok simulation-websocket:auto:cpu",
        );
    }

    #[test]
    fn empty_spec_and_items() {
        check(
            "",
            "worker spec: is empty; expected connector:count[:binding], e.g. \"comfyui:2:gpu,openai:4:shared\" (connectors: comfyui, comfyui-remote, emprops-app, simulation-websocket, openai, openai-response, gemini, ollama, mock, playwright)",
        );
        check(
            "comfyui:1,,openai:1",
            "worker spec item 2 \"\" (column 11): is empty; remove the extra comma or write connector:count[:binding]",
        );
    }

    #[test]
    fn counts() {
        check(
            "comfyui:0",
            "worker spec item 1 \"comfyui:0\" (column 9): count is 0; expected a positive integer or \"auto\" (remove the item to run no such workers)",
        );
        check(
            "comfyui:-1",
            "worker spec item 1 \"comfyui:-1\" (column 9): count -1 is negative; expected a positive integer or \"auto\"",
        );
        check(
            "comfyui:abc",
            "worker spec item 1 \"comfyui:abc\" (column 9): count \"abc\" is not a number; expected a positive integer or \"auto\"",
        );
        check(
            "comfyui:2.5",
            "worker spec item 1 \"comfyui:2.5\" (column 9): count \"2.5\" is not a number; expected a positive integer or \"auto\"",
        );
        check(
            "comfyui:",
            "worker spec item 1 \"comfyui:\" (column 9): count is missing; expected a positive integer or \"auto\"",
        );
        check(
            "comfyui:100001",
            "worker spec item 1 \"comfyui:100001\" (column 9): count 100001 is too large; at most 100000 workers per connector",
        );
    }

    #[test]
    fn unknown_connector_suggests() {
        check(
            "comfyu:1",
            "worker spec item 1 \"comfyu:1\" (column 1): unknown connector \"comfyu\"; did you mean \"comfyui\"? (known: comfyui, comfyui-remote, emprops-app, simulation-websocket, openai, openai-response, gemini, ollama, mock, playwright)",
        );
        check(
            "ComfyUI:1",
            "worker spec item 1 \"ComfyUI:1\" (column 1): unknown connector \"ComfyUI\"; did you mean \"comfyui\"? (known: comfyui, comfyui-remote, emprops-app, simulation-websocket, openai, openai-response, gemini, ollama, mock, playwright)",
        );
        check(
            "zzz:1",
            "worker spec item 1 \"zzz:1\" (column 1): unknown connector \"zzz\" (known: comfyui, comfyui-remote, emprops-app, simulation-websocket, openai, openai-response, gemini, ollama, mock, playwright)",
        );
    }

    #[test]
    fn refused_connectors_say_why() {
        check(
            "openai:1,replicate:2",
            "worker spec item 2 \"replicate:2\" (column 10): connector \"replicate\" is refused: the worker bundle has no such type (its service mapping has no \"replicate\" worker)",
        );
        check(
            "simulation:4:gpu",
            "worker spec item 1 \"simulation:4:gpu\" (column 1): connector \"simulation\" is refused: the worker's type is \"simulation-websocket\" (it takes jobs with service_required simulation)",
        );
        assert_eq!(
            check_const("simulation-http:1"),
            Err(REFUSED_CONNECTOR_MESSAGE)
        );
        for r in catalog::REFUSED {
            assert!(REFUSED_CONNECTOR_MESSAGE.contains(r.name), "{}", r.name);
        }
    }

    #[test]
    fn the_seeds_names_plan_as_written() {
        // comfyui-websocket is the worker's comfyui type: alone it plans comfyui workers, beside comfyui
        // the counts add up; the alias is kept for the plan to say so.
        check("comfyui-websocket:2:gpu", "ok comfyui:2:gpu");
        check("comfyui:2:gpu,comfyui-websocket:2:gpu", "ok comfyui:4:gpu");
        check(
            "comfyui-websocket:1,openai:6:shared,comfyui:2",
            "ok comfyui:3:gpu,openai:6:shared",
        );
        let spec = WorkerSpec::parse("comfyui:2:gpu,comfyui-websocket:2:gpu").unwrap();
        assert_eq!(spec.aliases, [&catalog::ALIASES[0]]);
        assert!(WorkerSpec::parse("comfyui:2").unwrap().aliases.is_empty());
        check(
            "comfyui:auto,comfyui-websocket:2",
            "worker spec item 2 \"comfyui-websocket:2\" (column 32): \"comfyui-websocket\" plans \"comfyui\" workers like item 1; counts add up only when both are numbers, not \"auto\"",
        );
        // Once an alias joined the connector's items, another item of it adds up as well.
        check(
            "comfyui:1,comfyui-websocket:1,comfyui:1",
            "ok comfyui:3:gpu",
        );
        check(
            "comfyui:2:gpu,openai:6:shared,playwright:1:cpu",
            "ok comfyui:2:gpu,openai:6:shared,playwright:1:cpu",
        );
    }

    #[test]
    fn bindings() {
        check(
            "openai:1:gpu",
            "worker spec item 1 \"openai:1:gpu\" (column 10): connector \"openai\" cannot use binding \"gpu\"; allowed: shared",
        );
        check(
            "comfyui:1:GPU",
            "worker spec item 1 \"comfyui:1:GPU\" (column 11): unknown binding \"GPU\"; allowed: gpu, cpu, shared",
        );
        check(
            "comfyui:1:gpu:x",
            "worker spec item 1 \"comfyui:1:gpu:x\" (column 1): has 4 fields; expected connector:count[:binding] (binding one of gpu, cpu, shared)",
        );
        check(
            "comfyui",
            "worker spec item 1 \"comfyui\" (column 1): has 1 field; expected connector:count[:binding] (binding one of gpu, cpu, shared)",
        );
    }

    #[test]
    fn duplicates_and_all_errors_at_once() {
        check(
            "openai:1,comfyui:2,openai:3",
            "worker spec item 3 \"openai:3\" (column 20): connector \"openai\" appears again (first as item 1); give each connector once with the total count",
        );
        // Positions count every comma-separated item, empty and unknown ones included.
        check(
            "nope:1,,mock:1,comfyui:2,mock:3",
            "worker spec item 1 \"nope:1\" (column 1): unknown connector \"nope\" (known: comfyui, comfyui-remote, emprops-app, simulation-websocket, openai, openai-response, gemini, ollama, mock, playwright)\n\
             worker spec item 2 \"\" (column 8): is empty; remove the extra comma or write connector:count[:binding]\n\
             worker spec item 5 \"mock:3\" (column 26): connector \"mock\" appears again (first as item 3); give each connector once with the total count",
        );
        check(
            "comfyu:1, openai:0:gpu",
            "worker spec item 1 \"comfyu:1\" (column 1): unknown connector \"comfyu\"; did you mean \"comfyui\"? (known: comfyui, comfyui-remote, emprops-app, simulation-websocket, openai, openai-response, gemini, ollama, mock, playwright)\n\
             worker spec item 2 \"openai:0:gpu\" (column 18): count is 0; expected a positive integer or \"auto\" (remove the item to run no such workers)\n\
             worker spec item 2 \"openai:0:gpu\" (column 20): connector \"openai\" cannot use binding \"gpu\"; allowed: shared",
        );
    }

    #[test]
    fn const_message_lists_the_catalog() {
        let listed = UNKNOWN_CONNECTOR_MESSAGE.split("known: ").nth(1).unwrap();
        assert_eq!(listed, catalog::connector_names().join(", "));
    }

    #[test]
    fn macro_accepts_a_valid_spec() {
        let spec: &'static str = crate::worker_spec!("comfyui:auto:gpu,openai:4");
        assert_eq!(
            WorkerSpec::parse(spec).unwrap().to_string(),
            "comfyui:auto:gpu,openai:4:shared"
        );
    }
}
