//! Named relations for entities that reference the same table more than once.
//!
//! A task references `users` three times (assignee, claimer, completer). The generator names those
//! relations `Users1`..`Users3` in an order it chooses, so this module spells each one out from its
//! columns instead: it stays right whatever the generator numbers them.
//!
//! ```no_run
//! use orkestra_entity::{links::TaskAssignee, tasks};
//! use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};
//! # async fn f(db: &DatabaseConnection, tenant_id: uuid::Uuid) -> Result<(), DbErr> {
//! let with_assignees = tasks::Entity::find()
//!     .filter(tasks::Column::TenantId.eq(tenant_id))
//!     .find_also_linked(TaskAssignee)
//!     .all(db)
//!     .await?;
//! # Ok(()) }
//! ```

use sea_orm::{EntityTrait, LinkDef, Linked, RelationDef};

use crate::{tasks, users};

/// The relation from a task to one of its user columns, tenant included in the join.
fn task_user(column: tasks::Column) -> RelationDef {
    tasks::Entity::belongs_to(users::Entity)
        .from((tasks::Column::TenantId, column))
        .to((users::Column::TenantId, users::Column::Id))
        .into()
}

/// A task's assignee: `tasks (tenant_id, assigned_user_id)` → `users (tenant_id, id)`.
#[derive(Debug, Clone, Copy)]
pub struct TaskAssignee;

impl Linked for TaskAssignee {
    type FromEntity = tasks::Entity;
    type ToEntity = users::Entity;

    fn link(&self) -> Vec<LinkDef> {
        vec![task_user(tasks::Column::AssignedUserId)]
    }
}

/// The user who claimed a task: `tasks (tenant_id, claimed_by)` → `users (tenant_id, id)`.
#[derive(Debug, Clone, Copy)]
pub struct TaskClaimer;

impl Linked for TaskClaimer {
    type FromEntity = tasks::Entity;
    type ToEntity = users::Entity;

    fn link(&self) -> Vec<LinkDef> {
        vec![task_user(tasks::Column::ClaimedBy)]
    }
}

/// The user who completed a task: `tasks (tenant_id, completed_by)` → `users (tenant_id, id)`.
#[derive(Debug, Clone, Copy)]
pub struct TaskCompleter;

impl Linked for TaskCompleter {
    type FromEntity = tasks::Entity;
    type ToEntity = users::Entity;

    fn link(&self) -> Vec<LinkDef> {
        vec![task_user(tasks::Column::CompletedBy)]
    }
}
