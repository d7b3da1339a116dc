//! `/projections` counts a projection's events through the index of
//! migration 0005: an index-only scan of its stream types' entries, never a
//! scan of the whole log.

use projections::status::PROGRESS_SQL;
use serde_json::Value;

use test_support::Harness;

/// Every plan node of `plan` (EXPLAIN's JSON), depth first.
fn nodes(plan: &Value) -> Vec<&Value> {
    let mut out = vec![plan];
    if let Some(children) = plan["Plans"].as_array() {
        out.extend(children.iter().flat_map(nodes));
    }
    out
}

#[tokio::test]
async fn projection_progress_scans_only_the_index_entries_of_its_stream_types() {
    let h = Harness::new().await;
    // A log dominated by other stream types: 20 000 order events, 100
    // account events (versions 1..=4 of 25 streams), 40 inventory events.
    sqlx::query(
        "INSERT INTO event_store.events \
             (event_id, stream_type, stream_id, version, event_type, schema_version, payload) \
         SELECT gen_random_uuid(), t.stream_type, t.stream_type || '-' || (g % t.streams), \
                g / t.streams + 1, 'Something', 1, jsonb_build_object('n', g, 'pad', repeat('x', 200)) \
         FROM (VALUES ('order', 20000, 1000), ('account', 100, 25), ('inventory', 40, 40)) \
                  AS t(stream_type, n, streams), \
              generate_series(0, t.n - 1) AS g",
    )
    .execute(&h.db.pool)
    .await
    .expect("fill the log");
    // What autovacuum does to an append-only table: statistics, and the
    // visibility map that lets an index-only scan skip the heap.
    sqlx::query("VACUUM ANALYZE event_store.events")
        .execute(&h.db.pool)
        .await
        .expect("vacuum");

    for projection in projections::all() {
        let types: Vec<String> = projection
            .stream_types()
            .iter()
            .map(|t| (*t).to_owned())
            .collect();
        let (plan,): (Value,) = sqlx::query_as(&format!("EXPLAIN (FORMAT JSON) {PROGRESS_SQL}"))
            .bind(projection.name())
            .bind(&types)
            .fetch_one(&h.db.pool)
            .await
            .expect("explain");
        let plan = &plan[0]["Plan"];
        let on_events: Vec<&Value> = nodes(plan)
            .into_iter()
            .filter(|n| n["Relation Name"] == "events")
            .collect();
        assert!(!on_events.is_empty(), "{}: {plan}", projection.name());
        for node in on_events {
            assert_eq!(
                (node["Node Type"].as_str(), node["Index Name"].as_str()),
                (
                    Some("Index Only Scan"),
                    Some("events_stream_type_transaction_position_idx")
                ),
                "{}: {plan}",
                projection.name()
            );
        }
    }

    // And the figures are right: nothing applied yet, so every event of the
    // projection's types is lag, and the head is the newest of them.
    let views = projections::status::all(&h.db.pool).await.expect("views");
    let accounts = views
        .iter()
        .find(|v| v.name == "accounts")
        .expect("accounts");
    let head: i64 = sqlx::query_scalar(
        "SELECT max(position) FROM event_store.events WHERE stream_type = 'account'",
    )
    .fetch_one(&h.db.pool)
    .await
    .expect("head");
    assert_eq!((accounts.lag_events, accounts.head), (100, head));
    let inventory = views
        .iter()
        .find(|v| v.name == "inventory")
        .expect("inventory");
    assert_eq!(inventory.lag_events, 40);
    h.db.drop().await;
}
