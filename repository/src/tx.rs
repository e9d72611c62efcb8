//! Transactions that compose: a closure runs in a transaction on a pool, or in a savepoint inside a
//! caller's transaction.

use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionSession, TransactionTrait};
use uuid::Uuid;

use crate::context::RequestContext;
use crate::error::{Error, Result};

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
/// What `f` returns, or [`Error::Db`](crate::Error::Db) when the transaction cannot begin or
/// commit.
pub async fn transaction<C, F, T>(db: &C, f: F) -> Result<T>
where
    C: TransactionTrait,
    F: AsyncFnOnce(&C::Transaction) -> Result<T>,
{
    let txn = db.begin().await?;
    match f(&txn).await {
        Ok(value) => {
            txn.commit().await?;
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
/// What `f` returns, or [`Error::Db`](crate::Error::Db) when the transaction cannot begin, the
/// tenant cannot be set, or the transaction cannot commit.
pub async fn tenant_transaction<C, F, T>(db: &C, ctx: &RequestContext, f: F) -> Result<T>
where
    C: TransactionTrait,
    F: AsyncFnOnce(&C::Transaction) -> Result<T>,
{
    transaction(db, async |txn| {
        bind_tenant(txn, ctx.tenant_id()).await?;
        f(txn).await
    })
    .await
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
    lookup: impl AsyncFnOnce(&C::Transaction) -> Result<Option<&'static str>>,
    fallback: &'static str,
) -> Result<T>
where
    C: TransactionTrait,
{
    let error = match result {
        Err(error) if error.is_unnamed_reference() => error,
        other => return other,
    };
    match tenant_transaction(db, ctx, lookup).await {
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
/// What `f` returns; [`Error::Denied`](crate::Error::Denied) when the connection's role may not do
/// system-level work; [`Error::Db`](crate::Error::Db) when the transaction cannot begin or commit.
pub async fn system_transaction<C, F, T>(db: &C, f: F) -> Result<T>
where
    C: TransactionTrait,
    F: AsyncFnOnce(&C::Transaction) -> Result<T>,
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
