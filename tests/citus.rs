//! The repositories on a Citus cluster (coordinator and workers), where the tables are distributed
//! on `tenant_id` and `tenants` is a reference table (migration 14): where each statement runs, and
//! how each write commits. Compiled only under `just test-citus` (`ORKESTRA_CITUS=1` and
//! `DATABASE_URL` naming the coordinator); the rest of the suite runs there too (README, "Scaling
//! out with Citus").
#![cfg(orkestra_citus)]

use std::sync::{Arc, Mutex, OnceLock};

use chrono::{Duration, Utc};
use orkestra_entity::sea_orm_active_enums::TaskStatus;
use orkestra_repository::{
    AssignTo, AuditQuery, AuditRepository, ConversationRepository, GroupRepository, GroupUpdate,
    NewAuditEvent, NewConversation, NewGroup, NewMessage, NewTask, NewTenant, NewUser, PageRequest,
    RequestContext, SystemRepository, TaskRepository, TenantRepository, TenantUpdate, UserFilter,
    UserRepository, UserUpdate, tenant_transaction,
};
use orkestra_tests::repo::ctx;
use orkestra_tests::{TestDb, pg};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use serde_json::json;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use uuid::Uuid;

/// The statements recorded since the last call, less transaction control and the tenant binding
/// (which sea-orm does not record anyway), emptying the log.
fn take(sent: &Mutex<Vec<Statement>>) -> Vec<Statement> {
    std::mem::take(&mut *sent.lock().expect("an unpoisoned log"))
        .into_iter()
        .filter(|statement| {
            let sql = statement.sql.trim_start();
            ![
                "BEGIN",
                "COMMIT",
                "ROLLBACK",
                "SAVEPOINT",
                "RELEASE",
                "SET ",
            ]
            .iter()
            .any(|verb| sql.starts_with(verb))
        })
        .collect()
}

/// Where Citus runs a statement, from its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// No distributed table: the coordinator alone (catalog reads).
    Coordinator,
    /// One task, on the node listening on this port.
    Single(u16),
    /// Anything else: the plan, for the report.
    Other(String),
}

/// Reads the route off a plan printed by `EXPLAIN`.
fn route(plan: &str) -> Route {
    let scans = plan.matches("Custom Scan (Citus").count();
    if scans == 0 {
        return Route::Coordinator;
    }
    let tasks: Vec<&str> = plan
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Task Count: "))
        .collect();
    let ports: Vec<u16> = plan
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Node: host="))
        .filter_map(|node| node.split("port=").nth(1))
        .filter_map(|port| port.split_whitespace().next()?.parse().ok())
        .collect();
    match (scans, tasks.as_slice(), ports.as_slice()) {
        (1, ["1"], [port]) if !plan.contains("Subplan") => Route::Single(*port),
        _ => Route::Other(plan.to_owned()),
    }
}

/// The port of the worker holding `tenant`'s shards of the co-located tables.
async fn tenant_node(db: &TestDb, tenant: Uuid) -> anyhow::Result<u16> {
    let row = db
        .conn()
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT n.nodeport FROM pg_dist_placement p \
             JOIN pg_dist_node n ON n.groupid = p.groupid \
             WHERE p.shardid = get_shard_id_for_distribution_column('tasks', $1::uuid)",
            [tenant.into()],
        ))
        .await?
        .expect("a placement");
    Ok(u16::try_from(row.try_get::<i32>("", "nodeport")?)?)
}

/// Every operation of the repositories, in a tenant's life, with the statements each sent, on
/// pools of the application and the system logins.
struct Walk {
    tenant: Uuid,
    tenant_ops: Vec<(&'static str, Vec<Statement>)>,
    system_ops: Vec<(&'static str, Vec<Statement>)>,
}

/// Records what `$call` sent on the log `$sent` under `$name` in `$ops`.
macro_rules! op {
    ($ops:expr, $sent:expr, $name:literal, $call:expr) => {{
        let value = $call;
        $ops.push(($name, take(&$sent)));
        value
    }};
}

async fn walk(db: &TestDb) -> anyhow::Result<Walk> {
    let url = db.url().expect("a database URL");
    let (app, sent) = pg::recording(url, pg::APP_LOGIN).await?;
    let (system, system_sent) = pg::recording(url, pg::SYSTEM_LOGIN).await?;
    let mut s = Vec::new();
    let mut t = Vec::new();

    let tenants = TenantRepository::new(&system);
    let tenant = op!(s, system_sent, "tenants.create", {
        tenants.create(NewTenant::new("Acme", "acme")).await?
    });
    op!(
        s,
        system_sent,
        "tenants.find_by_id",
        tenants.find_by_id(tenant.id).await?
    );
    op!(
        s,
        system_sent,
        "tenants.find_by_slug",
        tenants.find_by_slug("acme").await?
    );
    op!(
        s,
        system_sent,
        "tenants.list",
        tenants.list(None, &PageRequest::first(10)).await?
    );
    let rename = TenantUpdate {
        name: Some("Acme Corp".to_owned()),
        ..TenantUpdate::default()
    };
    op!(
        s,
        system_sent,
        "tenants.update",
        tenants.update(tenant.id, rename).await?
    );
    op!(
        s,
        system_sent,
        "tenants.suspend",
        tenants.suspend(tenant.id).await?
    );
    op!(
        s,
        system_sent,
        "tenants.reactivate",
        tenants.reactivate(tenant.id).await?
    );

    let ctx = ctx(tenant.id);
    let users = UserRepository::new(&app);
    let ada = op!(t, sent, "users.create", {
        users
            .create(&ctx, NewUser::new("ada@example.com", "Ada"))
            .await?
    });
    let grace = users
        .create(&ctx, NewUser::new("grace@example.com", "Grace"))
        .await?;
    take(&sent);
    op!(
        t,
        sent,
        "users.find_by_id",
        users.find_by_id(&ctx, ada.id).await?
    );
    op!(
        t,
        sent,
        "users.find_by_email",
        users.find_by_email(&ctx, "ada@example.com").await?
    );
    op!(t, sent, "users.list", {
        users
            .list(&ctx, &UserFilter::default(), &PageRequest::first(10))
            .await?
    });
    let update = UserUpdate {
        name: Some("Ada L.".to_owned()),
        ..UserUpdate::default()
    };
    op!(
        t,
        sent,
        "users.update",
        users.update(&ctx, ada.id, update).await?
    );
    op!(
        t,
        sent,
        "users.deactivate",
        users.deactivate(&ctx, grace.id).await?
    );
    op!(
        t,
        sent,
        "users.activate",
        users.activate(&ctx, grace.id).await?
    );
    op!(
        t,
        sent,
        "users.record_activity",
        users.record_activity(&ctx, ada.id).await?
    );

    let groups = GroupRepository::new(&app);
    let group = op!(t, sent, "groups.create", {
        groups
            .create(&ctx, NewGroup::new("Reviewers", "reviewers"))
            .await?
    });
    op!(
        t,
        sent,
        "groups.find_by_id",
        groups.find_by_id(&ctx, group.id).await?
    );
    op!(
        t,
        sent,
        "groups.find_by_slug",
        groups.find_by_slug(&ctx, "reviewers").await?
    );
    op!(
        t,
        sent,
        "groups.list",
        groups.list(&ctx, &PageRequest::first(10)).await?
    );
    let describe = GroupUpdate {
        description: Some(Some("Reviews invoices".to_owned())),
        ..GroupUpdate::default()
    };
    op!(
        t,
        sent,
        "groups.update",
        groups.update(&ctx, group.id, describe).await?
    );
    op!(
        t,
        sent,
        "groups.add_member",
        groups.add_member(&ctx, group.id, ada.id).await?
    );
    op!(t, sent, "groups.add_member (again)", {
        groups.add_member(&ctx, group.id, ada.id).await?
    });
    op!(t, sent, "groups.add_member (refused reference)", {
        groups
            .add_member(&ctx, Uuid::now_v7(), ada.id)
            .await
            .expect_err("a missing group")
    });
    groups.add_member(&ctx, group.id, grace.id).await?;
    take(&sent);
    op!(t, sent, "groups.list_members", {
        groups
            .list_members(&ctx, group.id, &PageRequest::first(10))
            .await?
    });
    op!(
        t,
        sent,
        "groups.list_user_groups",
        groups.list_user_groups(&ctx, ada.id).await?
    );
    op!(
        t,
        sent,
        "groups.member_workloads",
        groups.member_workloads(&ctx, group.id).await?
    );
    op!(
        t,
        sent,
        "groups.remove_member",
        groups.remove_member(&ctx, group.id, grace.id).await?
    );
    let spare = groups.create(&ctx, NewGroup::new("Spare", "spare")).await?;
    take(&sent);
    op!(
        t,
        sent,
        "groups.delete",
        groups.delete(&ctx, spare.id).await?
    );

    let conversations = ConversationRepository::new(&app);
    let conversation = op!(t, sent, "conversations.create", {
        conversations
            .create(&ctx, NewConversation::new(json!({"user": "ada"})))
            .await?
    });
    op!(t, sent, "conversations.find_by_id", {
        conversations.find_by_id(&ctx, conversation.id).await?
    });
    let (slack, _) = op!(t, sent, "conversations.get_or_create (new)", {
        conversations
            .get_or_create(&ctx, "slack", "C-1", json!({"user": "ada"}))
            .await?
    });
    op!(t, sent, "conversations.get_or_create (found)", {
        conversations
            .get_or_create(&ctx, "slack", "C-1", json!({"user": "ada"}))
            .await?
    });
    op!(t, sent, "conversations.find_by_external_id", {
        conversations
            .find_by_external_id(&ctx, "slack", "C-1")
            .await?
    });
    op!(t, sent, "conversations.append_message", {
        conversations
            .append_message(&ctx, slack.id, NewMessage::new("user", "hello"))
            .await?
    });
    op!(t, sent, "conversations.list_messages", {
        conversations
            .list_messages(&ctx, slack.id, &PageRequest::first(10))
            .await?
    });

    let tasks = TaskRepository::new(&app);
    let deadline = (Utc::now() + Duration::hours(1)).fixed_offset();
    let task = op!(t, sent, "tasks.create", {
        tasks
            .create(
                &ctx,
                NewTask::new("wf", "run-1", "Approve", json!({}))
                    .assigned_to(AssignTo::group(group.id))
                    .with_sla(deadline, json!({}))
                    .in_conversation(slack.id),
            )
            .await?
    });
    op!(t, sent, "tasks.create (refused reference)", {
        tasks
            .create(
                &ctx,
                NewTask::new("wf", "run-1", "Nobody's", json!({}))
                    .assigned_to(AssignTo::user(Uuid::now_v7())),
            )
            .await
            .expect_err("a missing assignee")
    });
    let direct = tasks
        .create(&ctx, NewTask::new("wf", "run-1", "Check", json!({})))
        .await?;
    take(&sent);
    op!(
        t,
        sent,
        "tasks.find_by_id",
        tasks.find_by_id(&ctx, task.id).await?
    );
    op!(t, sent, "tasks.find_pending_for_user", {
        tasks
            .find_pending_for_user(&ctx, ada.id, &PageRequest::first(50))
            .await?
    });
    op!(t, sent, "tasks.list_by_workflow_run", {
        tasks
            .list_by_workflow_run(&ctx, "wf", "run-1", &PageRequest::first(50))
            .await?
    });
    op!(t, sent, "tasks.list_by_status", {
        tasks
            .list_by_status(&ctx, TaskStatus::Assigned, &PageRequest::first(50))
            .await?
    });
    let later = (Utc::now() + Duration::hours(2)).fixed_offset();
    op!(
        t,
        sent,
        "tasks.overdue",
        tasks.overdue(&ctx, later, &PageRequest::first(50)).await?
    );
    op!(
        t,
        sent,
        "tasks.assign",
        tasks
            .assign(&ctx, direct.id, AssignTo::user(ada.id))
            .await?
    );
    op!(
        t,
        sent,
        "tasks.claim",
        tasks.claim(&ctx, task.id, ada.id).await?
    );
    op!(t, sent, "tasks.claim (lost)", {
        tasks
            .claim(&ctx, task.id, ada.id)
            .await
            .expect_err("claimed")
    });
    op!(
        t,
        sent,
        "tasks.release",
        tasks.release(&ctx, task.id, ada.id).await?
    );
    op!(
        t,
        sent,
        "tasks.claim_next",
        tasks.claim_next(&ctx, ada.id).await?
    );
    op!(t, sent, "tasks.complete", {
        tasks
            .complete(&ctx, task.id, ada.id, json!({"ok": true}))
            .await?
    });
    op!(
        t,
        sent,
        "tasks.escalate",
        tasks.escalate(&ctx, direct.id, None, None).await?
    );
    op!(
        t,
        sent,
        "tasks.history",
        tasks.history(&ctx, task.id).await?
    );
    let doomed = tasks
        .create(&ctx, NewTask::new("wf", "run-2", "Doomed", json!({})))
        .await?;
    let lapsed = tasks
        .create(&ctx, NewTask::new("wf", "run-2", "Lapsed", json!({})))
        .await?;
    take(&sent);
    op!(
        t,
        sent,
        "tasks.cancel",
        tasks.cancel(&ctx, doomed.id, Some("duplicate")).await?
    );
    op!(
        t,
        sent,
        "tasks.expire",
        tasks.expire(&ctx, lapsed.id).await?
    );
    op!(t, sent, "conversations.list_tasks", {
        conversations
            .list_tasks(&ctx, slack.id, &PageRequest::first(10))
            .await?
    });
    op!(
        t,
        sent,
        "conversations.close",
        conversations.close(&ctx, slack.id).await?
    );
    op!(
        t,
        sent,
        "conversations.archive",
        conversations.archive(&ctx, slack.id).await?
    );

    let audit = AuditRepository::new(&app);
    op!(t, sent, "audit.record", {
        audit
            .record(&ctx, NewAuditEvent::new("task", "created", "task", "t-1"))
            .await?
    });
    op!(t, sent, "audit.record_many", {
        audit
            .record_many(
                &ctx,
                vec![
                    NewAuditEvent::new("task", "claimed", "task", "t-1"),
                    NewAuditEvent::new("task", "completed", "task", "t-1"),
                ],
            )
            .await?
    });
    op!(t, sent, "audit.query", {
        audit
            .query(&ctx, &AuditQuery::all(), &PageRequest::first(10))
            .await?
    });
    op!(
        t,
        sent,
        "audit.count",
        audit.count(&ctx, &AuditQuery::all()).await?
    );

    let systemwide = SystemRepository::new(&system);
    op!(s, system_sent, "system.purge_audit_events (one tenant)", {
        systemwide
            .purge_audit_events(Some(tenant.id), Utc::now().fixed_offset())
            .await?
    });
    op!(
        s,
        system_sent,
        "system.purge_audit_events (every tenant)",
        {
            systemwide
                .purge_audit_events(None, Utc::now().fixed_offset())
                .await?
        }
    );
    op!(
        s,
        system_sent,
        "tenants.soft_delete",
        tenants.soft_delete(tenant.id).await?
    );
    app.close().await?;
    system.close().await?;
    Ok(Walk {
        tenant: tenant.id,
        tenant_ops: t,
        system_ops: s,
    })
}

/// The plan of `statement`: as the application role in `tenant`'s transaction, or as the system
/// login when `tenant` is `None`.
async fn plan(db: &TestDb, tenant: Option<Uuid>, statement: &Statement) -> anyhow::Result<String> {
    Ok(match tenant {
        Some(tenant) => {
            tenant_transaction(db.app_conn(), &ctx(tenant), async |txn| {
                Ok(pg::explain(txn, statement).await?)
            })
            .await?
        }
        None => pg::explain(db.system_conn(), statement).await?,
    })
}

/// Every statement the repositories send EXPLAINs to one task on the worker that holds the
/// tenant's shards; tenant administration (the `tenants` reference table, on every node) and the
/// system role's checks are listed apart. Prints the routing table.
#[tokio::test]
async fn every_tenant_statement_runs_as_one_task_on_the_tenants_worker() -> anyhow::Result<()> {
    let db = TestDb::postgres_only().await?;
    let walk = walk(&db).await?;
    let node = tenant_node(&db, walk.tenant).await?;
    println!("tenant {} lives on the worker at port {node}", walk.tenant);
    println!("\n| operation | statements | route |\n|---|---:|---|");
    let mut statements = 0;
    for (name, sent) in &walk.tenant_ops {
        assert!(!sent.is_empty(), "{name}: no statement was recorded");
        for statement in sent {
            let plan = plan(&db, Some(walk.tenant), statement).await?;
            assert_eq!(
                route(&plan),
                Route::Single(node),
                "{name}: not one task on the tenant's worker\n{}\n{plan}",
                statement.sql
            );
            statements += 1;
        }
        println!("| {name} | {} | one task, worker :{node} |", sent.len());
    }
    // System-level work: the role check reads the coordinator's catalog; tenant administration is
    // one task on a copy of the `tenants` reference table (a write goes to every copy, in two
    // phases: see the commit test); a purge is one task for one tenant, every shard for all.
    for (name, sent) in &walk.system_ops {
        let mut routes = Vec::new();
        for (n, statement) in sent.iter().enumerate() {
            let plan = plan(&db, None, statement).await?;
            let route = route(&plan);
            let expected = match (n, name.ends_with("(every tenant)")) {
                (0, _) => matches!(route, Route::Coordinator),
                (_, false) if name.starts_with("system.") => route == Route::Single(node),
                (_, false) => matches!(route, Route::Single(_)),
                (_, true) => matches!(route, Route::Other(_)),
            };
            assert!(
                expected,
                "{name}: an unexpected route
{}
{plan}",
                statement.sql
            );
            routes.push(match route {
                Route::Coordinator => "coordinator (role check)".to_owned(),
                Route::Single(port) => format!("one task, :{port}"),
                Route::Other(_) => "every shard".to_owned(),
            });
        }
        println!(
            "| {name} (system) | {} | {} |",
            sent.len(),
            routes.join(", ")
        );
    }
    println!(
        "\n{statements} statements of {} tenant operations, each one task on :{node}",
        walk.tenant_ops.len()
    );
    Ok(())
}

/// The notices the server sent to this process's connections (`citus.log_remote_commands` makes
/// the coordinator report each command it sends to a worker as one).
fn notices() -> &'static Arc<Mutex<Vec<String>>> {
    static NOTICES: OnceLock<Arc<Mutex<Vec<String>>>> = OnceLock::new();
    NOTICES.get_or_init(|| {
        let notices = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(NoticeLayer(Arc::clone(&notices)));
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
        notices
    })
}

/// Keeps the log of [`notices`] to the calling test until the guard is dropped. The log is the
/// process's, and the tests that read it run in parallel: without this, one test's clearing or
/// taking the log would lose the other's notices, or hand them over.
async fn own_the_notices() -> tokio::sync::MutexGuard<'static, ()> {
    static OWNER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let guard = OWNER.lock().await;
    notices();
    guard
}

/// Keeps the messages of sqlx's notice events.
struct NoticeLayer(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> Layer<S> for NoticeLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "sqlx::postgres::notice" {
            return;
        }
        struct Message(String);
        impl Visit for Message {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
            fn record_str(&mut self, field: &Field, value: &str) {
                if field.name() == "message" {
                    self.0 = value.to_owned();
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0.lock().expect("an unpoisoned log").push(message.0);
    }
}

/// A pool of `role` whose sessions have the coordinator report every remote command.
async fn logging_remote_commands(db: &TestDb, role: &str) -> anyhow::Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(pg::url_as(db.url().expect("a URL"), role)?);
    options
        .max_connections(1)
        .sqlx_logging(false)
        .map_sqlx_postgres_opts(|pg| pg.options([("citus.log_remote_commands", "on")]));
    Ok(Database::connect(options).await?)
}

/// The remote commands `call` made the coordinator send.
async fn remote_commands<T>(
    call: impl Future<Output = orkestra_repository::Result<T>>,
) -> anyhow::Result<Vec<String>> {
    notices().lock().expect("an unpoisoned log").clear();
    call.await?;
    let sent = std::mem::take(&mut *notices().lock().expect("an unpoisoned log"));
    Ok(sent
        .into_iter()
        .filter_map(|notice| notice.strip_prefix("issuing ").map(str::to_owned))
        .collect())
}

/// A task write with its history row, and a message append with its conversation's update,
/// commit in one phase on the tenant's worker: `COMMIT`, never `PREPARE TRANSACTION`. Creating a
/// tenant, a write to the `tenants` reference table on every node, commits in two, which shows the
/// log would tell.
#[tokio::test]
async fn tenant_writes_commit_in_one_phase() -> anyhow::Result<()> {
    let _log = own_the_notices().await;
    let db = TestDb::postgres_only().await?;
    let app = logging_remote_commands(&db, pg::APP_LOGIN).await?;
    let system = logging_remote_commands(&db, pg::SYSTEM_LOGIN).await?;

    let mut created = None;
    let two_phase = remote_commands(async {
        created = Some(
            TenantRepository::new(&system)
                .create(NewTenant::new("Acme", "acme"))
                .await?,
        );
        Ok(())
    })
    .await?;
    println!("tenants.create: {two_phase:#?}");
    assert!(
        two_phase
            .iter()
            .any(|c| c.starts_with("PREPARE TRANSACTION")),
        "a reference-table write commits in two phases: {two_phase:#?}"
    );

    let tenant = created.expect("a tenant").id;
    let ctx = RequestContext::new(
        tenant,
        orkestra_repository::Actor::system("tests").expect("a name"),
    )?;
    let user = UserRepository::new(&app)
        .create(&ctx, NewUser::new("ada@example.com", "Ada"))
        .await?;
    let conversation = ConversationRepository::new(&app)
        .create(&ctx, NewConversation::new(json!({})))
        .await?;
    let tasks = TaskRepository::new(&app);
    let mut task = None;
    let writes: Vec<(&str, Vec<String>)> = vec![
        (
            "tasks.create (task + history)",
            remote_commands(async {
                task = Some(
                    tasks
                        .create(
                            &ctx,
                            NewTask::new("wf", "run", "Approve", json!({}))
                                .assigned_to(AssignTo::user(user.id)),
                        )
                        .await?,
                );
                Ok(())
            })
            .await?,
        ),
        (
            "tasks.claim (update + history)",
            remote_commands(tasks.claim(&ctx, task.as_ref().expect("a task").id, user.id)).await?,
        ),
        (
            "conversations.append_message (message + conversation)",
            remote_commands(ConversationRepository::new(&app).append_message(
                &ctx,
                conversation.id,
                NewMessage::new("user", "hello"),
            ))
            .await?,
        ),
    ];
    // A purge of every tenant deletes on every worker: two phases.
    let purge = remote_commands(
        SystemRepository::new(&system).purge_audit_events(None, Utc::now().fixed_offset()),
    )
    .await?;
    assert!(
        purge.iter().any(|c| c.starts_with("PREPARE TRANSACTION")),
        "a purge of every tenant commits in two phases: {purge:#?}"
    );
    for (name, commands) in writes {
        println!("{name}: {commands:#?}");
        assert!(
            commands.iter().any(|c| c.starts_with("COMMIT")),
            "{name}: no commit on the worker: {commands:#?}"
        );
        assert!(
            !commands
                .iter()
                .any(|c| c.contains("PREPARE TRANSACTION") || c.contains("COMMIT PREPARED")),
            "{name}: a two-phase commit: {commands:#?}"
        );
        let writes = commands
            .iter()
            .filter(|c| c.starts_with("INSERT") || c.starts_with("UPDATE"))
            .count();
        assert_eq!(
            writes, 2,
            "{name}: the two writes in one transaction: {commands:#?}"
        );
    }
    Ok(())
}

/// A repository call on a pool begins its transaction and binds its tenant in one message
/// (`BEGIN; SELECT orkestra_bind_tenant(...)`): the coordinator forwards the binding to the worker
/// as the `SET LOCAL` alone, so the worker sees the tenant and warns of nothing. (A message
/// `BEGIN; SET LOCAL ...` would be replayed whole, and each worker would warn that a transaction is
/// already in progress.)
#[tokio::test]
async fn one_message_begins_and_binds_the_tenant_on_the_worker_without_warnings()
-> anyhow::Result<()> {
    let _log = own_the_notices().await;
    let db = TestDb::postgres_only().await?;
    let tenant = TenantRepository::new(db.conn())
        .create(NewTenant::new("Acme", "acme"))
        .await?
        .id;
    let ctx = ctx(tenant);
    let user = UserRepository::new(db.conn())
        .create(&ctx, NewUser::new("ada@example.com", "Ada"))
        .await?;
    let task = TaskRepository::new(db.conn())
        .create(
            &ctx,
            NewTask::new("wf", "run", "Approve", json!({})).assigned_to(AssignTo::user(user.id)),
        )
        .await?;
    let app = logging_remote_commands(&db, pg::APP_LOGIN).await?;
    let tasks = TaskRepository::new(&app);

    let binding = format!("SET LOCAL app.tenant_id = '{tenant}'");
    for (name, call) in [("find_by_id", 0), ("claim", 1)] {
        notices().lock().expect("an unpoisoned log").clear();
        match call {
            0 => {
                let found = tasks.find_by_id(&ctx, task.id).await?;
                assert_eq!(
                    found.map(|t| t.id),
                    Some(task.id),
                    "the worker saw the tenant"
                );
            }
            _ => {
                let claimed = tasks.claim(&ctx, task.id, user.id).await?;
                assert_eq!(claimed.status, TaskStatus::Claimed);
            }
        }
        let sent = std::mem::take(&mut *notices().lock().expect("an unpoisoned log"));
        println!("{name}: {sent:#?}");
        let opened = sent
            .iter()
            .find(|notice| notice.starts_with("issuing BEGIN"))
            .unwrap_or_else(|| panic!("{name}: no worker transaction: {sent:#?}"));
        assert!(
            opened.contains(&binding),
            "{name}: the worker's transaction is not bound: {opened}"
        );
        assert!(
            !opened.contains("orkestra_bind_tenant") && opened.matches("BEGIN").count() == 1,
            "{name}: the worker got more than the binding: {opened}"
        );
        assert!(
            !sent
                .iter()
                .any(|notice| notice.contains("already a transaction in progress")),
            "{name}: a worker warned: {sent:#?}"
        );
    }
    Ok(())
}

/// `connect` refuses a coordinator that would not forward the tenant binding to the workers,
/// instead of opening a pool on which every tenant looks empty.
#[tokio::test]
async fn connect_refuses_a_coordinator_that_would_not_forward_the_tenant() -> anyhow::Result<()> {
    let db = TestDb::postgres_only().await?;
    let url = pg::url_as(db.url().expect("a URL"), pg::APP_LOGIN)?;
    let separator = if url.contains('?') { '&' } else { '?' };
    // The session's own setting stands in for the coordinator's configuration.
    let misconfigured = format!("{url}{separator}options=-c%20citus.propagate_set_commands%3Dnone");
    let error = orkestra_repository::connect(&orkestra_repository::DbConfig::new(misconfigured))
        .await
        .expect_err("a coordinator that does not forward SET LOCAL");
    assert!(
        matches!(&error, orkestra_repository::Error::Misconfigured { reason }
            if reason.contains("= none")),
        "{error:?}"
    );
    let pool = orkestra_repository::connect(&orkestra_repository::DbConfig::new(url)).await?;
    pool.close().await?;
    Ok(())
}

/// The distribution of each table, from the catalog.
async fn distribution(db: &TestDb) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let catalog = orkestra_tests::catalog::Catalog::read(db.conn()).await?;
    Ok(catalog
        .tables
        .into_iter()
        .map(|(name, table)| (name, table.distribution))
        .collect())
}

/// Runs `statements` in one transaction on the owner's pool.
async fn in_one_transaction(db: &TestDb, statements: &[&str]) -> anyhow::Result<()> {
    let txn = sea_orm::TransactionTrait::begin(db.conn()).await?;
    for sql in statements {
        txn.execute_unprepared(sql).await?;
    }
    txn.commit().await?;
    Ok(())
}

/// Migration 14 does what is left to do: on a database where it ran before Citus was installed
/// (recorded, nothing distributed) its `down` does nothing and its `up` distributes; tables
/// already distributed are left as they are.
#[tokio::test]
async fn migration_14_distributes_only_what_is_not_yet_distributed() -> anyhow::Result<()> {
    use orkestra_migration::{Migrator, MigratorTrait};
    let db = TestDb::postgres_only().await?;
    let distributed = distribution(&db).await?;
    assert!(
        distributed.iter().all(|(_, d)| d.is_some()),
        "{distributed:?}"
    );

    // As if Citus had arrived after every migration ran.
    in_one_transaction(
        &db,
        &["SELECT undistribute_table('tenants', cascade_via_foreign_keys => true)"],
    )
    .await?;
    assert!(distribution(&db).await?.iter().all(|(_, d)| d.is_none()));
    // Down to 13: migration 17 (task page indexes), 16 (groups' lifecycle), 15 (the binding
    // function), then 14, which finds nothing to undo.
    Migrator::down(db.conn(), Some(4)).await?;
    assert!(distribution(&db).await?.iter().all(|(_, d)| d.is_none()));

    // Some tables distributed by hand already: `up` distributes the rest, alike.
    in_one_transaction(
        &db,
        &[
            "SET LOCAL citus.enable_local_reference_table_foreign_keys TO off",
            "SET LOCAL citus.multi_shard_modify_mode TO 'sequential'",
            "SELECT create_reference_table('tenants')",
            "SELECT create_distributed_table('users', 'tenant_id', colocate_with => 'none')",
        ],
    )
    .await?;
    Migrator::up(db.conn(), None).await?;
    assert_eq!(distribution(&db).await?, distributed);
    Ok(())
}
