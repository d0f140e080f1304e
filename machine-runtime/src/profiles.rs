//! The profiles baked in at build time: build.rs validates every `profiles/*.json` and emits one typed
//! constant per profile (e.g. [`GPU_MIXED`]), the list [`ALL`], the lookup [`by_name`] and the
//! compile-time lookup [`profile!`](crate::profile).
//!
//! The constants hold the fields a runtime needs without parsing anything; [`BakedProfile::profile`]
//! and [`BakedProfile::plan`] give the full model values from the baked (already validated) source.

use machine_model::{Overrides, Plan, PlanErrors, Profile};

/// A profile as a `const` value: the scalar fields of [`Profile`], and its validated source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BakedProfile {
    /// The profile name (the file stem), e.g. `gpu-mixed`.
    pub name: &'static str,
    /// What this machine is for, in one sentence.
    pub description: &'static str,
    /// The worker spec, checked at compile time by [`machine_model::worker_spec!`].
    pub workers: &'static str,
    /// How many GPUs the machine is planned for.
    pub gpus: u32,
    /// Memory the machine is expected to have, in GiB.
    pub ram_gb: u32,
    /// The GPU model the plan expects (informational).
    pub gpu_model: Option<&'static str>,
    /// Whether the runtime may re-plan on fewer GPUs than planned.
    pub allow_fewer_gpus: bool,
    /// Port of the health endpoint.
    pub health_port: u16,
    /// `MACHINE_ID`: the profile's `machine.id`, or its name.
    pub machine_id: &'static str,
    /// The machine settings (`LOG_LEVEL`, `WORKER_POLL_INTERVAL_MS`, base ports, ...) its components and
    /// `env` give, as in its generated files, sorted by name; the environment overrides each.
    pub settings: &'static [(&'static str, &'static str)],
    /// The profile file's text, as validated by build.rs.
    pub json: &'static str,
}

impl BakedProfile {
    /// The profile's own value of the machine setting `name` (see [`BakedProfile::settings`]).
    pub fn setting(&self, name: &str) -> Option<&'static str> {
        self.settings
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    /// The full model value, parsed from the baked source.
    pub fn profile(&self) -> Result<Profile, serde_json::Error> {
        serde_json::from_str(self.json)
    }

    /// The plan of this profile with `overrides` applied.
    pub fn plan(&self, overrides: &Overrides) -> Result<Plan, PlanErrors> {
        // build.rs parsed and planned this very text, so parsing cannot fail here.
        let profile = self
            .profile()
            .expect("baked profile source was validated by build.rs");
        Plan::build(self.name, &profile, overrides)
    }
}

include!(concat!(env!("OUT_DIR"), "/profiles.rs"));

/// Every baked profile, sorted by name.
pub static ALL: &[&BakedProfile] = PROFILES;

/// The baked profile called `name`.
pub const fn by_name(name: &str) -> Option<&'static BakedProfile> {
    let mut i = 0;
    while i < PROFILES.len() {
        if str_eq(PROFILES[i].name, name) {
            return Some(PROFILES[i]);
        }
        i += 1;
    }
    None
}

/// What a command says for an unknown `--profile`/`MACHINE_PROFILE` name: the baked-in names, and the
/// nearest one when a typo is likely (`unknown profile "full-locl" (did you mean "full-local"?); …`).
pub fn unknown(name: &str) -> String {
    let names: Vec<&str> = ALL.iter().map(|p| p.name).collect();
    let hint = machine_model::suggest::did_you_mean(name, names.iter().copied())
        .map(|s| format!(" (did you mean \"{s}\"?)"))
        .unwrap_or_default();
    format!(
        "unknown profile \"{name}\"{hint}; baked-in profiles: {}",
        names.join(", ")
    )
}

/// The message of an unknown profile name: `unknown profile "x"; known: a, b` (built in a `const fn`
/// so that [`profile!`](crate::profile) can fail to compile with it).
#[doc(hidden)]
pub const fn unknown_profile_message(name: &str) -> Message {
    let mut m = Message::new();
    m.push("unknown profile \"");
    m.push(name);
    m.push("\"; known: ");
    let mut i = 0;
    while i < PROFILES.len() {
        if i > 0 {
            m.push(", ");
        }
        m.push(PROFILES[i].name);
        i += 1;
    }
    m
}

/// A fixed-size message built in a `const fn` (no allocation there); whole pieces only, and a final
/// "..." when something did not fit.
#[doc(hidden)]
#[derive(Debug)]
pub struct Message {
    buf: [u8; Message::CAPACITY],
    len: usize,
    full: bool,
}

impl Message {
    const CAPACITY: usize = 2048;
    const CUT: &'static str = "...";

    const fn new() -> Message {
        Message {
            buf: [0; Message::CAPACITY],
            len: 0,
            full: false,
        }
    }

    /// The text (always UTF-8: only whole pieces of `&str` are copied).
    pub const fn as_str(&self) -> Option<&str> {
        let (bytes, _) = self.buf.split_at(self.len);
        match core::str::from_utf8(bytes) {
            Ok(text) => Some(text),
            Err(_) => None,
        }
    }

    const fn push(&mut self, s: &str) {
        if self.full {
            return;
        }
        let piece = if s.len() + Message::CUT.len() <= Message::CAPACITY - self.len {
            s.as_bytes()
        } else {
            self.full = true;
            Message::CUT.as_bytes()
        };
        let mut i = 0;
        while i < piece.len() {
            self.buf[self.len] = piece[i];
            self.len += 1;
            i += 1;
        }
    }
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A baked profile looked up at compile time: `machine_runtime::profile!("gpu-mixed")` is a
/// `&'static BakedProfile`; an unknown name fails to compile, listing the known ones.
///
/// ```
/// let p = machine_runtime::profile!("gpu-mixed");
/// assert_eq!(p.gpus, 2);
/// ```
#[macro_export]
macro_rules! profile {
    ($name:literal) => {{
        // A `const` item, so that `cargo check` and rust-analyzer report an unknown name too.
        const PROFILE: &$crate::profiles::BakedProfile = match $crate::profiles::by_name($name) {
            Some(profile) => profile,
            None => match $crate::profiles::unknown_profile_message($name).as_str() {
                Some(message) => panic!("{}", message),
                None => panic!("unknown profile; see machine_runtime::profiles::ALL"),
            },
        };
        PROFILE
    }};
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_unknown_profile_names_the_nearest_and_every_baked_one() {
        let said = unknown("full-locl");
        assert!(
            said.starts_with(
                "unknown profile \"full-locl\" (did you mean \"full-local\"?); baked-in profiles: "
            ),
            "{said}"
        );
        assert!(ALL.iter().all(|p| said.contains(p.name)), "{said}");
        assert!(!unknown("zzzzzzzz").contains("did you mean"));
    }

    use std::path::Path;

    use super::*;

    fn profiles_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles")
    }

    #[test]
    fn all_lists_exactly_the_profile_files() {
        let mut files: Vec<String> = std::fs::read_dir(profiles_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .map(|p| p.file_stem().unwrap().to_str().unwrap().to_string())
            .collect();
        files.sort();
        let baked: Vec<&str> = ALL.iter().map(|p| p.name).collect();
        assert_eq!(baked, files);
        assert!(!files.is_empty());
    }

    #[test]
    fn baked_values_match_the_files_and_their_plans() {
        for baked in ALL {
            let path = profiles_dir().join(format!("{}.json", baked.name));
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(baked.json, text, "{}", baked.name);
            let parsed: Profile = serde_json::from_str(&text).unwrap();
            assert_eq!(baked.profile().unwrap(), parsed);
            assert_eq!(baked.description, parsed.description);
            assert_eq!(baked.workers, parsed.workers);
            assert_eq!(baked.gpus, parsed.machine.gpus);
            assert_eq!(baked.ram_gb, parsed.machine.ram_gb);
            assert_eq!(baked.gpu_model, parsed.machine.gpu_model.as_deref());
            assert_eq!(baked.allow_fewer_gpus, parsed.machine.allow_fewer_gpus);
            assert_eq!(baked.health_port, parsed.machine.health_port);
            let plan = Plan::build(baked.name, &parsed, &Overrides::default()).unwrap();
            assert_eq!(baked.plan(&Overrides::default()).unwrap(), plan);
            assert_eq!(baked.machine_id, plan.machine_id);
            assert_eq!(by_name(baked.name), Some(*baked));
        }
    }

    #[test]
    fn plans_take_overrides() {
        let overrides = Overrides {
            gpus: Some(4),
            ..Overrides::default()
        };
        let plan = GPU_MIXED.plan(&overrides).unwrap();
        assert_eq!(plan.gpus, 4);
        let overrides = Overrides {
            workers: Some("comfyui:1:gpu".into()),
            gpus: Some(0),
            ..Overrides::default()
        };
        let errors = GPU_MIXED.plan(&overrides).unwrap_err();
        assert!(errors.to_string().contains("0 GPUs"), "{errors}");
    }

    #[test]
    fn lookups() {
        assert_eq!(by_name("gpu-mixed"), Some(&GPU_MIXED));
        assert_eq!(by_name("gpu-mixe"), None);
        assert_eq!(by_name(""), None);
        let p: &'static BakedProfile = crate::profile!("gpu-mixed");
        assert_eq!(p, &GPU_MIXED);
        const API: &BakedProfile = crate::profile!("api-only");
        assert_eq!(API.gpus, 0);
    }

    #[test]
    fn unknown_profile_message_lists_the_known_ones() {
        let known: Vec<&str> = ALL.iter().map(|p| p.name).collect();
        assert_eq!(
            unknown_profile_message("gpu-mixd").as_str(),
            Some(format!("unknown profile \"gpu-mixd\"; known: {}", known.join(", ")).as_str())
        );
        // Too long for the buffer: cut at a whole piece, marked, still valid UTF-8.
        let long = "é".repeat(Message::CAPACITY);
        let message = unknown_profile_message(&long);
        assert_eq!(message.as_str(), Some("unknown profile \"..."));
    }
}
