//! Index builds and drops on tables that are in use.
//!
//! A plain `CREATE INDEX` holds a lock that blocks every write to the table until the build ends,
//! which on a large table is minutes of refused task claims. `CREATE INDEX CONCURRENTLY` lets writes
//! go on while it scans the table twice, but cannot run in a transaction, so a migration that uses
//! these functions opts out of the migrator's (`use_transaction() -> Some(false)`) and every step of
//! it must be safe to run again:
//! - a concurrent build that fails (a lock or statement timeout, a cancel, a duplicate key) leaves an
//!   *invalid* index behind, which `IF NOT EXISTS` would take for done; [`create_indexes`] first drops an
//!   invalid index of the same name, concurrently, then builds it;
//! - a drop is `IF EXISTS`.
//!
//! The statements run on one connection of their own, taken from the pool, with the migration
//! [`Timeouts`] set on its session: the pool could otherwise hand each statement another
//! connection. The settings are reset when the work is done, and the connection is closed rather
//! than given back, so they reach no later user of the pool, nor of a session pooler in between
//! (whose reset query may not discard settings).
//!
//! A concurrent build also waits for every transaction older than itself to end, and PostgreSQL
//! counts that wait against `lock_timeout`. The wait blocks no reads or writes, hence the longer
//! lock timeout of these sessions, [`Timeouts::concurrent_lock`] (10 minutes by default). On Citus
//! the session's `SET` stays on the coordinator (`citus.propagate_set_commands` forwards only
//! `SET LOCAL`): the shards' builds wait without a lock timeout, bounded by the coordinator's
//! statement timeout.
//!
//! On SQLite, which has one writer and no concurrent builds, the same indexes are built and dropped
//! plainly, `IF NOT EXISTS` and `IF EXISTS` kept. On Citus the coordinator forwards the concurrent
//! build and drop to every shard.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;
use sea_orm_migration::sea_orm::sqlx::pool::PoolConnection;
use sea_orm_migration::sea_orm::sqlx::{self, Postgres};
use sea_orm_migration::sea_orm::{DatabaseExecutor, RuntimeErr};

use crate::common::{tenant_index, tenant_index_name};
use crate::timeouts::Timeouts;

/// The longest identifier PostgreSQL keeps whole (`NAMEDATALEN - 1`).
const MAX_NAME: usize = 63;

/// Builds `indexes` (named), each concurrently on PostgreSQL, after dropping an invalid index a
/// failed earlier build left under its name.
///
/// # Errors
/// `DbErr::Migration` when called inside a transaction on PostgreSQL or for an unnamed index, or
/// when the timeouts in the environment are not durations; the server's error when a statement
/// fails (a lock or statement timeout among them), after which running the migration again
/// finishes the work.
pub(crate) async fn create_indexes(
    manager: &SchemaManager<'_>,
    indexes: Vec<IndexCreateStatement>,
) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres {
        for mut index in indexes {
            manager
                .create_index(index.if_not_exists().to_owned())
                .await?;
        }
        return Ok(());
    }
    let mut session = Session::open(manager).await?;
    for mut index in indexes {
        let name = index
            .get_index_spec()
            .get_name()
            .ok_or_else(|| DbErr::Migration("a concurrent index build needs a name".into()))?
            .to_owned();
        // PostgreSQL would truncate a longer name, and the invalid-index check would then look
        // for a name that never exists.
        if name.len() > MAX_NAME {
            return Err(DbErr::Migration(format!(
                "index name {name} is longer than PostgreSQL's {MAX_NAME} bytes"
            )));
        }
        if session.invalid_index(&name).await? {
            session.execute(&drop_sql(&name)).await?;
        }
        let sql = index
            .concurrently()
            .if_not_exists()
            .to_string(PostgresQueryBuilder);
        session.execute(&sql).await?;
    }
    session.reset().await
}

/// Drops the indexes `names` of `table` if they exist, each concurrently on PostgreSQL.
///
/// # Errors
/// As [`create_indexes`].
pub(crate) async fn drop_indexes<T>(
    manager: &SchemaManager<'_>,
    table: T,
    names: &[&str],
) -> Result<(), DbErr>
where
    T: IntoIden + Clone,
{
    if manager.get_database_backend() != DbBackend::Postgres {
        for name in names {
            manager
                .drop_index(
                    Index::drop()
                        .name(*name)
                        .table(table.clone())
                        .if_exists()
                        .to_owned(),
                )
                .await?;
        }
        return Ok(());
    }
    let mut session = Session::open(manager).await?;
    for name in names {
        session.execute(&drop_sql(name)).await?;
    }
    session.reset().await
}

/// Builds the index on `(tenant_id, built...)` of `table`, then drops the one on
/// `(tenant_id, dropped...)`: in that order, so that the queries always have one of the two.
///
/// # Errors
/// As [`create_indexes`].
pub(crate) async fn replace_tenant_index<T, C>(
    manager: &SchemaManager<'_>,
    table: T,
    built: &[C],
    dropped: &[C],
) -> Result<(), DbErr>
where
    T: Iden + Copy + 'static,
    C: Iden,
{
    create_indexes(manager, vec![tenant_index(table, built)]).await?;
    let dropped = tenant_index_name(table, dropped);
    drop_indexes(manager, table, &[dropped.as_str()]).await
}

/// `DROP INDEX CONCURRENTLY IF EXISTS` of one index.
fn drop_sql(name: &str) -> String {
    Index::drop()
        .name(name)
        .if_exists()
        .concurrently()
        .to_string(PostgresQueryBuilder)
}

/// A connection of the migrator's pool, outside any transaction, with the migration timeouts set;
/// closed when dropped.
struct Session {
    conn: PoolConnection<Postgres>,
}

impl Session {
    /// Takes a connection and sets the timeouts on its session.
    async fn open(manager: &SchemaManager<'_>) -> Result<Session, DbErr> {
        let DatabaseExecutor::Connection(db) = manager.get_connection() else {
            return Err(DbErr::Migration(
                "this migration builds or drops indexes concurrently, which PostgreSQL refuses \
                 inside a transaction: run it with the migrator (sea-orm-cli migrate up, or \
                 Migrator::up on a connection, not on a transaction)"
                    .into(),
            ));
        };
        let conn = db
            .get_postgres_connection_pool()
            .acquire()
            .await
            .map_err(|error| DbErr::Conn(RuntimeErr::SqlxError(error.into())))?;
        let mut session = Session { conn };
        // sqlx cannot take back `close_on_drop`; a new connection costs a migration little.
        session.conn.close_on_drop();
        for sql in Timeouts::from_env()?.for_concurrent_session() {
            session.execute(&sql).await?;
        }
        Ok(session)
    }

    /// Resets the session's settings (the timeouts) before the connection is closed.
    async fn reset(mut self) -> Result<(), DbErr> {
        self.execute("RESET ALL").await
    }

    /// Runs one statement.
    async fn execute(&mut self, sql: &str) -> Result<(), DbErr> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *self.conn)
            .await
            .map(drop)
            .map_err(|error| DbErr::Exec(RuntimeErr::SqlxError(error.into())))
    }

    /// Whether the schema holds an index `name` that a failed concurrent build left invalid.
    async fn invalid_index(&mut self, name: &str) -> Result<bool, DbErr> {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname = $1 AND c.relnamespace = current_schema()::regnamespace \
             AND NOT i.indisvalid)",
        )
        .bind(name)
        .fetch_one(&mut *self.conn)
        .await
        .map_err(|error| DbErr::Query(RuntimeErr::SqlxError(error.into())))
    }
}
