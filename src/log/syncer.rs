//! Fsyncs the segment log behind its writer, so writing goes on while the
//! disk flushes.
//!
//! Why a published LSN is durable: the writer hands over a handle on the
//! segment file only after writing to it everything the LSN covers, and
//! `fdatasync` on any handle of a file makes durable all data written to
//! the file before the call. A request replaces one not yet started (the
//! newer covers more), so one sync groups whatever arrived while the last
//! ran. A failed sync is never retried: the kernel may have dropped the
//! pages it could not write, so the writer stops on it, and nothing past
//! the last good sync was ever confirmed.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use super::LogError;
use crate::base::position::EndLsn;

/// What the sync thread flushes: a segment file (a stand-in in tests).
pub trait SyncData: Send + 'static {
    fn sync_data(&self) -> std::io::Result<()>;
}

impl SyncData for File {
    fn sync_data(&self) -> std::io::Result<()> {
        File::sync_data(self)
    }
}

/// What to make durable: a handle on the segment file, and the resume LSN
/// that everything written to it so far covers.
pub struct SyncRequest<F = File> {
    pub file: F,
    pub path: PathBuf,
    pub ack: EndLsn,
}

struct State<F> {
    next: Option<SyncRequest<F>>,
    stop: bool,
    failed: Option<LogError>,
}

struct Shared<F> {
    state: Mutex<State<F>>,
    wake: Condvar,
}

impl<F> Shared<F> {
    fn lock(&self) -> MutexGuard<'_, State<F>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct Syncer<F = File> {
    shared: Arc<Shared<F>>,
    thread: Option<JoinHandle<()>>,
}

impl<F: SyncData> Syncer<F> {
    /// Starts the sync thread; `publish` receives each LSN once it is durable.
    pub fn start(publish: impl Fn(EndLsn) + Send + 'static) -> Syncer<F> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::<F> {
                next: None,
                stop: false,
                failed: None,
            }),
            wake: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tidemark-log-sync".into())
                .spawn(move || {
                    while let Some(request) = next_request(&shared) {
                        match request.file.sync_data() {
                            Ok(()) => publish(request.ack),
                            Err(source) => {
                                let path = request.path;
                                shared.lock().failed = Some(LogError::Io { path, source });
                                return;
                            }
                        }
                    }
                })
                .expect("spawning the log sync thread")
        };
        Syncer {
            shared,
            thread: Some(thread),
        }
    }

    /// Asks for `request` to be made durable, after any sync in flight.
    pub fn request(&self, request: SyncRequest<F>) {
        self.shared.lock().next = Some(request);
        self.shared.wake.notify_one();
    }

    /// The error a sync failed with, once.
    pub fn failure(&self) -> Option<LogError> {
        self.shared.lock().failed.take()
    }

    /// Finishes the requested syncs and stops; returns a sync's failure.
    pub fn finish(mut self) -> Result<(), LogError> {
        self.stop();
        self.failure().map_or(Ok(()), Err)
    }
}

impl<F> Syncer<F> {
    fn stop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<F> Drop for Syncer<F> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The next request, waiting for one; `None` once stopped with none left.
fn next_request<F>(shared: &Shared<F>) -> Option<SyncRequest<F>> {
    let mut state = shared.lock();
    loop {
        if let Some(request) = state.next.take() {
            return Some(request);
        }
        if state.stop {
            return None;
        }
        state = shared
            .wake
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::base::position::Lsn;

    /// A file whose sync waits for the test, and says when it returned.
    struct Held {
        release: Mutex<mpsc::Receiver<std::io::Result<()>>>,
        returned: mpsc::Sender<EndLsn>,
        ack: EndLsn,
    }

    impl SyncData for Held {
        fn sync_data(&self) -> std::io::Result<()> {
            let result = self.release.lock().unwrap().recv().unwrap();
            self.returned.send(self.ack).unwrap();
            result
        }
    }

    #[test]
    fn an_lsn_is_published_only_after_its_sync_returns_and_never_after_a_failure() {
        let (published_tx, published) = mpsc::channel();
        let syncer = Syncer::<Held>::start(move |lsn| published_tx.send(lsn).unwrap());
        let (returned_tx, returned) = mpsc::channel();
        let mut releases = Vec::new();
        let mut request = |ack: u64| {
            let (release, held) = mpsc::channel();
            releases.push(release);
            let ack = EndLsn(Lsn(ack));
            let file = Held {
                release: Mutex::new(held),
                returned: returned_tx.clone(),
                ack,
            };
            let path = PathBuf::from("segment");
            syncer.request(SyncRequest { file, path, ack });
        };
        request(10);
        let wait = std::time::Duration::from_millis(200);
        assert!(
            published.recv_timeout(wait).is_err(),
            "published before its sync"
        );
        // Requests while a sync runs: the newest replaces the others.
        request(20);
        request(30);
        releases[0].send(Ok(())).unwrap();
        assert_eq!(returned.recv().unwrap(), EndLsn(Lsn(10)));
        assert_eq!(published.recv().unwrap(), EndLsn(Lsn(10)));
        releases[2].send(Err(std::io::Error::other("EIO"))).unwrap();
        assert_eq!(returned.recv().unwrap(), EndLsn(Lsn(30)));
        assert!(
            published.recv_timeout(wait).is_err(),
            "published a failed sync"
        );
        let failed = syncer.finish().unwrap_err().to_string();
        assert!(
            failed.contains("segment") && failed.contains("EIO"),
            "{failed}"
        );
    }
}
