//! Executes the four step kinds (git checkout, Python venv, custom nodes, command) inside a version directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use machine_model::install::Step;

use super::hash::fnv1a64_hex;
use super::marker::{CheckoutRecord, RequirementsRecord};
use super::process::{self, Cmd, Finished, Interrupted, RunCtx};
use super::recipe::is_full_sha;
use super::redact::{Redactor, strip_url_credentials};
use super::{Env, FailureCause, Progress, ProgressEvent, StepFailure};

/// Step failures are boxed: they are rare and large.
pub(crate) type StepResult<T> = Result<T, Box<StepFailure>>;

/// What the steps of one install recorded for the marker.
#[derive(Debug, Default)]
pub(crate) struct Records {
    pub checkouts: Vec<CheckoutRecord>,
    pub requirements: Vec<RequirementsRecord>,
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
    pub redactor: &'a Redactor,
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
            command: command.map(|c| c.display(self.redactor)),
            cause,
            tail: tail.iter().map(|l| self.redactor.redact(l)).collect(),
        })
    }

    fn problem(&self, message: String) -> Box<StepFailure> {
        self.failure(
            None,
            FailureCause::Problem(self.redactor.redact(&message)),
            Vec::new(),
        )
    }

    fn note(&self, message: &str) {
        self.progress.report(&ProgressEvent::StepNote {
            service: self.service.to_owned(),
            step: self.index,
            total: self.total,
            kind: self.kind,
            message: self.redactor.redact(message),
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
            .arg(strip_url_credentials(repo, false)),
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
        repo: strip_url_credentials(repo, false),
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
