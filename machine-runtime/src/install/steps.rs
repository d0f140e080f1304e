//! Executes the step kinds (git checkout, pip constraints, Python venv, custom nodes, persist, fetch,
//! download, probe, command) inside a version directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use machine_model::install::{ConstraintsFile, CustomNode, DownloadFile, ProvidedFile, Step};

use super::hash::fnv1a64_hex;
use super::marker::{CheckoutRecord, FetchRecord, ProvidedRecord, RequirementsRecord};
use super::process::{self, Cmd, Finished, Interrupted, RunCtx};
use super::recipe::{FetchSource, is_full_sha};
use super::{Env, FailureCause, Progress, ProgressEvent, StepFailure};
use machine_model::components::Masker;
use machine_model::components::mask::strip_url_credentials;

/// Step failures are boxed: they are rare and large.
pub(crate) type StepResult<T> = Result<T, Box<StepFailure>>;

/// What the steps of one install recorded for the marker.
#[derive(Debug, Default)]
pub(crate) struct Records {
    pub checkouts: Vec<CheckoutRecord>,
    pub requirements: Vec<RequirementsRecord>,
    pub fetches: Vec<FetchRecord>,
}

/// Everything a step needs: who it is (for messages), where it runs, its deadline.
pub(crate) struct StepCtx<'a> {
    pub service: &'a str,
    pub index: usize,
    pub total: usize,
    pub kind: &'static str,
    pub summary: &'a str,
    /// The version directory being built (absolute).
    pub root: &'a Path,
    /// Where `persist` keeps directories (`<workspace>/.persist/<dir>`, absolute).
    pub persist_root: &'a Path,
    /// The children's complete environment.
    pub env: &'a Env,
    pub started: Instant,
    pub deadline: Instant,
    pub timeout: Duration,
    pub heartbeat: Duration,
    pub masker: &'a Masker,
    pub progress: &'a dyn Progress,
}

impl StepCtx<'_> {
    fn failure(
        &self,
        command: Option<&Cmd>,
        cause: FailureCause,
        tail: Vec<String>,
    ) -> Box<StepFailure> {
        Box::new(StepFailure {
            service: self.service.to_owned(),
            step: self.index,
            total: self.total,
            kind: self.kind,
            subject: None,
            command: command.map(|c| c.display(self.masker)),
            cause,
            tail: tail
                .iter()
                .map(|l| self.masker.mask(l).into_owned())
                .collect(),
        })
    }

    fn problem(&self, message: String) -> Box<StepFailure> {
        self.failure(
            None,
            FailureCause::Problem(self.masker.mask(&message).into_owned()),
            Vec::new(),
        )
    }

    fn note(&self, message: &str) {
        self.progress.report(&ProgressEvent::StepNote {
            service: self.service.to_owned(),
            step: self.index,
            total: self.total,
            kind: self.kind,
            message: self.masker.mask(message).into_owned(),
        });
    }

    fn warn(&self, message: &str) {
        self.progress.report(&ProgressEvent::Warning {
            service: self.service.to_owned(),
            message: self.masker.mask(message).into_owned(),
        });
    }

    /// Runs `cmd`; a non-zero exit is returned, not an error.
    fn run_status(&self, cmd: &Cmd) -> StepResult<Finished> {
        let beat = || {
            self.progress.report(&ProgressEvent::StepRunning {
                service: self.service.to_owned(),
                step: self.index,
                total: self.total,
                kind: self.kind,
                summary: self.summary.to_owned(),
                elapsed: self.started.elapsed(),
            })
        };
        self.run_status_beating(cmd, &beat)
    }

    /// Runs `cmd`, calling `beat` every heartbeat instead of the step's "still running" line.
    fn run_status_beating(&self, cmd: &Cmd, beat: &dyn Fn()) -> StepResult<Finished> {
        let ctx = RunCtx {
            env: self.env,
            deadline: self.deadline,
            heartbeat: self.heartbeat,
            on_heartbeat: beat,
        };
        process::run(&ctx, cmd).map_err(|interrupted| match interrupted {
            Interrupted::Spawn(e) => self.failure(Some(cmd), FailureCause::Spawn(e), Vec::new()),
            Interrupted::Timeout { tail } => {
                self.failure(Some(cmd), FailureCause::Timeout(self.timeout), tail)
            }
        })
    }

    /// Runs `cmd`; a non-zero exit is an error.
    fn run_ok(&self, cmd: &Cmd) -> StepResult<Finished> {
        let done = self.run_status(cmd)?;
        if done.status.success() {
            Ok(done)
        } else {
            Err(self.failure(
                Some(cmd),
                FailureCause::Exit(process::describe_status(&done.status)),
                done.tail,
            ))
        }
    }
}

/// Runs one (fully resolved) step.
pub(crate) fn run_step(ctx: &StepCtx<'_>, step: &Step, records: &mut Records) -> StepResult<()> {
    match step {
        Step::GitCheckout {
            repo,
            rev,
            dest,
            shallow,
            ..
        } => {
            let record = git_checkout(ctx, repo, rev, dest, *shallow, &[])?;
            records.checkouts.push(record);
        }
        Step::PythonVenv {
            dir,
            requirements,
            packages,
            constraints,
            ..
        } => python_venv(
            ctx,
            dir,
            requirements.as_deref(),
            packages,
            constraints.as_deref(),
            records,
        )?,
        Step::PipConstraints { path, rev, files } => {
            let record = write_constraints(ctx, path, rev, files)?;
            records.requirements.push(record);
        }
        Step::CustomNodes {
            dir,
            venv,
            nodes,
            constraints,
            ..
        } => custom_nodes(
            ctx,
            dir,
            venv.as_deref(),
            nodes,
            constraints.as_deref(),
            records,
        )?,
        Step::Download { files, .. } => {
            for file in files {
                let subject = format!("model {}", file.dest);
                let record = download(ctx, file).map_err(|mut failure| {
                    failure.subject = Some(subject);
                    failure
                })?;
                records.fetches.push(record);
            }
        }
        Step::Probe {
            argv,
            cwd,
            expect_exit,
            ..
        } => probe(ctx, argv, cwd.as_deref(), *expect_exit)?,
        Step::Persist { paths } => {
            for path in paths {
                persist(ctx, path)?;
            }
        }
        Step::Fetch {
            source,
            sha256,
            dest,
            expect,
            provide,
            ..
        } => {
            let sha256 = sha256.as_deref().unwrap_or_default().trim();
            let record = fetch(ctx, source, sha256, dest, expect, provide)?;
            records.fetches.push(record);
        }
        Step::Command { argv, cwd, env, .. } => {
            let cmd = program_cmd(ctx, argv, cwd.as_deref(), env)?;
            ctx.run_ok(&cmd)?;
        }
    }
    Ok(())
}

/// `python-venv`: creates the virtual environment `dir`, then pip-installs the requirements file
/// (recorded, and skipped when it names nothing) and the packages, under the constraints file.
fn python_venv(
    ctx: &StepCtx<'_>,
    dir: &str,
    requirements: Option<&str>,
    packages: &[String],
    constraints: Option<&str>,
    records: &mut Records,
) -> StepResult<()> {
    let venv = ctx.root.join(dir);
    let python = ctx.env.get("PYTHON").unwrap_or("python3");
    ctx.run_ok(
        &Cmd::new(python, ctx.root)
            .args(["-m", "venv"])
            .arg(venv.to_string_lossy()),
    )?;
    let mut pip_args = Vec::new();
    if let Some(req) = requirements {
        let (record, names_something) = requirements_record(ctx, req)?;
        records.requirements.push(record);
        if names_something {
            pip_args.extend(["-r".to_owned(), req.to_owned()]);
        }
    }
    pip_args.extend(packages.iter().cloned());
    if !pip_args.is_empty() {
        pip_args.extend(constraints_args(ctx, constraints)?);
        pip_install(ctx, &venv, ctx.root, pip_args, &[])?;
    }
    Ok(())
}

/// `custom-nodes`: checks out each node under `dir` and, with a `venv`, pip-installs the node's
/// `requirements.txt` when it has one; a failure names the node.
fn custom_nodes(
    ctx: &StepCtx<'_>,
    dir: &str,
    venv: Option<&str>,
    nodes: &[CustomNode],
    constraints: Option<&str>,
    records: &mut Records,
) -> StepResult<()> {
    for node in nodes {
        let subject = format!(
            "custom node {:?} ({} @ {})",
            node.name,
            strip_url_credentials(&node.repo),
            node.rev
        );
        let named = |mut failure: Box<StepFailure>| {
            failure.subject = Some(subject.clone());
            failure
        };
        let dest = format!("{dir}/{}", node.name);
        let record =
            git_checkout(ctx, &node.repo, &node.rev, &dest, true, &node.env).map_err(named)?;
        records.checkouts.push(record);
        let Some(venv) = venv.filter(|_| node.requirements) else {
            continue;
        };
        let req = format!("{dest}/requirements.txt");
        if !ctx.root.join(&req).is_file() {
            continue;
        }
        let (record, names_something) = requirements_record(ctx, &req).map_err(named)?;
        records.requirements.push(record);
        if names_something {
            let mut args = vec!["-r".to_owned(), req];
            args.extend(constraints_args(ctx, constraints).map_err(named)?);
            pip_install(ctx, &ctx.root.join(venv), ctx.root, args, &node.env).map_err(named)?;
        }
    }
    Ok(())
}

/// `probe`: runs the program and expects `expect_exit`; another status keeps the new version out.
fn probe(
    ctx: &StepCtx<'_>,
    argv: &[String],
    cwd: Option<&str>,
    expect_exit: i32,
) -> StepResult<()> {
    let cmd = program_cmd(ctx, argv, cwd, &[])?;
    let done = ctx.run_status(&cmd)?;
    if done.status.code() != Some(expect_exit) {
        return Err(ctx.failure(
            Some(&cmd),
            FailureCause::Exit(format!(
                "{} (expected status {expect_exit}): the new version does not start, so it was not switched in",
                process::describe_status(&done.status)
            )),
            done.tail,
        ));
    }
    Ok(())
}

/// The command of a `command` or `probe` step: a relative program with a `/` (e.g. `venv/bin/python`)
/// lives in the install directory, as does the working directory.
fn program_cmd(
    ctx: &StepCtx<'_>,
    argv: &[String],
    cwd: Option<&str>,
    env: &[(String, String)],
) -> StepResult<Cmd> {
    let Some((program, args)) = argv.split_first() else {
        return Err(ctx.problem("the command has no program".to_owned()));
    };
    let program = if program.contains('/') && !program.starts_with('/') {
        ctx.root.join(program)
    } else {
        PathBuf::from(program)
    };
    let cwd = cwd.map_or_else(|| ctx.root.to_owned(), |c| ctx.root.join(c));
    let mut cmd = Cmd::new(program, &cwd).args(args.iter().cloned());
    cmd.env = env.to_vec();
    Ok(cmd)
}

/// `-c <path>` for pip when the step names a constraints file, which must then exist (written by a
/// `pip-constraints` step before).
fn constraints_args(ctx: &StepCtx<'_>, constraints: Option<&str>) -> StepResult<Vec<String>> {
    let Some(path) = constraints else {
        return Ok(Vec::new());
    };
    if !ctx.root.join(path).is_file() {
        return Err(ctx.problem(format!(
            "the constraints file {path} is missing; a pip-constraints step must write it before this step"
        )));
    }
    Ok(vec!["-c".to_owned(), path.to_owned()])
}

/// Writes the constraints file made for `rev` (the first of `files` when none was), atomically.
fn write_constraints(
    ctx: &StepCtx<'_>,
    path: &str,
    rev: &str,
    files: &[ConstraintsFile],
) -> StepResult<RequirementsRecord> {
    let chosen = match files.iter().find(|f| f.commit.eq_ignore_ascii_case(rev)) {
        Some(own) => own,
        None => {
            let Some(default) = files.first() else {
                return Err(ctx.problem("no constraints file to write".to_owned()));
            };
            ctx.warn(&format!(
                "revision {rev} has no pip constraints file of its own; using the one made for {} \
                 (add machine-model/comfyui/constraints-<commit>.txt from a pip freeze to pin this revision)",
                default.commit
            ));
            default
        }
    };
    let target = ctx.root.join(path);
    let staging = ctx.root.join(format!("{path}.partial"));
    fs::write(&staging, &chosen.content)
        .and_then(|()| fs::rename(&staging, &target))
        .map_err(|e| ctx.problem(format!("cannot write {}: {e}", target.display())))?;
    ctx.note(&format!("{path}: constraints made for {}", chosen.commit));
    Ok(RequirementsRecord {
        path: path.to_owned(),
        fnv1a64: fnv1a64_hex(chosen.content.as_bytes()),
    })
}

/// The SHA-256 of a file, computed by `sha256sum` (a step command: timeout, process group).
fn sha256_of(ctx: &StepCtx<'_>, file: &Path) -> StepResult<String> {
    let sum = ctx.run_ok(
        &Cmd::new("sha256sum", ctx.root)
            .arg(file.to_string_lossy())
            .capture_stdout(),
    )?;
    Ok(sum
        .stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase())
}

/// Downloads one file into `<root>/<dest>` unless it is there with the right checksum: curl into
/// `<dest>.part` beside it, the checksum compared, then renamed into place. A mismatch deletes the
/// download. On a terminal curl draws its progress bar; otherwise the heartbeat says how much arrived.
fn download(ctx: &StepCtx<'_>, file: &DownloadFile) -> StepResult<FetchRecord> {
    use std::io::IsTerminal;
    let target = ctx.root.join(&file.dest);
    let shown = strip_url_credentials(&file.url);
    let expected = file.sha256.to_ascii_lowercase();
    let record = || FetchRecord {
        dest: file.dest.clone(),
        source: shown.clone(),
        sha256: Some(expected.clone()),
        provided: Vec::new(),
    };
    if target.is_file() {
        if sha256_of(ctx, &target)? == expected {
            ctx.note(&format!(
                "{} is already there with SHA-256 {expected}; not downloaded again",
                file.dest
            ));
            return Ok(record());
        }
        ctx.note(&format!(
            "{} is there with another SHA-256; downloading it again",
            file.dest
        ));
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| ctx.problem(format!("cannot create {}: {e}", parent.display())))?;
    }
    let part = PathBuf::from(format!("{}.part", target.display()));
    let terminal = std::io::stderr().is_terminal();
    let mut cmd = Cmd::new("curl", ctx.root)
        .args(["-fL", "--retry", "3", "--connect-timeout", "30"])
        .args(if terminal { ["-#"] } else { ["-sS"] })
        .arg("-o")
        .arg(part.to_string_lossy())
        .arg(&file.url);
    cmd.inherit_stderr = terminal;
    ctx.note(&format!("downloading {shown} into {}", file.dest));
    let started = Instant::now();
    let beat = || {
        let bytes = fs::metadata(&part).map_or(0, |m| m.len());
        ctx.note(&format!(
            "{}: {} so far, {:.0}s",
            file.dest,
            human_bytes(bytes),
            started.elapsed().as_secs_f64()
        ));
    };
    let done = ctx.run_status_beating(&cmd, &beat);
    let remove_part = || {
        let _ = fs::remove_file(&part);
    };
    let done = done.inspect_err(|_| remove_part())?;
    if !done.status.success() {
        remove_part();
        return Err(ctx.failure(
            Some(&cmd),
            FailureCause::Exit(process::describe_status(&done.status)),
            done.tail,
        ));
    }
    let actual = sha256_of(ctx, &part).inspect_err(|_| remove_part())?;
    if actual != expected {
        remove_part();
        return Err(ctx.problem(format!(
            "the download from {shown} has SHA-256 {actual}, expected {expected}; it was refused and deleted \
             (check the URL, or the profile's sha256 if the file was meant to change)"
        )));
    }
    fs::rename(&part, &target).map_err(|e| {
        remove_part();
        ctx.problem(format!(
            "cannot move the download to {}: {e}",
            target.display()
        ))
    })?;
    let bytes = fs::metadata(&target).map_or(0, |m| m.len());
    ctx.note(&format!(
        "{}: {} in {:.1}s, SHA-256 checked",
        file.dest,
        human_bytes(bytes),
        started.elapsed().as_secs_f64()
    ));
    Ok(record())
}

/// `1.5 GiB`, `12.0 MiB`, `512 B`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Puts the files of `source` into `<root>/<dest>`: a tarball (downloaded with curl when remote, checked
/// against `sha256` when one is given, its one top folder stripped by `tar`) or a folder's content
/// (`cp -R`); then writes each file of `provide` the source lacks (saying so), and checks that every
/// file of `expect` is there.
fn fetch(
    ctx: &StepCtx<'_>,
    source: &str,
    sha256: &str,
    dest: &str,
    expect: &[String],
    provide: &[ProvidedFile],
) -> StepResult<FetchRecord> {
    let target = ctx.root.join(dest);
    fs::create_dir_all(&target)
        .map_err(|e| ctx.problem(format!("cannot create {}: {e}", target.display())))?;
    let shown = strip_url_credentials(source);
    // A download lands beside the version directory, never inside what is being built.
    let download = PathBuf::from(format!("{}.download.tar.gz", ctx.root.display()));
    let kind = FetchSource::parse(source).map_err(|e| ctx.problem(e))?;
    let tarball = tarball_of(ctx, &kind, &download)?;
    let record_sha = match (&kind, tarball) {
        (FetchSource::Folder(path), _) => {
            copy_folder(ctx, path, sha256, &target)?;
            None
        }
        (_, Some(file)) => Some(extract_tarball(
            ctx, &file, sha256, &target, &download, &shown,
        )?),
        (_, None) => None,
    };
    let provided = provide_files(ctx, &target, provide, &shown)?;
    let missing: Vec<&str> = expect
        .iter()
        .filter(|e| !target.join(e.as_str()).is_file())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(ctx.problem(format!(
            "what {shown} holds lacks {} (expected {}); is it the right bundle? a tarball must hold one top folder with these files",
            missing.join(", "),
            expect.join(", ")
        )));
    }
    Ok(FetchRecord {
        dest: dest.to_owned(),
        source: shown,
        sha256: record_sha,
        provided,
    })
}

/// The tarball of a `fetch` source: a URL downloaded with curl to `download`, or a local file that
/// must exist; `None` for a folder.
fn tarball_of(
    ctx: &StepCtx<'_>,
    kind: &FetchSource,
    download: &Path,
) -> StepResult<Option<PathBuf>> {
    match kind {
        FetchSource::Download(url) => {
            ctx.run_ok(
                &Cmd::new("curl", ctx.root)
                    .args(["-fsSL", "--retry", "3", "--connect-timeout", "30", "-o"])
                    .arg(download.to_string_lossy())
                    .arg(url),
            )?;
            Ok(Some(download.to_path_buf()))
        }
        FetchSource::Tarball(path) => {
            if !path.is_file() {
                return Err(ctx.problem(format!(
                    "{} does not exist (neither a folder nor a tarball); point the source (or WORKER_BUNDLE_URL) at the bundle",
                    path.display()
                )));
            }
            Ok(Some(path.clone()))
        }
        FetchSource::Folder(_) => Ok(None),
    }
}

/// Copies a folder's content into `target` (`cp -R`); a `sha256` given for a folder is a problem.
fn copy_folder(ctx: &StepCtx<'_>, path: &Path, sha256: &str, target: &Path) -> StepResult<()> {
    if !sha256.is_empty() {
        return Err(ctx.problem(format!(
            "a sha256 is given but the source {} is a folder; checksums apply to tarballs only (leave it empty)",
            path.display()
        )));
    }
    ctx.run_ok(
        &Cmd::new("cp", ctx.root)
            .args(["-R", "--"])
            .arg(format!("{}/.", path.display()))
            .arg(target.to_string_lossy()),
    )?;
    Ok(())
}

/// Checks `file` against `sha256` (when given) and unpacks it into `target` without its top folder;
/// the download, if any, is removed either way. Returns the tarball's SHA-256 (lowercase hex).
fn extract_tarball(
    ctx: &StepCtx<'_>,
    file: &Path,
    sha256: &str,
    target: &Path,
    download: &Path,
    shown: &str,
) -> StepResult<String> {
    let sum = ctx.run_ok(
        &Cmd::new("sha256sum", ctx.root)
            .arg(file.to_string_lossy())
            .capture_stdout(),
    )?;
    let actual = sum
        .stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !sha256.is_empty() && !actual.eq_ignore_ascii_case(sha256) {
        let _ = fs::remove_file(download);
        return Err(ctx.problem(format!(
            "the tarball from {shown} has SHA-256 {actual}, expected {sha256}; \
             check the source (or set the matching checksum)"
        )));
    }
    let extracted = ctx.run_ok(
        &Cmd::new("tar", ctx.root)
            .args(["-xzf"])
            .arg(file.to_string_lossy())
            .args(["--strip-components=1", "-C"])
            .arg(target.to_string_lossy()),
    );
    let _ = fs::remove_file(download);
    extracted?;
    Ok(actual)
}

/// Writes each file of `provide` that the fetched source (`shown`) lacks into `target`, with a note
/// either way; returns the records of those written.
fn provide_files(
    ctx: &StepCtx<'_>,
    target: &Path,
    provide: &[ProvidedFile],
    shown: &str,
) -> StepResult<Vec<ProvidedRecord>> {
    let mut provided = Vec::new();
    for file in provide {
        let path = target.join(&file.path);
        if path.exists() {
            ctx.note(&format!(
                "{shown} has its own {}; the machine's copy is not used",
                file.path
            ));
            continue;
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| ctx.problem(format!("cannot create {}: {e}", parent.display())))?;
        }
        fs::write(&path, &file.content)
            .map_err(|e| ctx.problem(format!("cannot write {}: {e}", path.display())))?;
        // A note, not a warning: the release tarball, the default source, never holds one.
        ctx.note(&format!(
            "{shown} holds no {}; the machine writes {} there",
            file.path, file.origin
        ));
        provided.push(ProvidedRecord {
            path: file.path.clone(),
            origin: file.origin.clone(),
            fnv1a64: fnv1a64_hex(file.content.as_bytes()),
        });
    }
    Ok(provided)
}

/// Reads a requirements file for the marker; the flag says whether it names any requirement (an empty or
/// comment-only file is not given to pip, which would still contact the package index).
fn requirements_record(ctx: &StepCtx<'_>, req: &str) -> StepResult<(RequirementsRecord, bool)> {
    let path = ctx.root.join(req);
    let content = fs::read(&path).map_err(|e| {
        ctx.problem(format!(
            "cannot read requirements file {req} ({}): {e}; check the recipe's path",
            path.display()
        ))
    })?;
    let names_something = String::from_utf8_lossy(&content).lines().any(|line| {
        let line = line.trim();
        !line.is_empty() && !line.starts_with('#')
    });
    let record = RequirementsRecord {
        path: req.to_owned(),
        fnv1a64: fnv1a64_hex(&content),
    };
    Ok((record, names_something))
}

fn pip_install(
    ctx: &StepCtx<'_>,
    venv: &Path,
    cwd: &Path,
    args: Vec<String>,
    env: &[(String, String)],
) -> StepResult<()> {
    let mut cmd = Cmd::new(venv.join("bin/python"), cwd)
        .args([
            "-m",
            "pip",
            "install",
            "--no-input",
            "--disable-pip-version-check",
        ])
        .args(args);
    cmd.env = env.to_vec();
    ctx.run_ok(&cmd).map(drop)
}

/// Checks out `rev` of `repo` into `<root>/<dest>`: one shallow fetch when allowed, else (or when the
/// server refuses a shallow fetch of that revision) a full fetch of branches and tags.
fn git_checkout(
    ctx: &StepCtx<'_>,
    repo: &str,
    rev: &str,
    dest: &str,
    shallow: bool,
    env: &[(String, String)],
) -> StepResult<CheckoutRecord> {
    let dir = ctx.root.join(dest);
    fs::create_dir_all(&dir)
        .map_err(|e| ctx.problem(format!("cannot create {}: {e}", dir.display())))?;
    let git = || {
        let mut cmd = Cmd::new("git", &dir);
        cmd.env = env.to_vec();
        cmd
    };
    ctx.run_ok(&git().args(["-c", "init.defaultBranch=main", "init", "-q"]))?;
    // The remote is recorded without credentials, so none end up on disk; fetches use the full URL.
    ctx.run_ok(
        &git()
            .args(["remote", "add", "origin"])
            .arg(strip_url_credentials(repo)),
    )?;

    let mut fetched = false;
    if shallow {
        let done =
            ctx.run_status(&git().args(["fetch", "-q", "--depth", "1", "--no-tags", repo, rev]))?;
        if done.status.success() {
            fetched = true;
            checkout(ctx, &git, "FETCH_HEAD")?;
        } else {
            ctx.note(&format!(
                "shallow fetch of {rev} from {repo} failed, fetching the full history"
            ));
        }
    }
    if !fetched {
        ctx.run_ok(&git().args([
            "fetch",
            "-q",
            "--tags",
            repo,
            "+refs/heads/*:refs/remotes/origin/*",
        ]))?;
        let target = if is_full_sha(rev) {
            rev.to_owned()
        } else {
            resolve_ref(ctx, &git, rev)?
        };
        checkout(ctx, &git, &target)?;
    }

    let head = ctx.run_ok(&git().args(["rev-parse", "HEAD"]).capture_stdout())?;
    let commit = head.stdout.trim().to_owned();
    if is_full_sha(rev) && !commit.eq_ignore_ascii_case(rev) {
        return Err(ctx.problem(format!("checked out {commit} but {rev} was asked for")));
    }
    Ok(CheckoutRecord {
        dest: dest.to_owned(),
        repo: strip_url_credentials(repo),
        rev: rev.to_owned(),
        commit,
    })
}

fn checkout(ctx: &StepCtx<'_>, git: &dyn Fn() -> Cmd, target: &str) -> StepResult<()> {
    ctx.run_ok(&git().args([
        "-c",
        "advice.detachedHead=false",
        "checkout",
        "-q",
        "--detach",
        target,
    ]))
    .map(drop)
}

/// A branch, tag or abbreviated commit after a full fetch.
fn resolve_ref(ctx: &StepCtx<'_>, git: &dyn Fn() -> Cmd, rev: &str) -> StepResult<String> {
    for candidate in [
        format!("refs/remotes/origin/{rev}"),
        format!("refs/tags/{rev}"),
        rev.to_owned(),
    ] {
        let cmd = git()
            .args(["rev-parse", "--verify", "-q"])
            .arg(format!("{candidate}^{{commit}}"))
            .capture_stdout();
        let done = ctx.run_status(&cmd)?;
        if done.status.success() {
            return Ok(done.stdout.trim().to_owned());
        }
    }
    Err(ctx.problem(format!(
        "{rev:?} is not a branch, tag or commit of the repository; check the recipe's rev"
    )))
}

/// Makes `<root>/<path>` a symlink to `<persist_root>/<path>`, first moving in whatever the new version
/// ships there that the shared directory lacks (so new model folders appear, existing files win).
fn persist(ctx: &StepCtx<'_>, path: &str) -> StepResult<()> {
    let inside = ctx.root.join(path);
    let shared = ctx.persist_root.join(path);
    let fail = |what: &str, p: &Path, e: std::io::Error| {
        ctx.problem(format!("cannot {what} {}: {e}", p.display()))
    };
    fs::create_dir_all(&shared).map_err(|e| fail("create", &shared, e))?;
    match fs::symlink_metadata(&inside) {
        Ok(meta) if meta.is_dir() => {
            for entry in fs::read_dir(&inside).map_err(|e| fail("read", &inside, e))? {
                let from = entry.map_err(|e| fail("read", &inside, e))?.path();
                let Some(name) = from.file_name() else {
                    continue;
                };
                let to = shared.join(name);
                if fs::symlink_metadata(&to).is_err() {
                    fs::rename(&from, &to)
                        .map_err(|e| fail("move into the shared directory", &from, e))?;
                }
            }
            fs::remove_dir_all(&inside).map_err(|e| fail("remove", &inside, e))?;
        }
        Ok(_) => {
            return Err(ctx.problem(format!(
                "{path} in the install is a file, not a directory; it cannot be kept across reinstalls"
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = inside.parent() {
                fs::create_dir_all(parent).map_err(|e| fail("create", parent, e))?;
            }
        }
        Err(e) => return Err(fail("inspect", &inside, e)),
    }
    std::os::unix::fs::symlink(&shared, &inside).map_err(|e| fail("link", &inside, e))
}
