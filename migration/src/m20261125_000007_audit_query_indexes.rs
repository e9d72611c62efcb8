//! Indexes for the audit queries other than by event type: the whole trail newest first (and time
//! ranges), a resource's trail and an actor's trail. The first ends with `created_at, id`, the
//! keyset the audit repository pages by, so a page is one index range read in order; the others end
//! with `created_at` (with `id` their names would pass PostgreSQL's 63-byte limit), leaving only
//! rows of one instant to sort by id.

use sea_orm_migration::prelude::*;

use crate::common::{drop_tenant_index, tenant_index};
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
        for columns in INDEXES {
            manager
                .create_index(tenant_index(AuditEvents::Table, columns))
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for columns in INDEXES {
            drop_tenant_index(manager, AuditEvents::Table, columns).await?;
        }
        Ok(())
    }
}
