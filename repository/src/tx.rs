//! Transactions that compose: a closure runs in a transaction on a pool, or in a savepoint inside a
//! caller's transaction.

use std::future::Future;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseConnectionType, DatabaseTransaction, DbBackend,
    DbErr, ExecResult, QueryResult, Statement, TransactionTrait,
};
use uuid::Uuid;

use crate::context::RequestContext;
use crate::error::{Error, Result};
use crate::pg_txn::PgTxn;
use crate::trace;
use tracing::Instrument;

/// What the repositories and the transaction helpers run on: a pool
/// ([`DatabaseConnection`]), a caller's SeaORM transaction ([`DatabaseTransaction`]), or a
/// transaction of this crate ([`Txn`], what the helpers hand their closures).
///
/// On a PostgreSQL pool the transaction begins on sqlx directly, with its tenant binding in the
/// same message (one round trip; see `pg_txn.rs` for why SeaORM's own begin cannot do that). On
/// SQLite, on a mock and inside a caller's transaction it is SeaORM's transaction (a savepoint
/// inside one), bound by a statement of its own.
pub trait Connection: ConnectionTrait + Send + Sync {
    /// Begins a transaction (a savepoint inside a transaction), bound to `tenant` when given (on
    /// PostgreSQL; SQLite has no setting to bind). Repository code goes through
    /// [`transaction`], [`tenant_transaction`] or [`system_transaction`] instead.
    ///
    /// # Errors
    /// [`Error::PoolTimeout`] when no connection frees up in time; [`Error::Db`] when the
    /// transaction cannot begin or the tenant cannot be bound.
    fn begin_txn(&self, tenant: Option<Uuid>) -> impl Future<Output = Result<Txn>> + Send;
}

/// A transaction begun by this crate: what [`transaction`], [`tenant_transaction`] and
/// [`system_transaction`] hand their closures. It runs SeaORM's statements like a
/// [`DatabaseTransaction`] ([`ConnectionTrait`]), and repositories work on it ([`Connection`]),
/// each call a savepoint inside it.
///
/// Dropped before it is committed, it rolls back: on PostgreSQL the rollback is queued on the
/// connection and sent before the connection is used again.
pub struct Txn {
    inner: Inner,
}

enum Inner {
    /// SeaORM's transaction: SQLite, mocks, and savepoints inside a caller's SeaORM transaction.
    Sea(DatabaseTransaction),
    /// A PostgreSQL transaction begun on sqlx (a savepoint inside one).
    Pg(PgTxn),
}

impl std::fmt::Debug for Txn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            Inner::Sea(_) => "Txn(sea-orm)",
            Inner::Pg(_) => "Txn(postgres)",
        })
    }
}

impl From<DatabaseTransaction> for Txn {
    /// Wraps a SeaORM transaction the caller began (and bound, if it must be).
    fn from(txn: DatabaseTransaction) -> Txn {
        Txn {
            inner: Inner::Sea(txn),
        }
    }
}

impl Txn {
    /// Commits the transaction (releases the savepoint).
    ///
    /// # Errors
    /// [`Error::Db`] when the database refuses the commit or the connection fails.
    pub async fn commit(self) -> Result<()> {
        match self.inner {
            Inner::Sea(txn) => Ok(txn.commit().await?),
            Inner::Pg(txn) => Ok(txn.commit().await?),
        }
    }

    /// Rolls the transaction back (to the savepoint).
    ///
    /// # Errors
    /// [`Error::Db`] when the connection fails (on SQLite and mocks; on PostgreSQL the rollback
    /// is queued on the connection and cannot fail here).
    pub async fn rollback(self) -> Result<()> {
        match self.inner {
            Inner::Sea(txn) => Ok(txn.rollback().await?),
            Inner::Pg(txn) => {
                txn.end_without_waiting();
                Ok(())
            }
        }
    }

    /// Ends a transaction that only read. On a PostgreSQL pool nothing is waited for: its
    /// `ROLLBACK` (which ends a read like a `COMMIT`) travels with the connection's release, and
    /// the rows reach the caller one round trip sooner. A savepoint, and anything on SQLite, commits
    /// (releases).
    async fn end_read(self) -> Result<()> {
        match self.inner {
            Inner::Sea(txn) => Ok(txn.commit().await?),
            Inner::Pg(txn) => Ok(txn.end_read().await?),
        }
    }
}

/// SeaORM's begin, then the binding as a statement of its own.
async fn begin_sea<C>(db: &C, tenant: Option<Uuid>) -> Result<Txn>
where
    C: TransactionTrait<Transaction = DatabaseTransaction> + Sync,
{
    let txn = db.begin().await?;
    if let Some(tenant) = tenant {
        bind_tenant(&txn, tenant).await?;
    }
    Ok(Txn::from(txn))
}

impl Connection for DatabaseConnection {
    async fn begin_txn(&self, tenant: Option<Uuid>) -> Result<Txn> {
        match &self.inner {
            DatabaseConnectionType::SqlxPostgresPoolConnection(_) => Ok(Txn {
                inner: Inner::Pg(PgTxn::begin(self.get_postgres_connection_pool(), tenant).await?),
            }),
            _ => begin_sea(self, tenant).await,
        }
    }
}

impl Connection for DatabaseTransaction {
    async fn begin_txn(&self, tenant: Option<Uuid>) -> Result<Txn> {
        begin_sea(self, tenant).await
    }
}

impl Connection for Txn {
    async fn begin_txn(&self, tenant: Option<Uuid>) -> Result<Txn> {
        match &self.inner {
            Inner::Sea(txn) => begin_sea(txn, tenant).await,
            Inner::Pg(txn) => Ok(Txn {
                inner: Inner::Pg(txn.savepoint(tenant).await?),
            }),
        }
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Txn {
    fn get_database_backend(&self) -> DbBackend {
        match &self.inner {
            Inner::Sea(txn) => txn.get_database_backend(),
            Inner::Pg(_) => DbBackend::Postgres,
        }
    }

    #[allow(clippy::disallowed_methods)] // Passes on the caller's statement.
    async fn execute_raw(&self, stmt: Statement) -> std::result::Result<ExecResult, DbErr> {
        let span = trace::statement(self.get_database_backend(), &stmt.sql);
        match &self.inner {
            Inner::Sea(txn) => txn.execute_raw(stmt).instrument(span).await,
            Inner::Pg(txn) => txn.execute(stmt).instrument(span).await,
        }
    }

    #[allow(clippy::disallowed_methods)] // Passes on the caller's statement.
    async fn execute_unprepared(&self, sql: &str) -> std::result::Result<ExecResult, DbErr> {
        let span = trace::statement(self.get_database_backend(), sql);
        match &self.inner {
            Inner::Sea(txn) => txn.execute_unprepared(sql).instrument(span).await,
            Inner::Pg(txn) => txn.execute_unprepared(sql).instrument(span).await,
        }
    }

    #[allow(clippy::disallowed_methods)] // Passes on the caller's statement.
    async fn query_one_raw(
        &self,
        stmt: Statement,
    ) -> std::result::Result<Option<QueryResult>, DbErr> {
        let span = trace::statement(self.get_database_backend(), &stmt.sql);
        match &self.inner {
            Inner::Sea(txn) => txn.query_one_raw(stmt).instrument(span).await,
            Inner::Pg(txn) => txn.query_one(stmt).instrument(span).await,
        }
    }

    #[allow(clippy::disallowed_methods)] // Passes on the caller's statement.
    async fn query_all_raw(&self, stmt: Statement) -> std::result::Result<Vec<QueryResult>, DbErr> {
        let span = trace::statement(self.get_database_backend(), &stmt.sql);
        match &self.inner {
            Inner::Sea(txn) => txn.query_all_raw(stmt).instrument(span).await,
            Inner::Pg(txn) => txn.query_all(stmt).instrument(span).await,
        }
    }

    fn is_mock_connection(&self) -> bool {
        match &self.inner {
            Inner::Sea(txn) => txn.is_mock_connection(),
            Inner::Pg(_) => false,
        }
    }
}

/// How a transaction of the helpers ends when its closure succeeds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Commit,
    /// The closure only read: see [`Txn::end_read`].
    Read,
}

/// Begins, runs `f`, and ends: as `end` says on `Ok`, rolled back on `Err` (on PostgreSQL without
/// waiting: nothing of a failed call is left for the caller to wait for).
async fn run<C, F, T>(db: &C, tenant: Option<Uuid>, end: End, f: F) -> Result<T>
where
    C: Connection,
    F: AsyncFnOnce(&Txn) -> Result<T>,
{
    let begin = trace::statement(db.get_database_backend(), "BEGIN");
    let txn = db.begin_txn(tenant).instrument(begin).await?;
    match f(&txn).await {
        Ok(value) => {
            match end {
                End::Commit => {
                    let commit = trace::statement(txn.get_database_backend(), "COMMIT");
                    txn.commit().instrument(commit).await?;
                }
                End::Read => txn.end_read().await?,
            }
            Ok(value)
        }
        Err(error) => {
            // The caller's error is the one that matters: a rollback that fails (the connection
            // is gone) has undone the work just the same.
            let _ = txn.rollback().await;
            Err(error)
        }
    }
}

/// Runs `f` in a transaction on `db`: commits when it returns `Ok`, rolls back when it returns
/// `Err` (or panics). When `db` is itself a transaction, `f` runs in a savepoint, so repository
/// calls and helpers nest freely. `f` is an async closure, so it may borrow from its surroundings
/// (the request context, inputs).
///
/// ```no_run
/// use orkestra_repository::{RequestContext, TaskRepository, transaction};
/// # async fn f(db: &sea_orm::DatabaseConnection, ctx: &RequestContext, a: uuid::Uuid, b: uuid::Uuid)
/// # -> orkestra_repository::Result<()> {
/// // Cancel two tasks, or neither.
/// transaction(db, async |txn| {
///     let tasks = TaskRepository::new(txn);
///     tasks.cancel(ctx, a, None).await?;
///     tasks.cancel(ctx, b, None).await?;
///     Ok(())
/// })
/// .await
/// # }
/// ```
///
/// # Errors
/// What `f` returns; [`Error::PoolTimeout`] when no connection frees up in time;
/// [`Error::Db`] when the transaction cannot begin or commit.
pub async fn transaction<C, F, T>(db: &C, f: F) -> Result<T>
where
    C: Connection,
    F: AsyncFnOnce(&Txn) -> Result<T>,
{
    run(db, None, End::Commit, f).await
}

/// Runs `f` in a transaction (a savepoint inside a caller's) confined to the context's tenant.
///
/// On PostgreSQL the transaction first sets `app.tenant_id`, which the row-level security policies
/// compare every row to: connected as the application role, every statement in `f`, hand-written
/// ones included, sees and writes only this tenant's rows. Every repository method runs in one;
/// a service running its own queries on the application role does the same. On SQLite, which has
/// no row-level security, it is a plain transaction.
///
/// The setting is local to the transaction: it ends with it, so a pooled connection never carries
/// one request's tenant into the next. Nested in a savepoint, it is undone when the savepoint rolls
/// back. When a nested call binds another tenant and succeeds, PostgreSQL keeps that tenant bound
/// for the rest of the outer transaction, while Citus forwards the outer tenant again to the
/// workers it opens after: a repository call binds its own tenant first and is unaffected, but a
/// caller's raw SQL should run in a `tenant_transaction` of its own.
///
/// ```no_run
/// use orkestra_repository::{RequestContext, tenant_transaction};
/// use sea_orm::{ConnectionTrait, Statement};
/// # async fn f(db: &sea_orm::DatabaseConnection, ctx: &RequestContext)
/// # -> orkestra_repository::Result<()> {
/// // Under row-level security this counts the context's tenant's tasks only.
/// let count = tenant_transaction(db, ctx, async |txn| {
///     let sql = Statement::from_string(txn.get_database_backend(), "SELECT count(*) AS n FROM tasks");
///     let row = txn.query_one_raw(sql).await?.expect("one row");
///     Ok(row.try_get::<i64>("", "n")?)
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// What `f` returns; [`Error::PoolTimeout`] when no connection frees up in time; [`Error::Db`]
/// when the transaction cannot begin, the tenant cannot be set, or the transaction cannot commit.
pub async fn tenant_transaction<C, F, T>(db: &C, ctx: &RequestContext, f: F) -> Result<T>
where
    C: Connection,
    F: AsyncFnOnce(&Txn) -> Result<T>,
{
    run(db, Some(ctx.tenant_id()), End::Commit, f).await
}

/// [`tenant_transaction`] for work that only reads: the same transaction, bound the same way, but
/// on a PostgreSQL pool its end is not waited for (see [`Txn`]): the caller has its rows after two
/// round trips (the begin with the binding, the query). Use it only when `f` writes nothing; a
/// write in it would be rolled back.
///
/// # Errors
/// What `f` returns; [`Error::PoolTimeout`] when no connection frees up in time;
/// [`Error::Db`] when the transaction cannot begin or the tenant cannot be set.
pub async fn tenant_read<C, F, T>(db: &C, ctx: &RequestContext, f: F) -> Result<T>
where
    C: Connection,
    F: AsyncFnOnce(&Txn) -> Result<T>,
{
    run(db, Some(ctx.tenant_id()), End::Read, f).await
}

/// The statement that binds a transaction to `tenant`: `SET LOCAL app.tenant_id = '<uuid>'`.
///
/// `SET LOCAL` rather than `set_config(..., true)`, which does the same on one server: Citus
/// forwards `SET LOCAL` to the workers whose shards the transaction touches (with
/// `citus.propagate_set_commands = 'local'` on the coordinator), where the row-level security
/// policies run, and forwards no function call. `SET` takes no parameters, so the tenant is a
/// literal; it is formatted from a [`Uuid`] (hex digits and hyphens only), never from caller text,
/// so nothing can break out of the quotes.
pub fn bind_tenant_sql(tenant: Uuid) -> String {
    format!("SET LOCAL app.tenant_id = '{}'", tenant.hyphenated())
}

/// The message that begins a transaction bound to `tenant` in one round trip, as the repository
/// begins one on a PostgreSQL pool. `orkestra_bind_tenant` (migration 15)
/// runs `SET LOCAL app.tenant_id` from inside a function: Citus forwards a `SET LOCAL` to the
/// workers by replaying the text of the statement that ran it, which in a multi-statement message
/// would be the whole message, `BEGIN` included, and each worker would warn that a transaction is
/// already in progress. From inside the function that text is the `SET LOCAL` alone. The tenant is
/// formatted from a [`Uuid`], never from caller text.
pub fn begin_bound_sql(tenant: Uuid) -> String {
    format!(
        "BEGIN; SELECT orkestra_bind_tenant('{}')",
        tenant.hyphenated()
    )
}

/// Sets `app.tenant_id` for the rest of the transaction (PostgreSQL only), as a statement of its
/// own, sent unprepared: a prepared statement per tenant would only fill the statement cache.
/// Inside a savepoint the setting ends with it when it is rolled back (see [`tenant_transaction`]
/// for one that is released).
#[allow(clippy::disallowed_methods)] // A setting, not a query: it reaches no table.
async fn bind_tenant(txn: &impl ConnectionTrait, tenant: Uuid) -> Result<()> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared(&bind_tenant_sql(tenant)).await?;
    }
    Ok(())
}

/// Names the foreign key behind a refused write that the database left unnamed, and passes every
/// other result through. SQLite names no constraint, and Citus passes a worker's refusal on without
/// it; `lookup` finds the reference that is missing (`None`: none of the call's own, so
/// `fallback`). It runs in a tenant transaction of its own, once the refused one has rolled back
/// (PostgreSQL runs nothing more in a transaction after an error), or in a savepoint after the
/// refused one inside a caller's transaction. Best effort: a row a concurrent transaction adds or
/// removes in between can change the name; the refusal stands, and when the lookup itself fails
/// it is returned unnamed.
pub(crate) async fn name_refusal<C, T>(
    db: &C,
    ctx: &RequestContext,
    result: Result<T>,
    lookup: impl AsyncFnOnce(&Txn) -> Result<Option<&'static str>>,
    fallback: &'static str,
) -> Result<T>
where
    C: Connection,
{
    let error = match result {
        Err(error) if error.is_unnamed_reference() => error,
        other => return other,
    };
    match tenant_read(db, ctx, lookup).await {
        Ok(constraint) => Err(Error::Reference {
            constraint: constraint.unwrap_or(fallback).to_owned(),
        }),
        Err(_) => Err(error),
    }
}

/// Runs `f` in a transaction (a savepoint inside a caller's) of system-level work: tenant
/// administration and audit retention ([`TenantRepository`](crate::TenantRepository),
/// [`SystemRepository`](crate::SystemRepository)).
///
/// This is the one path across tenants. On PostgreSQL it needs a connection whose role is a member
/// of `orkestra_system` (or a superuser, or a role with `BYPASSRLS`): the row-level security
/// policies give that role every row, and no other role any row outside its transaction's tenant.
/// The transaction first checks the role, so system work on the application role's pool fails
/// loudly instead of seeing nothing. On SQLite, it is a plain transaction.
///
/// # Errors
/// What `f` returns; [`Error::Denied`] when the connection's role may not do system-level work;
/// [`Error::PoolTimeout`] when no connection frees up in time; [`Error::Db`] when the transaction
/// cannot begin or commit.
pub async fn system_transaction<C, F, T>(db: &C, f: F) -> Result<T>
where
    C: Connection,
    F: AsyncFnOnce(&Txn) -> Result<T>,
{
    transaction(db, async |txn| {
        check_system_role(txn).await?;
        f(txn).await
    })
    .await
}

/// Refuses a PostgreSQL role that row-level security confines to one tenant.
#[allow(clippy::disallowed_methods)] // Reads the role catalog, no table of ours.
async fn check_system_role(txn: &impl ConnectionTrait) -> Result<()> {
    if txn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let row = txn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT r.rolsuper OR r.rolbypassrls \
                 OR pg_has_role(current_user, 'orkestra_system', 'USAGE') AS system, \
                 current_user::text AS role \
             FROM pg_roles r WHERE r.rolname = current_user",
        ))
        .await?;
    let (system, role) = match row {
        Some(row) => (row.try_get::<bool>("", "system")?, row.try_get("", "role")?),
        None => (false, String::from("unknown")),
    };
    if system {
        Ok(())
    } else {
        Err(Error::Denied {
            reason: format!(
                "role {role} is not a member of orkestra_system: system-level work needs a \
                 connection of that role"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::MockDatabase;

    use super::*;
    use crate::testing::{
        assert_bound, assert_role_checked, bind_tenant, bound, ctx, none, postgres, system_role,
        transactions,
    };
    use crate::{GroupRepository, TenantRepository, UserRepository};

    #[tokio::test]
    async fn system_transaction_refuses_a_role_confined_to_one_tenant() {
        let db = postgres()
            .append_query_results([system_role(false)])
            .into_connection();
        let mut ran = false;
        let result = system_transaction(&db, async |_| {
            ran = true;
            Ok(())
        })
        .await;
        assert!(
            matches!(&result, Err(Error::Denied { reason }) if reason.contains("orkestra_app")),
            "{result:?}"
        );
        assert!(!ran, "the work ran on a denied role");

        // Nothing after the check: BEGIN, the check, ROLLBACK.
        let log = transactions(db);
        assert_eq!(log.len(), 1, "{log:?}");
        let call = assert_role_checked(&log[0]);
        assert!(call.statements.is_empty(), "{call:?}");
        assert!(!call.committed);
    }

    #[tokio::test]
    async fn system_transaction_refuses_a_role_the_catalog_does_not_list() {
        let db = postgres().append_query_results([none()]).into_connection();
        let result = system_transaction(&db, async |_| Ok(())).await;
        assert!(
            matches!(&result, Err(Error::Denied { reason }) if reason.contains("unknown")),
            "{result:?}"
        );
        let log = transactions(db);
        assert_eq!(log.len(), 1, "{log:?}");
        assert!(assert_role_checked(&log[0]).statements.is_empty());
    }

    #[tokio::test]
    async fn calls_in_a_callers_transaction_bind_the_tenant_in_their_savepoints() -> Result<()> {
        let tenant = Uuid::now_v7();
        let ctx = ctx(tenant);
        let db = postgres()
            .append_exec_results([bound(), bound()])
            .append_query_results([none(), none()])
            .into_connection();
        transaction(&db, async |txn| {
            UserRepository::new(txn)
                .find_by_id(&ctx, Uuid::now_v7())
                .await?;
            GroupRepository::new(txn)
                .find_by_id(&ctx, Uuid::now_v7())
                .await?;
            Ok(())
        })
        .await?;

        let log = transactions(db);
        assert_eq!(log.len(), 1, "one transaction: {log:?}");
        let sql: Vec<&str> = log[0].iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(sql.len(), 10, "{sql:?}");
        assert_eq!(sql[0], "BEGIN");
        // Each call binds the tenant itself, first thing in its savepoint: it cannot rely on the
        // caller having done so.
        for (at, table) in [(1, "users"), (5, "groups")] {
            assert_eq!(sql[at], "SAVEPOINT savepoint_1", "{sql:?}");
            assert_eq!(log[0][at + 1], bind_tenant(tenant), "{sql:?}");
            assert!(
                sql[at + 2].starts_with(&format!("SELECT \"{table}\"")),
                "{sql:?}"
            );
            assert_eq!(sql[at + 3], "RELEASE SAVEPOINT savepoint_1", "{sql:?}");
        }
        assert_eq!(sql[9], "COMMIT");
        Ok(())
    }

    #[tokio::test]
    async fn a_tenant_transaction_binds_before_the_callers_statements() -> Result<()> {
        let tenant = Uuid::now_v7();
        let db = postgres()
            .append_exec_results([bound()])
            .append_query_results([none()])
            .into_connection();
        let sql = r#"SELECT count(*) AS n FROM "tasks""#;
        let row = tenant_transaction(&db, &ctx(tenant), async |txn| {
            let statement = Statement::from_string(txn.get_database_backend(), sql);
            #[allow(clippy::disallowed_methods)] // A service's own query, as the docs show.
            let row = txn.query_one_raw(statement).await?;
            Ok(row)
        })
        .await?;
        assert!(row.is_none());

        let log = transactions(db);
        assert_eq!(log.len(), 1, "{log:?}");
        let call = assert_bound(&log[0], tenant);
        assert!(call.committed);
        assert_eq!(
            call.statements,
            [Statement::from_string(DbBackend::Postgres, sql)]
        );
        Ok(())
    }

    #[tokio::test]
    async fn sqlite_has_no_setting_to_bind_and_no_role_to_check() -> Result<()> {
        let tenant = Uuid::now_v7();
        let db = MockDatabase::new(DbBackend::Sqlite)
            .append_query_results([none(), none()])
            .into_connection();
        UserRepository::new(&db)
            .find_by_id(&ctx(tenant), Uuid::now_v7())
            .await?;
        TenantRepository::new(&db).find_by_id(tenant).await?;

        let log = transactions(db);
        assert_eq!(log.len(), 2, "{log:?}");
        for (transaction, table) in log.iter().zip(["users", "tenants"]) {
            let sql: Vec<&str> = transaction.iter().map(|s| s.sql.as_str()).collect();
            assert_eq!(sql.len(), 3, "{sql:?}");
            assert_eq!(sql[0], "BEGIN");
            assert!(
                sql[1].starts_with(&format!("SELECT \"{table}\"")),
                "{sql:?}"
            );
            assert_eq!(sql[2], "COMMIT");
        }
        Ok(())
    }
}
