use std::time::Duration;

use event_store::{Checkpoint, EventStore, ExpectedVersion, Metadata, RecordedEvent, Subscription};
use test_support::TestDatabase;

use crate::counter::{added, new_counter_stream};
use test_support::Deadline;

/// Generous: other tests' transactions on the server can hold events back.
const DEADLINE: Duration = Duration::from_secs(20);

async fn next_events(subscription: &mut Subscription, count: usize) -> Vec<RecordedEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        let batch = tokio::time::timeout(DEADLINE, subscription.next_batch(100))
            .await
            .expect("the subscription delivered in time")
            .expect("next_batch");
        assert!(!batch.is_empty());
        events.extend(batch);
    }
    events
}

/// Waits until a backend of this database listens for appends.
async fn wait_for_listener(store: &EventStore) {
    let deadline = Deadline::after(DEADLINE, "the subscription to LISTEN");
    loop {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(store.pool())
        .await
        .expect("pg_stat_activity");
        if listening > 0 {
            return;
        }
        deadline.tick().await;
    }
}

/// With polling made too slow to matter, only the notification can deliver
/// a new event before the deadline.
#[tokio::test]
async fn a_subscription_is_woken_by_a_new_event() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let (_, stream) = new_counter_stream();
    let mut subscription = store
        .subscribe(Checkpoint::START)
        .with_poll_interval(Duration::from_secs(3600));

    let waiting = tokio::spawn(async move {
        let events = next_events(&mut subscription, 1).await;
        (subscription, events)
    });
    wait_for_listener(&store).await;
    let appended = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            &[added(1)],
            &Metadata::default(),
        )
        .await
        .expect("append");

    let (subscription, events) = waiting.await.expect("subscriber");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].position, appended.position);
    assert_eq!(subscription.checkpoint(), events[0].checkpoint());
    // It holds a pool connection (its listener) until dropped.
    drop(subscription);
    db.drop().await;
}

#[tokio::test]
async fn a_subscription_resumes_from_its_saved_checkpoint() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let (_, stream) = new_counter_stream();
    assert_eq!(
        store.load_checkpoint("projector").await.expect("load"),
        Checkpoint::START
    );

    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            &[added(1), added(2), added(3)],
            &Metadata::default(),
        )
        .await
        .expect("append");
    let mut first = store.subscribe(store.load_checkpoint("projector").await.expect("load"));
    let seen = next_events(&mut first, 3).await;
    assert_eq!(
        seen.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    store
        .save_checkpoint("projector", first.checkpoint())
        .await
        .expect("save");
    drop(first);

    store
        .append(
            &stream,
            ExpectedVersion::Exact(3),
            &[added(4), added(5)],
            &Metadata::default(),
        )
        .await
        .expect("append more");

    // "Restart": a new subscription from the persisted checkpoint.
    let saved = store.load_checkpoint("projector").await.expect("load");
    assert_eq!(saved, seen[2].checkpoint());
    let mut second = store.subscribe(saved);
    let resumed = next_events(&mut second, 2).await;
    assert_eq!(
        resumed.iter().map(|e| e.version).collect::<Vec<_>>(),
        [4, 5]
    );
    assert!(store
        .read_all(second.checkpoint(), 100)
        .await
        .expect("read")
        .is_empty());

    store
        .save_checkpoint("projector", second.checkpoint())
        .await
        .expect("overwrite");
    assert_eq!(
        store.load_checkpoint("projector").await.expect("load"),
        resumed[1].checkpoint()
    );
    assert_eq!(
        store.load_checkpoint("other").await.expect("load"),
        Checkpoint::START
    );
    db.drop().await;
}
