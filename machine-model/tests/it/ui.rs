//! Compile-fail cases: a worker spec embedded in Rust through `worker_spec!` that is wrong must not
//! compile. Cases live in `tests/ui/<topic>/<mistake>.rs` with the expected `.stderr` next to them;
//! bless changes with `TRYBUILD=overwrite cargo test -p machine-model --test it ui` and review the diff.

#[test]
fn ui() {
    trybuild::TestCases::new().compile_fail("tests/ui/**/*.rs");
}
