//! `machine-runtime gpus`: fake inventory, invalid settings, the outer CUDA_VISIBLE_DEVICES, and no NVML.

use std::process::{Command, Output};

use serde_json::Value;

/// Runs `machine-runtime gpus` with a clean GPU environment plus `env`.
fn gpus(format: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_machine-runtime"));
    cmd.args(["gpus", "--format", format])
        .env_remove("MACHINE_FAKE_GPUS")
        .env_remove("MACHINE_NVML_LIBRARY")
        .env_remove("CUDA_VISIBLE_DEVICES");
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.output().expect("machine-runtime runs")
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("gpus --format json prints JSON")
}

fn uuids(inventory: &Value) -> Vec<String> {
    inventory["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["uuid"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn fake_gpus_have_deterministic_uuids() {
    let first = gpus("json", &[("MACHINE_FAKE_GPUS", "2")]);
    let inventory = json_of(&first);
    assert_eq!(inventory["source"], "fake");
    assert_eq!(inventory["reason"], Value::Null);
    assert_eq!(
        uuids(&inventory),
        [
            "GPU-fa4e0000-0000-4000-8000-000000000000",
            "GPU-fa4e0000-0000-4000-8000-000000000001"
        ]
    );
    assert_eq!(inventory["gpus"][1]["index"], 1);
    assert_eq!(inventory["gpus"][1]["memory_total_bytes"], 24u64 << 30);
    let second = gpus("json", &[("MACHINE_FAKE_GPUS", "2")]);
    assert_eq!(
        first.stdout, second.stdout,
        "two runs must print the same inventory"
    );
}

#[test]
fn fake_gpus_text_table() {
    let output = gpus("text", &[("MACHINE_FAKE_GPUS", "2")]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("INDEX  UUID"), "{text}");
    assert!(
        text.contains("1      GPU-fa4e0000-0000-4000-8000-000000000001  Fake GPU  24.0 GiB"),
        "{text}"
    );
    assert!(text.ends_with("2 GPUs (source: fake)\n"), "{text}");
}

#[test]
fn invalid_fake_gpus_is_an_error_naming_the_variable() {
    for bad in ["two", "-1", "999"] {
        let output = gpus("json", &[("MACHINE_FAKE_GPUS", bad)]);
        assert_eq!(output.status.code(), Some(1), "MACHINE_FAKE_GPUS={bad}");
        assert!(output.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("invalid MACHINE_FAKE_GPUS=\"{bad}\""))
                && stderr.contains("from 0 to 64"),
            "{stderr}"
        );
    }
}

#[test]
fn outer_cuda_visible_devices_restricts_and_reorders() {
    let inventory = json_of(&gpus(
        "json",
        &[("MACHINE_FAKE_GPUS", "3"), ("CUDA_VISIBLE_DEVICES", "2,0")],
    ));
    assert_eq!(
        uuids(&inventory),
        [
            "GPU-fa4e0000-0000-4000-8000-000000000002",
            "GPU-fa4e0000-0000-4000-8000-000000000000"
        ]
    );
    assert_eq!(inventory["gpus"][0]["index"], 0);
    assert_eq!(inventory["gpus"][0]["nvml_index"], 2);
    let notes = inventory["notes"].to_string();
    assert!(
        notes.contains("CUDA_VISIBLE_DEVICES=2,0 restricts the inventory to 2 of 3 GPUs"),
        "{notes}"
    );

    let output = gpus(
        "text",
        &[("MACHINE_FAKE_GPUS", "3"), ("CUDA_VISIBLE_DEVICES", "")],
    );
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "0 GPUs (CUDA_VISIBLE_DEVICES is set to an empty value, which hides every GPU)\n"
    );
}

/// Whether NVML's library loads here, asked the way nvml-wrapper asks (dlopen of `libnvidia-ml.so.1`, the
/// name the NVIDIA container toolkit injects; the unversioned `.so` exists only with driver development files).
fn nvml_library_present() -> bool {
    // SAFETY: dlopen with a valid NUL-terminated name; a non-null handle is closed right away.
    unsafe {
        let handle = libc::dlopen(
            c"libnvidia-ml.so.1".as_ptr(),
            libc::RTLD_NOW | libc::RTLD_LOCAL,
        );
        if handle.is_null() {
            false
        } else {
            libc::dlclose(handle);
            true
        }
    }
}

/// The no-GPU path on every host: NVML's library cannot be loaded (`MACHINE_NVML_LIBRARY` names one that
/// does not exist), so the inventory is zero GPUs with the reason, and `gpus` still exits 0. This tests the
/// error path only, never GPU detection.
#[test]
fn a_missing_nvml_library_is_zero_gpus_with_the_reason() {
    let missing = [("MACHINE_NVML_LIBRARY", "/nonexistent/libnvidia-ml.so.1")];
    let inventory = json_of(&gpus("json", &missing));
    let reason = "NVIDIA management library /nonexistent/libnvidia-ml.so.1 not found (named by MACHINE_NVML_LIBRARY)";
    assert_eq!(inventory["source"], "none", "{inventory}");
    assert_eq!(inventory["gpus"], Value::Array(Vec::new()), "{inventory}");
    assert_eq!(inventory["reason"], reason, "{inventory}");
    let text = gpus("text", &missing);
    assert!(text.status.success());
    assert_eq!(
        String::from_utf8(text.stdout).unwrap(),
        format!("0 GPUs ({reason})\n")
    );
}

/// Without fake GPUs the inventory says what the host has. On a host without NVML's library (CI) that is
/// the default no-library answer; with the library, the GPUs NVML reads, checked against `nvidia-smi -L`
/// where it runs, or zero with NVML's reason. GPU detection proper is checked on a GPU machine, by this test
/// and by `scripts/gpu-check.sh`.
#[test]
fn without_fake_gpus_the_inventory_is_what_the_host_s_nvml_says() {
    let inventory = json_of(&gpus("json", &[]));
    let text = gpus("text", &[]);
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    if nvml_library_present() {
        // A real NVML: either GPUs from it, or none with a reason (driver missing, no permission).
        let count = inventory["gpus"].as_array().unwrap().len();
        if count == 0 {
            assert!(inventory["reason"].is_string(), "{inventory}");
            assert!(text.starts_with("0 GPUs ("), "{text}");
        } else {
            assert_eq!(inventory["source"], "nvml");
            assert!(
                uuids(&inventory).iter().all(|u| u.starts_with("GPU-")),
                "{inventory}"
            );
        }
        // nvidia-smi reads the same driver: the same GPUs in the same order.
        if let Ok(smi) = Command::new("nvidia-smi").arg("-L").output()
            && smi.status.success()
        {
            let listed: Vec<String> = String::from_utf8_lossy(&smi.stdout)
                .lines()
                .filter_map(|l| l.split("(UUID: ").nth(1))
                .map(|rest| rest.trim_end_matches(')').to_owned())
                .filter(|u| u.starts_with("GPU-"))
                .collect();
            assert_eq!(uuids(&inventory), listed, "{inventory}");
        }
    } else {
        assert_eq!(inventory["source"], "none");
        assert_eq!(inventory["gpus"], Value::Array(Vec::new()));
        assert_eq!(
            inventory["reason"],
            "NVIDIA management library (libnvidia-ml.so) not found"
        );
        assert_eq!(
            text,
            "0 GPUs (NVIDIA management library (libnvidia-ml.so) not found)\n"
        );
    }
}
