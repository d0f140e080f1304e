//! A binding the connector does not allow (openai runs shared only) is a compile error.

fn main() {
    let _spec = machine_model::worker_spec!("openai:4:gpu");
}
