//! `cargo xtask secrets <profile>`: every secret the profile needs and who needs it; writes
//! `generated/<profile>/.env.secrets.example` (names only).

use crate::codegen::{Mode, ensure_file_contents};
use crate::{profiles, render};

pub fn run(profile: &str) -> anyhow::Result<()> {
    let l = profiles::load_one(profile)?;
    // The same list, in the same order, as the file written below.
    let needed = render::env::to_fill_in(&l);
    if needed.is_empty() {
        println!("profile {} needs no secrets", l.source.name);
    }
    for (name, needed_by) in &needed {
        println!("{name}  needed by {needed_by}");
    }
    let path = format!("generated/{}/.env.secrets.example", l.source.name);
    let changed = ensure_file_contents(
        Mode::Overwrite,
        &profiles::root().join(&path),
        &path,
        &render::env::secrets_example(&l),
    )?;
    println!("{} {path}", if changed { "wrote" } else { "unchanged" });
    Ok(())
}
