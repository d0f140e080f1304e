//! Executes the four step kinds (git checkout, Python venv, custom nodes, command) inside a version directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use machine_model::install::Step;

use super::hash::fnv1a64_hex;
use super::marker::{CheckoutRecord, FetchRecord, RequirementsRecord};
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
        let ctx = RunCtx {
            env: self.env,
            deadline: self.deadline,
            heartbeat: self.heartbeat,
            on_heartbeat: &beat,
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
            let record = git_checkout(ctx, repo, rev, dest, *shallow)?;
            records.checkouts.push(record);
        }
        Step::PythonVenv {
            dir,
            requirements,
            packages,
            ..
        } => {
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
                    pip_args.extend(["-r".to_owned(), req.clone()]);
                }
            }
            pip_args.extend(packages.iter().cloned());
            if !pip_args.is_empty() {
                pip_install(ctx, &venv, ctx.root, pip_args)?;
            }
        }
        Step::CustomNodes {
            dir, venv, nodes, ..
        } => {
            for node in nodes {
                let dest = format!("{dir}/{}", node.name);
                let record = git_checkout(ctx, &node.repo, &node.rev, &dest, true)?;
                records.checkouts.push(record);
                if let Some(venv) = venv {
                    let req = format!("{dest}/requirements.txt");
                    if ctx.root.join(&req).is_file() {
                        let (record, names_something) = requirements_record(ctx, &req)?;
                        records.requirements.push(record);
                        if names_something {
                            let args = vec!["-r".to_owned(), req];
                            pip_install(ctx, &ctx.root.join(venv), ctx.root, args)?;
                        }
                    }
                }
            }
        }
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
            ..
        } => {
            let sha256 = sha256.as_deref().unwrap_or_default().trim();
            let record = fetch(ctx, source, sha256, dest, expect)?;
            records.fetches.push(record);
        }
        Step::Command { argv, cwd, env, .. } => {
            let Some((program, args)) = argv.split_first() else {
                return Err(ctx.problem("the command has no program".to_owned()));
            };
            // A relative program with a `/` (e.g. `venv/bin/python`) lives in the install directory.
            let program = if program.contains('/') && !program.starts_with('/') {
                ctx.root.join(program)
            } else {
                PathBuf::from(program)
            };
            let cwd = cwd
                .as_ref()
                .map_or_else(|| ctx.root.to_owned(), |c| ctx.root.join(c));
            let mut cmd = Cmd::new(program, &cwd).args(args.iter().cloned());
            cmd.env = env.clone();
            ctx.run_ok(&cmd)?;
        }
    }
    Ok(())
}

/// Puts the files of `source` into `<root>/<dest>`: a tarball (downloaded with curl when remote, checked
/// against `sha256` when one is given, its one top folder stripped by `tar`) or a folder's content
/// (`cp -R`); then checks that every file of `expect` is there.
fn fetch(
    ctx: &StepCtx<'_>,
    source: &str,
    sha256: &str,
    dest: &str,
    expect: &[String],
) -> StepResult<FetchRecord> {
    let target = ctx.root.join(dest);
    fs::create_dir_all(&target)
        .map_err(|e| ctx.problem(format!("cannot create {}: {e}", target.display())))?;
    let shown = strip_url_credentials(source);
    // A download lands beside the version directory, never inside what is being built.
    let download = PathBuf::from(format!("{}.download.tar.gz", ctx.root.display()));
    let kind = FetchSource::parse(source).map_err(|e| ctx.problem(e))?;
    let tarball = match &kind {
        FetchSource::Download(url) => {
            ctx.run_ok(
                &Cmd::new("curl", ctx.root)
                    .args(["-fsSL", "--retry", "3", "--connect-timeout", "30", "-o"])
                    .arg(download.to_string_lossy())
                    .arg(url),
            )?;
            Some(download.clone())
        }
        FetchSource::Tarball(path) => {
            if !path.is_file() {
                return Err(ctx.problem(format!(
                    "{} does not exist (neither a folder nor a tarball); point the source (or WORKER_BUNDLE_URL) at the bundle",
                    path.display()
                )));
            }
            Some(path.clone())
        }
        FetchSource::Folder(_) => None,
    };
    let record_sha = match (&kind, tarball) {
        (FetchSource::Folder(path), _) => {
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
            None
        }
        (_, Some(file)) => {
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
                let _ = fs::remove_file(&download);
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
            let _ = fs::remove_file(&download);
            extracted?;
            Some(actual)
        }
        (_, None) => None,
    };
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
    })
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

fn pip_install(ctx: &StepCtx<'_>, venv: &Path, cwd: &Path, args: Vec<String>) -> StepResult<()> {
    let cmd = Cmd::new(venv.join("bin/python"), cwd)
        .args([
            "-m",
            "pip",
            "install",
            "--no-input",
            "--disable-pip-version-check",
        ])
        .args(args);
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
) -> StepResult<CheckoutRecord> {
    let dir = ctx.root.join(dest);
    fs::create_dir_all(&dir)
        .map_err(|e| ctx.problem(format!("cannot create {}: {e}", dir.display())))?;
    let git = || Cmd::new("git", &dir);
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
