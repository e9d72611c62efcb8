//! Distribution on Citus: when the `citus` extension is installed, `tenants` becomes a reference
//! table (a copy on every node) and the eight tenant-owned tables are distributed on `tenant_id`,
//! co-located, so that all of one tenant's rows live in the shards of one node and every statement
//! that names its tenant runs there, with its joins and foreign keys, in one transaction with a
//! one-phase commit. On PostgreSQL without Citus, and on SQLite, it does nothing; its `down` turns
//! the tables back into plain local tables.
//!
//! What it needs Citus to allow, set for this migration's transaction only:
//! - `citus.enable_local_reference_table_foreign_keys = off`: otherwise making `tenants` a
//!   reference table turns every table that references it into a Citus local table, which can no
//!   longer be distributed;
//! - `citus.enable_unsafe_triggers = on`: the tables carry triggers (`updated_at`, the append-only
//!   audit trail), which Citus refuses to distribute with otherwise; they run on the shards;
//! - `citus.multi_shard_modify_mode = 'sequential'`: a transaction that creates a reference table
//!   and then distributed tables referencing it must open one connection per node, not several.
//!
//! Everything the earlier migrations made is what Citus needs: every primary key and unique
//! constraint includes `tenant_id`, every foreign key between tenant-owned tables carries it, the
//! row-level security policies hold no subquery (migration 13), and the enum casts in `RETURNING`
//! are immutable (migration 12). README, "Scaling out with Citus", says what later migrations must
//! do on a distributed schema.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{DbBackend, Statement};

use crate::common::{TENANT_TABLES, execute_on_postgres};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Whether the database has the `citus` extension (PostgreSQL only).
///
/// # Errors
/// When the catalog cannot be read.
pub async fn citus_installed(manager: &SchemaManager<'_>) -> Result<bool, DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres {
        return Ok(false);
    }
    let row = manager
        .get_connection()
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') AS citus",
        ))
        .await?;
    match row {
        Some(row) => row.try_get("", "citus"),
        None => Ok(false),
    }
}

/// The settings the distribution needs, for this migration's transaction only.
fn settings() -> impl Iterator<Item = String> {
    [
        "SET LOCAL citus.enable_local_reference_table_foreign_keys TO off",
        "SET LOCAL citus.enable_unsafe_triggers TO on",
        "SET LOCAL citus.multi_shard_modify_mode TO 'sequential'",
    ]
    .into_iter()
    .map(str::to_owned)
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !citus_installed(manager).await? {
            return Ok(());
        }
        let (first, rest) = TENANT_TABLES.split_first().expect("tenant tables");
        let statements = settings()
            .chain(["SELECT create_reference_table('tenants')".to_owned()])
            .chain([format!(
                "SELECT create_distributed_table('{first}', 'tenant_id', colocate_with => 'none')"
            )])
            .chain(rest.iter().map(|table| {
                format!(
                    "SELECT create_distributed_table('{table}', 'tenant_id', \
                     colocate_with => '{first}')"
                )
            }))
            .collect();
        execute_on_postgres(manager, statements).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !citus_installed(manager).await? {
            return Ok(());
        }
        // Every table references `tenants`, so undistributing it through its foreign keys turns
        // the whole schema back into local tables at once.
        let statements = settings()
            .chain([
                "SELECT undistribute_table('tenants', cascade_via_foreign_keys => true)".to_owned(),
            ])
            .collect();
        execute_on_postgres(manager, statements).await
    }
}
