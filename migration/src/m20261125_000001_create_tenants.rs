//! Tenants: the one system-level table, and the `updated_at` trigger function every table shares.

use sea_orm_migration::prelude::*;

use crate::common::{
    TENANT_STATUS, create_touch_function, create_touch_trigger, drop_table, drop_touch_function,
    jsonb_null, jsonb_object, text, timestamptz_now, unique, uuid,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum Tenants {
    Table,
    Id,
    Name,
    Slug,
    Config,
    Limits,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_database_backend();
        TENANT_STATUS.create(manager).await?;
        create_touch_function(manager).await?;
        manager
            .create_table(
                Table::create()
                    .table(Tenants::Table)
                    .col(uuid(Tenants::Id))
                    .col(text(Tenants::Name))
                    .col(text(Tenants::Slug))
                    .col(jsonb_object(Tenants::Config))
                    .col(jsonb_null(Tenants::Limits))
                    .col(TENANT_STATUS.column(db, Tenants::Status, "ACTIVE"))
                    .col(timestamptz_now(db, Tenants::CreatedAt))
                    .col(timestamptz_now(db, Tenants::UpdatedAt))
                    .primary_key(Index::create().name("tenants_pkey").col(Tenants::Id))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(unique(Tenants::Table, &[Tenants::Slug]))
            .await?;
        create_touch_trigger(manager, Tenants::Table).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_table(manager, Tenants::Table).await?;
        drop_touch_function(manager).await?;
        TENANT_STATUS.drop(manager).await
    }
}
