//! The broker over TLS against a real redis-server with a private CA the test makes (openssl CLI):
//! the CA, mutual TLS, an ACL user and a db index; every TLS failure a start-up error naming its
//! cause (unknown CA, expired, wrong host name, client certificate missing or refused); bad TLS files
//! refused before anything starts; the explicit insecure switch.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use machine_runtime::broker::{
    Broker, BrokerConfig, BrokerError, ConfigError, LinkError, MachineView, Phase, PreflightMode,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::redis_server::RedisServer;
use crate::up_support::{Runtime, wait_for, wait_line};

const DEADLINE: Duration = Duration::from_secs(60);
const PASSWORD: &str = "tls-hunter22";

/// A CA, a second CA nobody trusts, and certificates signed by them, made with the openssl CLI.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.ca("ca");
        pki.ca("other-ca");
        let local = "subjectAltName=DNS:localhost,IP:127.0.0.1";
        pki.leaf("server", "ca", local, "serverAuth", "3");
        pki.leaf(
            "wrong-name",
            "ca",
            "subjectAltName=DNS:elsewhere.example",
            "serverAuth",
            "3",
        );
        // Valid until one day before it was issued: expired from the first second.
        pki.leaf("expired", "ca", local, "serverAuth", "-1");
        pki.leaf(
            "client",
            "ca",
            "subjectAltName=DNS:machine",
            "clientAuth",
            "3",
        );
        pki.leaf(
            "stranger",
            "other-ca",
            "subjectAltName=DNS:machine",
            "clientAuth",
            "3",
        );
        pki
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("the openssl CLI makes the test's certificates; install openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, name: &str) {
        let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "3",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    fn leaf(&self, name: &str, ca: &str, san: &str, usage: &str, days: &str) {
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        std::fs::write(
            self.dir.path().join(&ext),
            format!("{san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            days,
            "-extfile",
            &ext,
        ]);
    }

    /// A TLS-only redis-server presenting `server` (a leaf name); `clients` asks for client certificates.
    fn server(&self, server: &str, clients: bool) -> RedisServer {
        let (crt, key, ca) = (
            self.path(&format!("{server}.crt")),
            self.path(&format!("{server}.key")),
            self.path("ca.crt"),
        );
        let auth = if clients { "yes" } else { "no" };
        RedisServer::start_with(&[
            "--tls-cert-file",
            &crt,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            auth,
            "--requirepass",
            PASSWORD,
            "--user",
            "alice",
            "on",
            ">alice-pw-1",
            "~*",
            "&*",
            "+@all",
        ])
    }

    /// The test's own connection to a server of [`Pki::server`] (client certificate always given).
    async fn admin(&self, server: &RedisServer) -> redis::aio::MultiplexedConnection {
        let read = |name: &str| std::fs::read(self.path(name)).unwrap();
        let url = format!("rediss://:{PASSWORD}@localhost:{}", server.port());
        let client = redis::Client::build_with_tls(
            url.as_str(),
            redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: read("client.crt"),
                    client_key: read("client.key"),
                }),
                root_cert: Some(read("ca.crt")),
            },
        )
        .unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }
}

fn view(machine: &str) -> MachineView {
    MachineView {
        machine_id: machine.to_owned(),
        phase: Phase::Starting,
        started_at: std::time::Instant::now(),
        gpu_count: 0,
        health_url: "http://localhost:9090/health".to_owned(),
        workers: Vec::new(),
        services: Vec::new(),
    }
}

/// The broker's config from variables, the way the runtime reads them, with test timeouts.
fn config(vars: &[(&str, String)]) -> Result<(BrokerConfig, Vec<String>), Vec<ConfigError>> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let (mut config, warnings) = BrokerConfig::from_lookup(|name| {
        vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
    .map_err(|errors| errors.0)?;
    config.connect_timeout = Duration::from_secs(3);
    config.response_timeout = Duration::from_secs(3);
    config.backoff_min = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(500);
    config.preflight = PreflightMode::Off;
    Ok((config, warnings))
}

async fn start(vars: &[(&str, String)], machine: &str) -> Result<Broker, BrokerError> {
    let (config, _) = config(vars).unwrap();
    let (_tx, rx) = watch::channel(view(machine));
    tokio::time::timeout(DEADLINE, Broker::start(config, rx))
        .await
        .expect("Broker::start returns within the deadline")
}

/// Subscribes to the machine's status channel over TLS and returns the first message's `update_type`.
async fn first_status(pki: &Pki, server: &RedisServer, machine: &str, vars: &[(&str, String)]) {
    let read = |name: &str| std::fs::read(pki.path(name)).unwrap();
    let url = format!("rediss://:{PASSWORD}@localhost:{}", server.port());
    let client = redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read("client.crt"),
                client_key: read("client.key"),
            }),
            root_cert: Some(read("ca.crt")),
        },
    )
    .unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(format!("machine:status:{machine}"))
        .await
        .unwrap();
    let broker = start(vars, machine).await.unwrap();
    let mut stream = Box::pin(pubsub.into_on_message());
    let message = tokio::time::timeout(
        DEADLINE,
        std::future::poll_fn(|cx| futures_core::Stream::poll_next(stream.as_mut(), cx)),
    )
    .await
    .expect("a status message within the deadline")
    .unwrap();
    let payload: String = message.get_payload().unwrap();
    let value: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(value["update_type"], "initial", "{value}");
    assert!(broker.status().is_connected(), "{:?}", broker.status());
    assert!(!format!("{:?}", broker.status()).contains(PASSWORD));
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_connects_and_publishes_with_acl_user_and_db_index() {
    let pki = Pki::new();
    let server = pki.server("server", false);
    let machine = "tls-ca-m1";
    let url = format!("rediss://alice:alice-pw-1@localhost:{}/3", server.port());
    let vars = [
        ("HUB_REDIS_URL", url),
        ("HUB_REDIS_TLS_CA_FILE", pki.path("ca.crt")),
    ];
    first_status(&pki, &server, machine, &vars).await;

    // The broker's own connection is alice's, on db 3 (CLIENT LIST names both per connection).
    let broker = start(&vars, "tls-ca-m1b").await.unwrap();
    let mut admin = pki.admin(&server).await;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        clients
            .lines()
            .any(|l| l.contains(" user=alice ") && l.contains(" db=3 ")),
        "{clients}"
    );
    broker.shutdown().await.unwrap();

    // A bad password over TLS is still the authentication error, not a TLS one.
    let bad = format!("rediss://alice:wrong-pw-9@localhost:{}/3", server.port());
    let err = start(
        &[
            ("HUB_REDIS_URL", bad),
            ("HUB_REDIS_TLS_CA_FILE", pki.path("ca.crt")),
        ],
        machine,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, BrokerError::Link(LinkError::AuthRefused { .. })),
        "{err}"
    );
    assert!(!err.to_string().contains("wrong-pw-9"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_client_certificate_and_without_one() {
    let pki = Pki::new();
    let server = pki.server("server", true);
    let url = format!("rediss://:{PASSWORD}@localhost:{}", server.port());
    let ca = ("HUB_REDIS_TLS_CA_FILE", pki.path("ca.crt"));
    let mtls = [
        ("HUB_REDIS_URL", url.clone()),
        ca.clone(),
        ("HUB_REDIS_TLS_CERT_FILE", pki.path("client.crt")),
        ("HUB_REDIS_TLS_KEY_FILE", pki.path("client.key")),
    ];
    first_status(&pki, &server, "mtls-m2", &mtls).await;

    for (vars, word) in [
        (
            vec![("HUB_REDIS_URL", url.clone()), ca.clone()],
            "client certificate",
        ),
        (
            vec![
                ("HUB_REDIS_URL", url.clone()),
                ca.clone(),
                ("HUB_REDIS_TLS_CERT_FILE", pki.path("stranger.crt")),
                ("HUB_REDIS_TLS_KEY_FILE", pki.path("stranger.key")),
            ],
            "refused this machine's client certificate",
        ),
    ] {
        let err = start(&vars, "mtls-m2").await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, BrokerError::Link(LinkError::TlsRefused { .. })),
            "{text}"
        );
        assert!(text.contains(word), "{text}");
        assert!(!text.contains(PASSWORD), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tls_failure_is_a_start_up_error_naming_its_cause() {
    let pki = Pki::new();
    let good = pki.server("server", false);
    let wrong_name = pki.server("wrong-name", false);
    let expired = pki.server("expired", false);
    let url = |server: &RedisServer| format!("rediss://:{PASSWORD}@localhost:{}", server.port());
    let ca = || ("HUB_REDIS_TLS_CA_FILE", pki.path("ca.crt"));
    let cases = [
        // No CA given: the public roots do not know the private CA.
        (vec![("HUB_REDIS_URL", url(&good))], "unknown CA"),
        (
            vec![
                ("HUB_REDIS_URL", url(&good)),
                ("HUB_REDIS_TLS_CA_FILE", pki.path("other-ca.crt")),
            ],
            "unknown CA",
        ),
        (
            vec![("HUB_REDIS_URL", url(&wrong_name)), ca()],
            "wrong host name",
        ),
        (vec![("HUB_REDIS_URL", url(&expired)), ca()], "expired"),
    ];
    for (vars, word) in cases {
        let err = start(&vars, "tls-fail-m3").await.unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, BrokerError::Link(LinkError::TlsRefused { .. })),
            "{word}: {text}"
        );
        assert!(text.contains(word), "{word}: {text}");
        assert!(!text.contains(PASSWORD), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    // The explicit insecure switch (either spelling) connects to the unknown CA, with a loud warning.
    for vars in [
        vec![
            ("HUB_REDIS_URL", url(&good)),
            ("HUB_REDIS_TLS_INSECURE", "true".to_owned()),
        ],
        vec![("HUB_REDIS_URL", format!("{}/#insecure", url(&good)))],
    ] {
        let (_, warnings) = config(&vars).unwrap();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("TLS CERTIFICATE CHECKS ARE OFF")),
            "{warnings:?}"
        );
        let broker = start(&vars, "insecure-m4").await.unwrap();
        assert!(broker.status().is_connected(), "{:?}", broker.status());
        broker.shutdown().await.unwrap();
    }
}

#[test]
fn bad_tls_files_give_one_clear_error_each_in_one_run() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.der");
    std::fs::write(&not_pem, b"\x30\x82\x01\x0a not a pem file").unwrap();
    let not_pem = not_pem.to_str().unwrap().to_owned();
    let missing = dir.path().join("missing.pem").to_str().unwrap().to_owned();
    let rediss = "rediss://:pw-secret@localhost:6380".to_owned();

    // A CA that is not PEM and a certificate without its key: both named, in one run.
    let errors = config(&[
        ("HUB_REDIS_URL", rediss.clone()),
        ("HUB_REDIS_TLS_CA_FILE", not_pem.clone()),
        ("HUB_REDIS_TLS_CERT_FILE", pki.path("client.crt")),
    ])
    .unwrap_err();
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{text:#?}");
    assert!(
        text[0].contains("HUB_REDIS_TLS_CA_FILE")
            && text[0].contains(&not_pem)
            && text[0].contains("PEM"),
        "{}",
        text[0]
    );
    assert!(
        text[1].contains("HUB_REDIS_TLS_CERT_FILE") && text[1].contains("HUB_REDIS_TLS_KEY_FILE"),
        "{}",
        text[1]
    );

    for (vars, words) in [
        (
            vec![
                ("HUB_REDIS_URL", rediss.clone()),
                ("HUB_REDIS_TLS_CA_FILE", missing.clone()),
            ],
            vec!["HUB_REDIS_TLS_CA_FILE", "cannot read"],
        ),
        (
            vec![
                ("HUB_REDIS_URL", rediss.clone()),
                ("HUB_REDIS_TLS_CERT_FILE", pki.path("client.crt")),
                ("HUB_REDIS_TLS_KEY_FILE", pki.path("client.crt")),
            ],
            vec!["HUB_REDIS_TLS_KEY_FILE", "PEM private key"],
        ),
        (
            vec![
                ("HUB_REDIS_URL", rediss.clone()),
                ("HUB_REDIS_TLS_CERT_FILE", pki.path("client.crt")),
                ("HUB_REDIS_TLS_KEY_FILE", pki.path("stranger.key")),
            ],
            vec!["does not fit the certificate"],
        ),
        (
            vec![
                ("HUB_REDIS_URL", "redis://localhost:6379".to_owned()),
                ("HUB_REDIS_TLS_CA_FILE", pki.path("ca.crt")),
            ],
            vec!["rediss://", "HUB_REDIS_TLS_CA_FILE"],
        ),
        (
            vec![(
                "HUB_REDIS_URL",
                "redis://localhost:6379/#insecure".to_owned(),
            )],
            vec!["#insecure only applies to rediss://"],
        ),
        (
            vec![("HUB_REDIS_URL", format!("{rediss}/#nope"))],
            vec!["#nope", "#insecure"],
        ),
        (
            vec![
                ("HUB_REDIS_URL", rediss.clone()),
                ("HUB_REDIS_TLS_INSECURE", "true".to_owned()),
                ("HUB_REDIS_TLS_CA_FILE", pki.path("ca.crt")),
            ],
            vec!["both set"],
        ),
        (
            vec![
                ("HUB_REDIS_URL", rediss.clone()),
                ("HUB_REDIS_TLS_INSECURE", "maybe".to_owned()),
            ],
            vec!["HUB_REDIS_TLS_INSECURE", "true or false"],
        ),
    ] {
        let errors = config(&vars).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 1, "{vars:?}: {text:#?}");
        for word in words {
            assert!(text[0].contains(word), "{word}: {}", text[0]);
        }
        assert!(!text[0].contains("pw-secret"), "{}", text[0]);
    }
}

/// The runtime itself: a bad TLS file stops `up` before any app starts, and a certificate the
/// machine cannot trust is a start-up error (exit status 1) naming the cause, never a silent retry.
#[test]
fn the_runtime_refuses_to_start_on_tls_problems() {
    let pki = Pki::new();
    let server = pki.server("server", false);
    let url = format!("rediss://:{PASSWORD}@localhost:{}", server.port());
    let app = |dir: &str| {
        json!({"apps": [{"name": "marker", "script": "sh", "interpreter": "none",
            "args": ["-c", "touch \"$D/started\"; exec sleep 1000"], "env": {"D": dir}}]})
    };
    let not_pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_pem.path(), "hello").unwrap();
    let not_pem = not_pem.path().to_str().unwrap().to_owned();
    let mut rt = Runtime::start(
        app("@DIR@"),
        &[
            ("MACHINE_ID", "tls-up-m5"),
            ("HUB_REDIS_URL", &url),
            ("HUB_REDIS_TLS_CA_FILE", &not_pem),
            ("HUB_REDIS_TLS_KEY_FILE", &pki.path("client.key")),
        ],
    );
    let status = rt.wait_exit();
    let output = rt.output();
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("HUB_REDIS_TLS_CA_FILE") && output.contains("is not a PEM"),
        "{output}"
    );
    assert!(
        output.contains("HUB_REDIS_TLS_KEY_FILE is set but HUB_REDIS_TLS_CERT_FILE is not"),
        "{output}"
    );
    assert!(
        !Path::new(&rt.path("started")).exists(),
        "an app started: {output}"
    );
    assert!(!output.contains(PASSWORD), "{output}");

    // No CA for a private-CA broker: the runtime stops with the cause instead of retrying forever.
    let mut rt = Runtime::start(
        app("@DIR@"),
        &[("MACHINE_ID", "tls-up-m5"), ("HUB_REDIS_URL", &url)],
    );
    let status = rt.wait_exit();
    let output = rt.output();
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("unknown CA") && output.contains("HUB_REDIS_TLS_CA_FILE"),
        "{output}"
    );
    assert!(!output.contains(PASSWORD), "{output}");
}

/// The bundle's workers (Node) read the same `rediss://` URL; Node trusts a private CA only through
/// `NODE_EXTRA_CA_CERTS`, which the runtime sets from `HUB_REDIS_TLS_CA_FILE`: every worker of
/// full-local registers its heartbeat over TLS, and so does the machine's own status.
#[test]
fn bundle_workers_reach_a_private_ca_broker_through_node_extra_ca_certs() {
    let pki = Pki::new();
    let server = pki.server("server", false);
    let machine = "tls-workers-m6";
    let url = format!("rediss://:{PASSWORD}@localhost:{}", server.port());
    let ca = pki.path("ca.crt");
    // Where NODE_EXTRA_CA_CERTS already names a bundle (as on some hosts), the runtime writes one of
    // both to the temporary folder: this test's, removed with it.
    let tmp = tempfile::tempdir().unwrap();
    let rt = Runtime::start_profile(
        "full-local",
        &[
            ("TMPDIR", tmp.path().to_str().unwrap()),
            ("MACHINE_FAKE_GPUS", "2"),
            ("MACHINE_ID", machine),
            ("HUB_REDIS_URL", &url),
            ("HUB_REDIS_TLS_CA_FILE", &ca),
            ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "1"),
        ],
    );
    let client = redis::Client::build_with_tls(
        url.as_str(),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&ca).unwrap()),
        },
    )
    .unwrap();
    let mut conn = client.get_connection().unwrap();
    // full-local: four simulation-websocket workers.
    for i in 0..4 {
        let key = format!("worker:{machine}-worker-simulation-websocket-{i}:heartbeat");
        wait_for(
            &format!("{key} over TLS"),
            || rt.output(),
            || {
                let n: i64 = redis::cmd("EXISTS").arg(&key).query(&mut conn).ok()?;
                (n == 1).then_some(())
            },
        );
    }
    // Logged before the apps start; the workers' keys can be there before the line reaches the test.
    let output = wait_line(&rt, "connected to redis at rediss://:***@localhost");
    assert!(!output.contains(PASSWORD), "{output}");
}
