//! The audit log of a tenant: who did what to which resource, under which trace.
//!
//! The log is append-only: this repository records and reads events, and offers no way to change
//! or remove one. The actor and the trace of an event are taken from the [`RequestContext`], never
//! from the caller's event, so an event names whoever the request was authenticated as.

use chrono::{DateTime, FixedOffset};
use orkestra_entity::audit_events;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, DbErr,
    EntityTrait, ExprTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Select,
    sea_query::Expr,
};
use serde_json::Value;
use uuid::Uuid;

use crate::clock::{bound, utc};
use crate::context::RequestContext;
use crate::error::{DbResultExt, Error, Result};
use crate::page::{Page, PageRequest, TimeCursor};
use crate::trace::{span, traced};
use crate::tx::Connection;
use crate::{now, scope, tenant_read, tenant_transaction, validate};

/// The most events [`AuditRepository::record_many`] writes in one call.
///
/// PostgreSQL accepts at most 65535 bind parameters in a statement and an event binds one per
/// column (13), so 5000 events (65000 parameters) still fit in the single `INSERT` the batch is
/// written with.
pub const RECORD_MANY_MAX: usize = 5000;

/// The foreign key an event of a missing tenant violates.
const TENANT_FKEY: &str = "audit_events_tenant_id_fkey";

/// The columns of `audit_events`: the bind parameters one event takes in an `INSERT`.
const COLUMNS: usize = 13;

// A full batch must fit in one PostgreSQL statement.
const _: () = assert!(RECORD_MANY_MAX * COLUMNS <= u16::MAX as usize);

/// SQLite's default `SQLITE_MAX_VARIABLE_NUMBER` (since 3.32), kept by the build sqlx bundles: half
/// of what [`RECORD_MANY_MAX`] needs, so a large batch takes more than one statement there.
const SQLITE_PARAMETERS_MAX: usize = 32_766;

/// An event to record. The actor and the trace come from the [`RequestContext`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEvent {
    /// What kind of event this is (`"task.completed"`, `"user.login"`, ...).
    pub event_type: String,
    /// What was done (`"complete"`, `"update"`, ...).
    pub action: String,
    /// The kind of resource acted on (`"task"`, `"user"`, ...).
    pub resource_type: String,
    /// The resource's id (any text: resources live in systems that do not all use UUIDs).
    pub resource_id: String,
    /// Anything else worth keeping, as any JSON value; a JSON `null` is stored as no details.
    pub details: Option<Value>,
}

impl NewAuditEvent {
    /// An event without details.
    pub fn new(
        event_type: impl Into<String>,
        action: impl Into<String>,
        resource_type: impl Into<String>,
        resource_id: impl Into<String>,
    ) -> NewAuditEvent {
        NewAuditEvent {
            event_type: event_type.into(),
            action: action.into(),
            resource_type: resource_type.into(),
            resource_id: resource_id.into(),
            details: None,
        }
    }

    /// The same event with these details.
    #[must_use]
    pub fn with_details(mut self, details: Value) -> NewAuditEvent {
        self.details = Some(details);
        self
    }
}

/// Which events [`AuditRepository::query`] and [`AuditRepository::count`] see; the default sees
/// every event of the tenant. Texts are compared trimmed, as they are stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only events on this resource: `(resource_type, resource_id)`.
    pub resource: Option<(String, String)>,
    /// Only events by this actor: `(actor_type, actor_id)`, as in [`crate::ActorKind::as_str`] and
    /// [`crate::Actor::id`].
    pub actor: Option<(String, String)>,
    /// Only events recorded at or after this instant.
    pub from: Option<DateTime<FixedOffset>>,
    /// Only events recorded before this instant.
    pub to: Option<DateTime<FixedOffset>>,
}

impl AuditQuery {
    /// Every event of the tenant.
    pub fn all() -> AuditQuery {
        AuditQuery::default()
    }

    /// The same query, only events of this type.
    #[must_use]
    pub fn event_type(mut self, event_type: impl Into<String>) -> AuditQuery {
        self.event_type = Some(event_type.into());
        self
    }

    /// The same query, only events on this resource.
    #[must_use]
    pub fn resource(
        mut self,
        resource_type: impl Into<String>,
        resource_id: impl Into<String>,
    ) -> AuditQuery {
        self.resource = Some((resource_type.into(), resource_id.into()));
        self
    }

    /// The same query, only events by this actor.
    #[must_use]
    pub fn actor(
        mut self,
        actor_type: impl Into<String>,
        actor_id: impl Into<String>,
    ) -> AuditQuery {
        self.actor = Some((actor_type.into(), actor_id.into()));
        self
    }

    /// The same query, only events recorded at or after `from`.
    #[must_use]
    pub fn from(mut self, from: DateTime<FixedOffset>) -> AuditQuery {
        self.from = Some(from);
        self
    }

    /// The same query, only events recorded before `to`.
    #[must_use]
    pub fn to(mut self, to: DateTime<FixedOffset>) -> AuditQuery {
        self.to = Some(to);
        self
    }
}

/// The audit log of the context's tenant.
#[derive(Debug, Clone, Copy)]
pub struct AuditRepository<'a, C> {
    db: &'a C,
}

impl<'a, C: Connection> AuditRepository<'a, C> {
    /// A repository on `db`, a pool or a transaction.
    pub fn new(db: &'a C) -> Self {
        AuditRepository { db }
    }

    /// Records an event in the context's tenant, by the context's actor, under its trace.
    ///
    /// # Errors
    /// - [`Error::Validation`]: an empty, over-long or NUL-holding event type, action, resource
    ///   type or resource id; details nested too deeply, too large or holding a NUL character;
    /// - [`Error::Reference`] (`audit_events_tenant_id_fkey`): the context's tenant does not exist;
    /// - [`Error::Db`].
    pub async fn record(
        &self,
        ctx: &RequestContext,
        event: NewAuditEvent,
    ) -> Result<audit_events::Model> {
        traced(span!("orkestra.audit.record", ctx), async move {
            let row = row(ctx, event, Uuid::now_v7(), now())?;
            tenant_transaction(self.db, ctx, async |txn| {
                row.insert(txn).await.or_reference(TENANT_FKEY)
            })
            .await
        })
        .await
    }

    /// Records several events in the context's tenant in one `INSERT`, all or none; returns how
    /// many were written.
    ///
    /// Every event is checked before anything is written. The events share one `created_at` and
    /// get increasing ids in the order given, so they list (newest first) last to first. An empty
    /// batch writes nothing and issues no statement.
    ///
    /// On SQLite, whose bind-parameter limit is half of PostgreSQL's, a batch of more than 2520
    /// events is written as several `INSERT`s in one transaction (a savepoint inside the caller's),
    /// so it is still all or none.
    ///
    /// # Errors
    /// - [`Error::Validation`]: more than [`RECORD_MANY_MAX`] events (field `events`), or an event
    ///   that [`record`](Self::record) would refuse (the reason names its position);
    /// - [`Error::Reference`] (`audit_events_tenant_id_fkey`): the context's tenant does not exist;
    /// - [`Error::Db`].
    pub async fn record_many(
        &self,
        ctx: &RequestContext,
        events: Vec<NewAuditEvent>,
    ) -> Result<u64> {
        traced(span!("orkestra.audit.record_many", ctx), async move {
            if events.len() > RECORD_MANY_MAX {
                return Err(Error::validation(
                    "events",
                    format!(
                        "holds {} events; the limit is {RECORD_MANY_MAX}",
                        events.len()
                    ),
                ));
            }
            if events.is_empty() {
                return Ok(0);
            }
            let created_at = now();
            let rows = events
                .into_iter()
                .enumerate()
                .map(|(index, event)| {
                    row(ctx, event, Uuid::now_v7(), created_at).map_err(|error| match error {
                        Error::Validation { field, reason } => Error::Validation {
                            field,
                            reason: format!("{reason} (event {index} of the batch)"),
                        },
                        other => other,
                    })
                })
                .collect::<Result<Vec<_>>>()?;

            let chunk = match self.db.get_database_backend() {
                DbBackend::Sqlite => SQLITE_PARAMETERS_MAX / COLUMNS,
                _ => RECORD_MANY_MAX,
            };
            tenant_transaction(self.db, ctx, async |txn| {
                let mut written = 0;
                let mut rows = rows.into_iter().peekable();
                while rows.peek().is_some() {
                    written += insert(txn, rows.by_ref().take(chunk).collect())
                        .await
                        .or_reference(TENANT_FKEY)?;
                }
                Ok(written)
            })
            .await
        })
        .await
    }

    /// A page of the tenant's events matching `query`, newest first (by `created_at`, then id).
    ///
    /// # Errors
    /// - [`Error::Validation`]: a limit outside 1..=500; a filter text that could not have been
    ///   stored (empty, over-long, NUL-holding); `from` after `to`; `from`, `to` or the cursor
    ///   (field `after`) outside years 1 to 9999 ([`validate::INSTANT_MIN`]);
    /// - [`Error::Db`].
    pub async fn query(
        &self,
        ctx: &RequestContext,
        query: &AuditQuery,
        page: &PageRequest<TimeCursor>,
    ) -> Result<Page<audit_events::Model, TimeCursor>> {
        traced(span!("orkestra.audit.query", ctx), async move {
            page.after.as_ref().map(TimeCursor::check).transpose()?;
            let mut select = filtered(ctx, query)?;
            if let Some(after) = &page.after {
                // A row-value comparison rather than its OR form: PostgreSQL turns it into a single
                // index range on (tenant_id, created_at, id), where the OR form needs a filter.
                select = select.filter(
                    Expr::tuple([
                        Expr::col((audit_events::Entity, audit_events::Column::CreatedAt)),
                        Expr::col((audit_events::Entity, audit_events::Column::Id)),
                    ])
                    .lt(Expr::tuple([
                        Expr::value(utc(after.created_at)),
                        Expr::value(after.id),
                    ])),
                );
            }
            let select = select
                .order_by_desc(audit_events::Column::CreatedAt)
                .order_by_desc(audit_events::Column::Id)
                .limit(page.fetch()?);
            let rows = tenant_read(self.db, ctx, async |txn| Ok(select.all(txn).await?)).await?;
            Ok(Page::from_rows(rows, page.limit, |event| TimeCursor {
                created_at: event.created_at,
                id: event.id,
            }))
        })
        .await
    }

    /// How many of the tenant's events match `query`.
    ///
    /// # Errors
    /// - [`Error::Validation`]: a filter text that could not have been stored (empty, over-long,
    ///   NUL-holding); `from` after `to`; `from` or `to` outside years 1 to 9999
    ///   ([`validate::INSTANT_MIN`]);
    /// - [`Error::Db`].
    pub async fn count(&self, ctx: &RequestContext, query: &AuditQuery) -> Result<u64> {
        traced(span!("orkestra.audit.count", ctx), async move {
            let select = filtered(ctx, query)?;
            tenant_read(self.db, ctx, async |txn| Ok(select.count(txn).await?)).await
        })
        .await
    }
}

/// The row of a validated event.
fn row(
    ctx: &RequestContext,
    event: NewAuditEvent,
    id: Uuid,
    created_at: DateTime<FixedOffset>,
) -> Result<audit_events::ActiveModel> {
    let event_type = validate::text("event_type", &event.event_type, validate::LABEL_MAX)?;
    let action = validate::text("action", &event.action, validate::LABEL_MAX)?;
    let resource_type = validate::text("resource_type", &event.resource_type, validate::LABEL_MAX)?;
    let resource_id = validate::text("resource_id", &event.resource_id, validate::ID_MAX)?;
    // One spelling of "no details": a JSON null would otherwise read back as SQL NULL or not,
    // depending on the backend and driver.
    let details = event.details.filter(|details| !details.is_null());
    if let Some(details) = &details {
        validate::json("details", details)?;
    }
    let actor = ctx.actor();
    Ok(audit_events::ActiveModel {
        id: Set(id),
        tenant_id: Set(ctx.tenant_id()),
        event_type: Set(event_type),
        action: Set(action),
        actor_type: Set(actor.kind().as_str().to_owned()),
        actor_id: Set(actor.id().to_owned()),
        actor_name: Set(actor.name().map(str::to_owned)),
        resource_type: Set(resource_type),
        resource_id: Set(resource_id),
        details: Set(details),
        trace_id: Set(ctx.trace_id().map(str::to_owned)),
        span_id: Set(ctx.span_id().map(str::to_owned)),
        created_at: Set(created_at),
    })
}

/// One multi-row `INSERT`; the number of rows written.
async fn insert(
    db: &impl ConnectionTrait,
    rows: Vec<audit_events::ActiveModel>,
) -> std::result::Result<u64, DbErr> {
    audit_events::Entity::insert_many(rows)
        .exec_without_returning(db)
        .await
}

/// The tenant's events matching `query`, unordered.
fn filtered(ctx: &RequestContext, query: &AuditQuery) -> Result<Select<audit_events::Entity>> {
    query
        .from
        .map(|from| validate::instant("from", from))
        .transpose()?;
    query.to.map(|to| validate::instant("to", to)).transpose()?;
    let mut select = scope::find::<audit_events::Entity>(ctx);
    if let Some(event_type) = &query.event_type {
        let event_type = validate::text("event_type", event_type, validate::LABEL_MAX)?;
        select = select.filter(audit_events::Column::EventType.eq(event_type));
    }
    if let Some((resource_type, resource_id)) = &query.resource {
        let resource_type = validate::text("resource_type", resource_type, validate::LABEL_MAX)?;
        let resource_id = validate::text("resource_id", resource_id, validate::ID_MAX)?;
        select = select
            .filter(audit_events::Column::ResourceType.eq(resource_type))
            .filter(audit_events::Column::ResourceId.eq(resource_id));
    }
    if let Some((actor_type, actor_id)) = &query.actor {
        let actor_type = validate::text("actor_type", actor_type, validate::LABEL_MAX)?;
        let actor_id = validate::text("actor_id", actor_id, validate::ID_MAX)?;
        select = select
            .filter(audit_events::Column::ActorType.eq(actor_type))
            .filter(audit_events::Column::ActorId.eq(actor_id));
    }
    if let (Some(from), Some(to)) = (query.from, query.to)
        && from > to
    {
        return Err(Error::validation("to", "must not be before from"));
    }
    if let Some(from) = query.from {
        select = select.filter(audit_events::Column::CreatedAt.gte(bound(from)));
    }
    if let Some(to) = query.to {
        select = select.filter(audit_events::Column::CreatedAt.lt(bound(to)));
    }
    Ok(select)
}

#[cfg(test)]
mod tests {
    use sea_orm::{Iterable, MockDatabase, MockExecResult, Statement, Value as DbValue};
    use serde_json::json;

    use super::*;
    use crate::context::Actor;
    // `testing::bound` by its path: `bound` here is the clock's.
    use crate::testing::{self, assert_scoped, committed, one_each, statements, tenant_calls};

    fn context() -> RequestContext {
        RequestContext::new(
            Uuid::now_v7(),
            Actor::user(Uuid::now_v7()).expect("a non-nil user"),
        )
        .and_then(|ctx| ctx.with_trace("trace-1", Some("span-1")))
        .expect("a valid context")
    }

    fn model(ctx: &RequestContext) -> audit_events::Model {
        audit_events::Model {
            id: Uuid::now_v7(),
            tenant_id: ctx.tenant_id(),
            event_type: "task.created".to_owned(),
            action: "create".to_owned(),
            actor_type: "user".to_owned(),
            actor_id: ctx.actor().id().to_owned(),
            actor_name: None,
            resource_type: "task".to_owned(),
            resource_id: "t-1".to_owned(),
            details: Some(json!({"k": 1})),
            trace_id: Some("trace-1".to_owned()),
            span_id: Some("span-1".to_owned()),
            created_at: now(),
        }
    }

    fn values(statement: &Statement) -> Vec<DbValue> {
        statement
            .values
            .as_ref()
            .map(|values| values.0.clone())
            .unwrap_or_default()
    }

    /// Asserts an `INSERT` writes every row into the context's tenant; returns how many rows.
    #[track_caller]
    fn assert_insert_scoped(statement: &Statement, ctx: &RequestContext) -> usize {
        assert!(
            statement
                .sql
                .starts_with(r#"INSERT INTO "audit_events" ("id", "tenant_id","#),
            "{}",
            statement.sql
        );
        let values = values(statement);
        assert_eq!(values.len() % COLUMNS, 0, "{}", statement.sql);
        for row in values.chunks(COLUMNS) {
            assert_eq!(row[1], DbValue::from(ctx.tenant_id()), "{}", statement.sql);
        }
        values.len() / COLUMNS
    }

    #[test]
    fn columns_is_the_column_count_of_audit_events() {
        assert_eq!(audit_events::Column::iter().count(), COLUMNS);
    }

    #[test]
    fn bounds_are_utc_and_rounded_up_to_the_microsecond() {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456+02:00").unwrap();
        assert_eq!(bound(at).to_rfc3339(), "2026-01-02T01:04:05.123456+00:00");
        let between = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456001+02:00").unwrap();
        assert_eq!(
            bound(between).to_rfc3339(),
            "2026-01-02T01:04:05.123457+00:00"
        );
    }

    #[tokio::test]
    async fn record_inserts_into_the_contexts_tenant() -> anyhow::Result<()> {
        let ctx = context();
        let stored = model(&ctx);
        let db = MockDatabase::new(DbBackend::Postgres)
            .append_exec_results([testing::bound()])
            .append_query_results([[stored.clone()]])
            .into_connection();
        let event = NewAuditEvent::new("task.created", "create", "task", "t-1")
            .with_details(json!({"k": 1}));
        let recorded = AuditRepository::new(&db).record(&ctx, event).await?;
        assert_eq!(recorded, stored);

        let calls = tenant_calls(db, ctx.tenant_id());
        assert_eq!(committed(&calls), [true]);
        let statements = one_each(&calls);
        assert_eq!(assert_insert_scoped(&statements[0], &ctx), 1);
        assert!(
            statements[0].sql.contains("RETURNING"),
            "{}",
            statements[0].sql
        );
        Ok(())
    }

    #[tokio::test]
    async fn record_many_is_one_insert_into_the_contexts_tenant() -> anyhow::Result<()> {
        let ctx = context();
        let db = MockDatabase::new(DbBackend::Postgres)
            .append_exec_results([
                testing::bound(),
                MockExecResult {
                    last_insert_id: 0,
                    rows_affected: 3,
                },
            ])
            .into_connection();
        let events = (0..3)
            .map(|i| NewAuditEvent::new("task.created", "create", "task", format!("t-{i}")))
            .collect();
        let written = AuditRepository::new(&db).record_many(&ctx, events).await?;
        assert_eq!(written, 3);

        let calls = tenant_calls(db, ctx.tenant_id());
        assert_eq!(committed(&calls), [true]);
        let statements = one_each(&calls);
        assert_eq!(assert_insert_scoped(&statements[0], &ctx), 3);
        Ok(())
    }

    #[tokio::test]
    async fn record_many_at_the_cap_is_still_one_insert_on_postgres() -> anyhow::Result<()> {
        let ctx = context();
        let db = MockDatabase::new(DbBackend::Postgres)
            .append_exec_results([
                testing::bound(),
                MockExecResult {
                    last_insert_id: 0,
                    rows_affected: RECORD_MANY_MAX as u64,
                },
            ])
            .into_connection();
        let events = vec![NewAuditEvent::new("e", "a", "r", "1"); RECORD_MANY_MAX];
        AuditRepository::new(&db).record_many(&ctx, events).await?;

        let statements = one_each(&tenant_calls(db, ctx.tenant_id()));
        assert_eq!(assert_insert_scoped(&statements[0], &ctx), RECORD_MANY_MAX);
        Ok(())
    }

    #[tokio::test]
    async fn record_many_issues_nothing_when_empty_refused_or_over_the_cap() -> anyhow::Result<()> {
        let ctx = context();
        let db = MockDatabase::new(DbBackend::Postgres).into_connection();
        let audit = AuditRepository::new(&db);
        assert_eq!(audit.record_many(&ctx, Vec::new()).await?, 0);

        let good = NewAuditEvent::new("e", "a", "r", "1");
        let bad = NewAuditEvent::new("e", " ", "r", "1");
        let refused = audit.record_many(&ctx, vec![good.clone(), bad]).await;
        assert!(
            matches!(&refused, Err(Error::Validation { field: "action", reason }) if reason.contains("event 1")),
            "{refused:?}"
        );
        let over = audit
            .record_many(&ctx, vec![good; RECORD_MANY_MAX + 1])
            .await;
        assert!(
            matches!(
                over,
                Err(Error::Validation {
                    field: "events",
                    ..
                })
            ),
            "{over:?}"
        );
        assert_eq!(statements(db), Vec::<Statement>::new());
        Ok(())
    }

    #[tokio::test]
    async fn refused_arguments_send_nothing() {
        let ctx = context();
        let db = MockDatabase::new(DbBackend::Postgres).into_connection();
        let audit = AuditRepository::new(&db);
        let result = audit
            .record(&ctx, NewAuditEvent::new("e", "a", "r", "1\0"))
            .await;
        assert!(
            matches!(
                result,
                Err(Error::Validation {
                    field: "resource_id",
                    ..
                })
            ),
            "{result:?}"
        );
        let backwards = AuditQuery::all()
            .from(now())
            .to(now() - chrono::Duration::hours(1));
        let blank = AuditQuery::all().event_type(" ");
        for query in [&backwards, &blank] {
            let result = audit.query(&ctx, query, &PageRequest::first(10)).await;
            assert!(
                matches!(result, Err(Error::Validation { .. })),
                "{result:?}"
            );
            let result = audit.count(&ctx, query).await;
            assert!(
                matches!(result, Err(Error::Validation { .. })),
                "{result:?}"
            );
        }
        let result = audit
            .query(&ctx, &AuditQuery::all(), &PageRequest::first(0))
            .await;
        assert!(
            matches!(result, Err(Error::Validation { field: "limit", .. })),
            "{result:?}"
        );
        assert_eq!(statements(db), Vec::<Statement>::new());
    }

    #[tokio::test]
    async fn query_selects_only_the_contexts_tenant() -> anyhow::Result<()> {
        let ctx = context();
        let rows = [model(&ctx), model(&ctx)];
        let db = MockDatabase::new(DbBackend::Postgres)
            .append_exec_results([testing::bound(), testing::bound()])
            .append_query_results([rows.to_vec(), rows.to_vec()])
            .into_connection();
        let audit = AuditRepository::new(&db);
        let query = AuditQuery::all()
            .event_type("task.created")
            .resource("task", "t-1")
            .actor("user", ctx.actor().id())
            .from(now())
            .to(now());
        let first = audit.query(&ctx, &query, &PageRequest::first(1)).await?;
        assert_eq!(first.items.len(), 1);
        let cursor = first.next.expect("a next page");
        audit
            .query(&ctx, &AuditQuery::all(), &PageRequest::after(cursor, 10))
            .await?;

        let statements = one_each(&tenant_calls(db, ctx.tenant_id()));
        assert_eq!(statements.len(), 2);
        for statement in &statements {
            assert_scoped(statement, ctx.tenant_id());
            assert!(
                statement.sql.contains(
                    r#"ORDER BY "audit_events"."created_at" DESC, "audit_events"."id" DESC LIMIT $"#
                ),
                "{}",
                statement.sql
            );
        }
        assert!(
            statements[1]
                .sql
                .contains(r#"("audit_events"."created_at", "audit_events"."id") < ($2, $3)"#),
            "{}",
            statements[1].sql
        );
        Ok(())
    }

    #[tokio::test]
    async fn count_counts_only_the_contexts_tenant() -> anyhow::Result<()> {
        let ctx = context();
        let db = MockDatabase::new(DbBackend::Postgres)
            .append_exec_results([testing::bound(), testing::bound()])
            .append_query_results([
                [std::collections::BTreeMap::from([(
                    "num_items",
                    DbValue::from(7i64),
                )])],
                [std::collections::BTreeMap::from([(
                    "num_items",
                    DbValue::from(2i64),
                )])],
            ])
            .into_connection();
        let audit = AuditRepository::new(&db);
        assert_eq!(audit.count(&ctx, &AuditQuery::all()).await?, 7);
        let query = AuditQuery::all().resource("task", "t-1");
        assert_eq!(audit.count(&ctx, &query).await?, 2);

        let statements = one_each(&tenant_calls(db, ctx.tenant_id()));
        assert_eq!(statements.len(), 2);
        for statement in &statements {
            assert!(
                statement.sql.starts_with("SELECT COUNT(*)"),
                "{}",
                statement.sql
            );
            assert_scoped(statement, ctx.tenant_id());
        }
        Ok(())
    }
}
