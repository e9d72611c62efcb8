//! Tasks and their history.

use sea_orm_migration::prelude::*;

use crate::common::{
    REFUSE, TASK_STATUS, child_fk, create_touch_trigger, drop_table, jsonb, jsonb_null,
    jsonb_object, tenant_fk, tenant_index, tenant_table, text, text_null, timestamptz_now,
    timestamptz_null, uuid, uuid_null,
};
use crate::m20261125_000002_create_users_and_groups::{Groups, Users};
use crate::m20261125_000003_create_conversations::Conversations;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Tasks {
    Table,
    WorkflowId,
    WorkflowRunId,
    Title,
    Description,
    FormSchema,
    FormData,
    AssignedUserId,
    AssignedGroupId,
    #[sea_orm(iden = "claimed_by")]
    ClaimedBy,
    Context,
    ConversationId,
    SlaDeadline,
    SlaConfig,
    Status,
    CreatedAt,
    UpdatedAt,
    CompletedAt,
    #[sea_orm(iden = "completed_by")]
    CompletedBy,
}

#[derive(DeriveIden, Clone, Copy)]
enum TaskHistory {
    #[sea_orm(iden = "task_history")]
    Table,
    TaskId,
    Action,
    ActorType,
    ActorId,
    Details,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_database_backend();
        TASK_STATUS.create(manager).await?;

        // References to users, groups and conversations refuse deletes where the seed's Prisma
        // default would be SET NULL: with the tenant in the key, SET NULL would null `tenant_id` too
        // (which is NOT NULL), and a task is part of the audit trail, so the people and groups it
        // names are deactivated rather than deleted.
        let restrict = REFUSE;
        manager
            .create_table(
                tenant_table(Tasks::Table)
                    // Workflow ids belong to the workflow engine, which may not use UUIDs: text.
                    .col(text(Tasks::WorkflowId))
                    .col(text(Tasks::WorkflowRunId))
                    .col(text(Tasks::Title))
                    .col(text_null(Tasks::Description))
                    .col(jsonb(Tasks::FormSchema))
                    .col(jsonb_null(Tasks::FormData))
                    .col(uuid_null(Tasks::AssignedUserId))
                    .col(uuid_null(Tasks::AssignedGroupId))
                    .col(uuid_null(Tasks::ClaimedBy))
                    .col(jsonb_object(Tasks::Context))
                    .col(uuid_null(Tasks::ConversationId))
                    .col(timestamptz_null(Tasks::SlaDeadline))
                    .col(jsonb_null(Tasks::SlaConfig))
                    .col(TASK_STATUS.column(db, Tasks::Status, "CREATED"))
                    .col(timestamptz_now(db, Tasks::CreatedAt))
                    .col(timestamptz_now(db, Tasks::UpdatedAt))
                    .col(timestamptz_null(Tasks::CompletedAt))
                    .col(uuid_null(Tasks::CompletedBy))
                    .foreign_key(&mut tenant_fk(Tasks::Table))
                    .foreign_key(&mut child_fk(
                        Tasks::Table,
                        Tasks::AssignedUserId,
                        Users::Table,
                        restrict,
                    ))
                    .foreign_key(&mut child_fk(
                        Tasks::Table,
                        Tasks::AssignedGroupId,
                        Groups::Table,
                        restrict,
                    ))
                    .foreign_key(&mut child_fk(
                        Tasks::Table,
                        Tasks::ClaimedBy,
                        Users::Table,
                        restrict,
                    ))
                    .foreign_key(&mut child_fk(
                        Tasks::Table,
                        Tasks::CompletedBy,
                        Users::Table,
                        restrict,
                    ))
                    .foreign_key(&mut child_fk(
                        Tasks::Table,
                        Tasks::ConversationId,
                        Conversations::Table,
                        restrict,
                    ))
                    .to_owned(),
            )
            .await?;
        // The seed's four indexes, each led by the tenant, then one per foreign key the seed leaves
        // bare (a RESTRICT check on delete of a user, group or conversation would scan otherwise).
        for columns in [
            &[Tasks::Status][..],
            &[Tasks::AssignedUserId],
            &[Tasks::AssignedGroupId],
            &[Tasks::WorkflowId, Tasks::WorkflowRunId],
            &[Tasks::ClaimedBy],
            &[Tasks::CompletedBy],
            &[Tasks::ConversationId],
        ] {
            manager
                .create_index(tenant_index(Tasks::Table, columns))
                .await?;
        }
        create_touch_trigger(manager, Tasks::Table).await?;

        manager
            .create_table(
                tenant_table(TaskHistory::Table)
                    .col(uuid(TaskHistory::TaskId))
                    .col(text(TaskHistory::Action))
                    .col(text(TaskHistory::ActorType))
                    .col(text(TaskHistory::ActorId))
                    .col(jsonb_null(TaskHistory::Details))
                    .col(timestamptz_now(db, TaskHistory::CreatedAt))
                    .foreign_key(&mut child_fk(
                        TaskHistory::Table,
                        TaskHistory::TaskId,
                        Tasks::Table,
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_index(
                TaskHistory::Table,
                &[TaskHistory::TaskId, TaskHistory::CreatedAt],
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_table(manager, TaskHistory::Table).await?;
        drop_table(manager, Tasks::Table).await?;
        TASK_STATUS.drop(manager).await
    }
}
