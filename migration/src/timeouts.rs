//! How long a migration may wait for a lock, and how long one of its statements may run, on
//! PostgreSQL.
//!
//! A migration that alters a table queues for the table's lock behind every transaction using the
//! table, and every request that arrives after it queues behind the migration: one long-running
//! report turns a millisecond `ALTER TABLE` into an outage. With `lock_timeout` the migration gives
//! up instead, nothing of it stays (it runs in a transaction, or builds its indexes so that a rerun
//! finishes them), and it can simply be run again when the database is quieter. `statement_timeout`
//! bounds the rest: a statement that scans or rewrites more than expected.
//!
//! Every migration's session sets both before its first statement: `SET LOCAL` in the transaction
//! the migrator wraps it in, or `SET` on the connection of its own a migration that builds indexes
//! concurrently uses (see `crate::concurrently`). The values come from the environment, so an
//! operator can change them for one run without a new release:
//!
//! | variable | default | |
//! |---|---|---|
//! | `ORKESTRA_MIGRATION_LOCK_TIMEOUT` | `5s` | longest wait for a lock |
//! | `ORKESTRA_MIGRATION_STATEMENT_TIMEOUT` | `15min` | longest statement (an index build on a large table is one statement) |
//! | `ORKESTRA_MIGRATION_CONCURRENT_LOCK_TIMEOUT` | `10min` | longest wait for a lock of a concurrent index build or drop |
//!
//! A concurrent index build or drop waits for older transactions to end, and PostgreSQL counts
//! that wait against `lock_timeout`. The wait blocks no reads or writes (the lock it holds
//! meanwhile conflicts only with schema changes, `VACUUM` and `ANALYZE` of the table), so those
//! sessions get a lock timeout of their own, long enough for a database whose transactions run for
//! minutes: with the 5 s of a schema change, such a build would fail after its scan, every time.
//!
//! A value is a PostgreSQL duration: a number with an optional unit (`us`, `ms`, `s`, `min`, `h`,
//! `d`; milliseconds without one); `0` turns the limit off. SQLite has neither setting and a single
//! writer, so nothing is set there.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

/// The variable that overrides [`DEFAULT_LOCK_TIMEOUT`].
pub const LOCK_TIMEOUT_VAR: &str = "ORKESTRA_MIGRATION_LOCK_TIMEOUT";
/// The variable that overrides [`DEFAULT_STATEMENT_TIMEOUT`].
pub const STATEMENT_TIMEOUT_VAR: &str = "ORKESTRA_MIGRATION_STATEMENT_TIMEOUT";
/// The longest a migration waits for a lock, unless [`LOCK_TIMEOUT_VAR`] says otherwise.
pub const DEFAULT_LOCK_TIMEOUT: &str = "5s";
/// The longest one statement of a migration runs, unless [`STATEMENT_TIMEOUT_VAR`] says otherwise.
pub const DEFAULT_STATEMENT_TIMEOUT: &str = "15min";
/// The variable that overrides [`DEFAULT_CONCURRENT_LOCK_TIMEOUT`].
pub const CONCURRENT_LOCK_TIMEOUT_VAR: &str = "ORKESTRA_MIGRATION_CONCURRENT_LOCK_TIMEOUT";
/// The longest a concurrent index build or drop waits for a lock, older transactions included,
/// unless [`CONCURRENT_LOCK_TIMEOUT_VAR`] says otherwise.
pub const DEFAULT_CONCURRENT_LOCK_TIMEOUT: &str = "10min";

/// The limits a migration's session runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// `lock_timeout`, as PostgreSQL reads it.
    pub lock: String,
    /// `statement_timeout`, as PostgreSQL reads it.
    pub statement: String,
    /// `lock_timeout` of a session that builds or drops indexes concurrently.
    pub concurrent_lock: String,
}

impl Timeouts {
    /// The limits the environment sets, or the defaults.
    ///
    /// # Errors
    /// `DbErr::Migration` naming the variable when a value is not a duration PostgreSQL reads.
    pub fn from_env() -> Result<Timeouts, DbErr> {
        let read = |var: &str, default: &str| match std::env::var(var) {
            Ok(value) => checked(var, value.trim()),
            Err(_) => Ok(default.to_owned()),
        };
        Ok(Timeouts {
            lock: read(LOCK_TIMEOUT_VAR, DEFAULT_LOCK_TIMEOUT)?,
            statement: read(STATEMENT_TIMEOUT_VAR, DEFAULT_STATEMENT_TIMEOUT)?,
            concurrent_lock: read(CONCURRENT_LOCK_TIMEOUT_VAR, DEFAULT_CONCURRENT_LOCK_TIMEOUT)?,
        })
    }

    /// The statements that set the limits for the current transaction only (`SET LOCAL`).
    pub(crate) fn for_transaction(&self) -> [String; 2] {
        [
            format!("SET LOCAL lock_timeout = '{}'", self.lock),
            format!("SET LOCAL statement_timeout = '{}'", self.statement),
        ]
    }

    /// The statements that set the limits for a session that builds or drops indexes
    /// concurrently, whose lock timeout is [`Timeouts::concurrent_lock`].
    pub(crate) fn for_concurrent_session(&self) -> [String; 2] {
        [
            format!("SET lock_timeout = '{}'", self.concurrent_lock),
            format!("SET statement_timeout = '{}'", self.statement),
        ]
    }
}

/// `value` when it is a duration PostgreSQL reads: digits, an optional fraction, an optional unit.
/// Checked here so that the value can be written into the `SET` as a literal.
fn checked(var: &str, value: &str) -> Result<String, DbErr> {
    let number_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(number_end);
    let number_ok = !number.is_empty()
        && number.chars().filter(|&c| c == '.').count() <= 1
        && number.chars().next().is_some_and(|c| c.is_ascii_digit());
    let unit_ok = matches!(unit.trim(), "" | "us" | "ms" | "s" | "min" | "h" | "d");
    if number_ok && unit_ok {
        Ok(value.to_owned())
    } else {
        Err(DbErr::Migration(format!(
            "{var}={value:?} is not a duration: expected a number with an optional unit \
             (us, ms, s, min, h, d), such as 5s or 500ms; 0 turns the limit off"
        )))
    }
}

/// A migration that, on PostgreSQL, first sets the [`Timeouts`] for the transaction the migrator
/// runs it in. One that runs outside a transaction sets them on its own connection instead.
pub(crate) struct Bounded(pub(crate) Box<dyn MigrationTrait>);

impl Bounded {
    /// Sets the limits when the migrator runs this migration in a transaction on PostgreSQL (its
    /// default there).
    async fn limit(&self, manager: &SchemaManager<'_>) -> Result<(), DbErr> {
        if self.0.use_transaction() == Some(false) {
            return Ok(());
        }
        set_local(manager).await
    }
}

/// Sets the [`Timeouts`] for the transaction `manager` runs in, on PostgreSQL.
async fn set_local(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let db = manager.get_connection();
    for sql in Timeouts::from_env()?.for_transaction() {
        db.execute_unprepared(&sql).await?;
    }
    Ok(())
}

/// Begins a transaction for a migration that runs its own (`use_transaction() -> Some(false)`),
/// with the [`Timeouts`] set for it on PostgreSQL.
///
/// # Errors
/// `DbErr::Migration` when the timeouts in the environment are not durations; the server's error
/// when the transaction cannot begin.
pub(crate) async fn transaction(
    manager: &SchemaManager<'_>,
) -> Result<SchemaManager<'static>, DbErr> {
    let transaction = manager.begin().await?;
    set_local(&transaction).await?;
    Ok(transaction)
}

impl MigrationName for Bounded {
    fn name(&self) -> &str {
        self.0.name()
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Bounded {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        self.limit(manager).await?;
        self.0.up(manager).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        self.limit(manager).await?;
        self.0.down(manager).await
    }

    fn use_transaction(&self) -> Option<bool> {
        self.0.use_transaction()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_postgres_reads_pass_and_others_name_their_variable() {
        for good in ["5s", "0", "500", "500ms", "1.5min", "2h", "1 d", "250us"] {
            assert_eq!(checked("V", good).unwrap(), good);
        }
        for bad in [
            "",
            "s",
            "5 sec",
            "5s'; DROP TABLE tasks; --",
            "-1s",
            "1.2.3s",
            ".5s",
        ] {
            let error = checked("V", bad).unwrap_err().to_string();
            assert!(error.contains("V="), "{bad:?}: {error}");
        }
    }

    #[test]
    fn transactions_get_set_local_and_concurrent_sessions_their_own_lock_timeout() {
        let limits = Timeouts {
            lock: "5s".into(),
            statement: "15min".into(),
            concurrent_lock: "10min".into(),
        };
        assert_eq!(
            limits.for_transaction(),
            [
                "SET LOCAL lock_timeout = '5s'".to_owned(),
                "SET LOCAL statement_timeout = '15min'".to_owned()
            ]
        );
        assert_eq!(
            limits.for_concurrent_session(),
            [
                "SET lock_timeout = '10min'".to_owned(),
                "SET statement_timeout = '15min'".to_owned()
            ]
        );
    }
}
