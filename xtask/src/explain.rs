//! `cargo xtask explain <profile> <VAR>`: a variable's final value (masked if secret) and where it came from.

use crate::profiles;

pub fn run(profile: &str, var: &str) -> anyhow::Result<()> {
    let l = profiles::load_one(profile)?;
    if let Some((_, value)) = machine_model::derived::env_vars(&l.profile, &l.plan)
        .into_iter()
        .find(|(k, _)| k == var)
    {
        println!(
            "{var}={value}\n  derived from the plan of profiles/{}.json",
            l.source.name
        );
        return Ok(());
    }
    let explanation =
        machine_model::components::explain(&l.resolved, var).map_err(|e| anyhow::anyhow!("{e}"))?;
    print!("{explanation}");
    if !explanation.to_string().ends_with('\n') {
        println!();
    }
    Ok(())
}
