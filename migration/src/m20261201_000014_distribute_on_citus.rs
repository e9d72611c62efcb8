//! Distribution on Citus: when the `citus` extension is installed, `tenants` becomes a reference
//! table (a copy on every node) and the eight tenant-owned tables are distributed on `tenant_id`,
//! co-located, so that all of one tenant's rows live in the shards of one node and every statement
//! that names its tenant runs there, with its joins and foreign keys, in one transaction with a
//! one-phase commit. On PostgreSQL without Citus, and on SQLite, it does nothing; its `down` turns
//! the tables back into plain local tables. Both steps do only what is left to do: a table already
//! distributed is left as it is, and a database where Citus arrived after this migration ran (so
//! nothing is distributed) takes it down and up again to be distributed.
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

use crate::common::{TENANT_TABLES, citus_installed, distributed_tables, execute_on_postgres};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The settings the distribution needs, for this migration's transaction only.
fn settings() -> Vec<String> {
    [
        "SET LOCAL citus.enable_local_reference_table_foreign_keys TO off",
        "SET LOCAL citus.enable_unsafe_triggers TO on",
        "SET LOCAL citus.multi_shard_modify_mode TO 'sequential'",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !citus_installed(manager).await? {
            return Ok(());
        }
        let done = distributed_tables(manager).await?;
        let mut statements = settings();
        if !done.iter().any(|table| table == "tenants") {
            statements.push("SELECT create_reference_table('tenants')".to_owned());
        }
        let first = TENANT_TABLES[0];
        for table in TENANT_TABLES {
            if done.iter().any(|done| done == table) {
                continue;
            }
            let colocate = if table == first { "none" } else { first };
            statements.push(format!(
                "SELECT create_distributed_table('{table}', 'tenant_id', \
                 colocate_with => '{colocate}')"
            ));
        }
        execute_on_postgres(manager, statements).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !citus_installed(manager).await? {
            return Ok(());
        }
        // Every table references `tenants` and so each other through it: undistributing one
        // through its foreign keys turns the whole schema back into local tables at once.
        let done = distributed_tables(manager).await?;
        let Some(table) = ["tenants"]
            .into_iter()
            .chain(TENANT_TABLES)
            .find(|table| done.iter().any(|done| done == table))
        else {
            return Ok(());
        };
        let mut statements = settings();
        statements.push(format!(
            "SELECT undistribute_table('{table}', cascade_via_foreign_keys => true)"
        ));
        execute_on_postgres(manager, statements).await
    }
}
