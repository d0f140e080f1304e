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
//!
//! The jobs, one file each: `template.rs` parses the grammar, `value.rs` is what a value resolves to,
//! `evaluate.rs` resolves a pool of variables against each other (late binding), `expand.rs` fills a
//! template from a lookup at run time.

mod evaluate;
mod expand;
mod template;
mod value;

pub use evaluate::{EnvFallback, Expansion, Source};
pub(crate) use evaluate::{Evaluated, PoolKind, PoolVar, evaluate};
pub use expand::{ExpandError, expand, expand_runtime};
pub use template::{Mode, Template, TemplateError};
pub use value::{Part, Value};
