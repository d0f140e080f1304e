//! Component files, layering, interpolation, secrets, explain and `.env` quoting, end to end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use machine_model::components::{
    ComponentFile, ComponentSet, DefaultVar, Diagnostic, EnvFallback, EnvVar, Origin, Part,
    ResolveInput, Resolved, SecretDecls, Selection, Source, dotenv_file, dotenv_line,
    expand_runtime, explain,
};

// ---------------------------------------------------------------------------------------------------------------
// Helpers

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/components")
}

fn fixtures() -> ComponentSet {
    let (set, diags) = ComponentSet::load_dir_as(&fixture_dir(), "fixtures");
    assert!(diags.is_empty(), "fixtures must parse cleanly: {diags:#?}");
    set
}

/// Every diagnostic of parsing `text` as `t.env`, one line each.
fn parse_diags(text: &str) -> Vec<String> {
    ComponentFile::parse("t.env", text)
        .1
        .iter()
        .map(Diagnostic::one_line)
        .collect()
}

fn check_parse(text: &str, expected: &[&str]) {
    assert_eq!(parse_diags(text), expected, "diagnostics of:\n{text}");
}

/// The entries of section `section` of a file that must parse cleanly, as `(key, value source)`.
fn section_values(text: &str, section: &str) -> Vec<(String, String)> {
    let (file, diags) = ComponentFile::parse("t.env", text);
    assert!(diags.is_empty(), "{diags:#?}");
    let file = file.unwrap();
    let section = file.section(section).expect("section exists");
    section
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value.source()))
        .collect()
}

fn sel(component: &str, sections: &[&str]) -> Selection {
    Selection::new(component, sections.iter().copied())
}

struct Case<'a> {
    selection: Vec<Selection>,
    env: Vec<EnvVar>,
    defaults: Vec<DefaultVar>,
    secrets: SecretDecls,
    fallback: EnvFallback<'a>,
}

impl<'a> Case<'a> {
    fn new(selection: Vec<Selection>) -> Self {
        Case {
            selection,
            env: Vec::new(),
            defaults: Vec::new(),
            secrets: SecretDecls::new(),
            fallback: EnvFallback::Deny,
        }
    }

    fn resolve(&self, set: &ComponentSet) -> Result<Resolved, Vec<Diagnostic>> {
        let input = ResolveInput {
            profile: "test-profile",
            profile_file: "profiles/test-profile.json",
            selection: &self.selection,
            defaults: &self.defaults,
            env: &self.env,
            secrets: &self.secrets,
            env_fallback: self.fallback,
        };
        machine_model::components::resolve(set, &input)
    }
}

fn ok(result: Result<Resolved, Vec<Diagnostic>>) -> Resolved {
    match result {
        Ok(r) => r,
        Err(diags) => panic!(
            "resolve failed:\n{}",
            diags
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn errs(result: Result<Resolved, Vec<Diagnostic>>) -> Vec<String> {
    match result {
        Ok(r) => panic!(
            "resolve succeeded: {:?}",
            r.vars().iter().map(|v| &v.name).collect::<Vec<_>>()
        ),
        Err(diags) => diags.iter().map(Diagnostic::one_line).collect(),
    }
}

fn value(r: &Resolved, name: &str) -> String {
    r.get(name)
        .unwrap_or_else(|| panic!("{name} is not defined"))
        .value
        .masked()
}

/// A set built from in-memory `(name, text)` component files.
fn set_of(files: &[(&str, &str)]) -> ComponentSet {
    let paths: Vec<String> = files.iter().map(|(n, _)| format!("c/{n}.env")).collect();
    let (set, diags) = ComponentSet::from_texts(
        "c",
        files
            .iter()
            .zip(&paths)
            .map(|((n, t), p)| (*n, p.as_str(), *t)),
    );
    assert!(diags.is_empty(), "{diags:#?}");
    set
}

// ---------------------------------------------------------------------------------------------------------------
// Parser

#[test]
fn parser_reads_the_fixture_dialect() {
    let set = fixtures();
    assert_eq!(
        set.names().collect::<Vec<_>>(),
        ["api", "comfyui", "machine", "openai", "redis", "simulation"]
    );
    let redis = set.get("redis").unwrap();
    assert_eq!(redis.namespace, "REDIS");
    assert_eq!(
        redis.section_names().collect::<Vec<_>>(),
        ["default", "local", "remote", "empty"]
    );
    assert!(
        redis.section("empty").unwrap().entries.is_empty(),
        "an empty section exists and is empty"
    );
    assert_eq!(redis.section("remote").unwrap().secrets[0].key, "PASSWORD");
    assert_eq!(set.get("openai").unwrap().secrets[0].key, "API_KEY");
}

#[test]
fn parser_values_are_literal_strings_to_the_end_of_the_line() {
    let text = "NAMESPACE=X\n[s]\nURL=https://x.example/p?a=b#frag\nSEMI=a;b\nFLAG=true\nNULL=null\nEQ=a=b=c\n  SPACED  =  two words  \nEMPTY=\nHASH=#start\n";
    assert_eq!(
        section_values(text, "s"),
        [
            ("URL", "https://x.example/p?a=b#frag"),
            ("SEMI", "a;b"),
            ("FLAG", "true"),
            ("NULL", "null"),
            ("EQ", "a=b=c"),
            ("SPACED", "two words"),
            ("EMPTY", ""),
            ("HASH", "#start"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
}

#[test]
fn parser_comments_are_full_lines_only() {
    let text = "# hash comment\n; semicolon comment\n   # indented\nNAMESPACE=X\n\n[s]\n; between\nA=1\n#B=2\n";
    assert_eq!(
        section_values(text, "s"),
        [("A".to_owned(), "1".to_owned())]
    );
    check_parse(
        "NAMESPACE=X\n[s]\nA=value # not a comment\nB=v\t;x\n",
        &[
            "t.env:3:9: error: `#` after a space in an unquoted value: inline comments are not supported, and the old parser cut the value here (help: move the comment to its own line, or quote the value ('...') to keep the `#` as text)",
            "t.env:4:5: error: `;` after a space in an unquoted value: inline comments are not supported, and the old parser cut the value here (help: move the comment to its own line, or quote the value ('...') to keep the `;` as text)",
        ],
    );
}

#[test]
fn parser_quotes_strip_one_matching_pair_with_defined_escapes() {
    let text = concat!(
        "NAMESPACE=X\n[s]\n",
        "D=\"  two  words # kept \"\n",
        "S='  it's # kept '\n",
        "E=\"q\\\" b\\\\ n\\n t\\t d\\$ ${X_D}\"\n",
        "L='${X_D} \\n $$ literal'\n",
        "INNER=\"say \"hi\"\"\n",
        "U=a\\nb\n",
        "Q='\"'\n",
        "EMPTY_D=\"\"\n",
        "EMPTY_S=''\n",
    );
    let values = section_values(text, "s");
    let get = |k: &str| values.iter().find(|(key, _)| key == k).unwrap().1.clone();
    assert_eq!(get("D"), "  two  words # kept ");
    assert_eq!(get("S"), "  it's # kept ");
    // Sources write `$` as `$$`; the reference stays a reference.
    assert_eq!(get("E"), "q\" b\\ n\n t\t d$$ ${X_D}");
    assert_eq!(get("L"), "$${X_D} \\n $$$$ literal");
    assert_eq!(get("INNER"), "say \"hi\"");
    assert_eq!(get("U"), "a\\nb");
    assert_eq!(get("Q"), "\"");
    assert_eq!(get("EMPTY_D"), "");
    assert_eq!(get("EMPTY_S"), "");
}

#[test]
fn parser_reports_quote_errors() {
    check_parse(
        "NAMESPACE=X\n[s]\nA=\"open\nB='open\nC=\"bad \\q escape\"\nD=\"trailing\\\"\nE=\"x\" # comment\n",
        &[
            "t.env:3:3: error: value starts with \" but does not end with it (help: close the quote at the end of the line; comments go on their own line, and a value that should start with \" is written inside the other kind of quotes)",
            "t.env:4:3: error: value starts with ' but does not end with it (help: close the quote at the end of the line; comments go on their own line, and a value that should start with ' is written inside the other kind of quotes)",
            "t.env:5:8: error: unknown escape `\\q` in a double-quoted value (help: the escapes are \\\" \\\\ \\n \\t \\$; write `\\\\` for a backslash, or use single quotes where everything is literal)",
            "t.env:6:12: error: a double-quoted value ends with a lone backslash (help: write `\\\\` for a backslash)",
            "t.env:7:3: error: value starts with \" but does not end with it (help: close the quote at the end of the line; comments go on their own line, and a value that should start with \" is written inside the other kind of quotes)",
        ],
    );
}

#[test]
fn parser_rejects_lines_without_equals_and_array_keys() {
    check_parse(
        "NAMESPACE=X\n[s]\nFLAG\nLIST[]=a\nLIST[]\n",
        &[
            "t.env:3:1: error: line has no `=`: `FLAG` (help: write `KEY=VALUE` (a bare key does not mean `true`; write `KEY=true`), or start a comment with `#`)",
            "t.env:4:1: error: array key `LIST[]` is not supported: values are strings (help: write `LIST=a,b,c` and split the string where it is used)",
            "t.env:5:1: error: line has no `=`: `LIST[]` (help: array keys are not supported; write one `KEY=VALUE` per line with a string value)",
        ],
    );
}

#[test]
fn parser_checks_key_syntax() {
    check_parse(
        "NAMESPACE=X\n[s]\nbad-key=1\n9LIVES=1\nexport A=1\n=v\nok_Key9=1\n_x=1\n",
        &[
            "t.env:3:1: error: invalid key `bad-key` (help: keys are letters, digits and `_`, not starting with a digit (for example `BASE_URL`))",
            "t.env:4:1: error: invalid key `9LIVES` (help: keys are letters, digits and `_`, not starting with a digit (for example `BASE_URL`))",
            "t.env:5:1: error: invalid key `export A` (help: remove `export`: write `A=...`)",
            "t.env:6:1: error: missing key before `=` (help: write `KEY=VALUE`)",
        ],
    );
}

#[test]
fn parser_checks_sections() {
    check_parse(
        "NAMESPACE=X\n[a.b]\n[]\n[bad name]\n[ok] # c\n[open\n[ spaced ]\nA=1\n",
        &[
            "t.env:2:1: error: dotted section name `[a.b]`: a profile cannot select it (help: rename it to `[a-b]`; section names are letters, digits, `_` and `-`)",
            "t.env:3:1: error: empty section name `[]` (help: write the header as `[name]`)",
            "t.env:4:1: error: invalid section name `[bad name]` (help: section names are letters, digits, `_` and `-`, starting with a letter or digit)",
            "t.env:5:1: error: unexpected text `# c` after the section header (help: comments go on their own line, starting with `#` or `;`)",
            "t.env:6:1: error: section header without a closing `]` (help: write the header as `[name]`)",
        ],
    );
    // Spaces inside the brackets are trimmed.
    assert_eq!(
        section_values("NAMESPACE=X\n[ spaced ]\nA=1\n", "spaced").len(),
        1
    );
}

#[test]
fn parser_reports_duplicate_sections_and_keys() {
    check_parse(
        "NAMESPACE=X\n[a]\nK=1\nK=2\n[b]\nK=3\n[a]\nK=4\nL=5\n",
        &[
            "t.env:4:1: error: duplicate key K in section [a], first set at line 3 (help: remove one of the two lines; within a section a key is set once)",
            "t.env:7:1: error: duplicate section `[a]`, first declared at line 2 (help: merge the two blocks into one section)",
            "t.env:8:1: error: duplicate key K in section [a], first set at line 3 (help: remove one of the two lines; within a section a key is set once)",
        ],
    );
}

#[test]
fn parser_requires_namespace_first() {
    let missing = "(help: add a first line such as `NAMESPACE=REDIS`; keys are then prefixed, `URL` becomes `REDIS_URL`)";
    assert_eq!(
        parse_diags(""),
        [format!(
            "t.env:1:1: error: missing NAMESPACE: a component file starts with NAMESPACE=<NAME> {missing}"
        )]
    );
    assert_eq!(
        parse_diags("# only a comment\n[s]\nA=1\n"),
        [format!(
            "t.env:2:1: error: missing NAMESPACE: a component file starts with NAMESPACE=<NAME>, before any other line {missing}"
        )]
    );
    assert_eq!(
        parse_diags("URL=x\n"),
        [format!(
            "t.env:1:1: error: missing NAMESPACE: the first line is `URL=...`, but a component file starts with NAMESPACE=<NAME> {missing}"
        )]
    );
    check_parse(
        "[s]\nA=1\nNAMESPACE=LATE\n",
        &[
            "t.env:1:1: error: missing NAMESPACE: a component file starts with NAMESPACE=<NAME>, before any other line (help: add a first line such as `NAMESPACE=REDIS`; keys are then prefixed, `URL` becomes `REDIS_URL`)",
            "t.env:3:1: error: NAMESPACE must be the first line of a component file, before any section, key or `@secret` (help: move `NAMESPACE=...` to the top of the file (only comments may come before it))",
        ],
    );
    check_parse(
        "NAMESPACE=A\nNAMESPACE=B\n[s]\n",
        &[
            "t.env:2:1: error: duplicate NAMESPACE, first set at line 1 (help: a component file has one NAMESPACE, on its first line)",
        ],
    );
    check_parse(
        "NAMESPACE=\"REDIS\"\n",
        &[
            "t.env:1:11: error: invalid NAMESPACE `\"REDIS\"` (help: a namespace is letters, digits and `_`, not starting with a digit, unquoted (for example `NAMESPACE=REDIS`))",
        ],
    );
    check_parse(
        "NAMESPACE=X\nA=1\n[s]\n",
        &[
            "t.env:2:1: error: `A` is outside any section (help: put `KEY=VALUE` lines under a `[section]` header; only NAMESPACE and `@secret` lines come before the first section)",
        ],
    );
    // A file without a namespace is not returned; with one, it is.
    assert!(ComponentFile::parse("t.env", "[s]\n").0.is_none());
    assert!(
        ComponentFile::parse("t.env", "NAMESPACE=X\n[s]\nbad line\n")
            .0
            .is_some()
    );
}

#[test]
fn parser_accepts_crlf_and_bom_with_the_same_result() {
    let lf = "NAMESPACE=X\n[s]\nA=1\nB='two words'\n[empty]\n";
    let crlf = format!("\u{feff}{}", lf.replace('\n', "\r\n"));
    let (a, da) = ComponentFile::parse("t.env", lf);
    let (b, db) = ComponentFile::parse("t.env", &crlf);
    assert!(da.is_empty() && db.is_empty(), "{da:?} {db:?}");
    assert_eq!(a, b);
    // Positions are unchanged by the CR.
    check_parse(
        "NAMESPACE=X\r\n[s]\r\nA=${B\r\n",
        &[
            "t.env:3:3: error: unterminated reference `${B`: no closing `}` (help: close the reference with `}`)",
        ],
    );
}

#[test]
fn parser_secret_markers() {
    let (file, diags) = ComponentFile::parse(
        "t.env",
        "NAMESPACE=X\n@secret TOKEN\n[s]\n@secret PASSWORD\nUSER=me\n",
    );
    assert!(diags.is_empty(), "{diags:?}");
    let file = file.unwrap();
    assert_eq!(file.secrets[0].key, "TOKEN");
    assert_eq!(file.section("s").unwrap().secrets[0].key, "PASSWORD");
    check_parse(
        "NAMESPACE=X\n@secret TOKEN=abc\n@secrets A\n@secret\n@secret A B\n[s]\n@secret P\nP=1\nQ=1\n@secret Q\n@secret P\n",
        &[
            "t.env:2:1: error: a secret marker takes a name only: `@secret KEY` (help: secret values never go into component files; put the value in the git-ignored secrets file or the environment)",
            "t.env:3:1: error: unknown directive `@secrets` (help: the only directive is `@secret KEY`)",
            "t.env:4:1: error: `@secret` needs a key (help: write one `@secret KEY` line per key; keys are letters, digits and `_`, not starting with a digit)",
            "t.env:5:1: error: invalid key `A B` in `@secret` (help: write one `@secret KEY` line per key; keys are letters, digits and `_`, not starting with a digit)",
            "t.env:8:1: error: P is marked secret at line 7 but section [s] gives it a value (help: remove the value from the component file; secrets come from the secrets file or the environment)",
            "t.env:10:1: error: Q is marked secret but section [s] gives it a value at line 9 (help: remove the value from the component file; secrets come from the secrets file or the environment)",
            "t.env:11:1: error: duplicate `@secret P` in section [s], first at line 7 (help: remove this line)",
        ],
    );
    // The secret's value never appears in the message.
    let diags = parse_diags("NAMESPACE=X\n@secret TOKEN=canary-7f3a\n");
    assert!(
        !diags.iter().any(|d| d.contains("canary-7f3a")),
        "{diags:?}"
    );
}

#[test]
fn parser_reports_bad_references_with_columns() {
    check_parse(
        "NAMESPACE=X\n[s]\nA=pa$HOME\nB=${}\nC=${A:=x}\nD=\"${A\"\n",
        &[
            "t.env:3:5: error: `$HOME` is not a reference here; references need braces (help: write `${HOME}` for the value of HOME, or `$$HOME` for the literal text)",
            "t.env:4:3: error: a reference needs a variable name: `${` must be followed by letters, digits or `_` (help: write `${NAME}`, or `$$` for a literal `$`)",
            "t.env:5:6: error: unsupported `:` in reference to A (help: the forms are ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message} and ${NAME?message})",
            "t.env:6:4: error: unterminated reference `${A`: no closing `}` (help: close the reference with `}`)",
        ],
    );
}

#[test]
fn load_dir_reports_every_file_and_skips_other_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.env"), "NAMESPACE=GOOD\n[a]\nK=1\n").unwrap();
    std::fs::write(dir.path().join("bad.env"), "[a]\nK\n").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a component").unwrap();
    std::fs::write(dir.path().join("x.env.example"), "ignored").unwrap();
    let (set, diags) = ComponentSet::load_dir_as(dir.path(), "components");
    assert_eq!(set.names().collect::<Vec<_>>(), ["good"]);
    assert!(set.is_broken("bad"));
    let lines: Vec<String> = diags.iter().map(Diagnostic::one_line).collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].starts_with("components/bad.env:1:1: error: missing NAMESPACE"),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with("components/bad.env:2:1: error: line has no `=`"),
        "{lines:#?}"
    );
    // Selecting the broken component names the profile and the file, once.
    let r = Case::new(vec![sel("bad", &["a"]), sel("good", &["a"])]).resolve(&set);
    assert_eq!(
        errs(r),
        [
            "profiles/test-profile.json: error: profile test-profile selects component bad, whose file components/bad.env cannot be used (help: fix the errors reported for components/bad.env)"
        ]
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Layering

#[test]
fn layering_later_sections_win_and_references_bind_late() {
    let set = fixtures();
    let r = ok(Case::new(vec![sel("redis", &["default", "local"])]).resolve(&set));
    assert_eq!(value(&r, "REDIS_HOST"), "redis");
    // URL is written in [default] but sees [local]'s HOST.
    assert_eq!(value(&r, "REDIS_URL"), "redis://redis:6379");
    let host = r.get("REDIS_HOST").unwrap();
    assert!(matches!(&host.origin, Origin::Component { section, .. } if section == "local"));
    assert_eq!(host.shadowed.len(), 1);
    assert_eq!(host.shadowed[0].raw, "localhost");

    let reversed = ok(Case::new(vec![sel("redis", &["local", "default"])]).resolve(&set));
    assert_eq!(value(&reversed, "REDIS_URL"), "redis://localhost:6379");

    let names: Vec<&str> = r.vars().iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["REDIS_PORT", "REDIS_HOST", "REDIS_URL"]);
}

#[test]
fn layering_profile_env_wins_and_defaults_lose() {
    let set = fixtures();
    let mut case = Case::new(vec![
        sel("machine", &["default", "local"]),
        sel("redis", &["default", "local"]),
    ]);
    case.env = vec![
        EnvVar::new("MACHINE_LOG_LEVEL", "trace"),
        EnvVar::new("EXTRA", "${REDIS_URL}/0"),
    ];
    case.defaults = vec![
        DefaultVar {
            name: "MACHINE_LOG_LEVEL".into(),
            value: "error".into(),
            by: "catalog".into(),
        },
        DefaultVar {
            name: "ONLY_DEFAULT".into(),
            value: "d".into(),
            by: "catalog".into(),
        },
    ];
    let r = ok(case.resolve(&set));
    assert_eq!(value(&r, "MACHINE_LOG_LEVEL"), "trace");
    assert_eq!(value(&r, "ONLY_DEFAULT"), "d");
    assert_eq!(value(&r, "EXTRA"), "redis://redis:6379/0");
    let level = r.get("MACHINE_LOG_LEVEL").unwrap();
    assert!(matches!(level.origin, Origin::Profile { .. }));
    let raws: Vec<&str> = level.shadowed.iter().map(|s| s.raw.as_str()).collect();
    assert_eq!(raws, ["error", "info", "debug"]);
}

#[test]
fn layering_components_merge_in_profile_order_and_clashes_warn() {
    let set = set_of(&[
        ("first", "NAMESPACE=X\n[s]\nA=first\n"),
        ("second", "NAMESPACE=X\n[s]\nA=second\n"),
    ]);
    let r = ok(Case::new(vec![sel("second", &["s"]), sel("first", &["s"])]).resolve(&set));
    assert_eq!(value(&r, "X_A"), "first");
    let warnings: Vec<String> = r.warnings.iter().map(Diagnostic::one_line).collect();
    assert_eq!(
        warnings,
        [
            "c/first.env:3:3: warning: X_A from component first overrides the value from component second (c/second.env:3 section [s] of component second) (help: give the components different NAMESPACEs, or set the value in the profile env)"
        ]
    );
    let r = ok(Case::new(vec![sel("first", &["s"]), sel("second", &["s"])]).resolve(&set));
    assert_eq!(value(&r, "X_A"), "second");
}

#[test]
fn layering_missing_component_and_section_name_everything() {
    let set = fixtures();
    let mut redis = sel("redis", &["default", "remotedev"]);
    redis.position = Some(machine_model::components::Position::new(4, 14));
    let lines = errs(
        Case::new(vec![
            redis,
            sel("redsi", &["local"]),
            sel("machine", &["staging"]),
        ])
        .resolve(&set),
    );
    assert_eq!(
        lines,
        [
            "profiles/test-profile.json:4:14: error: profile test-profile selects section \"remotedev\" of component redis, which does not exist; fixtures/redis.env has sections \"default\", \"local\", \"remote\", \"empty\" (help: did you mean \"remote\"? select one of the existing sections or add [remotedev] to fixtures/redis.env)",
            "profiles/test-profile.json: error: profile test-profile selects component \"redsi\", but there is no fixtures/redsi.env (help: did you mean \"redis\"? the components are \"api\", \"comfyui\", \"machine\", \"openai\", \"redis\", \"simulation\")",
            "profiles/test-profile.json: error: profile test-profile selects section \"staging\" of component machine, which does not exist; fixtures/machine.env has sections \"default\", \"local\", \"prod\" (help: select one of the existing sections or add [staging] to fixtures/machine.env)",
        ]
    );
    let lines = errs(
        Case::new(vec![
            sel("redis", &[]),
            sel("api", &["local", "local"]),
            sel("api", &["remote"]),
        ])
        .resolve(&set),
    );
    assert_eq!(
        lines,
        [
            "profiles/test-profile.json: error: profile test-profile selects no section of component redis (help: name one section or a list; fixtures/redis.env has sections \"default\", \"local\", \"remote\", \"empty\")",
            "profiles/test-profile.json: error: profile test-profile selects section \"local\" of component api twice",
            "profiles/test-profile.json: error: profile test-profile selects component api twice",
        ]
    );
}

#[test]
fn all_errors_are_reported_in_one_run() {
    let set = set_of(&[("a", "NAMESPACE=A\n[s]\nX=${A_NOPE}\nY=${A_Y}\n")]);
    let mut case = Case::new(vec![sel("a", &["s", "missing"]), sel("ghost", &["s"])]);
    case.env = vec![EnvVar::new("bad name", "1"), EnvVar::new("E", "${")];
    let lines = errs(case.resolve(&set));
    assert_eq!(lines.len(), 4, "{lines:#?}");
    // Interpolation errors come after the structural ones: both kinds in one run needs a structurally valid input.
    let lines = errs(Case::new(vec![sel("a", &["s"])]).resolve(&set));
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[0].contains("unresolved reference ${A_NOPE}"),
        "{lines:#?}"
    );
    assert!(
        lines[1].contains("reference cycle: A_Y -> A_Y"),
        "{lines:#?}"
    );
}

#[test]
fn errors_in_values_do_not_cascade_into_their_references() {
    // B's line is rejected by the parser; A refers to it: A fails with one line that points at B, and B's own
    // error is not repeated as an unresolved reference.
    let (set, diags) = ComponentSet::from_texts(
        "c",
        [("v", "c/v.env", "NAMESPACE=V\n[s]\nA=${V_B}\nB=${\n")],
    );
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert_eq!(
        errs(Case::new(vec![sel("v", &["s"])]).resolve(&set)),
        [
            "c/v.env:3:3: error: V_A refers to V_B, whose value has an error (help: fix the error reported for V_B)"
        ]
    );
    // The same for a bad profile env value; secret-value errors come with interpolation errors in one run.
    let set = set_of(&[(
        "v",
        "NAMESPACE=V\n@secret KEY\n[s]\nKEY=committed\nA=${E}\nC=${NOPE}\n",
    )]);
    let mut case = Case::new(vec![sel("v", &["s"])]);
    case.env = vec![EnvVar::new("E", "${")];
    let lines = errs(case.resolve(&set));
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines[0].starts_with("profiles/test-profile.json: error: profile env variable E: a reference needs a variable name"), "{lines:#?}");
    assert!(lines[1].contains("V_KEY is a secret"), "{lines:#?}");
    assert!(
        lines[2].contains("V_A refers to E, whose value has an error"),
        "{lines:#?}"
    );
    assert!(
        lines[3].contains("unresolved reference ${NOPE}"),
        "{lines:#?}"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Interpolation

fn interpolate(values: &str) -> Result<Resolved, Vec<Diagnostic>> {
    let text = format!("NAMESPACE=V\n[s]\n{values}");
    let set = set_of(&[("v", &text)]);
    Case::new(vec![sel("v", &["s"])]).resolve(&set)
}

#[test]
fn interpolation_defaults_and_presence() {
    let r = ok(interpolate(concat!(
        "EMPTY=\n",
        "SET=x\n",
        "A=${V_UNSET:-dflt}\n",
        "B=${V_EMPTY:-dflt}\n",
        "C=${V_EMPTY-dflt}\n",
        "D=${V_UNSET-dflt}\n",
        "E=${V_SET:-dflt}\n",
        "F=[${V_EMPTY}]\n",
        "G=${V_UNSET:-${V_SET}-${V_UNSET2:-deep}}\n",
        "H=${V_UNSET:-}\n",
        "I=${V_EMPTY?}\n",
    )));
    for (name, expected) in [
        ("V_A", "dflt"),
        ("V_B", "dflt"),
        ("V_C", ""),
        ("V_D", "dflt"),
        ("V_E", "x"),
        ("V_F", "[]"),
        ("V_G", "x-deep"),
        ("V_H", ""),
        ("V_I", ""),
    ] {
        assert_eq!(value(&r, name), expected, "{name}");
    }
    let sources: Vec<(&str, &Source)> = r
        .get("V_G")
        .unwrap()
        .expansions
        .iter()
        .map(|e| (e.name.as_str(), &e.source))
        .collect();
    assert_eq!(
        sources,
        [
            ("V_UNSET", &Source::Default),
            ("V_SET", &Source::Variable),
            ("V_UNSET2", &Source::Default)
        ]
    );
}

#[test]
fn interpolation_required() {
    assert_eq!(
        errs(interpolate(
            "EMPTY=\nA=${V_MISSING:?set V_MISSING to the API host}\nB=${V_EMPTY:?}\nC=${V_EMPTY?fine}\n"
        )),
        [
            "c/v.env:4:3: error: V_MISSING is not set, required by the value of V_A: set V_MISSING to the API host (help: set V_MISSING in a selected component section or the profile env)",
            "c/v.env:5:3: error: V_EMPTY is empty, required by the value of V_B: V_EMPTY is required (help: set V_EMPTY in a selected component section or the profile env)",
        ]
    );
}

#[test]
fn interpolation_escapes() {
    let r = ok(interpolate(
        "A=5$$ and $$${V_B}\nB=b\nC=\"\\$${V_B}\"\nD='${V_B}'\nE=100$ and $ alone\n",
    ));
    assert_eq!(value(&r, "V_A"), "5$ and $b");
    assert_eq!(value(&r, "V_C"), "$b");
    assert_eq!(value(&r, "V_D"), "${V_B}");
    assert_eq!(value(&r, "V_E"), "100$ and $ alone");
}

#[test]
fn interpolation_chains_resolve_and_cycles_show_the_chain() {
    let r = ok(interpolate("A=${V_B}/a\nB=${V_C}/b\nC=c\n"));
    assert_eq!(value(&r, "V_A"), "c/b/a");
    assert_eq!(
        errs(interpolate(
            "A=${V_B}\nB=${V_C}\nC=x${V_A}\nD=${V_A}\nSELF=${V_SELF}\n"
        )),
        [
            "c/v.env:5:4: error: reference cycle: V_A -> V_B -> V_C -> V_A (help: break the cycle by giving one of these variables a literal value)",
            "c/v.env:7:6: error: reference cycle: V_SELF -> V_SELF (help: break the cycle by giving one of these variables a literal value)",
        ]
    );
}

#[test]
fn interpolation_unresolved_is_an_error_with_location_and_suggestion() {
    assert_eq!(
        errs(interpolate("HOST=h\nURL=http://${V_HOTS}:${NOWHERE}/\n")),
        [
            "c/v.env:4:12: error: unresolved reference ${V_HOTS} in the value of V_URL (help: did you mean ${V_HOST}? otherwise define V_HOTS in a selected component section or the profile env, declare it as a secret, or give a default with `${V_HOTS:-value}`)",
            "c/v.env:4:22: error: unresolved reference ${NOWHERE} in the value of V_URL (help: define NOWHERE in a selected component section or the profile env, declare it as a secret, or give a default with `${NOWHERE:-value}`)",
        ]
    );
}

#[test]
fn interpolation_never_falls_back_to_the_environment_unless_asked() {
    let set = set_of(&[("v", "NAMESPACE=V\n[s]\nA=${FROM_ENV}/x\nB=${FROM_ENV:-d}\n")]);
    let lines = errs(Case::new(vec![sel("v", &["s"])]).resolve(&set));
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].contains("unresolved reference ${FROM_ENV}"),
        "{lines:?}"
    );

    let lookup = |name: &str| (name == "FROM_ENV").then(|| "shell".to_owned());
    let mut case = Case::new(vec![sel("v", &["s"])]);
    case.fallback = EnvFallback::Allow(&lookup);
    let r = ok(case.resolve(&set));
    assert_eq!(value(&r, "V_A"), "shell/x");
    assert_eq!(value(&r, "V_B"), "shell");
    assert_eq!(
        r.get("V_A").unwrap().expansions[0].source,
        Source::Environment
    );
    assert!(
        explain(&r, "V_A")
            .unwrap()
            .to_string()
            .contains("expands ${FROM_ENV}: from the environment (fallback enabled)")
    );
}

#[test]
fn interpolation_keeps_secret_references() {
    let set = fixtures();
    let mut case = Case::new(vec![
        sel("redis", &["default", "remote"]),
        sel("openai", &["default"]),
    ]);
    case.secrets
        .declare("REPLICATE_API_TOKEN", "connector replicate");
    case.env = vec![EnvVar::new(
        "REPLICATE_HEADER",
        "Token ${REPLICATE_API_TOKEN}",
    )];
    let r = ok(case.resolve(&set));
    let url = &r.get("REDIS_URL").unwrap().value;
    assert_eq!(
        url.parts(),
        [
            Part::Text("rediss://default:".into()),
            Part::Secret("REDIS_PASSWORD".into()),
            Part::Text("@redis.example.net:6379".into())
        ]
    );
    assert_eq!(
        url.to_template(),
        "rediss://default:${REDIS_PASSWORD}@redis.example.net:6379"
    );
    assert_eq!(url.as_literal(), None);
    assert_eq!(
        value(&r, "OPENAI_AUTH_HEADER"),
        "Bearer <secret OPENAI_API_KEY>"
    );
    assert_eq!(value(&r, "OPENAI_API_KEY"), "<secret OPENAI_API_KEY>");
    assert_eq!(
        r.get("REPLICATE_HEADER").unwrap().value.to_template(),
        "Token ${REPLICATE_API_TOKEN}"
    );
    // The runtime fills the references from its environment.
    let env = |n: &str| (n == "REDIS_PASSWORD").then(|| "pw".to_owned());
    assert_eq!(
        expand_runtime(&url.to_template(), &env).unwrap(),
        "rediss://default:pw@redis.example.net:6379"
    );

    let secrets: Vec<(String, Vec<String>)> = r
        .secrets()
        .into_iter()
        .map(|s| (s.name, s.needed_by))
        .collect();
    assert_eq!(
        secrets,
        [
            (
                "OPENAI_API_KEY".to_owned(),
                vec![
                    "fixtures/openai.env:3 (component openai)".to_owned(),
                    "variable OPENAI_AUTH_HEADER".to_owned()
                ]
            ),
            (
                "REDIS_PASSWORD".to_owned(),
                vec![
                    "fixtures/redis.env:15 section [remote]".to_owned(),
                    "variable REDIS_URL".to_owned()
                ]
            ),
            (
                "REPLICATE_API_TOKEN".to_owned(),
                vec![
                    "connector replicate".to_owned(),
                    "variable REPLICATE_HEADER".to_owned()
                ]
            ),
        ]
    );
    let literal_names: Vec<&str> = r.literals().map(|(n, _)| n).collect();
    assert!(!literal_names.contains(&"REDIS_URL") && !literal_names.contains(&"OPENAI_API_KEY"));
    assert!(literal_names.contains(&"OPENAI_IMAGE_MODEL"));

    // A secret takes no default: it is filled at run time.
    let set = set_of(&[("v", "NAMESPACE=V\n@secret KEY\n[s]\nA=${V_KEY:-none}\n")]);
    let lines = errs(Case::new(vec![sel("v", &["s"])]).resolve(&set));
    assert_eq!(
        lines,
        [
            "c/v.env:4:3: error: V_KEY is a secret and cannot have a default here (help: write `${V_KEY}`: the secret must be set in the environment at run time)"
        ]
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Secrets never leak

const CANARY: &str = "canary-d41d8cd98f00-secret";

#[test]
fn a_secret_value_in_a_component_or_profile_is_an_error_that_does_not_echo_it() {
    let set = set_of(&[
        (
            "openai",
            &format!("NAMESPACE=OPENAI\n[default]\nAPI_KEY={CANARY}\n"),
        ),
        (
            "redis",
            &format!("NAMESPACE=REDIS\n[default]\nURL={CANARY}\n[remote]\n@secret URL\n"),
        ),
    ]);
    let mut case = Case::new(vec![
        sel("openai", &["default"]),
        sel("redis", &["default", "remote"]),
    ]);
    case.secrets.declare("OPENAI_API_KEY", "connector openai");
    case.secrets.declare("HUB_TOKEN", "catalog");
    case.env = vec![EnvVar::new("HUB_TOKEN", CANARY)];
    let lines = errs(case.resolve(&set));
    assert_eq!(
        lines,
        [
            "profiles/test-profile.json: error: HUB_TOKEN is a secret (declared by catalog) but profile env in profiles/test-profile.json gives it a value (help: secret values must never be committed: remove this value and set it in the git-ignored secrets file or the environment)",
            "c/openai.env:3:9: error: OPENAI_API_KEY is a secret (declared by connector openai) but c/openai.env:3 section [default] of component openai gives it a value (help: secret values must never be committed: remove this value and set it in the git-ignored secrets file or the environment)",
            "c/redis.env:3:5: error: REDIS_URL is a secret (declared by c/redis.env:5 section [remote]) but c/redis.env:3 section [default] of component redis gives it a value (help: secret values must never be committed: remove this value and set it in the git-ignored secrets file or the environment)",
        ]
    );
    assert!(lines.iter().all(|l| !l.contains(CANARY)));
}

#[test]
fn no_rendered_output_contains_a_secret_value() {
    // The canary is what the environment holds for every name, secrets included; fallback is on.
    let lookup = |_: &str| Some(CANARY.to_owned());
    let set = fixtures();
    let mut case = Case::new(vec![
        sel("redis", &["default", "remote"]),
        sel("openai", &["default"]),
        sel("machine", &["default", "prod"]),
        sel("api", &["remote"]),
    ]);
    case.secrets
        .declare("REPLICATE_API_TOKEN", "connector replicate");
    case.env = vec![EnvVar::new("TOKEN_HEADER", "Token ${REPLICATE_API_TOKEN}")];
    case.fallback = EnvFallback::Allow(&lookup);
    let r = ok(case.resolve(&set));

    let mut rendered = String::new();
    rendered.push_str(&dotenv_file("@generated by a test", r.literals()).unwrap());
    for var in r.vars() {
        rendered.push_str(&var.value.to_template());
        rendered.push_str(&var.value.to_string());
        rendered.push_str(&explain(&r, &var.name).unwrap().to_string());
        rendered.push_str(&format!("{:?}", explain(&r, &var.name).unwrap()));
    }
    rendered.push_str(&format!("{r:?}"));
    for s in r.secrets() {
        rendered.push_str(&format!("{s:?}"));
    }
    // Files written the way a generator would, then searched like `grep -r` would.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        dotenv_file("", r.literals()).unwrap(),
    )
    .unwrap();
    let secrets_example: String = r
        .secrets()
        .iter()
        .map(|s| format!("{}=\n", s.name))
        .collect();
    std::fs::write(dir.path().join(".env.secrets.example"), &secrets_example).unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        rendered.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    assert!(
        !rendered.contains(CANARY),
        "a secret value leaked:\n{rendered}"
    );
    assert!(rendered.contains("${OPENAI_API_KEY}") && rendered.contains("${REDIS_PASSWORD}"));
    assert_eq!(
        secrets_example,
        "OPENAI_API_KEY=\nREDIS_PASSWORD=\nREPLICATE_API_TOKEN=\n"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Explain

#[test]
fn explain_shows_value_origin_references_and_overrides() {
    let set = fixtures();
    let mut case = Case::new(vec![
        sel("redis", &["default", "local"]),
        sel("openai", &["default"]),
    ]);
    case.env = vec![EnvVar::new("REDIS_PORT", "6380")];
    let r = ok(case.resolve(&set));
    assert_eq!(
        explain(&r, "REDIS_URL").unwrap().to_string(),
        "REDIS_URL=redis://redis:6380\n\
         \x20 from fixtures/redis.env:9 section [default] of component redis\n\
         \x20 written as redis://${REDIS_HOST}:${REDIS_PORT}\n\
         \x20 expands ${REDIS_HOST}: from fixtures/redis.env:12 section [local] of component redis\n\
         \x20 expands ${REDIS_PORT}: from profile env in profiles/test-profile.json\n"
    );
    assert_eq!(
        explain(&r, "REDIS_PORT").unwrap().to_string(),
        "REDIS_PORT=6380\n\
         \x20 from profile env in profiles/test-profile.json\n\
         \x20 overrides fixtures/redis.env:6 section [default] of component redis (was 6379)\n"
    );
    assert_eq!(
        explain(&r, "OPENAI_API_KEY").unwrap().to_string(),
        "OPENAI_API_KEY=<secret OPENAI_API_KEY>\n\
         \x20 secret: the value is never written to generated files; it is read from the environment at run time\n\
         \x20 from secret declared by fixtures/openai.env:3 (component openai)\n"
    );
    assert_eq!(
        explain(&r, "OPENAI_AUTH_HEADER").unwrap().to_string(),
        "OPENAI_AUTH_HEADER=Bearer <secret OPENAI_API_KEY>\n\
         \x20 from fixtures/openai.env:8 section [default] of component openai\n\
         \x20 written as Bearer ${OPENAI_API_KEY}\n\
         \x20 expands ${OPENAI_API_KEY}: a secret, filled in at run time\n"
    );
    let e = explain(&r, "REDIS_ULR").unwrap_err();
    assert_eq!(
        e.to_string(),
        "the profile defines no variable REDIS_ULR; did you mean REDIS_URL?"
    );
    let e = explain(&r, "NOTHING_LIKE_IT").unwrap_err();
    assert_eq!(
        e.to_string(),
        "the profile defines no variable NOTHING_LIKE_IT"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Output quoting against real readers

/// Values a .env file must carry exactly.
fn tricky_values() -> Vec<(&'static str, &'static str)> {
    vec![
        ("PLAIN", "plain"),
        ("EMPTY", ""),
        ("SPACES", "  two  words  "),
        ("DOUBLE_QUOTES", "say \"hi\""),
        ("SINGLE_QUOTE", "it's"),
        ("ONLY_SINGLE", "'"),
        ("ONLY_DOUBLE", "\""),
        ("HASH", "a # not a comment"),
        ("HASH_START", "#start"),
        ("DOLLAR", "costs $5 and $HOME stays"),
        ("DOLLARS", "$$ double"),
        ("EQUALS", "a=b=c"),
        ("URL", "https://user:pw@api.example.com/v1/p?a=b&c=d#frag"),
        ("UNICODE", "ünïcødé 日本語 🚀"),
        ("BACKSLASH", "C:\\dir\\file and \\n stays"),
        ("BACKTICK", "`cmd` and `"),
        ("SEMICOLON", "a;b ; c"),
        ("MULTILINE", "line one\nline two\n  indented"),
        ("MULTILINE_QUOTE", "it's\nmulti"),
        ("LOOKS_LIKE_KEY", "x\nOTHER=injected"),
        ("TAB", "a\tb"),
        ("JSON", "{\"a\": [1, 2]}"),
        ("LEADING_EQ", "=x"),
        ("EXPORT_LIKE", "export A=1"),
    ]
}

fn read_with_dotenvy(path: &Path) -> BTreeMap<String, String> {
    dotenvy::from_path_iter(path)
        .unwrap()
        .map(|item| item.unwrap())
        .collect()
}

fn read_with_node(path: &Path) -> BTreeMap<String, String> {
    let out = Command::new("node")
        .arg(format!("--env-file={}", path.display()))
        .arg("-e")
        .arg("process.stdout.write(JSON.stringify(process.env))")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("node must be installed (node >= 20 reads --env-file)");
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut env: BTreeMap<String, String> = serde_json::from_slice(&out.stdout).unwrap();
    env.remove("PATH");
    env
}

/// Docker Compose v1 (Debian's `docker-compose`) reads the file as a service's `env_file`; `config` prints the
/// environment the container would get, as YAML (with `$` escaped as `$$`), which its own Python turns into JSON.
fn read_with_compose_v1(path: &Path) -> BTreeMap<String, String> {
    let dir = path.parent().unwrap();
    let compose = dir.join("compose.yaml");
    std::fs::write(
        &compose,
        format!(
            "services:\n  s:\n    image: busybox\n    env_file: {}\n",
            path.display()
        ),
    )
    .unwrap();
    let script = "import sys, yaml, json\n\
                  env = yaml.safe_load(sys.stdin)['services']['s'].get('environment', {})\n\
                  print(json.dumps({k: ('' if v is None else str(v)).replace('$$', '$') for k, v in env.items()}))";
    let config = Command::new("docker-compose")
        .arg("-f")
        .arg(&compose)
        .arg("config")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("docker-compose (v1, Debian package) must be installed");
    assert!(
        config.status.success(),
        "docker-compose config failed: {}",
        String::from_utf8_lossy(&config.stderr)
    );
    let mut python = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("docker-compose's python3 with yaml");
    use std::io::Write;
    python
        .stdin
        .take()
        .unwrap()
        .write_all(&config.stdout)
        .unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn round_trip(values: &[(String, String)]) {
    let text = dotenv_file(
        "@generated by the round-trip test",
        values.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.env");
    std::fs::write(&path, &text).unwrap();
    let expected: BTreeMap<String, String> = values.iter().cloned().collect();
    assert_eq!(read_with_dotenvy(&path), expected, "dotenvy, file:\n{text}");
    assert_eq!(
        read_with_node(&path),
        expected,
        "node --env-file, file:\n{text}"
    );
    assert_eq!(
        read_with_compose_v1(&path),
        expected,
        "docker-compose v1 env_file, file:\n{text}"
    );
}

#[test]
fn dotenv_round_trip_through_real_readers() {
    let values: Vec<(String, String)> = tricky_values()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    round_trip(&values);
}

#[test]
fn dotenv_round_trip_of_random_values_through_real_readers() {
    // A deterministic batch of random values over the characters the readers treat specially.
    let alphabet: Vec<char> = "ab Z09_-=#;:$${}'\"\\`\n\t/?&@!*~é日🚀".chars().collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut values = Vec::new();
    let mut attempts = 0;
    while values.len() < 150 && attempts < 5000 {
        attempts += 1;
        let len = (next() % 12) as usize;
        let v: String = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let key = format!("R{}", values.len());
        if dotenv_line(&key, &v).is_ok() {
            values.push((key, v));
        }
    }
    assert_eq!(values.len(), 150);
    round_trip(&values);
}

#[test]
fn dotenv_refuses_values_the_readers_disagree_on() {
    for (value, what) in [
        ("it's $5", "both ' and $"),
        ("it's \"x\"", "both ' and \""),
        ("it's C:\\x", "both ' and \\"),
        (
            "trailing\\",
            "a backslash at the end (docker compose reads `\\'` as an escaped quote)",
        ),
        (
            "two\\\\backslashes",
            "two backslashes in a row (docker compose v1 reads them as one)",
        ),
        (
            "${NOT_A_REF}",
            "`${` (docker compose v1 interpolates it even in single quotes)",
        ),
        ("cr\rhere", "a carriage return (\\r)"),
    ] {
        let e = dotenv_line("KEY", value).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the value of KEY cannot be written to a .env file that dotenvy, docker compose and node read alike: it contains {what}"
            )
        );
    }
}

/// Why the refusals exist: each quoting the rule avoids is read differently by at least one real reader.
#[test]
fn the_refused_quotings_really_are_read_differently() {
    let lines = [
        ("DOLLAR_BRACE", "DOLLAR_BRACE='${DISAGREE}'"),
        ("TWO_BACKSLASHES", "TWO_BACKSLASHES='a\\\\b'"),
        ("ESCAPED_DOUBLE", "ESCAPED_DOUBLE=\"it's \\\"q\\\"\""),
        ("ESCAPED_BACKSLASH", "ESCAPED_BACKSLASH=\"it's a\\\\b\""),
        ("TAB_ESCAPE", "TAB_ESCAPE=\"it's\\tx\""),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refused.env");
    let text: String = lines.iter().map(|(_, line)| format!("{line}\n")).collect();
    std::fs::write(&path, &text).unwrap();
    // dotenvy rejects `\t`, so it reads the lines one file at a time.
    let dotenvy_value = |line: &str| -> Option<String> {
        dotenvy::from_read_iter(format!("{line}\n").as_bytes())
            .next()
            .and_then(|r| r.ok())
            .map(|(_, v)| v)
    };
    let node = read_with_node(&path);
    let compose = read_with_compose_v1(&path);
    for (key, line) in lines {
        let readings = [
            dotenvy_value(line),
            node.get(key).cloned(),
            compose.get(key).cloned(),
        ];
        assert!(
            readings.iter().any(|r| *r != readings[0]),
            "{key}: all readers agree on {line:?} ({readings:?}); the rule could allow it"
        );
    }
}

/// The component files the seed profiles use (`profiles/components/`), with the selections those profiles make.
#[test]
fn seed_components_resolve_for_every_seed_profile() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/components");
    let (set, diags) = ComponentSet::load_dir_as(&dir, "profiles/components");
    assert!(
        diags.is_empty(),
        "{}",
        diags
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let local = [
        sel("redis", &["default", "local"]),
        sel("api", &["local"]),
        sel("worker", &["default"]),
    ];
    let remote = [
        sel("redis", &["default", "remote"]),
        sel("api", &["remote"]),
        sel("machine", &["default", "prod"]),
    ];
    let profiles: Vec<(&str, Vec<Selection>, &[&str])> = vec![
        (
            "full-local",
            [
                &local[..],
                &[
                    sel("machine", &["default", "local"]),
                    sel("comfyui", &["default"]),
                    sel("simulation", &["default"]),
                    sel("monitor", &["local"]),
                ],
            ]
            .concat(),
            &["WORKER_WEBSOCKET_AUTH_TOKEN"],
        ),
        (
            "api-only",
            [
                &remote[..],
                &[sel("worker", &["default"]), sel("openai", &["default"])],
            ]
            .concat(),
            &[
                "HUB_REDIS_URL",
                "OPENAI_API_KEY",
                "WORKER_WEBSOCKET_AUTH_TOKEN",
            ],
        ),
        (
            "gpu-mixed",
            [
                &local[..],
                &[
                    sel("machine", &["default"]),
                    sel("comfyui", &["default"]),
                    sel("openai", &["default"]),
                ],
            ]
            .concat(),
            &["OPENAI_API_KEY", "WORKER_WEBSOCKET_AUTH_TOKEN"],
        ),
        (
            "dev-full",
            [
                &local[..],
                &[
                    sel("machine", &["default", "local"]),
                    sel("comfyui", &["default"]),
                    sel("simulation", &["default"]),
                    sel("openai", &["default"]),
                    sel("monitor", &["local"]),
                ],
            ]
            .concat(),
            &["OPENAI_API_KEY", "WORKER_WEBSOCKET_AUTH_TOKEN"],
        ),
        (
            "prod-gpu",
            [
                &remote[..],
                &[
                    sel("worker", &["default"]),
                    sel("comfyui", &["default"]),
                    sel("monitor", &["remote"]),
                ],
            ]
            .concat(),
            &["HUB_REDIS_URL", "WORKER_WEBSOCKET_AUTH_TOKEN"],
        ),
        (
            "api-gateway",
            [
                &remote[..],
                &[
                    sel("worker", &["default", "high-throughput"]),
                    sel("openai", &["default"]),
                ],
            ]
            .concat(),
            &[
                "HUB_REDIS_URL",
                "OPENAI_API_KEY",
                "WORKER_WEBSOCKET_AUTH_TOKEN",
            ],
        ),
    ];
    for (profile, selection, expected_secrets) in profiles {
        let file = format!("profiles/{profile}.json");
        let r = machine_model::components::resolve(
            &set,
            &ResolveInput::new(profile, &file, &selection),
        )
        .unwrap_or_else(|d| panic!("{profile}: {d:#?}"));
        assert!(r.warnings.is_empty(), "{profile}: {:#?}", r.warnings);
        dotenv_file(profile, r.literals()).unwrap_or_else(|e| panic!("{profile}: {e:?}"));
        let secrets: Vec<String> = r.secrets().into_iter().map(|s| s.name).collect();
        assert_eq!(secrets, expected_secrets, "{profile}");
    }
    let r = machine_model::components::resolve(
        &set,
        &ResolveInput::new("gpu-mixed", "profiles/gpu-mixed.json", &local),
    )
    .unwrap();
    assert_eq!(value(&r, "HUB_REDIS_URL"), "redis://redis:6379");
}

// ---------------------------------------------------------------------------------------------------------------
// Properties: no panics on arbitrary input; whatever is written reads back

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Lines built from the tokens the parser cares about, so the cases reach deep into it.
    fn component_text() -> impl Strategy<Value = String> {
        let token = prop::sample::select(vec![
            "NAMESPACE=X\n",
            "[s]\n",
            "[t]\n",
            "[a.b]\n",
            "A=",
            "B=",
            "X_A",
            "=",
            "${",
            "}",
            ":-",
            ":?",
            "-",
            "?",
            "$$",
            "$",
            "\"",
            "'",
            "\\",
            "\n",
            "\r\n",
            "#",
            ";",
            " ",
            "@secret ",
            "A",
            "B",
            "é",
            "[]",
            "\u{feff}",
        ]);
        prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
    }

    fn resolve_everything(text: &str) {
        let (set, _) = ComponentSet::from_texts("c", [("x", "c/x.env", text)]);
        if let Some(file) = set.get("x") {
            let sections: Vec<String> = file.section_names().map(str::to_owned).collect();
            let selection = vec![Selection::new("x", sections)];
            let mut secrets = SecretDecls::new();
            secrets.declare("X_B", "test");
            let input = ResolveInput {
                secrets: &secrets,
                ..ResolveInput::new("p", "p.json", &selection)
            };
            if let Ok(r) = machine_model::components::resolve(&set, &input) {
                for var in r.vars() {
                    let _ = explain(&r, &var.name).unwrap().to_string();
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        #[test]
        fn parse_and_resolve_never_panic_on_arbitrary_text(text in "\\PC*") {
            resolve_everything(&text);
        }

        #[test]
        fn parse_and_resolve_never_panic_on_token_soup(text in component_text()) {
            resolve_everything(&text);
        }

        #[test]
        fn runtime_expansion_never_panics(text in "\\PC*", soup in component_text()) {
            let lookup = |n: &str| n.len().is_multiple_of(2).then(|| n.to_owned());
            let _ = expand_runtime(&text, &lookup);
            let _ = expand_runtime(&soup, &lookup);
        }

        #[test]
        fn whatever_dotenv_line_writes_dotenvy_reads_back(value in "\\PC*|[ab'\"\\\\$#=\n{}]*") {
            if let Ok(line) = dotenv_line("K", &value) {
                let parsed: Vec<(String, String)> =
                    dotenvy::from_read_iter(format!("{line}\n").as_bytes()).map(|i| i.unwrap()).collect();
                prop_assert_eq!(parsed, vec![("K".to_owned(), value)]);
            }
        }
    }
}
