//! A connector named twice is a compile error (give the total count once).

fn main() {
    let _spec = machine_model::worker_spec!("openai:1,comfyui:2,openai:3");
}
