//! A test stand-in for the job queue's ComfyUI fork (`stakeordie/ComfyUI`, worker contract §7), behind the
//! `machine-comfyui` binary: the fork's command line ([`cli`]), its HTTP routes and its WebSocket, one prompt
//! queue run by one executor thread, and the nodes `EmptyImage` and `SaveImage` ([`prompt`]) writing real
//! PNG files ([`png`]) into the output folder with the fork's names.
//!
//! The WebSocket (`GET /ws`, also `/api/ws`) speaks the fork's "WEBSOCKET CHANGES": on connect a fresh
//! client id (`{"type": "client_id", "data": {"client_id": "<32 hex>"}}`) then `status`; from the client,
//! `{"type": "ping"}` → `{"type": "pong"}` and `{"type": "prompt", "data": {"prompt": {...}, "extra_data":
//! {...}}}` → `prompt_queued` (`prompt_id`, `number`, `node_errors`) or `error` (`error`, `node_errors`).
//! While a prompt runs, its client (the socket's id, or `client_id` of `POST /prompt`) gets, in the fork's
//! order: `execution_start`, `execution_cached`, per node `node_executing` (the fork's progress addition),
//! `executing`, `executed` (with `output.images` for `SaveImage`), then `execution_success` or
//! `execution_error`, and last `executing` with `node: null`; every socket gets `status` when the queue
//! changes. Every server message is `{"type": ..., "data": {...}}`.
//!
//! HTTP: `GET /` (200, a page), `GET /system_stats` (the fork's shape), `GET|POST /prompt`, `GET|POST
//! /queue`, `GET|POST /history`, `GET /history/{prompt_id}`, `GET /view?filename=&subfolder=&type=`,
//! `POST /interrupt`; each also under `/api`. What the fork does not do, this does not do either: it keeps
//! no state across restarts, runs one prompt at a time, and a prompt identical to the last one is answered
//! from the cache without writing a new file.

pub mod cli;
pub mod png;
pub mod prompt;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use crate::http::{self, Limits, Request};
use crate::log::LogStream;

pub use cli::Args;

/// Largest request head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest request body or WebSocket message accepted (the fork's default upload limit is 100 MB).
const MAX_BODY_BYTES: usize = 100 * 1024 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// History entries kept (the fork's `MAXIMUM_HISTORY_SIZE`).
const MAX_HISTORY: usize = 10_000;
/// The fork's version this stand-in follows (its `comfyui_version.py` at 3fb07a80).
pub const FORK_VERSION: &str = "0.3.12";

/// Errors of the stand-in.
#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    /// A listening socket could not be opened (the fork dies with Python's `OSError`).
    #[error(
        "[Errno {code}] error while attempting to bind on address ('{addr}', {port}): {source}"
    )]
    Bind {
        /// The address asked for.
        addr: String,
        /// The port asked for.
        port: u16,
        /// errno.
        code: i32,
        /// The operating system's answer.
        source: std::io::Error,
    },
}

/// The folders the stand-in uses, absolute, derived from the command line as the fork derives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folders {
    /// The ComfyUI folder: where `main.py` is (or the working directory).
    pub base: PathBuf,
    /// `--output-directory`, else `<base>/output`.
    pub output: PathBuf,
    /// `<--temp-directory>/temp` (the fork appends `temp`), else `<base>/temp`.
    pub temp: PathBuf,
    /// `--input-directory`, else `<base>/input`.
    pub input: PathBuf,
}

fn absolute(path: &Path, cwd: &Path) -> PathBuf {
    let joined = cwd.join(path);
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(p) => out.push(p),
            _ => {}
        }
    }
    out
}

impl Folders {
    /// The folders for `args`, relative paths taken from `cwd`.
    pub fn new(args: &Args, cwd: &Path) -> Folders {
        let script = Path::new(&args.argv[0]);
        let base = if args.argv[0].ends_with("main.py") {
            absolute(script.parent().unwrap_or(Path::new("")), cwd)
        } else {
            cwd.to_path_buf()
        };
        let pick = |given: &Option<String>, default: &str| {
            given
                .as_deref()
                .map_or_else(|| base.join(default), |g| absolute(Path::new(g), cwd))
        };
        Folders {
            output: pick(&args.output_directory, "output"),
            temp: args.temp_directory.as_deref().map_or_else(
                || base.join("temp"),
                |t| absolute(Path::new(t), cwd).join("temp"),
            ),
            input: pick(&args.input_directory, "input"),
            base,
        }
    }
}

/// Writes a log line where the fork's logger writes it: stderr, or stdout with `--log-stdout`.
fn log(args: &Args, line: &str) {
    let stream = if args.log_stdout {
        LogStream::Stdout
    } else {
        LogStream::Stderr
    };
    crate::log::app_output(stream, line);
}

/// A random version-4 UUID from the kernel's random source, as 16 bytes.
fn random_bytes() -> [u8; 16] {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    let filled = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if filled.is_err() {
        // No /dev/urandom: time and a counter still make ids unique within this process.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
        bytes[8..].copy_from_slice(&n.to_le_bytes());
    }
    bytes[6] = (bytes[6] & 0x0F) | 0x40;
    bytes[8] = (bytes[8] & 0x3F) | 0x80;
    bytes
}

/// `uuid.uuid4().hex`: 32 lowercase hex digits (the fork's client ids).
pub fn uuid_hex() -> String {
    random_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// `str(uuid.uuid4())`: the dashed form (the fork's prompt ids).
pub fn uuid_dashed() -> String {
    let hex = uuid_hex();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// One queued prompt: `(number, prompt_id, prompt, extra_data, outputs_to_execute)` in the fork.
#[derive(Debug, Clone)]
struct Item {
    number: Value,
    prompt_id: String,
    prompt: Value,
    extra_data: Value,
    outputs: Vec<String>,
}

impl Item {
    fn to_json(&self) -> Value {
        json!([
            self.number,
            self.prompt_id,
            self.prompt,
            self.extra_data,
            self.outputs
        ])
    }

    fn sort_key(&self) -> (f64, String) {
        (self.number.as_f64().unwrap_or(0.0), self.prompt_id.clone())
    }
}

/// Everything the server and the executor share.
#[derive(Default)]
struct State {
    /// Open sockets by client id: each gets text frames through its writer task.
    sockets: BTreeMap<String, mpsc::UnboundedSender<String>>,
    queue: Vec<Item>,
    running: Option<Item>,
    /// Finished prompts by id, oldest first.
    history: Map<String, Value>,
    /// The next prompt number (`PromptServer.number`).
    number: i64,
    /// The client of the prompt running or last run (`PromptServer.client_id`).
    client_id: Option<String>,
    stopping: bool,
}

impl State {
    /// `PromptServer.send_json`: to one socket, or to every socket when `sid` is `None`.
    fn send(&self, event: &str, data: Value, sid: Option<&str>) {
        let text = json!({"type": event, "data": data}).to_string();
        match sid {
            None => {
                for tx in self.sockets.values() {
                    let _ = tx.send(text.clone());
                }
            }
            Some(sid) => {
                if let Some(tx) = self.sockets.get(sid) {
                    let _ = tx.send(text);
                }
            }
        }
    }

    fn queue_remaining(&self) -> usize {
        self.queue.len() + usize::from(self.running.is_some())
    }

    /// `queue_updated`: the queue's size to every socket.
    fn broadcast_status(&self) {
        self.send(
            "status",
            json!({"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}),
            None,
        );
    }

    /// `PromptQueue.put`: queue the item, tell every socket.
    fn put(&mut self, item: Item) {
        self.queue.push(item);
        self.queue.sort_by(|a, b| {
            let (x, y) = (a.sort_key(), b.sort_key());
            x.0.total_cmp(&y.0).then_with(|| x.1.cmp(&y.1))
        });
        self.broadcast_status();
    }
}

struct Hub {
    state: Mutex<State>,
    wake: Condvar,
    args: Args,
    folders: Folders,
    /// `CUDA_VISIBLE_DEVICES` as the fork would see it (after `--cuda-device`).
    cuda_visible_devices: Option<String>,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts the stand-in as the fork's `main.py` starts: folders and their log lines, the temp folder
/// emptied, the executor started; with `--quick-test-for-ci` returns there (exit 0). Otherwise listens on
/// every `--listen` address, logs `To see the GUI go to: http://HOST:PORT`, and serves until `shutdown`.
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<(), StandinError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let folders = Folders::new(&args, &cwd);
    let cuda_visible_devices = announce_start(&args, &folders);
    let hub = Arc::new(Hub {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        args: args.clone(),
        folders: folders.clone(),
        cuda_visible_devices,
    });
    let executor = {
        let hub = Arc::clone(&hub);
        std::thread::Builder::new()
            .name("prompt_worker".into())
            .spawn(move || execute_loop(&hub))
            .ok()
    };
    if args.quick_test_for_ci {
        stop_executor(&hub, executor);
        return Ok(());
    }
    let _ = std::fs::create_dir_all(&folders.temp);
    let listeners = match bind_listeners(&args).await {
        Ok(listeners) => listeners,
        Err(e) => {
            stop_executor(&hub, executor);
            return Err(e);
        }
    };
    log(&args, "Starting server\n");
    if !args.dont_print_server {
        for listener in &listeners {
            if let Ok(local) = listener.local_addr() {
                let host = match local.ip() {
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    std::net::IpAddr::V4(ip) => ip.to_string(),
                };
                log(
                    &args,
                    &format!("To see the GUI go to: http://{host}:{}", local.port()),
                );
            }
        }
    }
    let tasks: Vec<_> = listeners
        .into_iter()
        .map(|listener| tokio::spawn(accept_loop(listener, Arc::clone(&hub), shutdown.clone())))
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    stop_executor(&hub, executor);
    Ok(())
}

/// The fork's start-up lines (the folders given, the CUDA device) and the stand-in's own summary;
/// empties the temp folder, as the fork does at every start. Returns `CUDA_VISIBLE_DEVICES` as the
/// fork would see it.
fn announce_start(args: &Args, folders: &Folders) -> Option<String> {
    if args.output_directory.is_some() {
        log(
            args,
            &format!("Setting output directory to: {}", folders.output.display()),
        );
    }
    if args.input_directory.is_some() {
        log(
            args,
            &format!("Setting input directory to: {}", folders.input.display()),
        );
    }
    let mut cuda_visible_devices = crate::env::lookup("CUDA_VISIBLE_DEVICES");
    if let Some(device) = args.cuda_device {
        cuda_visible_devices = Some(device.to_string());
        log(args, &format!("Set cuda device to: {device}"));
    }
    if args.temp_directory.is_some() {
        log(
            args,
            &format!("Setting temp directory to: {}", folders.temp.display()),
        );
    }
    // The fork empties its temp folder at every start.
    let _ = std::fs::remove_dir_all(&folders.temp);
    log(
        args,
        &format!(
            "machine-comfyui (a stand-in for ComfyUI {FORK_VERSION}, the queue's fork): output {}, temp {}, input {}, device {}",
            folders.output.display(),
            folders.temp.display(),
            folders.input.display(),
            if args.cpu { "cpu" } else { "cuda:0" }
        ),
    );
    cuda_visible_devices
}

/// A listener on every `--listen` address at `--port`; `::` failing beside another address is only
/// logged (there `0.0.0.0` already holds the port), any other failure is the error.
async fn bind_listeners(args: &Args) -> Result<Vec<TcpListener>, StandinError> {
    let mut listeners = Vec::new();
    for addr in args.listen.split(',') {
        let bind = if addr.contains(':') {
            format!("[{addr}]:{}", args.port)
        } else {
            format!("{addr}:{}", args.port)
        };
        match TcpListener::bind(bind.as_str()).await {
            Ok(listener) => listeners.push(listener),
            // `--listen` alone means 0.0.0.0 and ::; where :: is dual-stack, 0.0.0.0 already holds the port.
            Err(e) if addr == "::" && !listeners.is_empty() => {
                log(args, &format!("not listening on [::] as well: {e}"));
            }
            Err(source) => {
                return Err(StandinError::Bind {
                    addr: addr.to_owned(),
                    port: args.port,
                    code: source.raw_os_error().unwrap_or(0),
                    source,
                });
            }
        }
    }
    Ok(listeners)
}

/// Accepts connections on `listener`, each handled in its own task, until `shutdown`; an accept
/// error waits 50 ms.
async fn accept_loop(listener: TcpListener, hub: Arc<Hub>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let hub = Arc::clone(&hub);
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move { handle(stream, hub, shutdown).await });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
        }
    }
}

fn stop_executor(hub: &Hub, executor: Option<std::thread::JoinHandle<()>>) {
    hub.lock().stopping = true;
    hub.wake.notify_all();
    // A prompt in progress finishes first (nodes here take milliseconds).
    if let Some(handle) = executor {
        let _ = handle.join();
    }
}

/// Empties the temp folder, as the fork does when it stops on Ctrl-C.
pub fn cleanup_temp(args: &Args) {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let _ = std::fs::remove_dir_all(Folders::new(args, &cwd).temp);
}

// ------------------------------------------------------------------------------------------------
// The executor: the fork's `prompt_worker` thread and `PromptExecutor.execute`.

/// The outputs cache: node outputs by input signature, `ui` outputs by node id and class.
#[derive(Default)]
struct Cache {
    outputs: HashMap<String, prompt::Output>,
    ui: HashMap<(String, String), Value>,
}

fn execute_loop(hub: &Hub) {
    let mut cache = Cache::default();
    loop {
        let item = {
            let mut state = hub.lock();
            loop {
                if state.stopping {
                    return;
                }
                if !state.queue.is_empty() {
                    let item = state.queue.remove(0);
                    state.running = Some(item.clone());
                    state.broadcast_status();
                    break item;
                }
                state = hub.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let started = Instant::now();
        let (success, messages, history_result) = execute(hub, &mut cache, &item);
        {
            let mut state = hub.lock();
            state.running = None;
            if state.history.len() > MAX_HISTORY {
                let oldest = state.history.keys().next().cloned();
                if let Some(oldest) = oldest {
                    state.history.remove(&oldest);
                }
            }
            let mut entry = json!({
                "prompt": item.to_json(),
                "outputs": {},
                "status": {"status_str": if success { "success" } else { "error" },
                           "completed": success, "messages": messages},
            });
            if let (Some(entry), Value::Object(result)) = (entry.as_object_mut(), history_result) {
                entry.extend(result);
            }
            state.history.insert(item.prompt_id.clone(), entry);
            state.broadcast_status();
            if let Some(client) = state.client_id.clone() {
                state.send(
                    "executing",
                    json!({"node": null, "prompt_id": item.prompt_id}),
                    Some(&client),
                );
            }
        }
        log(
            &hub.args,
            &format!(
                "Prompt executed in {:.2} seconds",
                started.elapsed().as_secs_f64()
            ),
        );
    }
}

/// The status messages of one prompt: each is kept for its history entry and, with the prompt's
/// client, sent on its socket.
struct Events<'a> {
    hub: &'a Hub,
    client: Option<String>,
    messages: Vec<Value>,
}

impl Events<'_> {
    /// A status message: stamped, kept, and sent to the client.
    fn add_message(&mut self, event: &str, mut data: Value) {
        data["timestamp"] = json!(now_ms());
        self.messages.push(json!([event, data]));
        self.send(event, data);
    }

    /// An event for the client only (not kept).
    fn send(&self, event: &str, data: Value) {
        if let Some(client) = &self.client {
            self.hub.lock().send(event, data, Some(client));
        }
    }
}

/// Runs one prompt; returns success, the status messages and the history result (`outputs`, `meta`).
fn execute(hub: &Hub, cache: &mut Cache, item: &Item) -> (bool, Vec<Value>, Value) {
    let client = item.extra_data["client_id"].as_str().map(str::to_owned);
    hub.lock().client_id.clone_from(&client);
    let prompt_id = item.prompt_id.as_str();
    let mut events = Events {
        hub,
        client,
        messages: Vec::new(),
    };
    events.add_message("execution_start", json!({"prompt_id": prompt_id}));
    let empty = Map::new();
    let nodes = item.prompt.as_object().unwrap_or(&empty);
    let signatures: HashMap<String, String> = nodes
        .keys()
        .map(|id| (id.clone(), prompt::signature(nodes, id)))
        .collect();
    let cached = prune_cache(cache, nodes, &signatures);
    let current_outputs: Vec<String> = cached.iter().cloned().collect();
    events.add_message(
        "execution_cached",
        json!({"nodes": cached.iter().collect::<Vec<_>>(), "prompt_id": prompt_id}),
    );
    let total = nodes.len().saturating_sub(cached.len()).max(1);
    let order = prompt::execution_order(nodes, &item.outputs, &cached);
    let extra_pnginfo = item.extra_data.get("extra_pnginfo");
    let ctx = prompt::SaveContext {
        output_dir: &hub.folders.output,
        prompt: &item.prompt,
        extra_pnginfo,
        disable_metadata: hub.args.disable_metadata,
    };
    let mut executed: Vec<String> = Vec::new();
    let mut success = true;
    for (i, id) in order.iter().enumerate() {
        let class_type = nodes[id]["class_type"].clone();
        let current = i + 1;
        events.add_message(
            "node_executing",
            json!({"node": id, "prompt_id": prompt_id, "class_type": class_type,
                   "progress": {"current": current, "total": total,
                                "percentage": current * 100 / total}}),
        );
        let class_name = class_type.as_str().unwrap_or_default().to_owned();
        if cached.contains(id) {
            let ui = cache.ui.get(&(id.clone(), class_name)).cloned();
            events.send(
                "executed",
                json!({"node": id, "display_node": id, "output": ui, "prompt_id": prompt_id}),
            );
            continue;
        }
        match run_uncached(&events, cache, nodes, &signatures, &ctx, id, prompt_id) {
            Ok(()) => executed.push(id.clone()),
            Err(failure) => {
                log(
                    &hub.args,
                    &format!("!!! Exception during processing !!! {}", failure.message),
                );
                events.add_message(
                    "execution_error",
                    json!({"prompt_id": prompt_id, "node_id": id, "node_type": class_type,
                           "executed": executed, "exception_message": failure.message,
                           "exception_type": failure.kind,
                           "traceback": [format!("  machine-comfyui stand-in: node {id} ({class_type})\n")],
                           "current_inputs": failure.inputs, "current_outputs": current_outputs}),
                );
                success = false;
                break;
            }
        }
    }
    if success {
        events.add_message("execution_success", json!({"prompt_id": prompt_id}));
    }
    (success, events.messages, history_result(cache))
}

/// Runs one node that is not cached, on the cached outputs of its links; its output is cached and
/// its `ui` output, if any, kept and sent to the client as `executed`.
fn run_uncached(
    events: &Events<'_>,
    cache: &mut Cache,
    nodes: &Map<String, Value>,
    signatures: &HashMap<String, String>,
    ctx: &prompt::SaveContext<'_>,
    id: &str,
    prompt_id: &str,
) -> Result<(), prompt::NodeFailure> {
    events.send(
        "executing",
        json!({"node": id, "display_node": id, "prompt_id": prompt_id}),
    );
    let linked = linked_outputs(cache, nodes, signatures, id);
    let (output, ui) = prompt::run_node(&nodes[id], &linked, ctx)?;
    cache.outputs.insert(signatures[id].clone(), output);
    if let Some(ui) = ui {
        let class_name = nodes[id]["class_type"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        cache.ui.insert((id.to_owned(), class_name), ui.clone());
        events.send(
            "executed",
            json!({"node": id, "display_node": id, "output": ui, "prompt_id": prompt_id}),
        );
    }
    Ok(())
}

/// Keeps only what the new prompt uses (the fork's `clean_unused`); returns the nodes whose outputs
/// are cached.
fn prune_cache(
    cache: &mut Cache,
    nodes: &Map<String, Value>,
    signatures: &HashMap<String, String>,
) -> BTreeSet<String> {
    let used: BTreeSet<&String> = signatures.values().collect();
    cache.outputs.retain(|sig, _| used.contains(sig));
    cache.ui.retain(|(id, class), _| {
        nodes
            .get(id)
            .is_some_and(|n| n["class_type"].as_str() == Some(class))
    });
    nodes
        .keys()
        .filter(|id| cache.outputs.contains_key(&signatures[*id]))
        .cloned()
        .collect()
}

/// The cached outputs of the nodes `id` links to, by node id.
fn linked_outputs(
    cache: &Cache,
    nodes: &Map<String, Value>,
    signatures: &HashMap<String, String>,
    id: &str,
) -> HashMap<String, prompt::Output> {
    prompt::links_of(nodes, id)
        .into_iter()
        .filter_map(|dep| {
            let out = cache.outputs.get(signatures.get(&dep)?)?.clone();
            Some((dep, out))
        })
        .collect()
}

/// The history result of a prompt: the `ui` outputs in the cache and their `meta`.
fn history_result(cache: &Cache) -> Value {
    let mut outputs = Map::new();
    let mut meta = Map::new();
    for ((id, _), ui) in &cache.ui {
        outputs.insert(id.clone(), ui.clone());
        meta.insert(
            id.clone(),
            json!({"node_id": id, "display_node": id, "parent_node": null, "real_node_id": id}),
        );
    }
    json!({"outputs": outputs, "meta": meta})
}

// ------------------------------------------------------------------------------------------------
// Requests.

struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    headers: Vec<String>,
}

fn reply_json(status: u16, body: &Value) -> Reply {
    Reply {
        status,
        content_type: "application/json; charset=utf-8",
        body: body.to_string().into_bytes(),
        headers: Vec::new(),
    }
}

/// aiohttp's plain answer for a bare status (`404: Not Found`).
fn reply_status(status: u16) -> Reply {
    let text = match status {
        200 => String::new(),
        _ => format!("{status}: {}", http::reason_phrase(status)),
    };
    Reply {
        status,
        content_type: "text/plain; charset=utf-8",
        body: text.into_bytes(),
        headers: Vec::new(),
    }
}

async fn handle(mut stream: TcpStream, hub: Arc<Hub>, shutdown: CancellationToken) {
    let limits = Limits {
        max_head: MAX_HEAD_BYTES,
        max_body: MAX_BODY_BYTES,
    };
    let reply =
        match tokio::time::timeout(READ_TIMEOUT, http::read_request(&mut stream, limits)).await {
            Ok(Ok(request)) => {
                let path = request.path.strip_prefix("/api").unwrap_or(&request.path);
                if path == "/ws" && request.header_has("upgrade", "websocket") {
                    match http::websocket_accept(&request) {
                        Ok(head) => {
                            if stream.write_all(head.as_bytes()).await.is_ok() {
                                socket(stream, request, hub, shutdown).await;
                            }
                            return;
                        }
                        Err((status, problem)) => Reply {
                            status,
                            content_type: "text/plain; charset=utf-8",
                            body: problem.into_bytes(),
                            headers: Vec::new(),
                        },
                    }
                } else {
                    route(&request, &hub)
                }
            }
            Ok(Err(bad)) => Reply {
                status: bad.status,
                content_type: "text/plain; charset=utf-8",
                body: bad.message.into_bytes(),
                headers: Vec::new(),
            },
            Err(_) => reply_status(408),
        };
    let headers: Vec<&str> = reply.headers.iter().map(String::as_str).collect();
    let _ = http::write_body(
        &mut stream,
        reply.status,
        reply.content_type,
        &reply.body,
        &headers,
    )
    .await;
    let _ = stream.shutdown().await;
}

/// One WebSocket client: a fresh id, `client_id` and `status` first, then pings and prompts until it
/// closes.
async fn socket(stream: TcpStream, request: Request, hub: Arc<Hub>, shutdown: CancellationToken) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_BODY_BYTES))
        .max_frame_size(Some(MAX_BODY_BYTES));
    let ws = WebSocketStream::from_partially_read(stream, request.rest, Role::Server, Some(config))
        .await;
    let (mut write, mut read) = ws.split();
    let sid = uuid_hex();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    // The fork sends the id straight on the socket, then `status` through its message queue.
    let _ = tx.send(json!({"type": "client_id", "data": {"client_id": sid}}).to_string());
    {
        let mut state = hub.lock();
        state.sockets.insert(sid.clone(), tx);
        let remaining = state.queue_remaining();
        state.send(
            "status",
            json!({"status": {"exec_info": {"queue_remaining": remaining}}, "sid": sid}),
            Some(&sid),
        );
    }
    let writer = tokio::spawn(async move {
        while let Some(text) = rx.recv().await {
            if write.send(Message::text(text)).await.is_err() {
                break;
            }
        }
        let _ = write.close().await;
    });
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = read.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => on_text(&hub, &sid, text.as_str()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    hub.lock().sockets.remove(&sid);
    let _ = writer.await;
}

/// A text message from a socket, handled as the fork's `websocket_handler` does; anything it cannot
/// handle is logged ("Error handling websocket message") and otherwise ignored.
fn on_text(hub: &Hub, sid: &str, text: &str) {
    let fail = |why: &str| {
        log(
            &hub.args,
            &format!("Error handling websocket message: {why}"),
        )
    };
    let data: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return fail(&e.to_string()),
    };
    let Some(message) = data.as_object() else {
        return fail("'list' object has no attribute 'get'");
    };
    match message.get("type").and_then(Value::as_str) {
        Some("ping") => {
            if let Some(tx) = hub.lock().sockets.get(sid) {
                let _ = tx.send(json!({"type": "pong"}).to_string());
            }
        }
        Some("prompt") => {
            let prompt_data = message.get("data").cloned().unwrap_or_else(|| json!({}));
            let Some(prompt_data) = prompt_data.as_object() else {
                return fail("'str' object has no attribute 'get'");
            };
            let Some(mut prompt) = prompt_data.get("prompt").cloned() else {
                return;
            };
            let verdict = match prompt::validate(&mut prompt) {
                Ok(v) => v,
                Err(e) => return fail(&e),
            };
            let mut extra_data = prompt_data
                .get("extra_data")
                .cloned()
                .unwrap_or_else(|| json!({}));
            let mut state = hub.lock();
            match verdict {
                Ok(valid) => {
                    let Some(extra) = extra_data.as_object_mut() else {
                        drop(state);
                        return fail("'str' object does not support item assignment");
                    };
                    extra.insert("client_id".into(), Value::String(sid.to_owned()));
                    let prompt_id = uuid_dashed();
                    let number = state.number;
                    state.number += 1;
                    // The fork answers on the socket at once; `status` goes through its message queue.
                    state.send(
                        "prompt_queued",
                        json!({"prompt_id": prompt_id, "number": number, "node_errors": valid.node_errors}),
                        Some(sid),
                    );
                    state.put(Item {
                        number: json!(number),
                        prompt_id,
                        prompt,
                        extra_data,
                        outputs: valid.outputs,
                    });
                    drop(state);
                    hub.wake.notify_all();
                }
                Err(invalid) => {
                    log(
                        &hub.args,
                        &format!("invalid prompt: {}", invalid.error["message"]),
                    );
                    state.send(
                        "error",
                        json!({"error": invalid.error, "node_errors": invalid.node_errors}),
                        Some(sid),
                    );
                }
            }
        }
        _ => {}
    }
}

fn route(request: &Request, hub: &Hub) -> Reply {
    let path = request.path.strip_prefix("/api").unwrap_or(&request.path);
    let method = request.method.as_str();
    match (method, path) {
        ("GET", "/") => Reply {
            status: 200,
            content_type: "text/html",
            body: b"<!doctype html><title>ComfyUI</title><p>machine-comfyui: a stand-in for the queue's ComfyUI fork (no front end)</p>\n".to_vec(),
            headers: vec!["Cache-Control: no-cache".into()],
        },
        ("GET", "/ws") => Reply {
            status: 400,
            content_type: "text/plain; charset=utf-8",
            body: b"No WebSocket UPGRADE hdr: None\n Can \"Upgrade\" only to \"WebSocket\".".to_vec(),
            headers: Vec::new(),
        },
        ("GET", "/system_stats") => reply_json(200, &system_stats(hub)),
        ("GET", "/prompt") => {
            let remaining = hub.lock().queue_remaining();
            reply_json(200, &json!({"exec_info": {"queue_remaining": remaining}}))
        }
        ("POST", "/prompt") => post_prompt(request, hub),
        ("GET", "/queue") => {
            let state = hub.lock();
            let running: Vec<Value> = state.running.iter().map(Item::to_json).collect();
            let pending: Vec<Value> = state.queue.iter().map(Item::to_json).collect();
            reply_json(200, &json!({"queue_running": running, "queue_pending": pending}))
        }
        ("POST", "/queue") => {
            let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
                return reply_status(500);
            };
            let mut state = hub.lock();
            if body["clear"].as_bool() == Some(true) {
                state.queue.clear();
                state.broadcast_status();
            }
            if let Some(ids) = body["delete"].as_array() {
                for id in ids {
                    let before = state.queue.len();
                    state.queue.retain(|item| Some(item.prompt_id.as_str()) != id.as_str());
                    if state.queue.len() != before {
                        state.broadcast_status();
                    }
                }
            }
            reply_status(200)
        }
        ("GET", "/history") => {
            let state = hub.lock();
            let max = request.param("max_items").and_then(|m| m.parse::<usize>().ok());
            let skip = max.map_or(0, |m| state.history.len().saturating_sub(m));
            let out: Map<String, Value> = state
                .history
                .iter()
                .skip(skip)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            reply_json(200, &Value::Object(out))
        }
        ("POST", "/history") => {
            let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
                return reply_status(500);
            };
            let mut state = hub.lock();
            if body["clear"].as_bool() == Some(true) {
                state.history.clear();
            }
            if let Some(ids) = body["delete"].as_array() {
                for id in ids.iter().filter_map(Value::as_str) {
                    state.history.remove(id);
                }
            }
            reply_status(200)
        }
        ("GET", p) if p.starts_with("/history/") => {
            let id = &p["/history/".len()..];
            let state = hub.lock();
            let out = state
                .history
                .get(id)
                .map_or_else(|| json!({}), |entry| json!({id: entry}));
            reply_json(200, &out)
        }
        ("GET", "/view") => view(request, hub),
        ("POST", "/interrupt") => reply_status(200),
        ("GET" | "POST", _) => reply_status(404),
        _ => reply_status(405),
    }
}

/// `POST /prompt` as the fork answers it: `{"prompt_id", "number", "node_errors"}`, or 400 with
/// `{"error", "node_errors"}`; execution messages go to the socket named by `client_id`.
fn post_prompt(request: &Request, hub: &Hub) -> Reply {
    log(&hub.args, "got prompt");
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&request.body) else {
        return reply_status(500);
    };
    let mut state = hub.lock();
    let number = match body.get("number") {
        Some(n) => match n
            .as_f64()
            .or_else(|| n.as_str().and_then(|s| s.trim().parse().ok()))
        {
            Some(f) => json!(f),
            None => return reply_status(500),
        },
        None => {
            let mut number = state.number;
            if body.get("front").is_some_and(|f| f.as_bool() == Some(true)) {
                number = -number;
            }
            state.number += 1;
            json!(number)
        }
    };
    let Some(mut prompt) = body.get("prompt").cloned() else {
        return reply_json(400, &json!({"error": "no prompt", "node_errors": []}));
    };
    let verdict = match prompt::validate(&mut prompt) {
        Ok(v) => v,
        Err(_) => return reply_status(500),
    };
    let mut extra_data = body.get("extra_data").cloned().unwrap_or_else(|| json!({}));
    if let Some(client) = body.get("client_id") {
        match extra_data.as_object_mut() {
            Some(extra) => {
                extra.insert("client_id".into(), client.clone());
            }
            None => return reply_status(500),
        }
    }
    match verdict {
        Ok(valid) => {
            let prompt_id = uuid_dashed();
            state.put(Item {
                number: number.clone(),
                prompt_id: prompt_id.clone(),
                prompt,
                extra_data,
                outputs: valid.outputs,
            });
            drop(state);
            hub.wake.notify_all();
            reply_json(
                200,
                &json!({"prompt_id": prompt_id, "number": number, "node_errors": valid.node_errors}),
            )
        }
        Err(invalid) => {
            log(
                &hub.args,
                &format!("invalid prompt: {}", invalid.error["message"]),
            );
            reply_json(
                400,
                &json!({"error": invalid.error, "node_errors": invalid.node_errors}),
            )
        }
    }
}

/// `GET /view?filename=&subfolder=&type=`: a file of the output, temp or input folder.
fn view(request: &Request, hub: &Hub) -> Reply {
    let Some(raw) = request.param("filename") else {
        return reply_status(404);
    };
    // "name [output]" names its folder itself (`folder_paths.annotated_filepath`).
    let (name, annotated) = if let Some(n) = raw.strip_suffix(" [output]") {
        (n, Some(hub.folders.output.clone()))
    } else if let Some(n) = raw.strip_suffix(" [temp]") {
        (n, Some(hub.folders.temp.clone()))
    } else if let Some(n) = raw.strip_suffix(" [input]") {
        (n, Some(hub.folders.input.clone()))
    } else {
        (raw, None)
    };
    if name.is_empty() || name.starts_with('/') || name.contains("..") {
        return reply_status(400);
    }
    let dir = match annotated {
        Some(dir) => dir,
        None => match request.param("type").unwrap_or("output") {
            "output" => hub.folders.output.clone(),
            "temp" => hub.folders.temp.clone(),
            "input" => hub.folders.input.clone(),
            _ => return reply_status(400),
        },
    };
    let dir = match request.param("subfolder") {
        Some(sub) => {
            let full = absolute(Path::new(sub), &dir);
            if !full.starts_with(&dir) {
                return reply_status(403);
            }
            full
        }
        None => dir,
    };
    let base = Path::new(name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = dir.join(&base);
    if !file.is_file() {
        return reply_status(404);
    }
    let Ok(body) = std::fs::read(&file) else {
        return reply_status(404);
    };
    let content_type = match base
        .rsplit('.')
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    Reply {
        status: 200,
        content_type,
        body,
        headers: vec![format!("Content-Disposition: filename=\"{base}\"")],
    }
}

/// Total and available memory in bytes, from `/proc/meminfo` (0 where it cannot be read).
fn memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// `GET /system_stats` in the fork's shape: `system` (os, RAM, versions, argv) and one device, `cpu` with
/// `--cpu`, else `cuda:0` (named after `CUDA_VISIBLE_DEVICES`, with no memory: it is simulated).
fn system_stats(hub: &Hub) -> Value {
    let (ram_total, ram_free) = memory();
    let device = if hub.args.cpu {
        json!({"name": "cpu", "type": "cpu", "index": null, "vram_total": ram_total,
               "vram_free": ram_free, "torch_vram_total": ram_total, "torch_vram_free": ram_free})
    } else {
        let visible = hub.cuda_visible_devices.as_deref().unwrap_or("all");
        json!({"name": format!("cuda:0 simulated GPU (CUDA_VISIBLE_DEVICES={visible}) : cudaMallocAsync"),
               "type": "cuda", "index": 0, "vram_total": 0, "vram_free": 0,
               "torch_vram_total": 0, "torch_vram_free": 0})
    };
    json!({
        "system": {
            "os": "posix",
            "ram_total": ram_total,
            "ram_free": ram_free,
            "comfyui_version": FORK_VERSION,
            "python_version": "none: machine-comfyui, a stand-in for the queue's ComfyUI fork",
            "pytorch_version": "none",
            "embedded_python": false,
            "argv": hub.args.argv,
        },
        "devices": [device],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        let argv: Vec<String> = std::iter::once("machine-comfyui")
            .chain(list.iter().copied())
            .map(str::to_owned)
            .collect();
        cli::parse(&argv).unwrap()
    }

    #[test]
    fn folders_follow_the_fork() {
        let cwd = Path::new("/w/ComfyUI");
        let f = Folders::new(&args(&["main.py"]), cwd);
        assert_eq!(f.output, Path::new("/w/ComfyUI/output"));
        assert_eq!(f.temp, Path::new("/w/ComfyUI/temp"));
        let f = Folders::new(
            &args(&[
                "/opt/C/main.py",
                "--output-directory",
                "output/gpu1",
                "--temp-directory",
                "/w/t/gpu1",
            ]),
            cwd,
        );
        assert_eq!(f.base, Path::new("/opt/C"));
        assert_eq!(f.output, Path::new("/w/ComfyUI/output/gpu1"));
        assert_eq!(f.temp, Path::new("/w/t/gpu1/temp"));
        assert_eq!(f.input, Path::new("/opt/C/input"));
    }

    #[test]
    fn ids_have_the_forks_shapes() {
        let sid = uuid_hex();
        assert_eq!(sid.len(), 32);
        assert!(sid.bytes().all(|b| b.is_ascii_hexdigit()));
        let id = uuid_dashed();
        let parts: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_eq!(&id[14..15], "4");
        assert_ne!(uuid_hex(), uuid_hex());
    }

    #[test]
    fn the_queue_runs_lowest_numbers_first_and_counts_the_running_prompt() {
        let mut state = State::default();
        let item = |n: f64, id: &str| Item {
            number: json!(n),
            prompt_id: id.into(),
            prompt: json!({}),
            extra_data: json!({}),
            outputs: Vec::new(),
        };
        state.put(item(3.0, "c"));
        state.put(item(-1.0, "front"));
        state.put(item(2.0, "b"));
        let order: Vec<&str> = state.queue.iter().map(|i| i.prompt_id.as_str()).collect();
        assert_eq!(order, ["front", "b", "c"]);
        state.running = Some(state.queue.remove(0));
        assert_eq!(state.queue_remaining(), 3);
    }
}
