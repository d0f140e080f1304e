//! `machine-runtime job push`: submits one job to the job broker's Redis the way the queue's API does,
//! waits, and prints the job's life (claimed by which worker on which GPU, progress, the end, timings).
//!
//! The wire format is the queue's (contract §6, `apps/api/src/lightweight-api-server.ts`): the hash
//! `job:<id>` with `id`, `service_required`, `priority`, `payload` (JSON), `requirements`, `customer_id`,
//! `created_at` (ISO 8601 UTC), `status=pending`, `retry_count=0`, `max_retries=3` and the workflow fields
//! empty, then `ZADD jobs:pending <score> <id>` with `score = priority × 10^15 − floor(created_ms / 1000)`
//! (higher first). An idle worker claims it with `FCALL findMatchingJob`, a function of the queue that
//! its API loads into Redis on start; for a trial Redis without the API, `--load-functions PATH` loads it
//! from the user's own checkout of the queue (`FUNCTION LOAD REPLACE`), never from a copy of ours.
//!
//! What is printed comes from the job's own keys, polled every 100 ms: `job:<id>` (`status`,
//! `worker_id`, `error`) and `job:<id>:progress` (`progress`, 0–100); and, for the worker's GPU, the
//! machines' status messages on `machine:status:*` (`structure.workers.<worker_id>`: `gpu_id`,
//! `resource_binding`, `pm2_name`). Times are seconds since the push, as observed here (±0.1 s).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use redis::AsyncCommands;
use serde_json::Value;

use crate::broker::{self, RedisUrl};

/// Where the queue keeps its job-matching function, inside a checkout of emp-job-queue.
pub const QUEUE_FUNCTION_FILE: &str =
    "packages/core/src/redis-functions/functions/findMatchingJob.lua";

/// One line on stdout, ignoring a closed pipe (`job push … | head` must not panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `machine-runtime job …`.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Push one job as the queue's API does, wait for it, and print its life.
    Push(PushArgs),
}

/// `machine-runtime job push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The service the job needs (`service_required`), e.g. simulation, comfyui, openai-text.
    #[arg(long, value_name = "SERVICE")]
    pub service: String,
    /// The job's payload, a JSON object (the simulation service reads steps, processing_time_ms).
    #[arg(long, value_name = "JSON", default_value = "{}")]
    pub payload: String,
    /// Priority; higher is served first (the API's default is 50).
    #[arg(long, default_value_t = 50)]
    pub priority: i64,
    /// The job id [default: job-<unix ms>-<pid>].
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// The job broker's Redis [default: $HUB_REDIS_URL].
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Load the queue's job-matching functions into this Redis first (FUNCTION LOAD REPLACE), from a
    /// `.lua` file or a checkout of the queue (its packages/core/src/redis-functions/functions/
    /// findMatchingJob.lua). For a trial Redis only: the queue's API loads them where it runs.
    #[arg(long, value_name = "PATH")]
    pub load_functions: Option<PathBuf>,
    /// Seconds to wait for the job to complete or fail; 0 pushes and returns.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout: u64,
}

/// Runs a `job` command; exit 0 when the job completed (or was pushed, with `--timeout 0`), 1 otherwise.
pub fn run(command: JobCommand) -> anyhow::Result<ExitCode> {
    let JobCommand::Push(args) = command;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(push(args))
}

/// The Lua source named by `--load-functions`: the file itself, or [`QUEUE_FUNCTION_FILE`] inside a
/// checkout. Errors name the path tried and what a function library must start with.
pub fn function_source(path: &Path) -> anyhow::Result<(PathBuf, String)> {
    let file = if path.is_dir() {
        path.join(QUEUE_FUNCTION_FILE)
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "--load-functions: cannot read {} (give the .lua file, or a checkout of the queue holding {QUEUE_FUNCTION_FILE})",
            file.display()
        )
    })?;
    if !text.starts_with("#!lua") {
        bail!(
            "--load-functions: {} is not a Redis function library (it must start with `#!lua name=<library>`)",
            file.display()
        );
    }
    Ok((file, text))
}

/// The API's score of a job: `priority × 10^15 − floor(created_ms / 1000)`.
pub fn pending_score(priority: i64, created_ms: u128) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let score = priority as f64 * 1e15 - (created_ms / 1000) as f64;
    score
}

/// What the status messages said about a worker: (machine id, app name, GPU index, binding).
type WorkerPlace = (String, String, u64, String);

/// The claiming workers' places, filled from the machines' status messages.
type Places = Arc<Mutex<HashMap<String, WorkerPlace>>>;

async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let url = broker_url(args.redis.as_deref())?;
    let payload = parse_payload(&args.payload)?;
    let functions = args
        .load_functions
        .as_deref()
        .map(function_source)
        .transpose()?;
    let pid = std::process::id();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("job-{}-{pid}", created.as_millis()));

    let (client, mut conn) = connect(&url).await?;
    say!("job: redis {url}");
    if let Some((file, source)) = functions {
        load_functions(&mut conn, &file, source).await?;
    }
    let preflight = broker::run_preflight(&mut conn)
        .await
        .map_err(|e| anyhow::anyhow!("checking redis at {url}: {}", url.redact(&e.to_string())))?;
    for problem in &preflight.problems {
        say!(
            "job: warning: {problem}; no worker can claim the job until the queue's functions are loaded (its API loads them on start; for a trial Redis: --load-functions <your emp-job-queue checkout>)"
        );
    }

    // The GPU of the claiming worker, from the machines' status messages.
    let places: Places = Arc::default();
    let tap = tap_places(&client, &places).await;

    let key = format!("job:{id}");
    let fields = job_fields(&id, &args, &payload, created);
    let exists: bool = conn.exists(&key).await?;
    if exists {
        bail!("{key} already exists; pick another --id");
    }
    let score = pending_score(args.priority, created.as_millis());
    redis::pipe()
        .atomic()
        .hset_multiple(&key, &fields)
        .ignore()
        .zadd("jobs:pending", &id, score)
        .ignore()
        .query_async::<()>(&mut conn)
        .await?;
    let pushed = Instant::now();
    say!(
        "job: pushed {key} (service {}, priority {}) to jobs:pending",
        args.service,
        args.priority
    );
    if args.timeout == 0 {
        return Ok(ExitCode::SUCCESS);
    }

    let mut watch = Watch::new(id, pushed, places);
    let code = watch
        .follow(&mut conn, args.timeout, preflight.passed())
        .await?;
    if let Some(tap) = tap {
        tap.abort();
    }
    Ok(code)
}

/// The job broker's URL, from `--redis` or `HUB_REDIS_URL`, with the broker's TLS variables as `up`
/// reads them (a private CA, a client certificate); prints the warning of an insecure connection.
fn broker_url(redis: Option<&str>) -> anyhow::Result<RedisUrl> {
    let (var, raw) = match redis {
        Some(url) => ("--redis", url.to_owned()),
        None => match crate::env::lookup("HUB_REDIS_URL") {
            Some(url) if !url.trim().is_empty() => ("HUB_REDIS_URL", url),
            _ => bail!(
                "no job broker: pass --redis redis://HOST:PORT or set HUB_REDIS_URL (full-local under docker-compose: run it inside the machine container, `docker-compose exec machine machine-runtime job push …`, where HUB_REDIS_URL is set)"
            ),
        },
    };
    let (url, insecure) =
        RedisUrl::parse_with_tls(var, &raw, &crate::env::lookup).map_err(|errors| {
            anyhow::anyhow!(
                "{}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
    if let Some(warning) = insecure {
        say!("job: {warning}");
    }
    Ok(url)
}

/// `--payload`, which must be a JSON object.
fn parse_payload(raw: &str) -> anyhow::Result<Value> {
    let payload: Value = serde_json::from_str(raw).map_err(|e| {
        anyhow::anyhow!("--payload is not JSON ({e}); give an object, e.g. '{{\"steps\": 5}}'")
    })?;
    if !payload.is_object() {
        bail!("--payload must be a JSON object, e.g. '{{\"steps\": 5}}'");
    }
    Ok(payload)
}

/// A client and one multiplexed connection to the broker, within 10 s; errors carry the redacted URL.
async fn connect(
    url: &RedisUrl,
) -> anyhow::Result<(redis::Client, redis::aio::MultiplexedConnection)> {
    let client = url
        .client()
        .map_err(|e| anyhow::anyhow!("{}", url.redact(&e.to_string())))?;
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("redis at {url} did not answer within 10 s"))?
    .map_err(|e| {
        anyhow::anyhow!(
            "connecting to redis at {url}: {}",
            url.redact(&e.to_string())
        )
    })?;
    Ok((client, conn))
}

/// `FUNCTION LOAD REPLACE` of the library read from `file`.
async fn load_functions(
    conn: &mut redis::aio::MultiplexedConnection,
    file: &Path,
    source: String,
) -> anyhow::Result<()> {
    let library: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(source)
        .query_async(conn)
        .await
        .map_err(|e| anyhow::anyhow!("FUNCTION LOAD REPLACE {}: {e}", file.display()))?;
    say!(
        "job: loaded the function library {library} from {}",
        file.display()
    );
    Ok(())
}

/// A task that records the workers' places from `machine:status:*`, or `None` when pub/sub fails
/// (the job is then followed without GPU names).
async fn tap_places(
    client: &redis::Client,
    places: &Places,
) -> Option<tokio::task::JoinHandle<()>> {
    let mut pubsub = client.get_async_pubsub().await.ok()?;
    pubsub.psubscribe("machine:status:*").await.ok()?;
    let places = places.clone();
    Some(tokio::spawn(async move {
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let text: String = message.get_payload().unwrap_or_default();
            let Ok(status) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            remember_places(&status, &places);
        }
    }))
}

/// The fields of the `job:<id>` hash, as the queue's API writes them.
fn job_fields(
    id: &str,
    args: &PushArgs,
    payload: &Value,
    created: Duration,
) -> Vec<(&'static str, String)> {
    let created_at = humantime::format_rfc3339_millis(UNIX_EPOCH + created).to_string();
    vec![
        ("id", id.to_owned()),
        ("service_required", args.service.clone()),
        ("priority", args.priority.to_string()),
        ("payload", payload.to_string()),
        ("requirements", String::new()),
        ("customer_id", String::new()),
        ("created_at", created_at),
        ("status", "pending".to_owned()),
        ("retry_count", "0".to_owned()),
        ("max_retries", "3".to_owned()),
        ("workflow_id", String::new()),
        ("workflow_priority", String::new()),
        ("workflow_datetime", String::new()),
        ("current_step", String::new()),
        ("total_steps", String::new()),
        ("ctx", String::new()),
    ]
}

/// What has been seen of a pushed job, so that each change is printed once.
struct Watch {
    id: String,
    key: String,
    pushed: Instant,
    places: Places,
    status: String,
    worker: String,
    progress: Option<String>,
    claimed_at: Option<Duration>,
    gpu_said: bool,
}

impl Watch {
    fn new(id: String, pushed: Instant, places: Places) -> Self {
        Watch {
            key: format!("job:{id}"),
            id,
            pushed,
            places,
            status: String::from("pending"),
            worker: String::new(),
            progress: None,
            claimed_at: None,
            gpu_said: false,
        }
    }

    /// `+1.2s`: the time since the push.
    fn at(&self) -> String {
        format!("+{:.1}s", self.pushed.elapsed().as_secs_f64())
    }

    /// Polls the job every 100 ms until it completes (success), fails or `timeout` seconds pass.
    async fn follow(
        &mut self,
        conn: &mut redis::aio::MultiplexedConnection,
        timeout: u64,
        functions_loaded: bool,
    ) -> anyhow::Result<ExitCode> {
        let deadline = self.pushed + Duration::from_secs(timeout);
        loop {
            let job: HashMap<String, String> = conn.hgetall(&self.key).await?;
            self.see_worker(&job);
            self.see_status(&job);
            let progress: Option<String> = conn
                .hget(format!("{}:progress", self.key), "progress")
                .await?;
            self.see_progress(progress);
            match self.status.as_str() {
                "completed" => {
                    self.say_completed();
                    return Ok(ExitCode::SUCCESS);
                }
                "failed" => {
                    // The worker records why in the `jobs:failed` hash (`{error, failed_at,
                    // retry_count}`, as the queue's API reads it), not in the job's own hash.
                    let record: Option<String> =
                        conn.hget("jobs:failed", &self.id).await.unwrap_or(None);
                    self.say_failed(&job, record.as_deref());
                    return Ok(ExitCode::FAILURE);
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                self.say_timed_out(timeout, functions_loaded);
                return Ok(ExitCode::FAILURE);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Prints a new claiming worker, or its GPU once the status messages name it.
    fn see_worker(&mut self, job: &HashMap<String, String>) {
        let now_worker = job.get("worker_id").cloned().unwrap_or_default();
        if !now_worker.is_empty() && now_worker != self.worker {
            self.worker = now_worker;
            self.claimed_at.get_or_insert(self.pushed.elapsed());
            say!(
                "job: {} claimed by {}{}",
                self.at(),
                self.worker,
                place(&self.places, &self.worker, &mut self.gpu_said)
            );
        } else if !self.gpu_said && !self.worker.is_empty() {
            let said = place(&self.places, &self.worker, &mut self.gpu_said);
            if !said.is_empty() {
                say!("job: {} {} runs{said}", self.at(), self.worker);
            }
        }
    }

    /// Prints a new status, bar the two final ones (printed with their summary).
    fn see_status(&mut self, job: &HashMap<String, String>) {
        let now_status = job.get("status").cloned().unwrap_or_default();
        if now_status != self.status && !now_status.is_empty() {
            self.status = now_status;
            if self.status != "completed" && self.status != "failed" {
                say!("job: {} {}", self.at(), self.status);
            }
        }
    }

    /// Prints a new progress value.
    fn see_progress(&mut self, now_progress: Option<String>) {
        if now_progress.is_some() && now_progress != self.progress {
            self.progress = now_progress;
            say!(
                "job: {} progress {}%",
                self.at(),
                self.progress.as_deref().unwrap_or("?")
            );
        }
    }

    /// The summary of a completed job: who ran it, time queued, time running, total.
    fn say_completed(&self) {
        let total = self.pushed.elapsed();
        let queued = self.claimed_at.unwrap_or(total);
        say!(
            "job: {} completed by {}{}; queued {:.1}s, ran {:.1}s, total {:.1}s",
            self.at(),
            self.worker,
            place(&self.places, &self.worker, &mut false),
            queued.as_secs_f64(),
            (total - queued).as_secs_f64(),
            total.as_secs_f64()
        );
    }

    /// The error of a failed job: its hash's `error`, else the `jobs:failed` record's.
    fn say_failed(&self, job: &HashMap<String, String>, record: Option<&str>) {
        let error = job
            .get("error")
            .cloned()
            .or_else(|| {
                record.and_then(|r| {
                    serde_json::from_str::<Value>(r).ok()?["error"]
                        .as_str()
                        .map(str::to_owned)
                })
            })
            .unwrap_or_else(|| "no error given".into());
        let tries = job
            .get("retry_count")
            .map(|n| format!(" (retry_count {n})"))
            .unwrap_or_default();
        say!(
            "job: {} failed on {}{tries}: {error}",
            self.at(),
            self.worker
        );
    }

    /// Why the job is still waiting, when it can be told.
    fn say_timed_out(&self, timeout: u64, functions_loaded: bool) {
        let why = if self.status == "pending" && !functions_loaded {
            " (no worker can claim it: the queue's functions are not loaded, see the warning above)"
        } else if self.status == "pending" {
            " (no worker claimed it: is a machine with a worker for this service connected to this Redis?)"
        } else {
            ""
        };
        say!(
            "job: still {} after {timeout}s{why}; it stays in the queue ({})",
            self.status,
            self.key
        );
    }
}

/// Records `structure.workers.*` of a status message.
fn remember_places(status: &Value, places: &Mutex<HashMap<String, WorkerPlace>>) {
    let Some(workers) = status["structure"]["workers"].as_object() else {
        return;
    };
    let machine = status["machine_id"].as_str().unwrap_or_default().to_owned();
    let mut places = places.lock().unwrap_or_else(|p| p.into_inner());
    for (id, w) in workers {
        places.insert(
            id.clone(),
            (
                machine.clone(),
                w["pm2_name"].as_str().unwrap_or_default().to_owned(),
                w["gpu_id"].as_u64().unwrap_or_default(),
                w["resource_binding"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
        );
    }
}

/// ` (machine M, app A, GPU g)` for a known worker (sets `said`), else empty.
fn place(places: &Mutex<HashMap<String, WorkerPlace>>, worker: &str, said: &mut bool) -> String {
    let places = places.lock().unwrap_or_else(|p| p.into_inner());
    let Some((machine, app, gpu, binding)) = places.get(worker) else {
        return String::new();
    };
    *said = true;
    let on = if binding == "gpu" {
        format!("GPU {gpu}")
    } else {
        format!("no GPU ({binding})")
    };
    format!(" (machine {machine}, app {app}, {on})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_is_the_api_s() {
        assert_eq!(
            pending_score(50, 1_700_000_000_999),
            50e15 - 1_700_000_000.0
        );
        assert!(pending_score(60, 0) > pending_score(50, 0));
    }

    #[test]
    fn function_source_takes_a_file_or_a_checkout_and_refuses_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(QUEUE_FUNCTION_FILE);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "#!lua name=jobMatching\n").unwrap();
        assert_eq!(function_source(dir.path()).unwrap().0, file);
        assert_eq!(function_source(&file).unwrap().0, file);
        let other = dir.path().join("x.lua");
        std::fs::write(&other, "return 1\n").unwrap();
        let err = function_source(&other).unwrap_err().to_string();
        assert!(err.contains("is not a Redis function library"), "{err}");
        let err = function_source(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read") && err.contains(QUEUE_FUNCTION_FILE),
            "{err}"
        );
    }
}
