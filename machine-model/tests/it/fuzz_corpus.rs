//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz targets' entry
//! functions on the stable toolchain: every input the fuzzer kept, and every crash it ever found
//! (added to the corpus when fixed), stays a regression test.

use std::path::{Path, PathBuf};

/// Every file of `fuzz/corpus/<target>`, sorted; never empty.
pub fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
}

/// Runs `entry` on every corpus file of `target`, naming the file that panics.
fn replay(target: &str, entry: fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        let result = std::panic::catch_unwind(|| entry(&bytes));
        assert!(
            result.is_ok(),
            "fuzz target {target} panics on {}",
            path.display()
        );
    }
}

#[test]
fn worker_spec_corpus() {
    replay("worker_spec", machine_model::fuzz::worker_spec_and_plan);
}

#[test]
fn profile_corpus() {
    replay("profile", machine_model::fuzz::profile);
}

#[test]
fn components_corpus() {
    replay("components", machine_model::fuzz::components);
}
