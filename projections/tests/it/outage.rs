//! Broker unavailable while commands are accepted: the relay cannot publish
//! and checkpoints nothing; once a relay reaches the live broker, the
//! projection catches up with every command, nothing lost or doubled.

use std::sync::Arc;
use std::time::Duration;

use domain::BankAccount;
use event_store::{Checkpoint, EventStore, Repository};
use kafka::{KafkaConfig, Relay, RelayOptions, RelayOutcome};
use projections::{Accounts, Outcome, Worker, WorkerConfig};
use tokio::time::Instant;

use test_support::Harness;

const DEADLINE: Duration = Duration::from_secs(90);
const ACCOUNTS: usize = 16;
const ROUNDS: i64 = 8;

fn relay_options(delivery_timeout_ms: u64) -> RelayOptions {
    RelayOptions {
        batch_size: 50,
        delivery_timeout_ms,
        idle_wait_ms: 200,
        ..RelayOptions::default()
    }
}

async fn count(store: &EventStore, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .expect("count")
}

/// Steps the relay against the dead broker until a step fails; an idle step
/// only means the gap-safe read held events back.
async fn relay_until_error(relay: &mut Relay) -> kafka::Error {
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "the relay never failed");
        match relay.process_batch().await {
            Ok(RelayOutcome::Idle) => {}
            Ok(outcome) => panic!("published without a broker: {outcome:?}"),
            Err(error) => return error,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_unavailable_while_commands_are_accepted_then_the_projection_catches_up() {
    let h = Harness::new().await;
    let kafka = test_support::kafka::topics("projections-outage").await;

    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        let (account, _) = h.open_account("EUR").await;
        accounts.push(account);
    }

    // The broker is down: the relay fails and checkpoints nothing...
    let dead = KafkaConfig {
        brokers: test_support::kafka::dead_broker(),
        ..kafka.clone()
    };
    let mut relay =
        Relay::with_options(h.store.clone(), dead, relay_options(1_000)).expect("relay");
    let error = relay_until_error(&mut relay).await;
    assert!(
        matches!(error, kafka::Error::Delivery { .. }),
        "unexpected error: {error}"
    );

    // ...while commands go on being accepted: deposits and withdrawals, some
    // of the withdrawals refused for insufficient funds.
    let (mut money_events, mut refused) = (0_i64, 0_i64);
    for round in 0..ROUNDS {
        for (i, &account) in accounts.iter().enumerate() {
            let i = i as i64;
            h.deposit(account, 10 + 7 * i + round).await;
            money_events += 1;
            match h.withdraw(account, 5 + 11 * ((i + round) % 5)).await {
                Ok(_) => money_events += 1,
                Err(code) => {
                    assert_eq!(code, "insufficient_funds");
                    refused += 1;
                }
            }
        }
    }
    assert!(refused > 0, "some withdrawals are refused");
    let error = relay_until_error(&mut relay).await;
    assert!(
        matches!(error, kafka::Error::Delivery { .. }),
        "unexpected error: {error}"
    );
    assert_eq!(
        h.store
            .load_checkpoint(kafka::CHECKPOINT_NAME)
            .await
            .expect("checkpoint"),
        Checkpoint::START,
        "nothing checkpointed while the broker is down"
    );
    drop(relay);

    // The broker is back: a relay publishes everything, the worker applies it.
    let total = count(&h.store, "SELECT count(*) FROM event_store.events").await;
    let account_events = count(
        &h.store,
        "SELECT count(*) FROM event_store.events WHERE stream_type = 'account'",
    )
    .await;
    assert_eq!(account_events, ACCOUNTS as i64 + money_events);
    let mut relay =
        Relay::with_options(h.store.clone(), kafka.clone(), relay_options(10_000)).expect("relay");
    let mut worker = Worker::new(
        Arc::new(Accounts),
        h.store.clone(),
        &kafka,
        WorkerConfig {
            batch_size: 100,
            poll_wait: Duration::from_millis(200),
            ..WorkerConfig::default()
        },
    )
    .expect("worker");
    let deadline = Instant::now() + DEADLINE;
    let (mut published, mut applied, mut duplicates) = (0_i64, 0_i64, 0_i64);
    loop {
        let applied_versions = count(
            &h.store,
            "SELECT coalesce(sum(version), 0)::bigint FROM read_models.applied \
             WHERE projection = 'accounts'",
        )
        .await;
        if published >= total && applied_versions >= account_events {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no catch-up: published {published}/{total}, applied {applied_versions}/{account_events}"
        );
        if published < total {
            match relay.process_batch().await.expect("relay step") {
                RelayOutcome::Published { events, .. } => published += events as i64,
                RelayOutcome::Idle => {}
            }
        }
        if let Outcome::Applied(report) = worker.process_batch().await.expect("worker step") {
            applied += report.applied as i64;
            duplicates += report.duplicates as i64;
        }
    }
    assert_eq!(published, total, "every event published once");
    assert_eq!(applied, account_events, "every account event applied once");
    assert_eq!(duplicates, 0);

    // Every account's read model equals the fold of its stream.
    let repository = Repository::<BankAccount>::new(h.store.clone());
    for &account in &accounts {
        let loaded = repository
            .load(&account.to_string())
            .await
            .expect("load account");
        let (balance, version): (i64, i64) = sqlx::query_as(
            "SELECT balance, version FROM read_models.accounts WHERE account_id = $1",
        )
        .bind(account)
        .fetch_one(&h.db.pool)
        .await
        .expect("read model row");
        assert_eq!(
            balance,
            loaded.state.balance.amount(),
            "balance of {account}"
        );
        assert_eq!(version as u64, loaded.version, "version of {account}");

        // The ledger sums to the balance and ends at it.
        let (signed, last): (i64, Option<i64>) = sqlx::query_as(
            "SELECT coalesce(sum(CASE WHEN kind IN ('deposit', 'refund') THEN amount \
                                      ELSE -amount END), 0)::bigint, \
                    (SELECT balance_after FROM read_models.account_transactions \
                      WHERE account_id = $1 ORDER BY seq DESC LIMIT 1) \
               FROM read_models.account_transactions WHERE account_id = $1",
        )
        .bind(account)
        .fetch_one(&h.db.pool)
        .await
        .expect("ledger");
        assert_eq!(signed, balance, "ledger sum of {account}");
        assert_eq!(last, Some(balance), "last balance_after of {account}");
    }

    // One ledger row per money event: nothing lost, nothing doubled.
    let ledger_rows = count(
        &h.store,
        "SELECT count(*) FROM read_models.account_transactions",
    )
    .await;
    let stored_money_events = count(
        &h.store,
        "SELECT count(*) FROM event_store.events WHERE stream_type = 'account' \
         AND event_type IN ('MoneyDeposited', 'MoneyWithdrawn', 'AccountCharged', 'ChargeRefunded')",
    )
    .await;
    assert_eq!(stored_money_events, money_events);
    assert_eq!(ledger_rows, money_events);
    let distinct: i64 = count(
        &h.store,
        "SELECT count(*) FROM (SELECT DISTINCT account_id, seq \
           FROM read_models.account_transactions) AS d",
    )
    .await;
    assert_eq!(distinct, ledger_rows);

    drop(worker);
    drop(relay);
    h.drop().await;
}
