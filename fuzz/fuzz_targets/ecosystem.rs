//! Fuzz target `ecosystem`: arbitrary bytes through `machine_runtime::fuzz::ecosystem` (the corpus replay test runs the same function).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    machine_runtime::fuzz::ecosystem(data);
});
