//! The test harness on a Citus cluster: one shared database, migrated in place, emptied before each
//! test, and used by one test at a time.
//!
//! PostgreSQL's harness gives each test a copy of a template database. On Citus that cannot work:
//! a database is made on the coordinator only, while the tables' shards live in the database of
//! the same name on every worker, and Citus's metadata (nodes, shards, placements) belongs to the
//! database that was distributed. So here every test uses the database `DATABASE_URL` names, as a
//! superuser (row-level security is forced on every table, and the harness must see every row to
//! delete it), which `just test-citus` migrates before the run (and, on the local cluster, first
//! empties with `cluster reset-db`):
//! - [`Turn::migrated`] waits for the previous test to end, applies any pending migration (for
//!   the tests of the migrations themselves, which take it down), and deletes every row, so each
//!   test starts from the same empty, migrated schema its PostgreSQL twin gets from the template;
//! - [`Turn::empty`] takes every migration down, for the tests that build the schema themselves.
//!
//! Tests therefore run one at a time within a process (cargo runs test binaries one after another):
//! a test's [`Turn`] ends when its `TestDb` is dropped. Deleting every row takes a fraction of a
//! second; `TRUNCATE` would take seconds, as it locks every shard of every table.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context as _;
use orkestra_migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, TransactionTrait,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::{options, pg};

/// Whether `ORKESTRA_CITUS` asks for the Citus harness (any value but empty, `0` or `false`).
pub fn enabled() -> bool {
    std::env::var("ORKESTRA_CITUS").is_ok_and(|value| !matches!(value.trim(), "" | "0" | "false"))
}

/// Whose turn it is on the shared database.
static TURNS: LazyLock<Arc<Mutex<()>>> = LazyLock::new(|| Arc::new(Mutex::new(())));

/// How long a test waits for the one before it to end. Far above any single test; a test that
/// holds two `TestDb`s at once would wait for itself, and fails with this instead of hanging.
const WAIT: Duration = Duration::from_secs(600);

/// The tables, each before the tables it references, so that deleting in this order meets no
/// foreign key.
const TABLES: [&str; 9] = [
    "task_history",
    "tasks",
    "messages",
    "conversations",
    "group_members",
    "groups",
    "audit_events",
    "users",
    "tenants",
];

/// One test's exclusive use of the shared database, until it is dropped.
pub struct Turn {
    _guard: OwnedMutexGuard<()>,
}

impl Turn {
    /// Waits for the shared database, then brings it to every migration applied and no row.
    ///
    /// # Errors
    /// When the previous test does not end within ten minutes, the server cannot be reached, or a
    /// migration or a delete fails.
    pub async fn migrated(url: &str) -> anyhow::Result<Turn> {
        let turn = Self::take().await?;
        let conn = connect(url).await?;
        require_superuser(&conn).await?;
        Migrator::up(&conn, None)
            .await
            .context("migrating the shared Citus database")?;
        pg::create_login_roles(&conn).await?;
        drop_test_objects(&conn).await?;
        empty_tables(&conn).await?;
        conn.close().await?;
        Ok(turn)
    }

    /// Waits for the shared database, then takes every migration down.
    ///
    /// # Errors
    /// As [`Turn::migrated`].
    pub async fn empty(url: &str) -> anyhow::Result<Turn> {
        let turn = Self::take().await?;
        let conn = connect(url).await?;
        Migrator::reset(&conn)
            .await
            .context("taking the shared Citus database's migrations down")?;
        conn.close().await?;
        Ok(turn)
    }

    async fn take() -> anyhow::Result<Turn> {
        let guard = tokio::time::timeout(WAIT, Arc::clone(&TURNS).lock_owned())
            .await
            .context("waiting for the shared Citus database: does a test hold two TestDbs?")?;
        Ok(Turn { _guard: guard })
    }
}

async fn connect(url: &str) -> anyhow::Result<DatabaseConnection> {
    let mut options = options(url);
    options.max_connections(1);
    Database::connect(options)
        .await
        .with_context(|| format!("connecting to the Citus coordinator at {}", pg::redact(url)))
}

/// Fails unless the connection's role sees every row: a role that row-level security confined
/// would delete nothing, and tests would see each other's rows.
async fn require_superuser(conn: &DatabaseConnection) -> anyhow::Result<()> {
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT rolsuper OR rolbypassrls AS unconfined FROM pg_roles \
             WHERE rolname = current_user",
        ))
        .await?;
    let unconfined = row
        .map(|row| row.try_get::<bool>("", "unconfined"))
        .transpose()?
        .unwrap_or(false);
    anyhow::ensure!(
        unconfined,
        "the Citus harness needs DATABASE_URL to name a superuser (or a BYPASSRLS role)"
    );
    Ok(())
}

/// Drops the triggers and functions earlier tests added to the schema, which by convention are
/// named `test_*` (a test's own database would have been dropped with them).
async fn drop_test_objects(conn: &DatabaseConnection) -> anyhow::Result<()> {
    let drops = conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            r"SELECT 1 AS step, format('DROP TRIGGER %I ON %I', t.tgname, c.relname) AS sql
              FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
              WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal
                AND t.tgname LIKE 'test\_%'
              UNION ALL
              SELECT 2, format('DROP FUNCTION %s', p.oid::regprocedure)
              FROM pg_proc p
              WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'test\_%'
              ORDER BY step",
        ))
        .await?;
    for drop in drops {
        let sql: String = drop.try_get("", "sql")?;
        conn.execute_unprepared(&sql)
            .await
            .with_context(|| format!("cleaning the shared Citus database: {sql}"))?;
    }
    Ok(())
}

/// Deletes every row of every table in one transaction, as the owner (a superuser, which
/// row-level security does not confine). `sequential`: a transaction that writes the `tenants`
/// reference table after touching distributed tables must use one connection per worker.
async fn empty_tables(conn: &DatabaseConnection) -> anyhow::Result<()> {
    let txn = conn.begin().await?;
    let settings = ["SET LOCAL citus.multi_shard_modify_mode TO 'sequential'".to_owned()];
    let deletes = TABLES.iter().map(|table| format!("DELETE FROM {table}"));
    for sql in settings.into_iter().chain(deletes) {
        txn.execute_raw(Statement::from_string(DbBackend::Postgres, sql.clone()))
            .await
            .with_context(|| format!("emptying the shared Citus database: {sql}"))?;
    }
    txn.commit().await?;
    Ok(())
}
