//! Transactions that compose: a closure runs in a transaction on a pool, or in a savepoint inside a
//! caller's transaction.

use sea_orm::{TransactionSession, TransactionTrait};

use crate::error::Result;

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
