//! System-level work: what no tenant's request may do.
//!
//! On PostgreSQL, row-level security confines every connection to the tenant its transaction
//! names, except connections whose role is a member of `orkestra_system`. System-level work runs on
//! a pool of its own, logged in as such a role, and goes through [`system_transaction`]: tenant
//! administration ([`TenantRepository`](crate::TenantRepository)) and audit retention
//! ([`SystemRepository`]). Nothing else reaches across tenants.
//!
//! A cross-tenant job such as an SLA sweeper needs no cross-tenant query: it lists the active
//! tenants ([`TenantRepository::list`](crate::TenantRepository::list)) on the system pool, then
//! works through each tenant with tenant-scoped calls under a system actor
//! ([`TaskRepository::overdue`](crate::TaskRepository::overdue) and
//! [`expire`](crate::TaskRepository::expire)), each confined to its tenant like any request.

use chrono::{DateTime, FixedOffset};
use orkestra_entity::audit_events;
use sea_orm::{ColumnTrait, ConnectionTrait, QueryFilter, TransactionTrait};
use uuid::Uuid;

use crate::clock::utc;
use crate::error::Result;
use crate::scope;
use crate::tx::system_transaction;

/// Audit retention, across tenants. Needs a system connection (see the [module](self)).
#[derive(Debug, Clone, Copy)]
pub struct SystemRepository<'a, C> {
    db: &'a C,
}

impl<'a, C: ConnectionTrait + TransactionTrait> SystemRepository<'a, C> {
    /// A repository on `db`, a pool or a transaction of a system role.
    pub fn new(db: &'a C) -> Self {
        SystemRepository { db }
    }

    /// Deletes the audit events recorded before `before`, of one tenant or (`None`) of every
    /// tenant; returns how many. The only way an audit event leaves the database: the application
    /// role can neither change nor delete one, and nobody can change one.
    ///
    /// # Errors
    /// - [`Error::Denied`](crate::Error::Denied): the connection's role is not a system role;
    /// - [`Error::Db`](crate::Error::Db).
    pub async fn purge_audit_events(
        &self,
        tenant: Option<Uuid>,
        before: DateTime<FixedOffset>,
    ) -> Result<u64> {
        let mut statement = scope::system::delete_audit_events()
            .filter(audit_events::Column::CreatedAt.lt(utc(before)));
        if let Some(tenant) = tenant {
            statement = statement.filter(audit_events::Column::TenantId.eq(tenant));
        }
        let deleted =
            system_transaction(self.db, async |txn| Ok(statement.exec(txn).await?)).await?;
        Ok(deleted.rows_affected)
    }
}
