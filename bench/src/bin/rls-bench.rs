//! The cost of row-level security: the same repository calls, on the same data, alternating
//! between a connection of the application role (every policy evaluated) and the owner's
//! connection (a superuser, which row-level security does not apply to). Both run the repository
//! unchanged, setting the tenant in each transaction; the difference is the policies alone.
//!
//! `DATABASE_URL=postgres://... cargo run --release -p orkestra-bench --bin rls-bench [rounds]`
//! (`just bench-rls`). It works in a database of its own and drops it.

use std::time::Instant;

use anyhow::Context as _;
use orkestra_bench::stats::Latencies;
use orkestra_repository::{
    AssignTo, AuditQuery, AuditRepository, GroupRepository, NewAuditEvent, NewGroup, NewTask,
    NewTenant, NewUser, PageRequest, TaskRepository, TenantRepository, UserRepository,
};
use orkestra_tests::{TestDb, repo::ctx};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::json;
use uuid::Uuid;

/// Tenants, and tasks of each, in the database the calls run against.
const TENANTS: usize = 20;
const TASKS_PER_TENANT: usize = 2_000;

struct Fixture {
    tenant: Uuid,
    user: Uuid,
    group: Uuid,
    task: Uuid,
}

async fn seed(db: &TestDb) -> anyhow::Result<Fixture> {
    let conn = db.conn();
    let mut fixture = None;
    for n in 0..TENANTS {
        let tenant = TenantRepository::new(conn)
            .create(NewTenant::new(format!("Tenant {n}"), format!("tenant-{n}")))
            .await?
            .id;
        let ctx = ctx(tenant);
        let user = UserRepository::new(conn)
            .create(&ctx, NewUser::new("ada@example.com", "Ada"))
            .await?
            .id;
        let groups = GroupRepository::new(conn);
        let group = groups
            .create(&ctx, NewGroup::new("Reviewers", "reviewers"))
            .await?
            .id;
        groups.add_member(&ctx, group, user).await?;
        // Bulk rows, written straight in SQL: the calls measured below are what matters.
        conn.execute_unprepared(&format!(
            "INSERT INTO tasks (id, tenant_id, workflow_id, workflow_run_id, title, form_schema, \
             assigned_group_id, status, sla_deadline) \
             SELECT gen_random_uuid(), '{tenant}', 'wf', 'run-' || (i % 50), 'Task ' || i, '{{}}', \
             '{group}', 'ASSIGNED', now() + (i || ' minutes')::interval \
             FROM generate_series(1, {TASKS_PER_TENANT}) i;
             INSERT INTO task_history (id, tenant_id, task_id, action, actor_type, actor_id) \
             SELECT gen_random_uuid(), tenant_id, id, 'created', 'system', 'seed' \
             FROM tasks WHERE tenant_id = '{tenant}';
             INSERT INTO audit_events (id, tenant_id, event_type, action, actor_type, actor_id, \
             resource_type, resource_id) \
             SELECT gen_random_uuid(), '{tenant}', 'task', 'created', 'system', 'seed', 'task', \
             i::text FROM generate_series(1, {TASKS_PER_TENANT}) i"
        ))
        .await?;
        let mut task = NewTask::new("wf", "run-x", "Measured", json!({}));
        task.assign_to = Some(AssignTo::group(group));
        let task = TaskRepository::new(conn).create(&ctx, task).await?.id;
        fixture.get_or_insert(Fixture {
            tenant,
            user,
            group,
            task,
        });
    }
    conn.execute_unprepared("ANALYZE").await?;
    fixture.context("no tenant seeded")
}

/// One measured operation: what it runs on a connection.
async fn run(op: &str, db: &DatabaseConnection, f: &Fixture) -> anyhow::Result<()> {
    let ctx = ctx(f.tenant);
    let tasks = TaskRepository::new(db);
    match op {
        "find task by id" => {
            tasks.find_by_id(&ctx, f.task).await?.context("the task")?;
        }
        "inbox page (50)" => {
            let page = tasks
                .find_pending_for_user(&ctx, f.user, &PageRequest::first(50))
                .await?;
            anyhow::ensure!(page.items.len() == 50);
        }
        "claim + release" => {
            tasks.claim(&ctx, f.task, f.user).await?;
            tasks.release(&ctx, f.task, f.user).await?;
        }
        "create task + history" => {
            let mut task = NewTask::new("wf", "run-y", "Created", json!({}));
            task.assign_to = Some(AssignTo::group(f.group));
            tasks.create(&ctx, task).await?;
        }
        "task history" => {
            tasks.history(&ctx, f.task).await?;
        }
        "audit record" => {
            AuditRepository::new(db)
                .record(&ctx, NewAuditEvent::new("task", "viewed", "task", "t"))
                .await?;
        }
        "audit page (50)" => {
            AuditRepository::new(db)
                .query(&ctx, &AuditQuery::default(), &PageRequest::first(50))
                .await?;
        }
        other => anyhow::bail!("unknown operation {other}"),
    }
    Ok(())
}

const OPERATIONS: [&str; 7] = [
    "find task by id",
    "inbox page (50)",
    "claim + release",
    "create task + history",
    "task history",
    "audit record",
    "audit page (50)",
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()
        .context("rounds must be a number")?
        .unwrap_or(500);
    let db = TestDb::postgres_only().await?;
    let fixture = seed(&db).await?;
    let with_rls = db.app_conn();
    let without = db.conn();
    println!(
        "row-level security cost: {TENANTS} tenants x {TASKS_PER_TENANT} tasks, {rounds} rounds \
         per operation, alternating; times in microseconds"
    );
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "operation", "RLS p50", "RLS p99", "none p50", "none p99", "p50 ratio"
    );
    for op in OPERATIONS {
        // Warm both pools and plans.
        for _ in 0..20 {
            run(op, with_rls, &fixture).await?;
            run(op, without, &fixture).await?;
        }
        let (mut rls, mut plain) = (Latencies::new(), Latencies::new());
        for round in 0..rounds {
            // Alternate which goes first, so neither always runs on a warmer cache.
            let order: [(&DatabaseConnection, bool); 2] = if round % 2 == 0 {
                [(with_rls, true), (without, false)]
            } else {
                [(without, false), (with_rls, true)]
            };
            for (conn, is_rls) in order {
                let started = Instant::now();
                run(op, conn, &fixture).await?;
                let took = started.elapsed();
                if is_rls {
                    rls.record(took)
                } else {
                    plain.record(took)
                }
            }
        }
        let (r50, p50) = (rls.quantile_us(0.5), plain.quantile_us(0.5));
        println!(
            "{op:<24} {r50:>10.0} {:>10.0} {p50:>10.0} {:>10.0} {:>8.3}",
            rls.quantile_us(0.99),
            plain.quantile_us(0.99),
            r50 / p50
        );
    }
    Ok(())
}
