//! The generator's writer against hostile trees (issue 14, case 10): a `generated/<profile>` that is
//! a symbolic link out of the tree, one bad profile among good ones, invalid UTF-8, a NUL in a value.
//! Every problem is reported against its source, and nothing is written unless everything is valid.

use std::path::Path;

use crate::{read, run, temp_root, xtask_in};

/// `api-only` with `env` entries added, as a new profile `name` in `root`.
fn add_profile(root: &Path, name: &str, env: &str) {
    let text = read(&root.join("profiles/api-only.json"));
    let text = text.replacen("\"docker\":", &format!("\"env\": {env},\n  \"docker\":"), 1);
    std::fs::write(root.join(format!("profiles/{name}.json")), text).unwrap();
}

#[test]
fn never_writes_through_a_symbolic_link_out_of_the_tree() {
    let dir = temp_root();
    let root = dir.path();
    let outside = tempfile::tempdir().unwrap();
    let elsewhere = outside.path().join("api-only");
    std::fs::rename(root.join("generated/api-only"), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join("generated/api-only")).unwrap();
    // Something to write: the generator would put .env back.
    std::fs::remove_file(elsewhere.join(".env")).unwrap();
    for args in [
        &["env-build", "api-only"][..],
        &["env-build", "--all"],
        &["codegen"],
    ] {
        let out = run(xtask_in(root).args(args));
        assert!(!out.ok(), "{args:?}: {out}");
        assert!(
            out.stderr
                .contains("generated/api-only is a symbolic link (to "),
            "{args:?}: {out}"
        );
        assert!(
            out.stderr.contains("nothing was written"),
            "{args:?}: {out}"
        );
        assert!(
            !elsewhere.join(".env").exists(),
            "{args:?} wrote outside the tree"
        );
    }
}

#[test]
fn one_bad_profile_leaves_every_file_as_it_was_and_the_nul_is_named_at_its_line() {
    let dir = temp_root();
    let root = dir.path();
    add_profile(root, "zz-nul", r#"{"GOOD": "1", "BAD": "a\u0000b"}"#);
    // An earlier profile has something to write.
    std::fs::remove_file(root.join("generated/api-only/.env")).unwrap();
    let out = run(xtask_in(root).args(["env-build", "--all"]));
    assert!(!out.ok(), "{out}");
    assert!(out.stderr.contains("nothing was written"), "{out}");
    let line = read(&root.join("profiles/zz-nul.json"))
        .lines()
        .position(|l| l.contains("\"BAD\""))
        .unwrap()
        + 1;
    assert!(
        out.stderr
            .contains(&format!("profiles/zz-nul.json:{line}:")),
        "{out}"
    );
    assert!(out.stderr.contains("/env/BAD"), "{out}");
    assert!(out.stderr.contains("NUL"), "{out}");
    assert!(!out.stderr.contains("generated/zz-nul/.env"), "{out}");
    assert!(
        !root.join("generated/api-only/.env").exists(),
        "env-build --all wrote an earlier profile before failing"
    );
    assert!(!root.join("generated/zz-nul").exists());
}

#[test]
fn invalid_utf8_names_the_file_line_and_column() {
    let dir = temp_root();
    let root = dir.path();
    let mut bytes = read(&root.join("profiles/api-only.json")).into_bytes();
    // Line 3 of the file gets a byte that is not UTF-8 after `  "desc`.
    let third = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(1)
        .unwrap()
        .0;
    bytes.insert(third + 1 + 7, 0xff);
    std::fs::write(root.join("profiles/zz-latin1.json"), bytes).unwrap();
    for args in [&["check"][..], &["env-build", "api-only"]] {
        let out = run(xtask_in(root).args(args));
        assert!(!out.ok(), "{args:?}: {out}");
        assert!(
            out.stderr.contains(
                "profiles/zz-latin1.json:3:8: not valid UTF-8 (byte 0xff); save the file as UTF-8"
            ),
            "{args:?}: {out}"
        );
    }
}
