//! Tenant-scoped repositories over the Orkestra schema: the crate Orkestra services import.
//!
//! - Every read and write of tenant-owned data takes a [`RequestContext`] and is confined to its
//!   tenant ([`scope`] is the only way repository code reaches those tables, and clippy enforces
//!   it); the database refuses cross-tenant references besides.
//! - Every method works on a pool ([`sea_orm::DatabaseConnection`]) or inside a caller's
//!   transaction ([`Txn`], or SeaORM's [`sea_orm::DatabaseTransaction`]): anything that is a
//!   [`Connection`]; [`transaction`] runs several calls atomically, and nests as savepoints.
//! - Every task state change is one guarded `UPDATE ... WHERE status IN (...) RETURNING` plus its
//!   `task_history` row, in one transaction: an illegal transition or a lost race writes nothing
//!   and returns [`Error::InvalidTransition`] with the task's current status.
//! - Every failure is one [`Error`]; each method's documentation lists the variants it returns.
//!
//! ```no_run
//! use orkestra_repository::{Actor, DbConfig, NewTask, RequestContext, TaskRepository, connect};
//! # async fn f(tenant_id: uuid::Uuid, user_id: uuid::Uuid) -> Result<(), Box<dyn std::error::Error>> {
//! let db = connect(&DbConfig::new("sqlite://orkestra.db?mode=rwc").migrating()).await?;
//! let ctx = RequestContext::new(tenant_id, Actor::user(user_id)?)?;
//! let task = TaskRepository::new(&db)
//!     .create(&ctx, NewTask::new("wf-1", "run-1", "Approve invoice", serde_json::json!({})))
//!     .await?;
//! # Ok(()) }
//! ```

// Every public method's documentation says which errors it returns (clippy checks the section is
// there; what it lists is for the reviewer).
#![warn(clippy::missing_errors_doc)]

pub mod audit;
mod clock;
pub mod connect;
pub mod context;
pub mod conversations;
pub mod error;
pub mod groups;
#[cfg(orkestra_lint_probe)]
mod lint_probe;
pub mod page;
mod pg_txn;
pub mod scope;
pub mod system;
pub mod tasks;
mod template;
pub mod tenants;
#[cfg(test)]
mod testing;
mod trace;
pub mod tx;
pub mod users;
pub mod validate;

pub use audit::{AuditQuery, AuditRepository, NewAuditEvent, RECORD_MANY_MAX};
pub use connect::{DbConfig, connect};
pub use context::{Actor, ActorKind, RequestContext};
pub use conversations::{ConversationRepository, NewConversation, NewMessage};
pub use error::{Error, Result, TaskAction};
pub use groups::{GroupRepository, GroupUpdate, MemberWorkload, NewGroup};
pub use page::{Page, PageRequest, TimeCursor};
pub use system::SystemRepository;
pub use tasks::{AssignTo, InboxCursor, NewTask, OverdueCursor, Sla, TaskRepository};
pub use tenants::{NewTenant, TenantRepository, TenantUpdate};
pub use tx::{Connection, Txn, system_transaction, tenant_read, tenant_transaction, transaction};
pub use users::{NewUser, UserFilter, UserRepository, UserUpdate};

pub(crate) use clock::now;
