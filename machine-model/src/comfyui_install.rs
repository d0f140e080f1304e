//! The rules of a profile's ComfyUI install additions (`comfyui.packages`, `custom_nodes`, `models`):
//! every problem located by its JSON pointer, all at once, before anything is installed.
//!
//! The JSON Schema checks the shapes it can express (fields, required `sha256`, patterns); these rules
//! add what it cannot (duplicates, path escapes, URL forms, conflicts with the pinned constraints) and
//! say what is allowed. `load::check` turns them into located diagnostics.

use crate::install::COMFYUI_CONSTRAINTS;
use crate::profile::{ComfyuiModel, ComfyuiOptions};

/// The git URL forms a custom node may use, for messages.
pub const NODE_URL_FORMS: &str = "https://host/path, http://host/path, ssh://[user@]host/path, git://host/path, user@host:path (scp-like), file:///path or an absolute path";

/// The URL forms a model may be downloaded from, for messages.
pub const MODEL_URL_FORMS: &str = "https://, http:// or file:///path";

impl ComfyuiModel {
    /// The model's file name: `file_name`, else the last segment of the URL's path (query and fragment
    /// removed); empty when the URL has none.
    pub fn file(&self) -> &str {
        if let Some(name) = &self.file_name {
            return name;
        }
        let url = self.url.split(['?', '#']).next().unwrap_or_default();
        let path = url.split_once("://").map_or(url, |(_, rest)| rest);
        // The host is not a file name: `https://host` has no path.
        match path.split_once('/') {
            Some((_, path)) => path.rsplit('/').next().unwrap_or_default(),
            None => "",
        }
    }

    /// Where the model goes under `ComfyUI/models/`: `<folder>/<file>` (folder without trailing `/`).
    pub fn target(&self) -> String {
        format!("{}/{}", self.folder.trim_end_matches('/'), self.file())
    }
}

/// Every problem of `options`, as (JSON pointer under the profile, message), in document order.
pub fn check(options: &ComfyuiOptions) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    check_packages(options, &mut problems);
    check_nodes(options, &mut problems);
    check_models(options, &mut problems);
    problems
}

fn check_packages(options: &ComfyuiOptions, problems: &mut Vec<(String, String)>) {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for (i, package) in options.packages.iter().enumerate() {
        let at = format!("/comfyui/packages/{i}");
        let Some((name, version)) = pinned_package(package) else {
            problems.push((
                at,
                format!(
                    "package {package:?} is not pinned; write name==version (e.g. \"opencv-python-headless==4.10.0.84\"), \
                     as pip freeze prints it, so the venv installs the same next year"
                ),
            ));
            continue;
        };
        let key = normalise(name);
        if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
            problems.push((
                at,
                format!("package {name:?} is listed twice (also /comfyui/packages/{first})"),
            ));
            continue;
        }
        seen.push((key.clone(), i));
        if let Some(pinned) = constraints_pin(&key)
            && pinned != version
        {
            problems.push((
                at,
                format!(
                    "package {package:?} conflicts with ComfyUI's constraints, which pin {name}=={pinned}; \
                     use {name}=={pinned} or leave it out"
                ),
            ));
        }
    }
}

/// `name==version` (extras allowed: `name[extra]==version`): the name and version, else `None`.
fn pinned_package(spec: &str) -> Option<(&str, &str)> {
    let (name, version) = spec.trim().split_once("==")?;
    let base = name.split_once('[').map_or(
        name,
        |(base, extras)| {
            if extras.ends_with(']') { base } else { "" }
        },
    );
    let name_ok = base
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    let version_ok = version
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+!-".contains(&b));
    (name_ok && version_ok).then_some((base, version))
}

/// PEP 503 normalised name: lowercase, runs of `-`, `_`, `.` as one `-`.
fn normalise(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !out.ends_with('-') {
                out.push('-');
            }
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// The version the default constraints file pins for a normalised package name.
fn constraints_pin(key: &str) -> Option<&'static str> {
    let (_, content) = COMFYUI_CONSTRAINTS.first()?;
    content
        .lines()
        .filter_map(|l| l.split_once("=="))
        .find(|(n, _)| normalise(n.trim()) == key)
        .map(|(_, v)| v.trim())
}

fn check_nodes(options: &ComfyuiOptions, problems: &mut Vec<(String, String)>) {
    for (i, node) in options.custom_nodes.iter().enumerate() {
        let at = |field: &str| format!("/comfyui/custom_nodes/{i}/{field}");
        if !valid_node_name(&node.name) {
            problems.push((
                at("name"),
                format!(
                    "custom node name {:?} is not a folder name; use letters, digits, `_`, `-` and `.`, \
                     starting with a letter, digit or `_` (e.g. \"ComfyUI-Impact-Pack\")",
                    node.name
                ),
            ));
        } else if let Some(first) = options.custom_nodes[..i]
            .iter()
            .position(|other| other.name == node.name)
        {
            problems.push((
                at("name"),
                format!(
                    "custom node {:?} is listed twice (also /comfyui/custom_nodes/{first}); each node has its own folder",
                    node.name
                ),
            ));
        }
        if let Err(why) = git_url(&node.url) {
            problems.push((
                at("url"),
                format!(
                    "custom node {:?}: url {:?} {why}; allowed: {NODE_URL_FORMS}",
                    node.name, node.url
                ),
            ));
        }
        if !is_full_sha(&node.commit) {
            problems.push((
                at("commit"),
                format!(
                    "custom node {:?}: commit {:?} is not a full 40-hex commit id; pin one (`git rev-parse HEAD` in the node's repository), \
                     branches and tags move",
                    node.name, node.commit
                ),
            ));
        }
        for name in node.env.keys() {
            if !valid_env_name(name) {
                problems.push((
                    format!(
                        "/comfyui/custom_nodes/{i}/env/{}",
                        crate::pointer::escape_pointer(name)
                    ),
                    format!(
                        "custom node {:?}: {name:?} is not an environment variable name; use letters, digits and `_`, not starting with a digit",
                        node.name
                    ),
                ));
            }
        }
    }
}

fn check_models(options: &ComfyuiOptions, problems: &mut Vec<(String, String)>) {
    for (i, model) in options.models.iter().enumerate() {
        let at = |field: &str| format!("/comfyui/models/{i}/{field}");
        let url = model.url.trim();
        if !(url.starts_with("https://")
            || url.starts_with("http://")
            || url.starts_with("file:///"))
            || url.contains(char::is_whitespace)
        {
            problems.push((
                at("url"),
                format!(
                    "model url {:?} cannot be downloaded; allowed: {MODEL_URL_FORMS}",
                    model.url
                ),
            ));
        }
        if !(model.sha256.len() == 64 && model.sha256.bytes().all(|b| b.is_ascii_hexdigit())) {
            problems.push((
                at("sha256"),
                format!(
                    "model {}: sha256 {:?} is not a SHA-256 (64 hex digits, as `sha256sum` prints it); every model is checked",
                    model.url, model.sha256
                ),
            ));
        }
        let folder_ok = !model.folder.is_empty()
            && !model.folder.starts_with('/')
            && model.folder.trim_end_matches('/').split('/').all(|part| {
                !part.is_empty() && part != "." && part != ".." && valid_path_part(part)
            });
        if !folder_ok {
            problems.push((
                at("folder"),
                format!(
                    "model folder {:?} must be a relative folder under ComfyUI/models/ without `.` or `..` parts \
                     (letters, digits, `_`, `-`, `.`, `/` between parts; e.g. \"checkpoints\", \"loras/sdxl\")",
                    model.folder
                ),
            ));
        }
        let file = model.file();
        let file_ok = !file.is_empty() && file != "." && file != ".." && valid_path_part(file);
        if !file_ok {
            let field = if model.file_name.is_some() {
                "file_name"
            } else {
                "url"
            };
            problems.push((
                at(field),
                format!(
                    "model {}: file name {file:?} is not usable (letters, digits, `_`, `-`, `.`, no `/`); \
                     set file_name when the URL's last segment is not the file's name",
                    model.url
                ),
            ));
        }
        if folder_ok
            && file_ok
            && let Some(first) = options.models[..i]
                .iter()
                .position(|other| other.target() == model.target())
        {
            problems.push((
                at("file_name"),
                format!(
                    "model models/{} is also the target of /comfyui/models/{first}; give one of them another file_name or folder",
                    model.target()
                ),
            ));
        }
    }
}

/// Why `url` is not a git repository location, if it is not one.
fn git_url(url: &str) -> Result<(), &'static str> {
    if url.is_empty() || url.trim() != url || url.contains(char::is_whitespace) {
        return Err("is empty or has spaces");
    }
    if url.starts_with('-') {
        return Err("starts with `-`");
    }
    let lower = url.to_ascii_lowercase();
    for archive in [".zip", ".tar.gz", ".tgz", ".tar", ".whl", ".py"] {
        if lower.ends_with(archive) {
            return Err("names a file, not a git repository");
        }
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        return match scheme {
            "https" | "http" | "ssh" | "git"
                if rest.split('/').next().is_some_and(|h| !h.is_empty()) && rest.contains('/') =>
            {
                Ok(())
            }
            "file" if rest.starts_with('/') => Ok(()),
            "https" | "http" | "ssh" | "git" | "file" => Err("has no repository path"),
            _ => Err("uses a scheme git does not fetch from here"),
        };
    }
    if url.starts_with('/') {
        return Ok(());
    }
    // scp-like: user@host:path, with no `/` before the `:`.
    if let Some((host, path)) = url.split_once(':')
        && !host.contains('/')
        && host.contains('@')
        && !path.is_empty()
    {
        return Ok(());
    }
    Err("is not a git URL")
}

fn valid_node_name(name: &str) -> bool {
    name.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && valid_path_part(name)
}

fn valid_path_part(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

fn valid_env_name(name: &str) -> bool {
    name.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_full_sha(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ComfyuiCustomNode;

    fn node(name: &str, url: &str, commit: &str) -> ComfyuiCustomNode {
        ComfyuiCustomNode {
            name: name.into(),
            url: url.into(),
            commit: commit.into(),
            requirements: true,
            install_order: None,
            env: Default::default(),
        }
    }

    fn model(url: &str, sha256: &str, folder: &str, file_name: Option<&str>) -> ComfyuiModel {
        ComfyuiModel {
            url: url.into(),
            sha256: sha256.into(),
            folder: folder.into(),
            file_name: file_name.map(Into::into),
        }
    }

    fn check_one(options: ComfyuiOptions, expected: &[(&str, &str)]) {
        let problems = check(&options);
        assert_eq!(
            problems.len(),
            expected.len(),
            "{problems:#?} vs {expected:#?}"
        );
        for ((pointer, message), (want_pointer, want_part)) in problems.iter().zip(expected) {
            assert_eq!(pointer, want_pointer, "{message}");
            assert!(
                message.contains(want_part),
                "{message:?} lacks {want_part:?}"
            );
        }
    }

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn a_good_section_has_no_problem() {
        check_one(
            ComfyuiOptions {
                packages: vec![
                    "opencv-python-headless==4.10.0.84".into(),
                    "x[extra]==1.0".into(),
                ],
                custom_nodes: vec![
                    node(
                        "ComfyUI-Impact-Pack",
                        "https://github.com/o/ComfyUI-Impact-Pack.git",
                        SHA,
                    ),
                    node("n2", "git@github.com:o/n2.git", SHA),
                    node("n3", "file:///srv/n3", SHA),
                    node("n4", "/srv/n4", SHA),
                ],
                models: vec![
                    model(
                        "https://h/m/v1-5.safetensors?download=true",
                        &"a".repeat(64),
                        "checkpoints",
                        None,
                    ),
                    model(
                        "file:///srv/m",
                        &"B".repeat(64),
                        "loras/sdxl",
                        Some("x.bin"),
                    ),
                ],
                ..ComfyuiOptions::default()
            },
            &[],
        );
    }

    #[test]
    fn every_bad_value_is_located_and_says_what_is_allowed() {
        let mut bad_env = node("n5", "/srv/n5", SHA);
        bad_env.env.insert("1BAD".into(), "x".into());
        check_one(
            ComfyuiOptions {
                packages: vec![
                    "torch".into(),
                    "numpy>=1.0".into(),
                    "a==1".into(),
                    "A==2".into(),
                ],
                custom_nodes: vec![
                    node("good", "https://example.com/node.zip", SHA),
                    node("../evil", "ftp://host/x", "main"),
                    node("good", "www.github.com/o/r", &SHA[..12]),
                    bad_env,
                ],
                models: vec![
                    model("https://h/a.safetensors", "abc", "/abs", None),
                    model("https://h/", &"a".repeat(64), "../x", None),
                    model("https://h/a.safetensors", &"a".repeat(64), "vae", None),
                    model(
                        "https://h/b",
                        &"a".repeat(64),
                        "vae/",
                        Some("a.safetensors"),
                    ),
                    model("s3://bucket/x", &"a".repeat(64), "vae", Some("c")),
                ],
                ..ComfyuiOptions::default()
            },
            &[
                ("/comfyui/packages/0", "is not pinned; write name==version"),
                ("/comfyui/packages/1", "is not pinned"),
                (
                    "/comfyui/packages/3",
                    "\"A\" is listed twice (also /comfyui/packages/2)",
                ),
                (
                    "/comfyui/custom_nodes/0/url",
                    "names a file, not a git repository; allowed: https://",
                ),
                ("/comfyui/custom_nodes/1/name", "is not a folder name"),
                (
                    "/comfyui/custom_nodes/1/url",
                    "uses a scheme git does not fetch",
                ),
                (
                    "/comfyui/custom_nodes/1/commit",
                    "\"main\" is not a full 40-hex commit id",
                ),
                (
                    "/comfyui/custom_nodes/2/name",
                    "\"good\" is listed twice (also /comfyui/custom_nodes/0)",
                ),
                ("/comfyui/custom_nodes/2/url", "is not a git URL"),
                (
                    "/comfyui/custom_nodes/2/commit",
                    "is not a full 40-hex commit id",
                ),
                (
                    "/comfyui/custom_nodes/3/env/1BAD",
                    "is not an environment variable name",
                ),
                ("/comfyui/models/0/sha256", "\"abc\" is not a SHA-256"),
                (
                    "/comfyui/models/0/folder",
                    "\"/abs\" must be a relative folder",
                ),
                (
                    "/comfyui/models/1/folder",
                    "\"../x\" must be a relative folder",
                ),
                ("/comfyui/models/1/url", "file name \"\" is not usable"),
                (
                    "/comfyui/models/3/file_name",
                    "models/vae/a.safetensors is also the target of /comfyui/models/2",
                ),
                (
                    "/comfyui/models/4/url",
                    "cannot be downloaded; allowed: https://",
                ),
            ],
        );
    }

    #[test]
    fn a_package_pinned_against_the_constraints_is_refused() {
        let (_, content) = COMFYUI_CONSTRAINTS[0];
        let line = content
            .lines()
            .find(|l| !l.starts_with('#') && l.contains("=="))
            .expect("the constraints pin something");
        let (name, version) = line.split_once("==").unwrap();
        check_one(
            ComfyuiOptions {
                packages: vec![
                    format!("{name}=={version}"),
                    format!("{}==0.0.0.dev0", name.to_uppercase()),
                ],
                ..ComfyuiOptions::default()
            },
            &[("/comfyui/packages/1", "is listed twice")],
        );
        check_one(
            ComfyuiOptions {
                packages: vec![format!("{name}==0.0.0.dev0")],
                ..ComfyuiOptions::default()
            },
            &[(
                "/comfyui/packages/0",
                &format!("conflicts with ComfyUI's constraints, which pin {name}=={version}"),
            )],
        );
    }

    #[test]
    fn a_model_file_comes_from_file_name_or_the_url() {
        let m = model("https://h/a/b.safetensors?x=1#f", "", "checkpoints/", None);
        assert_eq!(m.target(), "checkpoints/b.safetensors");
        let m = model("https://h", "", "vae", None);
        assert_eq!(m.file(), "");
        let m = model("https://h/a", "", "vae", Some("c.pt"));
        assert_eq!(m.target(), "vae/c.pt");
    }
}
