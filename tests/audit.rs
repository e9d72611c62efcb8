//! The audit log repository on a real database: recording (one event, batches), validation and
//! refusals that write nothing, filters, time ranges, newest-first pagination, counts, and tenant
//! isolation. Runs on both backends.
//!
//! What a query should return is worked out independently: every row of the tenant is read
//! straight through the entity (no repository), then filtered and ordered in Rust.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeDelta};
use orkestra_entity::audit_events;
use orkestra_repository::{
    Actor, ActorKind, AuditQuery, AuditRepository, Error, NewAuditEvent, PageRequest,
    RECORD_MANY_MAX, RequestContext, TimeCursor, transaction,
    validate::{ID_MAX, JSON_BYTES_MAX, JSON_DEPTH_MAX, LABEL_MAX},
};
use orkestra_tests::{TestDb, fixtures};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
};
use serde_json::{Value, json};
use uuid::Uuid;

const TENANT_FKEY: &str = "audit_events_tenant_id_fkey";

type Audit<'a> = AuditRepository<'a, DatabaseConnection>;

/// A migrated database with one tenant.
async fn one_tenant() -> anyhow::Result<(TestDb, Uuid)> {
    let db = TestDb::migrated().await?;
    let tenant = fixtures::tenant(db.conn(), "acme").await?.id;
    Ok((db, tenant))
}

/// A context for `tenant` acted on by a fresh user.
fn user_ctx(tenant: Uuid) -> anyhow::Result<RequestContext> {
    Ok(RequestContext::new(tenant, Actor::user(Uuid::now_v7())?)?)
}

fn event(i: usize) -> NewAuditEvent {
    NewAuditEvent::new("task.created", "create", "task", format!("t-{i}"))
}

/// Every audit row in the database, whatever its tenant (read without the repository).
async fn total(db: &DatabaseConnection) -> anyhow::Result<u64> {
    Ok(audit_events::Entity::find().count(db).await?)
}

/// Every row of `tenant`, newest first, read without the repository: the oracle queries are
/// checked against.
async fn stored(db: &DatabaseConnection, tenant: Uuid) -> anyhow::Result<Vec<audit_events::Model>> {
    let mut rows = audit_events::Entity::find()
        .filter(audit_events::Column::TenantId.eq(tenant))
        .order_by_asc(audit_events::Column::Id)
        .all(db)
        .await?;
    rows.sort_by_key(|row| std::cmp::Reverse((row.created_at, row.id)));
    Ok(rows)
}

/// Reads every page of `query` with pages of `limit`, checking each page's shape; returns the rows
/// in the order read.
async fn read_all(
    audit: &Audit<'_>,
    ctx: &RequestContext,
    query: &AuditQuery,
    limit: u64,
) -> anyhow::Result<Vec<audit_events::Model>> {
    let mut rows = Vec::new();
    let mut page = PageRequest::first(limit);
    loop {
        let got = audit.query(ctx, query, &page).await?;
        assert!(got.items.len() as u64 <= limit);
        match got.next {
            Some(cursor) => {
                assert_eq!(
                    got.items.len() as u64,
                    limit,
                    "a short page before the last"
                );
                let last = got.items.last().expect("a page with a next has rows");
                assert_eq!(cursor, cursor_of(last));
                rows.extend(got.items);
                page = PageRequest::after(cursor, limit);
            }
            None => {
                rows.extend(got.items);
                return Ok(rows);
            }
        }
    }
}

fn cursor_of(row: &audit_events::Model) -> TimeCursor {
    TimeCursor {
        created_at: row.created_at,
        id: row.id,
    }
}

fn ids(rows: &[audit_events::Model]) -> Vec<Uuid> {
    rows.iter().map(|row| row.id).collect()
}

/// Asserts `result` is a validation error naming `field`.
#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, Error>, field: &str) {
    match result {
        Err(Error::Validation { field: got, .. }) if got == field => {}
        other => panic!("expected a validation error on {field}, got {other:?}"),
    }
}

/// Asserts `result` is the tenant's foreign key refusing the write.
#[track_caller]
fn assert_tenant_refused<T: std::fmt::Debug>(result: Result<T, Error>) {
    match result {
        Err(Error::Reference { constraint }) => assert_eq!(constraint, TENANT_FKEY),
        other => panic!("expected {TENANT_FKEY} to refuse the write, got {other:?}"),
    }
}

/// A JSON value nested `depth` levels deep: `depth` arrays around a number (arrays and objects are
/// levels, scalars are not).
fn nested(depth: usize) -> Value {
    let mut value = json!(1);
    for _ in 0..depth {
        value = json!([value]);
    }
    value
}

/// Events that each break one rule, with the field the refusal names.
fn invalid_events() -> Vec<(&'static str, NewAuditEvent)> {
    let texts: [(&'static str, usize); 4] = [
        ("event_type", LABEL_MAX),
        ("action", LABEL_MAX),
        ("resource_type", LABEL_MAX),
        ("resource_id", ID_MAX),
    ];
    let mut cases = Vec::new();
    for (field, max) in texts {
        for bad in [
            String::new(),
            " \t\n ".to_owned(),
            "x".repeat(max + 1),
            "a\0b".to_owned(),
        ] {
            let mut event = event(0);
            match field {
                "event_type" => event.event_type = bad,
                "action" => event.action = bad,
                "resource_type" => event.resource_type = bad,
                _ => event.resource_id = bad,
            }
            cases.push((field, event));
        }
    }
    for bad in [
        nested(JSON_DEPTH_MAX + 1),
        json!({"note": "a\u{0}b"}),
        json!({"a\u{0}b": 1}),
        json!(["x".repeat(JSON_BYTES_MAX)]),
    ] {
        cases.push(("details", event(0).with_details(bad)));
    }
    cases
}

#[tokio::test]
async fn record_stores_the_event_with_the_contexts_actor_and_trace() -> anyhow::Result<()> {
    let (db, tenant) = one_tenant().await?;
    let audit = AuditRepository::new(db.conn());
    let ctx = RequestContext::new(
        tenant,
        Actor::new(ActorKind::Agent, "agent-7", Some("Helper".to_owned()))?,
    )?
    .with_trace("trace-abc", Some("span-def"))?;
    let before = chrono::Utc::now();

    let details = json!({"from": "CLAIMED", "to": "COMPLETED", "form": {"approved": true}});
    let recorded = audit
        .record(
            &ctx,
            NewAuditEvent::new("task.completed", "complete", "task", "t-42")
                .with_details(details.clone()),
        )
        .await?;

    assert_eq!(recorded.id.get_version_num(), 7);
    assert_eq!(recorded.tenant_id, tenant);
    assert_eq!(recorded.event_type, "task.completed");
    assert_eq!(recorded.action, "complete");
    assert_eq!(recorded.actor_type, "agent");
    assert_eq!(recorded.actor_id, "agent-7");
    assert_eq!(recorded.actor_name.as_deref(), Some("Helper"));
    assert_eq!(recorded.resource_type, "task");
    assert_eq!(recorded.resource_id, "t-42");
    assert_eq!(recorded.details, Some(details));
    assert_eq!(recorded.trace_id.as_deref(), Some("trace-abc"));
    assert_eq!(recorded.span_id.as_deref(), Some("span-def"));
    let slack = TimeDelta::seconds(5);
    assert!(recorded.created_at >= before - slack && recorded.created_at <= chrono::Utc::now());

    // What is read back is exactly what `record` returned.
    assert_eq!(stored(db.conn(), tenant).await?, vec![recorded.clone()]);
    let page = audit
        .query(&ctx, &AuditQuery::all(), &PageRequest::default())
        .await?;
    assert_eq!(page.items, vec![recorded]);
    assert_eq!(page.next, None);
    Ok(())
}

#[tokio::test]
async fn record_without_a_trace_or_an_actor_name_stores_nulls() -> anyhow::Result<()> {
    let (db, tenant) = one_tenant().await?;
    let audit = AuditRepository::new(db.conn());

    let user = Uuid::now_v7();
    let by_user = RequestContext::new(tenant, Actor::user(user)?)?;
    let recorded = audit.record(&by_user, event(1)).await?;
    assert_eq!(recorded.actor_type, "user");
    assert_eq!(recorded.actor_id, user.to_string());
    assert_eq!(recorded.actor_name, None);
    assert_eq!(recorded.trace_id, None);
    assert_eq!(recorded.span_id, None);
    assert_eq!(recorded.details, None);

    let by_system = RequestContext::new(tenant, Actor::system("sla-sweeper")?)?
        .with_trace("trace-only", None)?;
    let recorded = audit.record(&by_system, event(2)).await?;
    assert_eq!(recorded.actor_type, "system");
    assert_eq!(recorded.actor_id, "sla-sweeper");
    assert_eq!(recorded.trace_id.as_deref(), Some("trace-only"));
    assert_eq!(recorded.span_id, None);
    Ok(())
}

#[tokio::test]
async fn record_trims_texts_and_accepts_them_at_their_limits() -> anyhow::Result<()> {
    let (db, tenant) = one_tenant().await?;
    let audit = AuditRepository::new(db.conn());
    let ctx = user_ctx(tenant)?;

    let recorded = audit
        .record(
            &ctx,
            NewAuditEvent::new(" task.created ", "\tcreate", "task ", " t-1"),
        )
        .await?;
    assert_eq!(
        (
            recorded.event_type.as_str(),
            recorded.action.as_str(),
            recorded.resource_type.as_str(),
            recorded.resource_id.as_str()
        ),
        ("task.created", "create", "task", "t-1")
    );

    // Limits count characters, not bytes.
    let label = "é".repeat(LABEL_MAX);
    let id = "é".repeat(ID_MAX);
    let recorded = audit
        .record(
            &ctx,
            NewAuditEvent::new(label.clone(), label.clone(), label.clone(), id.clone())
                .with_details(nested(JSON_DEPTH_MAX)),
        )
        .await?;
    assert_eq!(recorded.event_type, label);
    assert_eq!(recorded.resource_id, id);
    assert_eq!(recorded.details, Some(nested(JSON_DEPTH_MAX)));
    Ok(())
}

#[tokio::test]
async fn details_may_be_any_json_value_and_null_is_no_details() -> anyhow::Result<()> {
    let (db, tenant) = one_tenant().await?;
    let audit = AuditRepository::new(db.conn());
    let ctx = user_ctx(tenant)?;

    for details in [
        json!("text"),
        json!(42),
        json!(-1.5),
        json!(true),
        json!([1, "two", null, {"three": 3}]),
        json!({"nested": {"list": [true, null]}, "empty": {}}),
    ] {
        let recorded = audit
            .record(&ctx, event(0).with_details(details.clone()))
            .await?;
        assert_eq!(recorded.details, Some(details.clone()));
        let read = stored(db.conn(), tenant).await?;
        let row = read
            .iter()
            .find(|row| row.id == recorded.id)
            .expect("stored");
        assert_eq!(row.details, Some(details));
    }

    let recorded = audit
        .record(&ctx, event(0).with_details(Value::Null))
        .await?;
    assert_eq!(recorded.details, None);
    let read = stored(db.conn(), tenant).await?;
    let row = read
        .iter()
        .find(|row| row.id == recorded.id)
        .expect("stored");
    assert_eq!(row.details, None);
    Ok(())
}

#[tokio::test]
async fn record_refuses_each_invalid_field_and_writes_nothing() -> anyhow::Result<()> {
    let (db, tenant) = one_tenant().await?;
    let audit = AuditRepository::new(db.conn());
    let ctx = user_ctx(tenant)?;

    let cases = invalid_events();
    assert_eq!(cases.len(), 20);
    for (field, event) in cases {
        let shown = format!("{event:?}");
        let result = audit.record(&ctx, event).await;
        assert!(
            matches!(&result, Err(Error::Validation { field: got, .. }) if *got == field),
            "{} -> {result:?}",
            shown.chars().take(200).collect::<String>()
        );
    }
    assert_eq!(total(db.conn()).await?, 0);
    Ok(())
}

#[tokio::test]
async fn record_for_a_missing_tenant_is_refused_and_writes_nothing() -> anyhow::Result<()> {
    let (db, _tenant) = one_tenant().await?;
    let audit = AuditRepository::new(db.conn());
    let ghost = user_ctx(Uuid::now_v7())?;

    assert_tenant_refused(audit.record(&ghost, event(0)).await);
    assert_eq!(total(db.conn()).await?, 0);
    Ok(())
}

#[tokio::test]
async fn record_many_writes_a_batch_with_one_time_and_increasing_ids() -> anyhow::Result<()> {
    let (db, tenant) = one_tenant().await?;
    let audit = AuditRepository::new(db.conn());
    let ctx = RequestContext::new(tenant, Actor::user(Uuid::now_v7())?.named("Ada")?)?
        .with_trace("trace-9", Some("span-9"))?;

    let events: Vec<_> = (0..10)
        .map(|i| event(i).with_details(json!({"i": i})))
        .collect();
    assert_eq!(audit.record_many(&ctx, events).await?, 10);

    let rows = stored(db.conn(), tenant).await?;
    assert_eq!(rows.len(), 10);
    let created_at = rows[0].created_at;
    // Newest first: the last event of the batch (highest id) comes first.
    for (position, row) in rows.iter().enumerate() {
        let i = 9 - position;
        assert_eq!(row.created_at, created_at);
        assert_eq!(row.id.get_version_num(), 7);
        assert_eq!(row.resource_id, format!("t-{i}"));
        assert_eq!(row.details, Some(json!({"i": i})));
        assert_eq!(row.actor_type, "user");
        assert_eq!(row.actor_id, ctx.actor().id());
        assert_eq!(row.actor_name.as_deref(), Some("Ada"));
        assert_eq!(row.trace_id.as_deref(), Some("trace-9"));
        assert_eq!(row.span_id.as_deref(), Some("span-9"));
    }
    let mut in_order = ids(&rows);
    in_order.reverse();
    assert!(in_order.windows(2).all(|pair| pair[0] < pair[1]));
    Ok(())
}

#[tokio::test]
async fn record_many_of_nothing_writes_nothing() -> anyhow::Result<()> {
    let (db, tenant) = one_tenant().await?;
    let audit = AuditRepository::new(db.conn());
    assert_eq!(audit.record_many(&user_ctx(tenant)?, Vec::new()).await?, 0);
    // Not even a refused statement: a missing tenant is not noticed when nothing is written.
    assert_eq!(
        audit
            .record_many(&user_ctx(Uuid::now_v7())?, Vec::new())
            .await?,
        0
    );
    assert_eq!(total(db.conn()).await?, 0);
    Ok(())
}

#[tokio::test]
async fn record_many_with_one_bad_event_writes_nothing() -> anyhow::Result<()> {
    let (db, tenant) = one_tenant().await?;
    let audit = AuditRepository::new(db.conn());
    let ctx = user_ctx(tenant)?;
    audit.record(&ctx, event(0)).await?;
    let before = total(db.conn()).await?;

    for (field, bad) in invalid_events() {
        let mut batch: Vec<_> = (0..5).map(event).collect();
        batch.insert(3, bad);
        let result = audit.record_many(&ctx, batch).await;
        match &result {
            Err(Error::Validation { field: got, reason }) => {
                assert_eq!(*got, field);
                assert!(reason.contains("event 3 of the batch"), "{reason}");
            }
            other => panic!("expected a validation error on {field}, got {other:?}"),
        }
    }
    assert_eq!(total(db.conn()).await?, before);
    Ok(())
}

#[tokio::test]
async fn record_many_refuses_a_batch_over_the_cap_and_takes_one_at_it() -> anyhow::Result<()> {
    let (db, tenant) = one_tenant().await?;
    let audit = AuditRepository::new(db.conn());
    let ctx = user_ctx(tenant)?;

    let over = vec![event(0); RECORD_MANY_MAX + 1];
    assert_invalid(audit.record_many(&ctx, over).await, "events");
    assert_eq!(total(db.conn()).await?, 0);

    // On SQLite a full batch exceeds the bind-parameter limit of one statement.
    let full: Vec<_> = (0..RECORD_MANY_MAX).map(event).collect();
    assert_eq!(audit.record_many(&ctx, full).await?, RECORD_MANY_MAX as u64);
    let rows = stored(db.conn(), tenant).await?;
    assert_eq!(rows.len(), RECORD_MANY_MAX);
    assert_eq!(
        ids(&rows).into_iter().collect::<HashSet<_>>().len(),
        RECORD_MANY_MAX
    );
    assert!(rows.iter().all(|row| row.created_at == rows[0].created_at));
    assert_eq!(rows[0].resource_id, format!("t-{}", RECORD_MANY_MAX - 1));
    assert_eq!(rows[RECORD_MANY_MAX - 1].resource_id, "t-0");
    Ok(())
}

#[tokio::test]
async fn record_many_of_a_thousand_events() -> anyhow::Result<()> {
    let (db, tenant) = one_tenant().await?;
    let audit = AuditRepository::new(db.conn());
    let ctx = user_ctx(tenant)?;

    let events: Vec<_> = (0..1000).map(event).collect();
    assert_eq!(audit.record_many(&ctx, events).await?, 1000);
    assert_eq!(audit.count(&ctx, &AuditQuery::all()).await?, 1000);
    let read = read_all(&audit, &ctx, &AuditQuery::all(), 500).await?;
    assert_eq!(ids(&read), ids(&stored(db.conn(), tenant).await?));
    assert_eq!(read.len(), 1000);
    Ok(())
}

#[tokio::test]
async fn record_many_for_a_missing_tenant_is_refused_and_writes_nothing() -> anyhow::Result<()> {
    let (db, _tenant) = one_tenant().await?;
    let audit = AuditRepository::new(db.conn());
    let ghost = user_ctx(Uuid::now_v7())?;

    for size in [1, 3, RECORD_MANY_MAX] {
        let events = (0..size).map(event).collect();
        assert_tenant_refused(audit.record_many(&ghost, events).await);
    }
    assert_eq!(total(db.conn()).await?, 0);
    Ok(())
}

#[tokio::test]
async fn record_many_in_a_transaction_rolls_back_with_it() -> anyhow::Result<()> {
    let (db, tenant) = one_tenant().await?;
    let ctx = user_ctx(tenant)?;

    // A full batch: on SQLite its statements run in a savepoint of the caller's transaction.
    let result: Result<(), Error> = transaction(db.conn(), async |txn| {
        let audit = AuditRepository::new(txn);
        audit.record(&ctx, event(0)).await?;
        let events = (0..RECORD_MANY_MAX).map(event).collect();
        assert_eq!(
            audit.record_many(&ctx, events).await?,
            RECORD_MANY_MAX as u64
        );
        assert_eq!(
            audit.count(&ctx, &AuditQuery::all()).await?,
            RECORD_MANY_MAX as u64 + 1
        );
        Err(Error::validation("test", "roll everything back"))
    })
    .await;
    assert_invalid(result, "test");
    assert_eq!(total(db.conn()).await?, 0);

    transaction(db.conn(), async |txn| {
        let events = (0..3).map(event).collect();
        AuditRepository::new(txn).record_many(&ctx, events).await?;
        Ok(())
    })
    .await?;
    assert_eq!(total(db.conn()).await?, 3);
    Ok(())
}

/// Four actors of `tenant`.
fn actors(tenant: Uuid) -> anyhow::Result<Vec<RequestContext>> {
    let alice = Uuid::parse_str("018f0000-0000-7000-8000-00000000000a")?;
    let bob = Uuid::parse_str("018f0000-0000-7000-8000-00000000000b")?;
    Ok(vec![
        RequestContext::new(tenant, Actor::user(alice)?.named("Alice")?)?,
        RequestContext::new(tenant, Actor::user(bob)?)?,
        RequestContext::new(tenant, Actor::system("sla-sweeper")?)?,
        RequestContext::new(
            tenant,
            Actor::new(ActorKind::Agent, "agent-1", Some("Helper".to_owned()))?,
        )?,
    ])
}

const TYPES: [&str; 3] = ["task.created", "task.claimed", "task.completed"];
const RESOURCES: [(&str, &str); 5] = [
    ("task", "t-1"),
    ("task", "t-2"),
    ("user", "u-1"),
    ("group", "g-1"),
    ("task", "t-3"),
];

/// Twenty events, one a millisecond or more apart: every (actor, resource) pair once, event types
/// in turn; then a batch of six by the first actor, sharing one time. Returns the actors.
async fn populate(db: &DatabaseConnection, tenant: Uuid) -> anyhow::Result<Vec<RequestContext>> {
    let ctxs = actors(tenant)?;
    let audit = AuditRepository::new(db);
    for i in 0..20 {
        let (resource_type, resource_id) = RESOURCES[i % 5];
        audit
            .record(
                &ctxs[i % 4],
                NewAuditEvent::new(TYPES[i % 3], "act", resource_type, resource_id),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let batch = (0..6)
        .map(|i| {
            let (resource_type, resource_id) = RESOURCES[i % 5];
            NewAuditEvent::new(TYPES[i % 3], "act", resource_type, resource_id)
        })
        .collect();
    audit.record_many(&ctxs[0], batch).await?;
    Ok(ctxs)
}

/// Checks `query` under `ctx` against the oracle filtered by `keep`: every page size reads the
/// same rows in the same order, and the count agrees. Returns how many rows matched.
async fn check_query(
    db: &DatabaseConnection,
    ctx: &RequestContext,
    query: &AuditQuery,
    keep: impl Fn(&audit_events::Model) -> bool,
) -> anyhow::Result<usize> {
    let audit = AuditRepository::new(db);
    let expected: Vec<_> = stored(db, ctx.tenant_id())
        .await?
        .into_iter()
        .filter(|row| keep(row))
        .collect();
    for limit in [1, 4, 500] {
        let read = read_all(&audit, ctx, query, limit).await?;
        assert_eq!(ids(&read), ids(&expected), "{query:?} in pages of {limit}");
        assert_eq!(read, expected);
    }
    assert_eq!(
        audit.count(ctx, query).await?,
        expected.len() as u64,
        "{query:?}"
    );
    Ok(expected.len())
}

#[tokio::test]
async fn each_filter_alone_and_combined() -> anyhow::Result<()> {
    let (db, tenant) = one_tenant().await?;
    let conn = db.conn();
    let ctxs = populate(conn, tenant).await?;
    let ctx = &ctxs[1];
    let all = stored(conn, tenant).await?;
    assert_eq!(all.len(), 26);
    // The eleventh oldest row's time: ten singles are older, ten singles and the batch are not.
    let middle = all[all.len() - 11].created_at;

    assert_eq!(
        check_query(conn, ctx, &AuditQuery::all(), |_| true).await?,
        26
    );

    let n = check_query(
        conn,
        ctx,
        &AuditQuery::all().event_type("task.claimed"),
        |row| row.event_type == "task.claimed",
    )
    .await?;
    assert_eq!(n, 7 + 2);

    let n = check_query(
        conn,
        ctx,
        &AuditQuery::all().resource("task", "t-1"),
        |row| row.resource_type == "task" && row.resource_id == "t-1",
    )
    .await?;
    assert_eq!(n, 4 + 2);

    // Same id, other type: nothing.
    let n = check_query(
        conn,
        ctx,
        &AuditQuery::all().resource("user", "t-1"),
        |_| false,
    )
    .await?;
    assert_eq!(n, 0);

    let agent = AuditQuery::all().actor("agent", "agent-1");
    let n = check_query(conn, ctx, &agent, |row| {
        row.actor_type == "agent" && row.actor_id == "agent-1"
    })
    .await?;
    assert_eq!(n, 5);

    let alice = ctxs[0].actor().id().to_owned();
    let n = check_query(conn, ctx, &AuditQuery::all().actor("user", &alice), |row| {
        row.actor_type == "user" && row.actor_id == alice
    })
    .await?;
    assert_eq!(n, 5 + 6);
    // The actor's type matters, not only its id.
    let n = check_query(conn, ctx, &AuditQuery::all().actor("agent", &alice), |_| {
        false
    })
    .await?;
    assert_eq!(n, 0);

    let n = check_query(conn, ctx, &AuditQuery::all().from(middle), |row| {
        row.created_at >= middle
    })
    .await?;
    assert_eq!(n, 10 + 6);
    let n = check_query(conn, ctx, &AuditQuery::all().to(middle), |row| {
        row.created_at < middle
    })
    .await?;
    assert_eq!(n, 10);

    // Filters combine with AND.
    let n = check_query(
        conn,
        ctx,
        &AuditQuery::all()
            .actor("user", &alice)
            .resource("task", "t-1"),
        |row| row.actor_id == alice && row.resource_id == "t-1" && row.resource_type == "task",
    )
    .await?;
    assert_eq!(n, 1 + 2);

    let n = check_query(
        conn,
        ctx,
        &AuditQuery::all()
            .event_type("task.created")
            .actor("user", &alice)
            .from(middle),
        |row| row.event_type == "task.created" && row.actor_id == alice && row.created_at >= middle,
    )
    .await?;
    assert_eq!(n, 1 + 2);

    let everything = AuditQuery {
        event_type: Some("task.created".to_owned()),
        resource: Some(("task".to_owned(), "t-1".to_owned())),
        actor: Some(("user".to_owned(), alice.clone())),
        from: Some(all[all.len() - 1].created_at),
        to: Some(all[0].created_at + TimeDelta::seconds(1)),
    };
    let n = check_query(conn, ctx, &everything, |row| {
        row.event_type == "task.created"
            && row.resource_type == "task"
            && row.resource_id == "t-1"
            && row.actor_type == "user"
            && row.actor_id == alice
    })
    .await?;
    assert_eq!(n, 1 + 1);

    // Filter texts are compared trimmed, as stored.
    let n = check_query(
        conn,
        ctx,
        &AuditQuery::all().event_type("  task.claimed "),
        |row| row.event_type == "task.claimed",
    )
    .await?;
    assert_eq!(n, 9);
    Ok(())
}

#[tokio::test]
async fn time_ranges_include_from_and_exclude_to() -> anyhow::Result<()> {
    let (db, tenant) = one_tenant().await?;
    let conn = db.conn();
    let audit = AuditRepository::new(conn);
    let ctx = user_ctx(tenant)?;
    let mut rows = Vec::new();
    for i in 0..5 {
        rows.push(audit.record(&ctx, event(i)).await?);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let t: Vec<_> = rows.iter().map(|row| row.created_at).collect();
    assert!(t.windows(2).all(|pair| pair[0] < pair[1]));

    let newest_first =
        |picked: &[usize]| -> Vec<Uuid> { picked.iter().rev().map(|&i| rows[i].id).collect() };
    let read = |query: AuditQuery| {
        let audit = &audit;
        let ctx = &ctx;
        async move {
            let rows = read_all(audit, ctx, &query, 2).await?;
            let count = audit.count(ctx, &query).await?;
            assert_eq!(count, rows.len() as u64, "{query:?}");
            anyhow::Ok(ids(&rows))
        }
    };

    assert_eq!(
        read(AuditQuery::all().from(t[2])).await?,
        newest_first(&[2, 3, 4])
    );
    assert_eq!(
        read(AuditQuery::all().to(t[2])).await?,
        newest_first(&[0, 1])
    );
    assert_eq!(
        read(AuditQuery::all().from(t[1]).to(t[3])).await?,
        newest_first(&[1, 2])
    );
    assert_eq!(
        read(AuditQuery::all().from(t[2]).to(t[2])).await?,
        newest_first(&[])
    );

    // Bounds between two microseconds: a row at t[2] is before t[2] + 1ns.
    let just_after = t[2] + TimeDelta::nanoseconds(1);
    assert_eq!(
        read(AuditQuery::all().from(just_after)).await?,
        newest_first(&[3, 4])
    );
    assert_eq!(
        read(AuditQuery::all().to(just_after)).await?,
        newest_first(&[0, 1, 2])
    );
    let just_before = t[2] - TimeDelta::nanoseconds(1);
    assert_eq!(
        read(AuditQuery::all().from(just_before)).await?,
        newest_first(&[2, 3, 4])
    );
    assert_eq!(
        read(AuditQuery::all().to(just_before)).await?,
        newest_first(&[0, 1])
    );

    // The same instants written with other offsets select the same rows.
    let india = FixedOffset::east_opt(5 * 3600 + 1800).expect("a valid offset");
    let pacific = FixedOffset::west_opt(8 * 3600).expect("a valid offset");
    let from: DateTime<FixedOffset> = t[1].with_timezone(&india);
    let to: DateTime<FixedOffset> = t[4].with_timezone(&pacific);
    assert_eq!(
        read(AuditQuery::all().from(from).to(to)).await?,
        newest_first(&[1, 2, 3])
    );

    assert_eq!(
        read(AuditQuery::all().from(t[4] + TimeDelta::days(1))).await?,
        newest_first(&[])
    );
    assert_eq!(
        read(AuditQuery::all().to(t[0] - TimeDelta::days(1))).await?,
        newest_first(&[])
    );
    Ok(())
}

#[tokio::test]
async fn query_and_count_refuse_invalid_filters_and_limits() -> anyhow::Result<()> {
    let (db, tenant) = one_tenant().await?;
    let audit = AuditRepository::new(db.conn());
    let ctx = user_ctx(tenant)?;
    audit.record(&ctx, event(0)).await?;
    let now = chrono::Utc::now().fixed_offset();

    let long_label = "x".repeat(LABEL_MAX + 1);
    let long_id = "x".repeat(ID_MAX + 1);
    let cases: Vec<(&str, AuditQuery)> = vec![
        ("event_type", AuditQuery::all().event_type("")),
        ("event_type", AuditQuery::all().event_type("  ")),
        (
            "event_type",
            AuditQuery::all().event_type(long_label.clone()),
        ),
        ("event_type", AuditQuery::all().event_type("a\0b")),
        ("resource_type", AuditQuery::all().resource(" ", "t-1")),
        (
            "resource_type",
            AuditQuery::all().resource(long_label.clone(), "t-1"),
        ),
        ("resource_id", AuditQuery::all().resource("task", "")),
        (
            "resource_id",
            AuditQuery::all().resource("task", long_id.clone()),
        ),
        ("resource_id", AuditQuery::all().resource("task", "t\0")),
        ("actor_type", AuditQuery::all().actor("", "a")),
        ("actor_type", AuditQuery::all().actor("u\0", "a")),
        ("actor_id", AuditQuery::all().actor("user", "\n")),
        ("actor_id", AuditQuery::all().actor("user", long_id)),
        (
            "to",
            AuditQuery::all()
                .from(now)
                .to(now - TimeDelta::microseconds(1)),
        ),
    ];
    for (field, query) in &cases {
        assert_invalid(
            audit.query(&ctx, query, &PageRequest::default()).await,
            field,
        );
        assert_invalid(audit.count(&ctx, query).await, field);
    }

    for limit in [0, 501] {
        assert_invalid(
            audit
                .query(&ctx, &AuditQuery::all(), &PageRequest::first(limit))
                .await,
            "limit",
        );
    }
    assert_eq!(
        audit
            .query(&ctx, &AuditQuery::all(), &PageRequest::first(500))
            .await?
            .items
            .len(),
        1
    );
    Ok(())
}

#[tokio::test]
async fn pages_run_newest_first_with_no_row_missed_or_repeated() -> anyhow::Result<()> {
    let (db, tenant) = one_tenant().await?;
    let conn = db.conn();
    let audit = AuditRepository::new(conn);
    let ctx = user_ctx(tenant)?;

    // Batches share a time, so many rows tie on created_at and only the id orders them.
    let mut next = 0;
    for size in [7, 1, 1, 1, 5, 1, 9] {
        let batch = (next..next + size).map(event).collect();
        audit.record_many(&ctx, batch).await?;
        next += size;
    }
    let expected = stored(conn, tenant).await?;
    assert_eq!(expected.len(), 25);
    let times: HashSet<_> = expected.iter().map(|row| row.created_at).collect();
    assert!(times.len() <= 7 && times.len() < expected.len());
    // Newest first, ties newest id first: the events come back in reverse of recording order.
    let resources: Vec<_> = expected.iter().map(|row| row.resource_id.clone()).collect();
    let reversed: Vec<_> = (0..25).rev().map(|i| format!("t-{i}")).collect();
    assert_eq!(resources, reversed);

    for limit in [1, 2, 3, 4, 5, 7, 9, 24, 25, 26, 500] {
        let read = read_all(&audit, &ctx, &AuditQuery::all(), limit).await?;
        assert_eq!(read, expected, "pages of {limit}");
    }

    // A page of exactly the remaining rows is the last one.
    let page = audit
        .query(&ctx, &AuditQuery::all(), &PageRequest::first(25))
        .await?;
    assert_eq!(page.items.len(), 25);
    assert_eq!(page.next, None);

    // A cursor keeps its place while newer events arrive: they are not on the later pages.
    let first = audit
        .query(&ctx, &AuditQuery::all(), &PageRequest::first(10))
        .await?;
    let cursor = first.next.expect("more pages");
    audit
        .record_many(&ctx, (100..110).map(event).collect())
        .await?;
    let mut rest = Vec::new();
    let mut page = PageRequest::after(cursor, 4);
    loop {
        let got = audit.query(&ctx, &AuditQuery::all(), &page).await?;
        rest.extend(got.items);
        match got.next {
            Some(cursor) => page = PageRequest::after(cursor, 4),
            None => break,
        }
    }
    assert_eq!(ids(&rest), ids(&expected[10..]));
    Ok(())
}

#[tokio::test]
async fn filtered_pages_and_counts_agree() -> anyhow::Result<()> {
    let (db, tenant) = one_tenant().await?;
    let conn = db.conn();
    let ctxs = populate(conn, tenant).await?;
    let ctx = &ctxs[0];
    let audit = AuditRepository::new(conn);

    for (resource_type, resource_id) in RESOURCES {
        let query = AuditQuery::all().resource(resource_type, resource_id);
        let n = check_query(conn, ctx, &query, |row| {
            row.resource_type == resource_type && row.resource_id == resource_id
        })
        .await?;
        assert!(n >= 4);
    }
    for event_type in TYPES {
        let query = AuditQuery::all().event_type(event_type);
        let by_count = audit.count(ctx, &query).await?;
        let by_pages = read_all(&audit, ctx, &query, 3).await?;
        assert_eq!(by_count, by_pages.len() as u64);
        assert!(by_pages.iter().all(|row| row.event_type == event_type));
    }
    let sum: u64 = {
        let mut sum = 0;
        for event_type in TYPES {
            sum += audit
                .count(ctx, &AuditQuery::all().event_type(event_type))
                .await?;
        }
        sum
    };
    assert_eq!(sum, audit.count(ctx, &AuditQuery::all()).await?);
    Ok(())
}

#[tokio::test]
async fn a_tenant_sees_none_of_another_tenants_events() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let conn = db.conn();
    let a = fixtures::tenant(conn, "acme").await?.id;
    let b = fixtures::tenant(conn, "globex").await?.id;
    // The same actors, resources and event types in both tenants.
    let a_ctxs = populate(conn, a).await?;
    let b_ctxs = populate(conn, b).await?;
    AuditRepository::new(conn)
        .record(
            &b_ctxs[0],
            NewAuditEvent::new("only.b", "act", "task", "t-b"),
        )
        .await?;
    assert_eq!(total(conn).await?, 26 + 27);

    let audit = AuditRepository::new(conn);
    let ctx = &a_ctxs[0];
    let b_ids: HashSet<_> = ids(&stored(conn, b).await?).into_iter().collect();
    let alice = ctx.actor().id().to_owned();
    let queries = [
        AuditQuery::all(),
        AuditQuery::all().event_type("task.created"),
        AuditQuery::all().resource("task", "t-1"),
        AuditQuery::all().actor("user", &alice),
        AuditQuery::all().actor("system", "sla-sweeper"),
        AuditQuery::all().from(chrono::Utc::now().fixed_offset() - TimeDelta::hours(1)),
    ];
    for query in &queries {
        let read = read_all(&audit, ctx, query, 5).await?;
        assert!(!read.is_empty(), "{query:?}");
        assert!(read.iter().all(|row| row.tenant_id == a), "{query:?}");
        assert!(read.iter().all(|row| !b_ids.contains(&row.id)), "{query:?}");
        assert_eq!(audit.count(ctx, query).await?, read.len() as u64);
        // The same query under B sees B's rows only.
        let read_b = read_all(&audit, &b_ctxs[0], query, 5).await?;
        assert!(read_b.iter().all(|row| row.tenant_id == b), "{query:?}");
    }
    assert_eq!(audit.count(ctx, &AuditQuery::all()).await?, 26);
    assert_eq!(audit.count(&b_ctxs[0], &AuditQuery::all()).await?, 27);

    // What exists only in B is not there for A, by filter or by count.
    let only_b = AuditQuery::all().event_type("only.b");
    assert_eq!(audit.count(ctx, &only_b).await?, 0);
    assert!(read_all(&audit, ctx, &only_b, 5).await?.is_empty());
    assert_eq!(audit.count(&b_ctxs[0], &only_b).await?, 1);

    // A cursor taken from B's rows only positions A's listing; it reaches none of B's rows.
    let newest_b = stored(conn, b).await?[0].clone();
    let page = audit
        .query(
            ctx,
            &AuditQuery::all(),
            &PageRequest::after(cursor_of(&newest_b), 500),
        )
        .await?;
    assert!(page.items.iter().all(|row| row.tenant_id == a));
    assert_eq!(ids(&page.items), ids(&stored(conn, a).await?));
    Ok(())
}
