//! The applier's SQL, run on the target by a task of its own, so decoding the
//! next batch overlaps applying this one.
//!
//! Why it is still exact: one task runs every statement and COPY on one
//! connection, in the order the applier issued them, so the target sees the
//! same sequence as if each call had waited. The first failure stops the task;
//! every later call, and `sync`, returns it, so the applier never goes on past
//! a statement that failed. `sync` waits until all queued work has run: the
//! applier calls it before it reports a replay done, and before it gives up
//! on one, so nothing it queued still runs while the caller cleans up.

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::sync::{mpsc, oneshot};

use super::apply::Executor;
use super::load::HeldTables;
use crate::base::table::TableName;

/// Queued work: a few flushes' worth, so memory stays bounded while the
/// target catches up.
const QUEUE: usize = 16;

enum Job {
    Execute(String),
    Copy(String, Bytes),
    /// Answers once everything queued before it has run.
    Sync(oneshot::Sender<()>),
}

pub struct PipelinedExecutor {
    jobs: mpsc::Sender<Job>,
    client: std::sync::Arc<tokio_postgres::Client>,
    runtime: tokio::runtime::Handle,
    failed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// Snapshot tables held back for folds, loaded whole when the applier asks.
    held: HeldTables,
}

impl PipelinedExecutor {
    /// Starts the task on `runtime`; calls come from a blocking thread.
    pub fn start(
        client: std::sync::Arc<tokio_postgres::Client>,
        runtime: tokio::runtime::Handle,
    ) -> PipelinedExecutor {
        let (jobs, mut queued) = mpsc::channel::<Job>(QUEUE);
        let failed = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (worker_client, worker_failed) = (client.clone(), failed.clone());
        runtime.spawn(async move {
            while let Some(job) = queued.recv().await {
                let done = match job {
                    Job::Execute(sql) => worker_client.batch_execute(&sql).await.map(drop),
                    Job::Copy(sql, data) => copy_in(&worker_client, &sql, data).await,
                    Job::Sync(answer) => {
                        let _ = answer.send(());
                        Ok(())
                    }
                };
                if let Err(error) = done {
                    // Leaves the connection usable for whoever cleans up after
                    // the failure; unanswered syncs see the channel close and
                    // read the failure.
                    let _ = worker_client.batch_execute("ROLLBACK").await;
                    *lock(&worker_failed) = Some(message(&error));
                    return;
                }
            }
        });
        PipelinedExecutor {
            jobs,
            client,
            runtime,
            failed,
            held: Default::default(),
        }
    }

    /// The snapshot tables the applier loads itself (`Executor::load`).
    pub fn with_held(mut self, held: HeldTables) -> Self {
        self.held = held;
        self
    }

    fn queue(&mut self, job: Job) -> Result<(), String> {
        self.failure()?;
        if self.jobs.blocking_send(job).is_err() {
            return Err(self.failure().err().unwrap_or_else(stopped));
        }
        Ok(())
    }

    fn failure(&self) -> Result<(), String> {
        match lock(&self.failed).clone() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Executor for PipelinedExecutor {
    fn execute(&mut self, sql: &str) -> Result<(), String> {
        self.queue(Job::Execute(sql.to_string()))
    }

    fn copy_in(&mut self, sql: &str, data: Bytes) -> Result<(), String> {
        self.queue(Job::Copy(sql.to_string(), data))
    }

    fn format_type(&mut self, oid: u32, typmod: i32) -> Result<String, String> {
        self.sync()?;
        self.runtime
            .block_on(
                self.client
                    .query_one("SELECT format_type($1, $2)", &[&oid, &typmod]),
            )
            .map(|row| row.get(0))
            .map_err(|e| message(&e))
    }

    fn load(&mut self, table: &TableName) -> Result<u64, String> {
        let held = super::load::take_held(&self.held, table)
            .ok_or_else(|| format!("no snapshot of {table} is held back"))?;
        // The load runs on this connection once what was queued before it has.
        self.sync()?;
        let hidden = indicatif::ProgressBar::hidden();
        self.runtime
            .block_on(super::load::copy_table(&self.client, &held, None, &hidden))
            .map_err(|e| e.to_string())
    }

    fn sync(&mut self) -> Result<(), String> {
        let (answer, answered) = oneshot::channel();
        self.queue(Job::Sync(answer))?;
        match answered.blocking_recv() {
            Ok(()) => Ok(()),
            Err(_) => Err(self.failure().err().unwrap_or_else(stopped)),
        }
    }
}

/// Why a streamed COPY stopped.
pub(super) enum CopyFailed<E> {
    /// Making the rows failed; the COPY was abandoned, not finished with part of them.
    Produce(E),
    Target(tokio_postgres::Error),
}

/// Runs `sql` (a `COPY … FROM STDIN`) on `client` with the chunks `produce`
/// makes on a blocking thread, handing each to its `send` (false once the
/// COPY stopped), while the target takes the one before. Returns what
/// `produce` returned and the rows copied.
pub(super) async fn copy_produced<T, E>(
    client: &tokio_postgres::Client,
    sql: &str,
    bar: &indicatif::ProgressBar,
    produce: impl FnOnce(&dyn Fn(Bytes) -> bool) -> Result<T, E> + Send + 'static,
) -> Result<(T, u64), CopyFailed<E>>
where
    T: Send + 'static,
    E: Send + 'static,
{
    let (chunks, mut rx) = mpsc::channel::<Bytes>(8);
    let producer =
        tokio::task::spawn_blocking(move || produce(&|chunk| chunks.blocking_send(chunk).is_ok()));
    let sink = client.copy_in(sql).await.map_err(CopyFailed::Target)?;
    futures_util::pin_mut!(sink);
    let mut sent = Ok(());
    while let Some(chunk) = rx.recv().await {
        bar.inc(chunk.len() as u64);
        sent = sink.send(chunk).await;
        if sent.is_err() {
            break;
        }
    }
    drop(rx);
    let produced = producer
        .await
        .expect("producing a COPY's rows")
        .map_err(CopyFailed::Produce)?;
    sent.map_err(CopyFailed::Target)?;
    let rows = sink.finish().await.map_err(CopyFailed::Target)?;
    Ok((produced, rows))
}

/// Runs `sql` (a `COPY … FROM STDIN`) with `data` on `client`.
pub(super) async fn copy_in(
    client: &tokio_postgres::Client,
    sql: &str,
    data: Bytes,
) -> Result<(), tokio_postgres::Error> {
    let sink = client.copy_in(sql).await?;
    futures_util::pin_mut!(sink);
    sink.send(data).await?;
    sink.finish().await.map(drop)
}

/// The server's own message where there is one.
fn message(error: &tokio_postgres::Error) -> String {
    error
        .as_db_error()
        .map_or_else(|| error.to_string(), |d| d.message().to_string())
}

fn stopped() -> String {
    "the connection to the target closed".to_string()
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
