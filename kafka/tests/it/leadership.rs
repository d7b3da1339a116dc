//! One active relay at a time: the relay lock (a PostgreSQL advisory lock)
//! chooses it, standbys take over when it stops, dies or loses its lock
//! connection, and the consumers see every event in per-stream order.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_store::{EventStore, RecordedEvent, StreamId};
use kafka::{Delivered, EventConsumer, KafkaConfig, Relay, RelayOptions, RelayRole};
use test_support::eventually;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::{append, consume_ids, locate_on_broker, setup, try_consume_ids, DEADLINE};
use test_support::store::all_events;

/// How long a standby may take to become active.
const TAKEOVER: Duration = Duration::from_secs(20);

/// A relay running in a task, with every role it went through.
struct Running {
    role: watch::Receiver<RelayRole>,
    history: Arc<Mutex<Vec<RelayRole>>>,
    stop: CancellationToken,
    task: Option<JoinHandle<kafka::Result<()>>>,
}

impl Running {
    fn start(store: &EventStore, config: &KafkaConfig) -> Running {
        let options = RelayOptions {
            batch_size: 7,
            delivery_timeout_ms: 10_000,
            idle_wait_ms: 200,
            ..RelayOptions::default()
        };
        let relay = Relay::with_options(store.clone(), config.clone(), options).expect("relay");
        let role = relay.role();
        let history = Arc::new(Mutex::new(vec![*role.borrow()]));
        let mut watcher = relay.role();
        let seen = history.clone();
        tokio::spawn(async move {
            while watcher.changed().await.is_ok() {
                let now = *watcher.borrow_and_update();
                seen.lock().unwrap().push(now);
            }
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(relay.run(stop.clone()));
        Running {
            role,
            history,
            stop,
            task: Some(task),
        }
    }

    /// Asks the relay to stop and waits until it has.
    async fn stop(&mut self) {
        self.stop.cancel();
        let task = self.task.take().expect("running");
        task.await.expect("join").expect("relay");
    }

    /// Drops the relay mid-step, as if its process were killed.
    async fn kill(&mut self) {
        let task = self.task.take().expect("running");
        task.abort();
        assert!(task.await.expect_err("aborted").is_cancelled());
    }

    fn is(&self, role: RelayRole) -> bool {
        *self.role.borrow() == role
    }

    fn was_ever(&self, role: RelayRole) -> bool {
        self.history.lock().unwrap().contains(&role)
    }

    async fn wait_for(&self, role: RelayRole, what: &str) {
        eventually(what, TAKEOVER, Duration::from_millis(20), || async {
            if self.is(role) {
                Ok(())
            } else {
                Err(format!("{:?}", *self.role.borrow()))
            }
        })
        .await
    }
}

/// Two relays on one store; returns them active first.
async fn two_relays(store: &EventStore, config: &KafkaConfig) -> (Running, Running) {
    let first = Running::start(store, config);
    first
        .wait_for(RelayRole::Active, "the first relay to be active")
        .await;
    let second = Running::start(store, config);
    second
        .wait_for(RelayRole::Standby, "the second relay to stand by")
        .await;
    (first, second)
}

fn streams(count: usize) -> Vec<StreamId> {
    (0..count)
        .map(|n| match n % 3 {
            0 => StreamId::new("account", Uuid::new_v4()),
            1 => StreamId::new("order", Uuid::new_v4()),
            _ => StreamId::new("inventory", format!("SKU-{}", Uuid::new_v4().simple())),
        })
        .collect()
}

/// How far the writer may get ahead of the relay: events stored after the
/// relay's saved checkpoint. Without a bound the writer outruns a relay of
/// 7-event batches on a loaded machine (thousands of events stored while
/// the relay publishes a few hundred) and the consumer's deadline expires
/// on events that are merely not relayed yet.
const MAX_BACKLOG: i64 = 100;

/// Appends events round-robin to `streams` until `stop` is cancelled,
/// keeping at most [`MAX_BACKLOG`] events ahead of the relay's checkpoint
/// (it waits meanwhile, up to [`DEADLINE`]: no relay making progress for
/// that long fails the test).
fn keep_appending(
    store: &EventStore,
    streams: Vec<StreamId>,
    stop: CancellationToken,
) -> JoinHandle<usize> {
    let store = store.clone();
    tokio::spawn(async move {
        let mut appended = 0;
        for stream in streams.iter().cycle() {
            if stop.is_cancelled() {
                break;
            }
            eventually(
                "the relay to keep up with the writer",
                DEADLINE,
                Duration::from_millis(20),
                || async {
                    let backlog = backlog(&store).await;
                    if backlog < MAX_BACKLOG || stop.is_cancelled() {
                        Ok(())
                    } else {
                        Err(backlog)
                    }
                },
            )
            .await;
            if stop.is_cancelled() {
                break;
            }
            append(&store, stream, 2).await;
            appended += 2;
        }
        appended
    })
}

/// Events stored after the relay's saved checkpoint (by position).
async fn backlog(store: &EventStore) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(max(e.position), 0) - coalesce( \
           (SELECT c.position FROM event_store.checkpoints c WHERE c.name = $1), 0) \
         FROM event_store.events e",
    )
    .bind(kafka::CHECKPOINT_NAME)
    .fetch_one(store.pool())
    .await
    .expect("backlog")
}

/// Every stored event was delivered, and each stream's events arrived in
/// order once duplicates (at-least-once) are dropped as a consumer drops
/// them: a version at or below the highest seen is a duplicate, anything
/// else must be the next one.
fn assert_complete_and_in_order(stored: &[RecordedEvent], delivered: &[Delivered]) {
    let expected: HashMap<&str, u64> = stored.iter().fold(HashMap::new(), |mut last, e| {
        let v = last.entry(e.stream_id.as_str()).or_insert(0);
        *v = (*v).max(e.version);
        last
    });
    let mut applied: HashMap<&str, u64> = HashMap::new();
    for d in delivered {
        let last = applied.entry(d.event.stream_id.as_str()).or_insert(0);
        if d.event.version <= *last {
            continue;
        }
        assert_eq!(
            d.event.version,
            *last + 1,
            "stream {} skipped from version {} to {}",
            d.event.stream_id,
            last,
            d.event.version
        );
        *last = d.event.version;
    }
    for (stream, version) in expected {
        assert_eq!(
            applied.get(stream),
            Some(&version),
            "stream {stream} incomplete"
        );
    }
}

fn ids(events: &[RecordedEvent]) -> HashSet<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

/// The ids of `stored` events not among `delivered`.
fn not_yet(stored: &[RecordedEvent], delivered: &[Delivered]) -> HashSet<Uuid> {
    let seen: HashSet<Uuid> = delivered.iter().map(|d| d.event.event_id).collect();
    ids(stored).difference(&seen).copied().collect()
}

/// [`consume_ids`], telling on a timeout whether the missing events were
/// lost (at or before the relay's saved checkpoint, yet not on the broker)
/// or not relayed yet (after it), and where on the broker the others are.
async fn consume(
    consumer: &EventConsumer,
    config: &KafkaConfig,
    store: &EventStore,
    wanted: &HashSet<Uuid>,
) -> Vec<Delivered> {
    let missing = match try_consume_ids(consumer, wanted).await {
        Ok(delivered) => return delivered,
        Err(missing) => missing,
    };
    let checkpoint = store
        .load_checkpoint(kafka::CHECKPOINT_NAME)
        .await
        .expect("checkpoint");
    let located = locate_on_broker(config, kafka::STREAM_TYPES, &missing.ids).await;
    let stored = all_events(store).await;
    let (relayed, not_yet): (Vec<&RecordedEvent>, Vec<&RecordedEvent>) = stored
        .iter()
        .filter(|e| missing.ids.contains(&e.event_id))
        .partition(|e| e.checkpoint() <= checkpoint);
    let lost: Vec<(i64, &str, u64)> = relayed
        .iter()
        .filter(|e| !located.found.contains(&e.event_id))
        .map(|e| (e.position, e.stream_id.as_str(), e.version))
        .collect();
    panic!(
        "{}; the relay's checkpoint is {checkpoint:?}: {} missing events are after it \
         (not relayed yet), {} at or before it, of which {} are not on the broker \
         (lost: {lost:?}); {}",
        missing.message,
        not_yet.len(),
        relayed.len(),
        lost.len(),
        located.description
    )
}

fn consumer(config: &KafkaConfig) -> EventConsumer {
    let group = format!("{}.leadership", config.topic_prefix);
    EventConsumer::new(config, &group, kafka::STREAM_TYPES).expect("consumer")
}

#[tokio::test]
async fn only_the_relay_holding_the_lock_publishes_and_a_standby_takes_over_when_it_stops() {
    let (_db, store, config) = setup().await;
    let streams = streams(6);
    for stream in &streams {
        append(&store, stream, 5).await;
    }
    let (mut first, mut second) = two_relays(&store, &config).await;

    // Everything arrives exactly once: the standby published nothing.
    let stored = all_events(&store).await;
    let consumer = consumer(&config);
    let delivered = consume_ids(&consumer, &ids(&stored)).await;
    assert_eq!(delivered.len(), stored.len(), "one relay, no duplicates");
    assert!(second.is(RelayRole::Standby));
    assert!(
        !second.was_ever(RelayRole::Active),
        "the standby never became active"
    );
    assert!(first.is(RelayRole::Active));

    // The active relay stops; the standby takes over and publishes the rest.
    first.stop().await;
    assert!(first.is(RelayRole::Stopped));
    second
        .wait_for(RelayRole::Active, "the standby to take over")
        .await;
    for stream in &streams {
        append(&store, stream, 3).await;
    }
    let stored = all_events(&store).await;
    let mut everything = delivered;
    everything.extend(consume_ids(&consumer, &ids(&stored[30..])).await);
    assert_complete_and_in_order(&stored, &everything);

    second.stop().await;
}

#[tokio::test]
async fn when_the_active_relay_dies_under_load_the_standby_takes_over_and_nothing_is_lost() {
    let (_db, store, config) = setup().await;
    let (mut first, mut second) = two_relays(&store, &config).await;
    let consumer = consumer(&config);
    let writing = CancellationToken::new();
    let writer = keep_appending(&store, streams(9), writing.clone());

    // Some events are relayed, then the active relay dies: its task is
    // dropped mid-step, as a killed process would stop.
    let first_events = eventually(
        "some events to be stored",
        TAKEOVER,
        Duration::from_millis(20),
        || async {
            let events = store
                .read_all(event_store::Checkpoint::START, 100)
                .await
                .expect("read");
            if events.len() >= 40 {
                Ok(events)
            } else {
                Err(events.len())
            }
        },
    )
    .await;
    let mut delivered = consume(&consumer, &config, &store, &ids(&first_events)).await;
    first.kill().await;
    second
        .wait_for(RelayRole::Active, "the standby to take over")
        .await;

    // The writer goes on a little longer, then every event must arrive.
    let before = all_events(&store).await.len();
    eventually(
        "more events after the takeover",
        TAKEOVER,
        Duration::from_millis(20),
        || async {
            let now = all_events(&store).await.len();
            if now >= before + 40 {
                Ok(())
            } else {
                Err(now)
            }
        },
    )
    .await;
    writing.cancel();
    let appended = writer.await.expect("writer");
    let stored = all_events(&store).await;
    assert_eq!(stored.len(), appended);
    delivered.extend(consume(&consumer, &config, &store, &not_yet(&stored, &delivered)).await);
    assert_complete_and_in_order(&stored, &delivered);

    second.stop().await;
}

/// The backend holding the relay lock in `store`'s database.
async fn lock_holder(store: &EventStore) -> i32 {
    sqlx::query_scalar(
        "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() \
           AND l.classid::bigint = ($1 >> 32) AND l.objid::bigint = ($1 & 4294967295)",
    )
    .bind(kafka::RELAY_LOCK_KEY)
    .fetch_one(store.pool())
    .await
    .expect("the relay lock is held")
}

#[tokio::test]
async fn a_relay_whose_lock_connection_drops_stops_publishing_and_another_takes_over() {
    let (_db, store, config) = setup().await;
    let (first, second) = two_relays(&store, &config).await;
    let consumer = consumer(&config);
    let writing = CancellationToken::new();
    let writer = keep_appending(&store, streams(9), writing.clone());
    let early = eventually(
        "some events to be stored",
        TAKEOVER,
        Duration::from_millis(20),
        || async {
            let events = store
                .read_all(event_store::Checkpoint::START, 100)
                .await
                .expect("read");
            if events.len() >= 40 {
                Ok(events)
            } else {
                Err(events.len())
            }
        },
    )
    .await;
    let mut delivered = consume(&consumer, &config, &store, &ids(&early)).await;

    // The server ends the active relay's lock session: that relay stands
    // by at once, and a relay (either: both compete) becomes active again.
    let holder = lock_holder(&store).await;
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(holder)
        .fetch_one(store.pool())
        .await
        .expect("terminate");
    assert!(terminated);
    first
        .wait_for(
            RelayRole::Standby,
            "the relay that lost its lock to stand by",
        )
        .await;
    eventually(
        "a relay to be active again",
        TAKEOVER,
        Duration::from_millis(20),
        || async {
            let active = [&first, &second]
                .iter()
                .filter(|r| r.is(RelayRole::Active))
                .count();
            if active == 1 {
                Ok(())
            } else {
                Err(active)
            }
        },
    )
    .await;
    assert_ne!(lock_holder(&store).await, holder);

    writing.cancel();
    let appended = writer.await.expect("writer");
    let stored = all_events(&store).await;
    assert_eq!(stored.len(), appended);
    delivered.extend(consume(&consumer, &config, &store, &not_yet(&stored, &delivered)).await);
    assert_complete_and_in_order(&stored, &delivered);

    for mut relay in [first, second] {
        relay.stop().await;
    }
}
