//! Faults on PostgreSQL: a connection killed in the middle of a task transition, a pool exhausted
//! by held connections, and a server restart between calls. The repository runs on a pool opened
//! by [`connect`] with the application role, as a service's would be.
//!
//! The tests of this file take turns (a restart would break the others' connections).

use std::time::{Duration, Instant};

use orkestra_entity::sea_orm_active_enums::TaskStatus;
use orkestra_repository::{
    AssignTo, DbConfig, Error, NewTask, NewUser, RequestContext, TaskRepository, UserRepository,
    connect,
};
use orkestra_tests::repo::{Snapshot, ctx};
use orkestra_tests::{TestDb, fixtures, pg};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use serde_json::json;
use tokio::sync::Mutex;
use uuid::Uuid;

static TURN: Mutex<()> = Mutex::const_new(());

fn sql(text: &str) -> Statement {
    Statement::from_string(DbBackend::Postgres, text)
}

/// A pool of the application role on the test's database, opened the way a service opens one.
async fn app_pool(db: &TestDb, max: u32, acquire: Duration) -> anyhow::Result<DatabaseConnection> {
    let url = pg::url_as(db.url().expect("PostgreSQL"), pg::APP_LOGIN)?;
    let mut config = DbConfig::new(url);
    config.max_connections = max;
    config.min_connections = 0;
    config.acquire_timeout = acquire;
    Ok(connect(&config).await?)
}

/// A tenant with a user and a task assigned to them.
async fn tenant_with_task(db: &TestDb) -> anyhow::Result<(RequestContext, Uuid, Uuid)> {
    let tenant = fixtures::tenant(db.conn(), "faults").await?.id;
    let ctx = ctx(tenant);
    let user = UserRepository::new(db.conn())
        .create(&ctx, NewUser::new("ada@example.com", "Ada"))
        .await?
        .id;
    let mut task = NewTask::new("wf", "run-1", "Approve", json!({}));
    task.assign_to = Some(AssignTo::user(user));
    let task = TaskRepository::new(db.conn()).create(&ctx, task).await?.id;
    Ok((ctx, user, task))
}

/// Waits for a backend of the application role that waits on an advisory lock; its pid.
async fn blocked_backend(owner: &DatabaseConnection) -> anyhow::Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row = owner
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND usename = $1 AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
                [pg::APP_LOGIN.into()],
            ))
            .await?;
        if let Some(row) = row {
            return Ok(row.try_get("", "pid")?);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the claim never reached the history insert"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: set DATABASE_URL=postgres://..."
)]
#[cfg_attr(
    orkestra_citus,
    ignore = "on Citus the trigger that holds the history insert runs on a worker, where neither \
              the coordinator's advisory lock nor its pg_stat_activity reaches"
)]
async fn a_connection_killed_between_the_task_write_and_its_history_leaves_nothing()
-> anyhow::Result<()> {
    let _turn = TURN.lock().await;
    let db = TestDb::postgres_only().await?;
    let (ctx, user, task) = tenant_with_task(&db).await?;
    // A history insert waits for an advisory lock the test holds: the claim's UPDATE has run,
    // its history row has not, when the test kills the connection.
    db.conn()
        .execute_unprepared(
            "CREATE FUNCTION test_wait_for_lock() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NEW; END $$",
        )
        .await?;
    db.conn()
        .execute_unprepared(
            "CREATE TRIGGER test_wait_for_lock BEFORE INSERT ON task_history \
             FOR EACH ROW EXECUTE FUNCTION test_wait_for_lock()",
        )
        .await?;
    let before = Snapshot::all(db.conn()).await?;
    let pool = app_pool(&db, 2, Duration::from_secs(5)).await?;

    let holder = db.conn().begin().await?;
    holder
        .execute_raw(sql("SELECT pg_advisory_xact_lock(4242)"))
        .await?;
    let claim = tokio::spawn({
        let (pool, ctx) = (pool.clone(), ctx.clone());
        async move { TaskRepository::new(&pool).claim(&ctx, task, user).await }
    });
    let pid = blocked_backend(db.conn()).await?;
    // The UPDATE is in: the task row is locked by the doomed transaction.
    let killed = db
        .conn()
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_terminate_backend($1) AS killed",
            [pid.into()],
        ))
        .await?
        .expect("a row")
        .try_get::<bool>("", "killed")?;
    assert!(killed);
    let error = claim.await?.expect_err("the claim's connection was killed");
    assert!(matches!(error, Error::Db(_)), "{error:?}");
    holder.rollback().await?;

    // Nothing of the transition remains.
    assert_eq!(Snapshot::all(db.conn()).await?, before);
    // The next call on the same pool succeeds (the dead connection is replaced).
    let claimed = TaskRepository::new(&pool).claim(&ctx, task, user).await?;
    assert_eq!(claimed.status, TaskStatus::Claimed);
    let history = TaskRepository::new(&pool).history(&ctx, task).await?;
    let actions: Vec<&str> = history.iter().map(|h| h.action.as_str()).collect();
    assert_eq!(actions, ["created", "claimed"]);
    println!("faults: connection killed mid-transition; nothing written; pool recovered");
    Ok(())
}

#[tokio::test]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: set DATABASE_URL=postgres://..."
)]
async fn an_exhausted_pool_fails_with_a_timeout_instead_of_hanging() -> anyhow::Result<()> {
    let _turn = TURN.lock().await;
    let db = TestDb::postgres_only().await?;
    let (ctx, _user, task) = tenant_with_task(&db).await?;
    let acquire = Duration::from_millis(800);
    let pool = app_pool(&db, 2, acquire).await?;
    let tasks = TaskRepository::new(&pool);
    assert!(tasks.find_by_id(&ctx, task).await?.is_some());

    let held = [pool.begin().await?, pool.begin().await?];
    let started = Instant::now();
    let error = tasks
        .find_by_id(&ctx, task)
        .await
        .expect_err("every connection is held");
    let waited = started.elapsed();
    assert!(matches!(error, Error::PoolTimeout), "{error:?}");
    assert!(
        waited >= acquire,
        "failed after {waited:?}, before the timeout"
    );
    // Generous: the point is that it fails rather than hangs.
    assert!(
        waited < acquire + Duration::from_secs(5),
        "waited {waited:?}"
    );
    let error = tasks
        .claim(&ctx, task, Uuid::now_v7())
        .await
        .expect_err("every connection is held");
    assert!(matches!(error, Error::PoolTimeout), "{error:?}");

    drop(held);
    assert!(tasks.find_by_id(&ctx, task).await?.is_some());
    println!("faults: pool exhausted; refused after {waited:?} (acquire timeout {acquire:?})");
    Ok(())
}

/// The command that restarts the server, from `ORKESTRA_PG_RESTART` (CI sets it).
fn restart_command() -> String {
    std::env::var("ORKESTRA_PG_RESTART")
        .expect("ORKESTRA_PG_RESTART: the shell command that restarts the PostgreSQL server")
}

#[tokio::test]
#[cfg_attr(
    not(orkestra_pg_restart),
    ignore = "needs PostgreSQL and ORKESTRA_PG_RESTART (a shell command restarting the server)"
)]
async fn the_repository_recovers_from_a_server_restart_between_calls() -> anyhow::Result<()> {
    let _turn = TURN.lock().await;
    let db = TestDb::postgres_only().await?;
    let (ctx, user, task) = tenant_with_task(&db).await?;
    let pool = app_pool(&db, 4, Duration::from_secs(30)).await?;
    let tasks = TaskRepository::new(&pool);
    // Every connection of the pool is open when the server goes away.
    let open = [pool.begin().await?, pool.begin().await?];
    drop(open);
    assert!(tasks.find_by_id(&ctx, task).await?.is_some());

    let status = tokio::task::spawn_blocking(|| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(restart_command())
            .status()
    })
    .await??;
    assert!(status.success(), "the restart command failed: {status}");

    // The first call after the restart succeeds: dead connections are replaced on acquire.
    let claimed = tasks.claim(&ctx, task, user).await?;
    assert_eq!(claimed.status, TaskStatus::Claimed);
    assert!(tasks.find_by_id(&ctx, task).await?.is_some());
    println!("faults: server restarted between calls; the next call succeeded");
    Ok(())
}

#[tokio::test]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: set DATABASE_URL=postgres://..."
)]
async fn calls_succeed_after_every_idle_connection_of_the_pool_was_terminated() -> anyhow::Result<()>
{
    let _turn = TURN.lock().await;
    let db = TestDb::postgres_only().await?;
    let (ctx, user, task) = tenant_with_task(&db).await?;
    let pool = app_pool(&db, 3, Duration::from_secs(5)).await?;
    let tasks = TaskRepository::new(&pool);
    // Every connection the pool may hold is open and idle when the backends are terminated.
    let open = [
        pool.begin().await?,
        pool.begin().await?,
        pool.begin().await?,
    ];
    drop(open);
    assert!(tasks.find_by_id(&ctx, task).await?.is_some());
    let terminated = db
        .conn()
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND usename = $1",
            [pg::APP_LOGIN.into()],
        ))
        .await?
        .expect("a row")
        .try_get::<i64>("", "n")?;
    assert_eq!(terminated, 3, "the pool's connections");
    // The pool does not test a connection before handing it out: the read begins on a dead
    // connection, then on the next, and succeeds on a new one.
    assert!(tasks.find_by_id(&ctx, task).await?.is_some());
    let claimed = tasks.claim(&ctx, task, user).await?;
    assert_eq!(claimed.status, TaskStatus::Claimed);
    println!("faults: {terminated} idle connections terminated; the next calls succeeded");
    Ok(())
}

#[tokio::test]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: set DATABASE_URL=postgres://..."
)]
async fn a_refused_binding_leaves_no_broken_connection_in_the_pool() -> anyhow::Result<()> {
    let _turn = TURN.lock().await;
    let db = TestDb::postgres_only().await?;
    let (ctx, _user, task) = tenant_with_task(&db).await?;
    // One connection: a call after the failure gets the same slot.
    let pool = app_pool(&db, 1, Duration::from_secs(5)).await?;
    let tasks = TaskRepository::new(&pool);
    assert!(tasks.find_by_id(&ctx, task).await?.is_some());

    // As during a deploy whose migration 15 has not run yet: BEGIN succeeds, the binding fails,
    // and the server is left in a failed transaction on that connection.
    let rename = "ALTER FUNCTION orkestra_bind_tenant(uuid) RENAME TO test_bind_tenant_away";
    db.conn().execute_unprepared(rename).await?;
    let error = tasks
        .find_by_id(&ctx, task)
        .await
        .expect_err("no binding function");
    assert!(matches!(error, Error::Db(_)), "{error:?}");
    let back = "ALTER FUNCTION test_bind_tenant_away(uuid) RENAME TO orkestra_bind_tenant";
    db.conn().execute_unprepared(back).await?;

    // The failed connection was closed, not put back in its failed transaction.
    assert!(tasks.find_by_id(&ctx, task).await?.is_some());
    println!("faults: a refused binding closed its connection; the next call succeeded");
    Ok(())
}
