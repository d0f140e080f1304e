//! machine-comfyui: a test stand-in for the job queue's ComfyUI fork (worker contract §7), started the way
//! the fork is (`python main.py --listen … --port …`, e.g. through a `venv/bin/python` shim that execs this
//! binary with its arguments). Its own binary, never part of the image: only tests and local experiments
//! run it. See `machine_runtime::comfyui_standin` for what it does.

use std::process::ExitCode;
use std::time::Duration;

use machine_runtime::comfyui_standin::{self, cli};
use machine_runtime::log::{self, LogStream};
use machine_runtime::sink;
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let code = match cli::parse(&argv) {
        Err(exit) => {
            if exit.code == 0 {
                sink::out(exit.text.as_bytes());
            } else {
                sink::err(exit.text.as_bytes());
            }
            ExitCode::from(exit.code)
        }
        Ok(args) => serve(args),
    };
    sink::flush(Duration::from_secs(2));
    code
}

/// Serves until Ctrl-C (SIGINT), which empties the temp folder and exits 0 as the fork does. SIGTERM keeps
/// its default action, as in the fork (Python installs no handler for it): the process ends at once.
fn serve(args: cli::Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            log::app_output(
                LogStream::Stderr,
                &format!("machine-comfyui: cannot start tokio: {err}"),
            );
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut interrupt = match signal(SignalKind::interrupt()) {
            Ok(s) => s,
            Err(err) => {
                log::app_output(
                    LogStream::Stderr,
                    &format!("machine-comfyui: cannot handle SIGINT: {err}"),
                );
                return ExitCode::FAILURE;
            }
        };
        let on_signal = shutdown.clone();
        let signal_args = args.clone();
        tokio::spawn(async move {
            if interrupt.recv().await.is_some() {
                log::app_output(LogStream::Stderr, "\nStopped server");
                comfyui_standin::cleanup_temp(&signal_args);
                on_signal.cancel();
            }
        });
        match comfyui_standin::run(args, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                log::app_output(LogStream::Stderr, &format!("OSError: {err}"));
                ExitCode::FAILURE
            }
        }
    })
}
