//! Groups of a tenant and their members.

use orkestra_entity::{
    group_members, groups,
    sea_orm_active_enums::{AssignmentStrategy, TaskStatus},
    tasks, users,
};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, FromQueryResult, JoinType, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, TransactionTrait, TryInsertResult,
    sea_query::{Expr, ExprTrait, Func},
};
use uuid::Uuid;

use crate::context::RequestContext;
use crate::error::{DbResultExt, Error, Result};
use crate::page::{Page, PageRequest};
use crate::{now, scope, validate};

/// The unique constraint a duplicate group slug violates.
pub const SLUG_KEY: &str = "groups_tenant_id_slug_key";
/// The foreign key a membership naming a group outside the tenant violates.
pub const MEMBER_GROUP_FKEY: &str = "group_members_tenant_id_group_id_fkey";
/// The foreign key a membership naming a user outside the tenant violates.
pub const MEMBER_USER_FKEY: &str = "group_members_tenant_id_user_id_fkey";
/// The foreign key that keeps a group with tasks from being deleted.
pub const TASK_GROUP_FKEY: &str = "tasks_tenant_id_assigned_group_id_fkey";

/// A group to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGroup {
    /// The display name.
    pub name: String,
    /// The slug, unique in the tenant: lower-case letters, digits and single hyphens, 1 to 63.
    pub slug: String,
    /// A description.
    pub description: Option<String>,
    /// How tasks of the group are handed out (default `ROUND_ROBIN`).
    pub assignment_strategy: Option<AssignmentStrategy>,
}

impl NewGroup {
    /// A round-robin group with the given name and slug and no description.
    pub fn new(name: impl Into<String>, slug: impl Into<String>) -> NewGroup {
        NewGroup {
            name: name.into(),
            slug: slug.into(),
            description: None,
            assignment_strategy: None,
        }
    }
}

/// Changes to a group; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupUpdate {
    /// A new display name.
    pub name: Option<String>,
    /// A new description: `Some(Some(text))` sets it, `Some(None)` removes it.
    pub description: Option<Option<String>>,
    /// A new assignment strategy.
    pub assignment_strategy: Option<AssignmentStrategy>,
}

/// A member of a group and how many open tasks they hold: assigned to them and not claimed by
/// someone else, or claimed by them (what a `LOAD_BALANCED` assigner compares).
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct MemberWorkload {
    /// The member.
    pub user_id: Uuid,
    /// Their open tasks (created, assigned, claimed or escalated).
    pub open_tasks: i64,
}

/// The groups of the context's tenant.
#[derive(Debug, Clone, Copy)]
pub struct GroupRepository<'a, C> {
    db: &'a C,
}

impl<'a, C: ConnectionTrait + TransactionTrait> GroupRepository<'a, C> {
    /// A repository on `db`, a pool or a transaction.
    pub fn new(db: &'a C) -> Self {
        GroupRepository { db }
    }

    /// Creates a group in the context's tenant.
    ///
    /// # Errors
    /// - [`Error::Validation`]: an empty, over-long or NUL-holding name or description, a malformed
    ///   slug;
    /// - [`Error::Conflict`] ([`SLUG_KEY`]): the tenant already has a group with this slug;
    /// - [`Error::Reference`]: the context's tenant does not exist;
    /// - [`Error::Db`].
    pub async fn create(&self, ctx: &RequestContext, group: NewGroup) -> Result<groups::Model> {
        let name = validate::text("name", &group.name, validate::NAME_MAX)?;
        let slug = validate::slug("slug", &group.slug)?;
        let description = validate::optional_text(
            "description",
            group.description.as_deref(),
            validate::DESCRIPTION_MAX,
        )?;
        let at = now();
        groups::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(ctx.tenant_id()),
            name: Set(name),
            slug: Set(slug),
            description: Set(description),
            assignment_strategy: Set(group
                .assignment_strategy
                .unwrap_or(AssignmentStrategy::RoundRobin)),
            created_at: Set(at),
            updated_at: Set(at),
        }
        .insert(self.db)
        .await
        .map_err(|error| match Error::from_db_with(error, Some(SLUG_KEY)) {
            // SQLite names no constraint; a foreign-key refusal here can only be the tenant's.
            Error::Reference { .. } => Error::Reference {
                constraint: "groups_tenant_id_fkey".to_owned(),
            },
            other => other,
        })
    }

    /// The group with this id in the context's tenant, if any.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub async fn find_by_id(
        &self,
        ctx: &RequestContext,
        id: Uuid,
    ) -> Result<Option<groups::Model>> {
        Ok(scope::find::<groups::Entity>(ctx)
            .filter(groups::Column::Id.eq(id))
            .one(self.db)
            .await?)
    }

    /// The group with this slug in the context's tenant, if any.
    ///
    /// # Errors
    /// [`Error::Validation`] for a slug that could not have been stored; [`Error::Db`].
    pub async fn find_by_slug(
        &self,
        ctx: &RequestContext,
        slug: &str,
    ) -> Result<Option<groups::Model>> {
        let slug = validate::slug("slug", slug)?;
        Ok(scope::find::<groups::Entity>(ctx)
            .filter(groups::Column::Slug.eq(slug))
            .one(self.db)
            .await?)
    }

    /// A page of the tenant's groups, in creation order.
    ///
    /// # Errors
    /// [`Error::Validation`] for a limit outside 1..=500; [`Error::Db`].
    pub async fn list(
        &self,
        ctx: &RequestContext,
        page: &PageRequest<Uuid>,
    ) -> Result<Page<groups::Model, Uuid>> {
        let mut query = scope::find::<groups::Entity>(ctx);
        if let Some(after) = page.after {
            query = query.filter(groups::Column::Id.gt(after));
        }
        let rows = query
            .order_by_asc(groups::Column::Id)
            .limit(page.fetch()?)
            .all(self.db)
            .await?;
        Ok(Page::from_rows(rows, page.limit, |group| group.id))
    }

    /// Changes a group's name, description and/or assignment strategy; returns it as stored.
    ///
    /// # Errors
    /// - [`Error::Validation`]: an invalid name or description, or no change given;
    /// - [`Error::NotFound`]: no such group in the tenant;
    /// - [`Error::Db`].
    pub async fn update(
        &self,
        ctx: &RequestContext,
        id: Uuid,
        update: GroupUpdate,
    ) -> Result<groups::Model> {
        let mut statement = scope::update_many::<groups::Entity>(ctx);
        let mut changed = false;
        if let Some(name) = &update.name {
            let name = validate::text("name", name, validate::NAME_MAX)?;
            statement = statement.col_expr(groups::Column::Name, Expr::value(name));
            changed = true;
        }
        if let Some(description) = &update.description {
            let description = validate::optional_text(
                "description",
                description.as_deref(),
                validate::DESCRIPTION_MAX,
            )?;
            statement = statement.col_expr(groups::Column::Description, Expr::value(description));
            changed = true;
        }
        if let Some(strategy) = update.assignment_strategy {
            statement =
                statement.col_expr(groups::Column::AssignmentStrategy, Expr::value(strategy));
            changed = true;
        }
        if !changed {
            return Err(Error::validation("update", "names no field to change"));
        }
        statement
            .col_expr(groups::Column::UpdatedAt, Expr::value(now()))
            .filter(groups::Column::Id.eq(id))
            .exec_with_returning(self.db)
            .await?
            .pop()
            .ok_or_else(|| Error::not_found("group", id))
    }

    /// Deletes a group and its memberships. A group that tasks are assigned to cannot be deleted:
    /// reassign or finish them first.
    ///
    /// # Errors
    /// - [`Error::NotFound`]: no such group in the tenant;
    /// - [`Error::Reference`] ([`TASK_GROUP_FKEY`]): tasks are assigned to the group;
    /// - [`Error::Db`].
    pub async fn delete(&self, ctx: &RequestContext, id: Uuid) -> Result<()> {
        let deleted = scope::delete_many::<groups::Entity>(ctx)
            .filter(groups::Column::Id.eq(id))
            .exec(self.db)
            .await
            .or_constraint(TASK_GROUP_FKEY)?;
        if deleted.rows_affected == 0 {
            return Err(Error::not_found("group", id));
        }
        Ok(())
    }

    /// Adds a user of the tenant to a group of the tenant. Adding a member twice is harmless:
    /// returns whether the user was added now (`false`: already a member).
    ///
    /// # Errors
    /// - [`Error::Reference`] ([`MEMBER_GROUP_FKEY`] or [`MEMBER_USER_FKEY`]): the group or the
    ///   user does not exist in the tenant;
    /// - [`Error::Db`].
    pub async fn add_member(
        &self,
        ctx: &RequestContext,
        group_id: Uuid,
        user_id: Uuid,
    ) -> Result<bool> {
        let inserted = group_members::Entity::insert(group_members::ActiveModel {
            tenant_id: Set(ctx.tenant_id()),
            group_id: Set(group_id),
            user_id: Set(user_id),
        })
        .on_conflict_do_nothing()
        .exec_without_returning(self.db)
        .await;
        match inserted {
            Ok(TryInsertResult::Inserted(rows)) => Ok(rows > 0),
            Ok(TryInsertResult::Conflicted | TryInsertResult::Empty) => Ok(false),
            Err(error) => {
                let error = Error::from(error);
                if !error.is_unnamed_reference() {
                    return Err(error);
                }
                // SQLite does not say which key refused; the group is checked first, as
                // PostgreSQL would report it.
                let constraint = if self.find_by_id(ctx, group_id).await?.is_none() {
                    MEMBER_GROUP_FKEY
                } else {
                    MEMBER_USER_FKEY
                };
                Err(Error::Reference {
                    constraint: constraint.to_owned(),
                })
            }
        }
    }

    /// Removes a user from a group; returns whether they were a member.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub async fn remove_member(
        &self,
        ctx: &RequestContext,
        group_id: Uuid,
        user_id: Uuid,
    ) -> Result<bool> {
        let deleted = scope::delete_many::<group_members::Entity>(ctx)
            .filter(group_members::Column::GroupId.eq(group_id))
            .filter(group_members::Column::UserId.eq(user_id))
            .exec(self.db)
            .await?;
        Ok(deleted.rows_affected > 0)
    }

    /// A page of a group's members, in the order they joined the tenant (user id). An unknown group
    /// has no members.
    ///
    /// # Errors
    /// [`Error::Validation`] for a limit outside 1..=500; [`Error::Db`].
    pub async fn list_members(
        &self,
        ctx: &RequestContext,
        group_id: Uuid,
        page: &PageRequest<Uuid>,
    ) -> Result<Page<users::Model, Uuid>> {
        let member_ids = scope::find::<group_members::Entity>(ctx)
            .select_only()
            .column(group_members::Column::UserId)
            .filter(group_members::Column::GroupId.eq(group_id))
            .into_query();
        let mut query =
            scope::find::<users::Entity>(ctx).filter(users::Column::Id.in_subquery(member_ids));
        if let Some(after) = page.after {
            query = query.filter(users::Column::Id.gt(after));
        }
        let rows = query
            .order_by_asc(users::Column::Id)
            .limit(page.fetch()?)
            .all(self.db)
            .await?;
        Ok(Page::from_rows(rows, page.limit, |user| user.id))
    }

    /// The groups a user belongs to, in creation order.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub async fn list_user_groups(
        &self,
        ctx: &RequestContext,
        user_id: Uuid,
    ) -> Result<Vec<groups::Model>> {
        let group_ids = scope::find::<group_members::Entity>(ctx)
            .select_only()
            .column(group_members::Column::GroupId)
            .filter(group_members::Column::UserId.eq(user_id))
            .into_query();
        Ok(scope::find::<groups::Entity>(ctx)
            .filter(groups::Column::Id.in_subquery(group_ids))
            .order_by_asc(groups::Column::Id)
            .all(self.db)
            .await?)
    }

    /// Each member of a group with their count of open tasks, least loaded first (ties by user
    /// id): what a `LOAD_BALANCED` assigner picks from. One statement.
    ///
    /// A task counts for the user who claimed it, or, while unclaimed, for the user it is assigned
    /// to.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub async fn member_workloads(
        &self,
        ctx: &RequestContext,
        group_id: Uuid,
    ) -> Result<Vec<MemberWorkload>> {
        // LEFT JOIN tasks ON tasks.tenant_id = group_members.tenant_id
        //   AND tasks.status IN (<open>) AND COALESCE(claimed_by, assigned_user_id) = user_id
        // The join carries the tenant, so the tasks side stays inside it too.
        let holder = Func::coalesce([
            Expr::col((tasks::Entity, tasks::Column::ClaimedBy)),
            Expr::col((tasks::Entity, tasks::Column::AssignedUserId)),
        ]);
        let on = Condition::all()
            .add(
                Expr::col((tasks::Entity, tasks::Column::TenantId))
                    .equals((group_members::Entity, group_members::Column::TenantId)),
            )
            .add(Expr::col((tasks::Entity, tasks::Column::Status)).is_in(TaskStatus::OPEN))
            .add(Expr::expr(holder).equals((group_members::Entity, group_members::Column::UserId)));
        let open_tasks = || Expr::expr(Func::count(Expr::col((tasks::Entity, tasks::Column::Id))));
        let mut select = scope::find::<group_members::Entity>(ctx)
            .select_only()
            .column(group_members::Column::UserId)
            .column_as(open_tasks(), "open_tasks")
            .filter(group_members::Column::GroupId.eq(group_id))
            .group_by(group_members::Column::UserId)
            .order_by_asc(open_tasks())
            .order_by_asc(group_members::Column::UserId);
        QueryTrait::query(&mut select).join(JoinType::LeftJoin, tasks::Entity, on);
        let rows = select.into_model::<MemberWorkload>().all(self.db).await?;
        Ok(rows)
    }
}
