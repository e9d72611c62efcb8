//! The seam under SeaORM on PostgreSQL: transactions the repository begins on sqlx itself.
//!
//! SeaORM 2.0.4 begins every PostgreSQL transaction with a plain `BEGIN` and waits for its answer
//! (`DatabaseTransaction::begin` passes no statement to sqlx), and its transaction type cannot be
//! built from a connection begun otherwise. The tenant binding would then cost a round trip of
//! its own on every call. sqlx can begin with a statement of the caller's
//! (`TransactionManager::begin(conn, Some(statement))`, what `Pool::begin_with` uses), so a
//! transaction taken from a pool here begins with `BEGIN; SELECT orkestra_bind_tenant('<uuid>')`,
//! one message and one round trip. Its statements are SeaORM's own, bound with the binder SeaORM
//! uses (`sea_query_sqlx::SqlxValues`), and its rows are SeaORM's `QueryResult`, so every query
//! and model of the repository runs on it unchanged.
//!
//! Two more things live here because they need the connection itself:
//! - A transaction that only read ends without waiting: its `ROLLBACK` is queued on the connection
//!   and sent when the connection goes back to the pool (sqlx flushes it with its release check),
//!   off the caller's path. A failed transaction ends the same way.
//! - No liveness check before each call: the pool hands out connections untested, and a begin
//!   that fails because the connection is dead (the server restarted, the backend was terminated)
//!   is retried on another connection. Nothing of the call has run at that point: a `BEGIN` and a
//!   setting have no effects to repeat.

use std::sync::Arc;

use sea_orm::sea_query::Values;
use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::postgres::{PgPool, PgTransactionManager};
use sea_orm::sqlx::{self, Executor, Postgres, SqlSafeStr};
use sea_orm::{ConnAcquireErr, DbErr, ExecResult, QueryResult, RuntimeErr, Statement};
use sea_query_sqlx::SqlxValues;
use sqlx_core::transaction::TransactionManager;
use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

/// A PostgreSQL transaction (or a savepoint inside one) on a connection of the pool.
pub(crate) struct PgTxn {
    /// Shared with the savepoints begun inside it, as SeaORM shares one connection.
    conn: Arc<Mutex<PoolConnection<Postgres>>>,
    /// Until committed or rolled back; dropped while open, it queues its rollback.
    open: bool,
    /// A savepoint inside a transaction, rather than the transaction.
    nested: bool,
}

/// A connection from the pool until its transaction has begun. Dropped before that (a failed
/// begin, or the caller's future dropped mid-begin), the connection is closed rather than put back:
/// the server may be inside the transaction, bound to the tenant, or in a failed one (the binding
/// refused), and sqlx's check on release would not see it.
struct Beginning(Option<PoolConnection<Postgres>>);

impl Drop for Beginning {
    fn drop(&mut self) {
        if let Some(conn) = &mut self.0 {
            conn.close_on_drop();
        }
    }
}

/// A savepoint until its binding has run. Dropped before that (a failed binding, or the caller's
/// future dropped mid-binding), it queues the savepoint's rollback, with the lock it still holds.
struct Binding<'c> {
    conn: MutexGuard<'c, PoolConnection<Postgres>>,
    bound: bool,
}

impl Drop for Binding<'_> {
    fn drop(&mut self) {
        if !self.bound {
            PgTransactionManager::start_rollback(&mut self.conn);
        }
    }
}

impl PgTxn {
    /// Takes a connection from `pool` and begins a transaction on it, bound to `tenant` when
    /// given, in one round trip.
    ///
    /// # Errors
    /// `DbErr::ConnectionAcquire` when no connection frees up in time; `DbErr::Query` when the
    /// transaction cannot begin (after trying every connection the pool may hold, when each turned
    /// out dead).
    pub(crate) async fn begin(pool: &PgPool, tenant: Option<Uuid>) -> Result<PgTxn, DbErr> {
        let statement = tenant.map_or_else(|| String::from("BEGIN"), crate::tx::begin_bound_sql);
        // Every idle connection may be dead after a restart; one more attempt reaches a new one.
        let attempts = pool.options().get_max_connections() as usize + 1;
        let mut attempt = 1;
        loop {
            let mut beginning = Beginning(Some(pool.acquire().await.map_err(acquire_error)?));
            let conn = beginning
                .0
                .as_mut()
                .expect("the connection, until it is taken");
            let begun = PgTransactionManager::begin(
                conn,
                Some(sqlx::AssertSqlSafe(statement.clone()).into_sql_str()),
            )
            .await;
            match begun {
                Ok(()) => {
                    let conn = beginning.0.take().expect("the connection");
                    return Ok(PgTxn {
                        conn: Arc::new(Mutex::new(conn)),
                        open: true,
                        nested: false,
                    });
                }
                // The failed connection is closed as `beginning` drops; the pool opens a new one.
                Err(error) if attempt < attempts && is_dead_connection(&error) => attempt += 1,
                Err(error) => return Err(query_error(error)),
            }
        }
    }

    /// Begins a savepoint inside this transaction, then binds it to `tenant` when given (a second
    /// statement: sqlx takes no statement of the caller's for a savepoint).
    ///
    /// # Errors
    /// `DbErr::Query` when the savepoint or the binding fails.
    pub(crate) async fn savepoint(&self, tenant: Option<Uuid>) -> Result<PgTxn, DbErr> {
        let mut conn = self.conn.lock().await;
        PgTransactionManager::begin(&mut conn, None)
            .await
            .map_err(query_error)?;
        let mut binding = Binding { conn, bound: false };
        if let Some(tenant) = tenant {
            let bind = sqlx::AssertSqlSafe(crate::tx::bind_tenant_sql(tenant));
            binding.conn.execute(bind).await.map_err(exec_error)?;
        }
        binding.bound = true;
        drop(binding);
        Ok(PgTxn {
            conn: Arc::clone(&self.conn),
            open: true,
            nested: true,
        })
    }

    /// Commits (releases a savepoint), waiting for the server's answer.
    ///
    /// # Errors
    /// `DbErr::Query` when the server refuses or the connection fails.
    pub(crate) async fn commit(mut self) -> Result<(), DbErr> {
        let mut conn = self.conn.lock().await;
        let result = PgTransactionManager::commit(&mut conn).await;
        drop(conn);
        // Still open when the commit failed: sqlx has not counted it ended, and dropping queues
        // the rollback that does (harmless if the server has already ended the transaction).
        self.open = result.is_err();
        result.map_err(query_error)
    }

    /// Ends a transaction that only read. The transaction itself ends without waiting (see
    /// [`end_without_waiting`](Self::end_without_waiting)); a savepoint is released, waiting,
    /// since a savepoint rolled back to stays defined until its transaction ends, and a caller's
    /// transaction that read many times would pile them up.
    ///
    /// # Errors
    /// `DbErr::Query` when a savepoint's release fails.
    pub(crate) async fn end_read(self) -> Result<(), DbErr> {
        if self.nested {
            self.commit().await
        } else {
            self.end_without_waiting();
            Ok(())
        }
    }

    /// Rolls back (to a savepoint) without waiting: the `ROLLBACK` is queued on the connection
    /// and goes out before its next statement, or with the pool's check when the connection is
    /// released. For a transaction that failed, or one that only read, whose end changes nothing
    /// the caller waits for.
    pub(crate) fn end_without_waiting(self) {
        // Drop queues the rollback.
        drop(self);
    }

    /// Runs a statement that returns no rows.
    pub(crate) async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        let mut conn = self.conn.lock().await;
        let query = sqlx::query_with(sqlx::AssertSqlSafe(stmt.sql), values(stmt.values));
        match query.execute(&mut **conn).await {
            Ok(result) => Ok(result.into()),
            Err(error) => Err(exec_error(error)),
        }
    }

    /// Runs SQL text as it is, unprepared.
    pub(crate) async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        let mut conn = self.conn.lock().await;
        match conn.execute(sqlx::AssertSqlSafe(sql.to_owned())).await {
            Ok(result) => Ok(result.into()),
            Err(error) => Err(exec_error(error)),
        }
    }

    /// The first row of a statement, if any.
    pub(crate) async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        let mut conn = self.conn.lock().await;
        let query = sqlx::query_with(sqlx::AssertSqlSafe(stmt.sql), values(stmt.values));
        match query.fetch_optional(&mut **conn).await {
            Ok(row) => Ok(row.map(QueryResult::from)),
            Err(error) => Err(query_error(error)),
        }
    }

    /// Every row of a statement.
    pub(crate) async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let mut conn = self.conn.lock().await;
        let query = sqlx::query_with(sqlx::AssertSqlSafe(stmt.sql), values(stmt.values));
        match query.fetch_all(&mut **conn).await {
            Ok(rows) => Ok(rows.into_iter().map(QueryResult::from).collect()),
            Err(error) => Err(query_error(error)),
        }
    }
}

impl Drop for PgTxn {
    fn drop(&mut self) {
        if self.open {
            // Nothing else holds the lock once the transaction is dropped: its statements have
            // finished (or were dropped with their futures, which sqlx then treats as broken).
            match self.conn.try_lock() {
                Ok(mut conn) => PgTransactionManager::start_rollback(&mut conn),
                // Nothing of this crate holds the lock past a statement, and a statement borrows
                // the transaction: unreachable, but said loudly rather than panicking in a drop.
                Err(_) => tracing::error!(
                    "a PostgreSQL transaction was dropped while its connection was in use; its \
                     rollback could not be queued"
                ),
            }
        }
    }
}

fn values(values: Option<Values>) -> SqlxValues {
    SqlxValues(values.unwrap_or(Values(Vec::new())))
}

/// Whether a begin failed because the connection was dead before it, so that nothing ran: the
/// socket failed, or the server had ended the session (SQLSTATE class 08, or 57P01-57P03 as sent
/// by `pg_terminate_backend`, a shutdown or a restart).
fn is_dead_connection(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(error) => error.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// The shapes SeaORM gives the same failures, so that [`crate::Error`] maps them alike.
fn query_error(error: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(error.into()))
}

fn exec_error(error: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(error.into()))
}

fn acquire_error(error: sqlx::Error) -> DbErr {
    match error {
        sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
        sqlx::Error::PoolClosed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
        other => DbErr::Conn(RuntimeErr::SqlxError(other.into())),
    }
}
