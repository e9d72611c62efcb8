//! The plans PostgreSQL picks for the repository's read queries on a populated database: each must
//! be served by an index of its table, confined to the tenant, with no sequential scan of tasks,
//! task history, messages or audit events. The database is filled by the scale generator
//! (`orkestra_tests::scale`, what `just seed-scale` runs) at a smaller scale; the statements are the
//! ones the repository sends, captured on the wire, and explained with their values as the
//! application role inside a tenant transaction, so the row-level security policies are part of
//! each plan. Sequential scans are not priced out: the point is what the planner picks on
//! realistic data.

use std::sync::Mutex;

use orkestra_entity::sea_orm_active_enums::TaskStatus;
use orkestra_repository::{
    AuditQuery, AuditRepository, ConversationRepository, PageRequest, TaskRepository,
    tenant_transaction,
};
use orkestra_tests::repo::ctx;
use orkestra_tests::scale::{self, Scale};
use orkestra_tests::{TestDb, pg};
use sea_orm::Statement;

/// The scale of the test's database: big enough that the largest tenant's tasks are a sliver of
/// the table and a scan of them a real cost, small enough to fill in seconds.
const SCALE: Scale = Scale {
    tenants: 40,
    tasks: 40_000,
    users: 4_000,
    audit_events: 40_000,
};

/// The tables whose sequential scan would grow with the data.
const BIG_TABLES: [&str; 4] = ["tasks", "task_history", "messages", "audit_events"];

/// The `SELECT`s recorded since the last call (transaction control left out; the tenant binding,
/// sent unprepared, is not recorded), emptying the log.
fn selects(sent: &Mutex<Vec<Statement>>) -> Vec<Statement> {
    recorded(sent, "SELECT")
}

/// The statements starting with `verb` recorded since the last call, emptying the log.
fn recorded(sent: &Mutex<Vec<Statement>>, verb: &str) -> Vec<Statement> {
    std::mem::take(&mut *sent.lock().expect("an unpoisoned log"))
        .into_iter()
        .filter(|statement| statement.sql.trim_start().starts_with(verb))
        .collect()
}

/// The text plan of `statement`, with its values, as the application role in `tenant`'s
/// transaction.
async fn explain(db: &TestDb, tenant: uuid::Uuid, statement: &Statement) -> anyhow::Result<String> {
    let plan = tenant_transaction(db.app_conn(), &ctx(tenant), async |txn| {
        Ok(pg::explain(txn, statement).await?)
    })
    .await?;
    Ok(plan)
}

/// Fails unless `plan` reads `table` through one of its indexes, bounded by the tenant, and scans
/// none of the big tables sequentially.
fn assert_indexed(name: &str, table: &str, sql: &str, plan: &str) {
    for big in BIG_TABLES {
        assert!(
            !plan.contains(&format!("Seq Scan on {big}")),
            "{name}: a sequential scan of {big}\n{sql}\n{plan}"
        );
    }
    let by_index =
        plan.contains(&format!(" using {table}_")) || plan.contains(&format!(" on {table}_"));
    assert!(by_index, "{name}: no index of {table}\n{sql}\n{plan}");
    assert!(
        plan.contains("Index Cond: ((tenant_id = ") || plan.contains("Index Cond: (tenant_id = "),
        "{name}: the index is not bounded by the tenant\n{sql}\n{plan}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: set DATABASE_URL=postgres://..."
)]
#[cfg_attr(
    orkestra_citus,
    ignore = "reads one server's plans; on Citus the citus suite explains every statement the \
              repositories send, for its route to one worker"
)]
async fn the_measured_queries_read_their_tenant_through_an_index() -> anyhow::Result<()> {
    let db = TestDb::postgres_only().await?;
    let seeded = scale::seed(db.conn(), SCALE, |_, _| {}).await?;
    eprintln!("seeded {SCALE:?} in {:.1} s", seeded.elapsed.as_secs_f64());
    let largest = &seeded.tenants[0];
    let probe = scale::probe(db.conn(), largest).await?;
    let ctx = ctx(probe.tenant);
    let (conn, sent) =
        pg::recording(db.url().expect("a PostgreSQL database"), pg::APP_LOGIN).await?;
    let tasks = TaskRepository::new(&conn);
    let conversations = ConversationRepository::new(&conn);
    let audit = AuditRepository::new(&conn);

    // Each operation, its first page and (where there is one) the next: the keyset predicates
    // must keep the plan.
    let mut operations: Vec<(String, &str, Vec<Statement>)> = Vec::new();
    let inbox = tasks
        .find_pending_for_user(&ctx, probe.user, &PageRequest::first(50))
        .await?;
    assert!(!inbox.items.is_empty(), "the probe user's inbox is empty");
    if let Some(next) = inbox.next {
        tasks
            .find_pending_for_user(&ctx, probe.user, &PageRequest::after(next, 50))
            .await?;
    }
    operations.push(("inbox".into(), "tasks", selects(&sent)));

    let overdue = tasks
        .overdue(&ctx, seeded.base, &PageRequest::first(50))
        .await?;
    assert!(!overdue.items.is_empty(), "nothing is overdue");
    if let Some(next) = overdue.next {
        tasks
            .overdue(&ctx, seeded.base, &PageRequest::after(next, 50))
            .await?;
    }
    operations.push(("overdue".into(), "tasks", selects(&sent)));

    let history = tasks.history(&ctx, probe.task).await?;
    assert!(
        history.len() >= 2,
        "the task has {} history rows",
        history.len()
    );
    operations.push(("task history".into(), "task_history", selects(&sent)));

    let messages = conversations
        .list_messages(&ctx, probe.conversation, &PageRequest::first(5))
        .await?;
    assert!(
        !messages.items.is_empty(),
        "the conversation has no message"
    );
    if let Some(next) = messages.next {
        conversations
            .list_messages(&ctx, probe.conversation, &PageRequest::after(next, 5))
            .await?;
    }
    operations.push(("message page".into(), "messages", selects(&sent)));

    let task_id = probe.task.to_string();
    let user_id = probe.user.to_string();
    for (name, query) in [
        ("audit page", AuditQuery::all()),
        (
            "audit page by resource",
            AuditQuery::all().resource("task", &task_id),
        ),
        (
            "audit page by actor",
            AuditQuery::all().actor("user", &user_id),
        ),
    ] {
        let page = audit.query(&ctx, &query, &PageRequest::first(50)).await?;
        assert!(!page.items.is_empty(), "{name}: no event");
        if let Some(next) = page.next {
            audit
                .query(&ctx, &query, &PageRequest::after(next, 50))
                .await?;
        }
        operations.push((name.into(), "audit_events", selects(&sent)));
    }

    for status in [TaskStatus::Completed, TaskStatus::Assigned] {
        let page = tasks
            .list_by_status(&ctx, status.clone(), &PageRequest::first(50))
            .await?;
        assert!(!page.items.is_empty(), "no task is {status:?}");
        if let Some(next) = page.next {
            tasks
                .list_by_status(&ctx, status.clone(), &PageRequest::after(next, 50))
                .await?;
        }
        operations.push((
            format!("list_by_status {status:?}"),
            "tasks",
            selects(&sent),
        ));
    }

    let (workflow, run) = &probe.workflow_run;
    let page = tasks
        .list_by_workflow_run(&ctx, workflow, run, &PageRequest::first(50))
        .await?;
    assert!(!page.items.is_empty(), "the workflow run has no task");
    operations.push(("list_by_workflow_run".into(), "tasks", selects(&sent)));

    // Last, as it changes the inbox: the UPDATE that picks its task in a locked subquery
    // (explained below, not run again).
    let claimed = tasks.claim_next(&ctx, probe.user).await?;
    assert!(claimed.is_some(), "nothing for the probe user to claim");
    operations.push(("claim_next".into(), "tasks", recorded(&sent, "UPDATE")));

    // The lists of open tasks must read only open tasks: through the partial indexes (migration
    // 11), whose size follows the backlog, not the history.
    const GROUP_PENDING: &str = "tasks_tenant_id_assigned_group_id_pending_idx";
    const USER_PENDING: &str = "tasks_tenant_id_assigned_user_id_pending_idx";
    const OPEN_DEADLINE: &str = "tasks_tenant_id_sla_deadline_id_open_idx";
    // (operation, indexes, whether it must use all of them rather than one). `claim_next` needs
    // only the first claimable task in deadline order: reading the open tasks in that order and
    // stopping at the first is as good a plan as the inbox's.
    let partial: [(&str, &[&str], bool); 3] = [
        ("inbox", &[GROUP_PENDING, USER_PENDING], true),
        (
            "claim_next",
            &[GROUP_PENDING, USER_PENDING, OPEN_DEADLINE],
            false,
        ),
        ("overdue", &[OPEN_DEADLINE], true),
    ];
    for (name, table, statements) in &operations {
        assert!(!statements.is_empty(), "{name}: no statement was captured");
        for statement in statements {
            let plan = explain(&db, probe.tenant, statement).await?;
            eprintln!("== {name}\n{}\n{plan}\n", statement.sql);
            assert_indexed(name, table, &statement.sql, &plan);
            for (operation, indexes, all) in partial {
                if name != operation {
                    continue;
                }
                let used = |index: &&str| {
                    plan.contains(&format!(" on {index} "))
                        || plan.contains(&format!(" using {index} "))
                };
                let ok = if all {
                    indexes.iter().all(used)
                } else {
                    indexes.iter().any(used)
                };
                assert!(
                    ok,
                    "{name}: not {} of {indexes:?}\n{}\n{plan}",
                    if all { "all" } else { "any" },
                    statement.sql
                );
            }
        }
    }
    conn.close().await?;
    Ok(())
}
