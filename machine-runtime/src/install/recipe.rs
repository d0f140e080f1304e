//! Turns catalog recipes into runnable ones: placeholders resolved, paths checked, hash computed.

use std::path::{Component, Path};

use machine_model::install::{CustomNode, DownloadFile, InstallRecipe, ProvidedFile, Step};
use serde::Serialize;

use super::hash::fnv1a64_hex;
use super::placeholder::{self, INSTALL_DIR_PLACEHOLDER};
use machine_model::components::mask::strip_url_credentials;

/// Bumped when the executor's behaviour changes in a way that should reinstall everything.
pub(crate) const INSTALLER_FORMAT: u32 = 1;

/// Applies `f(field_path, value)` to every string of `step`, collecting errors as `field: message`.
/// `[name, value]` pairs through `one`, each part named `<field>[i].name` / `<field>[i].value`.
fn env_pairs(
    one: &mut impl FnMut(&str, &str) -> String,
    field: &str,
    env: &[(String, String)],
) -> Vec<(String, String)> {
    env.iter()
        .enumerate()
        .map(|(i, (k, v))| {
            (
                one(&format!("{field}[{i}].name"), k),
                one(&format!("{field}[{i}].value"), v),
            )
        })
        .collect()
}

fn map_step(
    step: &Step,
    at: &str,
    f: &dyn Fn(&str) -> Result<String, String>,
    problems: &mut Vec<String>,
) -> Step {
    let mut one = |field: &str, value: &str| match f(value) {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("{at}.{field}: {e}"));
            value.to_owned()
        }
    };
    match step {
        Step::GitCheckout {
            repo,
            rev,
            dest,
            shallow,
            timeout_secs,
        } => Step::GitCheckout {
            repo: one("repo", repo),
            rev: one("rev", rev),
            dest: one("dest", dest),
            shallow: *shallow,
            timeout_secs: *timeout_secs,
        },
        Step::PythonVenv {
            dir,
            requirements,
            packages,
            constraints,
            timeout_secs,
        } => Step::PythonVenv {
            dir: one("dir", dir),
            requirements: requirements.as_ref().map(|r| one("requirements", r)),
            packages: packages
                .iter()
                .enumerate()
                .map(|(i, p)| one(&format!("packages[{i}]"), p))
                .collect(),
            constraints: constraints.as_ref().map(|c| one("constraints", c)),
            timeout_secs: *timeout_secs,
        },
        // The files' content is literal: a constraints file is written as kept in the repository.
        Step::PipConstraints { path, rev, files } => Step::PipConstraints {
            path: one("path", path),
            rev: one("rev", rev),
            files: files.clone(),
        },
        Step::CustomNodes {
            dir,
            venv,
            nodes,
            constraints,
            timeout_secs,
        } => Step::CustomNodes {
            dir: one("dir", dir),
            venv: venv.as_ref().map(|v| one("venv", v)),
            nodes: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| CustomNode {
                    name: one(&format!("nodes[{i}].name"), &n.name),
                    repo: one(&format!("nodes[{i}].repo"), &n.repo),
                    rev: one(&format!("nodes[{i}].rev"), &n.rev),
                    requirements: n.requirements,
                    env: env_pairs(&mut one, &format!("nodes[{i}].env"), &n.env),
                })
                .collect(),
            constraints: constraints.as_ref().map(|c| one("constraints", c)),
            timeout_secs: *timeout_secs,
        },
        Step::Download {
            files,
            timeout_secs,
        } => Step::Download {
            files: files
                .iter()
                .enumerate()
                .map(|(i, f)| DownloadFile {
                    url: one(&format!("files[{i}].url"), &f.url),
                    sha256: one(&format!("files[{i}].sha256"), &f.sha256),
                    dest: one(&format!("files[{i}].dest"), &f.dest),
                })
                .collect(),
            timeout_secs: *timeout_secs,
        },
        Step::Probe {
            argv,
            cwd,
            expect_exit,
            timeout_secs,
        } => Step::Probe {
            argv: argv
                .iter()
                .enumerate()
                .map(|(i, a)| one(&format!("argv[{i}]"), a))
                .collect(),
            cwd: cwd.as_ref().map(|c| one("cwd", c)),
            expect_exit: *expect_exit,
            timeout_secs: *timeout_secs,
        },
        Step::Persist { paths } => Step::Persist {
            paths: paths
                .iter()
                .enumerate()
                .map(|(i, p)| one(&format!("paths[{i}]"), p))
                .collect(),
        },
        Step::Fetch {
            source,
            sha256,
            dest,
            expect,
            provide,
            timeout_secs,
        } => Step::Fetch {
            source: one("source", source),
            sha256: sha256.as_ref().map(|s| one("sha256", s)),
            dest: one("dest", dest),
            expect: expect
                .iter()
                .enumerate()
                .map(|(i, e)| one(&format!("expect[{i}]"), e))
                .collect(),
            // The content is literal (the machine's own file), only the path may carry placeholders.
            provide: provide
                .iter()
                .enumerate()
                .map(|(i, p)| ProvidedFile {
                    path: one(&format!("provide[{i}].path"), &p.path),
                    ..p.clone()
                })
                .collect(),
            timeout_secs: *timeout_secs,
        },
        Step::Command {
            argv,
            cwd,
            env,
            timeout_secs,
        } => Step::Command {
            argv: argv
                .iter()
                .enumerate()
                .map(|(i, a)| one(&format!("argv[{i}]"), a))
                .collect(),
            cwd: cwd.as_ref().map(|c| one("cwd", c)),
            env: env_pairs(&mut one, "env", env),
            timeout_secs: *timeout_secs,
        },
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
    let mut problem =
        |at: &str, field: &str, message: String| problems.push(format!("{at}.{field}: {message}"));
    let inside = |path: &str| -> Option<String> {
        (!is_inside(path))
            .then(|| format!("{path:?} must be a relative path inside the install directory"))
    };
    for (i, step) in recipe.steps.iter().enumerate() {
        let at = format!("steps[{i}]");
        let mut paths: Vec<(&str, &str)> = Vec::new();
        match step {
            Step::GitCheckout { rev, dest, .. } => {
                paths.push(("dest", dest));
                if rev.is_empty() || rev.starts_with('-') {
                    problem(
                        &at,
                        "rev",
                        format!("{rev:?} is not a commit, branch or tag"),
                    );
                }
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
                if rev.is_empty() || rev.starts_with('-') {
                    problem(
                        &at,
                        "rev",
                        format!("{rev:?} is not a commit, branch or tag"),
                    );
                }
                if files.is_empty() {
                    problem(
                        &at,
                        "files",
                        "needs at least one constraints file".to_owned(),
                    );
                }
                for (j, file) in files.iter().enumerate() {
                    if !is_full_sha(&file.commit) {
                        problem(
                            &at,
                            &format!("files[{j}].commit"),
                            format!("{:?} is not a full 40-hex commit", file.commit),
                        );
                    }
                }
            }
            Step::Download { files, .. } => {
                for (j, file) in files.iter().enumerate() {
                    if file.dest == "." || !is_inside(&file.dest) {
                        problem(
                            &at,
                            &format!("files[{j}].dest"),
                            format!(
                                "{:?} must be a file inside the install directory",
                                file.dest
                            ),
                        );
                    } else if files[..j].iter().any(|other| other.dest == file.dest) {
                        problem(
                            &at,
                            &format!("files[{j}].dest"),
                            format!("{:?} is the target of two downloads", file.dest),
                        );
                    }
                    if !is_sha256(&file.sha256) {
                        problem(
                            &at,
                            &format!("files[{j}].sha256"),
                            format!("{:?} is not a SHA-256 (64 hex digits)", file.sha256),
                        );
                    }
                    if let Err(message) = download_url(&file.url) {
                        problem(&at, &format!("files[{j}].url"), message);
                    }
                }
            }
            Step::Probe { argv, cwd, .. } => {
                if argv.first().is_none_or(String::is_empty) {
                    problem(&at, "argv", "needs at least a program".to_owned());
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
                for (j, node) in nodes.iter().enumerate() {
                    let field = format!("nodes[{j}].name");
                    if !is_single_name(&node.name) {
                        problem(
                            &at,
                            &field,
                            format!("{:?} must be one directory name", node.name),
                        );
                    } else if nodes[..j].iter().any(|other| other.name == node.name) {
                        problem(&at, &field, format!("{:?} is listed twice", node.name));
                    }
                    if node.rev.is_empty() || node.rev.starts_with('-') {
                        problem(
                            &at,
                            &format!("nodes[{j}].rev"),
                            format!("{:?} is not a commit, branch or tag", node.rev),
                        );
                    }
                }
            }
            Step::Persist { paths: persisted } => {
                for (j, path) in persisted.iter().enumerate() {
                    let field = format!("paths[{j}]");
                    if path == "." || !is_inside(path) {
                        problem(
                            &at,
                            &field,
                            format!("{path:?} must be a directory inside the install directory"),
                        );
                    } else if persisted[..j].contains(path) {
                        problem(&at, &field, format!("{path:?} is listed twice"));
                    }
                }
            }
            Step::Fetch {
                source,
                sha256,
                dest,
                expect,
                provide,
                ..
            } => {
                paths.push(("dest", dest));
                let files = expect
                    .iter()
                    .map(|e| ("expect", e))
                    .enumerate()
                    .chain(provide.iter().map(|p| ("provide", &p.path)).enumerate());
                for (j, (field, e)) in files {
                    if e == "." || !is_inside(e) {
                        problem(
                            &at,
                            &format!("{field}[{j}]"),
                            format!("{e:?} must be a file inside the destination"),
                        );
                    }
                }
                if let Err(message) = FetchSource::parse(source) {
                    problem(&at, "source", message);
                }
                let sha = sha256.as_deref().unwrap_or_default();
                if !sha.is_empty() && !is_sha256(sha) {
                    problem(
                        &at,
                        "sha256",
                        format!(
                            "{sha:?} is not a SHA-256 (64 hex digits); leave it empty to skip the check"
                        ),
                    );
                }
            }
            Step::Command { argv, cwd, .. } => {
                if argv.first().is_none_or(String::is_empty) {
                    problem(&at, "argv", "needs at least a program".to_owned());
                }
                paths.extend(cwd.as_deref().map(|c| ("cwd", c)));
            }
        }
        for (field, path) in paths {
            if let Some(message) = inside(path) {
                problem(&at, field, message);
            }
        }
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
