//! The daemon's background tasks, started, stopped and reported in one place.
//!
//! Each task gets the same stop signal and ends on it. Stopping sends it,
//! waits for every task, and logs how each one ended, so a task that died
//! early is named rather than lost.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Supervisor {
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Supervisor {
    pub fn new() -> Supervisor {
        Supervisor {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    /// Starts `task`, built from the stop signal it must end on.
    pub fn spawn<F>(&mut self, name: &'static str, task: impl FnOnce(watch::Receiver<bool>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        tracing::debug!(task = name, "starting");
        let handle = tokio::spawn(task(self.stop.subscribe()));
        self.tasks.push((name, handle));
    }

    /// Sends the stop signal, waits for every task, and reports each.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for (name, handle) in self.tasks {
            match handle.await {
                Ok(()) => tracing::debug!(task = name, "stopped"),
                Err(error) if error.is_panic() => {
                    tracing::error!(
                        task = name,
                        "the task panicked; its work resumes at the next start"
                    )
                }
                Err(_) => tracing::warn!(task = name, "the task was cancelled"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn stop_ends_every_task_on_the_one_signal() {
        let ended = Arc::new(AtomicUsize::new(0));
        let mut tasks = Supervisor::new();
        for name in ["a", "b"] {
            let ended = ended.clone();
            tasks.spawn(name, move |mut stop| async move {
                let _ = stop.wait_for(|s| *s).await;
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
        tasks.stop().await;
        assert_eq!(ended.load(Ordering::SeqCst), 2);
    }
}
