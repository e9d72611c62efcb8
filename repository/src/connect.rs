//! Opening the database: the one place pool settings live (the seed's `client.ts`).

use std::time::Duration;

use orkestra_migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::SqliteJournalMode;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};

use crate::error::{Error, Result};
use crate::tx::transaction;

/// How to open the database. [`DbConfig::new`] gives production defaults; change fields as needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbConfig {
    /// `postgres://user:password@host:5432/db`, `sqlite://path/to/file.db?mode=rwc` or
    /// `sqlite::memory:`.
    pub url: String,
    /// The most connections the pool opens (default 10; in-memory SQLite always uses 1).
    pub max_connections: u32,
    /// Connections kept open even when idle (default 1).
    pub min_connections: u32,
    /// How long a call waits for a free connection before failing with [`Error::PoolTimeout`]
    /// (default 5 s). Keep it below the caller's own request timeout, so a saturated pool or an
    /// unreachable server fails the request with a clear error instead of hanging it.
    pub acquire_timeout: Duration,
    /// How long opening one connection may take (default 5 s).
    pub connect_timeout: Duration,
    /// How long an idle connection stays open (default 10 min).
    pub idle_timeout: Duration,
    /// How long any connection lives before it is replaced (default 30 min), so that server-side
    /// failovers and configuration changes reach every connection.
    pub max_lifetime: Duration,
    /// Statements slower than this are logged at `WARN` (default 1 s); all statements are logged
    /// through `tracing` at `DEBUG`.
    pub slow_statement: Duration,
    /// Apply pending migrations after connecting (default `false`: operators migrate with
    /// `sea-orm-cli migrate up`). Not through a transaction pooler: migrations run statements
    /// outside transactions (see [`statement_cache_capacity`](Self::statement_cache_capacity)).
    pub migrate: bool,
    /// How many prepared statements each PostgreSQL connection keeps for reuse (`None`, the
    /// default: the URL's `statement-cache-capacity` parameter, else sqlx's 100).
    ///
    /// Connected to PostgreSQL itself (or through a pooler in session mode), keep the cache: a
    /// statement is prepared once per connection and then costs one round trip per call.
    ///
    /// Through a pooler in transaction mode that does not track protocol-level prepared statements
    /// (PgBouncer before 1.21, or later ones with `max_prepared_statements = 0`), set `Some(0)`
    /// ([`behind_transaction_pooler`](Self::behind_transaction_pooler)): there consecutive
    /// transactions of one client connection run on different server connections, and a cached
    /// statement is missing on the next one (`prepared statement "sqlx_s_1" does not exist`) or,
    /// worse, names another client's statement there. With the cache off, sqlx still prepares each
    /// statement under a name it never closes (sqlx 0.9), so the pooler must deallocate them when
    /// each transaction ends (PgBouncer: `server_reset_query = DEALLOCATE ALL` and
    /// `server_reset_query_always = 1`; README, "Transaction poolers"), and every statement must
    /// run inside a transaction, as every repository call does: outside one, the statement is
    /// prepared and executed in two exchanges, which the pooler may route to different servers.
    /// Each statement then costs two round trips (prepare, execute) instead of one. Directly on
    /// PostgreSQL, `Some(0)` would leave every statement prepared on the server until its
    /// connection closes.
    pub statement_cache_capacity: Option<usize>,
}

impl DbConfig {
    /// Production defaults for `url` (see each field).
    pub fn new(url: impl Into<String>) -> DbConfig {
        DbConfig {
            url: url.into(),
            max_connections: 10,
            min_connections: 1,
            acquire_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(1800),
            slow_statement: Duration::from_secs(1),
            migrate: false,
            statement_cache_capacity: None,
        }
    }

    /// The same configuration, migrating on connect.
    pub fn migrating(mut self) -> DbConfig {
        self.migrate = true;
        self
    }

    /// The same configuration for a connection through a pooler in transaction mode, such as
    /// PgBouncer 1.18 (`pool_mode = transaction`): no statement cache (see
    /// [`statement_cache_capacity`](Self::statement_cache_capacity) for why, and what the pooler
    /// must then do).
    pub fn behind_transaction_pooler(mut self) -> DbConfig {
        self.statement_cache_capacity = Some(0);
        self
    }

    fn is_sqlite_memory(&self) -> bool {
        self.url.starts_with("sqlite:")
            && (self.url.contains(":memory:") || self.url.contains("mode=memory"))
    }

    fn options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new(self.url.clone());
        options
            .max_connections(self.max_connections)
            .min_connections(self.min_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_timeout(self.connect_timeout)
            .idle_timeout(self.idle_timeout)
            .max_lifetime(self.max_lifetime)
            // No liveness check on the caller's path (it costs a round trip per call): on
            // PostgreSQL a transaction whose begin finds its connection dead (restart, failover,
            // `pg_terminate_backend`) begins again on another, so the process recovers by itself
            // (pg_txn.rs); sqlx still checks each connection as it goes back to the pool.
            .test_before_acquire(false)
            .sqlx_logging(true)
            .sqlx_logging_level(log::LevelFilter::Debug)
            .sqlx_slow_statements_logging_settings(log::LevelFilter::Warn, self.slow_statement);
        if let Some(capacity) = self.statement_cache_capacity {
            options.map_sqlx_postgres_opts(move |pg| pg.statement_cache_capacity(capacity));
        }
        if self.is_sqlite_memory() {
            // Each connection to an in-memory database opens a database of its own, and the
            // database disappears with its last connection: one connection, kept for good.
            options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        } else if self.url.starts_with("sqlite:") {
            // WAL lets readers proceed while one writer writes; writers wait for each other
            // instead of failing at once with "database is locked".
            let busy = self.acquire_timeout;
            options.map_sqlx_sqlite_opts(move |sqlite| {
                sqlite
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(busy)
                    .foreign_keys(true)
            });
        }
        options
    }
}

/// Opens a pool with `config`'s settings, migrating first if it says so.
///
/// ```no_run
/// # async fn f() -> orkestra_repository::Result<()> {
/// use orkestra_repository::{DbConfig, connect};
/// let db = connect(&DbConfig::new("postgres://orkestra:orkestra@localhost:5432/orkestra")).await?;
/// # Ok(()) }
/// ```
///
/// On a Citus coordinator it first checks that the coordinator forwards the tenant binding to the
/// workers (README, "Scaling out with Citus").
///
/// # Errors
/// [`Error::Validation`] (field `url`) when the URL names neither PostgreSQL nor SQLite;
/// [`Error::Misconfigured`] on a Citus coordinator without `citus.propagate_set_commands =
/// 'local'`; [`Error::Db`] when the database cannot be reached or a migration fails.
pub async fn connect(config: &DbConfig) -> Result<DatabaseConnection> {
    let supported = ["postgres://", "postgresql://", "sqlite:"];
    if !supported
        .iter()
        .any(|scheme| config.url.starts_with(scheme))
    {
        return Err(Error::validation(
            "url",
            "must start with postgres://, postgresql:// or sqlite:",
        ));
    }
    let db = Database::connect(config.options()).await?;
    check_citus(&db).await?;
    if config.migrate {
        Migrator::up(&db, None).await?;
    }
    Ok(db)
}

/// Refuses a Citus coordinator that would not forward `SET LOCAL app.tenant_id` to its workers:
/// there the policies would see no tenant, and the service would find every tenant empty instead
/// of failing. Checked once, when the pool opens; PostgreSQL without Citus and SQLite pass.
#[allow(clippy::disallowed_methods)] // Reads the catalog and a setting, no table of ours.
async fn check_citus(db: &DatabaseConnection) -> Result<()> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    // In a transaction, like every statement of the crate: behind a transaction pooler, a
    // statement sent on the pool by itself is prepared and executed in two exchanges, which the
    // pooler may route to two server connections (DbConfig::statement_cache_capacity).
    let row = transaction(db, async |txn| {
        Ok(txn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') AS citus, \
                     current_setting('citus.propagate_set_commands', true) AS propagate",
            ))
            .await?)
    })
    .await?;
    let Some(row) = row else {
        return Ok(());
    };
    let citus: bool = row.try_get("", "citus")?;
    let propagate: Option<String> = row.try_get("", "propagate")?;
    if citus && propagate.as_deref() != Some("local") {
        return Err(Error::Misconfigured {
            reason: format!(
                "this Citus coordinator has citus.propagate_set_commands = {}; set it to 'local' \
                 on the coordinator (never on the workers), or the workers never see the tenant \
                 and row-level security hides every row",
                propagate.as_deref().unwrap_or("(unset)")
            ),
        });
    }
    Ok(())
}
