//! `GET /metrics` read by the real tools: a `machine-runtime up --profile full-local` on two fake GPUs,
//! reporting to a real redis-server, runs two simulation jobs; `promtool check metrics` finds nothing
//! to say about its output, and a real Prometheus (Debian's `prometheus`, on a free loopback port)
//! scrapes it with no error and answers queries on the machine's metrics.

use std::io::Write;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::job_queue::{NewJob, load_job_matching, push_job, wait_job_status};
use crate::redis_server::RedisServer;
use crate::up_support::{Runtime, free_port, http_get, wait_for};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// The raw `/metrics` answer: status line and headers, then the body.
fn scrape(rt: &Runtime) -> (String, String) {
    let (status, _, text) = rt.get("/metrics");
    assert_eq!(status, 200, "{text}");
    text.split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap_or((String::new(), text))
}

/// The value of the sample written exactly as `series` (`name{labels}`), if there is one.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Sum of a family's samples.
fn total(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A Prometheus server owned by the test; killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port, scraping `target` (`host:port`) every second.
    fn start(target: &str) -> Prometheus {
        assert!(
            std::path::Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing; install Debian's prometheus package (apt-get install -y prometheus), as .ci/run does"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: machine\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/query?query=<promql>`: the result vector, once the API answers `success`.
    fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let encoded: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let (status, body, _) = http_get(self.port, &format!("/api/v1/query?query={encoded}"));
        (status == 200 && body["status"] == "success")
            .then(|| body["data"]["result"].as_array().cloned())
            .flatten()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number in a query result's `value: [time, "number"]`.
fn value_of(result: &Value) -> f64 {
    result["value"][1].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_running_machine_and_promtool_finds_the_output_clean() {
    let redis = RedisServer::start();
    let mut conn = redis.conn().await;
    load_job_matching(&mut conn).await;
    let machine = "metrics-m";
    let url = redis.url();
    let rt = tokio::task::block_in_place(|| {
        Runtime::start_profile(
            "full-local",
            &[
                ("MACHINE_FAKE_GPUS", "2"),
                ("MACHINE_ID", machine),
                ("HUB_REDIS_URL", url.as_str()),
                ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "1"),
                ("WORKER_POLL_INTERVAL_MS", "200"),
                ("SIMULATION_STEP_COUNT", "2"),
                ("SIMULATION_STEP_DELAY_MS", "100"),
            ],
        )
    });
    let workers: Vec<String> = (0..4)
        .map(|i| format!("{machine}-worker-simulation-websocket-{i}"))
        .collect();
    tokio::task::block_in_place(|| {
        wait_for(
            "every worker connected in /metrics",
            || format!("{}\n--- metrics ---\n{}", rt.output(), scrape(&rt).1),
            || {
                let body = scrape(&rt).1;
                workers
                    .iter()
                    .all(|w| {
                        sample(
                            &body,
                            &format!("machine_worker_connected{{worker=\"{w}\"}}"),
                        ) == Some(1.0)
                    })
                    .then_some(())
            },
        )
    });
    let ids = ["metrics-job-0", "metrics-job-1"];
    for id in ids {
        push_job(
            &mut conn,
            &NewJob::new(id, "simulation", json!({"prompt": id})),
        )
        .await;
    }
    for id in ids {
        wait_job_status(&mut conn, id, "completed").await;
    }
    // The workers' job_completed events reach the machine over pub/sub, a moment after the job's hash.
    let body = tokio::task::block_in_place(|| {
        wait_for(
            "both jobs counted in machine_worker_jobs_completed_total",
            || scrape(&rt).1,
            || {
                let body = scrape(&rt).1;
                (total(&body, "machine_worker_jobs_completed_total") == 2.0).then_some(body)
            },
        )
    });

    // What the machine says, read as text.
    let (head, _) = tokio::task::block_in_place(|| scrape(&rt));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert_eq!(
        total(&body, "machine_worker_jobs_failed_total"),
        0.0,
        "{body}"
    );
    assert!(
        total(&body, "machine_worker_busy_seconds_total") > 0.0,
        "{body}"
    );
    for gpu in ["0", "1"] {
        assert_eq!(
            sample(
                &body,
                &format!("machine_gpu_memory_total_bytes{{gpu=\"{gpu}\"}}")
            ),
            Some(24.0 * 1024.0 * 1024.0 * 1024.0),
            "{body}"
        );
        assert!(
            sample(
                &body,
                &format!("machine_gpu_temperature_celsius{{gpu=\"{gpu}\"}}")
            )
            .is_some(),
            "{body}"
        );
    }
    let worker_app = "simulation-websocket-worker-0";
    assert_eq!(
        sample(
            &body,
            &format!("machine_app_state{{app=\"{worker_app}\",role=\"worker\",state=\"running\"}}")
        )
        .or_else(|| sample(
            &body,
            &format!("machine_app_state{{app=\"{worker_app}\",role=\"worker\",state=\"ready\"}}")
        )),
        Some(1.0),
        "{body}"
    );
    assert!(
        sample(
            &body,
            &format!("machine_app_resident_memory_bytes{{app=\"{worker_app}\",role=\"worker\"}}")
        )
        .is_some_and(|b| b > 1e6),
        "a node worker holds megabytes: {body}"
    );
    assert_eq!(
        sample(&body, "machine_broker_connected"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "machine_broker_lease_held"),
        Some(1.0),
        "{body}"
    );
    assert!(
        sample(&body, "machine_broker_last_publish_timestamp_seconds").is_some(),
        "{body}"
    );
    assert!(
        !body.contains(&url),
        "the broker URL is not exposed: {body}"
    );

    // promtool: the format and Prometheus' naming rules; it prints nothing when all is well.
    let mut promtool = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{PROMTOOL} could not run ({e}); install Debian's prometheus package")
        });
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}: {said}\n--- metrics ---\n{body}",
        checked.status
    );

    // A real Prometheus scraping the machine: the target up, no scrape error, the metrics queryable.
    let port = tokio::task::block_in_place(|| rt.health_port());
    let prometheus = Prometheus::start(&format!("127.0.0.1:{port}"));
    tokio::task::block_in_place(|| {
        let target = wait_for(
            "Prometheus to scrape the machine successfully",
            || {
                let targets = std::net::TcpStream::connect(("127.0.0.1", prometheus.port))
                    .map(|_| http_get(prometheus.port, "/api/v1/targets").1);
                format!(
                    "targets: {targets:?}\n--- prometheus log ---\n{}",
                    prometheus.log()
                )
            },
            || {
                // Prometheus listens once its storage is open.
                std::net::TcpStream::connect(("127.0.0.1", prometheus.port)).ok()?;
                let (status, targets, _) = http_get(prometheus.port, "/api/v1/targets");
                let target = targets["data"]["activeTargets"].get(0)?.clone();
                (status == 200 && target["health"] == "up").then_some(target)
            },
        );
        assert_eq!(target["lastError"], "", "{target}");
        assert_eq!(target["labels"]["job"], "machine", "{target}");
        let completed = wait_for(
            "sum(machine_worker_jobs_completed_total) in Prometheus",
            || prometheus.log(),
            || {
                prometheus
                    .query("sum(machine_worker_jobs_completed_total)")?
                    .first()
                    .cloned()
            },
        );
        assert_eq!(value_of(&completed), 2.0, "{completed}");
        let gpus = prometheus
            .query("machine_gpu_memory_total_bytes")
            .unwrap_or_default();
        assert_eq!(gpus.len(), 2, "{gpus:?}");
        let up = prometheus.query("up{job=\"machine\"}").unwrap_or_default();
        assert_eq!(up.first().map(value_of), Some(1.0), "{up:?}");
        // Prometheus' own counters of samples it refused from a scrape: a duplicated series or a
        // sample it could not take would show here.
        let (_, _, own) = http_get(prometheus.port, "/metrics");
        for refused in [
            "prometheus_target_scrapes_sample_duplicate_timestamp_total",
            "prometheus_target_scrapes_sample_out_of_order_total",
            "prometheus_target_scrapes_sample_out_of_bounds_total",
            "prometheus_target_scrapes_exceeded_sample_limit_total",
        ] {
            assert_eq!(sample(&own, refused), Some(0.0), "{refused} in\n{own}");
        }
    });
}
