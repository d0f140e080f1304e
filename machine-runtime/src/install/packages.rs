//! The Debian packages an install needs, so the image carries only what its profile uses
//! (`machine-runtime install --profile NAME --system-packages`, read by the Dockerfile).
//!
//! Every image has `ca-certificates` and `nodejs` (the workers); this adds, per recipe step:
//! `git` for a `git-checkout` or `custom-nodes` step, `python3` and `python3-venv` for a
//! `python-venv`, `pip-constraints`, `custom-nodes` or `command` step (Playwright's installer is
//! Python), and `curl` for a `download` step or a `fetch` from an `http(s)://` URL. Only `curl` is
//! needed at build time alone ([`BUILD_ONLY`]): `up` never installs.

use std::collections::BTreeSet;

use machine_model::install::{InstallRecipe, Step};

/// Packages used only while installing, removed from the image afterwards.
pub const BUILD_ONLY: &[&str] = &["curl"];

/// The packages `recipes` need beyond the base image's, sorted. Placeholders in a `fetch` source
/// resolve through `lookup` (`WORKER_BUNDLE_URL` may point at a folder: no `curl` then); a source
/// that does not resolve counts as a download.
pub fn needed(
    recipes: &[(String, InstallRecipe)],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> BTreeSet<&'static str> {
    let mut packages = BTreeSet::new();
    let python = ["python3", "python3-venv"];
    for (_, recipe) in recipes {
        for step in &recipe.steps {
            match step {
                Step::GitCheckout { .. } => {
                    packages.insert("git");
                }
                Step::PythonVenv { .. } | Step::PipConstraints { .. } | Step::Command { .. } => {
                    packages.extend(python);
                }
                Step::CustomNodes { .. } => {
                    packages.insert("git");
                    packages.extend(python);
                }
                Step::Download { .. } => {
                    packages.insert("curl");
                }
                Step::Fetch { source, .. } => {
                    let resolved = super::placeholder::resolve(source, lookup)
                        .map_or_else(|_| "http://".to_owned(), |s| s.to_string());
                    if resolved.starts_with("http://") || resolved.starts_with("https://") {
                        packages.insert("curl");
                    }
                }
                Step::Probe { .. } | Step::Persist { .. } => {}
            }
        }
    }
    packages
}

#[cfg(test)]
mod tests {
    use super::*;
    use machine_model::install::{comfyui_recipe, playwright_recipe};

    #[test]
    fn each_recipe_brings_its_own_tools_and_a_local_bundle_needs_none() {
        let none = |_: &str| None;
        let comfy = vec![("comfyui".to_owned(), comfyui_recipe())];
        assert_eq!(
            needed(&comfy, &none).into_iter().collect::<Vec<_>>(),
            ["git", "python3", "python3-venv"]
        );
        let playwright = vec![("playwright".to_owned(), playwright_recipe())];
        assert!(!needed(&playwright, &none).contains("git"));
        let bundle =
            machine_model::install::worker_bundle_recipe(&machine_model::profile::WorkerBundle {
                source: "https://example.com/worker.tar.gz".into(),
                version: None,
                sha256: None,
            });
        let bundle = vec![("worker-bundle".to_owned(), bundle)];
        assert_eq!(
            needed(&bundle, &none).into_iter().collect::<Vec<_>>(),
            ["curl"]
        );
        let local = |name: &str| (name == "WORKER_BUNDLE_URL").then(|| "bundle-dir".to_owned());
        assert!(needed(&bundle, &local).is_empty());
    }
}
