//! One conversation per (tenant, channel, external id), so that concurrent "get or create" calls for
//! the same external conversation (a Slack thread, an email thread) end with one row.
//!
//! Rows whose channel or external id is `NULL` are not constrained (both backends treat `NULL`s
//! as distinct), which is what conversations without an external identity need.
//!
//! The table is in use when this runs, so its indexes are built and dropped concurrently, outside
//! a transaction, and a rerun finishes what a failed run left (`crate::concurrently`).

use sea_orm_migration::prelude::*;

use crate::common::tenant_unique;
use crate::concurrently;
use crate::m20261125_000003_create_conversations::Conversations;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let key = tenant_unique(
            Conversations::Table,
            &[Conversations::Channel, Conversations::ExternalId],
        );
        concurrently::create_indexes(manager, vec![key]).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        concurrently::drop_indexes(
            manager,
            Conversations::Table,
            &["conversations_tenant_id_channel_external_id_key"],
        )
        .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }
}
