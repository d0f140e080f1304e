//! The watchdog of the broker's background tasks: one that ends while the broker is meant to run
//! (a panic is a bug) makes the broker unreachable in `/health`, with the reason.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::shared::Shared;
use super::time::now_ms;

/// Records the task in [`Shared::dead`] when it ends (or unwinds) while the broker is meant to run.
struct TaskWatch {
    shared: Arc<Shared>,
    name: &'static str,
    cancel: CancellationToken,
}

impl Drop for TaskWatch {
    fn drop(&mut self) {
        if self.cancel.is_cancelled()
            || self
                .shared
                .stopping
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let how = if std::thread::panicking() {
            "panicked"
        } else {
            "returned"
        };
        log!(
            "the {} task {how}; the machine no longer reports to the job broker",
            self.name
        );
        self.shared
            .dead
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push((now_ms(), format!("the broker's {} task {how}", self.name)));
    }
}

/// Spawns `task`, recording in `shared` if it ends before `cancel` or a shutdown.
pub(super) fn spawn_watched<F>(
    shared: &Arc<Shared>,
    name: &'static str,
    cancel: &CancellationToken,
    task: F,
) -> JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let watch = TaskWatch {
        shared: shared.clone(),
        name,
        cancel: cancel.clone(),
    };
    tokio::spawn(async move {
        let _watch = watch;
        task.await;
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::config::RedisUrl;
    use super::super::link::{ConnectionState, Link, LinkSettings};
    use super::super::shared::status_of;
    use super::super::status::PreflightState;
    use super::*;

    fn shared() -> Arc<Shared> {
        let url = RedisUrl::parse("HUB_REDIS_URL", "redis://:secret@127.0.0.1:1").unwrap();
        let link = Link::new(
            url,
            LinkSettings {
                connect_timeout: Duration::from_millis(100),
                response_timeout: Duration::from_millis(100),
                backoff_min: Duration::from_millis(100),
                backoff_max: Duration::from_millis(100),
            },
        )
        .unwrap();
        Arc::new(Shared::new(link, PreflightState::Off))
    }

    #[tokio::test]
    async fn a_task_that_dies_makes_the_broker_unreachable_with_the_reason() {
        let shared = shared();
        let cancel = CancellationToken::new();
        assert!(!matches!(
            status_of(&shared).connection,
            ConnectionState::Unreachable { .. }
        ));
        let task = spawn_watched(&shared, "publisher", &cancel, async {
            panic!("a bug in a broker task");
        });
        assert!(task.await.unwrap_err().is_panic());
        let status = status_of(&shared);
        let ConnectionState::Unreachable { last_error, .. } = &status.connection else {
            panic!("{status:?}");
        };
        assert!(
            last_error.contains("the broker's publisher task panicked"),
            "{last_error}"
        );
        assert!(!status.is_connected());
        assert!(!status.url.contains("secret"));
    }

    #[tokio::test]
    async fn tasks_ending_on_purpose_are_not_reported() {
        let shared = shared();
        let cancel = CancellationToken::new();
        cancel.cancel();
        spawn_watched(&shared, "connection", &cancel, async {})
            .await
            .unwrap();
        shared
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let live = CancellationToken::new();
        spawn_watched(&shared, "publisher", &live, async {})
            .await
            .unwrap();
        assert!(shared.dead.lock().unwrap().is_empty());
    }
}
