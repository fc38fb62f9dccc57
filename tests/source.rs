//! The replication connection against a real server: authentication methods,
//! replication commands, and a slot's exported snapshot.

mod harness;

use std::time::Duration;

use harness::{Capture, Fixture};
use tidemark::source::conn::ReplicationConnection;
use tidemark::source::setup;
use tidemark::source::SourceError;

fn pg_config(url: &str) -> tidemark::pg::ConnInfo {
    tidemark::pg::ConnInfo::parse_with_env(url, &|_| None).unwrap()
}

#[tokio::test]
async fn trust_md5_and_scram_authenticate() {
    let fx = Fixture::new("");
    let cluster = fx.cluster;
    cluster
        .psql(
            "postgres",
            "SET password_encryption = 'md5'; CREATE ROLE auth_md5 LOGIN REPLICATION PASSWORD 'md5-pw';
             SET password_encryption = 'scram-sha-256'; CREATE ROLE auth_scram LOGIN REPLICATION PASSWORD 'scram-pw';
             CREATE ROLE auth_trust LOGIN REPLICATION;",
        )
        .unwrap();
    cluster
        .prepend_hba("host all auth_trust 127.0.0.1/32 trust")
        .unwrap();
    cluster
        .prepend_hba("host all auth_md5 127.0.0.1/32 md5")
        .unwrap();

    for (user, password) in [
        ("auth_trust", "ignored"),
        ("auth_md5", "md5-pw"),
        ("auth_scram", "scram-pw"),
    ] {
        let url = cluster.url_as(user, password, &fx.db);
        let mut conn = ReplicationConnection::connect(&pg_config(&url))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        let rows = conn.simple_query("IDENTIFY_SYSTEM").await.unwrap();
        assert_eq!(
            rows[0].len(),
            4,
            "{user}: systemid, timeline, xlogpos, dbname"
        );
        assert_eq!(rows[0][3].as_deref(), Some(fx.db.as_str()));
        assert!(conn
            .parameter("server_version")
            .is_some_and(|v| v.starts_with("15")));
    }

    for (user, password) in [("auth_md5", "wrong"), ("auth_scram", "wrong")] {
        let url = cluster.url_as(user, password, &fx.db);
        let error = ReplicationConnection::connect(&pg_config(&url))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(error, SourceError::AuthFailed { .. }),
            "{user}: {error}"
        );
        assert!(!error.is_retryable());
    }
}

#[tokio::test]
async fn a_server_error_names_its_sqlstate() {
    let fx = Fixture::new("");
    let mut conn = ReplicationConnection::connect(&pg_config(&fx.url()))
        .await
        .unwrap();
    let error = conn
        .start_replication("START_REPLICATION SLOT no_such_slot LOGICAL 0/0")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SourceError::Server { code, .. } if code == "42704"),
        "{error}"
    );
}

#[test]
fn the_exported_snapshot_meets_the_slot_exactly() {
    let fx = Fixture::new("CREATE TABLE t (id int PRIMARY KEY)");
    fx.psql("INSERT INTO t SELECT generate_series(1, 100)");
    fx.psql(&format!("CREATE PUBLICATION pub_{} FOR TABLE t", fx.db));
    let url = fx.url();
    let slot = fx.slot();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut conn = ReplicationConnection::connect(&pg_config(&url))
            .await
            .unwrap();
        let created = setup::create_slot(&mut conn, &slot, setup::SlotKind::PermanentWithSnapshot)
            .await
            .unwrap();
        let snapshot = created.snapshot_name.expect("an exported snapshot");
        // Written after the slot: in the stream, not in the snapshot.
        let writer = harness::connect(&url).await;
        writer
            .batch_execute("INSERT INTO t SELECT generate_series(101, 150)")
            .await
            .unwrap();
        let reader = harness::connect(&url).await;
        reader
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}'"
            ))
            .await
            .unwrap();
        let count: i64 = reader
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            count, 100,
            "the snapshot sees exactly the rows before the slot"
        );
        reader.batch_execute("COMMIT").await.unwrap();
    });

    let config = fx.config(&["public.t"], "");
    let capture = Capture::start(&config);
    fx.wait_caught_up(Duration::from_secs(30));
    assert_eq!(capture.stop(), 0);
    let ids = fx.logged_ids(&config);
    assert_eq!(
        ids,
        (101..=150).collect::<Vec<_>>(),
        "the stream holds exactly the rows after it"
    );
}

/// Two captures starting at once on one database (two slots, two table
/// sets) both install the schema-note triggers: the install runs under a
/// lock, where CREATE … IF NOT EXISTS alone races.
#[tokio::test]
async fn two_captures_preparing_at_once_both_succeed() {
    use tidemark::base::table::TableName;
    use tidemark::source::setup::{prepare, SourceSpec};
    let fx =
        Fixture::new("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)");
    let config = pg_config(&fx.url());
    for round in 0..5 {
        let (a, b) = (
            [TableName::new("public", "a")],
            [TableName::new("public", "b")],
        );
        let (slot_a, slot_b) = (format!("race_a_{round}"), format!("race_b_{round}"));
        let spec_a = SourceSpec {
            config: &config,
            tables: &a,
            publication: &slot_a,
            slot: &slot_a,
        };
        let spec_b = SourceSpec {
            config: &config,
            tables: &b,
            publication: &slot_b,
            slot: &slot_b,
        };
        // A fresh start each round: the race is on creating what is missing.
        fx.psql("DROP SCHEMA IF EXISTS tidemark CASCADE");
        let (first, second) = tokio::join!(prepare(&spec_a), prepare(&spec_b));
        assert!(
            first.is_ok() && second.is_ok(),
            "round {round}: {:?} {:?}",
            first.err(),
            second.err()
        );
    }
}
