//! The template grammar (see the parent module): [`Template`] parsed from a value's text, written back
//! in the unquoted syntax, and the names it refers to; a syntax error names its column.

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
}
