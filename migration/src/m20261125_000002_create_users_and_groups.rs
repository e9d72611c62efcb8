//! Users, groups and group membership.

use sea_orm_migration::prelude::*;

use crate::common::{
    ASSIGNMENT_STRATEGY, Key, USER_ROLE, USER_STATUS, child_fk, create_touch_trigger, drop_table,
    jsonb_object, tenant_fk, tenant_index, tenant_table, tenant_unique, text, text_null,
    timestamptz_now, timestamptz_null, uuid,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum Users {
    Table,
    Email,
    Name,
    Role,
    Preferences,
    Status,
    CreatedAt,
    LastActiveAt,
}

#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum Groups {
    Table,
    Name,
    Slug,
    Description,
    AssignmentStrategy,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum GroupMembers {
    Table,
    GroupId,
    UserId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_database_backend();
        USER_ROLE.create(manager).await?;
        USER_STATUS.create(manager).await?;
        ASSIGNMENT_STRATEGY.create(manager).await?;

        manager
            .create_table(
                tenant_table(Users::Table)
                    .col(text(Users::Email))
                    .col(text(Users::Name))
                    .col(USER_ROLE.column(db, Users::Role, "MEMBER"))
                    .col(jsonb_object(Users::Preferences))
                    .col(USER_STATUS.column(db, Users::Status, "ACTIVE"))
                    .col(timestamptz_now(db, Users::CreatedAt))
                    .col(timestamptz_null(Users::LastActiveAt))
                    .foreign_key(&mut tenant_fk(Users::Table))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique(Users::Table, &[Users::Email]))
            .await?;

        manager
            .create_table(
                tenant_table(Groups::Table)
                    .col(text(Groups::Name))
                    .col(text(Groups::Slug))
                    .col(text_null(Groups::Description))
                    .col(ASSIGNMENT_STRATEGY.column(db, Groups::AssignmentStrategy, "ROUND_ROBIN"))
                    .col(timestamptz_now(db, Groups::CreatedAt))
                    .col(timestamptz_now(db, Groups::UpdatedAt))
                    .foreign_key(&mut tenant_fk(Groups::Table))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique(Groups::Table, &[Groups::Slug]))
            .await?;
        create_touch_trigger(manager, Groups::Table).await?;

        // The seed keys memberships by (group_id, user_id); the tenant leads here, and both
        // references carry it, so a membership can only join a group and a user of one tenant.
        manager
            .create_table(
                Table::create()
                    .table(GroupMembers::Table)
                    .col(uuid(Key::TenantId))
                    .col(uuid(GroupMembers::GroupId))
                    .col(uuid(GroupMembers::UserId))
                    .primary_key(
                        Index::create()
                            .name("group_members_pkey")
                            .col(Key::TenantId)
                            .col(GroupMembers::GroupId)
                            .col(GroupMembers::UserId),
                    )
                    .foreign_key(&mut child_fk(
                        GroupMembers::Table,
                        GroupMembers::GroupId,
                        Groups::Table,
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut child_fk(
                        GroupMembers::Table,
                        GroupMembers::UserId,
                        Users::Table,
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        // The primary key serves lookups by group; this serves "a user's groups" and the cascade
        // from users, which the seed leaves unindexed.
        manager
            .create_index(tenant_index(GroupMembers::Table, &[GroupMembers::UserId]))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_table(manager, GroupMembers::Table).await?;
        drop_table(manager, Groups::Table).await?;
        drop_table(manager, Users::Table).await?;
        ASSIGNMENT_STRATEGY.drop(manager).await?;
        USER_STATUS.drop(manager).await?;
        USER_ROLE.drop(manager).await
    }
}
