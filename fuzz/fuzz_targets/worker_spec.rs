//! Fuzz target `worker_spec`: arbitrary bytes through `machine_model::fuzz::worker_spec_and_plan` (the corpus replay test runs the same function).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    machine_model::fuzz::worker_spec_and_plan(data);
});
