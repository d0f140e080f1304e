//! `cargo xtask tidy` (also run by `cargo xtask check`): the written conventions checked on every `.rs`
//! file of the workspace, parsed with `syn` (after rust-analyzer's `xtask/src/tidy.rs`).
//!
//! Rules, each reported as `file:line: problem`:
//! - every file opens with a `//!` line saying its one job;
//! - no `println!`/`eprintln!`/`print!`/`eprint!` outside the logger and the CLIs' output modules
//!   ([`PRINT_ALLOWED`]); tests, benches, fuzz targets and `#[cfg(test)]` code are exempt;
//! - one parser of booleans from the environment, machine-runtime's `src/env.rs`: a function elsewhere
//!   whose string literals include two of `"true"`, `"1"`, `"yes"`, `"on"` is flagged ([`BOOL_ALLOWED`]);
//! - a function body of at most [`FN_BUDGET`] lines, bar the named exceptions of [`FN_EXCEPTIONS`],
//!   which may only shrink;
//! - no import cycle, for every crate root (`src/lib.rs`, `src/main.rs`, `src/bin/*.rs`): neither among
//!   the top-level modules nor among the child modules of any directory module (`crate::a` → `crate::b`
//!   when code of `a` outside `#[cfg(test)]` names an item of `b`; a parent naming its children, or a
//!   child its parent, is not counted). Every cycle is printed with its edges, each with the `file:line`
//!   that creates it; [`CYCLES_ALLOWED`] lists the cycles another change is removing.
//!
//! The summary line gives the counts: files, functions over the budget, print sites, boolean parsers,
//! cycles per crate.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// The most lines a function (signature to closing brace) may span.
pub const FN_BUDGET: usize = 100;
/// How many of the longest functions the summary names.
pub const LONGEST_SHOWN: usize = 4;

/// Functions allowed over [`FN_BUDGET`], as `(file, function, lines now)`, each with a comment saying why
/// it cannot be split: a listed function may not grow, and an entry whose function is back within the
/// budget (or gone) must be removed. Empty since issue 19 split the last ones; keep it so.
#[rustfmt::skip]
const FN_EXCEPTIONS: &[(&str, &str, usize)] = &[
];

/// Files that may print, with the reason: the logger and the CLIs' own output (what a command prints
/// is its result, not a log line).
const PRINT_ALLOWED: &[(&str, &str)] = &[
    (
        "machine-runtime/build.rs",
        "`cargo::` lines on stdout are the build script's protocol with cargo",
    ),
    (
        "machine-runtime/src/install/cli.rs",
        "`install --system-packages` prints the package list: the command's output",
    ),
    (
        "xtask/src/bench.rs",
        "the benchmark figures: the command's output",
    ),
    (
        "xtask/src/codegen.rs",
        "what was written, and the stale files' diff: the command's output",
    ),
    (
        "xtask/src/explain.rs",
        "the variable's value and origin: the command's output",
    ),
    (
        "xtask/src/hooks.rs",
        "where the hook was installed: the command's output",
    ),
    ("xtask/src/list.rs", "the profiles: the command's output"),
    ("xtask/src/main.rs", "the command's final error"),
    (
        "xtask/src/plan.rs",
        "the allocation table: the command's output",
    ),
    (
        "xtask/src/profiles.rs",
        "the error of a caller that skipped find_root, before exiting",
    ),
    (
        "xtask/src/secrets.rs",
        "the secrets a profile needs: the command's output",
    ),
    (
        "xtask/src/tidy.rs",
        "the problems, cycles and summary: the command's output",
    ),
];

/// Files that may match boolean words in strings, with the reason (none but the one parser).
const BOOL_ALLOWED: &[(&str, &str)] = &[
    (
        "machine-runtime/src/env.rs",
        "the one parser of booleans from the environment",
    ),
    (
        "machine-runtime/src/health/params.rs",
        "`flag_param` reads the HTTP API's query flags (`?follow=1`), not the environment",
    ),
    (
        "xtask/src/render/yaml.rs",
        "the YAML 1.1 words a plain key may not be (they would read as booleans): quoting, not parsing",
    ),
];

/// Import cycles being removed by another change, as `(crate root, directory module, members sorted
/// and joined by ", ")`; the merger empties this list.
const CYCLES_ALLOWED: &[(&str, &str, &str)] = &[];

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The file, relative to the workspace root, `/`-separated.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong and what to do.
    pub message: String,
}

/// A cycle in one module graph: the members and the edges among them, each with its first site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// The crate root file, relative to the workspace.
    pub root: String,
    /// The directory module whose children form the cycle (`crate` for the top level).
    pub parent: String,
    /// The modules in the cycle, sorted.
    pub members: Vec<String>,
    /// `(from, to, file:line)` for each edge among the members.
    pub edges: Vec<(String, String, String)>,
}

/// Everything one run finds.
#[derive(Debug, Default)]
pub struct Report {
    /// `.rs` files read.
    pub files: usize,
    /// Every function over the budget, listed or not: `(file, name, lines, first line)`, longest first.
    pub long_fns: Vec<(String, String, usize, usize)>,
    /// The longest functions outside tests whatever their size, `(file, name, lines)`, longest first
    /// (at most [`LONGEST_SHOWN`]): the summary's figure.
    pub longest: Vec<(String, String, usize)>,
    /// Printing macro sites outside tests, allowed or not.
    pub print_sites: Vec<Problem>,
    /// Functions that parse booleans from strings, allowed or not.
    pub bool_parsers: Vec<Problem>,
    /// Every cycle of every crate, allowed or not.
    pub cycles: Vec<Cycle>,
    /// The crate roots whose module graphs were checked.
    pub roots: Vec<String>,
    /// Broken rules (what fails the check).
    pub problems: Vec<Problem>,
}

/// How much [`run`] prints besides the problems and the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Every cycle, the allowed ones too, with its edges (`cargo xtask tidy`).
    AllCycles,
    /// Only what fails the check (`cargo xtask check`).
    Problems,
}

/// Runs every rule on the workspace at `root`, prints each problem, the cycles (see [`Show`]) and a
/// summary, and fails when a rule is broken.
pub fn run(root: &Path, show: Show) -> anyhow::Result<()> {
    let report = check(root)?;
    for p in &report.problems {
        eprintln!("{}:{}: {}", p.file, p.line, p.message);
    }
    for c in &report.cycles {
        let allowed = CYCLES_ALLOWED
            .iter()
            .any(|(r, p, m)| *r == c.root && *p == c.parent && *m == c.members.join(", "));
        if allowed && show == Show::Problems {
            continue;
        }
        let note = if allowed {
            " (allowed for now: CYCLES_ALLOWED in xtask/src/tidy.rs)"
        } else {
            ""
        };
        let text = describe_cycle(c);
        let (head, edges) = text.split_once('\n').unwrap_or((&text, ""));
        eprintln!("{head}{note}\n{edges}");
    }
    eprintln!("{}", summary(&report));
    if !report.problems.is_empty() {
        bail!("tidy: {} problem(s); see above", report.problems.len());
    }
    Ok(())
}

/// The one-line summary: files, functions over the budget, print sites, parsers, cycles per crate root.
pub fn summary(report: &Report) -> String {
    // Per crate (its roots together): `machine-model 3`.
    let mut per_crate: BTreeMap<&str, usize> = BTreeMap::new();
    let crate_of = |root: &'_ str| root.split('/').next().unwrap_or_default().to_owned();
    let names: Vec<String> = report.roots.iter().map(|r| crate_of(r)).collect();
    for name in &names {
        per_crate.entry(name.as_str()).or_default();
    }
    let cycle_crates: Vec<String> = report.cycles.iter().map(|c| crate_of(&c.root)).collect();
    for name in &cycle_crates {
        *per_crate.entry(name.as_str()).or_default() += 1;
    }
    let cycles = per_crate
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let allowed_prints = report
        .print_sites
        .iter()
        .filter(|p| PRINT_ALLOWED.iter().any(|(f, _)| *f == p.file))
        .count();
    let longest = report
        .longest
        .iter()
        .map(|(f, n, l)| format!("{n} ({f}) {l}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "tidy: {} files, {} problem(s); {} functions over {FN_BUDGET} lines (longest: {longest}); {} print sites outside tests ({allowed_prints} in PRINT_ALLOWED files); {} boolean parsers ({} in BOOL_ALLOWED files); import cycles per crate: {cycles}",
        report.files,
        report.problems.len(),
        report.long_fns.len(),
        report.print_sites.len(),
        report.bool_parsers.len(),
        report
            .bool_parsers
            .iter()
            .filter(|p| BOOL_ALLOWED.iter().any(|(f, _)| *f == p.file))
            .count(),
    )
}

/// A cycle as printed: the members, then one edge a line.
pub fn describe_cycle(c: &Cycle) -> String {
    let mut out = format!(
        "import cycle in {} under {}: {}",
        c.root,
        c.parent,
        c.members.join(" ↔ ")
    );
    for (from, to, at) in &c.edges {
        let _ = write!(out, "\n    {from} → {to} at {at}");
    }
    out
}

/// Reads the workspace at `root` and applies every rule.
pub fn check(root: &Path) -> anyhow::Result<Report> {
    let mut files = Vec::new();
    walk(root, root, &mut files)?;
    files.sort();
    let mut report = Report {
        files: files.len(),
        ..Report::default()
    };
    for rel in &files {
        let text = std::fs::read_to_string(root.join(rel))
            .with_context(|| format!("reading {}", root.join(rel).display()))?;
        check_file(rel, &text, &mut report);
    }
    for rel in &files {
        if is_crate_root(rel) {
            report.cycles.extend(cycles_of(root, rel)?);
            report.roots.push(rel.clone());
        }
    }
    apply_allow_lists(&mut report);
    report.long_fns.sort_by(|a, b| b.2.cmp(&a.2).then(a.cmp(b)));
    report.problems.sort();
    Ok(report)
}

/// Every `.rs` file under `dir`, relative to `root`, skipping build output and VCS folders.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type()?.is_dir() {
            if !matches!(name.as_ref(), "target" | ".git" | "node_modules")
                && !name.starts_with('.')
            {
                walk(root, &path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(relative(root, &path));
        }
    }
    Ok(())
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// Whether a file is test, bench, fuzz or trybuild code, where printing is the output.
fn is_test_code(rel: &str) -> bool {
    rel.starts_with("fuzz/")
        || rel
            .split('/')
            .any(|part| part == "tests" || part == "benches")
}

fn is_crate_root(rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    matches!(
        parts.as_slice(),
        [_, "src", "lib.rs" | "main.rs"] | [_, "src", "bin", _]
    )
}

/// The per-file rules: the `//!` line, printing, boolean parsers, function sizes.
pub fn check_file(rel: &str, text: &str, report: &mut Report) {
    let first = text.lines().find(|l| !l.trim().is_empty());
    if !first.is_some_and(|l| l.trim_start().starts_with("//!")) {
        report.problems.push(Problem {
            file: rel.to_owned(),
            line: 1,
            message: "the file does not open with a `//!` line saying its one job".to_owned(),
        });
    }
    let ast = match syn::parse_file(text) {
        Ok(ast) => ast,
        Err(e) => {
            // trybuild's ui files are meant not to compile; anything else unparsable is a problem.
            if !rel.contains("/tests/ui/") {
                report.problems.push(Problem {
                    file: rel.to_owned(),
                    line: e.span().start().line,
                    message: format!("cannot be parsed: {e}"),
                });
            }
            return;
        }
    };
    let mut v = FileVisitor {
        rel,
        test_code: is_test_code(rel),
        in_test: 0,
        fn_stack: Vec::new(),
        report,
    };
    v.visit_file(&ast);
}

/// Whether the attributes carry a `#[cfg(...)]` naming `test`.
fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta
                .require_list()
                .is_ok_and(|l| tokens_have_ident(&l.tokens, "test"))
    }) || attrs.iter().any(|a| a.path().is_ident("test"))
}

fn tokens_have_ident(tokens: &TokenStream, name: &str) -> bool {
    tokens.clone().into_iter().any(|t| match t {
        TokenTree::Ident(i) => i == name,
        TokenTree::Group(g) => tokens_have_ident(&g.stream(), name),
        _ => false,
    })
}

struct FileVisitor<'a> {
    rel: &'a str,
    test_code: bool,
    in_test: usize,
    /// The functions being visited, as (name, string literals seen in its body).
    fn_stack: Vec<(String, BTreeSet<String>)>,
    report: &'a mut Report,
}

const PRINT_MACROS: &[&str] = &["println", "eprintln", "print", "eprint"];
const BOOL_WORDS: &[&str] = &["true", "1", "yes", "on"];

impl FileVisitor<'_> {
    fn exempt(&self) -> bool {
        self.test_code || self.in_test > 0
    }

    /// `sig` to the closing brace of `block`: the function without its doc comment and attributes.
    fn enter_fn(&mut self, name: String, sig: &syn::Signature, block: &syn::Block) {
        let start = sig.fn_token.span.start().line;
        let lines = block
            .brace_token
            .span
            .close()
            .end()
            .line
            .saturating_sub(start)
            + 1;
        if !self.exempt() {
            if lines > FN_BUDGET {
                self.report
                    .long_fns
                    .push((self.rel.to_owned(), name.clone(), lines, start));
            }
            self.report
                .longest
                .push((self.rel.to_owned(), name.clone(), lines));
            self.report
                .longest
                .sort_by(|a, b| b.2.cmp(&a.2).then(a.cmp(b)));
            self.report.longest.truncate(LONGEST_SHOWN);
        }
        self.fn_stack.push((name, BTreeSet::new()));
    }

    fn leave_fn(&mut self, line: usize) {
        let Some((name, words)) = self.fn_stack.pop() else {
            return;
        };
        let hits: Vec<&str> = BOOL_WORDS
            .iter()
            .copied()
            .filter(|w| words.contains(*w))
            .collect();
        if !self.exempt() && hits.len() >= 2 {
            self.report.bool_parsers.push(Problem {
                file: self.rel.to_owned(),
                line,
                message: format!(
                    "`{name}` matches the boolean words {}: read booleans from the environment with machine-runtime's env module (the one parser)",
                    hits.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }

    fn note_string(&mut self, value: String) {
        let lower = value.trim().to_ascii_lowercase();
        for (_, words) in &mut self.fn_stack {
            words.insert(lower.clone());
        }
    }

    fn scan_macro_tokens(&mut self, tokens: &TokenStream) {
        let trees: Vec<TokenTree> = tokens.clone().into_iter().collect();
        for (i, t) in trees.iter().enumerate() {
            match t {
                TokenTree::Ident(id) => {
                    let bang =
                        matches!(trees.get(i + 1), Some(TokenTree::Punct(p)) if p.as_char() == '!');
                    if bang && PRINT_MACROS.iter().any(|m| id == m) {
                        self.print_site(&id.to_string(), id.span().start().line);
                    }
                }
                TokenTree::Group(g) => self.scan_macro_tokens(&g.stream()),
                TokenTree::Literal(lit) => {
                    if let Ok(s) = syn::parse_str::<syn::LitStr>(&lit.to_string()) {
                        self.note_string(s.value());
                    }
                }
                TokenTree::Punct(_) => {}
            }
        }
    }

    fn print_site(&mut self, name: &str, line: usize) {
        if self.exempt() {
            return;
        }
        self.report.print_sites.push(Problem {
            file: self.rel.to_owned(),
            line,
            message: format!(
                "`{name}!` outside the logger and the CLI's output: log through machine-runtime's `log` module, or add the file to PRINT_ALLOWED in xtask/src/tidy.rs with the reason"
            ),
        });
    }
}

impl<'ast> Visit<'ast> for FileVisitor<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Macro(m) => &m.attrs,
            _ => &[],
        };
        let test = is_cfg_test(attrs);
        self.in_test += usize::from(test);
        syn::visit::visit_item(self, item);
        self.in_test -= usize::from(test);
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.enter_fn(f.sig.ident.to_string(), &f.sig, &f.block);
        syn::visit::visit_item_fn(self, f);
        self.leave_fn(f.sig.ident.span().start().line);
    }

    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        let test = is_cfg_test(&i.attrs);
        self.in_test += usize::from(test);
        let self_ty = match &*i.self_ty {
            syn::Type::Path(p) => p
                .path
                .segments
                .last()
                .map(|s| s.ident.to_string())
                .unwrap_or_default(),
            _ => String::new(),
        };
        for item in &i.items {
            match item {
                syn::ImplItem::Fn(f) => {
                    let test = is_cfg_test(&f.attrs);
                    self.in_test += usize::from(test);
                    let name = format!("{self_ty}::{}", f.sig.ident);
                    self.enter_fn(name, &f.sig, &f.block);
                    syn::visit::visit_impl_item_fn(self, f);
                    self.leave_fn(f.sig.ident.span().start().line);
                    self.in_test -= usize::from(test);
                }
                other => syn::visit::visit_impl_item(self, other),
            }
        }
        self.in_test -= usize::from(test);
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(block) = &f.default {
            self.enter_fn(f.sig.ident.to_string(), &f.sig, block);
            syn::visit::visit_trait_item_fn(self, f);
            self.leave_fn(f.sig.ident.span().start().line);
        }
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        if let Some(last) = m.path.segments.last() {
            let name = last.ident.to_string();
            if PRINT_MACROS.contains(&name.as_str()) {
                self.print_site(&name, last.ident.span().start().line);
            }
        }
        self.scan_macro_tokens(&m.tokens);
        syn::visit::visit_macro(self, m);
    }

    fn visit_lit_str(&mut self, s: &'ast syn::LitStr) {
        self.note_string(s.value());
    }
}

/// An allow-list entry that no longer applies, reported on this file.
fn stale(message: String) -> Problem {
    Problem {
        file: "xtask/src/tidy.rs".to_owned(),
        line: 1,
        message,
    }
}

/// Moves allowed findings out of the problems, and reports allow-list entries that no longer apply.
fn apply_allow_lists(report: &mut Report) {
    apply_output_lists(report);
    apply_fn_exceptions(report, FN_EXCEPTIONS);
    apply_cycle_exceptions(report);
}

/// [`PRINT_ALLOWED`] and [`BOOL_ALLOWED`].
fn apply_output_lists(report: &mut Report) {
    for p in &report.print_sites {
        if !PRINT_ALLOWED.iter().any(|(f, _)| *f == p.file) {
            report.problems.push(p.clone());
        }
    }
    for (f, _) in PRINT_ALLOWED {
        if !report.print_sites.iter().any(|p| p.file == *f) {
            report.problems.push(stale(format!(
                "PRINT_ALLOWED lists {f}, which no longer prints: remove the entry"
            )));
        }
    }
    for p in &report.bool_parsers {
        if !BOOL_ALLOWED.iter().any(|(f, _)| *f == p.file) {
            report.problems.push(p.clone());
        }
    }
    for (f, _) in BOOL_ALLOWED {
        if !report.bool_parsers.iter().any(|p| p.file == *f) {
            report.problems.push(stale(format!(
                "BOOL_ALLOWED lists {f}, which parses no booleans (or does not exist): remove the entry"
            )));
        }
    }
}

/// [`FN_EXCEPTIONS`] (`exceptions`).
fn apply_fn_exceptions(report: &mut Report, exceptions: &[(&str, &str, usize)]) {
    for (file, name, lines, line) in &report.long_fns {
        match exceptions
            .iter()
            .find(|(f, n, _)| f == file && n == name)
        {
            None => report.problems.push(Problem {
                file: file.clone(),
                line: *line,
                message: format!(
                    "`{name}` is {lines} lines, over the budget of {FN_BUDGET}: split it into named steps"
                ),
            }),
            Some((_, _, listed)) if lines > listed => report.problems.push(Problem {
                file: file.clone(),
                line: *line,
                message: format!(
                    "`{name}` grew to {lines} lines; FN_EXCEPTIONS allows it {listed} and may only shrink: split it"
                ),
            }),
            Some(_) => {}
        }
    }
    for (f, n, listed) in exceptions {
        match report.long_fns.iter().find(|(file, name, ..)| file == f && name == n) {
            None => report.problems.push(stale(format!(
                "FN_EXCEPTIONS lists `{n}` in {f} ({listed} lines), which is now within {FN_BUDGET} lines or gone: remove the entry"
            ))),
            Some((_, _, lines, _)) if lines < listed => report.problems.push(stale(format!(
                "FN_EXCEPTIONS lists `{n}` in {f} at {listed} lines, it is now {lines}: lower the entry"
            ))),
            Some(_) => {}
        }
    }
}

/// [`CYCLES_ALLOWED`].
fn apply_cycle_exceptions(report: &mut Report) {
    for c in &report.cycles {
        let members = c.members.join(", ");
        if !CYCLES_ALLOWED
            .iter()
            .any(|(r, p, m)| *r == c.root && *p == c.parent && *m == members)
        {
            let first = c.edges.first().map(|e| e.2.clone()).unwrap_or_default();
            let (file, line) = first
                .rsplit_once(':')
                .map(|(f, l)| (f.to_owned(), l.parse().unwrap_or(1)))
                .unwrap_or((c.root.clone(), 1));
            report.problems.push(Problem {
                file,
                line,
                message: format!(
                    "import cycle under {} of {}: {} (edges listed below); move the shared piece into a leaf module",
                    c.parent, c.root, members
                ),
            });
        }
    }
    for (r, p, m) in CYCLES_ALLOWED {
        if !report
            .cycles
            .iter()
            .any(|c| c.root == *r && c.parent == *p && c.members.join(", ") == *m)
        {
            report.problems.push(stale(format!(
                "CYCLES_ALLOWED lists {m} under {p} of {r}, which is no longer a cycle: remove the entry"
            )));
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Import cycles.

/// A module of one crate: its path from the crate root and where its code is.
struct Module {
    path: Vec<String>,
    file: String,
    /// The items written in the module (for a file module, the whole file; inline, the braces).
    items: Vec<syn::Item>,
}

/// The modules of the crate whose root is `root_rel`, found by following `mod` declarations (outside
/// `#[cfg(test)]`).
fn load_crate(ws: &Path, root_rel: &str) -> anyhow::Result<Vec<Module>> {
    let mut out = Vec::new();
    let text = std::fs::read_to_string(ws.join(root_rel))
        .with_context(|| format!("reading {root_rel}"))?;
    let ast = syn::parse_file(&text).with_context(|| format!("parsing {root_rel}"))?;
    let dir = Path::new(root_rel)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    load_module(ws, Vec::new(), root_rel, dir, ast.items, &mut out)?;
    Ok(out)
}

fn load_module(
    ws: &Path,
    path: Vec<String>,
    file: &str,
    child_dir: PathBuf,
    items: Vec<syn::Item>,
    out: &mut Vec<Module>,
) -> anyhow::Result<()> {
    for item in &items {
        let syn::Item::Mod(m) = item else { continue };
        if is_cfg_test(&m.attrs) {
            continue;
        }
        let name = m.ident.to_string();
        let mut child_path = path.clone();
        child_path.push(name.clone());
        match &m.content {
            Some((_, inner)) => {
                load_module(
                    ws,
                    child_path,
                    file,
                    child_dir.join(&name),
                    inner.to_vec(),
                    out,
                )?;
            }
            None => {
                let flat = child_dir.join(format!("{name}.rs"));
                let nested = child_dir.join(&name).join("mod.rs");
                let (found, next_dir) = if ws.join(&flat).is_file() {
                    (flat, child_dir.join(&name))
                } else if ws.join(&nested).is_file() {
                    (nested, child_dir.join(&name))
                } else {
                    bail!("{file}: module {name} has no file {}", flat.display());
                };
                let rel = relative(Path::new(""), &found);
                let text = std::fs::read_to_string(ws.join(&found))
                    .with_context(|| format!("reading {rel}"))?;
                let ast = syn::parse_file(&text).with_context(|| format!("parsing {rel}"))?;
                load_module(ws, child_path, &rel, next_dir, ast.items, out)?;
            }
        }
    }
    out.push(Module {
        path,
        file: file.to_owned(),
        items,
    });
    Ok(())
}

/// The module paths one module's code names: `(path segments as written, line)`.
struct PathCollector {
    paths: Vec<(Vec<String>, usize)>,
    in_test: usize,
}

impl PathCollector {
    fn push(&mut self, segments: Vec<String>, line: usize) {
        if self.in_test == 0 && segments.len() >= 2 {
            self.paths.push((segments, line));
        }
    }

    /// `crate::a::b`, `super::x`, `self::y`, `$crate::z` and `a::b` sequences inside macro tokens.
    fn scan_tokens(&mut self, tokens: &TokenStream) {
        let trees: Vec<TokenTree> = tokens.clone().into_iter().collect();
        let mut i = 0;
        while i < trees.len() {
            if let TokenTree::Group(g) = &trees[i] {
                self.scan_tokens(&g.stream());
                i += 1;
                continue;
            }
            let TokenTree::Ident(first) = &trees[i] else {
                i += 1;
                continue;
            };
            // A path is ident (:: ident)*; `::` is two `:` puncts.
            let mut segments = vec![first.to_string()];
            let line = first.span().start().line;
            let mut j = i + 1;
            while let (
                Some(TokenTree::Punct(a)),
                Some(TokenTree::Punct(b)),
                Some(TokenTree::Ident(next)),
            ) = (trees.get(j), trees.get(j + 1), trees.get(j + 2))
            {
                if a.as_char() != ':' || b.as_char() != ':' {
                    break;
                }
                segments.push(next.to_string());
                j += 3;
            }
            if segments.len() >= 2 {
                self.push(segments, line);
            }
            i = j.max(i + 1);
        }
    }
}

impl<'ast> Visit<'ast> for PathCollector {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        // Nested modules are their own nodes (their items are collected with them).
        if matches!(item, syn::Item::Mod(_)) {
            return;
        }
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Macro(m) => &m.attrs,
            _ => &[],
        };
        let test = is_cfg_test(attrs);
        self.in_test += usize::from(test);
        syn::visit::visit_item(self, item);
        self.in_test -= usize::from(test);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        let test = is_cfg_test(&f.attrs);
        self.in_test += usize::from(test);
        syn::visit::visit_impl_item_fn(self, f);
        self.in_test -= usize::from(test);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut prefix = Vec::new();
        flatten_use(&u.tree, &mut prefix, self);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        let line = p
            .segments
            .first()
            .map(|s| s.ident.span().start().line)
            .unwrap_or(1);
        self.push(segments, line);
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.scan_tokens(&m.tokens);
        syn::visit::visit_macro(self, m);
    }
}

fn flatten_use(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut PathCollector) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut s = prefix.clone();
            s.push(n.ident.to_string());
            out.push(s, n.ident.span().start().line);
        }
        syn::UseTree::Rename(r) => {
            let mut s = prefix.clone();
            s.push(r.ident.to_string());
            out.push(s, r.ident.span().start().line);
        }
        syn::UseTree::Glob(g) => {
            let mut s = prefix.clone();
            s.push("*".to_owned());
            out.push(s, g.star_token.span.start().line);
        }
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten_use(t, prefix, out);
            }
        }
    }
}

/// The module a path written in module `at` names, if it is one of the crate's (the longest module
/// prefix of the resolved path).
fn resolve(
    at: &[String],
    written: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let mut segments = written.iter().peekable();
    let mut base: Vec<String> = match segments.peek().map(|s| s.as_str()) {
        Some("crate" | "$crate") => {
            segments.next();
            Vec::new()
        }
        Some("self") => {
            segments.next();
            at.to_vec()
        }
        Some("super") => {
            let mut b = at.to_vec();
            while segments.peek().is_some_and(|s| *s == "super") {
                segments.next();
                b.pop()?;
            }
            b
        }
        Some(first) => {
            // A bare path starts at a child of the current module, else it is another crate's or a
            // local name.
            let mut child = at.to_vec();
            child.push(first.to_string());
            if !modules.contains(&child) {
                return None;
            }
            at.to_vec()
        }
        None => return None,
    };
    for s in segments {
        let mut next = base.clone();
        next.push(s.clone());
        if modules.contains(&next) {
            base = next;
        } else {
            break;
        }
    }
    Some(base)
}

/// The cycles of the crate rooted at `root_rel`: for each directory module (the crate root included),
/// the strongly connected components of more than one child in the graph of its children.
fn cycles_of(ws: &Path, root_rel: &str) -> anyhow::Result<Vec<Cycle>> {
    let modules = load_crate(ws, root_rel)?;
    let known: BTreeSet<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    // parent → (from child → to child → first site)
    let mut graphs: BTreeMap<Vec<String>, BTreeMap<String, BTreeMap<String, String>>> =
        BTreeMap::new();
    for m in &modules {
        let mut collector = PathCollector {
            paths: Vec::new(),
            in_test: 0,
        };
        for item in &m.items {
            collector.visit_item(item);
        }
        for (written, line) in collector.paths {
            let Some(target) = resolve(&m.path, &written, &known) else {
                continue;
            };
            let common = m
                .path
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common >= m.path.len() || common >= target.len() {
                continue; // the same module, a parent naming its child, or a child its parent
            }
            let site = format!("{}:{line}", m.file);
            graphs
                .entry(m.path[..common].to_vec())
                .or_default()
                .entry(m.path[common].clone())
                .or_default()
                .entry(target[common].clone())
                .or_insert(site);
        }
    }
    let mut cycles = Vec::new();
    for (parent, graph) in &graphs {
        for component in strongly_connected(graph) {
            if component.len() < 2 {
                continue;
            }
            let mut edges = Vec::new();
            for from in &component {
                for (to, site) in graph.get(from).into_iter().flatten() {
                    if component.contains(to) {
                        edges.push((from.clone(), to.clone(), site.clone()));
                    }
                }
            }
            cycles.push(Cycle {
                root: root_rel.to_owned(),
                parent: if parent.is_empty() {
                    "crate".to_owned()
                } else {
                    format!("crate::{}", parent.join("::"))
                },
                members: component.into_iter().collect(),
                edges,
            });
        }
    }
    Ok(cycles)
}

/// Tarjan's strongly connected components of a small graph.
fn strongly_connected(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<BTreeSet<String>> {
    struct State<'g> {
        graph: &'g BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        next: usize,
        out: Vec<BTreeSet<String>>,
    }
    fn connect<'g>(s: &mut State<'g>, v: &'g str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flat_map(|e| e.keys()) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                connect(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.insert(w.to_owned());
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            connect(&mut s, v);
        }
    }
    s.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf()
    }

    /// The per-file findings of one snippet at `rel`.
    fn findings(rel: &str, text: &str) -> Report {
        let mut report = Report::default();
        check_file(rel, text, &mut report);
        report
    }

    /// A crate written to a temporary workspace: `(path, text)` pairs.
    fn cycles(files: &[(&str, &str)]) -> Vec<Cycle> {
        let dir = tempfile::tempdir().unwrap();
        for (rel, text) in files {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        cycles_of(dir.path(), "k/src/lib.rs").unwrap()
    }

    #[test]
    fn the_workspace_is_tidy() {
        let report = check(&workspace()).unwrap();
        let problems: Vec<String> = report
            .problems
            .iter()
            .map(|p| format!("{}:{}: {}", p.file, p.line, p.message))
            .collect();
        assert!(
            problems.is_empty(),
            "{}\n{}",
            problems.join("\n"),
            summary(&report)
        );
        assert!(report.files > 100, "{}", summary(&report));
    }

    #[test]
    fn a_file_without_its_one_job_line_is_reported() {
        let r = findings("k/src/a.rs", "// a plain comment\nfn f() {}\n");
        assert_eq!(r.problems.len(), 1);
        assert!(r.problems[0].message.contains("`//!`"), "{:?}", r.problems);
        let r = findings("k/src/a.rs", "\n//! The job.\nfn f() {}\n");
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn printing_is_found_outside_tests_only() {
        let text = "//! x\nfn f() {\n    println!(\"a\");\n    let _ = format!(\"{}\", { eprintln!(\"b\"); 1 });\n}\n#[cfg(test)]\nmod tests {\n    fn g() { println!(\"c\"); }\n}\n";
        let r = findings("k/src/a.rs", text);
        let lines: Vec<usize> = r.print_sites.iter().map(|p| p.line).collect();
        assert_eq!(lines, [3, 4], "{:?}", r.print_sites);
        assert!(findings("k/tests/it/a.rs", text).print_sites.is_empty());
        assert!(
            findings("fuzz/fuzz_targets/a.rs", text)
                .print_sites
                .is_empty()
        );
    }

    #[test]
    fn a_second_boolean_parser_is_found() {
        let text = "//! x\nfn flag(v: &str) -> bool {\n    matches!(v.to_ascii_lowercase().as_str(), \"yes\" | \"True\")\n}\nfn name() -> &'static str { \"on\" }\n";
        let r = findings("k/src/a.rs", text);
        assert_eq!(r.bool_parsers.len(), 1, "{:?}", r.bool_parsers);
        assert_eq!(r.bool_parsers[0].line, 2);
        assert!(r.bool_parsers[0].message.contains("`flag`"));
    }

    #[test]
    fn a_long_function_is_measured_from_fn_to_its_closing_brace() {
        let body = "    let _x = 1;\n".repeat(FN_BUDGET);
        let text = format!(
            "//! x\n/// Doc.\nfn long() {{\n{body}}}\nstruct S;\nimpl S {{\n    fn short(&self) {{}}\n}}\n"
        );
        let r = findings("k/src/a.rs", &text);
        assert_eq!(
            r.long_fns,
            [("k/src/a.rs".to_owned(), "long".to_owned(), FN_BUDGET + 2, 3)]
        );
        let fits = "    let _x = 1;\n".repeat(FN_BUDGET - 2);
        let r = findings("k/src/a.rs", &format!("//! x\nfn fits() {{\n{fits}}}\n"));
        assert!(r.long_fns.is_empty(), "{:?}", r.long_fns);
    }

    #[test]
    fn a_listed_function_may_shrink_but_not_grow_and_a_fixed_one_leaves_the_list() {
        let (file, name, listed) = ("k/src/a.rs", "Big::run", 150);
        let exceptions = [(file, name, listed), ("k/src/b.rs", "other", 120)];
        let mut report = Report::default();
        report
            .long_fns
            .push((file.into(), name.into(), listed + 1, 7));
        report
            .long_fns
            .push(("k/src/b.rs".into(), "other".into(), 110, 3));
        apply_fn_exceptions(&mut report, &exceptions);
        let messages: Vec<&str> = report.problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert_eq!(
            (report.problems[0].file.as_str(), report.problems[0].line),
            (file, 7)
        );
        assert!(messages[0].contains("grew to 151"), "{messages:?}");
        assert!(
            messages[1].contains("at 120 lines, it is now 110: lower the entry"),
            "{messages:?}"
        );
        // Back within the budget: the entry must go.
        report.problems.clear();
        report.long_fns.retain(|(f, ..)| f != file);
        report.long_fns[0].2 = 120;
        apply_fn_exceptions(&mut report, &exceptions);
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].message.contains("remove the entry"));
    }

    #[test]
    fn a_top_level_cycle_is_printed_with_its_edges() {
        let found = cycles(&[
            (
                "k/src/lib.rs",
                "//! k\nmod a;\nmod b;\nmod c;\npub use a::A;\n",
            ),
            ("k/src/a.rs", "//! a\nuse crate::b::B;\npub struct A(B);\n"),
            (
                "k/src/b.rs",
                "//! b\npub struct B;\nfn f() -> String { format!(\"{}\", crate::a::name()) }\n",
            ),
            // c names a and its parent: no cycle through c.
            (
                "k/src/c.rs",
                "//! c\nuse crate::a::A;\nuse crate::A as Again;\n",
            ),
        ]);
        assert_eq!(found.len(), 1, "{found:?}");
        let c = &found[0];
        assert_eq!(
            (c.parent.as_str(), c.members.as_slice()),
            ("crate", &["a".to_owned(), "b".to_owned()][..])
        );
        assert_eq!(
            c.edges,
            [
                ("a".to_owned(), "b".to_owned(), "k/src/a.rs:2".to_owned()),
                ("b".to_owned(), "a".to_owned(), "k/src/b.rs:3".to_owned()),
            ]
        );
        assert!(describe_cycle(c).contains("a → b at k/src/a.rs:2"));
    }

    #[test]
    fn sibling_cycles_count_and_parent_child_and_test_code_do_not() {
        let found = cycles(&[
            ("k/src/lib.rs", "//! k\nmod d;\nmod e;\n"),
            ("k/src/d/mod.rs", "//! d\nmod x;\nmod y;\nuse x::X;\n"),
            (
                "k/src/d/x.rs",
                "//! x\npub struct X;\nfn f() { super::y::g() }\n",
            ),
            (
                "k/src/d/y.rs",
                "//! y\npub fn g() {}\nuse super::x::X;\nuse super::*;\n",
            ),
            // e ↔ d only through test code and a parent naming its child.
            (
                "k/src/e.rs",
                "//! e\n#[cfg(test)]\nuse crate::d::x;\n#[cfg(test)]\nmod tests { use crate::d::y; }\n",
            ),
        ]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].parent, "crate::d");
        assert_eq!(found[0].members, ["x", "y"]);
        let clean = cycles(&[
            ("k/src/lib.rs", "//! k\nmod a;\nmod b;\n"),
            ("k/src/a.rs", "//! a\nuse crate::b::B;\npub struct A;\n"),
            (
                "k/src/b.rs",
                "//! b\npub struct B;\n#[cfg(test)]\nuse crate::a::A;\n",
            ),
        ]);
        assert!(clean.is_empty(), "{clean:?}");
    }
}
