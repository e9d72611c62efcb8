//! Partial indexes over the tasks that are still open, so that the inbox and the overdue page cost
//! what the open backlog costs, however long a tenant's history of finished tasks grows.
//!
//! - `(tenant_id, assigned_group_id)` and `(tenant_id, assigned_user_id)` over the tasks waiting to
//!   be claimed (created, assigned, escalated): the inbox reads the user's direct tasks and its
//!   groups' tasks from these two. The full indexes on the same columns stay: the foreign keys'
//!   `RESTRICT` checks need every row.
//! - `(tenant_id, sla_deadline, id)` over open tasks (those and claimed ones): the overdue page
//!   reads its rows from it in page order and stops at the page's end.
//!
//! Why partial, rather than the status as a key column: under row-level security PostgreSQL uses a
//! condition as an index bound only when its operator is leakproof, and enum equality is not, so
//! for the application role `status IN (...)` can never bound an index scan. It can still prove an
//! index's predicate, when the query states the same labels as literals (the repository's
//! `status_in` does), and then the index holds only the rows the query wants.
//!
//! The labels must be the repository's `PENDING` and `TaskStatus::OPEN` (the schema test checks).
//! Both backends: SQLite has partial indexes too.
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
    TenantId,
    Id,
    Status,
    AssignedGroupId,
    AssignedUserId,
    SlaDeadline,
}

/// Waiting to be claimed: what an inbox shows.
const PENDING: [&str; 3] = ["CREATED", "ASSIGNED", "ESCALATED"];
/// Not final: what can become overdue.
const OPEN: [&str; 4] = ["CREATED", "ASSIGNED", "CLAIMED", "ESCALATED"];

/// Each index: its name, its columns after `tenant_id`, and the statuses of the rows it holds.
const INDEXES: [(&str, &[Tasks], &[&str]); 3] = [
    (
        "tasks_tenant_id_assigned_group_id_pending_idx",
        &[Tasks::AssignedGroupId],
        &PENDING,
    ),
    (
        "tasks_tenant_id_assigned_user_id_pending_idx",
        &[Tasks::AssignedUserId],
        &PENDING,
    ),
    (
        "tasks_tenant_id_sla_deadline_id_open_idx",
        &[Tasks::SlaDeadline, Tasks::Id],
        &OPEN,
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut indexes = Vec::new();
        for (name, columns, statuses) in INDEXES {
            let mut index = Index::create();
            index.name(name).table(Tasks::Table).col(Tasks::TenantId);
            for column in columns {
                index.col(*column);
            }
            // Literals, not parameters: DDL has none, and the predicate must read like the
            // queries' own `IN` lists for the planner to match them.
            index.and_where(Expr::col(Tasks::Status).is_in(statuses.iter().map(|s| Expr::val(*s))));
            indexes.push(index);
        }
        concurrently::create_indexes(manager, indexes).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let names: Vec<&str> = INDEXES.iter().rev().map(|(name, _, _)| *name).collect();
        concurrently::drop_indexes(manager, Tasks::Table, &names).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }
}
