//! The one "did you mean" rule of the project: every error that names an unknown thing (connector,
//! field, section, variable, app, recipe) proposes the nearest known one through [`did_you_mean`].

/// The candidate nearest to `wanted`, when it is near enough to be a likely typo; `None` otherwise.
///
/// Nearness is the optimal-string-alignment distance (insertions, deletions, substitutions and swaps
/// of two neighbours, from `strsim`) between the lowercased strings; a candidate is near when that
/// distance is at most a third of the longer string's length (at most 3; so names under 3 characters
/// get no proposal, a different name that short is not a typo). Failing that, a
/// candidate that starts with `wanted` (or that `wanted` starts with), both at least 3 characters long,
/// is near: `comfy` → `comfyui`. Ties go to the first candidate in iteration order. A candidate equal
/// to `wanted` is never proposed (the caller is asking because the name is unknown), but one that
/// differs only in case is: `Remote` → `remote`.
pub fn did_you_mean<'a, I>(wanted: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let wanted_lower = wanted.to_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    let mut prefix: Option<&'a str> = None;
    for candidate in candidates {
        if candidate == wanted {
            continue;
        }
        let lower = candidate.to_lowercase();
        let distance = strsim::osa_distance(&wanted_lower, &lower);
        let longer = wanted_lower.chars().count().max(lower.chars().count());
        let limit = (longer / 3).min(3);
        if distance <= limit && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
        let short = wanted_lower.chars().count().min(lower.chars().count());
        if prefix.is_none()
            && short >= 3
            && (lower.starts_with(&wanted_lower) || wanted_lower.starts_with(&lower))
        {
            prefix = Some(candidate);
        }
    }
    best.map(|(_, c)| c).or(prefix)
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn typos_case_and_swaps_find_the_nearest() {
        let sections = ["default", "local", "remote"];
        assert_eq!(did_you_mean("locl", sections), Some("local"));
        assert_eq!(did_you_mean("Remote", sections), Some("remote"));
        assert_eq!(did_you_mean("staging", sections), None);
        assert_eq!(did_you_mean("redsi", ["redis", "mock"]), Some("redis"));
        assert_eq!(
            did_you_mean("comfyiu", ["comfyui", "comfyui-remote"]),
            Some("comfyui")
        );
        assert_eq!(did_you_mean("opnai", ["openai", "gemini"]), Some("openai"));
    }

    #[test]
    fn prefixes_are_near_and_the_name_itself_is_not_proposed() {
        assert_eq!(
            did_you_mean("comfy", ["ollama", "comfyui"]),
            Some("comfyui")
        );
        assert_eq!(
            did_you_mean("simulation", ["simulation-websocket"]),
            Some("simulation-websocket")
        );
        assert_eq!(did_you_mean("ab", ["abcdef"]), None);
        assert_eq!(did_you_mean("mock", ["mock"]), None);
        assert_eq!(did_you_mean("x", []), None);
        assert_eq!(did_you_mean("c", ["a", "b"]), None);
    }

    #[test]
    fn the_nearest_wins_over_an_earlier_farther_one() {
        assert_eq!(
            did_you_mean(
                "max_restart",
                ["min_uptime", "max_restarts", "max_memory_restart"]
            ),
            Some("max_restarts")
        );
    }
}
