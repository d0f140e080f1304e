//! Compile-fail cases: a profile looked up at compile time through `profile!` that does not exist must
//! not compile. Cases live in `tests/ui/<topic>/<mistake>.rs` with the expected `.stderr` next to them;
//! bless changes with `TRYBUILD=overwrite cargo test -p machine-runtime --test it ui` and review the
//! diff.

#[test]
fn ui() {
    trybuild::TestCases::new().compile_fail("tests/ui/**/*.rs");
}
