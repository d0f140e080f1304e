//! GPU inventory: which GPUs the runtime may use, from NVML or a fake backend, restricted by an outer `CUDA_VISIBLE_DEVICES`.
//!
//! The inventory is read through NVML only (via `nvml-wrapper`, which loads `libnvidia-ml.so` at run time),
//! so the supervisor never creates a CUDA context. A missing library or driver is a normal answer: zero GPUs
//! with the reason. `MACHINE_FAKE_GPUS=N` swaps NVML for `N` fake GPUs with deterministic UUIDs, for tests and
//! GPU-less machines.
//!
//! NVML ignores `CUDA_VISIBLE_DEVICES`, so when the runtime itself runs under one, [`Inventory::detect`] applies
//! it the way CUDA would: the listed GPUs in list order, an empty value meaning none, and the list cut at the
//! first entry that names no GPU. The visible GPUs are then numbered from 0 in that order ([`Gpu::index`]),
//! which is the index the plan and `WORKER_GPU_ID` use; [`Gpu::nvml_index`] keeps the host's NVML index.

use std::fmt;

use serde::Serialize;

pub(crate) use crate::env::FAKE_GPUS_VAR;

/// Most fake GPUs `MACHINE_FAKE_GPUS` accepts.
pub(crate) const MAX_FAKE_GPUS: u32 = 64;

/// Memory of every fake GPU: 24 GiB.
pub(crate) const FAKE_GPU_MEMORY_BYTES: u64 = 24 * 1024 * 1024 * 1024;

/// Environment variable CUDA reads to restrict and order the visible GPUs.
pub const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";

pub(crate) use crate::env::NVML_LIBRARY_VAR;

/// Reason given when `libnvidia-ml.so` cannot be loaded.
pub(crate) const REASON_NO_LIBRARY: &str = "NVIDIA management library (libnvidia-ml.so) not found";

/// The GPUs this runtime may use, where that answer came from, and why it is empty when it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inventory {
    /// Visible GPUs in device order (index 0 first).
    pub gpus: Vec<Gpu>,
    /// Which backend produced the answer.
    pub source: Source,
    /// Why there are no GPUs (or fewer than the backend reported), when that is the case.
    pub reason: Option<String>,
    /// Further facts a person should know, such as an outer `CUDA_VISIBLE_DEVICES` restriction.
    pub notes: Vec<String>,
}

/// Which backend produced an [`Inventory`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The NVIDIA management library.
    Nvml,
    /// The fake backend selected by `MACHINE_FAKE_GPUS`.
    Fake,
    /// No backend could answer (no library, no driver, no permission).
    None,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Nvml => "nvml",
            Source::Fake => "fake",
            Source::None => "none",
        })
    }
}

/// One physical GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gpu {
    /// Position among the visible GPUs (0-based); the index plans and `WORKER_GPU_ID` use.
    pub index: u32,
    /// Index NVML (and `nvidia-smi`) gives this GPU on the host; equals `index` unless restricted.
    pub nvml_index: u32,
    /// Stable identifier, `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`; children are pinned by it.
    pub uuid: String,
    /// Product name, such as `NVIDIA H200`.
    pub name: String,
    /// Total memory in bytes.
    pub memory_total_bytes: u64,
    /// PCI bus id, such as `00000000:01:00.0`.
    pub pci_bus_id: String,
    /// MIG devices, when MIG mode is enabled on this GPU.
    pub mig: Vec<MigDevice>,
}

/// One MIG device (a slice of a GPU).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigDevice {
    /// Index of the MIG device on its parent GPU.
    pub index: u32,
    /// Identifier, `MIG-xxxxxxxx-...`; usable in `CUDA_VISIBLE_DEVICES`.
    pub uuid: String,
    /// Memory of this slice in bytes.
    pub memory_total_bytes: u64,
}

/// Errors while choosing a GPU backend; NVML failures are not errors but an empty inventory with a reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GpuError {
    /// `MACHINE_FAKE_GPUS` holds something other than a count.
    #[error(
        "invalid {FAKE_GPUS_VAR}={value:?}: expected a whole number of fake GPUs from 0 to {MAX_FAKE_GPUS} \
         (for example {FAKE_GPUS_VAR}=2), or leave it unset to ask NVML"
    )]
    InvalidFakeGpus {
        /// The value found in the environment.
        value: String,
    },
}

/// What a backend found: GPUs in NVML order, or the reason it could not look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Detection {
    /// The backend answered; devices it could not read are listed in `skipped`.
    Found {
        /// GPUs in NVML order; `index` and `nvml_index` are the NVML index.
        gpus: Vec<Gpu>,
        /// One sentence per device that could not be read.
        skipped: Vec<String>,
    },
    /// The backend cannot answer; the sentence says why.
    Unavailable(String),
}

/// A source of GPU facts; NVML in production, [`FakeBackend`] in tests.
pub(crate) trait GpuBackend {
    /// Which [`Source`] an inventory from this backend reports.
    fn source(&self) -> Source;
    /// Lists the GPUs; never panics and never creates a CUDA context.
    fn detect(&self) -> Detection;
}

/// The real backend: NVML through `nvml-wrapper`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct NvmlBackend;

/// A backend that returns a fixed list of GPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FakeBackend {
    /// The GPUs it reports, in order.
    pub gpus: Vec<Gpu>,
}

impl FakeBackend {
    /// `count` fake GPUs with deterministic UUIDs, 24 GiB each, no MIG.
    pub fn new(count: u32) -> Self {
        FakeBackend {
            gpus: (0..count).map(fake_gpu).collect(),
        }
    }
}

/// The deterministic UUID of fake GPU `index`, shaped like an NVIDIA GPU UUID.
pub fn fake_gpu_uuid(index: u32) -> String {
    format!("GPU-fa4e0000-0000-4000-8000-{index:012x}")
}

fn fake_gpu(index: u32) -> Gpu {
    Gpu {
        index,
        nvml_index: index,
        uuid: fake_gpu_uuid(index),
        name: "Fake GPU".to_owned(),
        memory_total_bytes: FAKE_GPU_MEMORY_BYTES,
        pci_bus_id: format!("00000000:{index:02X}:00.0"),
        mig: Vec::new(),
    }
}

impl GpuBackend for FakeBackend {
    fn source(&self) -> Source {
        Source::Fake
    }

    fn detect(&self) -> Detection {
        Detection::Found {
            gpus: self.gpus.clone(),
            skipped: Vec::new(),
        }
    }
}

impl GpuBackend for NvmlBackend {
    fn source(&self) -> Source {
        Source::Nvml
    }

    fn detect(&self) -> Detection {
        use nvml_wrapper::Nvml;
        use nvml_wrapper::error::NvmlError;

        let library = std::env::var_os(NVML_LIBRARY_VAR).filter(|v| !v.is_empty());
        let loaded = match &library {
            Some(path) => Nvml::builder().lib_path(path).init(),
            None => Nvml::init(),
        };
        let nvml = match loaded {
            Ok(nvml) => nvml,
            Err(err) => {
                let reason = match err {
                    NvmlError::LibloadingError(_) => match &library {
                        Some(path) => format!(
                            "NVIDIA management library {} not found (named by {NVML_LIBRARY_VAR})",
                            path.to_string_lossy()
                        ),
                        None => REASON_NO_LIBRARY.to_owned(),
                    },
                    NvmlError::DriverNotLoaded => {
                        "NVIDIA driver not loaded (libnvidia-ml.so is present but no kernel driver answers)"
                            .to_owned()
                    }
                    NvmlError::NoPermission => "no permission to talk to the NVIDIA driver (NVML NoPermission); \
                         check the container's device access"
                        .to_owned(),
                    NvmlError::LibRmVersionMismatch => "NVIDIA library and kernel driver versions differ \
                         (NVML LibRmVersionMismatch); the container's libnvidia-ml.so must come from the host driver"
                        .to_owned(),
                    other => format!("NVML initialisation failed: {other}"),
                };
                return Detection::Unavailable(reason);
            }
        };
        let count = match nvml.device_count() {
            Ok(count) => count,
            Err(err) => return Detection::Unavailable(format!("NVML could not count GPUs: {err}")),
        };
        let mut gpus = Vec::new();
        let mut skipped = Vec::new();
        for nvml_index in 0..count {
            match read_nvml_gpu(&nvml, nvml_index) {
                Ok(gpu) => gpus.push(gpu),
                Err(err) => skipped.push(format!(
                    "GPU {nvml_index} skipped: NVML could not read it: {err}"
                )),
            }
        }
        Detection::Found { gpus, skipped }
    }
}

fn read_nvml_gpu(
    nvml: &nvml_wrapper::Nvml,
    nvml_index: u32,
) -> Result<Gpu, nvml_wrapper::error::NvmlError> {
    let device = nvml.device_by_index(nvml_index)?;
    let uuid = device.uuid()?;
    // Name, memory and bus id are descriptive; a GPU is still usable (pinned by UUID) without them.
    let name = device.name().unwrap_or_else(|_| "unknown".to_owned());
    let memory_total_bytes = device.memory_info().map(|m| m.total).unwrap_or(0);
    let pci_bus_id = device.pci_info().map(|p| p.bus_id).unwrap_or_default();
    let mig = read_nvml_mig(&device);
    Ok(Gpu {
        index: nvml_index,
        nvml_index,
        uuid,
        name,
        memory_total_bytes,
        pci_bus_id,
        mig,
    })
}

/// MIG devices of one GPU; any error (MIG unsupported, disabled, slots empty) means "none here".
fn read_nvml_mig(device: &nvml_wrapper::Device<'_>) -> Vec<MigDevice> {
    let enabled = device.mig_mode().map(|m| m.current == 1).unwrap_or(false);
    if !enabled {
        return Vec::new();
    }
    let slots = device.mig_device_count().unwrap_or(0);
    let mut mig = Vec::new();
    for index in 0..slots {
        // Empty slots answer NotFound; skip them rather than stop, since slots need not be dense.
        let Ok(handle) = device.mig_device_by_index(index) else {
            continue;
        };
        let Ok(uuid) = handle.uuid() else { continue };
        let memory_total_bytes = handle.memory_info().map(|m| m.total).unwrap_or(0);
        mig.push(MigDevice {
            index,
            uuid,
            memory_total_bytes,
        });
    }
    mig
}

/// Picks the backend the environment asks for: fake when `MACHINE_FAKE_GPUS` is set (and not empty), else NVML.
pub(crate) fn backend_from_env(fake_gpus: Option<&str>) -> Result<Box<dyn GpuBackend>, GpuError> {
    match fake_gpus.map(str::trim) {
        None | Some("") => Ok(Box::new(NvmlBackend)),
        Some(value) => {
            let count = value
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= MAX_FAKE_GPUS)
                .ok_or_else(|| GpuError::InvalidFakeGpus {
                    value: value.to_owned(),
                })?;
            Ok(Box::new(FakeBackend::new(count)))
        }
    }
}

impl Inventory {
    /// Detects GPUs from the process environment: `MACHINE_FAKE_GPUS`, else NVML, then applies an outer
    /// `CUDA_VISIBLE_DEVICES`. Fails only on an invalid `MACHINE_FAKE_GPUS`.
    pub fn detect() -> Result<Inventory, GpuError> {
        let fake = crate::env::lookup(FAKE_GPUS_VAR);
        let backend = backend_from_env(fake.as_deref())?;
        let cvd = crate::env::lookup(CUDA_VISIBLE_DEVICES);
        Ok(Inventory::detect_with(backend.as_ref(), cvd.as_deref()))
    }

    /// Builds the inventory from `backend`, restricted by `cuda_visible_devices` (`None` when unset).
    pub(crate) fn detect_with(
        backend: &dyn GpuBackend,
        cuda_visible_devices: Option<&str>,
    ) -> Inventory {
        match backend.detect() {
            Detection::Unavailable(reason) => Inventory {
                gpus: Vec::new(),
                source: Source::None,
                reason: Some(reason),
                notes: Vec::new(),
            },
            Detection::Found { gpus, skipped } => {
                let mut inventory = Inventory {
                    gpus,
                    source: backend.source(),
                    reason: None,
                    notes: skipped,
                };
                if let Some(cvd) = cuda_visible_devices {
                    inventory.restrict(cvd);
                }
                for (position, gpu) in inventory.gpus.iter_mut().enumerate() {
                    gpu.index = position as u32;
                }
                if inventory.gpus.is_empty() && inventory.reason.is_none() {
                    inventory.reason = Some(match inventory.source {
                        Source::Fake => format!("{FAKE_GPUS_VAR}=0"),
                        _ => "NVML reports no GPUs".to_owned(),
                    });
                }
                inventory
            }
        }
    }

    /// Keeps only the GPUs an outer `CUDA_VISIBLE_DEVICES` shows, in its order, as CUDA would.
    fn restrict(&mut self, cvd: &str) {
        let found = self.gpus.len();
        if cvd.trim().is_empty() {
            self.gpus.clear();
            self.reason = Some(format!(
                "{CUDA_VISIBLE_DEVICES} is set to an empty value, which hides every GPU"
            ));
            return;
        }
        let selection = select_visible(&self.gpus, cvd);
        if let Some(stop) = &selection.stopped_at {
            self.notes.push(format!(
                "{CUDA_VISIBLE_DEVICES} entry {:?} {}; CUDA ignores it and every entry after it",
                stop.entry, stop.why
            ));
        }
        let all = std::mem::take(&mut self.gpus);
        self.gpus = selection
            .picks
            .into_iter()
            .map(|pick| {
                let mut gpu = all[pick.position].clone();
                if let Some(mig_uuids) = pick.only_mig {
                    gpu.mig.retain(|m| mig_uuids.contains(&m.uuid));
                }
                gpu
            })
            .collect();
        let note = format!(
            "{CUDA_VISIBLE_DEVICES}={cvd} restricts the inventory to {} of {found} GPUs (indices are NVML's PCI bus \
             order; pin by UUID to be sure)",
            self.gpus.len()
        );
        if self.gpus.is_empty() {
            self.reason = Some(note);
        } else {
            self.notes.push(note);
        }
    }

    /// UUID of the visible GPU at `index` (the plan's GPU index, as carried in `WORKER_GPU_ID`).
    pub fn uuid_of(&self, index: u32) -> Option<&str> {
        self.gpus
            .iter()
            .find(|g| g.index == index)
            .map(|g| g.uuid.as_str())
    }

    /// UUIDs of the visible GPUs in device order.
    pub fn ordered_uuids(&self) -> Vec<&str> {
        self.gpus.iter().map(|g| g.uuid.as_str()).collect()
    }

    /// Human-readable table, or `0 GPUs (reason)`; notes follow, one per line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if self.gpus.is_empty() {
            let reason = self.reason.as_deref().unwrap_or("no reason given");
            out.push_str(&format!("0 GPUs ({reason})\n"));
        } else {
            let header = ["INDEX", "UUID", "NAME", "MEMORY", "PCI BUS ID", "MIG"];
            let mut rows = vec![header.map(str::to_owned).to_vec()];
            for gpu in &self.gpus {
                let mig = if gpu.mig.is_empty() {
                    "-".to_owned()
                } else {
                    gpu.mig
                        .iter()
                        .map(|m| m.uuid.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                };
                rows.push(vec![
                    gpu.index.to_string(),
                    gpu.uuid.clone(),
                    gpu.name.clone(),
                    format!(
                        "{:.1} GiB",
                        gpu.memory_total_bytes as f64 / (1024.0 * 1024.0 * 1024.0)
                    ),
                    gpu.pci_bus_id.clone(),
                    mig,
                ]);
            }
            let widths: Vec<usize> = (0..header.len())
                .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
                .collect();
            for row in &rows {
                let cells: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(cell, w)| format!("{cell:<w$}"))
                    .collect();
                out.push_str(cells.join("  ").trim_end());
                out.push('\n');
            }
            out.push_str(&format!(
                "{} GPUs (source: {})\n",
                self.gpus.len(),
                self.source
            ));
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }
}

struct Pick {
    position: usize,
    /// `Some` when the entry named MIG devices: keep only those on the GPU.
    only_mig: Option<Vec<String>>,
}

struct Stop {
    entry: String,
    why: &'static str,
}

struct Selection {
    picks: Vec<Pick>,
    stopped_at: Option<Stop>,
}

/// Resolves each `CUDA_VISIBLE_DEVICES` entry to a GPU, stopping at the first one that names none.
fn select_visible(gpus: &[Gpu], cvd: &str) -> Selection {
    let mut picks: Vec<Pick> = Vec::new();
    for raw in cvd.split(',') {
        let entry = raw.trim();
        let resolved = resolve_entry(gpus, entry);
        let (position, mig_uuid) = match resolved {
            Ok(found) => found,
            Err(why) => {
                return Selection {
                    picks,
                    stopped_at: Some(Stop {
                        entry: entry.to_owned(),
                        why,
                    }),
                };
            }
        };
        match picks.iter_mut().find(|p| p.position == position) {
            // Several MIG slices of one GPU: one entry in the inventory holding those slices.
            Some(Pick {
                only_mig: Some(list),
                ..
            }) if mig_uuid.is_some() => list.extend(mig_uuid),
            Some(_) => {
                return Selection {
                    picks,
                    stopped_at: Some(Stop {
                        entry: entry.to_owned(),
                        why: "names a GPU listed earlier",
                    }),
                };
            }
            None => picks.push(Pick {
                position,
                only_mig: mig_uuid.map(|u| vec![u]),
            }),
        }
    }
    Selection {
        picks,
        stopped_at: None,
    }
}

/// One entry → (position in `gpus`, MIG UUID when the entry named a MIG device).
fn resolve_entry(gpus: &[Gpu], entry: &str) -> Result<(usize, Option<String>), &'static str> {
    if entry.is_empty() {
        return Err("is empty");
    }
    if entry.bytes().all(|b| b.is_ascii_digit()) {
        let index: u32 = entry.parse().map_err(|_| "is not a GPU index")?;
        return gpus
            .iter()
            .position(|g| g.nvml_index == index)
            .map(|p| (p, None))
            .ok_or("is not a GPU index here");
    }
    if entry.starts_with("GPU-") {
        return unique(
            gpus.iter()
                .enumerate()
                .filter(|(_, g)| g.uuid.starts_with(entry))
                .map(|(p, _)| (p, None)),
        );
    }
    if let Some(rest) = entry.strip_prefix("MIG-") {
        // Older form: MIG-<GPU uuid>/<gpu instance>/<compute instance>; the GPU part selects the parent.
        if let Some((gpu_part, _)) = rest.split_once('/') {
            if !gpu_part.starts_with("GPU-") {
                return Err("is not a MIG device id");
            }
            return unique(
                gpus.iter()
                    .enumerate()
                    .filter(|(_, g)| g.uuid.starts_with(gpu_part))
                    .map(|(p, _)| (p, None)),
            );
        }
        return unique(gpus.iter().enumerate().flat_map(|(p, g)| {
            g.mig
                .iter()
                .filter(|m| m.uuid.starts_with(entry))
                .map(move |m| (p, Some(m.uuid.clone())))
        }));
    }
    Err("is not a GPU index, GPU- UUID or MIG- id")
}

fn unique<T>(mut matches: impl Iterator<Item = T>) -> Result<T, &'static str> {
    let first = matches.next().ok_or("matches no GPU here")?;
    if matches.next().is_some() {
        return Err("matches more than one GPU (UUID prefix too short)");
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(backend: &FakeBackend, cvd: Option<&str>) -> Inventory {
        Inventory::detect_with(backend, cvd)
    }

    fn with_mig(count: u32) -> FakeBackend {
        let mut backend = FakeBackend::new(count);
        let gpu = &mut backend.gpus[1];
        for i in 0..2 {
            gpu.mig.push(MigDevice {
                index: i,
                uuid: format!("MIG-fa4e0001-0000-4000-8000-{i:012x}"),
                memory_total_bytes: 10 << 30,
            });
        }
        backend
    }

    #[test]
    fn fake_uuids_are_deterministic_and_shaped_like_nvidia_uuids() {
        assert_eq!(fake_gpu_uuid(0), "GPU-fa4e0000-0000-4000-8000-000000000000");
        assert_eq!(
            fake_gpu_uuid(11),
            "GPU-fa4e0000-0000-4000-8000-00000000000b"
        );
        let inv = inventory(&FakeBackend::new(3), None);
        assert_eq!(inv.source, Source::Fake);
        assert_eq!(
            inv.ordered_uuids(),
            vec![fake_gpu_uuid(0), fake_gpu_uuid(1), fake_gpu_uuid(2)]
        );
        assert_eq!(inv.gpus[2].pci_bus_id, "00000000:02:00.0");
        assert_eq!(inv.reason, None);
    }

    #[test]
    fn fake_gpus_env_values() {
        assert_eq!(backend_from_env(None).unwrap().source(), Source::Nvml);
        assert_eq!(backend_from_env(Some("")).unwrap().source(), Source::Nvml);
        assert_eq!(
            backend_from_env(Some(" 2 ")).unwrap().source(),
            Source::Fake
        );
        for bad in ["two", "-1", "1.5", "65", "2,3"] {
            let err = backend_from_env(Some(bad)).err().unwrap();
            assert_eq!(
                err,
                GpuError::InvalidFakeGpus {
                    value: bad.to_owned()
                }
            );
            let msg = err.to_string();
            assert!(
                msg.contains("MACHINE_FAKE_GPUS") && msg.contains("0 to 64"),
                "{msg}"
            );
        }
    }

    #[test]
    fn zero_fake_gpus_say_why() {
        let inv = inventory(&FakeBackend::new(0), None);
        assert!(inv.gpus.is_empty());
        assert_eq!(inv.reason.as_deref(), Some("MACHINE_FAKE_GPUS=0"));
    }

    #[test]
    fn cvd_indices_reorder_and_renumber() {
        let inv = inventory(&FakeBackend::new(4), Some("3,1"));
        assert_eq!(
            inv.ordered_uuids(),
            vec![fake_gpu_uuid(3), fake_gpu_uuid(1)]
        );
        assert_eq!(
            inv.gpus
                .iter()
                .map(|g| (g.index, g.nvml_index))
                .collect::<Vec<_>>(),
            vec![(0, 3), (1, 1)]
        );
        assert_eq!(inv.uuid_of(0), Some(fake_gpu_uuid(3).as_str()));
        assert_eq!(inv.uuid_of(2), None);
        assert!(
            inv.notes
                .iter()
                .any(|n| n.contains("restricts the inventory to 2 of 4 GPUs")),
            "{:?}",
            inv.notes
        );
    }

    #[test]
    fn cvd_empty_means_none() {
        let inv = inventory(&FakeBackend::new(2), Some(""));
        assert!(inv.gpus.is_empty());
        assert!(inv.reason.unwrap().contains("empty"));
    }

    #[test]
    fn cvd_truncates_at_first_invalid_entry() {
        let inv = inventory(&FakeBackend::new(3), Some("0,2,-1,1"));
        assert_eq!(
            inv.ordered_uuids(),
            vec![fake_gpu_uuid(0), fake_gpu_uuid(2)]
        );
        assert!(
            inv.notes.iter().any(|n| n.contains("\"-1\"")),
            "{:?}",
            inv.notes
        );

        let inv = inventory(&FakeBackend::new(2), Some("0,7,1"));
        assert_eq!(inv.ordered_uuids(), vec![fake_gpu_uuid(0)]);

        let inv = inventory(&FakeBackend::new(2), Some("1,1"));
        assert_eq!(inv.ordered_uuids(), vec![fake_gpu_uuid(1)]);
    }

    #[test]
    fn cvd_first_entry_invalid_hides_all_with_reason() {
        let inv = inventory(&FakeBackend::new(2), Some("-1"));
        assert!(inv.gpus.is_empty());
        assert!(
            inv.reason
                .as_deref()
                .unwrap()
                .contains("restricts the inventory to 0 of 2 GPUs")
        );
    }

    #[test]
    fn cvd_uuid_prefixes() {
        let backend = FakeBackend::new(2);
        let inv = inventory(
            &backend,
            Some(&format!(
                "{},{}",
                fake_gpu_uuid(1),
                "GPU-fa4e0000-0000-4000-8000-00000000000"
            )),
        );
        // The second entry is a prefix of both UUIDs: ambiguous, so it and what follows are dropped.
        assert_eq!(inv.ordered_uuids(), vec![fake_gpu_uuid(1)]);
        assert!(
            inv.notes.iter().any(|n| n.contains("more than one GPU")),
            "{:?}",
            inv.notes
        );

        let inv = inventory(&backend, Some("GPU-fa4e0000-0000-4000-8000-000000000000"));
        assert_eq!(inv.ordered_uuids(), vec![fake_gpu_uuid(0)]);
    }

    #[test]
    fn cvd_mig_entries_keep_parent_with_named_slices() {
        let backend = with_mig(2);
        let inv = inventory(&backend, Some("MIG-fa4e0001-0000-4000-8000-000000000001"));
        assert_eq!(inv.ordered_uuids(), vec![fake_gpu_uuid(1)]);
        assert_eq!(inv.gpus[0].mig.len(), 1);
        assert_eq!(inv.gpus[0].mig[0].index, 1);

        let legacy = format!("MIG-{}/1/0", fake_gpu_uuid(1));
        let inv = inventory(&backend, Some(&legacy));
        assert_eq!(inv.ordered_uuids(), vec![fake_gpu_uuid(1)]);
        assert_eq!(inv.gpus[0].mig.len(), 2);
    }

    #[test]
    fn unavailable_backend_is_zero_gpus_with_reason() {
        struct Absent;
        impl GpuBackend for Absent {
            fn source(&self) -> Source {
                Source::Nvml
            }
            fn detect(&self) -> Detection {
                Detection::Unavailable(REASON_NO_LIBRARY.to_owned())
            }
        }
        let inv = Inventory::detect_with(&Absent, Some("0"));
        assert_eq!(inv.source, Source::None);
        assert_eq!(inv.reason.as_deref(), Some(REASON_NO_LIBRARY));
        assert_eq!(inv.to_text(), format!("0 GPUs ({REASON_NO_LIBRARY})\n"));
    }

    #[test]
    fn text_table() {
        let inv = inventory(&FakeBackend::new(2), None);
        let text = inv.to_text();
        let expected = "\
INDEX  UUID                                      NAME      MEMORY    PCI BUS ID        MIG
0      GPU-fa4e0000-0000-4000-8000-000000000000  Fake GPU  24.0 GiB  00000000:00:00.0  -
1      GPU-fa4e0000-0000-4000-8000-000000000001  Fake GPU  24.0 GiB  00000000:01:00.0  -
2 GPUs (source: fake)
";
        assert_eq!(text, expected);
    }
}
