//! Groups can be retired: `groups.status` (`ACTIVE` or `ARCHIVED`, a new enum type) and
//! `groups.archived_at`.
//!
//! A group that any task ever named can never be deleted (the task keeps its reference, and its
//! history names the group), so archiving is how a group is retired. The repository refuses to
//! give an archived group new tasks or new members and stops offering its tasks to its members;
//! the rows themselves stay, so history and audit keep resolving.
//!
//! Every existing group becomes `ACTIVE` (the column's default), so the migration changes no
//! behaviour. On PostgreSQL `archived_at` is set exactly when the group is archived
//! (`groups_archived_at_check`); SQLite cannot add a table constraint to an existing table, and the
//! repository sets both columns together on either backend. The new type gets the immutable cast
//! to text that Citus needs in `RETURNING` clauses (see migration 12).
//!
//! The constraint is added `NOT VALID` with the columns, then validated in a transaction of its own:
//! validating holds a lock that lets reads and writes of `groups` go on, while adding a checked
//! constraint would hold the table's exclusive lock for the whole scan. A rerun after the first
//! transaction committed goes straight to the second.
//!
//! `down` drops the constraint, both columns, the cast and the type: exactly what `up` made.

use sea_orm_migration::prelude::*;

use crate::common::{GROUP_STATUS, citus_installed, execute_on_postgres, timestamptz_null};
use crate::timeouts::transaction;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Groups {
    Table,
    Status,
    ArchivedAt,
}

/// The constraint tying `archived_at` to `status` (PostgreSQL).
const ARCHIVED_AT_CHECK: &str = "groups_archived_at_check";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if !manager.has_column("groups", "status").await? {
            let columns = transaction(manager).await?;
            add_columns(&columns).await?;
            columns.commit().await?;
        }
        let validation = transaction(manager).await?;
        execute_on_postgres(
            &validation,
            vec![format!(
                "ALTER TABLE groups VALIDATE CONSTRAINT {ARCHIVED_AT_CHECK}"
            )],
        )
        .await?;
        validation.commit().await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let columns = transaction(manager).await?;
        drop_columns(&columns).await?;
        columns.commit().await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(false)
    }
}

/// The type, its cast, the columns and the constraint, not yet checked against existing rows.
async fn add_columns(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let backend = manager.get_database_backend();
    one_shard_at_a_time(manager).await?;
    GROUP_STATUS.create(manager).await?;
    execute_on_postgres(manager, GROUP_STATUS.text_cast().into()).await?;
    // One column per statement: SQLite adds one at a time.
    manager
        .alter_table(
            Table::alter()
                .table(Groups::Table)
                .add_column(GROUP_STATUS.column(backend, Groups::Status, "ACTIVE"))
                .to_owned(),
        )
        .await?;
    manager
        .alter_table(
            Table::alter()
                .table(Groups::Table)
                .add_column(timestamptz_null(Groups::ArchivedAt))
                .to_owned(),
        )
        .await?;
    execute_on_postgres(
        manager,
        vec![format!(
            "ALTER TABLE groups ADD CONSTRAINT {ARCHIVED_AT_CHECK} \
             CHECK ((status = 'ARCHIVED') = (archived_at IS NOT NULL)) NOT VALID"
        )],
    )
    .await
}

/// Everything [`add_columns`] made, in reverse.
async fn drop_columns(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    one_shard_at_a_time(manager).await?;
    execute_on_postgres(
        manager,
        vec![format!(
            "ALTER TABLE groups DROP CONSTRAINT {ARCHIVED_AT_CHECK}"
        )],
    )
    .await?;
    for column in [Groups::ArchivedAt, Groups::Status] {
        manager
            .alter_table(
                Table::alter()
                    .table(Groups::Table)
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
    }
    execute_on_postgres(manager, GROUP_STATUS.drop_text_cast().into()).await?;
    GROUP_STATUS.drop(manager).await
}

/// On Citus, makes this migration's transaction change the shards of `groups` one connection at a
/// time: Citus refuses type and function commands (the cast, its function, the type) in a
/// transaction that has already changed a distributed table over parallel connections.
async fn one_shard_at_a_time(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    if citus_installed(manager).await? {
        let sequential = "SET LOCAL citus.multi_shard_modify_mode TO 'sequential'";
        execute_on_postgres(manager, vec![sequential.to_owned()]).await?;
    }
    Ok(())
}
