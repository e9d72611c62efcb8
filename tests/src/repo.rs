//! Helpers for the repository tests: a context per tenant, the errors a call is expected to fail
//! with, and snapshots of the rows, so that a refused call is shown (not assumed) to have changed
//! nothing.

use std::fmt::Debug;
use std::future::Future;

use orkestra_entity::{
    audit_events, conversations, group_members, groups, messages, task_history, tasks, tenants,
    users,
};
use orkestra_repository::{Actor, Error, RequestContext};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, Select};
use uuid::Uuid;

/// A context for `tenant`, acted on by a system component.
///
/// # Panics
/// When `tenant` is the nil UUID.
pub fn ctx(tenant: Uuid) -> RequestContext {
    RequestContext::new(
        tenant,
        Actor::system("tests").expect("a valid component name"),
    )
    .expect("a non-nil tenant")
}

/// Every row of every table, each table in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Tenants.
    pub tenants: Vec<tenants::Model>,
    /// Users.
    pub users: Vec<users::Model>,
    /// Groups.
    pub groups: Vec<groups::Model>,
    /// Memberships.
    pub memberships: Vec<group_members::Model>,
    /// Tasks (group deletion must leave them alone).
    pub tasks: Vec<tasks::Model>,
    /// Task history.
    pub history: Vec<task_history::Model>,
    /// Conversations.
    pub conversations: Vec<conversations::Model>,
    /// Messages.
    pub messages: Vec<messages::Model>,
    /// Audit events.
    pub audit: Vec<audit_events::Model>,
}

impl Snapshot {
    /// Every row of every tenant.
    ///
    /// # Errors
    /// When a query fails.
    pub async fn all(db: &impl ConnectionTrait) -> Result<Snapshot, DbErr> {
        Self::read(db, None).await
    }

    /// The rows of one tenant, its own row included.
    ///
    /// # Errors
    /// When a query fails.
    pub async fn of_tenant(db: &impl ConnectionTrait, tenant: Uuid) -> Result<Snapshot, DbErr> {
        Self::read(db, Some(tenant)).await
    }

    async fn read(db: &impl ConnectionTrait, tenant: Option<Uuid>) -> Result<Snapshot, DbErr> {
        fn only<E: EntityTrait>(
            select: Select<E>,
            column: E::Column,
            tenant: Option<Uuid>,
        ) -> Select<E> {
            match tenant {
                Some(tenant) => select.filter(column.eq(tenant)),
                None => select,
            }
        }
        Ok(Snapshot {
            tenants: only(tenants::Entity::find(), tenants::Column::Id, tenant)
                .order_by_asc(tenants::Column::Id)
                .all(db)
                .await?,
            users: only(users::Entity::find(), users::Column::TenantId, tenant)
                .order_by_asc(users::Column::TenantId)
                .order_by_asc(users::Column::Id)
                .all(db)
                .await?,
            groups: only(groups::Entity::find(), groups::Column::TenantId, tenant)
                .order_by_asc(groups::Column::TenantId)
                .order_by_asc(groups::Column::Id)
                .all(db)
                .await?,
            memberships: only(
                group_members::Entity::find(),
                group_members::Column::TenantId,
                tenant,
            )
            .order_by_asc(group_members::Column::TenantId)
            .order_by_asc(group_members::Column::GroupId)
            .order_by_asc(group_members::Column::UserId)
            .all(db)
            .await?,
            tasks: only(tasks::Entity::find(), tasks::Column::TenantId, tenant)
                .order_by_asc(tasks::Column::TenantId)
                .order_by_asc(tasks::Column::Id)
                .all(db)
                .await?,
            history: only(
                task_history::Entity::find(),
                task_history::Column::TenantId,
                tenant,
            )
            .order_by_asc(task_history::Column::TenantId)
            .order_by_asc(task_history::Column::Id)
            .all(db)
            .await?,
            conversations: only(
                conversations::Entity::find(),
                conversations::Column::TenantId,
                tenant,
            )
            .order_by_asc(conversations::Column::TenantId)
            .order_by_asc(conversations::Column::Id)
            .all(db)
            .await?,
            messages: only(messages::Entity::find(), messages::Column::TenantId, tenant)
                .order_by_asc(messages::Column::TenantId)
                .order_by_asc(messages::Column::Id)
                .all(db)
                .await?,
            audit: only(
                audit_events::Entity::find(),
                audit_events::Column::TenantId,
                tenant,
            )
            .order_by_asc(audit_events::Column::TenantId)
            .order_by_asc(audit_events::Column::Id)
            .all(db)
            .await?,
        })
    }
}

/// Runs `call`, which must fail, and checks that every row is as it was before; returns the error.
///
/// # Errors
/// When a snapshot cannot be read.
///
/// # Panics
/// When `call` succeeds or changed a row.
pub async fn refused<T: Debug>(
    db: &impl ConnectionTrait,
    call: impl Future<Output = Result<T, Error>>,
) -> anyhow::Result<Error> {
    let before = Snapshot::all(db).await?;
    let error = match call.await {
        Ok(value) => panic!("the call was accepted: {value:?}"),
        Err(error) => error,
    };
    assert_eq!(
        Snapshot::all(db).await?,
        before,
        "the call was refused ({error}) but changed the database"
    );
    Ok(error)
}

/// Asserts that `error` refuses `field`.
#[track_caller]
pub fn assert_validation(error: &Error, field: &str) {
    assert!(
        matches!(error, Error::Validation { field: f, .. } if *f == field),
        "expected a validation error on {field}, got {error:?}"
    );
}

/// Asserts that `error` is a unique violation of `constraint`.
#[track_caller]
pub fn assert_conflict(error: &Error, constraint: &str) {
    assert!(
        matches!(error, Error::Conflict { constraint: c } if c == constraint),
        "expected a conflict on {constraint}, got {error:?}"
    );
}

/// Asserts that `error` is a refusal by foreign key `constraint`.
#[track_caller]
pub fn assert_reference(error: &Error, constraint: &str) {
    assert!(
        matches!(error, Error::Reference { constraint: c } if c == constraint),
        "expected a refusal by {constraint}, got {error:?}"
    );
}

/// Asserts that `error` says no `entity` with `id` exists.
#[track_caller]
pub fn assert_not_found(error: &Error, entity: &str, id: Uuid) {
    assert!(
        matches!(error, Error::NotFound { entity: e, id: i } if *e == entity && *i == id.to_string()),
        "expected {entity} {id} not found, got {error:?}"
    );
}
