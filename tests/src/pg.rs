//! PostgreSQL test databases: a template migrated once per process, a copy for every test, and a
//! sweeper for what crashed runs leave behind.
//!
//! Names are `orkestra_<kind>_<host>_<pid>_<n>`: `kind` is `tpl`, `test` or `scratch`, `host` a
//! hash of this machine's host name and `pid` the owning process. [`sweep`] drops the databases of
//! this host whose process has exited, so nothing accumulates on a shared server, and never touches
//! another machine's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};
use orkestra_migration::{APP_ROLE, Migrator, MigratorTrait, SYSTEM_ROLE};
use orkestra_repository::tx::bind_tenant_sql;
use orkestra_repository::{Connection, Txn};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, ExecResult,
    QueryResult, Statement, TransactionTrait,
};
use tokio::sync::OnceCell;

use crate::options;

static TEMPLATE: OnceCell<String> = OnceCell::const_new();
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// The URL with its password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// The URL of database `name` on the server `admin_url` points at.
///
/// # Errors
/// When `admin_url` is not a URL.
pub fn url_for(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(admin_url)
        .with_context(|| format!("DATABASE_URL is not a URL: {}", redact(admin_url)))?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// The environment variable naming a transaction pooler (PgBouncer in transaction mode, as
/// `.ci/pgbouncer up` starts one) that every connection of a [`TestDb`](crate::TestDb) goes
/// through, e.g. `postgres://postgres@127.0.0.1:6432`. Databases are still created, copied and
/// dropped directly on `DATABASE_URL`'s server, and the template migrated there: a transaction
/// pooler serves only statements inside transactions (README, "Transaction poolers").
pub const POOLER_ENV: &str = "ORKESTRA_POOLER_URL";

/// The pooler of [`POOLER_ENV`], when set (and not empty).
pub fn pooler() -> Option<String> {
    std::env::var(POOLER_ENV)
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// `url` as reached through the pooler at `pooler`: the pooler's host and port (and its user and
/// password, when it names them and `url` does not), `url`'s user, password and database, and no
/// statement cache (`statement-cache-capacity=0`, what `DbConfig::behind_transaction_pooler`
/// sets). The setting travels in the URL so that every pool opened from it gets it: the
/// harness's, and those tests open themselves from [`TestDb::url`](crate::TestDb::url) (with
/// `DbConfig::new`, or sea-orm's own options).
///
/// # Errors
/// When either is not a URL.
pub fn through_pooler(url: &str, pooler: &str) -> anyhow::Result<String> {
    let mut through =
        url::Url::parse(url).with_context(|| format!("not a URL: {}", redact(url)))?;
    let pooler = url::Url::parse(pooler)
        .with_context(|| format!("{POOLER_ENV} is not a URL: {}", redact(pooler)))?;
    let host = pooler
        .host_str()
        .with_context(|| format!("{POOLER_ENV} names no host: {}", redact(pooler.as_str())))?;
    through
        .set_host(Some(host))
        .with_context(|| format!("cannot set host {host}"))?;
    through
        .set_port(Some(pooler.port().unwrap_or(6432)))
        .map_err(|()| anyhow::anyhow!("cannot set a port in {}", redact(url)))?;
    if through.username().is_empty() && !pooler.username().is_empty() {
        through
            .set_username(pooler.username())
            .and_then(|()| through.set_password(pooler.password()))
            .map_err(|()| anyhow::anyhow!("cannot set a user in {}", redact(url)))?;
    }
    without_param(&mut through, STATEMENT_CACHE_PARAM);
    through
        .query_pairs_mut()
        .append_pair(STATEMENT_CACHE_PARAM, "0");
    Ok(through.to_string())
}

/// The URL parameter that sets sqlx's statement cache capacity.
pub const STATEMENT_CACHE_PARAM: &str = "statement-cache-capacity";

/// Removes the query parameter `key` from `url`, keeping the others in order.
pub fn without_param(url: &mut url::Url, key: &str) {
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != key)
        .map(|(k, value)| (k.into_owned(), value.into_owned()))
        .collect();
    url.set_query(None);
    if !kept.is_empty() {
        url.query_pairs_mut().extend_pairs(kept);
    }
}

/// Says once per test process which way the tests reach PostgreSQL, with [`crate::report`], so a
/// passing run's log shows it too.
pub(crate) fn announce_path(admin_url: &str, pooler: Option<&str>) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| match pooler {
        Some(pooler) => crate::report!(
            "orkestra-tests: PostgreSQL through the transaction pooler at {} (statement cache \
             off); databases created and dropped directly at {}",
            redact(pooler),
            redact(admin_url)
        ),
        None => crate::report!(
            "orkestra-tests: PostgreSQL directly at {}",
            redact(admin_url)
        ),
    });
}

/// A short, stable tag for this machine, so that the sweeper only drops databases made here.
fn host_tag() -> String {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    // FNV-1a: stable across builds and processes, unlike std's hasher.
    let hash = host.trim().bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    format!("{hash:08x}")
}

/// A fresh database name of the given kind, owned by process `pid`.
pub fn database_name(kind: &str, pid: u32) -> String {
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("orkestra_{kind}_{}_{pid}_{n}", host_tag())
}

/// Whether process `pid` of this machine is still running (`None` when this system cannot tell).
fn process_alive(pid: u32) -> Option<bool> {
    let proc = std::path::Path::new("/proc");
    if proc.join("self").exists() {
        return Some(proc.join(pid.to_string()).exists());
    }
    // Without /proc (macOS, the BSDs): `ps -p` succeeds exactly when the process exists.
    std::process::Command::new("ps")
        .args(["-p", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()
        .map(|status| status.success())
}

/// Opens a one-connection pool on the administration database.
///
/// # Errors
/// When the server cannot be reached.
pub async fn admin(admin_url: &str) -> anyhow::Result<DatabaseConnection> {
    let mut options = options(admin_url);
    options.max_connections(1);
    Database::connect(options)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", redact(admin_url)))
}

async fn execute(admin: &DatabaseConnection, sql: String) -> anyhow::Result<()> {
    admin
        .execute_raw(Statement::from_string(DbBackend::Postgres, sql.clone()))
        .await
        .with_context(|| format!("running `{sql}`"))?;
    Ok(())
}

/// Creates database `name`, as a copy of `template` when one is given.
///
/// # Errors
/// When the server refuses.
pub async fn create_database(
    admin: &DatabaseConnection,
    name: &str,
    template: Option<&str>,
) -> anyhow::Result<()> {
    let sql = match template {
        Some(template) => format!(r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#),
        None => format!(r#"CREATE DATABASE "{name}""#),
    };
    execute(admin, sql).await
}

/// Drops database `name`, ending its sessions first (PostgreSQL 13 or later).
///
/// # Errors
/// When the server refuses.
pub async fn drop_database(admin: &DatabaseConnection, name: &str) -> anyhow::Result<()> {
    execute(
        admin,
        format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#),
    )
    .await
}

/// Drops the databases of this host whose owning process has exited; returns their names.
///
/// A database still in use is left alone (the drop is not forced), so a sweep never breaks a run in
/// progress, even one whose owner could not be told apart.
///
/// # Errors
/// When the server cannot be queried.
pub async fn sweep(admin: &DatabaseConnection) -> anyhow::Result<Vec<String>> {
    let prefix = format!("orkestra_%_{}_%", host_tag());
    let rows = admin
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY datname",
            [prefix.into()],
        ))
        .await
        .context("listing test databases")?;
    let mut dropped = Vec::new();
    for row in rows {
        let name: String = row.try_get("", "datname")?;
        let Some(pid) = name
            .split('_')
            .nth(3)
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if process_alive(pid) != Some(false) {
            continue;
        }
        let sql = format!(r#"DROP DATABASE IF EXISTS "{name}""#);
        if admin
            .execute_raw(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .is_ok()
        {
            dropped.push(name);
        }
    }
    drop_login_roles_if_unused(admin).await?;
    Ok(dropped)
}

/// The login role tests connect as to act as a service: a member of `orkestra_app`, confined by
/// row-level security to the tenant its transaction names.
pub const APP_LOGIN: &str = "orkestra_test_app";
/// The login role tests connect as for system-level work: a member of `orkestra_system`.
pub const SYSTEM_LOGIN: &str = "orkestra_test_system";

/// Creates the two test login roles unless they exist, in the group roles the migrations create.
/// Processes race to do this (roles belong to the whole server); a duplicate is ignored. The
/// password is only for servers that ask for one; the local server trusts.
pub(crate) async fn create_login_roles(admin: &DatabaseConnection) -> anyhow::Result<()> {
    for (login, group) in [(APP_LOGIN, APP_ROLE), (SYSTEM_LOGIN, SYSTEM_ROLE)] {
        execute(
            admin,
            format!(
                "DO $$ BEGIN \
                     IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{login}') THEN \
                         CREATE ROLE {login} LOGIN PASSWORD '{login}' IN ROLE {group}; \
                     END IF; \
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; \
                 END $$"
            ),
        )
        .await?;
    }
    Ok(())
}

/// Drops the test login roles once no Orkestra test database is left on the server, so a run
/// leaves no role behind. (The group roles stay: migrations create them for real databases too.)
async fn drop_login_roles_if_unused(admin: &DatabaseConnection) -> anyhow::Result<()> {
    let left = admin
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM pg_database WHERE datname LIKE 'orkestra\\_%'",
        ))
        .await?
        .map(|row| row.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0);
    if left == 0 {
        // A role that another process just began to use refuses to go; that is fine.
        let _ = execute(
            admin,
            format!("DROP ROLE IF EXISTS {APP_LOGIN}, {SYSTEM_LOGIN}"),
        )
        .await;
    }
    Ok(())
}

/// `url` with `role` as its user (and password).
///
/// # Errors
/// When `url` is not a URL.
pub fn url_as(url: &str, role: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(url).with_context(|| format!("not a URL: {}", redact(url)))?;
    url.set_username(role)
        .and_then(|()| url.set_password(Some(role)))
        .map_err(|()| anyhow::anyhow!("cannot set a user in {}", redact(url.as_str())))?;
    Ok(url.to_string())
}

/// The name of this process's template database, migrated by the real `Migrator`; made by the
/// first caller, after a [`sweep`].
///
/// # Errors
/// When the server cannot be reached or the migrations fail.
pub async fn template(admin_url: &str) -> anyhow::Result<String> {
    TEMPLATE
        .get_or_try_init(|| async {
            let admin = admin(admin_url).await?;
            sweep(&admin).await?;
            let name = database_name("tpl", std::process::id());
            create_database(&admin, &name, None).await?;
            admin.close().await?;

            let conn = Database::connect(options(&url_for(admin_url, &name)?)).await?;
            let migrated = Migrator::up(&conn, None).await;

            // CREATE DATABASE ... TEMPLATE refuses a template that has sessions open.
            conn.close().await?;
            if let Err(error) = migrated {
                // Not left behind: every later test of this process would make another one.
                let cleanup = self::admin(admin_url).await?;
                drop_database(&cleanup, &name).await?;
                cleanup.close().await?;
                return Err(anyhow::Error::new(error)
                    .context(format!("migrating the template database {name}")));
            }
            // The group roles exist once the migrations ran.
            let admin = self::admin(admin_url).await?;
            create_login_roles(&admin).await?;
            admin.close().await?;
            Ok(name)
        })
        .await
        .cloned()
}

/// A database that belongs to one test, dropped when this value is dropped.
pub struct OwnedDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl OwnedDatabase {
    /// Creates a database for this process, copied from `template` when given.
    ///
    /// # Errors
    /// When the server refuses.
    pub async fn create(admin_url: &str, template: Option<&str>) -> anyhow::Result<Self> {
        let name = database_name("test", std::process::id());
        let admin = admin(admin_url).await?;
        create_database(&admin, &name, template).await?;
        admin.close().await?;
        Ok(OwnedDatabase {
            admin_url: admin_url.to_owned(),
            url: url_for(admin_url, &name)?,
            name,
        })
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for OwnedDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: use a runtime of its own.
        let outcome = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = admin(&admin_url).await?;
                drop_database(&admin, &name).await?;
                admin.close().await?;
                Ok(())
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not drop test database {}: {error:#}", self.name),
            Err(_) => eprintln!("dropping test database {} panicked", self.name),
        }
    }
}

/// Fails unless `url` names a PostgreSQL server.
///
/// # Errors
/// When it does not.
pub fn require_postgres(url: &str) -> anyhow::Result<()> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        bail!("expected a postgres:// URL, got {}", redact(url));
    }
    Ok(())
}

/// The plan PostgreSQL prints for `EXPLAIN` of `statement` (its values bound), run on `db` (a
/// tenant's transaction, for the policies to be part of it): the `QUERY PLAN` lines, joined.
///
/// # Errors
/// What the server returns, or a plan row without its text.
pub async fn explain(db: &impl ConnectionTrait, statement: &Statement) -> Result<String, DbErr> {
    let explain = Statement {
        sql: format!("EXPLAIN {}", statement.sql),
        ..statement.clone()
    };
    let lines = db
        .query_all_raw(explain)
        .await?
        .iter()
        .map(|row| row.try_get::<String>("", "QUERY PLAN"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(lines.join("\n"))
}

/// A one-connection pool of `role` on the database `url` names, whose statements are recorded
/// (those sea-orm sends with a statement of its own: not `BEGIN`, `COMMIT` or an unprepared
/// `SET LOCAL`), in order.
///
/// # Errors
/// When `url` is not a URL or the server cannot be reached.
pub async fn recording(
    url: &str,
    role: &str,
) -> anyhow::Result<(Recording, Arc<Mutex<Vec<Statement>>>)> {
    let mut options = ConnectOptions::new(url_as(url, role)?);
    options.max_connections(1).sqlx_logging(false);
    let mut conn = Database::connect(options).await?;
    let sent = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&sent);
    conn.set_metric_callback(move |info| {
        log.lock()
            .expect("an unpoisoned log")
            .push(info.statement.clone());
    });
    Ok((Recording { conn }, sent))
}

/// A pool whose statements sea-orm records ([`recording`]). The repository begins its own
/// transactions on a PostgreSQL pool, past sea-orm's metric callback; on this pool they are
/// sea-orm's transactions, bound by a `SET LOCAL` of their own, so every statement of a call is
/// recorded. The statements are the same either way; only the begin differs.
pub struct Recording {
    conn: DatabaseConnection,
}

impl Recording {
    /// Closes the pool.
    ///
    /// # Errors
    /// When the pool fails to close.
    pub async fn close(self) -> Result<(), DbErr> {
        self.conn.close().await
    }
}

impl Connection for Recording {
    async fn begin_txn(&self, tenant: Option<uuid::Uuid>) -> orkestra_repository::Result<Txn> {
        let txn = self.conn.begin().await?;
        if let Some(tenant) = tenant {
            txn.execute_unprepared(&bind_tenant_sql(tenant)).await?;
        }
        Ok(Txn::from(txn))
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Recording {
    fn get_database_backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.conn.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.conn.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.conn.query_one_raw(stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.conn.query_all_raw(stmt).await
    }
}
