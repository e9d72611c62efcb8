//! The audit log.

use sea_orm_migration::prelude::*;

use crate::common::{
    drop_table, jsonb_null, tenant_fk, tenant_index, tenant_table, text, text_null, timestamptz_now,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum AuditEvents {
    Table,
    Id,
    EventType,
    Action,
    ActorType,
    ActorId,
    ActorName,
    ResourceType,
    ResourceId,
    Details,
    TraceId,
    SpanId,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_database_backend();
        manager
            .create_table(
                tenant_table(AuditEvents::Table)
                    .col(text(AuditEvents::EventType))
                    .col(text(AuditEvents::Action))
                    .col(text(AuditEvents::ActorType))
                    .col(text(AuditEvents::ActorId))
                    .col(text_null(AuditEvents::ActorName))
                    .col(text(AuditEvents::ResourceType))
                    // Resources live in many systems and not all of them use UUIDs: text.
                    .col(text(AuditEvents::ResourceId))
                    .col(jsonb_null(AuditEvents::Details))
                    .col(text_null(AuditEvents::TraceId))
                    .col(text_null(AuditEvents::SpanId))
                    .col(timestamptz_now(db, AuditEvents::CreatedAt))
                    .foreign_key(&mut tenant_fk(AuditEvents::Table))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_index(
                AuditEvents::Table,
                &[AuditEvents::EventType, AuditEvents::CreatedAt],
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_table(manager, AuditEvents::Table).await
    }
}
