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
use sea_orm::{ColumnTrait, QueryFilter};
use uuid::Uuid;

use crate::clock::utc;
use crate::error::Result;
use crate::scope;
use crate::trace::{self, span, traced};
use crate::tx::Connection;
use crate::tx::system_transaction;
use tracing::field::Empty;

/// Audit retention, across tenants. Needs a system connection (see the [module](self)).
#[derive(Debug, Clone, Copy)]
pub struct SystemRepository<'a, C> {
    db: &'a C,
}

impl<'a, C: Connection> SystemRepository<'a, C> {
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
        let span = span!("orkestra.system.purge_audit_events"; tenant.id = Empty);
        trace::ids(&span, "tenant.id", tenant);
        traced(span, async move {
            let mut statement = scope::system::delete_audit_events()
                .filter(audit_events::Column::CreatedAt.lt(utc(before)));
            if let Some(tenant) = tenant {
                statement = statement.filter(audit_events::Column::TenantId.eq(tenant));
            }
            let deleted =
                system_transaction(self.db, async |txn| Ok(statement.exec(txn).await?)).await?;
            Ok(deleted.rows_affected)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use sea_orm::Value;

    use super::*;
    use crate::Error;
    use crate::testing::{
        affected, committed, one_each, param, postgres, system_calls, system_role,
    };

    #[tokio::test]
    async fn purge_checks_the_role_then_deletes_once_before_the_cutoff() -> anyhow::Result<()> {
        let tenant = Uuid::now_v7();
        let before = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456+02:00")?;
        let db = postgres()
            .append_query_results([system_role(true), system_role(true)])
            .append_exec_results([affected(5), affected(2)])
            .into_connection();
        let system = SystemRepository::new(&db);
        assert_eq!(system.purge_audit_events(None, before).await?, 5);
        assert_eq!(system.purge_audit_events(Some(tenant), before).await?, 2);

        let calls = system_calls(db);
        assert_eq!(committed(&calls), [true, true]);
        let log = one_each(&calls);
        assert_eq!(
            log[0].sql,
            r#"DELETE FROM "audit_events" WHERE "audit_events"."created_at" < $1"#
        );
        assert_eq!(
            log[1].sql,
            r#"DELETE FROM "audit_events" WHERE "audit_events"."created_at" < $1 AND "audit_events"."tenant_id" = $2"#
        );
        for statement in &log {
            // Compared in UTC, as stored: chrono's equality alone would ignore the offset.
            match param(statement, 1) {
                Value::ChronoDateTimeWithTimeZone(Some(cutoff)) => {
                    assert_eq!(cutoff, &before);
                    assert_eq!(cutoff.offset().local_minus_utc(), 0, "{cutoff}");
                }
                other => panic!("not the cutoff: {other:?}"),
            }
        }
        assert_eq!(param(&log[1], 2), &Value::from(tenant));
        Ok(())
    }

    #[tokio::test]
    async fn purge_on_a_role_confined_to_one_tenant_is_denied_and_deletes_nothing() {
        let db = postgres()
            .append_query_results([system_role(false)])
            .into_connection();
        let result = SystemRepository::new(&db)
            .purge_audit_events(None, crate::now())
            .await;
        assert!(matches!(result, Err(Error::Denied { .. })), "{result:?}");

        let calls = system_calls(db);
        assert_eq!(committed(&calls), [false]);
        assert!(calls[0].statements.is_empty(), "{calls:?}");
    }
}
