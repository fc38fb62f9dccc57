//! `tidemark quickstart`: the whole story on embedded defaults, in one command.
//! A throwaway cluster with sample critical tables and a workload, capture into
//! a local-directory archive, a simulated disaster, and a restore to the moment
//! before it, checked table by table.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::archive::manifest;
use crate::base::exit::ExitCode;
use crate::base::position::PgTimestamp;
use crate::config::Config;
use crate::replay::apply::Target;
use crate::replay::rebuild;
use crate::replay::scratch::ScratchServer;

const SCHEMA: &str = "
    CREATE TYPE payment_status AS ENUM ('pending', 'paid', 'refunded');
    CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, email text);
    CREATE TABLE payments (
        id bigserial PRIMARY KEY,
        customer_id bigint NOT NULL REFERENCES customers (id),
        amount numeric(12,2) NOT NULL CHECK (amount > 0),
        status payment_status NOT NULL DEFAULT 'pending',
        note text
    );
    CREATE INDEX payments_customer ON payments (customer_id);
    CREATE TABLE deliveries (payment_id bigint, carrier text, shipped_at timestamptz);
    ALTER TABLE deliveries REPLICA IDENTITY FULL;
    INSERT INTO customers SELECT g, 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 100) g;
    INSERT INTO payments (customer_id, amount, status)
        SELECT 1 + g % 100, (g % 500) + 0.99, 'paid' FROM generate_series(1, 500) g;
";

const TABLES: [&str; 3] = ["public.customers", "public.payments", "public.deliveries"];

#[derive(Debug, thiserror::Error)]
pub enum QuickstartError {
    #[error(transparent)]
    ScratchServer(#[from] crate::replay::scratch::ScratchError),
    #[error("quickstart database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    #[error("quickstart database: {0}")]
    Connect(#[from] crate::pg::ConnectError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error(transparent)]
    Rebuild(#[from] rebuild::RebuildError),
    #[error("{0}")]
    Output(#[from] std::io::Error),
    #[error("capture did not store a base snapshot within a minute")]
    NoSnapshot,
    #[error("capture stopped before the archive held the whole story")]
    CaptureStopped,
    #[error("the restored tables differ from the source at the restore point: {0}")]
    Mismatch(String),
}

impl QuickstartError {
    pub fn exit_code(&self) -> ExitCode {
        use QuickstartError::*;
        match self {
            ScratchServer(e) => e.exit_code(),
            Config(e) => e.exit_code(),
            Capture(e) => e.exit_code(),
            Archive(e) => e.exit_code(),
            Rebuild(e) => e.exit_code(),
            Sql(_) | Connect(_) | Output(_) | NoSnapshot | CaptureStopped | Mismatch(_) => {
                ExitCode::Failure
            }
        }
    }
}

async fn connect(
    cluster: &ScratchServer,
    db: &str,
) -> Result<tokio_postgres::Client, QuickstartError> {
    Ok(cluster.conn_info(db)?.connect().await?)
}

async fn table_md5(
    client: &tokio_postgres::Client,
    table: &str,
) -> Result<String, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!("SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"),
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Runs the whole story in `dir`; `kept` says whether the dir outlives the run.
/// Reports the status of the config at a path, as `tidemark status` prints it.
pub type StatusReport = Box<
    dyn FnOnce(
            std::path::PathBuf,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>
        + Send,
>;

/// Tells the story; ends with `status` while capture still protects the source.
pub async fn run(
    dir: &Path,
    kept: bool,
    status: StatusReport,
    out: &mut impl Write,
) -> Result<(), QuickstartError> {
    writeln!(
        out,
        "1. Starting a throwaway PostgreSQL cluster (wal_level = logical)..."
    )?;
    let cluster = tokio::task::spawn_blocking(|| ScratchServer::start(&[]))
        .await
        .expect("starting the cluster")?;
    cluster_sql(&cluster, "postgres", "CREATE DATABASE shop").await?;
    let shop = connect(&cluster, "shop").await?;
    shop.batch_execute(SCHEMA).await?;
    writeln!(out, "   critical tables: {}", TABLES.join(", "))?;

    let config_path = dir.join("tidemark.toml");
    let config_text = format!(
        "[source]\nurl = {:?}\ntables = {:?}\n\n[log]\ndir = {:?}\n\n[archive]\nurl = {:?}\nupload_interval = \"500ms\"\n",
        cluster.conninfo("shop"),
        TABLES,
        dir.join("log").display().to_string(),
        format!("file://{}", dir.join("archive").display()),
    );
    std::fs::write(&config_path, &config_text)?;
    let checked = Config::from_toml(&config_path, &config_text, std::iter::empty())?;
    writeln!(
        out,
        "2. Capturing into {} (local log) and {} (archive)...",
        dir.join("log").display(),
        dir.join("archive").display()
    )?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let capture = tokio::spawn(async move { crate::capture::run(&checked, stopped).await });
    let store = crate::archive::store::open(
        &format!("file://{}", dir.join("archive").display()),
        &Default::default(),
    )
    .await
    .map_err(crate::archive::ArchiveError::from)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some((_, m))) = manifest::load_latest(&*store).await {
            if !m.snapshots.is_empty() {
                writeln!(out, "   base snapshot stored at LSN {}", m.snapshots[0].lsn)?;
                break;
            }
        }
        if capture.is_finished() || std::time::Instant::now() > deadline {
            stop.send_replace(true);
            capture.await.expect("capture task")?;
            return Err(QuickstartError::NoSnapshot);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    writeln!(
        out,
        "3. Running a workload: payments, refunds, deliveries..."
    )?;
    for round in 0..200 {
        shop.batch_execute(&format!(
            "BEGIN;
             INSERT INTO payments (customer_id, amount, note) VALUES ({c}, {a}.50, 'order {round}');
             UPDATE payments SET status = 'paid' WHERE id = (SELECT max(id) FROM payments);
             INSERT INTO deliveries VALUES ({round}, 'carrier {k}', now());
             UPDATE customers SET email = 'new{round}@example.com' WHERE id = {c};
             COMMIT;",
            c = 1 + round % 100,
            a = 10 + round,
            k = round % 3
        ))
        .await?;
        if round % 50 == 49 {
            shop.batch_execute(&format!(
                "UPDATE payments SET status = 'refunded' WHERE id % 50 = {}; DELETE FROM deliveries WHERE payment_id = {};",
                round % 50,
                round - 10
            ))
            .await?;
        }
    }
    let restore_point: String = shop
        .query_one("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')", &[])
        .await?
        .get(0);
    let mut expected = Vec::new();
    for table in TABLES {
        expected.push(table_md5(&shop, table).await?);
    }
    writeln!(out, "   restore point: {restore_point}")?;

    writeln!(
        out,
        "4. Disaster: a bad deploy deletes every paid payment and wipes emails..."
    )?;
    shop.batch_execute(
        "DELETE FROM payments WHERE status = 'paid'; UPDATE customers SET email = NULL;",
    )
    .await?;
    // The archive must reach past the restore point to prove nothing else committed before it.
    shop.batch_execute("SELECT txid_current()").await?;
    let wal_end: String = shop
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    loop {
        let caught_up: bool = shop
            .query_one(
                "SELECT coalesce(confirmed_flush_lsn >= $1::text::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = 'tidemark'",
                &[&wal_end],
            )
            .await?
            .get(0);
        if caught_up || capture.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Capture keeps running; the restore needs the archive past the disaster.
    let wal_end: crate::base::position::Lsn = wal_end.parse().expect("the server prints LSNs");
    loop {
        let archived = manifest::load_latest(&*store)
            .await?
            .and_then(|(_, m)| m.segments.last().map(|s| s.end_lsn.0))
            .is_some_and(|end| end >= wal_end);
        if archived {
            break;
        }
        if capture.is_finished() {
            stop.send_replace(true);
            capture.await.expect("capture task")?;
            return Err(QuickstartError::CaptureStopped);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    writeln!(
        out,
        "5. Restoring the archive to {restore_point} into a new database..."
    )?;
    let started = std::time::Instant::now();
    let (_, manifest) = manifest::load_latest(&*store)
        .await?
        .ok_or(QuickstartError::NoSnapshot)?;
    let target: PgTimestamp = restore_point.parse().expect("the server prints RFC 3339");
    let plan = rebuild::plan(&manifest, Target::Time(target))?;
    cluster_sql(&cluster, "postgres", "CREATE DATABASE shop_restored").await?;
    let restored = Arc::new(connect(&cluster, "shop_restored").await?);
    let done = rebuild::rebuild(&*store, &plan, std::slice::from_ref(&restored), dir).await?;
    writeln!(
        out,
        "   {} snapshot rows loaded, {} transactions ({} changes) replayed in {:.2}s",
        done.rows_loaded,
        done.transactions,
        done.changes,
        started.elapsed().as_secs_f64()
    )?;
    let mut mismatches = Vec::new();
    for (table, want) in TABLES.iter().zip(&expected) {
        let got = table_md5(&restored, table).await?;
        let verdict = if &got == want { "matches" } else { "DIFFERS" };
        writeln!(
            out,
            "   {table}: {verdict} the source at the restore point (md5 {got})"
        )?;
        if &got != want {
            mismatches.push(table.to_string());
        }
    }
    if !mismatches.is_empty() {
        stop.send_replace(true);
        capture.await.expect("capture task")?;
        return Err(QuickstartError::Mismatch(mismatches.join(", ")));
    }
    writeln!(
        out,
        "Done: every table was restored exactly as it was before the disaster."
    )?;
    writeln!(out, "6. And protection goes on; tidemark status says so:")?;
    write!(out, "{}", status(config_path.clone()).await)?;
    stop.send_replace(true);
    capture.await.expect("capture task")?;
    if kept {
        writeln!(
            out,
            "Look around: tidemark status --config {0}; tidemark list --config {0}; tidemark verify --deep --config {0}",
            config_path.display()
        )?;
    } else {
        writeln!(
            out,
            "(Run with --dir DIR to keep the config, log and archive and look around.)"
        )?;
    }
    Ok(())
}

async fn cluster_sql(cluster: &ScratchServer, db: &str, sql: &str) -> Result<(), QuickstartError> {
    Ok(connect(cluster, db).await?.batch_execute(sql).await?)
}
