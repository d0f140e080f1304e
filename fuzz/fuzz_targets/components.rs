//! Fuzz target `components`: arbitrary bytes through `machine_model::fuzz::components` (the corpus replay test runs the same function).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    machine_model::fuzz::components(data);
});
