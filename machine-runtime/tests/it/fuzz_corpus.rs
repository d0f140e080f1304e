//! Replays the checked-in ecosystem fuzz corpus (`fuzz/corpus/ecosystem/`) through the fuzz
//! target's entry function on the stable toolchain.

use std::path::Path;

#[test]
fn ecosystem_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/ecosystem");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| machine_runtime::fuzz::ecosystem(&bytes));
        assert!(
            result.is_ok(),
            "fuzz target ecosystem panics on {}",
            path.display()
        );
    }
}
