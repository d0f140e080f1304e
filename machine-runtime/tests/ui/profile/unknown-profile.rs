//! A profile name that no profiles/*.json file has is a compile error that lists the known ones.

fn main() {
    let _profile = machine_runtime::profile!("gpu-mixd");
}
