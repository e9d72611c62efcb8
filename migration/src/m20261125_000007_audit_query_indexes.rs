//! Indexes for the audit queries other than by event type: the whole trail newest first (and time
//! ranges), a resource's trail and an actor's trail. The first ends with `created_at, id`, the
//! keyset the audit repository pages by, so a page is one index range read in order; the others end
//! with `created_at` (with `id` their names would pass PostgreSQL's 63-byte limit), leaving only
//! rows of one instant to sort by id.
//!
//! The table is in use when this runs, so its indexes are built and dropped concurrently, outside
//! a transaction, and a rerun finishes what a failed run left (`crate::concurrently`).

use sea_orm_migration::prelude::*;

use crate::common::{tenant_index, tenant_index_name};
use crate::concurrently;
use crate::m20261125_000005_create_audit_events::AuditEvents;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The indexed columns after `tenant_id`.
const INDEXES: [&[AuditEvents]; 3] = [
    &[AuditEvents::CreatedAt, AuditEvents::Id],
    &[
        AuditEvents::ResourceType,
        AuditEvents::ResourceId,
        AuditEvents::CreatedAt,
    ],
    &[
        AuditEvents::ActorType,
        AuditEvents::ActorId,
        AuditEvents::CreatedAt,
    ],
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let indexes = INDEXES
            .iter()
            .map(|columns| tenant_index(AuditEvents::Table, columns))
            .collect();
        concurrently::create_indexes(manager, indexes).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let names: Vec<String> = INDEXES
            .iter()
            .map(|columns| tenant_index_name(AuditEvents::Table, columns))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        concurrently::drop_indexes(manager, AuditEvents::Table, &names).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }
}
