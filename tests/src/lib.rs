//! The test harness of the Orkestra data layer: one suite, two backends.
//!
//! The backend is chosen by `DATABASE_URL`:
//! - unset (or a `sqlite:` URL): every test gets its own in-memory SQLite database;
//! - `postgres://...`: the first test of a process migrates a template database once with the real
//!   [`Migrator`](orkestra_migration::Migrator); every test then gets its own copy
//!   (`CREATE DATABASE ... TEMPLATE`), dropped when the test's [`TestDb`] is dropped, whether the test
//!   passed or panicked. Each process leaves its template behind (tests have no hook at process
//!   exit); the next run drops what exited processes left (see [`pg::sweep`]).
//!
//! - `postgres://...` with `ORKESTRA_POOLER_URL` (a PgBouncer in transaction mode, `.ci/pgbouncer
//!   up`): the same databases, made and dropped directly, but every pool of a test (the owner's,
//!   the application and system logins', and those a test opens from [`TestDb::url`]) reaches
//!   its database through the pooler, with the statement cache off (see [`pg::through_pooler`]).
//!
//! - `postgres://...` with `ORKESTRA_CITUS=1`: the coordinator of a Citus cluster, where a database
//!   cannot be copied from a template (every node would need the copy, and Citus's metadata with
//!   it). Every test uses the one database the URL names, migrated in place, and runs alone (see
//!   [`citus`]).
//!
//! Tests that only make sense on PostgreSQL carry
//! `#[cfg_attr(not(orkestra_pg), ignore = "...")]`; the build script sets `orkestra_pg` when
//! `DATABASE_URL` names a PostgreSQL server, so they run there and are listed as ignored on SQLite.
//! It sets `orkestra_citus` with `ORKESTRA_CITUS`: tests of the cluster itself are compiled only
//! then, and the few that cannot run on a shared database carry
//! `#[cfg_attr(orkestra_citus, ignore = "...")]` with the reason.

pub mod catalog;
pub mod citus;
pub mod fixtures;
pub mod pg;
pub mod repo;
pub mod scale;

use std::time::Duration;

use anyhow::Context as _;
use orkestra_migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend};

/// The backend a test run uses, from `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// In-memory SQLite, one database per test.
    Sqlite,
    /// A PostgreSQL server; the URL names the database used for administration (create and drop).
    Postgres {
        /// The administration URL (`DATABASE_URL`).
        admin_url: String,
    },
    /// The coordinator of a Citus cluster; the URL names the one database every test shares.
    Citus {
        /// The database's URL (`DATABASE_URL`), as a superuser.
        url: String,
    },
}

impl Backend {
    /// Reads `DATABASE_URL`: unset or `sqlite:...` is SQLite, `postgres://...` is PostgreSQL, or
    /// Citus when `ORKESTRA_CITUS` is set too.
    ///
    /// # Panics
    /// On any other scheme, and when `ORKESTRA_EXPECT_BACKEND` (`sqlite`, `postgres` or `citus`,
    /// set by CI) names another backend: a test run must never silently fall back to another
    /// backend.
    pub fn from_env() -> Backend {
        let backend = Self::from_url();
        if let Ok(expected) = std::env::var("ORKESTRA_EXPECT_BACKEND") {
            let actual = match backend {
                Backend::Sqlite => "sqlite",
                Backend::Postgres { .. } => "postgres",
                Backend::Citus { .. } => "citus",
            };
            assert_eq!(
                actual, expected,
                "ORKESTRA_EXPECT_BACKEND={expected}, but DATABASE_URL selects {actual}"
            );
        }
        backend
    }

    fn from_url() -> Backend {
        match std::env::var("DATABASE_URL") {
            Err(_) => Backend::Sqlite,
            Ok(url) if url.is_empty() || url.starts_with("sqlite:") => Backend::Sqlite,
            Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                if citus::enabled() {
                    Backend::Citus { url }
                } else {
                    Backend::Postgres { admin_url: url }
                }
            }
            Ok(url) => panic!(
                "DATABASE_URL must be unset (SQLite) or a postgres:// URL, not {:?}",
                pg::redact(&url)
            ),
        }
    }

    /// The sea-orm backend this is.
    pub fn db_backend(&self) -> DbBackend {
        match self {
            Backend::Sqlite => DbBackend::Sqlite,
            Backend::Postgres { .. } | Backend::Citus { .. } => DbBackend::Postgres,
        }
    }
}

/// Connection options for tests: a small pool, no per-statement log noise.
pub(crate) fn options(url: &str) -> ConnectOptions {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(8)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    options
}

/// A database of the selected backend that belongs to one test.
pub struct TestDb {
    conn: DatabaseConnection,
    app: Option<DatabaseConnection>,
    system: Option<DatabaseConnection>,
    url: Option<String>,
    // Declared after the pools, so they are dropped before the database is, or before the next
    // test may use the shared one.
    _pg: Option<pg::OwnedDatabase>,
    citus_turn: Option<citus::Turn>,
}

impl TestDb {
    /// A database with every migration applied.
    ///
    /// # Errors
    /// When the server cannot be reached or the migrations fail.
    pub async fn migrated() -> anyhow::Result<TestDb> {
        match Backend::from_env() {
            Backend::Sqlite => {
                let db = Self::sqlite().await?;
                Migrator::up(&db.conn, None)
                    .await
                    .context("migrating in-memory SQLite")?;
                Ok(db)
            }
            Backend::Postgres { admin_url } => {
                let template = pg::template(&admin_url).await?;
                let owned = pg::OwnedDatabase::create(&admin_url, Some(&template)).await?;
                let url = Self::reached(&admin_url, owned.url())?;
                Self::postgres(url, Some(owned), None).await
            }
            Backend::Citus { url } => {
                let turn = citus::Turn::migrated(&url).await?;
                Self::postgres(url, None, Some(turn)).await
            }
        }
    }

    /// A database with no migration applied (for tests of the migrations themselves).
    ///
    /// # Errors
    /// When the server cannot be reached.
    pub async fn empty() -> anyhow::Result<TestDb> {
        match Backend::from_env() {
            Backend::Sqlite => Self::sqlite().await,
            Backend::Postgres { admin_url } => {
                let owned = pg::OwnedDatabase::create(&admin_url, None).await?;
                let url = Self::reached(&admin_url, owned.url())?;
                Self::postgres(url, Some(owned), None).await
            }
            Backend::Citus { url } => {
                let turn = citus::Turn::empty(&url).await?;
                Self::postgres(url, None, Some(turn)).await
            }
        }
    }

    /// Like [`TestDb::migrated`], but insists on PostgreSQL: for tests of PostgreSQL-only behaviour.
    ///
    /// # Panics
    /// When `DATABASE_URL` does not name a PostgreSQL server, so such a test cannot pass without
    /// running its assertions.
    pub async fn postgres_only() -> anyhow::Result<TestDb> {
        assert_eq!(
            Backend::from_env().db_backend(),
            DbBackend::Postgres,
            "this test needs PostgreSQL: set DATABASE_URL=postgres://..."
        );
        Self::migrated().await
    }

    /// The URL the test's pools use for its database `url`: through the transaction pooler of
    /// [`pg::POOLER_ENV`] when one is set, else `url` itself.
    fn reached(admin_url: &str, url: &str) -> anyhow::Result<String> {
        let pooler = pg::pooler();
        pg::announce_path(admin_url, pooler.as_deref());
        match pooler {
            Some(pooler) => pg::through_pooler(url, &pooler),
            None => Ok(url.to_owned()),
        }
    }

    async fn sqlite() -> anyhow::Result<TestDb> {
        // One connection: each connection to `sqlite::memory:` would open a database of its own.
        let mut options = options("sqlite::memory:");
        options.max_connections(1);
        let conn = Database::connect(options)
            .await
            .context("opening in-memory SQLite")?;
        Ok(TestDb {
            conn,
            app: None,
            system: None,
            url: None,
            _pg: None,
            citus_turn: None,
        })
    }

    async fn postgres(
        url: String,
        owned: Option<pg::OwnedDatabase>,
        turn: Option<citus::Turn>,
    ) -> anyhow::Result<TestDb> {
        let conn = Database::connect(options(&url))
            .await
            .with_context(|| format!("connecting to test database {}", pg::redact(&url)))?;
        let login = async |role: &str| -> anyhow::Result<DatabaseConnection> {
            let mut options = options(&pg::url_as(&url, role)?);
            // Opened on first use: most tests never use these pools.
            options.connect_lazy(true);
            Ok(Database::connect(options).await?)
        };
        let app = login(pg::APP_LOGIN).await?;
        let system = login(pg::SYSTEM_LOGIN).await?;
        Ok(TestDb {
            conn,
            app: Some(app),
            system: Some(system),
            url: Some(url),
            _pg: owned,
            citus_turn: turn,
        })
    }

    /// The connection pool of this test's database, as its owner (on PostgreSQL, a superuser,
    /// which row-level security does not confine): for fixtures and for checking what is stored.
    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// A pool that connects the way a service does: on PostgreSQL as a login role of
    /// `orkestra_app`, which row-level security confines to the tenant each transaction names (and
    /// which sees nothing outside one). On SQLite, the one connection.
    pub fn app_conn(&self) -> &DatabaseConnection {
        self.app.as_ref().unwrap_or(&self.conn)
    }

    /// A pool of a login role of `orkestra_system`, for system-level work on PostgreSQL. On
    /// SQLite, the one connection.
    pub fn system_conn(&self) -> &DatabaseConnection {
        self.system.as_ref().unwrap_or(&self.conn)
    }

    /// The backend of this test's database.
    pub fn backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }

    /// The URL of this test's database on PostgreSQL (`None` on in-memory SQLite, which only this
    /// process's pool can reach): through the transaction pooler when [`pg::POOLER_ENV`] names
    /// one, with the statement cache off in its parameters.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// Whether this test's database is on a Citus cluster.
    pub fn is_citus(&self) -> bool {
        self.citus_turn.is_some()
    }
}

/// Writes a line of a test's figures (counts, timings) where a passing test's output shows: straight
/// to the process's standard error, which libtest's output capture (of `print!` and `eprint!`)
/// does not hold back. CI's log then carries the figures of every run, not only of failed ones.
pub fn report(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    // A log line that cannot be written is no reason to fail a test.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// [`report`] with `format!`'s arguments.
#[macro_export]
macro_rules! report {
    ($($arg:tt)*) => {
        $crate::report(format_args!($($arg)*))
    };
}

/// The seed a randomised test runs with: the environment variable `var` (hex, with or without
/// `0x`, or decimal), else a fresh one, so every run explores another case and any run can be
/// replayed from the seed it prints.
///
/// # Panics
/// When `var` is set to something that is not a `u64`: a typo must not silently run another seed.
pub fn seed_from_env(var: &str) -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    match std::env::var(var) {
        Ok(text) if !text.trim().is_empty() => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => text
                    .parse()
                    .ok()
                    .or_else(|| u64::from_str_radix(text, 16).ok()),
            };
            parsed.unwrap_or_else(|| {
                panic!("{var}={text:?} is neither a hex (0x...) nor a decimal u64")
            })
        }
        _ => {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default(),
            );
            hasher.write_u32(std::process::id());
            hasher.finish()
        }
    }
}

/// `1234567` as `1,234,567`, for the figures tests print.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
