//! An operator's extra arguments for a service (a profile's `comfyui.args`, `COMFY_ARGS` at start),
//! checked against the flags the machine sets itself on every instance.
//!
//! The machine owns `--listen`, `--port`, the per-instance `--output-directory` and `--temp-directory`,
//! and `--cpu` ([`ServiceEntry::reserved_flags`]): an extra argument repeating one, as `--port 9000`,
//! `--port=9000` or an abbreviation Python's argparse would take for it (`--outp`), would make two
//! instances share a port or a folder, or contradict the machine's CPU decision, so it is refused.

use crate::catalog::ServiceEntry;

/// The reserved flag `word` repeats, if any: the flag itself, `--flag=value`, or a prefix of at least two
/// letters after `--` that argparse (ComfyUI's parser, `allow_abbrev` on) expands to the flag.
pub fn repeated_flag(entry: &ServiceEntry, word: &str) -> Option<&'static str> {
    let name = word.split_once('=').map_or(word, |(name, _)| name);
    if !name.starts_with("--") || name.len() < 4 {
        return None;
    }
    entry
        .reserved_flags()
        .into_iter()
        .find(|flag| *flag == name || flag.starts_with(name))
}

/// Why `word` may not be an extra argument of `entry`: `"--port" is set by the machine (…); remove it`.
pub fn refusal(entry: &ServiceEntry, word: &str, flag: &str) -> String {
    let reserved = entry.reserved_flags();
    let how = if word == flag {
        String::new()
    } else {
        format!(" (as {flag})")
    };
    if entry.cpu_arg == Some(flag) {
        // Whether it is set here or not, CPU mode is the profile's decision (GPU pins, Compose's GPU
        // reservation and the plan all follow it), never a start-up flag.
        return format!(
            "{word:?}{how} is the machine's decision: every {} instance gets it when its GPUs are simulated (machine.gpu_mode: \"mock\") or the profile says \"{}\": {{\"cpu\": true}}; set that instead",
            entry.name, entry.name
        );
    }
    format!(
        "{word:?}{how} is set by the machine (every {} instance gets {}{}); remove it",
        entry.name,
        reserved
            .iter()
            .filter(|f| Some(**f) != entry.cpu_arg)
            .copied()
            .collect::<Vec<_>>()
            .join(", "),
        entry
            .cpu_arg
            .map(|cpu| format!(
                ", and {cpu} when its GPUs are simulated or the profile asks for CPU mode"
            ))
            .unwrap_or_default()
    )
}

/// Every word of `words` that repeats a reserved flag, as (0-based index, message).
pub fn problems(entry: &ServiceEntry, words: &[String]) -> Vec<(usize, String)> {
    words
        .iter()
        .enumerate()
        .filter_map(|(i, word)| {
            repeated_flag(entry, word).map(|flag| (i, refusal(entry, word, flag)))
        })
        .collect()
}

/// The words of an extra-arguments variable (`COMFY_ARGS`), split like a shell would
/// ([`crate::ecosystem::split_args`]), or one message per problem: an unbalanced quote, or a word (by its
/// 1-based position) that repeats a reserved flag. Each message names the variable.
pub fn from_env(entry: &ServiceEntry, var: &str, value: &str) -> Result<Vec<String>, Vec<String>> {
    let words = crate::ecosystem::split_args(value).map_err(|e| {
        vec![format!(
            "{var} {e}; close the quote (words are split like a shell would)"
        )]
    })?;
    let found = problems(entry, &words);
    if found.is_empty() {
        return Ok(words);
    }
    Err(found
        .into_iter()
        .map(|(i, message)| format!("{var} word {}: {message}", i + 1))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comfyui() -> &'static ServiceEntry {
        crate::catalog::service("comfyui").unwrap()
    }

    #[test]
    fn cpu_is_the_profile_s_decision_not_a_start_up_flag() {
        let entry = crate::catalog::service("comfyui").unwrap();
        let message = refusal(entry, "--cpu", "--cpu");
        assert!(
            message.starts_with("\"--cpu\" is the machine's decision")
                && message
                    .ends_with("the profile says \"comfyui\": {\"cpu\": true}; set that instead"),
            "{message}"
        );
    }

    #[test]
    fn the_machine_s_flags_are_reserved_in_every_spelling() {
        let e = comfyui();
        assert_eq!(
            e.reserved_flags(),
            [
                "--listen",
                "--port",
                "--output-directory",
                "--temp-directory",
                "--cpu"
            ]
        );
        for (word, flag) in [
            ("--port", Some("--port")),
            ("--port=9000", Some("--port")),
            ("--listen=::", Some("--listen")),
            ("--cpu", Some("--cpu")),
            ("--outp", Some("--output-directory")),
            ("--temp-directory=/tmp/x", Some("--temp-directory")),
            // Other flags, values and near misses are the operator's.
            ("--cpu-vae", None),
            ("--preview-method", None),
            ("--portal", None),
            ("9000", None),
            ("-p", None),
            ("--", None),
            ("--p", None),
        ] {
            assert_eq!(repeated_flag(e, word), flag, "{word}");
        }
    }

    #[test]
    fn every_repeated_flag_is_one_message_with_its_position() {
        let words: Vec<String> = ["--preview-method", "auto", "--port", "1", "--cpu"]
            .map(str::to_owned)
            .to_vec();
        let found = problems(comfyui(), &words);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].0, 2);
        assert_eq!(
            found[0].1,
            "\"--port\" is set by the machine (every comfyui instance gets --listen, --port, --output-directory, --temp-directory, and --cpu when its GPUs are simulated or the profile asks for CPU mode); remove it"
        );
        assert_eq!(found[1].0, 4);
        assert!(
            refusal(comfyui(), "--out=/x", "--output-directory")
                .starts_with("\"--out=/x\" (as --output-directory) is set by the machine")
        );
    }

    #[test]
    fn the_variable_is_split_like_a_shell_and_each_problem_names_it() {
        let e = comfyui();
        assert_eq!(
            from_env(e, "COMFY_ARGS", "--preview-method auto --extra 'a b'").unwrap(),
            ["--preview-method", "auto", "--extra", "a b"]
        );
        assert_eq!(from_env(e, "COMFY_ARGS", "").unwrap(), Vec::<String>::new());
        let errors = from_env(e, "COMFY_ARGS", "--fast --port=1 --listen 0.0.0.0").unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0]
                .starts_with("COMFY_ARGS word 2: \"--port=1\" (as --port) is set by the machine"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("COMFY_ARGS word 3: \"--listen\" is set"),
            "{errors:?}"
        );
        let errors = from_env(e, "COMFY_ARGS", "--x 'open").unwrap_err();
        assert_eq!(
            errors,
            [
                "COMFY_ARGS has an unclosed single quote: --x 'open; close the quote (words are split like a shell would)"
            ]
        );
    }
}
