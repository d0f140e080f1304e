//! A misspelt connector is a compile error that lists the catalog.

fn main() {
    let _spec = machine_model::worker_spec!("comfyu:2:gpu,openai:4");
}
