//! Rows for schema tests, written straight through the entities (no repository), so that what a
//! test checks is the schema itself.

use chrono::Utc;
use orkestra_entity::{conversations, group_members, groups, task_history, tasks, tenants, users};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait};
use serde_json::json;
use uuid::Uuid;

/// A new tenant with the given slug.
///
/// # Errors
/// When the database refuses the row.
pub async fn tenant(db: &impl ConnectionTrait, slug: &str) -> Result<tenants::Model, DbErr> {
    tenants::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(format!("Tenant {slug}")),
        slug: Set(slug.to_owned()),
        ..Default::default()
    }
    .insert(db)
    .await
}

/// A new user of `tenant_id` with the given email.
///
/// # Errors
/// When the database refuses the row.
pub async fn user(
    db: &impl ConnectionTrait,
    tenant_id: Uuid,
    email: &str,
) -> Result<users::Model, DbErr> {
    users::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant_id),
        email: Set(email.to_owned()),
        name: Set(email.to_owned()),
        ..Default::default()
    }
    .insert(db)
    .await
}

/// A new group of `tenant_id` with the given slug.
///
/// # Errors
/// When the database refuses the row.
pub async fn group(
    db: &impl ConnectionTrait,
    tenant_id: Uuid,
    slug: &str,
) -> Result<groups::Model, DbErr> {
    groups::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant_id),
        name: Set(format!("Group {slug}")),
        slug: Set(slug.to_owned()),
        ..Default::default()
    }
    .insert(db)
    .await
}

/// A membership row of `tenant_id` joining `group_id` and `user_id`.
///
/// # Errors
/// When the database refuses the row.
pub async fn membership(
    db: &impl ConnectionTrait,
    tenant_id: Uuid,
    group_id: Uuid,
    user_id: Uuid,
) -> Result<(), DbErr> {
    group_members::Entity::insert(group_members::ActiveModel {
        tenant_id: Set(tenant_id),
        group_id: Set(group_id),
        user_id: Set(user_id),
    })
    .exec_without_returning(db)
    .await
    .map(|_| ())
}

/// A new conversation of `tenant_id`.
///
/// # Errors
/// When the database refuses the row.
pub async fn conversation(
    db: &impl ConnectionTrait,
    tenant_id: Uuid,
) -> Result<conversations::Model, DbErr> {
    conversations::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant_id),
        participant: Set(json!({"kind": "user", "id": "u-1"})),
        ..Default::default()
    }
    .insert(db)
    .await
}

/// An unsaved task of `tenant_id` with only its required fields set; set more before inserting.
pub fn task(tenant_id: Uuid) -> tasks::ActiveModel {
    tasks::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant_id),
        workflow_id: Set("wf-1".to_owned()),
        workflow_run_id: Set("run-1".to_owned()),
        title: Set("Approve the invoice".to_owned()),
        form_schema: Set(json!({"type": "object"})),
        ..Default::default()
    }
}

/// An unsaved history row of `tenant_id` for `task_id`.
pub fn history(tenant_id: Uuid, task_id: Uuid) -> task_history::ActiveModel {
    task_history::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant_id),
        task_id: Set(task_id),
        action: Set("created".to_owned()),
        actor_type: Set("system".to_owned()),
        actor_id: Set("test".to_owned()),
        created_at: Set(Utc::now().fixed_offset()),
        ..Default::default()
    }
}
