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
    /// The profile file's text, as validated by build.rs.
    pub json: &'static str,
}

impl BakedProfile {
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

/// The baked profile called `name`, or a compile error naming the known ones when evaluated in a
/// `const` context (what [`profile!`](crate::profile) does).
#[doc(hidden)]
pub const fn resolve(name: &str) -> &'static BakedProfile {
    match by_name(name) {
        Some(p) => p,
        None => unknown_profile(name),
    }
}

const fn unknown_profile(name: &str) -> ! {
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
    let (bytes, _) = m.buf.split_at(m.len);
    match core::str::from_utf8(bytes) {
        Ok(message) => panic!("{}", message),
        Err(_) => panic!("unknown profile; see machine_runtime::profiles::ALL"),
    }
}

/// A fixed-size message built in a `const fn` (no allocation there); whole pieces only, and a final
/// "..." when something did not fit.
struct Message {
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
    ($name:literal) => {
        const { $crate::profiles::resolve($name) }
    };
}
