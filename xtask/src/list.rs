//! `cargo xtask list`: profiles and their descriptions.

use crate::profiles;

pub fn run() -> anyhow::Result<()> {
    let all = profiles::load_all()?;
    let width = all.iter().map(|l| l.source.name.len()).max().unwrap_or(0);
    for l in &all {
        println!(
            "{:width$}  {}  [{}; {} GPU{}]",
            l.source.name,
            l.profile.description,
            l.plan.worker_spec,
            l.plan.gpus,
            if l.plan.gpus == 1 { "" } else { "s" }
        );
    }
    Ok(())
}
