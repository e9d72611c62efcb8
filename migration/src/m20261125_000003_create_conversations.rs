//! Conversations and their messages.

use sea_orm_migration::prelude::*;

use crate::common::{
    CONVERSATION_STATUS, child_fk, create_touch_trigger, drop_table, jsonb, jsonb_null, tenant_fk,
    tenant_index, tenant_table, text, text_null, timestamptz_now, timestamptz_null, uuid,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum Conversations {
    Table,
    ExternalId,
    Channel,
    Participant,
    Status,
    CreatedAt,
    UpdatedAt,
    ClosedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Messages {
    Table,
    ConversationId,
    Role,
    Content,
    Metadata,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_database_backend();
        CONVERSATION_STATUS.create(manager).await?;

        manager
            .create_table(
                tenant_table(Conversations::Table)
                    .col(text_null(Conversations::ExternalId))
                    .col(text_null(Conversations::Channel))
                    .col(jsonb(Conversations::Participant))
                    .col(CONVERSATION_STATUS.column(db, Conversations::Status, "ACTIVE"))
                    .col(timestamptz_now(db, Conversations::CreatedAt))
                    .col(timestamptz_now(db, Conversations::UpdatedAt))
                    .col(timestamptz_null(Conversations::ClosedAt))
                    .foreign_key(&mut tenant_fk(Conversations::Table))
                    .to_owned(),
            )
            .await?;
        // The seed's @@index([tenantId]) is not created: the primary key (tenant_id, id) leads with
        // the tenant and serves it, and a second copy would only slow every insert.
        manager
            .create_index(tenant_index(
                Conversations::Table,
                &[Conversations::ExternalId],
            ))
            .await?;
        create_touch_trigger(manager, Conversations::Table).await?;

        manager
            .create_table(
                tenant_table(Messages::Table)
                    .col(uuid(Messages::ConversationId))
                    .col(text(Messages::Role))
                    .col(text(Messages::Content))
                    .col(jsonb_null(Messages::Metadata))
                    .col(timestamptz_now(db, Messages::CreatedAt))
                    .foreign_key(&mut child_fk(
                        Messages::Table,
                        Messages::ConversationId,
                        Conversations::Table,
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_index(
                Messages::Table,
                &[Messages::ConversationId, Messages::CreatedAt],
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_table(manager, Messages::Table).await?;
        drop_table(manager, Conversations::Table).await?;
        CONVERSATION_STATUS.drop(manager).await
    }
}
