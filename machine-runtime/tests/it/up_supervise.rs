//! `machine-runtime up` supervising real processes: GPU pinning, readiness gating, restarts,
//! crash loops, essential apps, signals and stop order, orphan reaping, startup refusals.

use serde_json::{Value, json};

use crate::up_support::{
    Runtime, free_port, gone, parent_pid, pids_with, process_state, read_when_present,
    runtime_inside, signal_inside, token, wait_for, wait_line,
};

/// A shell app; `D` in its environment is the test's directory, and `put FILE VALUE` writes
/// `$D/FILE` atomically (temp file, then rename) so the test never reads half a file.
fn sh(name: &str, script: &str) -> Value {
    let script =
        format!("put() {{ echo \"$2\" > \"$D/$1.tmp\" && mv \"$D/$1.tmp\" \"$D/$1\"; }}\n{script}");
    json!({"name": name, "script": "sh", "args": ["-c", script], "interpreter": "none", "env": {"D": "@DIR@"}})
}

fn with(mut app: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        if k == "env" {
            for (ek, ev) in v.as_object().unwrap() {
                app["env"][ek] = ev.clone();
            }
        } else {
            app[k] = v.clone();
        }
    }
    app
}

/// `KEY=value` lines of an `env` dump, as pairs.
fn env_var(dump: &str, key: &str) -> Option<String> {
    dump.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
}

/// Writes the child's environment to `$D/<name>.env` atomically, then sleeps.
const DUMP_ENV: &str =
    "env > \"$D/$APP.tmp\" && mv \"$D/$APP.tmp\" \"$D/$APP.env\"; exec sleep 1000";

#[test]
fn pins_gpu_apps_by_uuid_and_gives_others_no_gpu() {
    let mut rt = Runtime::start(
        json!({"apps": [
            with(sh("comfyui-gpu1", DUMP_ENV), json!({"env": {"APP": "comfyui-gpu1"}, "machine_role": "service", "machine_gpu": 1})),
            with(sh("comfyui-worker-0", DUMP_ENV), json!({
                "env": {"APP": "comfyui-worker-0", "WORKER_GPU_ID": "0", "MACHINE_ID": "built-at-build-time",
                        "WORKER_ID": "built-at-build-time-worker-comfyui-0", "CUDA_VISIBLE_DEVICES": "0"},
                "machine_role": "worker", "machine_connector": "comfyui", "machine_index": 0})),
            with(sh("openai-worker-0", DUMP_ENV), json!({"env": {"APP": "openai-worker-0"}, "machine_role": "worker"})),
        ]}),
        &[
            ("MACHINE_FAKE_GPUS", "2"),
            ("CUDA_VISIBLE_DEVICES", "0,1"),
            ("MACHINE_ID", "m-test"),
        ],
    );
    let service = read_when_present(&rt, "comfyui-gpu1.env");
    let worker = read_when_present(&rt, "comfyui-worker-0.env");
    let api = read_when_present(&rt, "openai-worker-0.env");

    let uuid_of = |name: &str| {
        rt.app_status(name)["gpu_uuid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (uuid1, uuid0) = (uuid_of("comfyui-gpu1"), uuid_of("comfyui-worker-0"));
    assert!(
        uuid0.starts_with("GPU-") && uuid1.starts_with("GPU-") && uuid0 != uuid1,
        "{uuid0} {uuid1}"
    );
    assert_eq!(env_var(&service, "CUDA_VISIBLE_DEVICES"), Some(uuid1));
    assert_eq!(env_var(&service, "WORKER_GPU_ID").as_deref(), Some("1"));
    assert_eq!(env_var(&worker, "CUDA_VISIBLE_DEVICES"), Some(uuid0));
    assert_eq!(env_var(&api, "CUDA_VISIBLE_DEVICES").as_deref(), Some(""));
    for dump in [&service, &worker, &api] {
        assert_eq!(
            env_var(dump, "CUDA_DEVICE_ORDER").as_deref(),
            Some("PCI_BUS_ID")
        );
    }
    // The MACHINE_ID the runtime was started with wins over the one baked into the ecosystem.
    assert_eq!(env_var(&worker, "MACHINE_ID").as_deref(), Some("m-test"));
    assert_eq!(
        env_var(&worker, "WORKER_ID").as_deref(),
        Some("m-test-worker-comfyui-0")
    );
    assert_eq!(rt.app_status("comfyui-worker-0")["gpu"], 0);

    rt.signal(libc::SIGTERM);
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
}

#[test]
fn starts_a_worker_only_after_its_service_answers() {
    let port = free_port();
    // The service opens its port only after the external worker has started, so the order
    // external worker < service answering < gated worker is forced by causality, not timing.
    let service = format!(
        "import os, time, http.server\n\
         d = os.environ['D']\n\
         while not os.path.exists(d + '/external.started'): time.sleep(0.05)\n\
         time.sleep(0.5)\n\
         open(d + '/service.opening', 'w').write(str(time.time_ns()))\n\
         http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()\n"
    );
    let stamp = |file: &str| {
        format!(
            "date +%s%N > \"$D/{file}.tmp\" && mv \"$D/{file}.tmp\" \"$D/{file}\"; exec sleep 1000"
        )
    };
    let mut rt = Runtime::start(
        json!({"apps": [
            {"name": "simulation-gpu0", "script": "python3", "args": ["-c", service], "interpreter": "none",
             "cwd": "@DIR@", "env": {"D": "@DIR@"}, "machine_role": "service", "machine_port": port,
             "machine_readiness": {"kind": "http", "url": format!("http://127.0.0.1:{port}/"), "interval_ms": 100, "timeout_ms": 1000}},
            with(sh("simulation-worker-0", &stamp("gated.started")), json!({"machine_role": "worker", "machine_wait_for": ["simulation-gpu0"]})),
            with(sh("openai-worker-0", &stamp("external.started")), json!({"machine_role": "worker"})),
        ]}),
        &[],
    );
    let external: u128 = read_when_present(&rt, "external.started")
        .trim()
        .parse()
        .unwrap();
    let gated: u128 = read_when_present(&rt, "gated.started")
        .trim()
        .parse()
        .unwrap();
    let opening: u128 = read_when_present(&rt, "service.opening")
        .trim()
        .parse()
        .unwrap();
    assert!(
        external < opening,
        "the external worker must not wait for the service"
    );
    assert!(
        opening < gated,
        "the gated worker started before its service answered\n{}",
        rt.output()
    );
    // The worker may write its stamp before the runtime's "started" line reaches the test.
    wait_line(&rt, "simulation-worker-0 started (pid");
    let out = rt.output();
    let waits = out
        .find("simulation-worker-0 waits for simulation-gpu0 to be ready")
        .expect(&out);
    let ready = out.find("simulation-gpu0 is ready after").expect(&out);
    let started = out.find("simulation-worker-0 started (pid").expect(&out);
    assert!(waits < ready && ready < started, "{out}");
    rt.signal(libc::SIGTERM);
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
}

#[test]
fn restarts_with_exponential_backoff_then_errors_after_max_restarts() {
    let mut rt = Runtime::start(
        json!({"apps": [
            with(sh("flaky", "date +%s%N >> \"$D/starts\"; exit 1"),
                 json!({"exp_backoff_restart_delay": 200, "max_restarts": 4, "min_uptime": "10s"})),
            sh("steady", "exec sleep 1000"),
        ]}),
        &[],
    );
    let status = rt.wait_state("flaky", "errored");
    wait_line(
        &rt,
        "errored after 4 consecutive exits before min_uptime 10.0s",
    );
    let starts: Vec<u128> = std::fs::read_to_string(rt.path("starts"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    // errored after 4 consecutive unstable exits: 4 starts, 3 restarts, never a fifth start.
    assert_eq!(starts.len(), 4, "{}", rt.output());
    assert_eq!(
        (
            status["restarts"].as_u64(),
            status["unstable_restarts"].as_u64()
        ),
        (Some(3), Some(4))
    );
    assert_eq!(status["last_exit"]["code"], 1);
    // Each restart waited at least its backoff delay: 200 ms, ×1.5 each time.
    let gaps_ms: Vec<u128> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]) / 1_000_000)
        .collect();
    for (gap, delay) in gaps_ms.iter().zip([200, 300, 450]) {
        assert!(
            *gap >= delay,
            "restart came {gap} ms after the previous start, before the {delay} ms delay"
        );
    }
    let out = rt.output();
    for line in [
        "flaky exited with status 1 after",
        "restarting in 200ms (attempt 2 of 4)",
        "restarting in 300ms (attempt 3 of 4)",
        "restarting in 450ms (attempt 4 of 4)",
        "errored after 4 consecutive exits before min_uptime 10.0s; not restarting",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    // One errored app that is not essential leaves the rest running.
    assert_eq!(rt.app_status("steady")["state"], "running");
    rt.signal(libc::SIGTERM);
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
    let n = std::fs::read_to_string(rt.path("starts"))
        .unwrap()
        .lines()
        .count();
    assert_eq!(n, 4, "an errored app was started again");
}

#[test]
fn exits_non_zero_naming_an_essential_app_that_ends() {
    let mut rt = Runtime::start(
        json!({"apps": [
            with(sh("other", "put other.pid $$; exec sleep 1000"), json!({"machine_role": "service"})),
            with(sh("comfyui-gpu0", "while ! test -f \"$D/other.pid\"; do sleep 0.05; done; exit 7"),
                 json!({"machine_essential": true, "max_restarts": 2, "min_uptime": "60s", "machine_role": "service"})),
        ]}),
        &[],
    );
    let status = rt.wait_exit();
    let out = rt.output();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("error: essential app \"comfyui-gpu0\" errored after 2 consecutive exits before min_uptime 1m 0s (last exit: status 7); stopped everything"),
        "{out}"
    );
    let other: u32 = std::fs::read_to_string(rt.path("other.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(gone(other, "sleep"), "the other app outlived the runtime");
}

#[test]
fn sigterm_stops_workers_then_services_and_leaves_nothing_running() {
    // Each app leaves grandchildren; one grandchild ignores SIGTERM and needs the SIGKILL.
    let worker = "sh -c 'trap \"\" TERM; echo $$ > \"$D/stubborn.tmp\"; mv \"$D/stubborn.tmp\" \"$D/stubborn.pid\"; while :; do sleep 0.1; done' &\n\
                  sleep 1000 & put worker-child.pid $!\n\
                  put worker.pid $$\nwait";
    let service = "sleep 1000 & put service-child.pid $!\nput service.pid $$\nwait";
    let mut rt = Runtime::start(
        json!({"apps": [
            with(sh("svc", service), json!({"machine_role": "service"})),
            with(sh("wrk", worker), json!({"machine_role": "worker", "kill_timeout": 300})),
        ]}),
        &[],
    );
    let pids: Vec<u32> = [
        "stubborn.pid",
        "worker-child.pid",
        "worker.pid",
        "service-child.pid",
        "service.pid",
    ]
    .iter()
    .map(|f| read_when_present(&rt, f).trim().parse().unwrap())
    .collect();
    rt.wait_state("wrk", "running");
    rt.signal(libc::SIGTERM);
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
    for pid in &pids {
        assert!(
            gone(*pid, "sh") && gone(*pid, "sleep"),
            "pid {pid} is still there: {:?}",
            process_state(*pid)
        );
    }
    let out = rt.output();
    // The runtime's SIGTERM starts PM2's stop: SIGINT (PM2's KILL_SIGNAL) to each app.
    let worker_stop = out
        .find("stopping wrk: SIGINT to process group")
        .expect(&out);
    let service_stop = out
        .find("stopping svc: SIGINT to process group")
        .expect(&out);
    assert!(
        worker_stop < service_stop,
        "workers must stop before services\n{out}"
    );
    assert!(
        out.contains("wrk did not stop within kill_timeout 300ms; sending SIGKILL"),
        "{out}"
    );
}

#[test]
fn forwards_sigint_as_received() {
    let mut rt = Runtime::start(
        json!({"apps": [sh("svc", "trap 'echo INT > \"$D/got\"; exit 0' INT\ntrap 'echo TERM > \"$D/got\"; exit 0' TERM\nput up up\nwhile :; do sleep 0.05; done")]}),
        &[],
    );
    read_when_present(&rt, "up");
    rt.signal(libc::SIGINT);
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
    assert_eq!(
        std::fs::read_to_string(rt.path("got")).unwrap().trim(),
        "INT"
    );
}

/// An app whose background child outlives its parent shell: the child is re-parented to the
/// runtime, which must reap it when it exits.
/// The token reaches the orphan through `$T`, so the parent's own command line does not match it.
fn orphan_ecosystem(token: &str) -> Value {
    json!({"apps": [with(
        sh("parent", "( sh -c 'sleep 1; exit 0' \"$T\" & ) ; put spawned yes; exec sleep 1000"),
        json!({"env": {"T": token}}),
    )]})
}

fn check_orphan_reaped(rt: &Runtime, token: &str, expected_parent: Option<u32>) {
    read_when_present(rt, "spawned");
    let orphan = wait_for(
        "the orphan to appear",
        || rt.output(),
        || pids_with(token).first().copied(),
    );
    if let Some(parent) = expected_parent {
        let ppid = wait_for(
            "the orphan's re-parenting",
            || rt.output(),
            || parent_pid(orphan).filter(|p| *p == parent || process_state(orphan).is_none()),
        );
        assert!(
            ppid == parent || process_state(orphan).is_none(),
            "orphan parent {ppid}, expected {parent}"
        );
    }
    // Without reaping it would stay a zombie for as long as the runtime lives.
    wait_for(
        "the orphan to be reaped",
        || format!("state {:?}\n{}", process_state(orphan), rt.output()),
        || process_state(orphan).is_none().then_some(()),
    );
}

#[test]
fn reaps_orphans_as_a_subreaper() {
    let token = token("orphan-sub-");
    let mut rt = Runtime::start(orphan_ecosystem(&token), &[]);
    check_orphan_reaped(&rt, &token, Some(rt.child.id()));
    wait_for(
        "the orphan count in /status",
        || rt.output(),
        || {
            let (_, status, _) = rt.get("/status");
            (status["orphans_reaped"].as_u64() >= Some(1)).then_some(())
        },
    );
    rt.signal(libc::SIGTERM);
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
}

#[test]
fn reaps_orphans_as_pid_1_in_a_pid_namespace() {
    if !crate::up_support::pid_namespace_available("reaps_orphans_as_pid_1_in_a_pid_namespace") {
        return;
    }
    let token = token("orphan-ns-");
    let mut rt = Runtime::start_with(orphan_ecosystem(&token), &[], &crate::up_support::AS_PID_1);
    check_orphan_reaped(&rt, &token, None);
    // The runtime really is PID 1 there: it never needed the subreaper flag.
    assert!(
        !rt.output().contains("cannot become a child subreaper"),
        "{}",
        rt.output()
    );
    // unshare forwards no signal; stop the runtime inside through its own pid.
    let status = signal_inside(&mut rt, libc::SIGTERM);
    assert_eq!(status.code(), Some(0), "{}", rt.output());
    assert!(rt.output().contains("stopped in"), "{}", rt.output());
}

/// An app that writes its own parent-death signal (`prctl(PR_GET_PDEATHSIG)`) to `$D/pdeath`, then
/// sleeps.
fn pdeath_reporter() -> Value {
    let code = "import ctypes, os, time\n\
                s = ctypes.c_int(-1)\n\
                ctypes.CDLL(None).prctl(2, ctypes.byref(s), 0, 0, 0)\n\
                d = os.environ['D']\n\
                open(d + '/pdeath.tmp', 'w').write(str(s.value))\n\
                os.rename(d + '/pdeath.tmp', d + '/pdeath')\n\
                time.sleep(1000)\n";
    json!({"name": "reporter", "script": "python3", "args": ["-c", code], "interpreter": "none",
           "env": {"D": "@DIR@"}})
}

/// On a host an app gets SIGKILL when the runtime dies (PR_SET_PDEATHSIG); as PID 1 it gets no
/// such signal, because the kernel ends the whole namespace at once, while the parent-death signal
/// follows the runtime thread that started the app and would end the apps one by one as the killed
/// runtime's threads end (see command::hygiene_in_child).
#[test]
fn apps_get_a_parent_death_signal_on_a_host_and_none_as_pid_1() {
    let rt = Runtime::start(json!({"apps": [pdeath_reporter()]}), &[]);
    assert_eq!(
        read_when_present(&rt, "pdeath").trim(),
        libc::SIGKILL.to_string(),
        "{}",
        rt.output()
    );
    drop(rt);
    if !crate::up_support::pid_namespace_available(
        "apps_get_a_parent_death_signal_on_a_host_and_none_as_pid_1",
    ) {
        return;
    }
    let mut rt = Runtime::start_with(
        json!({"apps": [pdeath_reporter()]}),
        &[],
        &crate::up_support::AS_PID_1,
    );
    assert_eq!(
        read_when_present(&rt, "pdeath").trim(),
        "0",
        "{}",
        rt.output()
    );
    // The namespace ends with the runtime inside; unshare collects it and exits.
    signal_inside(&mut rt, libc::SIGKILL);
}

/// Two runtimes that are each PID 1 of a namespace of their own (two containers on one cgroup
/// hierarchy) have the same pid: their cgroup folders must not be one. Y stops (removing its own
/// cgroups) and Z starts (sweeping what gone runtimes left): X's app lives on, in X's cgroup.
#[test]
fn runtimes_that_are_pid_1_of_their_own_namespaces_keep_to_their_own_cgroups() {
    if !crate::up_support::pid_namespace_available(
        "runtimes_that_are_pid_1_of_their_own_namespaces_keep_to_their_own_cgroups",
    ) {
        return;
    }
    let app = || json!({"apps": [{"name": "app", "script": "sleep", "args": ["600"]}]});
    let start = || {
        let rt = Runtime::start_with(app(), &[], &crate::up_support::AS_PID_1);
        rt.wait_state("app", "running");
        let inner = runtime_inside(&rt);
        let apps = wait_for(
            "the app's process",
            || rt.output(),
            || {
                let apps = machine_runtime::procstat::children(inner);
                (!apps.is_empty()).then_some(apps)
            },
        );
        (rt, apps[0])
    };
    let (mut x, x_app) = start();
    let cgroup = std::fs::read_to_string(format!("/proc/{x_app}/cgroup")).unwrap();
    assert!(
        cgroup.contains("/machine-runtime/1@"),
        "X's app is not in a cgroup of the runtime: {cgroup}\n{}",
        x.output()
    );
    let (mut y, _) = start();
    // A clean stop of Y.
    let status = signal_inside(&mut y, libc::SIGTERM);
    assert!(status.success(), "{}", y.output());
    let (mut z, _) = start();
    assert_eq!(
        process_state(x_app).map(|s| s != 'Z'),
        Some(true),
        "{}",
        x.output()
    );
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{x_app}/cgroup")).unwrap(),
        cgroup,
        "{}",
        x.output()
    );
    let (_, x_status, _) = x.get("/status");
    assert_eq!(x_status["apps"][0]["restarts"], 0, "{x_status}");
    signal_inside(&mut z, libc::SIGKILL);
    signal_inside(&mut x, libc::SIGKILL);
}

#[test]
fn refuses_to_start_without_the_planned_gpus_or_secrets() {
    let mut rt = Runtime::start(
        json!({"apps": [
            with(sh("comfyui-gpu1", "touch \"$D/started\"; exec sleep 1000"), json!({"machine_gpu": 1})),
            with(sh("openai-worker-0", "touch \"$D/started\"; exec sleep 1000"),
                 json!({"machine_required_env": ["OPENAI_API_KEY", "HUB_REDIS_URL"]})),
        ]}),
        &[
            ("MACHINE_FAKE_GPUS", "1"),
            ("HUB_REDIS_URL", "redis://localhost:6379"),
        ],
    );
    let status = rt.wait_exit();
    let out = rt.output();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains(
            "app \"comfyui-gpu1\" is pinned to GPU 1, but this machine has 1 GPU (index 0)"
        ),
        "{out}"
    );
    assert!(out.contains("app \"openai-worker-0\" needs the environment variable OPENAI_API_KEY, which is not set"), "{out}");
    assert!(!out.contains("variable HUB_REDIS_URL"), "{out}");
    assert!(
        !rt.path("started").exists(),
        "an app started despite the refusal"
    );
}

/// A start refused by its checks still ends what a runtime killed outright left in its cgroups (the
/// sweep runs while the files are read), says so, and leaves no cgroup folder of its own behind.
#[test]
fn a_refused_start_sweeps_what_a_killed_runtime_left_and_leaves_no_cgroup() {
    let tag = token("refcg");
    let mut first = Runtime::start(
        json!({"apps": [sh("family", &format!("setsid sh -c 'sleep 600; : {tag}' &\nexec sleep 600"))]}),
        &[],
    );
    let out = wait_line(&first, "family started (pid");
    if !crate::up_support::has_cgroups(&out) {
        return;
    }
    // The folder of this runtime's cgroups (under the cgroup2 mount, unified or not).
    let top = [
        "/sys/fs/cgroup/machine-runtime",
        "/sys/fs/cgroup/unified/machine-runtime",
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .find(|top| {
        std::fs::read_dir(top).is_ok_and(|mut entries| {
            entries.any(|e| {
                e.is_ok_and(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{}@", first.child.id()))
                })
            })
        })
    })
    .unwrap_or_else(|| panic!("no cgroup folder of the first runtime: {out}"));
    wait_for(
        "the setsid child",
        || first.output(),
        || (!pids_with(&tag).is_empty()).then_some(()),
    );
    first.signal(libc::SIGKILL);
    first.wait_exit();

    // Refused at once after the file is read (its workspace is a file), while the cgroups of its
    // many apps are still being made.
    let workspace = first.path("a-file");
    std::fs::write(&workspace, "").unwrap();
    let apps: Vec<Value> = (0..200)
        .map(|i| json!({"name": format!("plain-{i}"), "script": "sleep", "args": ["600"]}))
        .collect();
    let mut refused = Runtime::start(
        json!({ "apps": apps }),
        &[("WORKSPACE_DIR", workspace.to_str().unwrap())],
    );
    let status = refused.wait_exit();
    let out = refused.output();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("WORKSPACE_DIR"), "{out}");
    assert!(
        pids_with(&tag).is_empty(),
        "the killed runtime's orphan is still there:\n{out}"
    );
    // Any start on this host sweeps, so a test running beside this one may have swept first; then
    // the folder is gone all the same (`cgroup::tests::a_preparation_dropped_unused_sweeps_and_removes_what_it_made`
    // shows a refused start's own sweep without that race).
    let first_folder = top.join(format!("{}@", first.child.id()));
    let swept = format!("stopped 2 processes left in {}", first_folder.display());
    if !out.contains(&swept) {
        eprintln!("another start swept the killed runtime's folder first:\n{out}");
    }
    let named = |prefix: &str| -> Vec<String> {
        std::fs::read_dir(&top)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with(prefix))
                    .collect()
            })
            .unwrap_or_default()
    };
    let first_left = named(&format!("{}@", first.child.id()));
    assert!(
        first_left.is_empty(),
        "{first_left:?} was not swept:\n{out}"
    );
    let left = named(&format!("{}@", refused.child.id()));
    assert!(
        left.is_empty(),
        "the refused runtime left {left:?} in {}",
        top.display()
    );
}

/// A runtime started under another name (through a link, as a copy) is live to the next start on
/// the host: its app and its cgroups are left alone, even by a start that its checks refuse.
#[test]
fn a_runtime_started_under_another_name_is_not_swept_by_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("mr-renamed");
    let wrapper = format!("ln -sf \"$0\" '{0}' && exec '{0}' \"$@\"", link.display());
    let mut first = Runtime::start_with(
        json!({"apps": [{"name": "keeper", "script": "sleep", "args": ["600"]}]}),
        &[],
        &["sh", "-c", &wrapper],
    );
    let out = wait_line(&first, "keeper started (pid");
    if !crate::up_support::has_cgroups(&out) {
        return;
    }
    let keeper = first.app_status("keeper")["pid"].as_u64().unwrap() as u32;
    let workspace = first.path("a-file");
    std::fs::write(&workspace, "").unwrap();
    let mut refused = Runtime::start(
        json!({"apps": [{"name": "other", "script": "sleep", "args": ["600"]}]}),
        &[("WORKSPACE_DIR", workspace.to_str().unwrap())],
    );
    let status = refused.wait_exit();
    let out = refused.output();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        !out.contains(&format!("(pid {})", first.child.id())),
        "the live runtime was swept: {out}"
    );
    assert_eq!(
        process_state(keeper).map(|s| s != 'Z'),
        Some(true),
        "{}",
        first.output()
    );
    assert_eq!(
        first.app_status("keeper")["restarts"],
        0,
        "{}",
        first.output()
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{keeper}/cgroup")).unwrap();
    assert!(
        cgroup.contains(&format!("/machine-runtime/{}@", first.child.id())),
        "{cgroup}"
    );
    first.signal(libc::SIGTERM);
    assert!(first.wait_exit().success(), "{}", first.output());
}

#[test]
fn restarts_a_killed_child_and_counts_the_restart() {
    let mut rt = Runtime::start(
        json!({"apps": [{"name": "svc", "script": "sleep", "args": "1000", "restart_delay": 100}]}),
        &[],
    );
    let first = rt.wait_state("svc", "running")["pid"].as_u64().unwrap();
    // SAFETY: plain kill(2) on a child of the runtime.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    let status = wait_for(
        "the restart",
        || rt.output(),
        || {
            let app = rt.app_status("svc");
            (app["state"] == "running" && app["pid"].as_u64() != Some(first)).then_some(app)
        },
    );
    assert_eq!(status["restarts"], 1);
    assert_eq!(status["last_exit"]["signal"], libc::SIGKILL);
    wait_line(&rt, "svc exited with signal 9 (SIGKILL) after");
    wait_line(&rt, "restarting in 100ms (attempt 2 of 16)");
    rt.signal(libc::SIGTERM);
    assert_eq!(rt.wait_exit().code(), Some(0));
}

/// As PM2 refuses a script it cannot find, a program found on neither the app's `PATH` nor the
/// runtime's, or a file that is not executable, refuses the start, each named, before any app runs.
/// A program missing from the app's own `PATH` but on the runtime's runs (PM2 finds it there too).
#[test]
fn a_program_found_nowhere_or_not_executable_refuses_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("noexec"), "#!/bin/sh\n").unwrap();
    let bin = bin.to_str().unwrap();
    let mut rt = Runtime::start(
        json!({"apps": [
            {"name": "typo", "script": "no-such-program-xyz"},
            {"name": "noexec", "script": "noexec", "env": {"PATH": bin}},
            sh("ok", "put started yes; exec sleep 1000"),
        ]}),
        &[],
    );
    let status = rt.wait_exit();
    let out = rt.output();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("app \"typo\": program \"no-such-program-xyz\" is not on the app's PATH nor on the runtime's"),
        "{out}"
    );
    assert!(
        out.contains(&format!("app \"noexec\": {bin}/noexec is not executable")),
        "{out}"
    );
    assert!(
        !rt.path("started").exists(),
        "an app started despite the refusal"
    );

    let mut rt = Runtime::start(
        json!({"apps": [{"name": "narrow", "script": "sleep", "args": ["1000"], "env": {"PATH": bin}}]}),
        &[],
    );
    rt.wait_state("narrow", "running");
    rt.signal(libc::SIGTERM);
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
}

#[test]
fn a_missing_cwd_errors_with_the_reason() {
    let mut rt = Runtime::start(
        json!({"apps": [
            {"name": "bad-cwd", "script": "sleep", "args": "1000", "cwd": "/nonexistent-dir", "max_restarts": 1},
            {"name": "ok", "script": "sleep", "args": "1000"},
        ]}),
        &[],
    );
    let bad_cwd = rt.wait_state("bad-cwd", "errored");
    assert_eq!(
        bad_cwd["last_exit"]["description"],
        "its cwd /nonexistent-dir does not exist"
    );
    rt.wait_state("ok", "running");
    rt.signal(libc::SIGTERM);
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
}

/// CPU time (user + system) a process has used so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // After the command name: state is field 0, utime field 11, stime field 12.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn waiting_for_a_dependency_burns_no_cpu() {
    // The probe counts its own attempts, so the test waits on events, not on a clock.
    let rt = Runtime::start(
        json!({"apps": [
            {"name": "svc", "script": "sleep", "args": "1000",
             "machine_readiness": {"kind": "command", "command": ["sh", "-c", "echo x >> @DIR@/attempts; exit 1"], "interval_ms": 100}},
            {"name": "wrk", "script": "sleep", "args": "1000", "machine_wait_for": ["svc"]},
        ]}),
        &[],
    );
    rt.wait_state("wrk", "waiting");
    let before = cpu_ticks(rt.child.id());
    let attempts = || {
        std::fs::read_to_string(rt.path("attempts"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let start = attempts();
    wait_for(
        "ten more probe attempts",
        || rt.output(),
        || (attempts() >= start + 10).then_some(()),
    );
    let used = cpu_ticks(rt.child.id()) - before;
    // About a second passed; a busy loop would have used most of it (100 ticks per second).
    assert!(
        used < 50,
        "the runtime used {used} ticks of CPU while only waiting"
    );
}

/// An app that leaves a process outside its process group (`setsid`) and then crashes: the runtime
/// empties the app's cgroup (`cgroup.kill`) and starts the app again, and the new process lives. On
/// kernels where a child started inside a cgroup that was ever killed dies at birth (6.18 here), the
/// new process was SIGKILLed within milliseconds, 16 times, then the app errored (found by the review
/// of the clone3 spawn path).
#[test]
fn an_app_starts_again_after_its_cgroup_was_emptied() {
    let script = "echo start >> \"$D/starts\"\n\
        if [ \"$(wc -l < \"$D/starts\")\" = 1 ]; then\n\
          setsid sh -c 'echo $$ > \"$D/orphan\"; exec sleep 600' &\n\
          while [ ! -e \"$D/crash\" ]; do sleep 0.05; done\n\
          exit 1\n\
        fi\n\
        sleep 0.5\n\
        put alive yes\n\
        exec sleep 600\n";
    let mut rt = Runtime::start(
        json!({"apps": [with(sh("leaver", script), json!({"restart_delay": 0}))]}),
        &[],
    );
    let out = wait_line(&rt, "leaver started (pid");
    if !crate::up_support::has_cgroups(&out) {
        return;
    }
    // The crash only once the child has left the app's process group (it writes its pid after setsid):
    // a child still in the group is stopped with the group, and nothing is left in the cgroup.
    read_when_present(&rt, "orphan");
    std::fs::write(rt.path("crash"), "").unwrap();
    wait_line(
        &rt,
        "leaver: stopped 1 process it left outside its process group (its cgroup)",
    );
    // The second process runs half a second before it writes `alive`: one killed at birth never does.
    read_when_present(&rt, "alive");
    let app = rt.app_status("leaver");
    assert_eq!(
        (&app["state"], &app["restarts"]),
        (&json!("running"), &json!(1)),
        "{app}"
    );
    rt.signal(libc::SIGTERM);
    assert_eq!(rt.wait_exit().code(), Some(0), "{}", rt.output());
}
