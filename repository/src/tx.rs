//! Transactions that compose: a closure runs in a transaction on a pool, or in a savepoint inside a
//! caller's transaction.

use std::future::Future;
use std::pin::Pin;

use sea_orm::{TransactionError, TransactionTrait};

use crate::error::{Error, Result};

/// The future a [`transaction`] closure returns.
pub type TxFuture<'c, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'c>>;

/// Runs `f` in a transaction on `db`: commits when it returns `Ok`, rolls back when it returns
/// `Err` (or panics). When `db` is itself a transaction, the closure runs in a savepoint, so
/// repository calls and helpers nest freely.
///
/// ```no_run
/// use orkestra_repository::{RequestContext, TaskRepository, transaction};
/// # async fn f(db: &sea_orm::DatabaseConnection, ctx: &RequestContext, a: uuid::Uuid, b: uuid::Uuid)
/// # -> orkestra_repository::Result<()> {
/// // Cancel two tasks, or neither.
/// transaction(db, |txn| {
///     Box::pin(async move {
///         let tasks = TaskRepository::new(txn);
///         tasks.cancel(ctx, a, None).await?;
///         tasks.cancel(ctx, b, None).await?;
///         Ok(())
///     })
/// })
/// .await
/// # }
/// ```
///
/// # Errors
/// What `f` returns, or [`Error::Db`] when the transaction cannot begin or commit.
pub async fn transaction<C, F, T>(db: &C, f: F) -> Result<T>
where
    C: TransactionTrait,
    F: for<'c> FnOnce(&'c C::Transaction) -> TxFuture<'c, T> + Send,
    T: Send,
{
    db.transaction(f).await.map_err(|error| match error {
        TransactionError::Connection(error) => Error::from(error),
        TransactionError::Transaction(error) => error,
    })
}
