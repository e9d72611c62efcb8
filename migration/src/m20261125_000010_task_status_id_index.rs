//! The tasks of one status in id (creation) order: `(tenant_id, status, id)` replaces
//! `(tenant_id, status)`, which its columns lead, so it serves every query the old one did; keeping
//! both would only slow every write of a task.
//!
//! `list_by_status` orders by `(status, id)` (id order, as the status is fixed), so a page is read
//! from this index in order and stopped at the page's end. With the old index PostgreSQL walked the
//! primary key in id order, filtering on status, which reads the whole tenant for a status whose
//! tasks are few and the newest (assigned, escalated).
//!
//! Row-level security shapes this: under a policy, PostgreSQL uses a query's condition as an index
//! condition only when its operator is leakproof, and enum equality is not. For the application
//! role `status = ...` is therefore always a filter, never an index bound, and the planner does not
//! see the column's statistics either; an index can only help such a query by its order.
//!
//! The table is in use when this runs, so its indexes are built and dropped concurrently, outside
//! a transaction, and a rerun finishes what a failed run left (`crate::concurrently`).

use sea_orm_migration::prelude::*;

use crate::concurrently;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Tasks {
    Table,
    Id,
    Status,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        concurrently::replace_tenant_index(
            manager,
            Tasks::Table,
            &[Tasks::Status, Tasks::Id],
            &[Tasks::Status],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        concurrently::replace_tenant_index(
            manager,
            Tasks::Table,
            &[Tasks::Status],
            &[Tasks::Status, Tasks::Id],
        )
        .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }
}
