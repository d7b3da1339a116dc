//! The aggregate cache's turn for a caller that appends itself (the saga's
//! steps, several streams in one transaction): it takes the remembered
//! state with the turn, appends at its version, and puts back what it
//! left; a write that bypassed the cache shows as a conflict.

use domain::Aggregate;
use event_store::{
    AggregateCache, CacheMetrics, EventStore, ExecuteOptions, Executed, ExpectedVersion, Loaded,
    Metadata, NewEvent, Repository, StreamId,
};
use test_support::TestDatabase;
use uuid::Uuid;

use crate::counter::{record, Counter, CounterCommand, CounterEvent};

#[tokio::test]
async fn a_caller_holding_the_turn_decides_on_the_remembered_state_and_puts_back_its_own() {
    let db = TestDatabase::create().await;
    let store = EventStore::new(db.pool.clone());
    let cache = AggregateCache::new(
        Repository::<Counter>::new(store.clone()),
        8,
        &CacheMetrics::new(),
    );
    let id = Uuid::now_v7().to_string();
    let opened = cache
        .execute(
            &id,
            &CounterCommand::Open,
            ExecuteOptions::default(),
            record,
        )
        .await
        .expect("open");
    assert!(matches!(opened, Executed::Done(_)), "{opened:?}");
    assert_eq!(cache.peek(&id).map(|known| known.version), Some(1));

    // The turn comes with what the last command left, taken out: nobody
    // else in the process can have it meanwhile.
    let (turn, known) = cache.turn_with(&id).await;
    let known = known.expect("remembered");
    assert_eq!(known.version, 1);
    assert!(cache.peek(&id).is_none(), "taken out with the turn");
    assert!(cache.try_turn_with(&id).is_none(), "the turn is held");

    let events = [CounterEvent::Added { amount: 3 }];
    let mut appends = store.begin().await.expect("begin");
    let appended = appends
        .append(
            &StreamId::of::<Counter>(&id),
            ExpectedVersion::Exact(known.version),
            &events.iter().map(NewEvent::from_domain).collect::<Vec<_>>(),
            &Metadata::default(),
        )
        .await
        .expect("append at the remembered version");
    appends.commit().await.expect("commit");
    let after = Loaded::<Counter> {
        state: Counter::fold(known.state.clone(), &events),
        version: appended.version,
        position: Some(appended.position),
    };
    cache.remember(&id, after.clone());
    // An older state never replaces a later one.
    cache.remember(&id, known);
    drop(turn);
    let remembered = cache.peek(&id).expect("put back");
    assert_eq!((remembered.version, remembered.state.total), (2, 3));
    assert_eq!(
        remembered.state,
        cache.repository().load(&id).await.expect("load").state
    );

    // A write that bypassed the cache: the remembered state is stale, and
    // an append at its version conflicts.
    cache
        .repository()
        .execute(
            &id,
            &CounterCommand::Add(4),
            ExecuteOptions::default(),
            record,
        )
        .await
        .expect("add");
    let (turn, known) = cache.try_turn_with(&id).expect("free");
    let known = known.expect("remembered");
    let mut appends = store.begin().await.expect("begin");
    let conflict = appends
        .append(
            &StreamId::of::<Counter>(&id),
            ExpectedVersion::Exact(known.version),
            &[NewEvent::from_domain(&CounterEvent::Added { amount: 1 })],
            &Metadata::default(),
        )
        .await;
    assert!(
        matches!(
            conflict,
            Err(event_store::Error::Conflict { actual: 3, .. })
        ),
        "{conflict:?}"
    );
    drop(turn);
    // Not put back: forgotten, the next command reads the stream.
    assert!(cache.peek(&id).is_none());
    cache.remember(&id, after);
    cache.forget(&id);
    assert!(cache.peek(&id).is_none());
    db.drop().await;
}
