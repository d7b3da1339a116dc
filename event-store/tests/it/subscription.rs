use std::time::Duration;

use event_store::{
    Appended, Checkpoint, EventStore, ExpectedVersion, Metadata, RecordedEvent, Subscription,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
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

/// `subscription` waiting in a task of its own for its next event: the
/// subscription and the event, once delivered.
fn next_one(
    mut subscription: Subscription,
) -> tokio::task::JoinHandle<(Subscription, Vec<RecordedEvent>)> {
    tokio::spawn(async move {
        let events = next_events(&mut subscription, 1).await;
        (subscription, events)
    })
}

/// One event appended by `store`, to a new stream.
async fn append_one(store: &EventStore) -> Appended {
    let (_, stream) = new_counter_stream();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            &[added(1)],
            &Metadata::default(),
        )
        .await
        .expect("append")
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
    let subscription = store
        .subscribe(Checkpoint::START)
        .with_poll_interval(Duration::from_secs(3600));

    let waiting = next_one(subscription);
    wait_for_listener(&store).await;
    let appended = append_one(&store).await;

    let (subscription, events) = waiting.await.expect("subscriber");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].position, appended.position);
    assert_eq!(subscription.checkpoint(), events[0].checkpoint());
    // It holds a pool connection (its listener) until dropped.
    drop(subscription);
    db.drop().await;
}

/// Waits until a read of the subscription found nothing to wait for: its
/// last query on `subscriber` (a pool of its own) asked whether any event
/// was behind an open transaction, and answered.
async fn wait_until_waiting(probe: &PgPool) {
    let deadline = Deadline::after(DEADLINE, "the subscription to wait");
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1 \
               AND state = 'idle' AND query LIKE 'SELECT EXISTS (SELECT 1 FROM event_store.events%'",
        )
        .bind(SUBSCRIBER)
        .fetch_one(probe)
        .await
        .expect("pg_stat_activity");
        if waiting > 0 {
            return;
        }
        deadline.tick().await;
    }
}

const SUBSCRIBER: &str = "purser-subscription-test";

/// An append by another `EventStore` of the same process (another pool on
/// the same database: the Command API's and the relay's in `purser serve`)
/// wakes the subscription at once, without the `pg_notify`: the appender's
/// pool is closed right after its append, so its notification never goes
/// out (the notifier gives up on a closed pool), and polling is too slow to
/// matter.
#[tokio::test]
async fn a_subscription_is_woken_by_an_append_of_its_process_without_a_notification() {
    let db = TestDatabase::create().await;
    let options: PgConnectOptions = db.url.parse().expect("url");
    let subscriber_pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.clone().application_name(SUBSCRIBER))
        .await
        .expect("subscriber pool");
    let appender_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("appender pool");
    let appender = EventStore::new(appender_pool.clone());
    let subscription = EventStore::new(subscriber_pool.clone())
        .subscribe(Checkpoint::START)
        .with_poll_interval(Duration::from_secs(3600));
    let waiting = next_one(subscription);
    wait_until_waiting(&db.pool).await;

    let appended = append_one(&appender).await;
    // Before the notifier's task first runs (this test's runtime has one
    // thread, and nothing was awaited since the append).
    let closing = appender_pool.close();
    closing.await;

    let (subscription, events) = waiting.await.expect("subscriber");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].position, appended.position);
    drop(subscription);
    subscriber_pool.close().await;
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
