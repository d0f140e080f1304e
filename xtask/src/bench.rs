//! `cargo xtask bench`: timings of the paths that must stay fast, printed as a table and never asserted.
//! One function per part (`artifacts` today); each returns rows measured with [`measure`].

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::Context;
use machine_model::{Overrides, Plan};

use crate::{profiles, render};

/// Which part to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// Every part.
    All,
    /// Profiles → plans → generated files, and a 10 000-worker plan.
    Artifacts,
}

/// Mean and minimum over the measured iterations (after one warm-up run).
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub iterations: u32,
    pub mean: Duration,
    pub min: Duration,
}

/// One line of the report.
#[derive(Debug)]
pub struct Row {
    /// What was measured.
    pub name: String,
    pub stats: Stats,
    /// The size of what one iteration produced (files, bytes, workers).
    pub size: String,
}

/// The worker spec and GPU count of the large plan.
const LARGE_SPEC: &str = "comfyui:5000:gpu,openai:5000:shared";
const LARGE_GPUS: u32 = 8;

pub fn run(what: What, iterations: u32) -> anyhow::Result<()> {
    anyhow::ensure!(iterations > 0, "--iterations must be at least 1");
    let mut rows = Vec::new();
    if matches!(what, What::All | What::Artifacts) {
        rows.extend(artifacts(iterations)?);
    }
    println!(
        "{} build, {iterations} iteration(s) after one warm-up{}",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        if cfg!(debug_assertions) {
            " (`cargo run --release -p xtask -- bench` for optimised figures)"
        } else {
            ""
        }
    );
    print!("{}", table(&rows));
    Ok(())
}

/// Runs `f` once to warm up, then `iterations` times; returns the timings and the last result.
pub fn measure<T>(
    iterations: u32,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(Stats, T)> {
    let mut last = black_box(f()?);
    let mut total = Duration::ZERO;
    let mut min = Duration::MAX;
    for _ in 0..iterations {
        let start = Instant::now();
        last = black_box(f()?);
        let took = start.elapsed();
        total += took;
        min = min.min(took);
    }
    Ok((
        Stats {
            iterations,
            mean: total / iterations,
            min,
        },
        last,
    ))
}

/// Total bytes of rendered files.
fn bytes(files: &[(String, String)]) -> usize {
    files.iter().map(|(_, c)| c.len()).sum()
}

/// Loading, planning and rendering every profile; planning and rendering 10 000 workers.
pub fn artifacts(iterations: u32) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();

    let (stats, loaded) = measure(iterations, profiles::load_all)?;
    rows.push(Row {
        name: "load + check + plan all profiles".into(),
        stats,
        size: format!("{} profiles", loaded.len()),
    });

    let (stats, files) = measure(iterations, || {
        let mut files = Vec::new();
        for l in &loaded {
            files.extend(render::profile_files(l)?);
        }
        Ok(files)
    })?;
    rows.push(Row {
        name: "render all profiles".into(),
        stats,
        size: format!("{} files, {} B", files.len(), bytes(&files)),
    });
    for l in &loaded {
        let (stats, files) = measure(iterations, || render::profile_files(l))?;
        rows.push(Row {
            name: format!("  render {}", l.source.name),
            stats,
            size: format!("{} files, {} B", files.len(), bytes(&files)),
        });
    }

    // The large plan reuses a GPU profile's settings with the spec and GPU count overridden.
    let base = loaded
        .iter()
        .find(|l| l.plan.uses_gpus())
        .or(loaded.first())
        .context("no profiles to plan with")?;
    let overrides = Overrides {
        workers: Some(LARGE_SPEC.into()),
        gpus: Some(LARGE_GPUS),
        ..Overrides::default()
    };
    let (stats, plan) = measure(iterations, || {
        Plan::build(&base.source.name, &base.profile, &overrides)
            .with_context(|| format!("planning {LARGE_SPEC} on {LARGE_GPUS} GPUs"))
    })?;
    let plan_json = crate::plan::json(&plan);
    rows.push(Row {
        name: format!("plan {LARGE_SPEC} on {LARGE_GPUS} GPUs"),
        stats,
        size: format!(
            "{} workers, {} services, plan JSON {} B",
            plan.workers.len(),
            plan.services.len(),
            plan_json.len()
        ),
    });

    let large = profiles::Loaded {
        source: base.source.clone(),
        profile: base.profile.clone(),
        plan,
        resolved: base.resolved.clone(),
    };
    let (stats, files) = measure(iterations, || render::profile_files(&large))?;
    rows.push(Row {
        name: "  render the 10 000-worker plan".into(),
        stats,
        size: format!("{} files, {} B", files.len(), bytes(&files)),
    });
    Ok(rows)
}

/// A duration with a unit that keeps three significant figures readable.
fn human(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.3} s", us / 1e6)
    }
}

/// The report table.
pub fn table(rows: &[Row]) -> String {
    let name_w = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(0)
        .max("WHAT".len());
    let mut out = format!(
        "{:name_w$}  {:>4}  {:>11}  {:>11}  SIZE\n",
        "WHAT", "RUNS", "MEAN", "MIN"
    );
    for r in rows {
        out += &format!(
            "{:name_w$}  {:>4}  {:>11}  {:>11}  {}\n",
            r.name,
            r.stats.iterations,
            human(r.stats.mean),
            human(r.stats.min),
            r.size
        );
    }
    out
}
