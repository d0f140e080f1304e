//! The operator's commands for a running machine — `ps`, `logs`, `restart`, `stop`, `start`, in the
//! words and output shapes of `pm2` and `docker compose` — as a client of the machine's endpoint
//! (`health/routes.rs`): `GET /pm2/list`, `GET /logs`, `POST /restart|stop|start/service`.
//!
//! The machine is at `--url`, else `MACHINE_URL`, else `http://127.0.0.1:<MACHINE_HEALTH_PORT or
//! 9090>`; the POST routes send `MACHINE_CONTROL_TOKEN` as `Authorization: Bearer`. Every failure is
//! one [`CtlError`] line: no machine there, no or a wrong token, an unknown app (with the machine's
//! did-you-mean), an answer that is not the endpoint's.

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::http::{self, HttpResponse, HttpUrl};
use crate::time::now_ms;

pub use crate::env::URL_VAR;
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `stop` asks whether the app has stopped.
const POLL: Duration = Duration::from_millis(100);

/// Why a command failed, in one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CtlError(String);

/// Where the machine is, and the token of its POST routes.
#[derive(Clone)]
pub struct Target {
    /// The endpoint's base: host, port and path prefix (without a trailing `/`).
    pub base: HttpUrl,
    /// `MACHINE_CONTROL_TOKEN`, empty ones left out.
    pub token: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("base", &self.base.to_string())
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Target {
    /// The machine at `url` (the `--url` flag), else `MACHINE_URL`, else the local one on `port`
    /// (the health port); the token from `MACHINE_CONTROL_TOKEN`, all read through `lookup`.
    pub fn resolve(
        url: Option<&str>,
        port: u16,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Target, CtlError> {
        let from_env = lookup(URL_VAR).filter(|v| !v.trim().is_empty());
        let (raw, source) = match (url, from_env.as_deref()) {
            (Some(url), _) => (url.trim().to_owned(), "--url"),
            (None, Some(url)) => (url.trim().to_owned(), URL_VAR),
            (None, None) => (format!("http://127.0.0.1:{port}"), "the health port"),
        };
        let mut base = HttpUrl::parse(&raw).map_err(|e| {
            CtlError(format!(
                "{source}: {e}; give the machine's endpoint as http://HOST:PORT"
            ))
        })?;
        if base.path.contains('?') {
            return Err(CtlError(format!(
                "{source} \"{raw}\" has a query; give the machine's endpoint as http://HOST:PORT"
            )));
        }
        base.path = base.path.trim_end_matches('/').to_owned();
        Ok(Target {
            base,
            token: lookup(crate::env::CONTROL_TOKEN_VAR)
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
        })
    }

    fn url(&self, path_and_query: &str) -> HttpUrl {
        HttpUrl {
            path: format!("{}{path_and_query}", self.base.path),
            ..self.base.clone()
        }
    }

    /// A request whose answer must be 2xx JSON.
    async fn call(&self, method: &str, path_and_query: &str) -> Result<(u16, Value), CtlError> {
        let url = self.url(path_and_query);
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}"));
        let extra: Vec<&str> = auth
            .iter()
            .map(String::as_str)
            .filter(|_| method == "POST")
            .collect();
        let response = http::send(method, &url, &extra, REQUEST_TIMEOUT)
            .await
            .map_err(|e| self.unreachable(e))?;
        answer(method, &url, response, self.token.is_some())
    }

    fn unreachable(&self, reason: String) -> CtlError {
        if reason.starts_with("cannot connect") {
            CtlError(format!(
                "no machine answers at {} ({reason}); is it running? Point --url or {URL_VAR} at its endpoint",
                self.base
            ))
        } else {
            CtlError(reason)
        }
    }
}

/// Reads an answer: the JSON of a 2xx, or the one line saying why not.
fn answer(
    method: &str,
    url: &HttpUrl,
    response: HttpResponse,
    token_set: bool,
) -> Result<(u16, Value), CtlError> {
    let body: Option<Value> = serde_json::from_str(&response.body).ok();
    let said = body
        .as_ref()
        .and_then(|b| b.get("error"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    match (response.status, said, body) {
        (200..=299, _, Some(body)) => Ok((response.status, body)),
        (401, _, _) if !token_set => Err(CtlError(format!(
            "{method} {} needs the machine's control token: set {} to the token the machine was started with",
            url.path.split('?').next().unwrap_or_default(),
            crate::env::CONTROL_TOKEN_VAR
        ))),
        (403, Some(said), _) if said.contains("wrong") => Err(CtlError(format!(
            "the machine refused the control token: {said}; set {} to the token the machine was started with",
            crate::env::CONTROL_TOKEN_VAR
        ))),
        (_, Some(said), _) => Err(CtlError(said)),
        (status, None, _) => Err(CtlError(format!(
            "{url} answered {status} without the endpoint's JSON; is --url the machine's health port?"
        ))),
    }
}

/// One app as `ps` shows it, in the endpoint's names and units.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Process {
    pub name: String,
    /// `service` or `worker`.
    pub role: Option<String>,
    /// The GPU index it is pinned to.
    pub gpu: Option<u64>,
    pub pid: Option<u64>,
    /// PM2's word: `online`, `launching`, `stopping`, `stopped`, `errored`, `waiting restart`.
    pub status: String,
    /// The supervisor's word (`ready`, `waiting`, ...).
    pub state: String,
    /// Restarts so far (`/health`'s `restarts`, `/pm2/list`'s `restart_time`).
    pub restarts: u64,
    /// Milliseconds since its process started; `None` without a process.
    pub uptime_ms: Option<u64>,
    /// Percent of one core (`monit.cpu`).
    pub cpu: f64,
    /// Resident memory in bytes (`monit.memory`).
    pub memory: u64,
}

impl Process {
    /// One entry of `/pm2/list`, at `now_ms` (epoch ms).
    fn from_pm2(entry: &Value, now_ms: u64) -> Process {
        let text = |k: &str| entry.get(k).and_then(Value::as_str).map(str::to_owned);
        let num = |k: &str| entry.get(k).and_then(Value::as_u64);
        Process {
            name: text("name").unwrap_or_default(),
            role: text("role"),
            gpu: num("gpu"),
            pid: num("pid"),
            status: text("status").unwrap_or_default(),
            state: text("state").unwrap_or_default(),
            restarts: num("restart_time").unwrap_or(0),
            uptime_ms: num("pm_uptime").map(|started| now_ms.saturating_sub(started)),
            cpu: entry["monit"]["cpu"].as_f64().unwrap_or(0.0),
            memory: entry["monit"]["memory"].as_u64().unwrap_or(0),
        }
    }
}

/// `ps`: the apps of the machine.
pub async fn processes(target: &Target) -> Result<Vec<Process>, CtlError> {
    let (_, list) = target.call("GET", "/pm2/list").await?;
    let entries = list.as_array().ok_or_else(|| {
        CtlError(format!(
            "{} did not answer with a list of apps",
            target.url("/pm2/list")
        ))
    })?;
    let now = now_ms();
    Ok(entries.iter().map(|e| Process::from_pm2(e, now)).collect())
}

/// The `ps` table: a header and one row per app, columns padded (`-` for what an app has not).
pub fn table(processes: &[Process]) -> String {
    let header = [
        "NAME", "ROLE", "GPU", "PID", "STATUS", "RESTARTS", "UPTIME", "CPU", "MEMORY",
    ];
    let dash = || "-".to_owned();
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for p in processes {
        rows.push(vec![
            p.name.clone(),
            p.role.clone().unwrap_or_else(dash),
            p.gpu.map_or_else(dash, |g| g.to_string()),
            p.pid.map_or_else(dash, |g| g.to_string()),
            p.status.clone(),
            p.restarts.to_string(),
            p.uptime_ms.map_or_else(dash, short_duration),
            format!("{:.1}%", p.cpu),
            bytes(p.memory),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// PM2's short uptime: `42s`, `7m`, `3h`, `2D`.
pub fn short_duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}D", s / 86_400),
    }
}

/// Bytes in binary units with one decimal: `0 B`, `812 B`, `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// What `restart`, `stop` and `start` ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Restart,
    Stop,
    Start,
}

impl Action {
    fn route(self) -> &'static str {
        match self {
            Action::Restart => "/restart/service",
            Action::Stop => "/stop/service",
            Action::Start => "/start/service",
        }
    }
}

/// `restart|stop|start NAME`: asks the machine, and for `stop` waits until the app is `stopped`
/// (at most `wait`). Returns the line to print: `NAME: stopped (was online)`, `NAME: already online`.
pub async fn act(
    target: &Target,
    action: Action,
    name: &str,
    wait: Duration,
) -> Result<String, CtlError> {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("service", name)
        .finish();
    let (status, body) = target
        .call("POST", &format!("{}?{query}", action.route()))
        .await?;
    let was = body["was"].as_str().unwrap_or("unknown").to_owned();
    match action {
        Action::Restart => Ok(format!("{name}: restarting (was {was})")),
        Action::Start if status == 200 => Ok(format!("{name}: already {was}")),
        Action::Start => Ok(format!("{name}: starting (was {was})")),
        Action::Stop if status == 200 => Ok(format!("{name}: already stopped")),
        Action::Stop => {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let now = processes(target).await?;
                let status = now
                    .iter()
                    .find(|p| p.name == name)
                    .map(|p| p.status.clone())
                    .unwrap_or_default();
                if status == "stopped" {
                    return Ok(format!("{name}: stopped (was {was})"));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(CtlError(format!(
                        "{name} is still {status} after {}; it stops once its kill_timeout has passed (see `machine-runtime ps`)",
                        crate::time::human_duration(wait)
                    )));
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
}

/// How `logs` prints.
#[derive(Debug, Clone)]
pub struct LogsOptions {
    /// The apps; empty means every app.
    pub names: Vec<String>,
    /// Recent lines per app.
    pub lines: usize,
    /// Keep printing new lines until the machine stops or the user interrupts.
    pub follow: bool,
    /// Colour the names (a terminal, and `NO_COLOR` unset).
    pub colour: bool,
}

impl LogsOptions {
    /// Colours only on a terminal, and never with `NO_COLOR` set to anything (no-color.org).
    pub fn colour_wanted() -> bool {
        std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
    }
}

/// One log line as `logs` prints it: `NAME | 2026-12-06T04:55:33.123Z text`, `NAME` padded to
/// `width` (Compose's shape with `--timestamps`; RFC 3339 UTC, milliseconds).
pub fn log_line(name: &str, width: usize, at_ms: u64, text: &str, colour: Option<usize>) -> String {
    let at = crate::log::rfc3339_ms(at_ms);
    let padded = format!("{name:<width$} |");
    match colour {
        Some(i) => {
            const PALETTE: [u8; 6] = [36, 33, 32, 35, 34, 31];
            let code = PALETTE[i % PALETTE.len()];
            format!("\x1b[{code}m{padded}\x1b[0m {at} {text}")
        }
        None => format!("{padded} {at} {text}"),
    }
}

/// `logs`: prints the recent lines of the apps (oldest first across apps) to stdout, then with
/// `follow` every new one until the machine stops. Says on stderr which apps printed nothing yet.
pub async fn logs(target: &Target, options: &LogsOptions) -> Result<(), CtlError> {
    let Some((mut reader, url)) = open_logs(target, options).await? else {
        return Ok(());
    };
    let mut printer = LogPrinter::new(options);
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| CtlError(format!("the log stream of {url} broke: {e}")))?;
        if n == 0 {
            break;
        }
        let Ok(item) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if !printer.take(&item) {
            return Ok(());
        }
    }
    printer.finish(options);
    Ok(())
}

/// Sends `GET /logs` for `options` and reads the answer's head: the stream of log items when the
/// answer is 200, else the error it means (`None` when it means none).
async fn open_logs(
    target: &Target,
    options: &LogsOptions,
) -> Result<Option<(BufReader<TcpStream>, HttpUrl)>, CtlError> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if !options.names.is_empty() {
        query.append_pair("service", &options.names.join(","));
    }
    query.append_pair("lines", &options.lines.to_string());
    if options.follow {
        query.append_pair("follow", "true");
    }
    let url = target.url(&format!("/logs?{}", query.finish()));
    let mut stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| target.unreachable(format!("cannot connect to {}: {e}", url.authority())))?;
    stream
        .write_all(http::request_head("GET", &url, &[]).as_bytes())
        .await
        .map_err(|e| CtlError(format!("cannot send the request to {url}: {e}")))?;
    let mut reader = BufReader::new(stream);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .await
            .map_err(|e| CtlError(format!("cannot read the answer of {url}: {e}")))?;
        if n == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        head.push(line);
    }
    let status: u16 = head
        .first()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CtlError(format!("{url} did not answer with http")))?;
    if status != 200 {
        let mut body = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut reader, &mut body).await;
        let response = HttpResponse { status, body };
        return answer("GET", &url, response, target.token.is_some()).map(|_| None);
    }
    Ok(Some((reader, url)))
}

/// What `logs` has printed and holds: recent lines are held until the `following` marker (or the
/// end), then printed at once, padded to the longest name among them; later ones (`live`) as they
/// come.
struct LogPrinter {
    shape: Shape,
    seen: Vec<String>,
    pending: Vec<(String, u64, String)>,
    live: bool,
    out: std::io::Stdout,
}

impl LogPrinter {
    fn new(options: &LogsOptions) -> Self {
        LogPrinter {
            shape: Shape {
                width: options
                    .names
                    .iter()
                    .map(|n| n.chars().count())
                    .max()
                    .unwrap_or(0),
                colours: options.colour.then(HashMap::new),
            },
            seen: Vec::new(),
            pending: Vec::new(),
            live: false,
            out: std::io::stdout(),
        }
    }

    /// Handles one item of the stream; `false` when `logs` is done (the stream ended, or stdout
    /// closed).
    fn take(&mut self, item: &Value) -> bool {
        if let Some(following) = item.get("following").and_then(Value::as_array) {
            // The recent lines are all here: print them, and say which apps printed nothing.
            let names: Vec<&str> = following.iter().filter_map(Value::as_str).collect();
            self.shape.fit(names.iter().copied());
            if !print(&mut self.out, &self.shape.lines(&self.pending)) {
                return false;
            }
            self.pending.clear();
            self.live = true;
            let quiet: Vec<&str> = names
                .into_iter()
                .filter(|n| !self.seen.iter().any(|s| s == n))
                .collect();
            say_quiet(&quiet, true);
            return true;
        }
        if let Some(end) = item.get("end").and_then(Value::as_str) {
            print(&mut self.out, &self.shape.lines(&self.pending));
            crate::sink::err_line(&format!("machine-runtime: {end}; the log stream ended"));
            return false;
        }
        let name = item["name"].as_str().unwrap_or("?").to_owned();
        if let Some(skipped) = item.get("skipped").and_then(Value::as_u64) {
            crate::sink::err_line(&format!(
                "machine-runtime: {skipped} lines of {name} were skipped: this reader fell behind"
            ));
            return true;
        }
        if !self.seen.contains(&name) {
            self.seen.push(name.clone());
        }
        let entry = (
            name,
            item["at_ms"].as_u64().unwrap_or(0),
            item["text"].as_str().unwrap_or("").to_owned(),
        );
        if self.live {
            return print(
                &mut self.out,
                &self.shape.lines(std::slice::from_ref(&entry)),
            );
        }
        self.pending.push(entry);
        true
    }

    /// At the end of the stream: prints what is held and, without `follow`, which apps printed
    /// nothing.
    fn finish(mut self, options: &LogsOptions) {
        let lines = self.shape.lines(&self.pending);
        print(&mut self.out, &lines);
        if !options.follow {
            let quiet: Vec<&str> = if options.names.is_empty() {
                if self.seen.is_empty() {
                    vec!["any app"]
                } else {
                    Vec::new()
                }
            } else {
                options
                    .names
                    .iter()
                    .map(String::as_str)
                    .filter(|n| !self.seen.iter().any(|s| s == n))
                    .collect()
            };
            say_quiet(&quiet, false);
        }
    }
}

/// How `logs` lays out its lines: the name column's width and, on a terminal, each name's colour.
struct Shape {
    width: usize,
    colours: Option<HashMap<String, usize>>,
}

impl Shape {
    /// Widens the name column to hold `names`.
    fn fit<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            self.width = self.width.max(name.chars().count());
        }
    }

    /// `(name, at_ms, text)` entries as printed lines ([`log_line`]), the column wide enough for them.
    fn lines(&mut self, entries: &[(String, u64, String)]) -> Vec<String> {
        self.fit(entries.iter().map(|(name, _, _)| name.as_str()));
        entries
            .iter()
            .map(|(name, at_ms, text)| {
                let colour = self.colours.as_mut().map(|colours| {
                    let next = colours.len();
                    *colours.entry(name.clone()).or_insert(next)
                });
                log_line(name, self.width, *at_ms, text, colour)
            })
            .collect()
    }
}

fn say_quiet(quiet: &[&str], following: bool) {
    if quiet.is_empty() {
        return;
    }
    let tail = if following {
        "; waiting for its first line"
    } else {
        ""
    };
    crate::sink::err_line(&format!(
        "machine-runtime: {} has printed nothing yet{tail}",
        quiet.join(", ")
    ));
}

/// Prints `lines` to stdout; false when nobody reads any more (`logs -f | head`): that ends the
/// command, it is not a failure.
fn print(out: &mut std::io::Stdout, lines: &[String]) -> bool {
    if lines.is_empty() {
        return true;
    }
    let mut lock = out.lock();
    for line in lines {
        if writeln!(lock, "{line}").is_err() {
            return false;
        }
    }
    lock.flush().is_ok()
}

/// The operator's commands on the command line (flattened into `machine-runtime`'s subcommands).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the apps of a running machine, as `pm2 ls` and `docker compose ps` do.
    #[command(after_help = PS_HELP)]
    Ps {
        #[command(flatten)]
        machine: MachineArgs,
        /// Print the list as JSON (the table's facts in the endpoint's names and units).
        #[arg(long)]
        json: bool,
    },
    /// Print the apps' output, name-prefixed and timestamped; `-f` keeps following.
    #[command(after_help = LOGS_HELP)]
    Logs {
        #[command(flatten)]
        machine: MachineArgs,
        /// The apps [default: every app].
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// Keep printing new lines until the machine stops (Ctrl-C ends it).
        #[arg(short, long)]
        follow: bool,
        /// Recent lines per app, from 1 to 2000.
        #[arg(long, short = 'n', value_name = "N", default_value_t = 50,
              value_parser = clap::value_parser!(u16).range(1..=2000))]
        lines: u16,
    },
    /// Restart one app as `pm2 restart` does (a stopped app starts).
    #[command(after_help = RESTART_HELP)]
    Restart(ActArgs),
    /// Stop one app as `pm2 stop` does; it stays stopped until `start`.
    #[command(after_help = STOP_HELP)]
    Stop(ActArgs),
    /// Start one app that was stopped (or ended), as `pm2 start` does.
    #[command(after_help = START_HELP)]
    Start(ActArgs),
}

/// Where the machine is.
#[derive(Debug, clap::Args)]
pub struct MachineArgs {
    /// The machine's endpoint [default: $MACHINE_URL, else http://127.0.0.1:$MACHINE_HEALTH_PORT, else port 9090].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
}

/// `restart|stop|start NAME`.
#[derive(Debug, clap::Args)]
pub struct ActArgs {
    #[command(flatten)]
    pub machine: MachineArgs,
    /// The app (a name from `machine-runtime ps`).
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Seconds `stop` waits for the app to be stopped.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub wait: u64,
}

const PS_HELP: &str = "Examples:
  machine-runtime ps
  machine-runtime ps --json | jq '.[] | select(.status != \"online\")'
  docker compose exec machine machine-runtime ps
  MACHINE_URL=http://gpu-box:9090 machine-runtime ps

Columns: UPTIME since the process started; CPU in percent of one core since the last reading; MEMORY
the resident memory of the app's process group. --json gives uptime_ms (ms), cpu (percent) and memory
(bytes).

Environment:
  MACHINE_URL            the machine's endpoint, as --url
  MACHINE_HEALTH_PORT    the local machine's health port when there is no URL (default 9090)";

const LOGS_HELP: &str = "Examples:
  machine-runtime logs                       the last 50 lines of every app
  machine-runtime logs -f comfyui-gpu0       follow one app
  machine-runtime logs --lines 200 svc wrk   two apps, merged in time order

Each line: NAME | RFC 3339 time (UTC, ms) | the app's text (secrets masked). Names are coloured on a
terminal unless NO_COLOR is set.

Environment:
  MACHINE_URL            the machine's endpoint, as --url
  MACHINE_HEALTH_PORT    the local machine's health port when there is no URL (default 9090)
  NO_COLOR               any value turns colours off";

const RESTART_HELP: &str = "Examples:
  machine-runtime restart comfyui-gpu0
  MACHINE_CONTROL_TOKEN=... machine-runtime restart --url http://gpu-box:9090 worker-0

A busy worker first gets its kill_timeout to finish its job.

Environment:
  MACHINE_CONTROL_TOKEN  the machine's control token, sent as Authorization: Bearer
  MACHINE_URL            the machine's endpoint, as --url
  MACHINE_HEALTH_PORT    the local machine's health port when there is no URL (default 9090)";

const STOP_HELP: &str = "Examples:
  machine-runtime stop comfyui-gpu0
  machine-runtime start comfyui-gpu0

Waits until the app is stopped (--wait). Its workers wait for it while it is stopped.

Environment:
  MACHINE_CONTROL_TOKEN  the machine's control token, sent as Authorization: Bearer
  MACHINE_URL            the machine's endpoint, as --url
  MACHINE_HEALTH_PORT    the local machine's health port when there is no URL (default 9090)";

const START_HELP: &str = "Examples:
  machine-runtime start comfyui-gpu0

Environment:
  MACHINE_CONTROL_TOKEN  the machine's control token, sent as Authorization: Bearer
  MACHINE_URL            the machine's endpoint, as --url
  MACHINE_HEALTH_PORT    the local machine's health port when there is no URL (default 9090)";

/// Runs one of the operator's commands against the machine; `port` is the local health port (from
/// `MACHINE_HEALTH_PORT` or the default). Prints what it got; the error is the one line to show.
pub fn run(command: Command, port: u16) -> Result<(), CtlError> {
    let lookup = crate::env::lookup;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CtlError(format!("cannot start the client: {e}")))?;
    runtime.block_on(async {
        match command {
            Command::Ps { machine, json } => {
                let target = Target::resolve(machine.url.as_deref(), port, lookup)?;
                let list = processes(&target).await?;
                let text = if json {
                    let mut text =
                        serde_json::to_string_pretty(&list).map_err(|e| CtlError(e.to_string()))?;
                    text.push('\n');
                    text
                } else {
                    table(&list)
                };
                print(&mut std::io::stdout(), &[text.trim_end().to_owned()]);
                Ok(())
            }
            Command::Logs {
                machine,
                names,
                follow,
                lines,
            } => {
                let target = Target::resolve(machine.url.as_deref(), port, lookup)?;
                let options = LogsOptions {
                    names,
                    lines: usize::from(lines),
                    follow,
                    colour: LogsOptions::colour_wanted(),
                };
                logs(&target, &options).await
            }
            Command::Restart(args) | Command::Stop(args) | Command::Start(args)
                if args.name.trim().is_empty() =>
            {
                Err(CtlError(
                    "the app name is empty; see `machine-runtime ps`".into(),
                ))
            }
            Command::Restart(args) => act_line(args, Action::Restart, port).await,
            Command::Stop(args) => act_line(args, Action::Stop, port).await,
            Command::Start(args) => act_line(args, Action::Start, port).await,
        }
    })
}

async fn act_line(args: ActArgs, action: Action, port: u16) -> Result<(), CtlError> {
    let target = Target::resolve(args.machine.url.as_deref(), port, crate::env::lookup)?;
    let line = act(&target, action, &args.name, Duration::from_secs(args.wait)).await?;
    print(&mut std::io::stdout(), &[line]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        url: Option<&str>,
        env: &[(&str, &str)],
    ) -> Result<(String, Option<String>), String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Target::resolve(url, 9090, |name| env.get(name).cloned())
            .map(|t| (t.url("/pm2/list").to_string(), t.token))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_machine_is_the_flag_else_machine_url_else_the_local_health_port() {
        let env = [
            ("MACHINE_URL", "http://gpu-box:9092/"),
            ("MACHINE_CONTROL_TOKEN", " t0k "),
        ];
        assert_eq!(
            resolve(Some("http://proxy/machine-1/"), &env),
            Ok((
                "http://proxy:80/machine-1/pm2/list".into(),
                Some("t0k".into())
            ))
        );
        assert_eq!(
            resolve(None, &env),
            Ok(("http://gpu-box:9092/pm2/list".into(), Some("t0k".into())))
        );
        assert_eq!(
            resolve(None, &[("MACHINE_URL", " "), ("MACHINE_CONTROL_TOKEN", "")]),
            Ok(("http://127.0.0.1:9090/pm2/list".into(), None))
        );
        assert_eq!(
            resolve(None, &[("MACHINE_URL", "gpu-box:9090")]),
            Err("MACHINE_URL: \"gpu-box:9090\" is not an http:// url; give the machine's endpoint as http://HOST:PORT".into())
        );
        assert!(
            resolve(Some("http://h:1/?a=b"), &[])
                .unwrap_err()
                .contains("has a query")
        );
    }

    #[test]
    fn the_table_pads_columns_and_says_dash_for_what_an_app_has_not() {
        let app = |name: &str, pid: Option<u64>, uptime_ms: Option<u64>, memory: u64| Process {
            name: name.into(),
            role: Some("worker".into()),
            gpu: pid.map(|_| 1),
            pid,
            status: if pid.is_some() { "online" } else { "stopped" }.into(),
            state: String::new(),
            restarts: 2,
            uptime_ms,
            cpu: 12.345,
            memory,
        };
        assert_eq!(
            table(&[
                app(
                    "simulation-websocket-worker-0",
                    Some(4242),
                    Some(7_200_000),
                    48_234_496
                ),
                app("w", None, None, 0),
            ]),
            "NAME                           ROLE    GPU  PID   STATUS   RESTARTS  UPTIME  CPU    MEMORY\n\
             simulation-websocket-worker-0  worker  1    4242  online   2         2h      12.3%  46.0 MiB\n\
             w                              worker  -    -     stopped  2         -       12.3%  0 B\n"
        );
    }

    #[test]
    fn durations_and_bytes_read_as_pm2_and_docker_show_them() {
        let cases = [
            (0, "0s"),
            (59_999, "59s"),
            (60_000, "1m"),
            (3_600_000, "1h"),
            (172_800_000, "2D"),
        ];
        for (ms, shown) in cases {
            assert_eq!(short_duration(ms), shown);
        }
        assert_eq!(
            [0, 1023, 1024, 1_572_864, 3 << 30].map(bytes),
            ["0 B", "1023 B", "1.0 KiB", "1.5 MiB", "3.0 GiB"]
        );
    }

    #[test]
    fn a_log_line_is_the_name_column_the_time_and_the_text() {
        assert_eq!(
            log_line("svc", 5, 1_796_532_933_123, "hello", None),
            "svc   | 2026-12-06T04:55:33.123Z hello"
        );
        assert_eq!(
            log_line("svc", 3, 0, "x", Some(1)),
            "\x1b[33msvc |\x1b[0m 1970-01-01T00:00:00.000Z x"
        );
    }

    #[test]
    fn answers_that_are_not_a_success_become_one_line() {
        let url = HttpUrl::local(9, "/restart/service?service=x");
        let said = |status: u16, body: &str, token: bool| {
            answer(
                "POST",
                &url,
                HttpResponse {
                    status,
                    body: body.into(),
                },
                token,
            )
            .unwrap_err()
            .to_string()
        };
        assert_eq!(
            said(401, r#"{"error":"x"}"#, false),
            "POST /restart/service needs the machine's control token: set MACHINE_CONTROL_TOKEN to the token the machine was started with"
        );
        assert_eq!(
            said(403, r#"{"error":"the control token is wrong"}"#, true),
            "the machine refused the control token: the control token is wrong; set MACHINE_CONTROL_TOKEN to the token the machine was started with"
        );
        assert_eq!(
            said(404, r#"{"error":"no app named \"x\""}"#, true),
            "no app named \"x\""
        );
        assert_eq!(
            said(502, "<html>bad gateway</html>", true),
            "http://127.0.0.1:9/restart/service?service=x answered 502 without the endpoint's JSON; is --url the machine's health port?"
        );
    }
}
