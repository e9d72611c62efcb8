//! Tenant scoping: the only way repository code reaches tenant-owned tables.
//!
//! Two mechanisms make an unscoped query impossible to write by accident:
//! - the entry points that start a query on an entity (`EntityTrait::find`, `update_many`,
//!   `delete_many`, `find_by_id`, `delete_by_id`, `find_related`, raw statements, sea-query
//!   builders) are `disallowed-methods` in this crate's `clippy.toml`, and CI runs clippy with
//!   `-D warnings`; this module is the one place allowed to call them;
//! - what this module hands out is already filtered: [`find`], [`update_many`] and [`delete_many`]
//!   exist only for entities that implement [`TenantOwned`], and apply the context's tenant before
//!   returning. `tenants` is not tenant-owned: its system-level queries come from [`system`].
//!
//! The filtering itself is the extension traits [`SelectTenant`], [`UpdateTenant`] and
//! [`DeleteTenant`], usable by services that build their own queries.
//!
//! ```compile_fail,E0277
//! // `tenants` is not tenant-owned, so it cannot be tenant-scoped.
//! use orkestra_repository::scope;
//! fn f(ctx: &orkestra_repository::RequestContext) {
//!     let _ = scope::find::<orkestra_entity::tenants::Entity>(ctx);
//! }
//! ```

use sea_orm::{ColumnTrait, DeleteMany, EntityTrait, QueryFilter, Select, UpdateMany};

use orkestra_entity::{
    audit_events, conversations, group_members, groups, messages, task_history, tasks, tenants,
    users,
};

use crate::context::RequestContext;

/// An entity whose rows belong to one tenant, and the column that says which.
pub trait TenantOwned: EntityTrait {
    /// The `tenant_id` column.
    fn tenant_column() -> Self::Column;
}

macro_rules! tenant_owned {
    ($($entity:ident),* $(,)?) => {
        $(
            impl TenantOwned for $entity::Entity {
                fn tenant_column() -> Self::Column {
                    $entity::Column::TenantId
                }
            }
        )*
    };
}

// Every table but `tenants`; child tables (history, messages, memberships) included.
tenant_owned!(
    users,
    groups,
    group_members,
    tasks,
    task_history,
    conversations,
    messages,
    audit_events,
);

/// Confines a `SELECT` to the context's tenant.
pub trait SelectTenant {
    /// Adds `tenant_id = <the context's tenant>` to the query.
    fn for_tenant(self, ctx: &RequestContext) -> Self;
}

/// Confines an `UPDATE` to the context's tenant.
pub trait UpdateTenant {
    /// Adds `tenant_id = <the context's tenant>` to the statement.
    fn for_tenant(self, ctx: &RequestContext) -> Self;
}

/// Confines a `DELETE` to the context's tenant.
pub trait DeleteTenant {
    /// Adds `tenant_id = <the context's tenant>` to the statement.
    fn for_tenant(self, ctx: &RequestContext) -> Self;
}

impl<E: TenantOwned> SelectTenant for Select<E> {
    fn for_tenant(self, ctx: &RequestContext) -> Self {
        self.filter(E::tenant_column().eq(ctx.tenant_id()))
    }
}

impl<E: TenantOwned> UpdateTenant for UpdateMany<E> {
    fn for_tenant(self, ctx: &RequestContext) -> Self {
        self.filter(E::tenant_column().eq(ctx.tenant_id()))
    }
}

impl<E: TenantOwned> DeleteTenant for DeleteMany<E> {
    fn for_tenant(self, ctx: &RequestContext) -> Self {
        self.filter(E::tenant_column().eq(ctx.tenant_id()))
    }
}

/// `SELECT ... FROM <E> WHERE tenant_id = <the context's tenant>`.
#[allow(clippy::disallowed_methods)] // The scoped entry point itself.
pub fn find<E: TenantOwned>(ctx: &RequestContext) -> Select<E> {
    E::find().for_tenant(ctx)
}

/// `UPDATE <E> ... WHERE tenant_id = <the context's tenant>`.
#[allow(clippy::disallowed_methods)] // The scoped entry point itself.
pub fn update_many<E: TenantOwned>(ctx: &RequestContext) -> UpdateMany<E> {
    E::update_many().for_tenant(ctx)
}

/// `DELETE FROM <E> WHERE tenant_id = <the context's tenant>`.
#[allow(clippy::disallowed_methods)] // The scoped entry point itself.
pub fn delete_many<E: TenantOwned>(ctx: &RequestContext) -> DeleteMany<E> {
    E::delete_many().for_tenant(ctx)
}

/// Statements of system-level work, run only in a
/// [`system_transaction`](crate::system_transaction): tenant administration on `tenants`, and
/// audit retention, the one statement that reaches a tenant-owned table across tenants.
pub mod system {
    use orkestra_entity::audit_events;
    use sea_orm::{DeleteMany, EntityTrait, Select, UpdateMany};

    use super::tenants;

    /// `DELETE FROM audit_events ...`, across tenants: retention only.
    #[allow(clippy::disallowed_methods)] // The system-level entry point itself.
    pub fn delete_audit_events() -> DeleteMany<audit_events::Entity> {
        audit_events::Entity::delete_many()
    }

    /// `SELECT ... FROM tenants`.
    #[allow(clippy::disallowed_methods)] // The system-level entry point itself.
    pub fn tenants() -> Select<tenants::Entity> {
        tenants::Entity::find()
    }

    /// `UPDATE tenants ...`.
    #[allow(clippy::disallowed_methods)] // The system-level entry point itself.
    pub fn update_tenants() -> UpdateMany<tenants::Entity> {
        tenants::Entity::update_many()
    }
}
