//! Turns catalog recipes into runnable ones: placeholders resolved, paths checked, hash computed.

use std::path::{Component, Path};

use machine_model::install::{
    ConstraintsFile, CustomNode, DownloadFile, InstallRecipe, ProvidedFile, Step,
};
use serde::Serialize;

use super::hash::fnv1a64_hex;
use super::placeholder::{self, INSTALL_DIR_PLACEHOLDER};
use machine_model::components::mask::strip_url_credentials;

/// Bumped when the executor's behaviour changes in a way that should reinstall everything.
pub(crate) const INSTALLER_FORMAT: u32 = 1;

/// `[name, value]` pairs through `one`, each part named `<field>[i].name` / `<field>[i].value`.
fn env_pairs(one: &mut impl FnMut(&str, &mut String), field: &str, env: &mut [(String, String)]) {
    for (i, (k, v)) in env.iter_mut().enumerate() {
        one(&format!("{field}[{i}].name"), k);
        one(&format!("{field}[{i}].value"), v);
    }
}

/// Each string of a list through `one`, named `<field>[i]`.
fn each(one: &mut impl FnMut(&str, &mut String), field: &str, values: &mut [String]) {
    for (i, value) in values.iter_mut().enumerate() {
        one(&format!("{field}[{i}]"), value);
    }
}

/// An optional string through `one`.
fn optional(one: &mut impl FnMut(&str, &mut String), field: &str, value: &mut Option<String>) {
    if let Some(value) = value {
        one(field, value);
    }
}

/// The name, repository, revision and environment of each custom node through `one`.
fn custom_nodes(one: &mut impl FnMut(&str, &mut String), nodes: &mut [CustomNode]) {
    for (i, node) in nodes.iter_mut().enumerate() {
        let CustomNode {
            name,
            repo,
            rev,
            requirements: _,
            env,
        } = node;
        one(&format!("nodes[{i}].name"), name);
        one(&format!("nodes[{i}].repo"), repo);
        one(&format!("nodes[{i}].rev"), rev);
        env_pairs(one, &format!("nodes[{i}].env"), env);
    }
}

/// The URL, SHA-256 and destination of each download through `one`.
fn downloads(one: &mut impl FnMut(&str, &mut String), files: &mut [DownloadFile]) {
    for (i, file) in files.iter_mut().enumerate() {
        let DownloadFile { url, sha256, dest } = file;
        one(&format!("files[{i}].url"), url);
        one(&format!("files[{i}].sha256"), sha256);
        one(&format!("files[{i}].dest"), dest);
    }
}

/// `step` with `f` applied to every string (bar literal file contents); a value `f` refuses stays as
/// written and its error is collected as `<at>.<field>: <message>`.
fn map_step(
    step: &Step,
    at: &str,
    f: &dyn Fn(&str) -> Result<String, String>,
    problems: &mut Vec<String>,
) -> Step {
    let mut one = |field: &str, value: &mut String| match f(value) {
        Ok(v) => *value = v,
        Err(e) => problems.push(format!("{at}.{field}: {e}")),
    };
    let mut step = step.clone();
    resolve_fields(&mut one, &mut step);
    step
}

/// Every string field of `step` through `one`, in declaration order. Every field is named, so that
/// a new one cannot be left unresolved unnoticed.
fn resolve_fields(one: &mut impl FnMut(&str, &mut String), step: &mut Step) {
    match step {
        Step::GitCheckout {
            repo,
            rev,
            dest,
            shallow: _,
            timeout_secs: _,
        } => {
            one("repo", repo);
            one("rev", rev);
            one("dest", dest);
        }
        Step::PythonVenv {
            dir,
            requirements,
            packages,
            constraints,
            timeout_secs: _,
        } => {
            one("dir", dir);
            optional(one, "requirements", requirements);
            each(one, "packages", packages);
            optional(one, "constraints", constraints);
        }
        // The files' content is literal: a constraints file is written as kept in the repository.
        Step::PipConstraints {
            path,
            rev,
            files: _,
        } => {
            one("path", path);
            one("rev", rev);
        }
        Step::CustomNodes {
            dir,
            venv,
            nodes,
            constraints,
            timeout_secs: _,
        } => {
            one("dir", dir);
            optional(one, "venv", venv);
            custom_nodes(one, nodes);
            optional(one, "constraints", constraints);
        }
        Step::Download {
            files,
            timeout_secs: _,
        } => downloads(one, files),
        Step::Probe {
            argv,
            cwd,
            expect_exit: _,
            timeout_secs: _,
        } => {
            each(one, "argv", argv);
            optional(one, "cwd", cwd);
        }
        Step::Persist { paths } => each(one, "paths", paths),
        Step::Fetch {
            source,
            sha256,
            dest,
            expect,
            provide,
            timeout_secs: _,
        } => fetch_fields(one, source, sha256, dest, expect, provide),
        Step::Command {
            argv,
            cwd,
            env,
            timeout_secs: _,
        } => {
            each(one, "argv", argv);
            optional(one, "cwd", cwd);
            env_pairs(one, "env", env);
        }
    }
}

/// The strings of a `fetch` step through `one`. The provided files' content is literal (the
/// machine's own file), only their path may carry placeholders.
fn fetch_fields(
    one: &mut impl FnMut(&str, &mut String),
    source: &mut String,
    sha256: &mut Option<String>,
    dest: &mut String,
    expect: &mut [String],
    provide: &mut [ProvidedFile],
) {
    one("source", source);
    optional(one, "sha256", sha256);
    one("dest", dest);
    each(one, "expect", expect);
    for (i, file) in provide.iter_mut().enumerate() {
        one(&format!("provide[{i}].path"), &mut file.path);
    }
}

/// Resolves the placeholders of `recipe` and checks it; problems come back as `field: message` lines.
pub(crate) fn resolve(
    recipe: &InstallRecipe,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<InstallRecipe, Vec<String>> {
    let mut problems = Vec::new();
    let f = |value: &str| placeholder::resolve(value, lookup).map_err(|e| e.to_string());
    let dir = f(&recipe.dir).unwrap_or_else(|e| {
        problems.push(format!("dir: {e}"));
        recipe.dir.clone()
    });
    let steps = recipe
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| map_step(step, &format!("steps[{i}]"), &f, &mut problems))
        .collect();
    let mut resolved = InstallRecipe { dir, steps };
    // One spelling per local folder (`file://`, a trailing `/`, `.` or `..`), so the install hash, and
    // with it `install --check`, does not depend on how the same folder was written.
    for step in &mut resolved.steps {
        if let Step::Fetch { source, .. } = step
            && let Ok(FetchSource::Folder(path)) = FetchSource::parse(source)
        {
            *source = normal_path(&path).to_string_lossy().into_owned();
        }
    }
    if problems.is_empty() {
        validate(&resolved, &mut problems);
    }
    if problems.is_empty() {
        Ok(resolved)
    } else {
        Err(problems)
    }
}

fn validate(recipe: &InstallRecipe, problems: &mut Vec<String>) {
    if !is_single_name(&recipe.dir) || recipe.dir.starts_with('.') {
        problems.push(format!(
            "dir: {:?} must be one directory name not starting with `.` (e.g. \"ComfyUI\")",
            recipe.dir
        ));
    }
    if recipe.steps.is_empty() {
        problems.push("steps: a recipe needs at least one step".to_owned());
    }
    for (i, step) in recipe.steps.iter().enumerate() {
        let at = format!("steps[{i}]");
        let mut problem =
            |field: &str, message: String| problems.push(format!("{at}.{field}: {message}"));
        for (field, path) in check_step(step, &mut problem) {
            if !is_inside(path) {
                problem(
                    field,
                    format!("{path:?} must be a relative path inside the install directory"),
                );
            }
        }
    }
}

/// Reports what is wrong with one step through `problem(field, message)`, bar its relative paths,
/// which come back as `(field, path)` for the caller to check (after the step's own problems).
fn check_step<'s>(
    step: &'s Step,
    problem: &mut impl FnMut(&str, String),
) -> Vec<(&'static str, &'s str)> {
    let mut paths: Vec<(&str, &str)> = Vec::new();
    match step {
        Step::GitCheckout { rev, dest, .. } => {
            paths.push(("dest", dest));
            check_rev(problem, "rev", rev);
        }
        Step::PythonVenv {
            dir,
            requirements,
            constraints,
            ..
        } => {
            paths.push(("dir", dir));
            paths.extend(requirements.as_deref().map(|r| ("requirements", r)));
            paths.extend(constraints.as_deref().map(|c| ("constraints", c)));
        }
        Step::PipConstraints { path, rev, files } => {
            paths.push(("path", path));
            check_rev(problem, "rev", rev);
            check_constraints_files(problem, files);
        }
        Step::Download { files, .. } => check_downloads(problem, files),
        Step::Probe { argv, cwd, .. } | Step::Command { argv, cwd, .. } => {
            if argv.first().is_none_or(String::is_empty) {
                problem("argv", "needs at least a program".to_owned());
            }
            paths.extend(cwd.as_deref().map(|c| ("cwd", c)));
        }
        Step::CustomNodes {
            dir,
            venv,
            nodes,
            constraints,
            ..
        } => {
            paths.push(("dir", dir));
            paths.extend(venv.as_deref().map(|v| ("venv", v)));
            paths.extend(constraints.as_deref().map(|c| ("constraints", c)));
            check_custom_nodes(problem, nodes);
        }
        Step::Persist { paths: persisted } => check_persisted(problem, persisted),
        Step::Fetch {
            source,
            sha256,
            dest,
            expect,
            provide,
            ..
        } => {
            paths.push(("dest", dest));
            check_fetch(problem, source, sha256.as_deref(), expect, provide);
        }
    }
    paths
}

/// A git revision: not empty, not an option.
fn check_rev(problem: &mut impl FnMut(&str, String), field: &str, rev: &str) {
    if rev.is_empty() || rev.starts_with('-') {
        problem(field, format!("{rev:?} is not a commit, branch or tag"));
    }
}

/// `pip-constraints` files: at least one, each pinned to a full commit.
fn check_constraints_files(problem: &mut impl FnMut(&str, String), files: &[ConstraintsFile]) {
    if files.is_empty() {
        problem("files", "needs at least one constraints file".to_owned());
    }
    for (j, file) in files.iter().enumerate() {
        if !is_full_sha(&file.commit) {
            problem(
                &format!("files[{j}].commit"),
                format!("{:?} is not a full 40-hex commit", file.commit),
            );
        }
    }
}

/// `download` files: distinct destinations inside the install directory, SHA-256s, usable URLs.
fn check_downloads(problem: &mut impl FnMut(&str, String), files: &[DownloadFile]) {
    for (j, file) in files.iter().enumerate() {
        if file.dest == "." || !is_inside(&file.dest) {
            problem(
                &format!("files[{j}].dest"),
                format!(
                    "{:?} must be a file inside the install directory",
                    file.dest
                ),
            );
        } else if files[..j].iter().any(|other| other.dest == file.dest) {
            problem(
                &format!("files[{j}].dest"),
                format!("{:?} is the target of two downloads", file.dest),
            );
        }
        if !is_sha256(&file.sha256) {
            problem(
                &format!("files[{j}].sha256"),
                format!("{:?} is not a SHA-256 (64 hex digits)", file.sha256),
            );
        }
        if let Err(message) = download_url(&file.url) {
            problem(&format!("files[{j}].url"), message);
        }
    }
}

/// `custom-nodes` entries: distinct single directory names, git revisions.
fn check_custom_nodes(problem: &mut impl FnMut(&str, String), nodes: &[CustomNode]) {
    for (j, node) in nodes.iter().enumerate() {
        let field = format!("nodes[{j}].name");
        if !is_single_name(&node.name) {
            problem(
                &field,
                format!("{:?} must be one directory name", node.name),
            );
        } else if nodes[..j].iter().any(|other| other.name == node.name) {
            problem(&field, format!("{:?} is listed twice", node.name));
        }
        check_rev(problem, &format!("nodes[{j}].rev"), &node.rev);
    }
}

/// `persist` paths: distinct directories inside the install directory.
fn check_persisted(problem: &mut impl FnMut(&str, String), persisted: &[String]) {
    for (j, path) in persisted.iter().enumerate() {
        let field = format!("paths[{j}]");
        if path == "." || !is_inside(path) {
            problem(
                &field,
                format!("{path:?} must be a directory inside the install directory"),
            );
        } else if persisted[..j].contains(path) {
            problem(&field, format!("{path:?} is listed twice"));
        }
    }
}

/// `fetch`: expected and provided files inside the destination, a known source, an optional SHA-256.
fn check_fetch(
    problem: &mut impl FnMut(&str, String),
    source: &str,
    sha256: Option<&str>,
    expect: &[String],
    provide: &[ProvidedFile],
) {
    let files = expect
        .iter()
        .map(|e| ("expect", e))
        .enumerate()
        .chain(provide.iter().map(|p| ("provide", &p.path)).enumerate());
    for (j, (field, e)) in files {
        if e == "." || !is_inside(e) {
            problem(
                &format!("{field}[{j}]"),
                format!("{e:?} must be a file inside the destination"),
            );
        }
    }
    if let Err(message) = FetchSource::parse(source) {
        problem("source", message);
    }
    let sha = sha256.unwrap_or_default();
    if !sha.is_empty() && !is_sha256(sha) {
        problem(
            "sha256",
            format!("{sha:?} is not a SHA-256 (64 hex digits); leave it empty to skip the check"),
        );
    }
}

/// A relative path with no `..` that stays inside its base (`.` is allowed).
fn is_inside(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn is_single_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(components.next(), Some(Component::Normal(_)))
        && components.next().is_none()
        && !name.contains('/')
}

/// Service names become marker file names: lowercase letters, digits, `-` and `_`.
pub(crate) fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The marker hash: FNV-1a 64 over the canonical JSON of the installer format, service, absolute
/// workspace (venvs hard-code it) and resolved recipe.
pub(crate) fn install_hash(service: &str, workspace: &Path, recipe: &InstallRecipe) -> String {
    #[derive(Serialize)]
    struct HashInput<'a> {
        format: u32,
        service: &'a str,
        workspace: &'a Path,
        recipe: &'a InstallRecipe,
    }
    let input = HashInput {
        format: INSTALLER_FORMAT,
        service,
        workspace,
        recipe,
    };
    // Serializing plain structs, strings and vectors cannot fail.
    let bytes = serde_json::to_vec(&input).unwrap_or_default();
    fnv1a64_hex(&bytes)
}

/// `step` with `${INSTALL_DIR}` replaced by the version directory being built.
pub(crate) fn with_install_dir(step: &Step, install_dir: &str) -> Step {
    let f = |value: &str| Ok(value.replace(INSTALL_DIR_PLACEHOLDER, install_dir));
    map_step(step, "", &f, &mut Vec::new())
}

/// A one-line description of what a step does, for progress lines (before secrets are masked).
pub(crate) fn describe(step: &Step) -> String {
    match step {
        Step::GitCheckout {
            repo, rev, dest, ..
        } => {
            let short = if is_full_sha(rev) {
                &rev[..12]
            } else {
                rev.as_str()
            };
            let into = if dest == "." {
                String::new()
            } else {
                format!(" into {dest}")
            };
            format!("git checkout {repo} @ {short}{into}")
        }
        Step::PythonVenv {
            dir,
            requirements,
            packages,
            constraints,
            ..
        } => {
            let mut s = format!("venv {dir}");
            if let Some(r) = requirements {
                s.push_str(&format!(", pip install -r {r}"));
            }
            if !packages.is_empty() {
                s.push_str(&format!(", pip install {}", packages.join(" ")));
            }
            if let Some(c) = constraints {
                s.push_str(&format!(", constraints {c}"));
            }
            s
        }
        Step::CustomNodes { dir, nodes, .. } => format!("{} custom nodes into {dir}", nodes.len()),
        Step::PipConstraints { path, rev, .. } => {
            let short = if is_full_sha(rev) {
                &rev[..12]
            } else {
                rev.as_str()
            };
            format!("write {path} for {short}")
        }
        Step::Download { files, .. } => {
            let dests: Vec<&str> = files.iter().map(|f| f.dest.as_str()).collect();
            format!("{} files: {}", files.len(), dests.join(", "))
        }
        Step::Probe { argv, .. } => argv.join(" "),
        Step::Persist { paths } => format!("keep {} across reinstalls", paths.join(", ")),
        Step::Fetch { source, dest, .. } => {
            let into = if dest == "." {
                String::new()
            } else {
                format!(" into {dest}")
            };
            format!("fetch {source}{into}")
        }
        Step::Command { argv, .. } => argv.join(" "),
    }
}

/// One spelling of an absolute path: without `.` components, repeated or trailing `/`; `..` resolved
/// through the file system when the path exists (symlinks make a lexical `..` wrong), else kept. A path
/// already in that form comes back unchanged, so install hashes made from it stay the same.
pub(crate) fn normal_path(path: &std::path::Path) -> std::path::PathBuf {
    let cleaned: std::path::PathBuf = path.components().collect();
    if cleaned
        .components()
        .any(|c| c == std::path::Component::ParentDir)
        && let Ok(real) = std::fs::canonicalize(&cleaned)
    {
        return real;
    }
    cleaned
}

/// Where a `fetch` step takes its files from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FetchSource {
    /// An `http(s)://` tarball, downloaded with curl.
    Download(String),
    /// A local `.tar.gz` (absolute path, or a `file://` URL).
    Tarball(std::path::PathBuf),
    /// A local folder whose content is copied.
    Folder(std::path::PathBuf),
}

impl FetchSource {
    /// Classifies a resolved source: `http(s)://` downloads, `file://` and absolute paths are local
    /// (a folder when the path is one, else a tarball).
    pub(crate) fn parse(source: &str) -> Result<FetchSource, String> {
        let source = source.trim();
        if source.starts_with("https://") || source.starts_with("http://") {
            return Ok(FetchSource::Download(source.to_owned()));
        }
        let path = source.strip_prefix("file://").unwrap_or(source);
        if !path.starts_with('/') {
            return Err(format!(
                "{source:?} is neither an http(s):// or file:// URL nor an absolute path; \
                 give a release tarball URL or the absolute path of a bundle folder"
            ));
        }
        let path = std::path::PathBuf::from(path);
        Ok(if path.is_dir() {
            FetchSource::Folder(path)
        } else {
            FetchSource::Tarball(path)
        })
    }
}

/// 64 hex digits.
pub(crate) fn is_sha256(sha: &str) -> bool {
    sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks that `url` is one curl downloads here: `https://`, `http://` or `file:///`.
pub(crate) fn download_url(url: &str) -> Result<(), String> {
    let ok =
        url.starts_with("https://") || url.starts_with("http://") || url.starts_with("file:///");
    if ok && !url.contains(char::is_whitespace) {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not an https://, http:// or file:/// URL",
            strip_url_credentials(url)
        ))
    }
}

/// A full 40-hex commit id.
pub(crate) fn is_full_sha(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use machine_model::install::{comfyui_recipe, playwright_recipe};

    fn no_vars(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn builtin_recipes_resolve_with_defaults() {
        let r = resolve(&comfyui_recipe(), &no_vars).unwrap();
        let Step::GitCheckout { repo, rev, .. } = &r.steps[0] else {
            panic!("checkout first")
        };
        assert_eq!(repo, machine_model::install::COMFYUI_DEFAULT_REPO);
        assert_eq!(rev, machine_model::install::COMFYUI_PINNED_COMMIT);
        let p = resolve(&playwright_recipe(), &no_vars).unwrap();
        let Step::Command { env, .. } = &p.steps[1] else {
            panic!("command second")
        };
        assert_eq!(env[0].1, "${INSTALL_DIR}/browsers");
        let Step::Command { env, .. } = with_install_dir(&p.steps[1], "/w/.versions/playwright/ab")
        else {
            panic!("command")
        };
        assert_eq!(env[0].1, "/w/.versions/playwright/ab/browsers");
    }

    #[test]
    fn all_problems_are_reported_with_their_field() {
        let recipe = InstallRecipe {
            dir: "../x".into(),
            steps: vec![
                Step::GitCheckout {
                    repo: "${REPO}".into(),
                    rev: "${REV}".into(),
                    dest: ".".into(),
                    shallow: true,
                    timeout_secs: None,
                },
                Step::Command {
                    argv: vec!["${X".into()],
                    cwd: None,
                    env: vec![],
                    timeout_secs: None,
                },
            ],
        };
        let problems = resolve(&recipe, &no_vars).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems[0].starts_with("steps[0].repo: `${REPO}` is not set"),
            "{problems:#?}"
        );
        assert!(problems[1].starts_with("steps[0].rev:"), "{problems:#?}");
        assert!(
            problems[2].starts_with("steps[1].argv[0]: unterminated"),
            "{problems:#?}"
        );
    }

    #[test]
    fn paths_must_stay_inside_the_install_directory() {
        let recipe = InstallRecipe {
            dir: ".hidden".into(),
            steps: vec![Step::PythonVenv {
                dir: "../venv".into(),
                requirements: Some("/etc/passwd".into()),
                packages: vec![],
                constraints: None,
                timeout_secs: None,
            }],
        };
        let problems = resolve(&recipe, &no_vars).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems[1].contains("steps[0].dir: \"../venv\""),
            "{problems:#?}"
        );
    }

    #[test]
    fn hash_depends_on_every_resolved_value() {
        let ws = Path::new("/workspace");
        let a = resolve(&comfyui_recipe(), &no_vars).unwrap();
        let b = resolve(&comfyui_recipe(), &|n| {
            (n == "COMFYUI_BRANCH").then(|| "master".to_owned())
        })
        .unwrap();
        assert_eq!(
            install_hash("comfyui", ws, &a),
            install_hash("comfyui", ws, &a)
        );
        assert_ne!(
            install_hash("comfyui", ws, &a),
            install_hash("comfyui", ws, &b)
        );
        assert_ne!(
            install_hash("comfyui", ws, &a),
            install_hash("comfyui", Path::new("/w2"), &a)
        );
        assert_eq!(install_hash("comfyui", ws, &a).len(), 16);
    }
}
