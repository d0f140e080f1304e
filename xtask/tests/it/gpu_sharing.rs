//! The Kubernetes GPU sharing modes (`machine.gpu_sharing`): for whole GPUs, time-sliced replicas
//! (renamed or not) and MIG slices (single and mixed strategy), the resource the pod requests and the GPU
//! Feature Discovery labels it selects nodes by; each manifest strictly valid; bad modes refused with
//! one located error and nothing written.

use serde_json::{Value, json};

use crate::{read, run, temp_root, xtask_in};

/// A 2-GPU ComfyUI machine on an A100 node, its sharing spliced in.
fn profile(sharing: &str) -> String {
    format!(
        r#"{{
  "$schema": "../schemas/profile.schema.json",
  "description": "test: GPU sharing on Kubernetes",
  "components": {{"redis": ["default", "remote"], "api": "remote", "machine": ["default", "prod"],
                 "worker": "default", "comfyui": "default", "monitor": "remote"}},
  "workers": "comfyui:2:gpu",
  "machine": {{"gpus": 2, "ram_gb": 64, "gpu_model": "NVIDIA A100-SXM4-80GB"{sharing}}}
}}
"#
    )
}

/// Renders the profile with `sharing` and returns its StatefulSet's pod spec; the file passes the strict
/// schema check.
fn pod_spec(sharing: &str) -> Value {
    let dir = temp_root();
    std::fs::write(
        dir.path().join("profiles/share-test.json"),
        profile(sharing),
    )
    .unwrap();
    let out = run(xtask_in(dir.path()).args(["env-build", "share-test"]));
    assert!(out.ok(), "{out}");
    let file = dir.path().join("generated/share-test/kubernetes.yaml");
    let valid = super::kubernetes::validate(&file);
    assert!(valid.ok(), "{valid}\n{}", read(&file));
    super::kubernetes::documents(&read(&file))
        .into_iter()
        .find(|d| d["kind"] == "StatefulSet")
        .expect("a StatefulSet")["spec"]["template"]["spec"]
        .clone()
}

#[test]
fn each_sharing_mode_requests_its_resource_on_the_nodes_gfd_labels_for_it() {
    let replicas_above_one = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "nvidia.com/gpu.replicas", "operator": "Gt", "values": ["1"]}]}]}}});
    let cases = [
        (
            "",
            "nvidia.com/gpu",
            json!({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}),
            Value::Null,
        ),
        (
            r#", "gpu_sharing": {"mode": "time-slicing"}"#,
            "nvidia.com/gpu",
            json!({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB-SHARED"}),
            replicas_above_one.clone(),
        ),
        (
            r#", "gpu_sharing": {"mode": "time-slicing", "renamed": true}"#,
            "nvidia.com/gpu.shared",
            json!({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}),
            replicas_above_one,
        ),
        (
            r#", "gpu_sharing": {"mode": "mig", "strategy": "single", "profile": "1g.10gb"}"#,
            "nvidia.com/gpu",
            json!({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb",
                   "nvidia.com/mig.strategy": "single"}),
            Value::Null,
        ),
        (
            r#", "gpu_sharing": {"mode": "mig", "strategy": "mixed", "profile": "3g.40gb"}"#,
            "nvidia.com/mig-3g.40gb",
            json!({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                   "nvidia.com/mig.strategy": "mixed"}),
            Value::Null,
        ),
    ];
    for (sharing, resource, selector, affinity) in cases {
        let pod = pod_spec(sharing);
        let limits = &pod["containers"][0]["resources"]["limits"];
        assert_eq!(limits[resource], "2", "{sharing}: {limits}");
        let gpu_resources: Vec<&String> = limits
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with("nvidia.com/"))
            .collect();
        assert_eq!(gpu_resources, [resource], "{sharing}: {limits}");
        assert_eq!(pod["nodeSelector"], selector, "{sharing}");
        assert_eq!(pod["affinity"], affinity, "{sharing}");
    }
}

#[test]
fn an_unknown_mode_or_a_bad_mig_profile_is_one_located_error_and_nothing_is_written() {
    for (sharing, expected) in [
        (r#", "gpu_sharing": {"mode": "mps"}"#, "gpu_sharing"),
        (
            r#", "gpu_sharing": {"mode": "mig", "strategy": "single", "profile": "big"}"#,
            "profile",
        ),
        (
            r#", "gpu_sharing": {"mode": "mig", "profile": "1g.10gb"}"#,
            "strategy",
        ),
        (
            r#", "gpu_sharing": {"mode": "exclusive", "renamed": true}"#,
            "renamed",
        ),
    ] {
        let dir = temp_root();
        std::fs::write(
            dir.path().join("profiles/share-test.json"),
            profile(sharing),
        )
        .unwrap();
        let out = run(xtask_in(dir.path()).args(["env-build", "share-test"]));
        assert!(!out.ok(), "{sharing} was accepted");
        assert!(
            out.stderr.contains("profiles/share-test.json") && out.stderr.contains(expected),
            "{sharing}: {out}"
        );
        assert!(
            !dir.path().join("generated/share-test").exists(),
            "{sharing}: files written"
        );
    }
}
