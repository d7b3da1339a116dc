//! `purser projections ...`: a rebuild killed for real resumes, two never
//! race, errors are clear and non-zero, list and status tell the truth.

use std::process::Stdio;

use test_support::TestDatabase;

use crate::{
    accounts_snapshot, purser, rebuild_done, seed_accounts, stderr, stdout, DEADLINE, PURSER,
};

const ACCOUNTS: i64 = 200;
const PER_ACCOUNT: i64 = 40;
const EVENTS: i64 = ACCOUNTS * PER_ACCOUNT;

async fn rebuild_running(db: &TestDatabase) -> bool {
    projections::rebuild::is_running(&db.pool, "accounts")
        .await
        .expect("lock state")
}

/// SIGKILL half-way: the next run resumes from the last committed batch and
/// ends with the same rows as an uninterrupted rebuild (`--restart`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rebuild_resumes_and_ends_identical_to_an_uninterrupted_one() {
    let db = TestDatabase::create().await;
    seed_accounts(&db.pool, ACCOUNTS, PER_ACCOUNT).await;

    // Throttled so that it is still running when killed.
    let mut child = tokio::process::Command::new(PURSER)
        .args([
            "projections",
            "rebuild",
            "accounts",
            "--batch-size",
            "100",
            "--max-rate",
            "2000",
        ])
        .env("DATABASE_URL", &db.url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn purser");
    let pool = &db.pool;
    test_support::eventually(
        "the rebuild to replay 1000 events",
        DEADLINE,
        std::time::Duration::from_millis(10),
        || {
            assert!(
                child.try_wait().expect("child").is_none(),
                "rebuild exited early"
            );
            async move {
                match rebuild_done(pool).await {
                    done if done >= 1_000 => Ok(()),
                    done => Err(done),
                }
            }
        },
    )
    .await;
    assert!(rebuild_running(&db).await);

    // A second rebuild of the same projection is refused meanwhile.
    let second = purser(&db, &["projections", "rebuild", "accounts"]).await;
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("a rebuild of projection accounts is already running"),
        "{}",
        stderr(&second)
    );

    child.kill().await.expect("kill -9");
    // The server drops the dead process's session, and its lock with it
    // (after finishing what the process had sent, a COMMIT included).
    let db_ref = &db;
    test_support::eventually(
        "the dead process's lock to go",
        DEADLINE,
        std::time::Duration::from_millis(10),
        move || async move {
            if rebuild_running(db_ref).await {
                Err("lock still held")
            } else {
                Ok(())
            }
        },
    )
    .await;
    let killed_at = rebuild_done(&db.pool).await;
    assert!(
        (1_000..EVENTS).contains(&killed_at),
        "killed at {killed_at} of {EVENTS}"
    );
    // Nothing was swapped in: the live read model is still empty.
    assert!(accounts_snapshot(&db.pool).await.is_empty());
    let list = purser(&db, &["projections", "list"]).await;
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(
        stdout(&list).contains(&format!("interrupted (replay, {killed_at} events)")),
        "{}",
        stdout(&list)
    );

    let resumed = purser(&db, &["projections", "rebuild", "accounts"]).await;
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(
        stdout(&resumed).contains(&format!(
            "rebuilt from {EVENTS} events (resumed after {killed_at}, {} this run)",
            EVENTS - killed_at
        )),
        "{}",
        stdout(&resumed)
    );
    let after_resume = accounts_snapshot(&db.pool).await;

    let fresh = purser(&db, &["projections", "rebuild", "accounts", "--restart"]).await;
    assert!(fresh.status.success(), "{}", stderr(&fresh));
    assert!(
        stdout(&fresh).contains(&format!("rebuilt from {EVENTS} events in")),
        "{}",
        stdout(&fresh)
    );
    let uninterrupted = accounts_snapshot(&db.pool).await;
    assert_eq!(after_resume, uninterrupted);
    // One account row and one applied version per stream, a ledger entry per deposit.
    let count = |prefix: &str| {
        uninterrupted
            .iter()
            .filter(|r| r.starts_with(prefix))
            .count() as i64
    };
    assert_eq!(count("read_models.accounts "), ACCOUNTS);
    assert_eq!(count("applied accounts "), ACCOUNTS);
    assert_eq!(
        count("read_models.account_transactions "),
        ACCOUNTS * (PER_ACCOUNT - 1)
    );
    db.drop().await;
}

#[tokio::test]
async fn errors_are_clear_and_non_zero() {
    let db = TestDatabase::create().await;

    let unknown = purser(&db, &["projections", "rebuild", "acounts"]).await;
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown)
            .contains("unknown projection \"acounts\" (known: accounts, inventory, orders, sagas)"),
        "{}",
        stderr(&unknown)
    );

    let unreachable = tokio::process::Command::new(PURSER)
        .args([
            "--database-url",
            "postgres://postgres:secret@127.0.0.1:1/postgres",
            "projections",
            "list",
        ])
        .output()
        .await
        .expect("run purser");
    assert!(!unreachable.status.success());
    let message = stderr(&unreachable);
    assert!(
        message.contains("cannot connect to PostgreSQL at postgres@127.0.0.1:1/postgres"),
        "{message}"
    );
    assert!(!message.contains("secret"), "{message}");

    let wrong_stream = purser(
        &db,
        &["projections", "unpark", "accounts", "--stream", "order-1"],
    )
    .await;
    assert!(!wrong_stream.status.success());
    assert!(
        stderr(&wrong_stream).contains("is not of a stream type this projection follows"),
        "{}",
        stderr(&wrong_stream)
    );

    let neither = purser(&db, &["projections", "rebuild"]).await;
    assert!(!neither.status.success(), "a name or --all is required");
    db.drop().await;
}

#[tokio::test]
async fn list_status_unpark_and_reset_tell_and_do_what_they_say() {
    let db = TestDatabase::create().await;
    seed_accounts(&db.pool, 3, 4).await;
    let stream: String = sqlx::query_scalar(
        "SELECT stream_id FROM event_store.events WHERE version = 1 ORDER BY stream_id LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // Nothing applied yet: the accounts projection lags by every event; one
    // of its streams is parked.
    sqlx::query(
        "INSERT INTO read_models.parked (projection, stream_id, version, event_id, error, attempts) \
         VALUES ('accounts', $1, 1, gen_random_uuid(), 'boom', 3)",
    )
    .bind(&stream)
    .execute(&db.pool)
    .await
    .unwrap();

    let list = purser(&db, &["projections", "list"]).await;
    assert!(list.status.success(), "{}", stderr(&list));
    let out = stdout(&list);
    let accounts = out
        .lines()
        .find(|l| l.starts_with("accounts "))
        .unwrap_or_else(|| panic!("{out}"));
    let columns: Vec<&str> = accounts.split_whitespace().collect();
    // PROJECTION CHECKPOINT HEAD LAG PARKED STATUS REBUILD
    assert_eq!(columns[3], "12", "{out}");
    assert_eq!(columns[4], "1", "{out}");
    assert_eq!(columns[5], "degraded", "{out}");
    assert_eq!(columns[6], "-", "{out}");
    for name in ["inventory ", "orders ", "sagas "] {
        assert!(out.lines().any(|l| l.starts_with(name)), "{out}");
    }

    let status = purser(&db, &["projections", "status", "accounts"]).await;
    assert!(status.status.success(), "{}", stderr(&status));
    let out = stdout(&status);
    assert!(out.contains("parked streams  1"), "{out}");
    assert!(out.contains(&format!("{stream} at version 1")), "{out}");
    assert!(out.contains("boom"), "{out}");
    assert!(!out.contains("inventory"), "{out}");

    let unpark = purser(&db, &["projections", "unpark", "accounts"]).await;
    assert!(unpark.status.success(), "{}", stderr(&unpark));
    assert!(
        stdout(&unpark).contains(&format!("accounts: {stream} applied 4 waiting events")),
        "{}",
        stdout(&unpark)
    );
    let snapshot = accounts_snapshot(&db.pool).await;
    assert_eq!(
        snapshot
            .iter()
            .filter(|r| r.starts_with("read_models.accounts "))
            .count(),
        1
    );

    let reset = purser(&db, &["projections", "reset", "accounts"]).await;
    assert!(reset.status.success(), "{}", stderr(&reset));
    assert!(accounts_snapshot(&db.pool).await.is_empty());

    let all = purser(&db, &["projections", "rebuild", "--all"]).await;
    assert!(all.status.success(), "{}", stderr(&all));
    let out = stdout(&all);
    assert!(out.contains("accounts: rebuilt from 12 events"), "{out}");
    assert!(out.contains("inventory: rebuilt from 0 events"), "{out}");
    assert!(out.contains("orders: rebuilt from 0 events"), "{out}");
    assert!(out.contains("sagas: rebuilt from 0 events"), "{out}");
    // Not a terminal: progress went to the log, no bar.
    assert!(
        stderr(&all).contains("rebuild progress"),
        "{}",
        stderr(&all)
    );
    assert!(!stderr(&all).contains('\r'));
    let rows = accounts_snapshot(&db.pool).await;
    assert_eq!(
        rows.iter()
            .filter(|r| r.starts_with("read_models.accounts "))
            .count(),
        3
    );

    let one = purser(
        &db,
        &["projections", "rebuild", "accounts", "--stream", &stream],
    )
    .await;
    assert!(one.status.success(), "{}", stderr(&one));
    assert!(
        stdout(&one).contains(&format!("accounts: {stream} rebuilt from 4 events")),
        "{}",
        stdout(&one)
    );
    assert_eq!(accounts_snapshot(&db.pool).await, rows);
    db.drop().await;
}
