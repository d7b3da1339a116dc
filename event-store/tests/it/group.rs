//! Group commit: commands that reach one store together are appended by one
//! statement, each with its own version check and idempotency record, and
//! each gets its own answer; a group whose statement fails as a whole (a
//! writer elsewhere in flight on one of its versions) is appended again one
//! command at a time, and still every command gets its own right answer.

use std::time::Duration;

use event_store::{
    EventStore, ExecuteOptions, Executed, GroupCommitConfig, GroupCommitMetrics, IdempotencyKey,
    Repository, StreamId,
};
use sqlx::PgPool;
use test_support::store::wait_for_lock_waiter;
use test_support::{eventually, TestDatabase};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::counter::{record, Counter, CounterCommand, CounterError, CounterRecord};

type Answer = Result<
    Executed<Counter, CounterRecord>,
    event_store::ExecuteError<crate::counter::CounterError>,
>;

/// One writer, so that commands queue behind a blocked group.
fn grouped(db: &TestDatabase, metrics: &GroupCommitMetrics) -> Repository<Counter> {
    let config = GroupCommitConfig {
        max_size: 64,
        max_wait: Duration::ZERO,
        writers: 1,
    };
    Repository::new(EventStore::new(db.pool.clone()).with_group_commit(config, metrics))
}

fn metric(metrics: &GroupCommitMetrics, name: &str) -> f64 {
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry, "test");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .expect("a number")
}

async fn wait_queued(metrics: &GroupCommitMetrics, count: f64) {
    eventually(
        "commands queued",
        Duration::from_secs(20),
        Duration::from_millis(5),
        || async {
            let queued = metric(metrics, "test_group_commit_queued");
            if queued == count {
                Ok(())
            } else {
                Err(format!("{queued} queued"))
            }
        },
    )
    .await;
}

/// An uncommitted event `version` of counter `id` (an `Opened` at 1, an
/// `Added` of 100 after), in a transaction of its own.
async fn in_flight(
    pool: &PgPool,
    id: &str,
    version: i64,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    let (event_type, schema, payload) = if version == 1 {
        ("Opened", 1, "{}")
    } else {
        ("Added", 2, "{\"amount\": 100}")
    };
    sqlx::query(
        "INSERT INTO event_store.events \
         (event_id, stream_type, stream_id, version, event_type, schema_version, payload) \
         VALUES ($1, 'counter', $2, $3, $4, $5, $6::jsonb)",
    )
    .bind(Uuid::now_v7())
    .bind(StreamId::of::<Counter>(id).to_string())
    .bind(version)
    .bind(event_type)
    .bind(schema)
    .bind(payload)
    .execute(&mut *tx)
    .await
    .expect("in-flight insert");
    tx
}

fn spawn(
    repo: &Repository<Counter>,
    id: &str,
    command: CounterCommand,
    options: ExecuteOptions,
) -> JoinHandle<Answer> {
    let (repo, id) = (repo.clone(), id.to_owned());
    tokio::spawn(async move { repo.execute(&id, &command, options, record).await })
}

fn keyed(key: &str) -> ExecuteOptions {
    ExecuteOptions {
        idempotency: Some(IdempotencyKey::new("test", key, "fingerprint")),
        ..ExecuteOptions::default()
    }
}

async fn count(pool: &PgPool, id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM event_store.events WHERE stream_id = $1")
        .bind(StreamId::of::<Counter>(id).to_string())
        .fetch_one(pool)
        .await
        .expect("count")
}

fn done(answer: Answer) -> (i64, u64, Option<i64>) {
    match answer {
        Ok(Executed::Done(outcome)) => (outcome.state.total, outcome.version, outcome.position),
        other => panic!("expected Done, got {other:?}"),
    }
}

#[tokio::test]
async fn a_command_alone_skips_the_queue_and_those_arriving_meanwhile_group() {
    let db = TestDatabase::create().await;
    let metrics = GroupCommitMetrics::new();
    // Groups of two, waiting for the second as long as it takes while
    // something is in flight: the pair below forms whatever the timing.
    let config = GroupCommitConfig {
        max_size: 2,
        max_wait: Duration::from_secs(60),
        writers: 1,
    };
    let repo = Repository::<Counter>::new(
        EventStore::new(db.pool.clone()).with_group_commit(config, &metrics),
    );
    let [first, second, third] = std::array::from_fn(|_| Uuid::now_v7().to_string());
    let opened = repo
        .execute(
            &first,
            &CounterCommand::Open,
            ExecuteOptions::default(),
            record,
        )
        .await;
    assert_eq!(done(opened).1, 1);
    assert_eq!(
        metric(&metrics, "test_group_commit_size_count"),
        0.0,
        "no group"
    );

    // A lone command stuck on a version in flight elsewhere...
    let blocked = Uuid::now_v7().to_string();
    let blocker = in_flight(&db.pool, &blocked, 1).await;
    let lone = spawn(
        &repo,
        &blocked,
        CounterCommand::Open,
        ExecuteOptions::default(),
    );
    wait_for_lock_waiter(repo.store()).await;
    // ...and the commands arriving meanwhile form a group, written while
    // the lone one still waits.
    let pair: Vec<_> = [&second, &third]
        .into_iter()
        .map(|id| spawn(&repo, id, CounterCommand::Open, ExecuteOptions::default()))
        .collect();
    eventually(
        "the pair's group written",
        Duration::from_secs(20),
        Duration::from_millis(5),
        || async {
            let groups = metric(&metrics, "test_group_commit_size_count");
            if groups == 1.0 {
                Ok(())
            } else {
                Err(format!("{groups} groups"))
            }
        },
    )
    .await;
    assert_eq!(metric(&metrics, "test_group_commit_size_sum"), 2.0);
    for task in pair {
        assert_eq!(done(task.await.expect("task")).1, 1);
    }
    assert!(!lone.is_finished(), "the lone command still waits");
    blocker.rollback().await.expect("rollback");
    assert_eq!(done(lone.await.expect("task")).1, 1);
    for id in [&first, &blocked, &second, &third] {
        assert_eq!(count(&db.pool, id).await, 1, "events of {id}");
    }
    assert_eq!(metric(&metrics, "test_group_commit_size_count"), 1.0);
    db.drop().await;
}

#[tokio::test]
async fn each_command_of_a_group_gets_its_own_answer() {
    let db = TestDatabase::create().await;
    let plain = Repository::<Counter>::new(EventStore::new(db.pool.clone()));
    let metrics = GroupCommitMetrics::new();
    let repo = grouped(&db, &metrics);
    let [stale, refused, replayed, keyed_new, lone] =
        std::array::from_fn(|_| Uuid::now_v7().to_string());
    for id in [&stale, &refused, &replayed, &keyed_new, &lone] {
        plain
            .execute(id, &CounterCommand::Open, ExecuteOptions::default(), record)
            .await
            .expect("open");
    }
    let first = plain
        .execute(&replayed, &CounterCommand::Add(5), keyed("seen"), record)
        .await
        .expect("keyed add");
    // A state of `stale` that another writer moved on from.
    let old = plain.load(&stale).await.expect("load");
    plain
        .execute(
            &stale,
            &CounterCommand::Add(10),
            ExecuteOptions::default(),
            record,
        )
        .await
        .expect("add");

    // The one writer is stuck on a version in flight elsewhere...
    let blocked = Uuid::now_v7().to_string();
    let blocker = in_flight(&db.pool, &blocked, 1).await;
    // Under a key: it goes through the queue even with nothing else in
    // flight (a lone command without one would skip the queue).
    let first_group = spawn(&repo, &blocked, CounterCommand::Open, keyed("first"));
    wait_for_lock_waiter(repo.store()).await;
    // ...while these arrive together.
    let conflicting = {
        let (repo, stale) = (repo.clone(), stale.clone());
        tokio::spawn(async move {
            repo.execute_from(
                Some(old),
                &stale,
                &CounterCommand::Add(1),
                ExecuteOptions::default(),
                record,
            )
            .await
        })
    };
    let refusal = spawn(
        &repo,
        &refused,
        CounterCommand::Add(-1),
        ExecuteOptions::default(),
    );
    let replay = spawn(&repo, &replayed, CounterCommand::Add(5), keyed("seen"));
    let recorded = spawn(&repo, &keyed_new, CounterCommand::Add(7), keyed("new"));
    let alone = spawn(
        &repo,
        &lone,
        CounterCommand::Add(3),
        ExecuteOptions::default(),
    );
    // The refusal and the replay append nothing: they never queue.
    let refusal = refusal.await.expect("task");
    assert!(
        matches!(refusal, Ok(Executed::Refused(CounterError::Negative))),
        "{refusal:?}"
    );
    let replay = replay.await.expect("task");
    let Executed::Done(first) = first else {
        panic!("{first:?}")
    };
    match replay {
        Ok(Executed::Replayed(stored)) => assert_eq!(stored, record(Ok(&first))),
        other => panic!("expected a replay, got {other:?}"),
    }
    wait_queued(&metrics, 3.0).await;
    blocker.rollback().await.expect("rollback");

    assert_eq!(done(first_group.await.expect("task")).1, 1);
    // Conflicted in its group, decided again on the fresh state, appended
    // in a group of its own.
    assert_eq!(done(conflicting.await.expect("task")).0, 11);
    let (total, version, position) = done(recorded.await.expect("task"));
    assert_eq!((total, version), (7, 2));
    let stored: CounterRecord = repo
        .store()
        .find_record(&IdempotencyKey::new("test", "new", "fingerprint"))
        .await
        .expect("find")
        .expect("the record, committed with the events");
    assert_eq!(
        stored,
        CounterRecord::Done {
            total: 7,
            version: 2,
            position
        }
    );
    let events = repo
        .store()
        .read_stream(&StreamId::of::<Counter>(&keyed_new), 2)
        .await
        .expect("read");
    assert_eq!(Some(events[0].position), position, "the record's position");
    assert_eq!(done(alone.await.expect("task")).1, 2);

    for (id, events) in [
        (&stale, 3),
        (&refused, 1),
        (&replayed, 2),
        (&keyed_new, 2),
        (&lone, 2),
        (&blocked, 1),
    ] {
        assert_eq!(count(&db.pool, id).await, events, "events of {id}");
    }
    // The blocked one's group, then the three that queued behind it; the
    // conflicting command's second try went alone or in a group of its
    // own, as it found the writer busy or not.
    let groups = metric(&metrics, "test_group_commit_size_count");
    assert!(groups == 2.0 || groups == 3.0, "{groups} groups");
    assert_eq!(metric(&metrics, "test_group_commit_size_sum"), groups + 2.0);
    assert_eq!(
        metric(&metrics, "test_group_commit_failed_groups_total"),
        0.0
    );
    assert_eq!(metric(&metrics, "test_group_commit_queued"), 0.0);
    db.drop().await;
}

#[tokio::test]
async fn a_group_that_fails_whole_is_appended_one_by_one() {
    let db = TestDatabase::create().await;
    let plain = Repository::<Counter>::new(EventStore::new(db.pool.clone()));
    let metrics = GroupCommitMetrics::new();
    let repo = grouped(&db, &metrics);
    let [raced, bystander] = std::array::from_fn(|_| Uuid::now_v7().to_string());
    for id in [&raced, &bystander] {
        plain
            .execute(id, &CounterCommand::Open, ExecuteOptions::default(), record)
            .await
            .expect("open");
    }
    let blocked = Uuid::now_v7().to_string();
    let blocker = in_flight(&db.pool, &blocked, 1).await;
    // Under a key: it goes through the queue even with nothing else in
    // flight (a lone command without one would skip the queue).
    let first_group = spawn(&repo, &blocked, CounterCommand::Open, keyed("first"));
    wait_for_lock_waiter(repo.store()).await;
    // Another process's writer holds version 2 of `raced`, uncommitted.
    let racer = in_flight(&db.pool, &raced, 2).await;
    let racing = spawn(&repo, &raced, CounterCommand::Add(1), keyed("raced"));
    let beside = spawn(&repo, &bystander, CounterCommand::Add(2), keyed("beside"));
    wait_queued(&metrics, 2.0).await;
    blocker.rollback().await.expect("rollback");
    assert_eq!(done(first_group.await.expect("task")).1, 1);
    // The second group waits on the racer's version 2; it commits: the
    // group's statement fails whole, and each command goes alone.
    wait_for_lock_waiter(repo.store()).await;
    racer.commit().await.expect("commit");

    let (total, version, _) = done(racing.await.expect("task"));
    assert_eq!((total, version), (101, 3), "decided again after the racer");
    let (total, version, _) = done(beside.await.expect("task"));
    assert_eq!((total, version), (2, 2));
    assert_eq!(count(&db.pool, &raced).await, 3);
    assert_eq!(count(&db.pool, &bystander).await, 2);
    for key in ["raced", "beside"] {
        let stored: Option<CounterRecord> = repo
            .store()
            .find_record(&IdempotencyKey::new("test", key, "fingerprint"))
            .await
            .expect("find");
        assert!(stored.is_some(), "record of {key}");
    }
    assert_eq!(
        metric(&metrics, "test_group_commit_failed_groups_total"),
        1.0
    );
    db.drop().await;
}
