//! Two `purser relay` processes on one database: one publishes, the other
//! stands by; the active one is killed for real (SIGKILL) while events are
//! being written, the standby takes over, and a consumer sees every event,
//! in order per stream once duplicates are dropped.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use event_store::{EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use kafka::{Delivered, EventConsumer, KafkaConfig};
use test_support::{eventually, TestDatabase};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::{DEADLINE, PURSER};

fn relay(db: &TestDatabase, kafka: &KafkaConfig) -> Child {
    Command::new(PURSER)
        .args(["relay", "--database-url", &db.url])
        .args(["--kafka-brokers", &kafka.brokers])
        .args(["--kafka-topic-prefix", &kafka.topic_prefix])
        .args(["--relay-batch-size", "10", "--relay-idle-wait-ms", "200"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("purser relay starts")
}

/// The `application_name` of the session holding the relay lock, if any:
/// `purser relay (pid N)`.
async fn lock_holder(db: &TestDatabase) -> Option<String> {
    sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l \
           JOIN pg_stat_activity a ON a.pid = l.pid \
           JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() \
           AND l.classid::bigint = ($1 >> 32) AND l.objid::bigint = ($1 & 4294967295)",
    )
    .bind(kafka::RELAY_LOCK_KEY)
    .fetch_optional(&db.pool)
    .await
    .expect("pg_locks")
}

async fn wait_for_holder(db: &TestDatabase, child: &Child, what: &str) {
    let name = format!("purser relay (pid {})", child.id().expect("running"));
    eventually(what, DEADLINE, Duration::from_millis(50), || async {
        match lock_holder(db).await {
            Some(holder) if holder == name => Ok(()),
            other => Err(other),
        }
    })
    .await
}

async fn append(store: &EventStore, stream: &StreamId, n: usize) {
    let event = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "TestHappened".to_owned(),
        schema_version: 1,
        payload: serde_json::json!({ "n": n }),
    };
    store
        .append(stream, ExpectedVersion::Any, &[event], &Metadata::default())
        .await
        .expect("append");
}

/// Reads until every event in the store is among `delivered`.
async fn consume_all(consumer: &EventConsumer, store: &EventStore, delivered: &mut Vec<Delivered>) {
    let wanted: HashSet<Uuid> = sqlx::query_scalar("SELECT event_id FROM event_store.events")
        .fetch_all(store.pool())
        .await
        .expect("event ids")
        .into_iter()
        .collect();
    let mut seen: HashSet<Uuid> = delivered.iter().map(|d| d.event.event_id).collect();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !wanted.is_subset(&seen) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} events consumed",
            wanted.intersection(&seen).count(),
            wanted.len()
        );
        let batch = consumer
            .next_batch(500, Duration::from_millis(200))
            .await
            .expect("consume");
        seen.extend(batch.iter().map(|d| d.event.event_id));
        delivered.extend(batch);
    }
}

#[tokio::test]
async fn killing_the_active_relay_process_hands_over_to_the_standby_and_loses_nothing() {
    let kafka = test_support::kafka::config("test");
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let streams: Vec<StreamId> = (0..10)
        .map(|_| StreamId::new("account", Uuid::new_v4()))
        .collect();

    let mut first = relay(&db, &kafka);
    wait_for_holder(&db, &first, "the first relay to take the lock").await;
    let mut second = relay(&db, &kafka);
    // The second relay is up and standing by: its lock connection (same
    // application_name) is open, and the lock is still the first one's.
    let second_name = format!("purser relay (pid {})", second.id().expect("running"));
    eventually(
        "the second relay to stand by",
        DEADLINE,
        Duration::from_millis(50),
        || async {
            let sessions: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            )
            .bind(&second_name)
            .fetch_one(&db.pool)
            .await
            .expect("pg_stat_activity");
            if sessions > 0 {
                Ok(())
            } else {
                Err(sessions)
            }
        },
    )
    .await;
    wait_for_holder(&db, &first, "the first relay to keep the lock").await;

    let consumer = EventConsumer::new(
        &kafka,
        &format!("{}.failover", kafka.topic_prefix),
        kafka::STREAM_TYPES,
    )
    .expect("consumer");
    for n in 0..200 {
        append(&store, &streams[n % streams.len()], n).await;
    }
    let mut delivered = Vec::new();
    consume_all(&consumer, &store, &mut delivered).await;
    // One relay published: no event twice.
    let unique: HashSet<Uuid> = delivered.iter().map(|d| d.event.event_id).collect();
    assert_eq!(
        unique.len(),
        delivered.len(),
        "the standby published nothing"
    );

    // Killed while events keep coming: the standby takes over.
    for n in 200..300 {
        append(&store, &streams[n % streams.len()], n).await;
    }
    first.kill().await.expect("SIGKILL the active relay");
    for n in 300..400 {
        append(&store, &streams[n % streams.len()], n).await;
    }
    wait_for_holder(&db, &second, "the standby to take over").await;
    for n in 400..500 {
        append(&store, &streams[n % streams.len()], n).await;
    }
    consume_all(&consumer, &store, &mut delivered).await;

    // Every stream complete and in order once duplicates are dropped.
    let mut applied: HashMap<&str, u64> = HashMap::new();
    for d in &delivered {
        let last = applied.entry(d.event.stream_id.as_str()).or_insert(0);
        if d.event.version > *last {
            assert_eq!(
                d.event.version,
                *last + 1,
                "{} skipped a version",
                d.event.stream_id
            );
            *last = d.event.version;
        }
    }
    assert_eq!(applied.len(), streams.len());
    assert!(applied.values().all(|&v| v == 50), "{applied:?}");
    second.kill().await.expect("stop the second relay");
}
