//! Entry point of the ecosystem fuzz target (`fuzz/`, cargo-fuzz), shared with the corpus replay
//! test (`tests/it/fuzz_corpus.rs`): arbitrary bytes must never make the reader or the command
//! builder panic.

use std::path::PathBuf;

use crate::command::{self, Context};

/// The ecosystem reader and the command builder: the bytes as an ecosystem file; every app of a
/// file that reads is built into a command on a machine with two GPUs and one MIG slice.
pub fn ecosystem(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(eco) = crate::ecosystem::parse(text, "fuzz.json", Some(std::path::Path::new("/srv")))
    else {
        return;
    };
    let ctx = Context {
        runtime_env: [("PATH".into(), "/usr/bin:/bin".into())].into(),
        gpu_uuids: vec![crate::gpu::fake_gpu_uuid(0), crate::gpu::fake_gpu_uuid(1)],
        mig_uuids: vec![(1, "MIG-4f000000-0000-4000-8000-000000000001".into())],
        current_exe: PathBuf::from("/usr/local/bin/machine-runtime"),
    };
    for app in &eco.apps {
        if let Ok(cmd) = command::build(app, &ctx) {
            // Every pin the builder kept is a GPU of this machine.
            for pin in &cmd.visible {
                assert!(
                    ctx.gpu_uuids.contains(&pin.uuid)
                        || ctx.mig_uuids.iter().any(|(_, m)| *m == pin.uuid),
                    "app {} pinned to {} which is not in the inventory",
                    app.name,
                    pin.uuid
                );
            }
            let _ = cmd.display();
        }
    }
}
