//! Value templates (`${VAR}`, `${VAR:-default}`, `${VAR:?message}`, `$$`) and their late-bound evaluation.
//!
//! Grammar, shared by component values, profile `env` values and defaults:
//!
//! - `$$` is a literal `$`;
//! - `${NAME}` is the value of `NAME` (an error when `NAME` has no value and is not a declared secret);
//! - `${NAME:-word}` is `word` when `NAME` is unset or empty, `${NAME-word}` only when it is unset;
//! - `${NAME:?message}` fails with `message` when `NAME` is unset or empty, `${NAME?message}` only when unset;
//! - `word` and `message` are templates themselves, so `${A:-${B}}` works (nesting is limited to 16 levels);
//! - `$NAME` without braces is an error (it means a reference in a shell but not here); any other `$` is literal.
//!
//! A reference to a declared secret stays a reference ([`Part::Secret`]): the value is known only at run time.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use super::diag::{Diagnostic, Position, did_you_mean};

/// How deeply `${A:-${B:-...}}` may nest before the template is rejected.
const MAX_DEPTH: usize = 16;

/// A parsed value: literal text and references.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Template {
    pub(crate) pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    Text(String),
    Ref(Reference),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reference {
    pub(crate) name: String,
    pub(crate) op: Op,
    /// Column of the `$` in the source line.
    pub(crate) column: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Plain,
    /// `:-` (`colon` true) or `-`.
    Default {
        colon: bool,
        word: Template,
    },
    /// `:?` (`colon` true) or `?`.
    Required {
        colon: bool,
        message: Template,
    },
}

/// How a template's characters are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Unquoted component values, profile `env` values: a backslash is an ordinary character.
    Unquoted,
    /// The inside of a double-quoted component value: `\"`, `\\`, `\n`, `\t` and `\$` are escapes.
    DoubleQuoted,
}

/// A syntax error in a template, at a column of the source line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    /// The 1-based column of the offending character.
    pub column: u32,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl Template {
    /// A template that is only literal text (single-quoted values).
    pub fn literal(text: &str) -> Self {
        if text.is_empty() {
            Template::default()
        } else {
            Template {
                pieces: vec![Piece::Text(text.to_owned())],
            }
        }
    }

    /// Parses `text`, whose first character is at `first_column` of its line.
    pub fn parse(text: &str, mode: Mode, first_column: u32) -> Result<Template, TemplateError> {
        let mut parser = Parser {
            chars: text.chars().collect(),
            pos: 0,
            mode,
            first_column,
        };
        let pieces = parser.sequence(0, None)?;
        Ok(Template { pieces })
    }

    /// The names this template refers to, nested defaults included.
    pub fn references(&self) -> Vec<&str> {
        let mut out = Vec::new();
        collect_refs(&self.pieces, &mut out);
        out
    }

    /// The template written back in the unquoted syntax (`$` as `$$`).
    pub fn source(&self) -> String {
        let mut out = String::new();
        write_source(&self.pieces, &mut out);
        out
    }
}

fn collect_refs<'a>(pieces: &'a [Piece], out: &mut Vec<&'a str>) {
    for piece in pieces {
        if let Piece::Ref(r) = piece {
            out.push(&r.name);
            match &r.op {
                Op::Plain => {}
                Op::Default { word: t, .. } | Op::Required { message: t, .. } => {
                    collect_refs(&t.pieces, out)
                }
            }
        }
    }
}

fn write_source(pieces: &[Piece], out: &mut String) {
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(&t.replace('$', "$$")),
            Piece::Ref(r) => {
                out.push_str("${");
                out.push_str(&r.name);
                match &r.op {
                    Op::Plain => {}
                    Op::Default { colon, word } => {
                        out.push_str(if *colon { ":-" } else { "-" });
                        write_source(&word.pieces, out);
                    }
                    Op::Required { colon, message } => {
                        out.push_str(if *colon { ":?" } else { "?" });
                        write_source(&message.pieces, out);
                    }
                }
                out.push('}');
            }
        }
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    mode: Mode,
    first_column: u32,
}

impl Parser {
    fn column(&self, pos: usize) -> u32 {
        self.first_column
            .saturating_add(u32::try_from(pos).unwrap_or(u32::MAX))
    }

    fn error(&self, pos: usize, message: String, help: Option<&str>) -> TemplateError {
        TemplateError {
            column: self.column(pos),
            message,
            help: help.map(str::to_owned),
        }
    }

    /// Reads pieces until the end of input or, inside `${...}` (`open` is the `$` position), until `}`.
    fn sequence(&mut self, depth: usize, open: Option<usize>) -> Result<Vec<Piece>, TemplateError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        loop {
            let Some(&c) = self.chars.get(self.pos) else {
                if let Some(open) = open {
                    return Err(self.error(
                        open,
                        "unterminated reference: `${` has no closing `}`".to_owned(),
                        Some("close the reference with `}`, or write `$$` for a literal `$`"),
                    ));
                }
                break;
            };
            match c {
                '}' if open.is_some() => break,
                '\\' if self.mode == Mode::DoubleQuoted => {
                    let escaped = match self.chars.get(self.pos + 1) {
                        Some('"') => '"',
                        Some('\\') => '\\',
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('$') => '$',
                        Some(other) => {
                            return Err(self.error(
                                self.pos,
                                format!("unknown escape `\\{other}` in a double-quoted value"),
                                Some(
                                    "the escapes are \\\" \\\\ \\n \\t \\$; write `\\\\` for a backslash, \
                                     or use single quotes where everything is literal",
                                ),
                            ));
                        }
                        None => {
                            return Err(self.error(
                                self.pos,
                                "a double-quoted value ends with a lone backslash".to_owned(),
                                Some("write `\\\\` for a backslash"),
                            ));
                        }
                    };
                    text.push(escaped);
                    self.pos += 2;
                }
                '$' => match self.chars.get(self.pos + 1) {
                    Some('$') => {
                        text.push('$');
                        self.pos += 2;
                    }
                    Some('{') => {
                        if !text.is_empty() {
                            pieces.push(Piece::Text(std::mem::take(&mut text)));
                        }
                        pieces.push(Piece::Ref(self.reference(depth)?));
                    }
                    Some(&n) if n.is_ascii_alphabetic() || n == '_' => {
                        let name: String = self.chars[self.pos + 1..]
                            .iter()
                            .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                            .collect();
                        return Err(self.error(
                            self.pos,
                            format!("`${name}` is not a reference here; references need braces"),
                            Some(&format!("write `${{{name}}}` for the value of {name}, or `$${name}` for the literal text")),
                        ));
                    }
                    _ => {
                        text.push('$');
                        self.pos += 1;
                    }
                },
                other => {
                    text.push(other);
                    self.pos += 1;
                }
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(pieces)
    }

    /// Reads `${NAME[op word]}` starting at the `$`.
    fn reference(&mut self, depth: usize) -> Result<Reference, TemplateError> {
        let start = self.pos;
        if depth >= MAX_DEPTH {
            return Err(self.error(
                start,
                format!("references are nested more than {MAX_DEPTH} levels deep"),
                None,
            ));
        }
        self.pos += 2;
        let name_start = self.pos;
        while let Some(c) = self.chars.get(self.pos) {
            let ok = if self.pos == name_start {
                c.is_ascii_alphabetic() || *c == '_'
            } else {
                c.is_ascii_alphanumeric() || *c == '_'
            };
            if !ok {
                break;
            }
            self.pos += 1;
        }
        let name: String = self.chars[name_start..self.pos].iter().collect();
        if name.is_empty() {
            return Err(self.error(
                start,
                "a reference needs a variable name: `${` must be followed by letters, digits or `_`".to_owned(),
                Some("write `${NAME}`, or `$$` for a literal `$`"),
            ));
        }
        let column = self.column(start);
        let op_kind = match (self.chars.get(self.pos), self.chars.get(self.pos + 1)) {
            (Some('}'), _) => {
                self.pos += 1;
                return Ok(Reference {
                    name,
                    op: Op::Plain,
                    column,
                });
            }
            (Some(':'), Some('-')) => (true, '-'),
            (Some(':'), Some('?')) => (true, '?'),
            (Some('-'), _) => (false, '-'),
            (Some('?'), _) => (false, '?'),
            (None, _) => {
                return Err(self.error(
                    start,
                    format!("unterminated reference `${{{name}`: no closing `}}`"),
                    Some("close the reference with `}`"),
                ));
            }
            (Some(other), _) => {
                return Err(self.error(
                    self.pos,
                    format!("unsupported `{other}` in reference to {name}"),
                    Some("the forms are ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message} and ${NAME?message}"),
                ));
            }
        };
        self.pos += if op_kind.0 { 2 } else { 1 };
        let inner = Template {
            pieces: self.sequence(depth + 1, Some(start))?,
        };
        // `sequence` stopped at the closing brace.
        self.pos += 1;
        let op = match op_kind {
            (colon, '-') => Op::Default { colon, word: inner },
            (colon, _) => Op::Required {
                colon,
                message: inner,
            },
        };
        Ok(Reference { name, op, column })
    }
}

/// One piece of a resolved value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// Literal text.
    Text(String),
    /// A reference to a secret, filled in at run time from the environment.
    Secret(String),
}

/// A resolved value: literal text, possibly with references to secrets that only exist at run time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Value {
    parts: Vec<Part>,
}

impl Value {
    /// A literal value.
    pub fn text(text: &str) -> Self {
        let mut v = Value::default();
        v.push_text(text);
        v
    }

    /// A value that is exactly the secret `name`.
    pub fn secret(name: &str) -> Self {
        Value {
            parts: vec![Part::Secret(name.to_owned())],
        }
    }

    fn push_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        if let Some(Part::Text(last)) = self.parts.last_mut() {
            last.push_str(text);
        } else {
            self.parts.push(Part::Text(text.to_owned()));
        }
    }

    fn append(&mut self, other: &Value) {
        for part in &other.parts {
            match part {
                Part::Text(t) => self.push_text(t),
                Part::Secret(_) => self.parts.push(part.clone()),
            }
        }
    }

    /// The pieces of the value.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The value when it contains no secret reference.
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// Whether the value contains no secret reference.
    pub(crate) fn is_literal(&self) -> bool {
        self.as_literal().is_some()
    }

    /// The secrets this value needs at run time.
    pub(crate) fn secret_refs(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Secret(name) => Some(name.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Whether the value is known to be empty (a secret reference may be anything).
    fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The value in the interpolation syntax Docker Compose and [`expand_runtime`] read: literal `$` doubled,
    /// secrets as `${NAME}`.
    pub fn to_template(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(&t.replace('$', "$$")),
                Part::Secret(name) => {
                    out.push_str("${");
                    out.push_str(name);
                    out.push('}');
                }
            }
        }
        out
    }

    /// The value for people: literal text as is, secrets as `<secret NAME>`.
    pub fn masked(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Secret(name) => {
                    out.push_str("<secret ");
                    out.push_str(name);
                    out.push('>');
                }
            }
        }
        out
    }
}

impl fmt::Display for Value {
    /// Displays the masked form: a `Value` never holds a secret's value, and never shows one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// Whether values may fall back to the caller's process environment for names nobody defines.
#[derive(Clone, Copy, Default)]
pub enum EnvFallback<'a> {
    /// Unresolved references are errors (the default).
    #[default]
    Deny,
    /// Ask this lookup for names nobody defines; each use is recorded as coming from the environment.
    Allow(&'a dyn Fn(&str) -> Option<String>),
}

impl fmt::Debug for EnvFallback<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EnvFallback::Deny => "EnvFallback::Deny",
            EnvFallback::Allow(_) => "EnvFallback::Allow(..)",
        })
    }
}

/// Where a reference in a value got its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Another variable of the resolved set (look it up for its own origin).
    Variable,
    /// A declared secret, left as a reference.
    Secret,
    /// The caller's environment, through [`EnvFallback::Allow`].
    Environment,
    /// The variable was unset (or empty for `:-`), so the reference's default was used.
    Default,
}

/// One reference that was expanded while resolving a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expansion {
    /// The referenced name.
    pub name: String,
    /// Where its text came from.
    pub source: Source,
}

/// One variable as the evaluator sees it.
#[derive(Clone, Debug)]
pub(crate) struct PoolVar {
    pub(crate) name: String,
    pub(crate) kind: PoolKind,
    pub(crate) file: String,
    pub(crate) position: Option<Position>,
}

#[derive(Clone, Debug)]
pub(crate) enum PoolKind {
    Template(Template),
    Secret,
}

#[derive(Clone)]
enum State {
    Pending,
    InProgress,
    Done(Value),
    Failed,
}

/// One variable's value and the references expanded for it, or `None` when it failed (with a diagnostic).
pub(crate) type Evaluated = Option<(Value, Vec<Expansion>)>;

/// Evaluates every variable of `vars` against the whole pool (late binding).
/// Returns, per variable in order, its value and expansions, or `None` when it failed (with diagnostics).
pub(crate) fn evaluate(
    vars: &[PoolVar],
    secrets: &BTreeSet<String>,
    rejected: &BTreeSet<String>,
    env: EnvFallback<'_>,
) -> (Vec<Evaluated>, Vec<Diagnostic>) {
    let mut ev = Evaluator {
        vars,
        index: vars
            .iter()
            .enumerate()
            .map(|(i, v)| (v.name.as_str(), i))
            .collect(),
        secrets,
        rejected,
        env,
        state: vec![State::Pending; vars.len()],
        expansions: vec![Vec::new(); vars.len()],
        stack: Vec::new(),
        diagnostics: Vec::new(),
    };
    for i in 0..vars.len() {
        ev.var(i);
    }
    let results = ev
        .state
        .iter()
        .zip(std::mem::take(&mut ev.expansions))
        .map(|(s, e)| match s {
            State::Done(v) => Some((v.clone(), e)),
            _ => None,
        })
        .collect();
    (results, ev.diagnostics)
}

struct Evaluator<'a> {
    vars: &'a [PoolVar],
    index: HashMap<&'a str, usize>,
    secrets: &'a BTreeSet<String>,
    rejected: &'a BTreeSet<String>,
    env: EnvFallback<'a>,
    state: Vec<State>,
    expansions: Vec<Vec<Expansion>>,
    stack: Vec<usize>,
    diagnostics: Vec<Diagnostic>,
}

enum Found {
    Value(Value, Source),
    Secret,
    Unset,
    Failed,
}

impl Evaluator<'_> {
    fn var(&mut self, i: usize) -> Option<Value> {
        match &self.state[i] {
            State::Done(v) => return Some(v.clone()),
            State::Failed | State::InProgress => return None,
            State::Pending => {}
        }
        let var = &self.vars[i];
        let result = match &var.kind {
            PoolKind::Secret => Some(Value::secret(&var.name)),
            PoolKind::Template(t) => {
                self.state[i] = State::InProgress;
                self.stack.push(i);
                let mut expansions = Vec::new();
                let r = self.template(t, i, &mut expansions);
                self.stack.pop();
                self.expansions[i] = expansions;
                r
            }
        };
        self.state[i] = match &result {
            Some(v) => State::Done(v.clone()),
            None => State::Failed,
        };
        result
    }

    fn report(&mut self, owner: usize, column: u32, message: String, help: Option<String>) {
        let var = &self.vars[owner];
        let position = var.position.map(|p| Position::new(p.line, column.max(1)));
        let mut d = Diagnostic::error(&var.file, position, message);
        d.help = help;
        self.diagnostics.push(d);
    }

    fn lookup(&mut self, owner: usize, r: &Reference) -> Found {
        if let Some(&j) = self.index.get(r.name.as_str()) {
            if matches!(self.state[j], State::InProgress) {
                let from = self.stack.iter().position(|&k| k == j).unwrap_or(0);
                let mut chain: Vec<&str> = self.stack[from..]
                    .iter()
                    .map(|&k| self.vars[k].name.as_str())
                    .collect();
                chain.push(&self.vars[j].name);
                let chain = chain.join(" -> ");
                self.report(
                    owner,
                    r.column,
                    format!("reference cycle: {chain}"),
                    Some(
                        "break the cycle by giving one of these variables a literal value"
                            .to_owned(),
                    ),
                );
                return Found::Failed;
            }
            return match self.var(j) {
                Some(v) if matches!(self.vars[j].kind, PoolKind::Secret) => {
                    let _ = v;
                    Found::Secret
                }
                Some(v) => Found::Value(v, Source::Variable),
                None => Found::Failed,
            };
        }
        if self.secrets.contains(&r.name) {
            return Found::Secret;
        }
        if self.rejected.contains(&r.name) {
            // Its own error is reported where it is set; say why this value fails too, so nothing fails silently.
            let owner_name = self.vars[owner].name.clone();
            self.report(
                owner,
                r.column,
                format!(
                    "{owner_name} refers to {}, whose value has an error",
                    r.name
                ),
                Some(format!("fix the error reported for {}", r.name)),
            );
            return Found::Failed;
        }
        if let EnvFallback::Allow(lookup) = self.env
            && let Some(text) = lookup(&r.name)
        {
            return Found::Value(Value::text(&text), Source::Environment);
        }
        Found::Unset
    }

    fn template(
        &mut self,
        t: &Template,
        owner: usize,
        expansions: &mut Vec<Expansion>,
    ) -> Option<Value> {
        let mut out = Value::default();
        let mut ok = true;
        for piece in &t.pieces {
            match piece {
                Piece::Text(text) => out.push_text(text),
                Piece::Ref(r) => match self.reference(r, owner, expansions) {
                    Some(v) => out.append(&v),
                    None => ok = false,
                },
            }
        }
        ok.then_some(out)
    }

    fn reference(
        &mut self,
        r: &Reference,
        owner: usize,
        expansions: &mut Vec<Expansion>,
    ) -> Option<Value> {
        let found = self.lookup(owner, r);
        let mut expanded = |source: Source| {
            expansions.push(Expansion {
                name: r.name.clone(),
                source,
            })
        };
        match found {
            Found::Failed => None,
            Found::Secret => {
                if let Op::Default { .. } = r.op {
                    self.report(
                        owner,
                        r.column,
                        format!("{} is a secret and cannot have a default here", r.name),
                        Some(format!(
                            "write `${{{}}}`: the secret must be set in the environment at run time",
                            r.name
                        )),
                    );
                    return None;
                }
                expanded(Source::Secret);
                Some(Value::secret(&r.name))
            }
            Found::Value(v, source) => {
                let unusable = |colon: bool| colon && v.is_empty();
                match &r.op {
                    Op::Default { colon, word } if unusable(*colon) => {
                        expanded(Source::Default);
                        self.template(word, owner, expansions)
                    }
                    Op::Required { colon, message } if unusable(*colon) => {
                        self.required_failed(r, owner, message, "is empty");
                        None
                    }
                    _ => {
                        expanded(source);
                        Some(v)
                    }
                }
            }
            Found::Unset => match &r.op {
                Op::Default { word, .. } => {
                    expanded(Source::Default);
                    self.template(word, owner, expansions)
                }
                Op::Required { message, .. } => {
                    self.required_failed(r, owner, message, "is not set");
                    None
                }
                Op::Plain => {
                    let owner_name = self.vars[owner].name.clone();
                    let suggestion =
                        did_you_mean(&r.name, self.vars.iter().map(|v| v.name.as_str()))
                            .map(|s| format!("did you mean ${{{s}}}? otherwise "))
                            .unwrap_or_default();
                    self.report(
                        owner,
                        r.column,
                        format!("unresolved reference ${{{}}} in the value of {owner_name}", r.name),
                        Some(format!(
                            "{suggestion}define {} in a selected component section or the profile env, \
                             declare it as a secret, or give a default with `${{{}:-value}}`",
                            r.name, r.name
                        )),
                    );
                    None
                }
            },
        }
    }

    fn required_failed(&mut self, r: &Reference, owner: usize, message: &Template, why: &str) {
        let owner_name = self.vars[owner].name.clone();
        let text = message.source();
        let text = if text.is_empty() {
            format!("{} is required", r.name)
        } else {
            text
        };
        self.report(
            owner,
            r.column,
            format!(
                "{} {why}, required by the value of {owner_name}: {text}",
                r.name
            ),
            Some(format!(
                "set {} in a selected component section or the profile env",
                r.name
            )),
        );
    }
}

/// Expands `template` (the [`Value::to_template`] / unquoted syntax) with `lookup`, for run-time use
/// (see [`expand`] for one error at a time and names kept as written):
/// the runtime fills in secrets from its own environment. Fails with the names that are missing or invalid.
pub fn expand_runtime(
    template: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let parsed = Template::parse(template, Mode::Unquoted, 1).map_err(|e| vec![e.message])?;
    let mut missing = Vec::new();
    let out = expand_pieces(&parsed.pieces, lookup, &mut missing);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

/// Why [`expand`] could not expand a template.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// The text is not a template in this module's grammar.
    #[error("{}", .0.message)]
    Syntax(TemplateError),
    /// A name kept as written (`${NAME}`) was given a default or a message.
    #[error("`${{{name}}}` is reserved: it is kept as written and takes no default or message")]
    Reserved {
        /// The reserved name.
        name: String,
        /// The 1-based column of its `$`.
        column: u32,
    },
    /// A `${NAME}` or `${NAME:?message}` had no (usable) value; the first one in the text.
    #[error("{name} is not set{}", .message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Missing {
        /// The variable's name.
        name: String,
        /// The `:?` message, expanded, when the reference had one.
        message: Option<String>,
    },
}

/// Expands `text`, written in this module's grammar (unquoted: `${NAME}`, `${NAME:-word}`,
/// `${NAME-word}`, `${NAME:?message}`, `${NAME?message}`, `$$`), against `lookup`. Each name in
/// `reserved` stays as written (`${NAME}`), for a later stage to fill in. Substituted values are not
/// scanned again, so a value containing `${` stays literal. Fails on the first problem.
pub fn expand(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    reserved: &[&str],
) -> Result<String, ExpandError> {
    let parsed = Template::parse(text, Mode::Unquoted, 1).map_err(ExpandError::Syntax)?;
    check_reserved(&parsed.pieces, reserved)?;
    let mut out = String::new();
    expand_strict(&parsed.pieces, lookup, reserved, &mut out)?;
    Ok(out)
}

fn check_reserved(pieces: &[Piece], reserved: &[&str]) -> Result<(), ExpandError> {
    for piece in pieces {
        let Piece::Ref(r) = piece else { continue };
        let inner = match &r.op {
            Op::Plain => continue,
            Op::Default { word: t, .. } | Op::Required { message: t, .. } => t,
        };
        if reserved.contains(&r.name.as_str()) {
            return Err(ExpandError::Reserved {
                name: r.name.clone(),
                column: r.column,
            });
        }
        check_reserved(&inner.pieces, reserved)?;
    }
    Ok(())
}

fn expand_strict(
    pieces: &[Piece],
    lookup: &dyn Fn(&str) -> Option<String>,
    reserved: &[&str],
    out: &mut String,
) -> Result<(), ExpandError> {
    for piece in pieces {
        let r = match piece {
            Piece::Text(t) => {
                out.push_str(t);
                continue;
            }
            Piece::Ref(r) => r,
        };
        if reserved.contains(&r.name.as_str()) {
            out.push_str("${");
            out.push_str(&r.name);
            out.push('}');
            continue;
        }
        let value = lookup(&r.name);
        let usable = |colon: bool| value.as_deref().is_some_and(|v| !(colon && v.is_empty()));
        match &r.op {
            Op::Default { colon, word } if !usable(*colon) => {
                expand_strict(&word.pieces, lookup, reserved, out)?;
            }
            Op::Required { colon, message } if !usable(*colon) => {
                let mut text = String::new();
                let message = match expand_strict(&message.pieces, lookup, reserved, &mut text) {
                    Ok(()) => text,
                    Err(_) => message.source(),
                };
                return Err(ExpandError::Missing {
                    name: r.name.clone(),
                    message: (!message.is_empty()).then_some(message),
                });
            }
            _ => match value {
                Some(v) => out.push_str(&v),
                None => {
                    return Err(ExpandError::Missing {
                        name: r.name.clone(),
                        message: None,
                    });
                }
            },
        }
    }
    Ok(())
}

fn expand_pieces(
    pieces: &[Piece],
    lookup: &dyn Fn(&str) -> Option<String>,
    missing: &mut Vec<String>,
) -> String {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(r) => {
                let value = lookup(&r.name);
                let usable =
                    |colon: bool| value.as_deref().is_some_and(|v| !(colon && v.is_empty()));
                match &r.op {
                    Op::Default { colon, word } if !usable(*colon) => {
                        out.push_str(&expand_pieces(&word.pieces, lookup, missing));
                    }
                    Op::Required { colon, .. } if !usable(*colon) => missing.push(r.name.clone()),
                    _ => match value {
                        Some(v) => out.push_str(&v),
                        None => missing.push(r.name.clone()),
                    },
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Template {
        Template::parse(text, Mode::Unquoted, 1).unwrap()
    }

    fn parse_err(text: &str, mode: Mode) -> TemplateError {
        Template::parse(text, mode, 1).unwrap_err()
    }

    #[test]
    fn expand_fills_names_keeps_reserved_ones_and_stops_at_the_first_problem() {
        let env = |name: &str| match name {
            "A" => Some("1".to_owned()),
            "E" => Some(String::new()),
            "R" => Some("${B}".to_owned()),
            _ => None,
        };
        let ok = |text: &str| expand(text, &env, &["KEEP"]).unwrap();
        assert_eq!(ok("${A}/x $$ 5$ ${E:-d} ${E-d}"), "1/x $ 5$ d ");
        assert_eq!(ok("${N:-${M:-pin}} ${R}"), "pin ${B}");
        assert_eq!(ok("${KEEP}/browsers"), "${KEEP}/browsers");
        assert_eq!(ok("${A:?never shown}"), "1");
        let err = |text: &str| expand(text, &env, &["KEEP"]).unwrap_err();
        assert_eq!(
            err("${N}${M}"),
            ExpandError::Missing {
                name: "N".into(),
                message: None
            }
        );
        assert_eq!(
            err("${E:?set E to the ${A}st value}").to_string(),
            "E is not set: set E to the 1st value"
        );
        assert_eq!(
            err("x${A:-${KEEP:-d}}"),
            ExpandError::Reserved {
                name: "KEEP".into(),
                column: 7
            }
        );
        assert!(matches!(err("$A"), ExpandError::Syntax(e) if e.column == 1));
    }

    #[test]
    fn templates_round_trip_through_source() {
        for text in [
            "plain",
            "a$$b",
            "${A}",
            "x${A:-${B:-d}}y",
            "${A-}",
            "${A:?need A}",
            "${A?}",
            "$ 5$",
            "\\n",
        ] {
            let t = parse(text);
            assert_eq!(parse(&t.source()), t, "{text}");
        }
        assert_eq!(parse("a$$b").source(), "a$$b");
        assert_eq!(parse("5$").source(), "5$$");
    }

    #[test]
    fn template_syntax_errors_name_the_problem_and_column() {
        let e = parse_err("ab${NAME", Mode::Unquoted);
        assert_eq!(
            (e.column, e.message.as_str()),
            (3, "unterminated reference `${NAME`: no closing `}`")
        );
        let e = parse_err("x${A:-${B}", Mode::Unquoted);
        assert_eq!(e.column, 2);
        assert!(
            e.message.starts_with("unterminated reference"),
            "{}",
            e.message
        );
        let e = parse_err("${}", Mode::Unquoted);
        assert!(e.message.contains("needs a variable name"), "{}", e.message);
        let e = parse_err("${A:=x}", Mode::Unquoted);
        assert_eq!(
            (e.column, e.message.as_str()),
            (4, "unsupported `:` in reference to A")
        );
        let e = parse_err("pa$HOME", Mode::Unquoted);
        assert_eq!(e.column, 3);
        assert_eq!(
            e.message,
            "`$HOME` is not a reference here; references need braces"
        );
        let e = parse_err("a\\q", Mode::DoubleQuoted);
        assert_eq!(e.message, "unknown escape `\\q` in a double-quoted value");
        let e = parse_err("a\\", Mode::DoubleQuoted);
        assert!(e.message.contains("lone backslash"));
        let deep = "${A:-".repeat(20) + &"}".repeat(20);
        assert!(
            parse_err(&deep, Mode::Unquoted)
                .message
                .contains("nested more than 16")
        );
    }

    #[test]
    fn double_quoted_escapes() {
        let t = Template::parse(r#"a\"b\\c\nd\te\$f${X}"#, Mode::DoubleQuoted, 1).unwrap();
        assert_eq!(t.pieces[0], Piece::Text("a\"b\\c\nd\te$f".to_owned()));
        assert_eq!(t.references(), vec!["X"]);
        // In unquoted values a backslash is literal.
        assert_eq!(parse("a\\nb").pieces, vec![Piece::Text("a\\nb".to_owned())]);
    }

    #[test]
    fn runtime_expansion_fills_secrets_and_reports_missing_ones() {
        let env = |name: &str| (name == "KEY").then(|| "s3cr3t".to_owned());
        assert_eq!(
            expand_runtime("Bearer ${KEY} costs 5$$", &env),
            Ok("Bearer s3cr3t costs 5$".to_owned())
        );
        assert_eq!(
            expand_runtime("${NOPE:-fallback}", &env),
            Ok("fallback".to_owned())
        );
        assert_eq!(
            expand_runtime("${NOPE}${NOPE2:?x}", &env),
            Err(vec!["NOPE".to_owned(), "NOPE2".to_owned()])
        );
        let v = Value {
            parts: vec![Part::Text("a$b ".into()), Part::Secret("KEY".into())],
        };
        assert_eq!(
            expand_runtime(&v.to_template(), &env),
            Ok("a$b s3cr3t".to_owned())
        );
        assert_eq!(v.masked(), "a$b <secret KEY>");
        assert!(!v.is_literal());
    }
}
