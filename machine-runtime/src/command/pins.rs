//! GPU pins: the app's `machine_gpu`/`WORKER_GPU_ID`, and every pin written in its env
//! (`CUDA_VISIBLE_DEVICES`, `NVIDIA_VISIBLE_DEVICES`) or arguments, checked against the inventory.

use std::collections::BTreeMap;
use std::ffi::OsString;

use super::{CommandError, Context, GpuPin};
use crate::ecosystem::AppSpec;

/// Pins the child to its GPUs in `env`: `CUDA_VISIBLE_DEVICES` by UUID (empty for none), and
/// `WORKER_GPU_ID` for an app pinned by `machine_gpu`/`WORKER_GPU_ID`, whose pins written elsewhere
/// must name the same GPU; `CUDA_DEVICE_ORDER=PCI_BUS_ID`. Returns the one GPU it is pinned to, if
/// exactly one, and every GPU it may use ([`super::ChildCommand::gpu`], [`super::ChildCommand::visible`]).
pub(super) fn apply_pins(
    env: &mut BTreeMap<OsString, OsString>,
    app: &AppSpec,
    ctx: &Context,
) -> Result<(Option<GpuPin>, Vec<GpuPin>), CommandError> {
    let gpu = gpu_pin(app, ctx)?;
    let mut visible = Vec::new();
    match &gpu {
        Some(pin) => {
            // A pin written in the app's env too must name the same GPU.
            for (source, value, pins) in env_pins(app, ctx)? {
                if pins.len() != 1 || pins[0].index != pin.index {
                    return Err(CommandError::BadPin {
                        app: app.name.clone(),
                        source_: source,
                        value,
                        why: format!(
                            "the app is pinned to GPU {} (machine_gpu or WORKER_GPU_ID); make them agree",
                            pin.index
                        ),
                    });
                }
            }
            env.insert("CUDA_VISIBLE_DEVICES".into(), pin.uuid.clone().into());
            env.insert("WORKER_GPU_ID".into(), pin.index.to_string().into());
            visible.push(pin.clone());
        }
        None => match env_pins(app, ctx)?.into_iter().next() {
            // Kept or translated: indices become UUIDs, so the pin survives any reordering.
            Some((_, _, pins)) => {
                let list: Vec<&str> = pins.iter().map(|p| p.uuid.as_str()).collect();
                env.insert("CUDA_VISIBLE_DEVICES".into(), list.join(",").into());
                visible = pins;
            }
            // An empty list means "no GPU" to CUDA; unset would mean "every GPU".
            None => {
                env.insert("CUDA_VISIBLE_DEVICES".into(), OsString::new());
            }
        },
    }
    let gpu = match (gpu, visible.as_slice()) {
        (Some(pin), _) => Some(pin),
        (None, [one]) => Some(one.clone()),
        (None, _) => None,
    };
    // CUDA's default order (fastest first) differs from NVML's; PCI order matches the inventory.
    env.insert("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into());
    Ok((gpu, visible))
}

/// Every way the app's own file places it on GPUs, each checked against the inventory:
/// `env.CUDA_VISIBLE_DEVICES` (indices, GPU UUIDs or unique prefixes, MIG UUIDs; `""` or `-1`
/// for none), `env.NVIDIA_VISIBLE_DEVICES` (read by the container runtime when a container is
/// created, so inside one it pins nothing by itself: translated to `CUDA_VISIBLE_DEVICES`, `all`
/// meaning every GPU, `none`/`void` none), and the arguments `--cuda-device N` (ComfyUI) and
/// `--device cuda:N` (the process picks GPU N among all it sees, so it sees every GPU, in inventory
/// order). Returns (where, value, pins) for each, in that order of precedence; an app with none
/// gets no GPU. A value that names no GPU of this machine is an error naming the app.
fn env_pins(
    app: &AppSpec,
    ctx: &Context,
) -> Result<Vec<(String, String, Vec<GpuPin>)>, CommandError> {
    let bad = |source: &str, value: &str, why: String| CommandError::BadPin {
        app: app.name.clone(),
        source_: source.to_string(),
        value: value.to_string(),
        why,
    };
    let mut found = Vec::new();
    if let Some(value) = app.env.get("CUDA_VISIBLE_DEVICES") {
        let source = "env CUDA_VISIBLE_DEVICES";
        let pins = parse_visible(value, ctx).map_err(|why| bad(source, value, why))?;
        found.push((source.to_string(), value.clone(), pins));
    }
    if let Some(value) = app.env.get("NVIDIA_VISIBLE_DEVICES") {
        let source = "env NVIDIA_VISIBLE_DEVICES";
        let pins = match value.trim() {
            "all" => all_gpus(ctx),
            "none" | "void" => Vec::new(),
            _ => parse_visible(value, ctx).map_err(|why| bad(source, value, why))?,
        };
        found.push((source.to_string(), value.clone(), pins));
    }
    let args: Vec<&str> = app
        .interpreter_args
        .iter()
        .chain(&app.args)
        .map(String::as_str)
        .collect();
    for (i, arg) in args.iter().enumerate() {
        let (flag, value) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value)),
            None => (*arg, args.get(i + 1).copied()),
        };
        match flag {
            "--cuda-device" => {
                let source = "args --cuda-device";
                let value = value.unwrap_or_default();
                let pins = parse_visible(value, ctx).map_err(|why| bad(source, value, why))?;
                found.push((source.to_string(), value.to_string(), pins));
            }
            "--device" => {
                let Some(index) = value.and_then(|v| v.strip_prefix("cuda:")) else {
                    continue;
                };
                let source = "args --device";
                let value = value.unwrap_or_default();
                parse_visible(index, ctx).map_err(|why| bad(source, value, why))?;
                found.push((source.to_string(), value.to_string(), all_gpus(ctx)));
            }
            _ => {}
        }
    }
    Ok(found)
}

fn all_gpus(ctx: &Context) -> Vec<GpuPin> {
    ctx.gpu_uuids
        .iter()
        .enumerate()
        .map(|(i, uuid)| GpuPin {
            index: i as u32,
            uuid: uuid.clone(),
        })
        .collect()
}

/// Parses a `CUDA_VISIBLE_DEVICES`-style list against the inventory: each entry an index, a GPU
/// UUID (or a unique prefix of one, as CUDA allows) or a MIG UUID. `""` and `-1` mean no GPU.
fn parse_visible(value: &str, ctx: &Context) -> Result<Vec<GpuPin>, String> {
    let value = value.trim();
    if value.is_empty() || value == "-1" {
        return Ok(Vec::new());
    }
    let present = || match ctx.gpu_uuids.len() {
        0 => "this machine has no GPU".to_string(),
        1 => "this machine has 1 GPU (index 0)".to_string(),
        n => format!("this machine has {n} GPUs (indices 0-{})", n - 1),
    };
    let mut pins: Vec<GpuPin> = Vec::new();
    for entry in value.split(',').map(str::trim) {
        let pin = if !entry.is_empty() && entry.bytes().all(|b| b.is_ascii_digit()) {
            let index = entry.parse::<u32>().ok();
            match index.and_then(|i| Some((i, ctx.gpu_uuids.get(i as usize)?))) {
                Some((index, uuid)) => GpuPin {
                    index,
                    uuid: uuid.clone(),
                },
                None => return Err(format!("GPU {entry} does not exist: {}", present())),
            }
        } else if entry.starts_with("GPU-") {
            let matches: Vec<usize> = (0..ctx.gpu_uuids.len())
                .filter(|&i| ctx.gpu_uuids[i].starts_with(entry))
                .collect();
            match matches.as_slice() {
                [i] => GpuPin {
                    index: *i as u32,
                    uuid: ctx.gpu_uuids[*i].clone(),
                },
                [] => {
                    return Err(format!(
                        "no GPU of this machine has the UUID {entry} ({}; `machine-runtime gpus` lists them)",
                        present()
                    ));
                }
                _ => return Err(format!("{entry} is the start of more than one GPU's UUID")),
            }
        } else if entry.starts_with("MIG-") {
            match ctx.mig_uuids.iter().find(|(_, uuid)| uuid == entry) {
                Some((parent, uuid)) => GpuPin {
                    index: *parent,
                    uuid: uuid.clone(),
                },
                None => {
                    return Err(format!(
                        "no MIG device of this machine has the UUID {entry} (`machine-runtime gpus` lists them)"
                    ));
                }
            }
        } else {
            return Err(format!(
                "entry \"{entry}\" is not a GPU index, a GPU UUID (GPU-...) or a MIG UUID (MIG-...)"
            ));
        };
        if pins.iter().any(|p| p.uuid == pin.uuid) {
            return Err(format!("entry \"{entry}\" names a GPU listed earlier"));
        }
        pins.push(pin);
    }
    Ok(pins)
}

fn gpu_pin(app: &AppSpec, ctx: &Context) -> Result<Option<GpuPin>, CommandError> {
    let from_env = match app.env.get("WORKER_GPU_ID").map(|v| v.trim()) {
        None | Some("") => None,
        Some(v) => Some(v.parse::<u32>().map_err(|_| CommandError::BadGpuIndex {
            app: app.name.clone(),
            field: "WORKER_GPU_ID",
            value: v.to_string(),
        })?),
    };
    let index = match (app.gpu, from_env) {
        (Some(gpu), Some(env)) if gpu != env => {
            return Err(CommandError::GpuDisagrees {
                app: app.name.clone(),
                gpu,
                env: env.to_string(),
            });
        }
        (Some(gpu), _) => Some(gpu),
        (None, Some(env)) => Some(env),
        // Pins written in the app's env or args: see env_pins.
        (None, None) => None,
    };
    let Some(index) = index else { return Ok(None) };
    match ctx.gpu_uuids.get(index as usize) {
        Some(uuid) => Ok(Some(GpuPin {
            index,
            uuid: uuid.clone(),
        })),
        None => Err(CommandError::GpuMissing {
            app: app.name.clone(),
            index,
            found: match ctx.gpu_uuids.len() {
                0 => "this machine has no GPU".to_string(),
                1 => "this machine has 1 GPU (index 0)".to_string(),
                n => format!("this machine has {n} GPUs (indices 0-{})", n - 1),
            },
        }),
    }
}
