use std::collections::{HashMap, HashSet};
use std::time::Duration;

use event_store::{Checkpoint, EventStore, ExpectedVersion, Metadata, RecordedEvent, StreamId};
use sqlx::postgres::PgPoolOptions;
use test_support::TestDatabase;
use uuid::Uuid;

use crate::counter::{added, new_counter_stream};
use test_support::Deadline;

const DEADLINE: Duration = Duration::from_secs(20);

/// Inserts one event in `tx`, as an append would; returns its position.
async fn insert_in(tx: &mut sqlx::PgConnection, stream: &StreamId, amount: i64) -> (Uuid, i64) {
    let event_id = Uuid::now_v7();
    let position = sqlx::query_scalar(
        "INSERT INTO event_store.events \
         (event_id, stream_type, stream_id, version, event_type, schema_version, payload) \
         VALUES ($1, $2, $3, 1, 'Added', 2, jsonb_build_object('amount', $4::bigint)) \
         RETURNING position",
    )
    .bind(event_id)
    .bind(stream.stream_type())
    .bind(stream.to_string())
    .bind(amount)
    .fetch_one(tx)
    .await
    .expect("insert");
    (event_id, position)
}

/// Reads from `after` until `count` events came (other tests' transactions
/// on the same server can hold the horizon back for a moment).
async fn read_until(store: &EventStore, after: Checkpoint, count: usize) -> Vec<RecordedEvent> {
    let deadline = Deadline::after(DEADLINE, "events to become readable");
    let mut seen = Vec::new();
    let mut checkpoint = after;
    loop {
        let batch = store.read_all(checkpoint, 1000).await.expect("read_all");
        if let Some(last) = batch.last() {
            checkpoint = last.checkpoint();
        }
        seen.extend(batch);
        if seen.len() >= count {
            return seen;
        }
        deadline.tick().await;
    }
}

/// Design decision 3: a transaction holds a lower position open while a
/// later one commits a higher position. The reader delivers neither until
/// the first commits, then both, in order, exactly once.
#[tokio::test]
async fn read_all_waits_for_a_lower_position_held_open_then_delivers_both_once() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let (_, slow_stream) = new_counter_stream();
    let (_, fast_stream) = new_counter_stream();

    let mut slow = db.pool.begin().await.expect("begin");
    let (slow_id, slow_position) = insert_in(&mut slow, &slow_stream, 1).await;
    let fast = store
        .append(
            &fast_stream,
            ExpectedVersion::NoStream,
            &[added(2)],
            &Metadata::default(),
        )
        .await
        .expect("append");
    assert!(fast.position > slow_position);

    // The committed event sorts after the open transaction: invisible.
    let early = store
        .read_all(Checkpoint::START, 100)
        .await
        .expect("read_all");
    assert!(
        early.is_empty(),
        "delivered past an open transaction: {early:?}"
    );
    // Reading by position alone would have delivered it and moved past the
    // slow event's position for good.

    slow.commit().await.expect("commit");
    let events = read_until(&store, Checkpoint::START, 2).await;
    assert_eq!(
        events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [slow_position, fast.position]
    );
    assert_eq!(events[0].event_id, slow_id);
    assert!(events[0].checkpoint() < events[1].checkpoint());
    let again = store
        .read_all(events[1].checkpoint(), 100)
        .await
        .expect("read_all");
    assert!(again.is_empty(), "delivered twice: {again:?}");
    db.drop().await;
}

/// The converse: an older transaction (smaller id) writes a HIGHER position
/// than a younger one that already committed. It is delivered first, and
/// not skipped even though its position is above the other's.
#[tokio::test]
async fn an_older_transaction_committing_a_higher_position_is_not_skipped() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let (_, old_stream) = new_counter_stream();
    let (_, young_stream) = new_counter_stream();

    let mut old = db.pool.begin().await.expect("begin");
    let old_xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *old)
        .await
        .expect("xid");
    let young = store
        .append(
            &young_stream,
            ExpectedVersion::NoStream,
            &[added(1)],
            &Metadata::default(),
        )
        .await
        .expect("append");
    let (_, old_position) = insert_in(&mut old, &old_stream, 2).await;
    assert!(old_position > young.position);
    assert!(store
        .read_all(Checkpoint::START, 100)
        .await
        .expect("read")
        .is_empty());

    old.commit().await.expect("commit");
    let events = read_until(&store, Checkpoint::START, 2).await;
    assert_eq!(
        events.iter().map(|e| e.position).collect::<Vec<_>>(),
        [old_position, young.position],
        "(transaction id, position) order"
    );
    assert_eq!(events[0].transaction_id, old_xid as u64);
    db.drop().await;
}

/// Many writers append while a reader tails read_all in small batches: the
/// reader sees every event exactly once, and each stream's in version order.
#[tokio::test]
async fn a_concurrent_tail_sees_every_event_once_in_stream_order() {
    const WRITERS: usize = 8;
    const APPENDS: usize = 40;
    let db = TestDatabase::create().await;
    let pool = PgPoolOptions::new()
        .max_connections(WRITERS as u32 + 1)
        .connect(&db.url)
        .await
        .expect("pool");
    let store = EventStore::new(pool.clone());
    let streams: Vec<StreamId> = (0..3).map(|_| new_counter_stream().1).collect();

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (store, streams) = (store.clone(), streams.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..APPENDS {
                let stream = &streams[(writer + i) % streams.len()];
                let batch = [added(1), added(2)];
                store
                    .append(
                        stream,
                        ExpectedVersion::Any,
                        &batch[..1 + i % 2],
                        &Metadata::default(),
                    )
                    .await
                    .expect("append");
            }
        }));
    }
    let expected_total: usize = WRITERS * (0..APPENDS).map(|i| 1 + i % 2).sum::<usize>();

    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen: Vec<RecordedEvent> = Vec::new();
            let mut checkpoint = Checkpoint::START;
            let mut deadline = Deadline::after(DEADLINE, "the tail to make progress");
            while seen.len() < expected_total {
                let batch = store.read_all(checkpoint, 7).await.expect("read_all");
                match batch.last() {
                    Some(last) => {
                        assert!(last.checkpoint() > checkpoint);
                        checkpoint = last.checkpoint();
                        deadline = Deadline::after(DEADLINE, "the tail to make progress");
                    }
                    None => deadline.tick().await,
                }
                seen.extend(batch);
            }
            (seen, checkpoint)
        })
    };
    // Writers first: a failed append shows as itself, not as a stalled tail.
    for writer in writers {
        writer.await.expect("writer");
    }
    let (seen, checkpoint) = reader.await.expect("reader");

    assert_eq!(seen.len(), expected_total);
    let ids: HashSet<Uuid> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), expected_total, "no duplicates");
    assert!(seen
        .windows(2)
        .all(|w| w[0].checkpoint() < w[1].checkpoint()));
    let mut next_version: HashMap<&str, u64> = HashMap::new();
    for event in &seen {
        let next = next_version.entry(event.stream_id.as_str()).or_insert(1);
        assert_eq!(
            event.version, *next,
            "stream {} out of order",
            event.stream_id
        );
        *next += 1;
    }
    assert!(store
        .read_all(checkpoint, 100)
        .await
        .expect("read")
        .is_empty());
    pool.close().await;
    db.drop().await;
}

/// The relay's read: the events of `read_all`, in the same order, with each
/// payload as the stored JSON text; serialised, each one reads back as the
/// `RecordedEvent` that `read_all` returns.
#[tokio::test]
async fn read_all_raw_returns_the_same_events_with_the_stored_payload_text() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let payloads = [
        serde_json::json!({ "amount": 1 }),
        serde_json::json!({ "nested": { "list": [1, 2.5, null, true], "s": "quote \" and é" } }),
        serde_json::json!({}),
    ];
    for (n, payload) in payloads.iter().enumerate() {
        let (_, stream) = new_counter_stream();
        let event = event_store::NewEvent {
            payload: payload.clone(),
            ..added(1)
        };
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                &[event, added(2)],
                &crate::counter::metadata(&format!("corr-{n}")),
            )
            .await
            .expect("append");
    }
    let parsed = read_until(&store, Checkpoint::START, 6).await;

    let raw = store
        .read_all_raw(Checkpoint::START, 100)
        .await
        .expect("read_all_raw");
    assert_eq!(raw.len(), 6);
    for (raw, parsed) in raw.iter().zip(&parsed) {
        assert_eq!(raw.checkpoint(), parsed.checkpoint());
        let payload: serde_json::Value =
            serde_json::from_str(raw.payload.get()).expect("payload text is JSON");
        assert_eq!(payload, parsed.payload);
        let json = serde_json::to_vec(raw).expect("serialise");
        let back: RecordedEvent = serde_json::from_slice(&json).expect("reads back");
        assert_eq!(&back, parsed);
    }
    // Pages of the raw read follow the same order.
    let first = store
        .read_all_raw(Checkpoint::START, 4)
        .await
        .expect("page");
    let rest = store
        .read_all_raw(first.last().expect("page").checkpoint(), 4)
        .await
        .expect("page");
    let paged: Vec<Uuid> = first.iter().chain(&rest).map(|e| e.event_id).collect();
    let all: Vec<Uuid> = parsed.iter().map(|e| e.event_id).collect();
    assert_eq!(paged, all);

    // And a raw subscription delivers them too.
    let mut subscription = store.subscribe(Checkpoint::START);
    let batch = subscription
        .next_raw_batch(100)
        .await
        .expect("next_raw_batch");
    assert_eq!(batch.len(), 6);
    assert_eq!(subscription.checkpoint(), parsed[5].checkpoint());
    db.drop().await;
}

/// `read_all_of_types` returns only the events of the types asked for, in
/// the same global order as `read_all`, and pages with their checkpoints.
#[tokio::test]
async fn read_all_of_types_filters_and_keeps_the_global_order() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    for i in 0..6 {
        let stream_type = if i % 2 == 0 { "apple" } else { "pear" };
        let stream = StreamId::new(stream_type, Uuid::now_v7());
        let mut tx = db.pool.begin().await.expect("begin");
        insert_in(&mut tx, &stream, i).await;
        tx.commit().await.expect("commit");
    }
    let all = read_until(&store, Checkpoint::START, 6).await;
    let apples: Vec<i64> = all
        .iter()
        .filter(|e| e.stream_type == "apple")
        .map(|e| e.position)
        .collect();
    assert_eq!(apples.len(), 3);

    let mut seen = Vec::new();
    let mut after = Checkpoint::START;
    loop {
        let page = store
            .read_all_of_types(after, &["apple"], 2)
            .await
            .expect("read_all_of_types");
        let Some(last) = page.last() else { break };
        after = last.checkpoint();
        assert!(page.iter().all(|e| e.stream_type == "apple"));
        seen.extend(page.iter().map(|e| e.position));
    }
    assert_eq!(seen, apples);
    let both: Vec<i64> = store
        .read_all_of_types(Checkpoint::START, &["pear", "apple"], 10)
        .await
        .expect("read_all_of_types")
        .iter()
        .map(|e| e.position)
        .collect();
    let every: Vec<i64> = all.iter().map(|e| e.position).collect();
    assert_eq!(both, every);
    let none = store
        .read_all_of_types(Checkpoint::START, &["plum"], 10)
        .await
        .expect("read_all_of_types");
    assert!(none.is_empty());
    db.drop().await;
}
