//! A workflow run's tasks and a conversation's tasks are listed a page at a time, in id order. Their
//! indexes ended with the filtered columns (`tasks_tenant_id_workflow_id_workflow_run_id_idx`,
//! `tasks_tenant_id_conversation_id_idx`), so PostgreSQL read every task of the run or the
//! conversation and sorted them to return one page. Each is replaced by the same index with `id`
//! after it, from which a page is one range read in order, as migration 10 did for the status
//! pages. The conversation's index also serves its foreign key, as the old one did.
//!
//! This is the first migration written for a database in use: `tasks` is the busiest table, so the
//! new indexes are built concurrently, outside a transaction, and each old one is dropped
//! concurrently only once its replacement exists; a rerun finishes what a failed run left
//! (`crate::concurrently`).

use sea_orm_migration::prelude::*;

use crate::concurrently;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Tasks {
    Table,
    Id,
    WorkflowId,
    WorkflowRunId,
    ConversationId,
}

/// The columns after `tenant_id` of each index replaced, before and after.
const REPLACED: [(&[Tasks], &[Tasks]); 2] = [
    (
        &[Tasks::WorkflowId, Tasks::WorkflowRunId],
        &[Tasks::WorkflowId, Tasks::WorkflowRunId, Tasks::Id],
    ),
    (
        &[Tasks::ConversationId],
        &[Tasks::ConversationId, Tasks::Id],
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (old, new) in REPLACED {
            concurrently::replace_tenant_index(manager, Tasks::Table, new, old).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (old, new) in REPLACED.iter().rev() {
            concurrently::replace_tenant_index(manager, Tasks::Table, old, new).await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }
}
