//! What the repository costs over hand-written SQL: each core operation run through the repository
//! and written by hand with sqlx (the sqlx sea-orm itself uses, `sea_orm::sqlx`), in the same run,
//! on the same data, alternating which goes first. Both connect as the application role, so
//! row-level security applies to both, and the hand-written version keeps the repository's
//! guarantees at the fewest round trips sqlx allows: one transaction, begun with its tenant binding
//! in one message (`BEGIN; SELECT orkestra_bind_tenant(...)`), every statement naming its tenant, a
//! guarded `UPDATE ... RETURNING` and its history row in the same transaction, reads ended by
//! dropping the transaction (sqlx sends the rollback when the connection goes back to the pool),
//! and no liveness check before each call.
//!
//! With `--rtt MS` the pools reach the server through a proxy that delays each direction by half
//! of MS, as a network between a service and its database would (`--rtt 0 --rtt 0.5`: a table for
//! each). It then counts what each operation sends on the wire, through a counting proxy between
//! the pools and the server: statements (simple queries and extended-protocol executes, BEGIN,
//! COMMIT, SAVEPOINT and the binding included) and round trips (each simple query or `Sync`), on
//! the caller's path (sent before the call returned) and after it (the release of the connection:
//! sqlx's check, and the rollback of a read).
//!
//! `DATABASE_URL=postgres://... cargo run --release -p orkestra-bench --bin repo-bench -- [options]`
//! (`just bench`): `--iterations N` (default 500), `--warmup N` (default 50), `--only NAME` (an
//! operation whose name contains NAME), `--rtt MS` (repeatable; default 0), `--show-sql` (print
//! the statements of one call of each side). It works in a database of its own and drops it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use chrono::{DateTime, FixedOffset, Utc};
use orkestra_bench::stats::Latencies;
use orkestra_entity::{audit_events, messages, sea_orm_active_enums::TaskStatus, tasks};
use orkestra_repository::tx::begin_bound_sql;
use orkestra_repository::{
    Actor, AssignTo, AuditQuery, AuditRepository, ConversationRepository, DbConfig,
    GroupRepository, NewAuditEvent, NewConversation, NewGroup, NewMessage, NewTask, NewTenant,
    NewUser, PageRequest, RequestContext, TaskRepository, TenantRepository, UserRepository,
    connect,
};
use orkestra_tests::{TestDb, pg};
use sea_orm::sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sea_orm::sqlx::{self, Postgres, Row, Transaction};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

/// Tenants in the database, and tasks, audit events of each.
const TENANTS: usize = 10;
const TASKS_PER_TENANT: usize = 2_000;
const AUDIT_PER_TENANT: usize = 2_000;
/// Messages of the conversation whose first page is read.
const MESSAGES: usize = 500;
/// Rows per page, as a service's inbox shows them.
const PAGE: u64 = 50;
/// Events per `record_many` batch.
const BATCH: usize = 1_000;
/// Calls per side whose wire traffic is counted, after as many warm-up calls.
const COUNTED: usize = 10;

/// The operations, in the order they run.
const OPERATIONS: [&str; 10] = [
    "create task + history",
    "claim",
    "complete",
    "inbox page (50)",
    "overdue page (50)",
    "append message",
    "message page (50)",
    "audit record",
    "audit record_many (1000)",
    "audit query page (50)",
];

/// The columns of `tasks` as the repository reads them (the enum as text).
const TASK_COLUMNS: &str = "id, tenant_id, workflow_id, workflow_run_id, title, description, \
    form_schema, form_data, assigned_user_id, assigned_group_id, claimed_by, context, \
    conversation_id, sla_deadline, sla_config, status::text AS status, created_at, updated_at, \
    completed_at, completed_by";
const MESSAGE_COLUMNS: &str = "id, tenant_id, conversation_id, role, content, metadata, created_at";
const AUDIT_COLUMNS: &str = "id, tenant_id, event_type, action, actor_type, actor_id, actor_name, \
    resource_type, resource_id, details, trace_id, span_id, created_at";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Repo,
    Hand,
}

/// The data the operations run on, and the rows each side consumes.
struct Env {
    ctx: RequestContext,
    tenant: Uuid,
    user: Uuid,
    /// A group the user is not in: created tasks go there, out of the user's inbox.
    other_group: Uuid,
    read_conversation: Uuid,
    append_conversation: Uuid,
    overdue_at: DateTime<FixedOffset>,
    /// Assigned tasks to claim, per side (repository, hand-written).
    to_claim: [Vec<Uuid>; 2],
    /// Tasks claimed by the user, to complete, per side.
    to_complete: [Vec<Uuid>; 2],
}

fn now() -> DateTime<FixedOffset> {
    Utc::now().fixed_offset()
}

async fn seed(db: &TestDb, fresh_per_side: usize) -> anyhow::Result<Env> {
    let conn = db.conn();
    let mut env = None;
    for n in 0..TENANTS {
        let tenant = TenantRepository::new(conn)
            .create(NewTenant::new(format!("Tenant {n}"), format!("tenant-{n}")))
            .await?
            .id;
        let owner_ctx = orkestra_tests::repo::ctx(tenant);
        let user = UserRepository::new(conn)
            .create(&owner_ctx, NewUser::new("ada@example.com", "Ada"))
            .await?
            .id;
        let groups = GroupRepository::new(conn);
        let mut group_ids = Vec::new();
        for g in 0..5 {
            let group = groups
                .create(
                    &owner_ctx,
                    NewGroup::new(format!("Group {g}"), format!("group-{g}")),
                )
                .await?
                .id;
            // The user is in three of the five groups.
            if g < 3 {
                groups.add_member(&owner_ctx, group, user).await?;
            }
            group_ids.push(format!("'{group}'"));
        }
        let group_array = group_ids.join(",");
        // Bulk rows, written straight in SQL as the owner: the calls measured below are what
        // matters. A mix of statuses, groups (some tasks also assigned to the user directly),
        // deadlines in the past, in the future and none.
        conn.execute_unprepared(&format!(
            "INSERT INTO tasks (id, tenant_id, workflow_id, workflow_run_id, title, form_schema, \
             assigned_group_id, assigned_user_id, claimed_by, status, sla_deadline, created_at) \
             SELECT gen_random_uuid(), '{tenant}', 'wf', 'run-' || (i % 50), 'Task ' || i, '{{}}', \
             (ARRAY[{group_array}]::uuid[])[1 + i % 5], \
             CASE WHEN i % 7 = 0 THEN '{user}'::uuid END, \
             CASE WHEN i % 6 = 3 THEN '{user}'::uuid END, \
             (ARRAY['ASSIGNED','ASSIGNED','ASSIGNED','CLAIMED','COMPLETED','ESCALATED']::task_status[])[1 + i % 6], \
             CASE WHEN i % 4 = 0 THEN NULL ELSE now() + ((i % 600) - 150) * interval '1 minute' END, \
             now() - i * interval '1 second' \
             FROM generate_series(1, {TASKS_PER_TENANT}) i;
             INSERT INTO task_history (id, tenant_id, task_id, action, actor_type, actor_id) \
             SELECT gen_random_uuid(), tenant_id, id, 'created', 'system', 'seed' \
             FROM tasks WHERE tenant_id = '{tenant}';
             INSERT INTO audit_events (id, tenant_id, event_type, action, actor_type, actor_id, \
             resource_type, resource_id, created_at) \
             SELECT gen_random_uuid(), '{tenant}', 'task', 'created', 'system', 'seed', 'task', \
             i::text, now() - i * interval '1 second' FROM generate_series(1, {AUDIT_PER_TENANT}) i"
        ))
        .await?;
        if env.is_some() {
            continue;
        }
        // The measured tenant: conversations, and fresh tasks for the state changes.
        let conversations = ConversationRepository::new(conn);
        let read = conversations
            .create(&owner_ctx, NewConversation::new(json!({"kind": "user"})))
            .await?
            .id;
        let append = conversations
            .create(&owner_ctx, NewConversation::new(json!({"kind": "user"})))
            .await?
            .id;
        conn.execute_unprepared(&format!(
            "INSERT INTO messages (id, tenant_id, conversation_id, role, content, created_at) \
             SELECT gen_random_uuid(), '{tenant}', '{read}', 'user', 'Message ' || i, \
             now() - i * interval '1 second' FROM generate_series(1, {MESSAGES}) i"
        ))
        .await?;
        let fresh = async |status: &str, claimed_by: &str| -> anyhow::Result<[Vec<Uuid>; 2]> {
            let rows = conn
                .query_all_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    format!(
                        "INSERT INTO tasks (id, tenant_id, workflow_id, workflow_run_id, title, \
                         form_schema, assigned_group_id, claimed_by, status) \
                         SELECT gen_random_uuid(), '{tenant}', 'bench', 'fresh', 'Fresh ' || i, \
                         '{{}}', {first_group}, {claimed_by}, '{status}' \
                         FROM generate_series(1, {count}) i RETURNING id",
                        first_group = group_ids[0],
                        count = 2 * fresh_per_side,
                    ),
                ))
                .await?;
            let mut sides = [Vec::new(), Vec::new()];
            // Alternate, so that neither side gets all the rows inserted later.
            for (n, row) in rows.iter().enumerate() {
                sides[n % 2].push(row.try_get::<Uuid>("", "id")?);
            }
            Ok(sides)
        };
        let to_claim = fresh("ASSIGNED", "NULL").await?;
        let to_complete = fresh("CLAIMED", &format!("'{user}'")).await?;
        let ctx =
            RequestContext::new(tenant, Actor::user(user)?)?.with_trace("bench", Some("1"))?;
        env = Some(Env {
            ctx,
            tenant,
            user,
            other_group: group_ids[4].trim_matches('\'').parse()?,
            read_conversation: read,
            append_conversation: append,
            overdue_at: now(),
            to_claim,
            to_complete,
        });
    }
    conn.execute_unprepared("VACUUM ANALYZE").await?;
    env.context("no tenant seeded")
}

/// A task the repository creates, and the hand-written version inserts.
fn new_task(env: &Env) -> NewTask {
    NewTask::new(
        "wf",
        "run-new",
        "Review the contract",
        json!({"type": "object"}),
    )
    .assigned_to(AssignTo::group(env.other_group))
}

/// The events of a `record_many` batch.
fn batch() -> Vec<NewAuditEvent> {
    (0..BATCH)
        .map(|n| {
            NewAuditEvent::new("task", "viewed", "task", format!("t-{n}"))
                .with_details(json!({"n": n}))
        })
        .collect()
}

/// One call of `op` through the repository.
async fn repo_op(op: &str, env: &mut Env, db: &DatabaseConnection) -> anyhow::Result<()> {
    let ctx = &env.ctx;
    let tasks = TaskRepository::new(db);
    match op {
        "create task + history" => {
            tasks.create(ctx, new_task(env)).await?;
        }
        "claim" => {
            let id = env.to_claim[0].pop().context("out of tasks to claim")?;
            tasks.claim(ctx, id, env.user).await?;
        }
        "complete" => {
            let id = env.to_complete[0]
                .pop()
                .context("out of tasks to complete")?;
            tasks
                .complete(ctx, id, env.user, json!({"approved": true}))
                .await?;
        }
        "inbox page (50)" => {
            let page = tasks
                .find_pending_for_user(ctx, env.user, &PageRequest::first(PAGE))
                .await?;
            ensure!(page.items.len() == PAGE as usize);
        }
        "overdue page (50)" => {
            let page = tasks
                .overdue(ctx, env.overdue_at, &PageRequest::first(PAGE))
                .await?;
            ensure!(page.items.len() == PAGE as usize);
        }
        "append message" => {
            ConversationRepository::new(db)
                .append_message(
                    ctx,
                    env.append_conversation,
                    NewMessage::new("user", "Hello"),
                )
                .await?;
        }
        "message page (50)" => {
            let page = ConversationRepository::new(db)
                .list_messages(ctx, env.read_conversation, &PageRequest::first(PAGE))
                .await?;
            ensure!(page.items.len() == PAGE as usize);
        }
        "audit record" => {
            let event =
                NewAuditEvent::new("task", "viewed", "task", "t-1").with_details(json!({"n": 1}));
            AuditRepository::new(db).record(ctx, event).await?;
        }
        "audit record_many (1000)" => {
            let written = AuditRepository::new(db).record_many(ctx, batch()).await?;
            ensure!(written == BATCH as u64);
        }
        "audit query page (50)" => {
            let page = AuditRepository::new(db)
                .query(ctx, &AuditQuery::all(), &PageRequest::first(PAGE))
                .await?;
            ensure!(page.items.len() == PAGE as usize);
        }
        other => bail!("unknown operation {other}"),
    }
    Ok(())
}

/// A transaction confined to `tenant`, begun as the repository begins one: `BEGIN` and the
/// binding in one message, which is as few round trips as sqlx allows.
async fn begin(pool: &PgPool, tenant: Uuid) -> sqlx::Result<Transaction<'static, Postgres>> {
    pool.begin_with(sqlx::AssertSqlSafe(begin_bound_sql(tenant)))
        .await
}

/// A task status from its label.
fn status(label: &str) -> anyhow::Result<TaskStatus> {
    Ok(match label {
        "CREATED" => TaskStatus::Created,
        "ASSIGNED" => TaskStatus::Assigned,
        "CLAIMED" => TaskStatus::Claimed,
        "COMPLETED" => TaskStatus::Completed,
        "ESCALATED" => TaskStatus::Escalated,
        "EXPIRED" => TaskStatus::Expired,
        "CANCELLED" => TaskStatus::Cancelled,
        other => bail!("unknown task status {other}"),
    })
}

fn task(row: &PgRow) -> anyhow::Result<tasks::Model> {
    Ok(tasks::Model {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        workflow_id: row.try_get("workflow_id")?,
        workflow_run_id: row.try_get("workflow_run_id")?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        form_schema: row.try_get("form_schema")?,
        form_data: row.try_get("form_data")?,
        assigned_user_id: row.try_get("assigned_user_id")?,
        assigned_group_id: row.try_get("assigned_group_id")?,
        claimed_by: row.try_get("claimed_by")?,
        context: row.try_get("context")?,
        conversation_id: row.try_get("conversation_id")?,
        sla_deadline: row.try_get("sla_deadline")?,
        sla_config: row.try_get("sla_config")?,
        status: status(&row.try_get::<String, _>("status")?)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        completed_at: row.try_get("completed_at")?,
        completed_by: row.try_get("completed_by")?,
    })
}

fn message(row: &PgRow) -> anyhow::Result<messages::Model> {
    Ok(messages::Model {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        conversation_id: row.try_get("conversation_id")?,
        role: row.try_get("role")?,
        content: row.try_get("content")?,
        metadata: row.try_get("metadata")?,
        created_at: row.try_get("created_at")?,
    })
}

fn audit_event(row: &PgRow) -> anyhow::Result<audit_events::Model> {
    Ok(audit_events::Model {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        event_type: row.try_get("event_type")?,
        action: row.try_get("action")?,
        actor_type: row.try_get("actor_type")?,
        actor_id: row.try_get("actor_id")?,
        actor_name: row.try_get("actor_name")?,
        resource_type: row.try_get("resource_type")?,
        resource_id: row.try_get("resource_id")?,
        details: row.try_get("details")?,
        trace_id: row.try_get("trace_id")?,
        span_id: row.try_get("span_id")?,
        created_at: row.try_get("created_at")?,
    })
}

/// The history row of a state change, in the change's transaction.
async fn history(
    txn: &mut Transaction<'static, Postgres>,
    env: &Env,
    task: Uuid,
    action: &str,
    details: Value,
) -> sqlx::Result<()> {
    let actor = env.ctx.actor();
    sqlx::query(
        "INSERT INTO task_history (id, tenant_id, task_id, action, actor_type, actor_id, details, \
         created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(Uuid::now_v7())
    .bind(env.tenant)
    .bind(task)
    .bind(action)
    .bind(actor.kind().as_str())
    .bind(actor.id())
    .bind(details)
    .bind(now())
    .execute(&mut **txn)
    .await?;
    Ok(())
}

/// A page of rows: at most `PAGE`, the one past it only says there is a next page.
fn page<T>(mut rows: Vec<T>) -> Vec<T> {
    rows.truncate(PAGE as usize);
    rows
}

/// The same work written by hand with sqlx.
async fn hand_op(op: &str, env: &mut Env, pool: &PgPool) -> anyhow::Result<()> {
    let tenant = env.tenant;
    match op {
        "create task + history" => {
            let new = new_task(env);
            let assign = new.assign_to.context("assigned")?;
            let at = now();
            let mut txn = begin(pool, tenant).await?;
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO tasks (id, tenant_id, workflow_id, workflow_run_id, title, \
                 description, form_schema, form_data, assigned_user_id, assigned_group_id, \
                 claimed_by, context, conversation_id, sla_deadline, sla_config, status, \
                 created_at, updated_at, completed_at, completed_by) VALUES ($1, $2, $3, $4, $5, \
                 $6, $7, NULL, $8, $9, NULL, $10, NULL, NULL, NULL, 'ASSIGNED', $11, $11, NULL, \
                 NULL) RETURNING {TASK_COLUMNS}"
            )))
            .bind(Uuid::now_v7())
            .bind(tenant)
            .bind(&new.workflow_id)
            .bind(&new.workflow_run_id)
            .bind(&new.title)
            .bind(&new.description)
            .bind(&new.form_schema)
            .bind(assign.user_id)
            .bind(assign.group_id)
            .bind(json!({}))
            .bind(at)
            .fetch_one(&mut *txn)
            .await?;
            let created = task(&row)?;
            let details = json!({
                "status": "ASSIGNED",
                "assigned_user_id": created.assigned_user_id,
                "assigned_group_id": created.assigned_group_id,
            });
            history(&mut txn, env, created.id, "created", details).await?;
            txn.commit().await?;
        }
        "claim" => {
            let id = env.to_claim[1].pop().context("out of tasks to claim")?;
            let mut txn = begin(pool, tenant).await?;
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE tasks SET status = 'CLAIMED', claimed_by = $3, updated_at = $4 \
                 WHERE tenant_id = $1 AND id = $2 AND status IN ('ASSIGNED', 'ESCALATED') \
                 AND $3 IN (SELECT id FROM users WHERE tenant_id = $1 AND id = $3 \
                     AND status = 'ACTIVE') \
                 AND (assigned_user_id = $3 OR assigned_group_id IN \
                     (SELECT group_id FROM group_members WHERE tenant_id = $1 AND user_id = $3)) \
                 RETURNING {TASK_COLUMNS}"
            )))
            .bind(tenant)
            .bind(id)
            .bind(env.user)
            .bind(now())
            .fetch_optional(&mut *txn)
            .await?;
            let claimed = task(&row.context("the claim matched no row")?)?;
            history(
                &mut txn,
                env,
                claimed.id,
                "claimed",
                json!({"user_id": env.user}),
            )
            .await?;
            txn.commit().await?;
        }
        "complete" => {
            let id = env.to_complete[1]
                .pop()
                .context("out of tasks to complete")?;
            let at = now();
            let mut txn = begin(pool, tenant).await?;
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE tasks SET status = 'COMPLETED', form_data = $4, completed_by = $3, \
                 completed_at = $5, updated_at = $5 \
                 WHERE tenant_id = $1 AND id = $2 AND status IN ('CLAIMED', 'ASSIGNED') \
                 AND $3 IN (SELECT id FROM users WHERE tenant_id = $1 AND id = $3 \
                     AND status = 'ACTIVE') \
                 AND ((status = 'CLAIMED' AND claimed_by = $3) OR (status = 'ASSIGNED' \
                     AND assigned_user_id = $3 AND assigned_group_id IS NULL)) \
                 RETURNING {TASK_COLUMNS}"
            )))
            .bind(tenant)
            .bind(id)
            .bind(env.user)
            .bind(json!({"approved": true}))
            .bind(at)
            .fetch_optional(&mut *txn)
            .await?;
            let completed = task(&row.context("the completion matched no row")?)?;
            let details = json!({"user_id": env.user});
            history(&mut txn, env, completed.id, "completed", details).await?;
            txn.commit().await?;
        }
        "inbox page (50)" => {
            let mut txn = begin(pool, tenant).await?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {TASK_COLUMNS} FROM tasks \
                 WHERE tenant_id = $1 AND status IN ('CREATED', 'ASSIGNED', 'ESCALATED') \
                 AND (assigned_user_id = $2 OR assigned_group_id IN \
                     (SELECT group_id FROM group_members WHERE tenant_id = $1 AND user_id = $2)) \
                 ORDER BY sla_deadline ASC NULLS LAST, created_at, id LIMIT $3"
            )))
            .bind(tenant)
            .bind(env.user)
            .bind(PAGE as i64 + 1)
            .fetch_all(&mut *txn)
            .await?;
            // A read: its end goes out with the connection's release.
            drop(txn);
            let rows = rows.iter().map(task).collect::<anyhow::Result<Vec<_>>>()?;
            ensure!(page(rows).len() == PAGE as usize);
        }
        "overdue page (50)" => {
            let mut txn = begin(pool, tenant).await?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {TASK_COLUMNS} FROM tasks \
                 WHERE tenant_id = $1 \
                 AND status IN ('CREATED', 'ASSIGNED', 'CLAIMED', 'ESCALATED') \
                 AND sla_deadline < $2 ORDER BY sla_deadline, id LIMIT $3"
            )))
            .bind(tenant)
            .bind(env.overdue_at)
            .bind(PAGE as i64 + 1)
            .fetch_all(&mut *txn)
            .await?;
            // A read: its end goes out with the connection's release.
            drop(txn);
            let rows = rows.iter().map(task).collect::<anyhow::Result<Vec<_>>>()?;
            ensure!(page(rows).len() == PAGE as usize);
        }
        "append message" => {
            let mut txn = begin(pool, tenant).await?;
            let touched = sqlx::query(
                "UPDATE conversations SET updated_at = $3 \
                 WHERE tenant_id = $1 AND id = $2 AND status = 'ACTIVE'",
            )
            .bind(tenant)
            .bind(env.append_conversation)
            .bind(now())
            .execute(&mut *txn)
            .await?;
            ensure!(
                touched.rows_affected() == 1,
                "the conversation is not active"
            );
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO messages (id, tenant_id, conversation_id, role, content, metadata, \
                 created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {MESSAGE_COLUMNS}"
            )))
            .bind(Uuid::now_v7())
            .bind(tenant)
            .bind(env.append_conversation)
            .bind("user")
            .bind("Hello")
            .bind(None::<Value>)
            .bind(now())
            .fetch_one(&mut *txn)
            .await?;
            message(&row)?;
            txn.commit().await?;
        }
        "message page (50)" => {
            let mut txn = begin(pool, tenant).await?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE tenant_id = $1 AND conversation_id = $2 \
                 ORDER BY created_at, id LIMIT $3"
            )))
            .bind(tenant)
            .bind(env.read_conversation)
            .bind(PAGE as i64 + 1)
            .fetch_all(&mut *txn)
            .await?;
            // A read: its end goes out with the connection's release.
            drop(txn);
            let rows = rows
                .iter()
                .map(message)
                .collect::<anyhow::Result<Vec<_>>>()?;
            ensure!(page(rows).len() == PAGE as usize);
        }
        "audit record" => {
            let actor = env.ctx.actor();
            let mut txn = begin(pool, tenant).await?;
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO audit_events ({AUDIT_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 RETURNING {AUDIT_COLUMNS}"
            )))
            .bind(Uuid::now_v7())
            .bind(tenant)
            .bind("task")
            .bind("viewed")
            .bind(actor.kind().as_str())
            .bind(actor.id())
            .bind(actor.name())
            .bind("task")
            .bind("t-1")
            .bind(json!({"n": 1}))
            .bind(env.ctx.trace_id())
            .bind(env.ctx.span_id())
            .bind(now())
            .fetch_one(&mut *txn)
            .await?;
            audit_event(&row)?;
            txn.commit().await?;
        }
        "audit record_many (1000)" => {
            // The idiomatic sqlx bulk insert: one array per column, UNNEST on the server.
            let events = batch();
            let mut ids = Vec::with_capacity(BATCH);
            let (mut types, mut actions) = (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
            let (mut resource_types, mut resource_ids) =
                (Vec::with_capacity(BATCH), Vec::with_capacity(BATCH));
            let mut details = Vec::with_capacity(BATCH);
            for event in events {
                ids.push(Uuid::now_v7());
                types.push(event.event_type);
                actions.push(event.action);
                resource_types.push(event.resource_type);
                resource_ids.push(event.resource_id);
                details.push(event.details);
            }
            let actor = env.ctx.actor();
            let mut txn = begin(pool, tenant).await?;
            let written = sqlx::query(
                "INSERT INTO audit_events (id, tenant_id, event_type, action, actor_type, \
                 actor_id, actor_name, resource_type, resource_id, details, trace_id, span_id, \
                 created_at) \
                 SELECT id, $1, event_type, action, $2, $3, $4, resource_type, resource_id, \
                 details, $5, $6, $7 \
                 FROM UNNEST($8::uuid[], $9::text[], $10::text[], $11::text[], $12::text[], \
                 $13::jsonb[]) AS e(id, event_type, action, resource_type, resource_id, details)",
            )
            .bind(tenant)
            .bind(actor.kind().as_str())
            .bind(actor.id())
            .bind(actor.name())
            .bind(env.ctx.trace_id())
            .bind(env.ctx.span_id())
            .bind(now())
            .bind(ids)
            .bind(types)
            .bind(actions)
            .bind(resource_types)
            .bind(resource_ids)
            .bind(details)
            .execute(&mut *txn)
            .await?;
            txn.commit().await?;
            ensure!(written.rows_affected() == BATCH as u64);
        }
        "audit query page (50)" => {
            let mut txn = begin(pool, tenant).await?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE tenant_id = $1 \
                 ORDER BY created_at DESC, id DESC LIMIT $2"
            )))
            .bind(tenant)
            .bind(PAGE as i64 + 1)
            .fetch_all(&mut *txn)
            .await?;
            // A read: its end goes out with the connection's release.
            drop(txn);
            let rows = rows
                .iter()
                .map(audit_event)
                .collect::<anyhow::Result<Vec<_>>>()?;
            ensure!(page(rows).len() == PAGE as usize);
        }
        other => bail!("unknown operation {other}"),
    }
    Ok(())
}

/// The two ways in to the database: the repository's pool and a hand-written service's.
struct Pools {
    repo: DatabaseConnection,
    hand: PgPool,
}

impl Pools {
    /// Both pools on `url`, with the same settings: the repository's production defaults.
    async fn open(url: &str) -> anyhow::Result<Pools> {
        let config = DbConfig::new(url);
        let repo = connect(&config).await?;
        let hand = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(config.min_connections)
            .acquire_timeout(config.acquire_timeout)
            .idle_timeout(config.idle_timeout)
            .max_lifetime(config.max_lifetime)
            .test_before_acquire(false)
            .connect(url)
            .await?;
        Ok(Pools { repo, hand })
    }

    /// One call: its wall time, and the CPU time this thread (the runtime's only one) spent on it.
    async fn run(
        &self,
        op: &str,
        side: Side,
        env: &mut Env,
    ) -> anyhow::Result<(Duration, Duration)> {
        let cpu = thread_cpu();
        let started = Instant::now();
        match side {
            Side::Repo => repo_op(op, env, &self.repo).await,
            Side::Hand => hand_op(op, env, &self.hand).await,
        }
        .with_context(|| format!("{op} ({})", label(side)))?;
        let took = started.elapsed();
        Ok((took, thread_cpu().saturating_sub(cpu)))
    }
}

/// The CPU time this thread has run for (Linux; zero elsewhere): the client's share of a call,
/// apart from the time spent waiting for the server.
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|stat| stat.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

fn label(side: Side) -> &'static str {
    match side {
        Side::Repo => "repository",
        Side::Hand => "hand-written",
    }
}

/// What crossed the wire from the pools to the server.
#[derive(Default)]
struct Wire {
    /// Simple-protocol queries (`Q`): sqlx sends BEGIN this way.
    simple: AtomicU64,
    /// Extended-protocol executes (`E`).
    executes: AtomicU64,
    /// `Sync` messages: each ends a round trip of the extended protocol (a lone one is the
    /// pool's liveness check).
    syncs: AtomicU64,
    /// Whether to keep the text of each statement sent.
    keep_sql: AtomicBool,
    sql: Mutex<Vec<String>>,
}

impl Wire {
    fn snapshot(&self) -> (u64, u64) {
        let simple = self.simple.load(Ordering::SeqCst);
        let statements = simple + self.executes.load(Ordering::SeqCst);
        let round_trips = simple + self.syncs.load(Ordering::SeqCst);
        (statements, round_trips)
    }

    fn keep(&self, sql: String) {
        if self.keep_sql.load(Ordering::SeqCst) {
            self.sql.lock().expect("not poisoned").push(sql);
        }
    }
}

/// Starts a proxy to `server` that counts what clients send; returns its address.
async fn start_proxy(server: SocketAddr, wire: Arc<Wire>) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let wire = wire.clone();
            tokio::spawn(async move {
                if let Err(error) = relay(client, server, wire).await {
                    eprintln!("proxy connection ended: {error:#}");
                }
            });
        }
    });
    Ok(address)
}

/// Relays one connection, reading the client's messages to count them. TLS is refused (the
/// client's `sslmode=prefer` then speaks in the clear), so the messages can be read.
async fn relay(mut client: TcpStream, server: SocketAddr, wire: Arc<Wire>) -> anyhow::Result<()> {
    const SSL_REQUEST: u32 = 80_877_103;
    const GSS_REQUEST: u32 = 80_877_104;
    let mut upstream = TcpStream::connect(server).await?;
    // The startup phase: untyped messages, length first.
    loop {
        let length = client.read_u32().await? as usize;
        let mut body = vec![0; length - 4];
        client.read_exact(&mut body).await?;
        let code = u32::from_be_bytes(body[..4].try_into()?);
        if code == SSL_REQUEST || code == GSS_REQUEST {
            client.write_all(b"N").await?;
            continue;
        }
        upstream.write_u32(length as u32).await?;
        upstream.write_all(&body).await?;
        break;
    }
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = upstream.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
    });
    // Statement name -> SQL, as parsed on this connection; the unnamed one is "".
    let mut prepared: HashMap<Vec<u8>, String> = HashMap::new();
    let mut bound = Vec::new();
    loop {
        let Ok(kind) = from_client.read_u8().await else {
            return Ok(());
        };
        let length = from_client.read_u32().await? as usize;
        let mut body = vec![0; length - 4];
        from_client.read_exact(&mut body).await?;
        let cstr =
            |bytes: &[u8]| -> Vec<u8> { bytes.split(|b| *b == 0).next().unwrap_or(&[]).to_vec() };
        match kind {
            b'Q' => {
                wire.simple.fetch_add(1, Ordering::SeqCst);
                wire.keep(String::from_utf8_lossy(&cstr(&body)).into_owned());
            }
            b'P' => {
                let name = cstr(&body);
                let sql = cstr(&body[name.len() + 1..]);
                prepared.insert(name, String::from_utf8_lossy(&sql).into_owned());
            }
            b'B' => {
                let portal = cstr(&body);
                bound = cstr(&body[portal.len() + 1..]);
            }
            b'E' => {
                wire.executes.fetch_add(1, Ordering::SeqCst);
                let sql = prepared.get(&bound).cloned().unwrap_or_default();
                wire.keep(sql);
            }
            b'S' => {
                wire.syncs.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
        to_server.write_u8(kind).await?;
        to_server.write_u32(length as u32).await?;
        to_server.write_all(&body).await?;
        if kind == b'X' {
            return Ok(());
        }
    }
}

/// Statements and round trips of one call, over `COUNTED` calls: "n" when every call sent the
/// same, else "min-max".
fn spread(values: &[u64]) -> String {
    let (min, max) = (
        values.iter().min().copied().unwrap_or(0),
        values.iter().max().copied().unwrap_or(0),
    );
    if min == max {
        min.to_string()
    } else {
        format!("{min}-{max}")
    }
}

struct Counts {
    statements: String,
    round_trips: String,
    /// Round trips after the call returned: the connection's release.
    after: String,
    sql: Vec<String>,
}

impl Counts {
    /// `statements/round trips (+ after)`.
    fn show(&self) -> String {
        format!("{}/{} (+{})", self.statements, self.round_trips, self.after)
    }
}

async fn count(
    pools: &Pools,
    wire: &Wire,
    op: &str,
    side: Side,
    env: &mut Env,
) -> anyhow::Result<Counts> {
    // Warm the statement caches first: the counts are those of a service in its steady state.
    for _ in 0..COUNTED {
        pools.run(op, side, env).await?;
    }
    // The release of a connection runs as a task of its own once the call has returned; this
    // long is ample on loopback for it to finish.
    let settle = Duration::from_millis(20);
    tokio::time::sleep(settle).await;
    let (mut statements, mut round_trips, mut after) = (Vec::new(), Vec::new(), Vec::new());
    let mut sql = Vec::new();
    for n in 0..COUNTED {
        let last = n + 1 == COUNTED;
        wire.keep_sql.store(last, Ordering::SeqCst);
        let before = wire.snapshot();
        pools.run(op, side, env).await?;
        // The runtime has one thread: nothing else ran between the call's end and this.
        let returned = wire.snapshot();
        tokio::time::sleep(settle).await;
        let settled = wire.snapshot();
        statements.push(returned.0 - before.0);
        round_trips.push(returned.1 - before.1);
        after.push(settled.1 - returned.1);
        if last {
            wire.keep_sql.store(false, Ordering::SeqCst);
            sql = std::mem::take(&mut *wire.sql.lock().expect("not poisoned"));
        }
    }
    Ok(Counts {
        statements: spread(&statements),
        round_trips: spread(&round_trips),
        after: spread(&after),
        sql,
    })
}

struct Options {
    iterations: usize,
    warmup: usize,
    only: Option<String>,
    show_sql: bool,
    hold: Option<u64>,
    /// Round trips the delaying proxy adds, in milliseconds: one table each.
    rtts: Vec<f64>,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        iterations: 500,
        warmup: 50,
        only: None,
        show_sql: false,
        hold: None,
        rtts: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--iterations" | "-n" => {
                options.iterations = value("--iterations")?.parse().context("--iterations")?;
            }
            "--warmup" => options.warmup = value("--warmup")?.parse().context("--warmup")?,
            "--only" => options.only = Some(value("--only")?),
            "--show-sql" => options.show_sql = true,
            "--hold" => options.hold = Some(value("--hold")?.parse().context("--hold")?),
            "--rtt" => {
                let rtt: f64 = value("--rtt")?.parse().context("--rtt")?;
                ensure!(
                    (0.0..=100.0).contains(&rtt),
                    "--rtt is in milliseconds, 0 to 100"
                );
                options.rtts.push(rtt);
            }
            "--help" | "-h" => {
                println!(
                    "repo-bench [--iterations N] [--warmup N] [--only NAME] [--rtt MS]... \
                     [--show-sql] [--hold SECONDS]\n\
                     DATABASE_URL must name a PostgreSQL server where the role may create \
                     databases."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    ensure!(options.iterations >= 2, "--iterations must be at least 2");
    if options.rtts.is_empty() {
        options.rtts.push(0.0);
    }
    Ok(options)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {}
        Ok(url) => bail!(
            "the benchmark needs PostgreSQL: DATABASE_URL is {}, not a postgres:// URL",
            pg::redact(&url)
        ),
        Err(_) => bail!(
            "the benchmark needs PostgreSQL: set DATABASE_URL=postgres://... (a role that may \
             create databases)"
        ),
    }
    let operations: Vec<&str> = OPERATIONS
        .into_iter()
        .filter(|op| options.only.as_deref().is_none_or(|only| op.contains(only)))
        .collect();
    ensure!(!operations.is_empty(), "no operation matches --only");

    let db = TestDb::postgres_only().await?;
    let fresh = (options.warmup + options.iterations) * options.rtts.len() + 2 * COUNTED;
    let mut env = seed(&db, fresh).await?;
    if let Some(seconds) = options.hold {
        // For a look at the seeded database (EXPLAIN, psql) before it is dropped.
        let tenant = env.tenant;
        let user = env.user;
        eprintln!(
            "holding {seconds} s: database {}, tenant {tenant}, user {user}",
            db.url().unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    }
    let app_url = pg::url_as(db.url().context("a PostgreSQL database")?, pg::APP_LOGIN)?;
    let parsed = url::Url::parse(&app_url)?;
    let server = tokio::net::lookup_host((
        parsed.host_str().context("a host")?.to_owned(),
        parsed.port().unwrap_or(5432),
    ))
    .await?
    .next()
    .context("the server's address")?;

    // The counting pools reach the server through the counting proxy.
    let wire = Arc::new(Wire::default());
    let proxy = start_proxy(server, wire.clone()).await?;
    let counted = Pools::open(&via(&app_url, proxy)?).await?;
    let mut counts = Vec::new();
    for op in &operations {
        let repo = count(&counted, &wire, op, Side::Repo, &mut env).await?;
        let hand = count(&counted, &wire, op, Side::Hand, &mut env).await?;
        counts.push((repo, hand));
    }
    counted.repo.close().await?;
    counted.hand.close().await;

    for &rtt in &options.rtts {
        // At 0 ms the pools connect directly; otherwise through the delaying proxy.
        let url = if rtt > 0.0 {
            let one_way = Duration::from_secs_f64(rtt / 2_000.0);
            via(&app_url, orkestra_bench::delay::start(server, one_way)?)?
        } else {
            app_url.clone()
        };
        let pools = Pools::open(&url).await?;
        println!(
            "\nrepository vs hand-written sqlx at a {rtt} ms round trip, as the application role \
             (row-level security on): {TENANTS} tenants x {TASKS_PER_TENANT} tasks; {} iterations \
             per side after {} warm-up, alternating; times in microseconds; stmts/round trips per \
             call on the caller's path, (+ round trips after it returned: the connection's \
             release); cpu: the median client CPU time of a call",
            options.iterations, options.warmup
        );
        println!(
            "{:<26} {:>9} {:>9} {:>9} {:>9} {:>7}   {:>11} {:>11}   {:>8} {:>8}",
            "operation",
            "repo p50",
            "repo p99",
            "hand p50",
            "hand p99",
            "ratio",
            "repo st/rt",
            "hand st/rt",
            "repo cpu",
            "hand cpu"
        );
        for (op, (repo_counts, hand_counts)) in operations.iter().zip(&counts) {
            let times = measure(&pools, op, &options, &mut env).await?;
            let [repo, hand, repo_cpu, hand_cpu] = &times;
            let (r50, h50) = (repo.quantile_us(0.5), hand.quantile_us(0.5));
            println!(
                "{op:<26} {r50:>9.0} {:>9.0} {h50:>9.0} {:>9.0} {:>7.3}   {:>11} {:>11}   {:>8.0} {:>8.0}",
                repo.quantile_us(0.99),
                hand.quantile_us(0.99),
                r50 / h50,
                repo_counts.show(),
                hand_counts.show(),
                repo_cpu.quantile_us(0.5),
                hand_cpu.quantile_us(0.5),
            );
        }
        pools.repo.close().await?;
        pools.hand.close().await;
    }
    if options.show_sql {
        for (op, (repo, hand)) in operations.iter().zip(counts) {
            println!("\n== {op}");
            for (side, sql) in [("repository", repo.sql), ("hand-written", hand.sql)] {
                println!("-- {side}");
                for statement in sql {
                    let mut short: String = statement.chars().take(400).collect();
                    if short.len() < statement.len() {
                        short.push_str(" ...");
                    }
                    println!("   {short}");
                }
            }
        }
    }
    Ok(())
}

/// `url` with its host and port replaced by `proxy`'s.
fn via(url: &str, proxy: SocketAddr) -> anyhow::Result<String> {
    let mut proxied = url::Url::parse(url)?;
    proxied
        .set_host(Some(&proxy.ip().to_string()))
        .and_then(|()| {
            proxied
                .set_port(Some(proxy.port()))
                .map_err(|()| url::ParseError::InvalidPort)
        })?;
    Ok(proxied.into())
}

/// Times `op` on both sides: warm-up rounds, then `options.iterations` rounds alternating which
/// side goes first. Wall times (repository, hand-written), then CPU times.
async fn measure(
    pools: &Pools,
    op: &str,
    options: &Options,
    env: &mut Env,
) -> anyhow::Result<[Latencies; 4]> {
    for round in 0..options.warmup {
        for side in order(round) {
            pools.run(op, side, env).await?;
        }
    }
    let mut times: [Latencies; 4] = Default::default();
    for round in 0..options.iterations {
        // Alternate which goes first, so neither always runs on a warmer cache.
        for side in order(round) {
            let (took, cpu) = pools.run(op, side, env).await?;
            let at = if side == Side::Repo { 0 } else { 1 };
            times[at].record(took);
            times[at + 2].record(cpu);
        }
    }
    Ok(times)
}

fn order(round: usize) -> [Side; 2] {
    if round.is_multiple_of(2) {
        [Side::Repo, Side::Hand]
    } else {
        [Side::Hand, Side::Repo]
    }
}
