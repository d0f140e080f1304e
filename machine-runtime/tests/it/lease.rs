//! One live machine per id: two real `machine-runtime up` processes with one `MACHINE_ID` against one real
//! redis-server. The second is refused naming the first; the lease is renewed while the first runs, gone
//! once it stops, and a new machine then takes it. A Redis that is down at start does not keep a machine's
//! apps from running; the lease is taken when Redis answers.

use std::time::Duration;

use serde_json::json;

use crate::redis_server::RedisServer;
use crate::up_support::{Runtime, wait_for, wait_line};

/// A tiny ecosystem: one app that sleeps (no GPU, no worker bundle).
fn ecosystem() -> serde_json::Value {
    json!({"apps": [{"name": "sleeper", "script": "sleep", "args": ["600"]}]})
}

fn machine(redis_url: &str, id: &str, extra: &[(&str, &str)]) -> Runtime {
    let mut env = vec![
        ("MACHINE_ID", id),
        ("HUB_REDIS_URL", redis_url),
        ("MACHINE_STATUS_UPDATE_INTERVAL_SECONDS", "1"),
        ("BROKER_PREFLIGHT", "off"),
        ("MACHINE_FAKE_GPUS", "0"),
    ];
    env.extend_from_slice(extra);
    Runtime::start(ecosystem(), &env)
}

fn conn(redis: &RedisServer) -> redis::Connection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

fn get(redis: &RedisServer, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(&mut conn(redis)).unwrap()
}

/// Waits until the lease `key` is held by the runtime `rt` (its pid in the holder) and returns the value.
fn held_by(redis: &RedisServer, key: &str, rt: &Runtime) -> String {
    let pid = format!(" pid={} ", rt.child.id());
    wait_for(
        &format!("{key} held by pid {}", rt.child.id()),
        || format!("{key} = {:?}\n{}", get(redis, key), rt.output()),
        || get(redis, key).filter(|v| v.contains(&pid)),
    )
}

#[test]
fn a_second_machine_with_the_same_id_is_refused_naming_the_first() {
    let redis = RedisServer::start();
    let url = redis.url();
    let key = "machine:lease:lease-twin";
    let mut first = machine(&url, "lease-twin", &[]);
    first.wait_state("sleeper", "running");
    let holder = held_by(&redis, key, &first);
    assert!(holder.starts_with("host="), "{holder}");

    let mut second = machine(&url, "lease-twin", &[]);
    let status = second.wait_exit();
    let out = second.output();
    assert!(!status.success(), "the second machine started:\n{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "one clear error:\n{out}");
    assert!(
        errors[0].contains(
            "machine id \"lease-twin\" is already in use by another machine: machine:lease:lease-twin is held by"
        ) && errors[0].contains(&holder)
            && errors[0].contains("its lease expires in "),
        "{out}"
    );
    assert!(
        !out.contains(" started (pid"),
        "the second machine started an app:\n{out}"
    );

    // Renewed with the periodic status: after more than one TTL (3 s at a 1 s interval) it is still the
    // first machine's, with a TTL no longer than three intervals.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(get(&redis, key).as_deref(), Some(holder.as_str()));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query(&mut conn(&redis))
        .unwrap();
    assert!(0 < pttl && pttl <= 3000, "PTTL {pttl}");

    // Released on shutdown, after the apps stopped.
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit().success(), "{}", first.output());
    assert!(
        first
            .output()
            .contains("released the lease on machine:lease:lease-twin"),
        "{}",
        first.output()
    );
    assert_eq!(get(&redis, key), None, "the lease outlived its machine");

    // And a new machine with the id starts and takes it.
    let mut third = machine(&url, "lease-twin", &[]);
    third.wait_state("sleeper", "running");
    held_by(&redis, key, &third);
    third.signal(libc::SIGTERM);
    assert!(third.wait_exit().success(), "{}", third.output());
    assert_eq!(get(&redis, key), None);
}

#[test]
fn a_lease_left_by_an_earlier_run_on_this_host_is_taken_over() {
    let redis = RedisServer::start();
    let host = machine_runtime::identity::hostname();
    // A runtime that died without releasing (its process is gone), on this host.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let stale = format!("host={host} pid={dead_pid} started=2026-01-01T00:00:00.000Z");
    let key = "machine:lease:lease-restart";
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(&stale)
        .arg("PX")
        .arg(60_000)
        .query(&mut conn(&redis))
        .unwrap();
    let mut rt = machine(&redis.url(), "lease-restart", &[]);
    rt.wait_state("sleeper", "running");
    held_by(&redis, key, &rt);
    // Logged before the apps start; /status and the key can show the result before the line
    // reaches the test's reader thread.
    wait_line(
        &rt,
        "took over the lease on machine:lease:lease-restart from an earlier run",
    );
    rt.signal(libc::SIGTERM);
    assert!(rt.wait_exit().success(), "{}", rt.output());
}

#[test]
fn redis_down_at_start_does_not_stop_the_apps_and_the_lease_follows() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    redis.kill();
    let mut rt = machine(&url, "lease-late", &[]);
    // The apps run without Redis.
    rt.wait_state("sleeper", "running");
    // Logged before the apps start; /status can say running before the line reaches the test.
    wait_line(
        &rt,
        "starting without the lease on machine:lease:lease-late",
    );
    redis.restart();
    held_by(&redis, "machine:lease:lease-late", &rt);
    rt.signal(libc::SIGTERM);
    assert!(rt.wait_exit().success(), "{}", rt.output());
    assert_eq!(get(&redis, "machine:lease:lease-late"), None);
}

#[test]
fn a_scaled_compose_service_appends_its_host_name() {
    let redis = RedisServer::start();
    let host = machine_runtime::identity::hostname();
    let mut rt = machine(
        &redis.url(),
        "lease-scaled",
        &[("MACHINE_ID_APPEND_HOSTNAME", "true")],
    );
    rt.wait_state("sleeper", "running");
    held_by(&redis, &format!("machine:lease:lease-scaled-{host}"), &rt);
    rt.signal(libc::SIGTERM);
    assert!(rt.wait_exit().success(), "{}", rt.output());
}

#[test]
fn a_machine_that_finds_another_holder_while_running_stops() {
    let redis = RedisServer::start();
    let key = "machine:lease:lease-stolen";
    let mut rt = machine(&redis.url(), "lease-stolen", &[]);
    rt.wait_state("sleeper", "running");
    held_by(&redis, key, &rt);
    // Another machine took the id (e.g. it started while this one could not reach Redis).
    let other = "host=another-box pid=7 started=2026-01-01T00:00:00.000Z";
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(other)
        .arg("PX")
        .arg(60_000)
        .query(&mut conn(&redis))
        .unwrap();
    rt.wait_exit();
    let out = rt.output();
    assert!(
        out.contains(&format!("is held by {other}")) && out.contains("stopping this machine"),
        "{out}"
    );
    // Its own apps were stopped, and the other machine's lease is left alone.
    assert!(
        out.contains("the lease on machine:lease:lease-stolen was no longer ours"),
        "{out}"
    );
    assert_eq!(get(&redis, key).as_deref(), Some(other));
}
