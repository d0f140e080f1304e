//! Late-bound evaluation of a pool of variables: each variable's value against the whole pool, with
//! the references expanded for it and where each got its text; cycles, unresolved names and
//! rejected secrets become diagnostics.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use super::super::diag::{Diagnostic, Position, did_you_mean};
use super::template::{Op, Piece, Reference, Template};
use super::value::Value;

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
