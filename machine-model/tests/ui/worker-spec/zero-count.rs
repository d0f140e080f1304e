//! A count of 0 is a compile error (remove the item instead).

fn main() {
    let _spec = machine_model::worker_spec!("comfyui:2:gpu,openai:0");
}
