//! Rust-coded migrations for the Orkestra schema.
//!
//! [`Migrator`] builds the whole schema of the seed ("Task 05: Database Schema & Repository
//! Layer") on PostgreSQL, and the same schema on SQLite (enums as checked text). On a Citus
//! coordinator it also distributes the tenant-owned tables on `tenant_id` (migration 14). Run it from a
//! terminal with `sea-orm-cli migrate up` (or `cargo run -p orkestra-migration -- up`), or from code:
//!
//! ```no_run
//! use orkestra_migration::{Migrator, MigratorTrait};
//! # async fn run(db: &sea_orm_migration::sea_orm::DatabaseConnection) -> Result<(), sea_orm_migration::sea_orm::DbErr> {
//! Migrator::up(db, None).await?;
//! # Ok(()) }
//! ```
//!
//! Every migration's `down` undoes its `up` exactly, enum types and trigger functions included.

pub use sea_orm_migration::prelude::*;

mod common;
mod concurrently;
mod m20261125_000001_create_tenants;
mod m20261125_000002_create_users_and_groups;
mod m20261125_000003_create_conversations;
mod m20261125_000004_create_tasks;
mod m20261125_000005_create_audit_events;
mod m20261125_000006_conversation_external_key;
mod m20261125_000007_audit_query_indexes;
mod m20261125_000008_row_level_security;
mod m20261125_000009_audit_append_only;
mod m20261125_000010_task_status_id_index;
mod m20261126_000011_open_task_indexes;
mod m20261201_000012_enum_text_casts;
mod m20261201_000013_policies_for_citus;
mod m20261201_000014_distribute_on_citus;
mod m20261206_000015_bind_tenant_function;
mod m20261206_000016_group_lifecycle;
mod m20261206_000017_task_page_indexes;
pub mod timeouts;

pub use m20261125_000008_row_level_security::{APP_ROLE, SYSTEM_ROLE};
pub use timeouts::Timeouts;

/// The ordered list of Orkestra migrations.
///
/// On PostgreSQL every migration runs under the [`Timeouts`] (`lock_timeout`,
/// `statement_timeout`) the environment gives, or their defaults: see [`timeouts`].
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let migrations: Vec<Box<dyn MigrationTrait>> = vec![
            Box::new(m20261125_000001_create_tenants::Migration),
            Box::new(m20261125_000002_create_users_and_groups::Migration),
            Box::new(m20261125_000003_create_conversations::Migration),
            Box::new(m20261125_000004_create_tasks::Migration),
            Box::new(m20261125_000005_create_audit_events::Migration),
            Box::new(m20261125_000006_conversation_external_key::Migration),
            Box::new(m20261125_000007_audit_query_indexes::Migration),
            Box::new(m20261125_000008_row_level_security::Migration),
            Box::new(m20261125_000009_audit_append_only::Migration),
            Box::new(m20261125_000010_task_status_id_index::Migration),
            Box::new(m20261126_000011_open_task_indexes::Migration),
            Box::new(m20261201_000012_enum_text_casts::Migration),
            Box::new(m20261201_000013_policies_for_citus::Migration),
            Box::new(m20261201_000014_distribute_on_citus::Migration),
            Box::new(m20261206_000015_bind_tenant_function::Migration),
            Box::new(m20261206_000016_group_lifecycle::Migration),
            Box::new(m20261206_000017_task_page_indexes::Migration),
        ];
        migrations
            .into_iter()
            .map(|migration| Box::new(timeouts::Bounded(migration)) as Box<dyn MigrationTrait>)
            .collect()
    }
}
