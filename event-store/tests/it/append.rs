use std::sync::Arc;

use event_store::{
    Error, EventStore, ExpectedVersion, Metadata, NewEvent, StreamAppend, StreamId, StreamsRejected,
};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use test_support::TestDatabase;
use tokio::sync::Barrier;

use crate::counter::{added, metadata, new_counter_stream};
use test_support::store::event_count;

#[tokio::test]
async fn appends_get_contiguous_versions_and_read_back_in_order() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let (_, stream) = new_counter_stream();

    let first = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            &[added(1), added(2), added(3)],
            &metadata("c-1"),
        )
        .await
        .expect("first append");
    assert_eq!(first.version, 3);
    let second = store
        .append(
            &stream,
            ExpectedVersion::Exact(3),
            &[added(4), added(5)],
            &Metadata::default(),
        )
        .await
        .expect("second append");
    assert_eq!(second.version, 5);
    assert!(second.position > first.position);
    assert_eq!(store.head_position().await.expect("head"), second.position);

    let events = store.read_stream(&stream, 1).await.expect("read");
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    let amounts: Vec<_> = events.iter().map(|e| e.payload["amount"].clone()).collect();
    assert_eq!(amounts, [json!(1), json!(2), json!(3), json!(4), json!(5)]);
    assert!(events.windows(2).all(|w| w[0].position < w[1].position));
    let first_event = &events[0];
    assert_eq!(first_event.stream_id, stream.to_string());
    assert_eq!(first_event.stream_type, "counter");
    assert_eq!(first_event.event_type, "Added");
    assert_eq!(first_event.schema_version, 2);
    assert_eq!(first_event.metadata, metadata("c-1"));
    assert_eq!(events[3].metadata, Metadata::default());
    assert_eq!(events[2].position, first.position);
    assert_eq!(events[4].position, second.position);

    let tail = store.read_stream(&stream, 4).await.expect("read tail");
    assert_eq!(tail.iter().map(|e| e.version).collect::<Vec<_>>(), [4, 5]);
    assert!(store
        .read_stream(&stream, 6)
        .await
        .expect("read past end")
        .is_empty());

    let any = store
        .append(
            &stream,
            ExpectedVersion::Any,
            &[added(6)],
            &Metadata::default(),
        )
        .await
        .expect("append any");
    assert_eq!(any.version, 6);
    db.drop().await;
}

#[tokio::test]
async fn a_failed_expectation_is_a_conflict_with_the_actual_version() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let (_, stream) = new_counter_stream();

    let err = store
        .append(
            &stream,
            ExpectedVersion::Exact(1),
            &[added(1)],
            &Metadata::default(),
        )
        .await
        .expect_err("stream is empty");
    assert!(
        matches!(&err, Error::Conflict { expected: ExpectedVersion::Exact(1), actual: 0, stream: s } if *s == stream.to_string()),
        "{err:?}"
    );

    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            &[added(1), added(2)],
            &Metadata::default(),
        )
        .await
        .expect("create stream");
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(1),
        ExpectedVersion::Exact(3),
        ExpectedVersion::Exact(7),
        ExpectedVersion::Exact(u64::MAX),
    ] {
        // A single event and a batch take different statements.
        for batch in [vec![added(9)], vec![added(9), added(10)]] {
            let err = store
                .append(&stream, expected, &batch, &Metadata::default())
                .await
                .expect_err("wrong expectation");
            assert!(
                matches!(err, Error::Conflict { expected: e, actual: 2, .. } if e == expected),
                "{err:?}"
            );
        }
    }
    assert_eq!(store.read_stream(&stream, 1).await.expect("read").len(), 2);
    assert!(matches!(
        store
            .append(&stream, ExpectedVersion::Any, &[], &Metadata::default())
            .await,
        Err(Error::NoEvents)
    ));
    db.drop().await;
}

/// 16 writers race for each version of one stream: exactly one wins each
/// round, the others get a conflict and write nothing.
#[tokio::test]
async fn sixteen_concurrent_appenders_race_for_each_version() {
    const WRITERS: usize = 16;
    const ROUNDS: u64 = 6;
    let db = TestDatabase::create().await;
    // One connection per writer, so they really run at once.
    let pool = PgPoolOptions::new()
        .max_connections(WRITERS as u32)
        .connect(&db.url)
        .await
        .expect("pool");
    let store = EventStore::new(pool.clone());
    let (_, stream) = new_counter_stream();

    let mut winners = Vec::new();
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(WRITERS));
        let mut writers = Vec::new();
        for writer in 0..WRITERS {
            let (store, stream, barrier) = (store.clone(), stream.clone(), barrier.clone());
            writers.push(tokio::spawn(async move {
                let event = NewEvent::from_domain(&crate::counter::CounterEvent::Added {
                    amount: writer as i64,
                });
                let event_id = event.event_id;
                barrier.wait().await;
                let result = store
                    .append(
                        &stream,
                        ExpectedVersion::Exact(round),
                        &[event],
                        &Metadata::default(),
                    )
                    .await;
                (event_id, result)
            }));
        }
        let mut won = Vec::new();
        for writer in writers {
            let (event_id, result) = writer.await.expect("writer task");
            match result {
                Ok(appended) => {
                    assert_eq!(appended.version, round + 1);
                    won.push(event_id);
                }
                Err(Error::Conflict {
                    expected, actual, ..
                }) => {
                    assert_eq!(expected, ExpectedVersion::Exact(round));
                    assert_eq!(actual, round + 1, "a loser sees the winner's version");
                }
                Err(other) => panic!("unexpected error: {other:?}"),
            }
        }
        assert_eq!(won.len(), 1, "round {round}: exactly one winner");
        winners.push(won[0]);
    }

    let events = store.read_stream(&stream, 1).await.expect("read");
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=ROUNDS).collect::<Vec<_>>()
    );
    assert_eq!(
        events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        winners
    );
    assert_eq!(
        event_count(&store).await,
        ROUNDS as i64,
        "losers wrote nothing"
    );
    pool.close().await;
    db.drop().await;
}

#[tokio::test]
async fn a_multi_event_append_is_all_or_nothing() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let (_, taken) = new_counter_stream();
    let existing = added(1);
    store
        .append(
            &taken,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&existing),
            &Metadata::default(),
        )
        .await
        .expect("first event");

    // The third event of the batch reuses a stored event id: the whole
    // batch fails, the first two included.
    let (_, stream) = new_counter_stream();
    let err = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            &[added(2), added(3), existing.clone(), added(4)],
            &Metadata::default(),
        )
        .await
        .expect_err("duplicate event id");
    assert!(
        matches!(err, Error::DuplicateEventId(id) if id == existing.event_id),
        "{err:?}"
    );
    assert!(store
        .read_stream(&stream, 1)
        .await
        .expect("read")
        .is_empty());

    // A batch against a stale version writes none of its events.
    let err = store
        .append(
            &taken,
            ExpectedVersion::NoStream,
            &[added(5), added(6), added(7)],
            &Metadata::default(),
        )
        .await
        .expect_err("stale");
    assert!(matches!(err, Error::Conflict { actual: 1, .. }), "{err:?}");
    assert_eq!(event_count(&store).await, 1);

    // A batch whose later version is taken by a concurrent, uncommitted
    // writer: it waits, then fails as a whole once the writer commits.
    let mut writer = db.pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO event_store.events \
         (event_id, stream_type, stream_id, version, event_type, schema_version, payload) \
         VALUES ($1, 'counter', $2, 2, 'Added', 2, '{\"amount\": 100}')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(taken.to_string())
    .execute(&mut *writer)
    .await
    .expect("concurrent insert");
    let racing = {
        let (store, taken) = (store.clone(), taken.clone());
        tokio::spawn(async move {
            store
                .append(
                    &taken,
                    ExpectedVersion::Exact(1),
                    &[added(8), added(9)],
                    &Metadata::default(),
                )
                .await
        })
    };
    test_support::store::wait_for_lock_waiter(&store).await;
    writer.commit().await.expect("commit");
    let err = racing.await.expect("task").expect_err("lost the race");
    assert!(matches!(err, Error::Conflict { actual: 2, .. }), "{err:?}");
    let events = store.read_stream(&taken, 1).await.expect("read");
    assert_eq!(
        events
            .iter()
            .map(|e| e.payload["amount"].clone())
            .collect::<Vec<_>>(),
        [json!(1), json!(100)]
    );
    db.drop().await;
}

/// Appends to several streams commit together or not at all; a rejected
/// one rolls the transaction back and releases its connection before the
/// actual version is read (a pool of one connection is enough).
#[tokio::test]
async fn appends_to_several_streams_commit_together_or_not_at_all() {
    let db = TestDatabase::create().await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .expect("pool of one");
    let store = EventStore::new(pool);
    let (_, first) = new_counter_stream();
    let (_, second) = new_counter_stream();
    let meta = Metadata::default();

    let mut appends = store.begin().await.expect("begin");
    appends
        .append(&first, ExpectedVersion::NoStream, &[added(1)], &meta)
        .await
        .expect("first");
    appends
        .append(
            &second,
            ExpectedVersion::NoStream,
            &[added(2), added(3)],
            &meta,
        )
        .await
        .expect("second");
    // Not committed yet: nothing to see (on another connection).
    let outside = EventStore::new(db.pool.clone());
    assert!(outside
        .read_stream(&first, 1)
        .await
        .expect("read")
        .is_empty());
    appends.commit().await.expect("commit");
    assert_eq!(outside.read_stream(&first, 1).await.expect("read").len(), 1);
    assert_eq!(
        outside.read_stream(&second, 1).await.expect("read").len(),
        2
    );

    // The second stream is not at version 1: neither append commits.
    let mut appends = store.begin().await.expect("begin");
    appends
        .append(&first, ExpectedVersion::Exact(1), &[added(4)], &meta)
        .await
        .expect("first again");
    let rejected = appends
        .append(&second, ExpectedVersion::Exact(1), &[added(5)], &meta)
        .await
        .expect_err("second is at 2");
    assert!(
        matches!(rejected, Error::Conflict { actual: 2, .. }),
        "{rejected:?}"
    );
    assert!(matches!(appends.commit().await, Err(Error::RolledBack)));
    assert_eq!(store.read_stream(&first, 1).await.expect("read").len(), 1);
    assert_eq!(store.read_stream(&second, 1).await.expect("read").len(), 2);
    db.drop().await;
}

/// One stream's part of an `append_to_streams`: the stream, its expected
/// version and its events.
type Part<'a> = (&'a StreamId, u64, &'a [(&'a NewEvent, &'a Metadata)]);

/// The [`StreamAppend`]s of `parts`.
fn streams<'a>(parts: &[Part<'a>]) -> Vec<StreamAppend<'a>> {
    parts
        .iter()
        .map(|&(stream, expected, events)| StreamAppend {
            stream,
            expected,
            events,
        })
        .collect()
}

/// Rejected: the second of two streams, found at version 1, and it alone.
fn assert_only_the_second_at_1(rejected: &StreamsRejected) {
    assert!(
        matches!(rejected, StreamsRejected::Conflicts(conflicts)
            if matches!(conflicts.as_slice(), [(1, Error::Conflict { actual: 1, .. })])),
        "{rejected:?}"
    );
}

/// Several streams in one statement: all of them or nothing, each stream's
/// events at its own version with their own metadata; a stream not at its
/// expected version is named, and the transaction can go on without it
/// (a pool of one connection is enough).
#[tokio::test]
async fn appends_to_several_streams_in_one_statement_all_or_nothing() {
    let db = TestDatabase::create().await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .expect("pool of one");
    let store = EventStore::new(pool);
    let (_, first) = new_counter_stream();
    let (_, second) = new_counter_stream();
    let (one, two) = (metadata("one"), metadata("two"));
    let (a, b, c) = (added(1), added(2), added(3));
    store
        .append(&second, ExpectedVersion::NoStream, &[added(10)], &one)
        .await
        .expect("second at 1");

    // The second stream is at 1, not 0: nothing of either is written.
    let mut appends = store.begin().await.expect("begin");
    let stale = appends
        .append_to_streams(&streams(&[
            (&first, 0, &[(&a, &one)]),
            (&second, 0, &[(&b, &one)]),
        ]))
        .await
        .expect_err("second is at 1");
    assert_only_the_second_at_1(&stale);
    // The same transaction, without the stale stream.
    let appended = appends
        .append_to_streams(&streams(&[
            (&first, 0, &[(&a, &one), (&b, &two)]),
            (&second, 1, &[(&c, &two)]),
        ]))
        .await
        .expect("both");
    assert_eq!(
        appended.iter().map(|a| a.version).collect::<Vec<_>>(),
        [2, 2]
    );
    appends.commit().await.expect("commit");
    let read = store.read_stream(&first, 1).await.expect("read");
    assert_eq!(
        read.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        [a.event_id, b.event_id]
    );
    assert_eq!(
        read.iter()
            .map(|e| e.metadata.correlation_id.clone())
            .collect::<Vec<_>>(),
        [Some("one".to_owned()), Some("two".to_owned())]
    );
    assert_eq!(read[1].position, appended[0].position);
    let read = store.read_stream(&second, 1).await.expect("read");
    assert_eq!(read.len(), 2);
    assert_eq!(read[1].position, appended[1].position);
    db.drop().await;
}

/// The same statement on its own: committed as it ends (seen from another
/// connection), or nothing written when a stream moved on.
#[tokio::test]
async fn appends_to_several_streams_in_a_statement_of_its_own() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let (_, first) = new_counter_stream();
    let (_, second) = new_counter_stream();
    let meta = metadata("one");
    let (a, b, c) = (added(1), added(2), added(3));
    let appended = store
        .append_to_streams(&streams(&[
            (&first, 0, &[(&a, &meta)]),
            (&second, 0, &[(&b, &meta)]),
        ]))
        .await
        .expect("both");
    assert_eq!(
        appended.iter().map(|a| a.version).collect::<Vec<_>>(),
        [1, 1]
    );
    let outside = EventStore::new(db.pool.clone());
    assert_eq!(
        outside.read_stream(&second, 1).await.expect("read").len(),
        1
    );

    let stale = store
        .append_to_streams(&streams(&[
            (&first, 1, &[(&c, &meta)]),
            (&second, 0, &[(&c, &meta)]),
        ]))
        .await
        .expect_err("second is at 1");
    assert_only_the_second_at_1(&stale);
    assert_eq!(store.read_stream(&first, 1).await.expect("read").len(), 1);
    db.drop().await;
}
