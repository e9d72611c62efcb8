//! Groups of a tenant and their members.

use orkestra_entity::{
    group_members, groups,
    sea_orm_active_enums::{AssignmentStrategy, GroupStatus, TaskStatus},
    tasks, users,
};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, EntityTrait, FromQueryResult, JoinType, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, TryInsertResult,
    sea_query::{Expr, ExprTrait, Func, LockType},
};
use uuid::Uuid;

use crate::context::RequestContext;
use crate::error::{DbResultExt, Error, Result};
use crate::page::{self, Page, PageRequest};
use crate::trace::{span, traced};
use crate::tx::name_refusal;
use crate::tx::{Connection, Txn};
use crate::{now, scope, tenant_read, tenant_transaction, validate};

/// The unique constraint a duplicate group slug violates.
pub const SLUG_KEY: &str = "groups_tenant_id_slug_key";
/// The foreign key a membership naming a group outside the tenant violates.
pub const MEMBER_GROUP_FKEY: &str = "group_members_tenant_id_group_id_fkey";
/// The foreign key a membership naming a user outside the tenant violates.
pub const MEMBER_USER_FKEY: &str = "group_members_tenant_id_user_id_fkey";
/// The foreign key that keeps a group that tasks name from being deleted.
pub const TASK_GROUP_FKEY: &str = crate::tasks::GROUP_FKEY;
/// The foreign key a group of a missing tenant violates.
const TENANT_FKEY: &str = "groups_tenant_id_fkey";

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

impl<'a, C: Connection> GroupRepository<'a, C> {
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
        traced(span!("orkestra.groups.create", ctx), async move {
            let name = validate::text("name", &group.name, validate::NAME_MAX)?;
            let slug = validate::slug("slug", &group.slug)?;
            let description = validate::optional_prose(
                "description",
                group.description.as_deref(),
                validate::DESCRIPTION_MAX,
            )?;
            let at = now();
            let group = groups::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(ctx.tenant_id()),
                name: Set(name),
                slug: Set(slug),
                description: Set(description),
                assignment_strategy: Set(group
                    .assignment_strategy
                    .unwrap_or(AssignmentStrategy::RoundRobin)),
                status: Set(GroupStatus::Active),
                archived_at: Set(None),
                created_at: Set(at),
                updated_at: Set(at),
            };
            tenant_transaction(self.db, ctx, async |txn| {
                group
                    .insert(txn)
                    .await
                    .or_constraints(SLUG_KEY, TENANT_FKEY)
            })
            .await
        })
        .await
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
        traced(
            span!("orkestra.groups.find_by_id", ctx, group.id = %id),
            async move {
                let query = scope::find::<groups::Entity>(ctx).filter(groups::Column::Id.eq(id));
                tenant_read(self.db, ctx, async |txn| Ok(query.one(txn).await?)).await
            },
        )
        .await
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
        traced(span!("orkestra.groups.find_by_slug", ctx), async move {
            let slug = validate::slug("slug", slug)?;
            let query = scope::find::<groups::Entity>(ctx).filter(groups::Column::Slug.eq(slug));
            tenant_read(self.db, ctx, async |txn| Ok(query.one(txn).await?)).await
        })
        .await
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
        traced(span!("orkestra.groups.list", ctx), async move {
            let query = scope::find::<groups::Entity>(ctx);
            let query = page::by_id(query, groups::Column::Id, page)?;
            let rows = tenant_read(self.db, ctx, async |txn| Ok(query.all(txn).await?)).await?;
            Ok(Page::from_rows(rows, page.limit, |group| group.id))
        })
        .await
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
        traced(
            span!("orkestra.groups.update", ctx, group.id = %id),
            async move {
                let mut statement = scope::update_many::<groups::Entity>(ctx);
                let mut changed = false;
                if let Some(name) = &update.name {
                    let name = validate::text("name", name, validate::NAME_MAX)?;
                    statement = statement.col_expr(groups::Column::Name, Expr::value(name));
                    changed = true;
                }
                if let Some(description) = &update.description {
                    let description = validate::optional_prose(
                        "description",
                        description.as_deref(),
                        validate::DESCRIPTION_MAX,
                    )?;
                    statement =
                        statement.col_expr(groups::Column::Description, Expr::value(description));
                    changed = true;
                }
                if let Some(strategy) = update.assignment_strategy {
                    statement = statement
                        .col_expr(groups::Column::AssignmentStrategy, Expr::value(strategy));
                    changed = true;
                }
                if !changed {
                    return Err(Error::validation("update", "names no field to change"));
                }
                let statement = statement
                    .col_expr(groups::Column::UpdatedAt, Expr::value(now()))
                    .filter(groups::Column::Id.eq(id));
                tenant_transaction(self.db, ctx, async |txn| {
                    statement
                        .exec_with_returning(txn)
                        .await?
                        .pop()
                        .ok_or_else(|| Error::not_found("group", id))
                })
                .await
            },
        )
        .await
    }

    /// Deletes a group and its memberships. A group that any task names, open or finished, cannot
    /// be deleted: a finished task keeps the group it was for, and only open tasks can be
    /// reassigned.
    ///
    /// # Errors
    /// - [`Error::NotFound`]: no such group in the tenant;
    /// - [`Error::Reference`] ([`TASK_GROUP_FKEY`]): a task (open or finished) names the group;
    /// - [`Error::Db`].
    pub async fn delete(&self, ctx: &RequestContext, id: Uuid) -> Result<()> {
        traced(
            span!("orkestra.groups.delete", ctx, group.id = %id),
            async move {
                let statement =
                    scope::delete_many::<groups::Entity>(ctx).filter(groups::Column::Id.eq(id));
                let deleted = tenant_transaction(self.db, ctx, async |txn| {
                    statement.exec(txn).await.or_reference(TASK_GROUP_FKEY)
                })
                .await?;
                if deleted.rows_affected == 0 {
                    return Err(Error::not_found("group", id));
                }
                Ok(())
            },
        )
        .await
    }

    /// Archives a group: the way to retire one that tasks name (those cannot be deleted).
    ///
    /// An archived group keeps its row, its members and its tasks' history, but takes no new
    /// tasks ([`TaskRepository::create`](crate::TaskRepository::create) and
    /// [`assign`](crate::TaskRepository::assign) refuse it) and no new members, and its members no
    /// longer see its tasks in their inboxes nor may claim them through it. Its open tasks are left
    /// as they are, for the tenant to hand on:
    /// [`TaskRepository::list_in_archived_groups`](crate::TaskRepository::list_in_archived_groups)
    /// lists them, and `assign` moves each to a user or an active group. A task already claimed
    /// stays with its claimer, who can still complete or release it. [`restore`](Self::restore)
    /// undoes this.
    ///
    /// A concurrent call that gives the group a task or a member either commits first (its task is
    /// then listed with the others) or waits for this one and is refused.
    ///
    /// # Errors
    /// - [`Error::NotFound`]: no such group in the tenant;
    /// - [`Error::InvalidState`] (entity `"group"`, state `ARCHIVED`): archived already;
    /// - [`Error::Db`].
    pub async fn archive(&self, ctx: &RequestContext, id: Uuid) -> Result<groups::Model> {
        traced(
            span!("orkestra.groups.archive", ctx, group.id = %id),
            async move {
                let at = now();
                self.change_status(ctx, id, GroupStatus::Archived, Some(at), "archive")
                    .await
            },
        )
        .await
    }

    /// Makes an archived group active again: it takes tasks and members as before, and its
    /// members see its open tasks again.
    ///
    /// # Errors
    /// - [`Error::NotFound`]: no such group in the tenant;
    /// - [`Error::InvalidState`] (entity `"group"`, state `ACTIVE`): the group is not archived;
    /// - [`Error::Db`].
    pub async fn restore(&self, ctx: &RequestContext, id: Uuid) -> Result<groups::Model> {
        traced(
            span!("orkestra.groups.restore", ctx, group.id = %id),
            async move {
                self.change_status(ctx, id, GroupStatus::Active, None, "restore")
                    .await
            },
        )
        .await
    }

    /// Moves the group to `status` from the other one, or says why not.
    async fn change_status(
        &self,
        ctx: &RequestContext,
        id: Uuid,
        status: GroupStatus,
        archived_at: Option<chrono::DateTime<chrono::FixedOffset>>,
        action: &'static str,
    ) -> Result<groups::Model> {
        let from = match status {
            GroupStatus::Active => GroupStatus::Archived,
            GroupStatus::Archived => GroupStatus::Active,
        };
        let statement = scope::update_many::<groups::Entity>(ctx)
            .col_expr(groups::Column::Status, Expr::value(status))
            .col_expr(groups::Column::ArchivedAt, Expr::value(archived_at))
            .col_expr(groups::Column::UpdatedAt, Expr::value(now()))
            .filter(groups::Column::Id.eq(id))
            .filter(groups::Column::Status.eq(from));
        tenant_transaction(self.db, ctx, async |txn| {
            if let Some(group) = statement.exec_with_returning(txn).await?.pop() {
                return Ok(group);
            }
            let group = scope::find::<groups::Entity>(ctx)
                .filter(groups::Column::Id.eq(id))
                .one(txn)
                .await?
                .ok_or_else(|| Error::not_found("group", id))?;
            Err(Error::InvalidState {
                entity: "group",
                id: id.to_string(),
                state: group.status.as_str().to_owned(),
                action,
            })
        })
        .await
    }

    /// Adds a user of the tenant to a group of the tenant. Adding a member twice is harmless:
    /// returns whether the user was added now (`false`: already a member).
    ///
    /// # Errors
    /// - [`Error::Reference`] ([`MEMBER_GROUP_FKEY`] or [`MEMBER_USER_FKEY`]): the group or the
    ///   user does not exist in the tenant;
    /// - [`Error::InvalidState`] (entity `"group"`): the group is archived;
    /// - [`Error::Db`].
    pub async fn add_member(
        &self,
        ctx: &RequestContext,
        group_id: Uuid,
        user_id: Uuid,
    ) -> Result<bool> {
        traced(
            span!("orkestra.groups.add_member", ctx, group.id = %group_id, user.id = %user_id),
            async move {
                let statement = group_members::Entity::insert(group_members::ActiveModel {
                    tenant_id: Set(ctx.tenant_id()),
                    group_id: Set(group_id),
                    user_id: Set(user_id),
                })
                .on_conflict_do_nothing();
                let added = tenant_transaction(self.db, ctx, async |txn| {
                    active_group(txn, ctx, group_id, "add a member to").await?;
                    match statement.exec_without_returning(txn).await? {
                        TryInsertResult::Inserted(rows) => Ok(rows > 0),
                        TryInsertResult::Conflicted | TryInsertResult::Empty => Ok(false),
                    }
                })
                .await;
                // The group is looked up first, as PostgreSQL reports it first.
                let lookup = async |txn: &Txn| {
                    let groups_found = scope::find::<groups::Entity>(ctx)
                        .filter(groups::Column::Id.eq(group_id))
                        .count(txn)
                        .await?;
                    Ok((groups_found == 0).then_some(MEMBER_GROUP_FKEY))
                };
                name_refusal(self.db, ctx, added, lookup, MEMBER_USER_FKEY).await
            },
        )
        .await
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
        traced(
            span!("orkestra.groups.remove_member", ctx, group.id = %group_id, user.id = %user_id),
            async move {
                let statement = scope::delete_many::<group_members::Entity>(ctx)
                    .filter(group_members::Column::GroupId.eq(group_id))
                    .filter(group_members::Column::UserId.eq(user_id));
                let deleted =
                    tenant_transaction(self.db, ctx, async |txn| Ok(statement.exec(txn).await?))
                        .await?;
                Ok(deleted.rows_affected > 0)
            },
        )
        .await
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
        traced(
            span!("orkestra.groups.list_members", ctx, group.id = %group_id),
            async move {
                let member_ids = scope::find::<group_members::Entity>(ctx)
                    .select_only()
                    .column(group_members::Column::UserId)
                    .filter(group_members::Column::GroupId.eq(group_id))
                    .into_query();
                let query = scope::find::<users::Entity>(ctx)
                    .filter(users::Column::Id.in_subquery(member_ids));
                let query = page::by_id(query, users::Column::Id, page)?;
                let rows = tenant_read(self.db, ctx, async |txn| Ok(query.all(txn).await?)).await?;
                Ok(Page::from_rows(rows, page.limit, |user| user.id))
            },
        )
        .await
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
        traced(
            span!("orkestra.groups.list_user_groups", ctx, user.id = %user_id),
            async move {
                let group_ids = scope::find::<group_members::Entity>(ctx)
                    .select_only()
                    .column(group_members::Column::GroupId)
                    .filter(group_members::Column::UserId.eq(user_id))
                    .into_query();
                let query = scope::find::<groups::Entity>(ctx)
                    .filter(groups::Column::Id.in_subquery(group_ids))
                    .order_by_asc(groups::Column::Id);
                tenant_read(self.db, ctx, async |txn| Ok(query.all(txn).await?)).await
            },
        )
        .await
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
        traced(
            span!("orkestra.groups.member_workloads", ctx, group.id = %group_id),
            async move {
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
                    .add(
                        Expr::expr(holder)
                            .equals((group_members::Entity, group_members::Column::UserId)),
                    );
                let open_tasks =
                    || Expr::expr(Func::count(Expr::col((tasks::Entity, tasks::Column::Id))));
                let mut select = scope::find::<group_members::Entity>(ctx)
                    .select_only()
                    .column(group_members::Column::UserId)
                    .column_as(open_tasks(), "open_tasks")
                    .filter(group_members::Column::GroupId.eq(group_id))
                    .group_by(group_members::Column::UserId)
                    .order_by_asc(open_tasks())
                    .order_by_asc(group_members::Column::UserId);
                QueryTrait::query(&mut select).join(JoinType::LeftJoin, tasks::Entity, on);
                let select = select.into_model::<MemberWorkload>();
                tenant_read(self.db, ctx, async |txn| Ok(select.all(txn).await?)).await
            },
        )
        .await
    }
}

/// Refuses `action` on group `id` when it is archived, and keeps it from being archived until the
/// caller's transaction ends (`FOR SHARE`, which the archiving `UPDATE` waits for; SQLite
/// serialises writers anyway). A group that does not exist passes: the write's foreign key refuses
/// it, as before groups could be archived.
pub(crate) async fn active_group(
    txn: &Txn,
    ctx: &RequestContext,
    id: Uuid,
    action: &'static str,
) -> Result<()> {
    let status = scope::find::<groups::Entity>(ctx)
        .select_only()
        .column(groups::Column::Status)
        .filter(groups::Column::Id.eq(id))
        .lock(LockType::Share)
        .into_tuple::<GroupStatus>()
        .one(txn)
        .await?;
    match status {
        Some(GroupStatus::Archived) => Err(Error::InvalidState {
            entity: "group",
            id: id.to_string(),
            state: GroupStatus::Archived.as_str().to_owned(),
            action,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sea_orm::{Statement, Value};
    use uuid::Uuid;

    use super::*;
    use crate::testing::{
        affected, assert_scoped, bound, committed, ctx, group_row, inserted, none, one_each, param,
        postgres, statements, tenant_calls, user_row,
    };

    /// The row of a group's status lookup, for an active group.
    fn active() -> Vec<BTreeMap<&'static str, Value>> {
        vec![BTreeMap::from([("status", Value::from("ACTIVE"))])]
    }

    #[tokio::test]
    async fn create_inserts_into_the_contexts_tenant() -> anyhow::Result<()> {
        let tenant = Uuid::now_v7();
        let db = postgres()
            .append_exec_results([bound()])
            .append_query_results([vec![group_row(tenant, Uuid::now_v7())]])
            .into_connection();
        let mut group = NewGroup::new(" Reviewers ", "reviewers");
        group.description = Some(" Reviews things ".to_owned());
        let created = GroupRepository::new(&db)
            .create(&ctx(tenant), group)
            .await?;
        assert_eq!(created.tenant_id, tenant);

        let calls = tenant_calls(db, tenant);
        assert_eq!(committed(&calls), [true]);
        let log = one_each(&calls);
        assert_eq!(assert_scoped(&log[0], tenant), 0);
        assert!(
            log[0].sql.starts_with("INSERT INTO \"groups\""),
            "{}",
            log[0].sql
        );
        assert_eq!(inserted(&log[0], "name"), &Value::from("Reviewers"));
        assert_eq!(inserted(&log[0], "slug"), &Value::from("reviewers"));
        assert_eq!(
            inserted(&log[0], "description"),
            &Value::from("Reviews things")
        );
        assert_eq!(
            inserted(&log[0], "assignment_strategy"),
            &Value::from("ROUND_ROBIN")
        );
        Ok(())
    }

    #[tokio::test]
    async fn refused_arguments_send_nothing() {
        let ctx = ctx(Uuid::now_v7());
        let db = postgres().into_connection();
        let groups = GroupRepository::new(&db);
        for group in [
            NewGroup::new("", "reviewers"),
            NewGroup::new("Reviewers", "Reviewers"),
            NewGroup {
                description: Some("a\0b".to_owned()),
                ..NewGroup::new("Reviewers", "reviewers")
            },
        ] {
            let result = groups.create(&ctx, group.clone()).await;
            assert!(
                matches!(result, Err(Error::Validation { .. })),
                "{group:?}: {result:?}"
            );
        }
        let result = groups.find_by_slug(&ctx, "-bad-").await;
        assert!(matches!(
            result,
            Err(Error::Validation { field: "slug", .. })
        ));
        let result = groups
            .update(&ctx, Uuid::now_v7(), GroupUpdate::default())
            .await;
        assert!(matches!(
            result,
            Err(Error::Validation {
                field: "update",
                ..
            })
        ));
        let result = groups.list(&ctx, &PageRequest::first(501)).await;
        assert!(matches!(
            result,
            Err(Error::Validation { field: "limit", .. })
        ));
        let result = groups
            .list_members(&ctx, Uuid::now_v7(), &PageRequest::first(0))
            .await;
        assert!(matches!(
            result,
            Err(Error::Validation { field: "limit", .. })
        ));
        assert!(
            statements(db).is_empty(),
            "a refused call reached the database"
        );
    }

    #[tokio::test]
    async fn reads_are_scoped() -> anyhow::Result<()> {
        let tenant = Uuid::now_v7();
        let id = Uuid::now_v7();
        let after = Uuid::now_v7();
        let ctx = ctx(tenant);
        let db = postgres()
            .append_exec_results(vec![bound(); 3])
            .append_query_results([vec![group_row(tenant, id)]])
            .append_query_results([vec![group_row(tenant, id)]])
            .append_query_results([vec![group_row(tenant, id)]])
            .into_connection();
        let groups = GroupRepository::new(&db);
        assert!(groups.find_by_id(&ctx, id).await?.is_some());
        assert!(groups.find_by_slug(&ctx, "reviewers").await?.is_some());
        let page = groups.list(&ctx, &PageRequest::after(after, 1)).await?;
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.next, None);

        let calls = tenant_calls(db, tenant);
        assert_eq!(committed(&calls), [true; 3]);
        let log = one_each(&calls);
        for statement in &log {
            assert!(statement.sql.starts_with("SELECT"), "{}", statement.sql);
            assert_eq!(assert_scoped(statement, tenant), 1);
        }
        assert!(
            log[0].sql.contains("\"groups\".\"id\" = $2"),
            "{}",
            log[0].sql
        );
        assert_eq!(param(&log[0], 2), &Value::from(id));
        assert!(
            log[1].sql.contains("\"groups\".\"slug\" = $2"),
            "{}",
            log[1].sql
        );
        assert_eq!(param(&log[1], 2), &Value::from("reviewers"));
        let sql = &log[2].sql;
        assert!(sql.contains("\"groups\".\"id\" > $2"), "{sql}");
        assert!(
            sql.ends_with("ORDER BY \"groups\".\"id\" ASC LIMIT $3"),
            "{sql}"
        );
        assert_eq!(param(&log[2], 2), &Value::from(after));
        assert_eq!(param(&log[2], 3), &Value::from(2_u64));
        Ok(())
    }

    #[tokio::test]
    async fn update_is_one_scoped_statement() -> anyhow::Result<()> {
        let tenant = Uuid::now_v7();
        let id = Uuid::now_v7();
        let db = postgres()
            .append_exec_results([bound(), bound()])
            .append_query_results([vec![group_row(tenant, id)]])
            .append_query_results([none()])
            .into_connection();
        let groups = GroupRepository::new(&db);
        let update = GroupUpdate {
            name: None,
            description: Some(None),
            assignment_strategy: Some(AssignmentStrategy::LoadBalanced),
        };
        groups.update(&ctx(tenant), id, update.clone()).await?;
        let missing = groups.update(&ctx(tenant), id, update).await;
        assert!(
            matches!(
                missing,
                Err(Error::NotFound {
                    entity: "group",
                    ..
                })
            ),
            "{missing:?}"
        );

        let calls = tenant_calls(db, tenant);
        assert_eq!(committed(&calls), [true, false]);
        // A miss is not looked up again.
        let log = one_each(&calls);
        for statement in &log {
            let sql = &statement.sql;
            assert!(sql.starts_with("UPDATE \"groups\" SET \"description\" = $1, \"assignment_strategy\" = $2::\"assignment_strategy\", \"updated_at\" = $3"), "{sql}");
            assert_eq!(assert_scoped(statement, tenant), 1);
            assert!(sql.contains("\"groups\".\"id\" = $5"), "{sql}");
            // Removing the description writes NULL.
            assert_eq!(param(statement, 1), &Value::String(None));
            assert_eq!(param(statement, 2), &Value::from("LOAD_BALANCED"));
            assert_eq!(param(statement, 5), &Value::from(id));
        }
        Ok(())
    }

    #[tokio::test]
    async fn delete_is_scoped_and_reports_a_miss() -> anyhow::Result<()> {
        let tenant = Uuid::now_v7();
        let id = Uuid::now_v7();
        let db = postgres()
            .append_exec_results([bound(), affected(1), bound(), affected(0)])
            .into_connection();
        let groups = GroupRepository::new(&db);
        groups.delete(&ctx(tenant), id).await?;
        let missing = groups.delete(&ctx(tenant), id).await;
        assert!(
            matches!(missing, Err(Error::NotFound { .. })),
            "{missing:?}"
        );

        let log = one_each(&tenant_calls(db, tenant));
        assert_eq!(log.len(), 2);
        for statement in &log {
            assert!(
                statement.sql.starts_with("DELETE FROM \"groups\""),
                "{}",
                statement.sql
            );
            assert_eq!(assert_scoped(statement, tenant), 1);
            assert_eq!(param(statement, 2), &Value::from(id));
        }
        Ok(())
    }

    #[tokio::test]
    async fn membership_writes_are_scoped() -> anyhow::Result<()> {
        let tenant = Uuid::now_v7();
        let (group, user) = (Uuid::now_v7(), Uuid::now_v7());
        let ctx = ctx(tenant);
        let db = postgres()
            .append_exec_results([
                bound(),
                affected(1),
                bound(),
                affected(0),
                bound(),
                affected(1),
                bound(),
                affected(0),
            ])
            // The group's status, read (and locked) before each insert.
            .append_query_results([active(), active()])
            .into_connection();
        let groups = GroupRepository::new(&db);
        assert!(groups.add_member(&ctx, group, user).await?);
        // A conflict inserts nothing: already a member.
        assert!(!groups.add_member(&ctx, group, user).await?);
        assert!(groups.remove_member(&ctx, group, user).await?);
        assert!(!groups.remove_member(&ctx, group, user).await?);

        let calls = tenant_calls(db, tenant);
        assert_eq!(committed(&calls), [true; 4]);
        for call in &calls[..2] {
            let [lookup, _] = &call.statements[..] else {
                panic!("a status lookup and an insert: {:?}", call.statements);
            };
            assert!(
                lookup
                    .sql
                    .starts_with("SELECT CAST(\"groups\".\"status\" AS \"text\")")
                    && lookup.sql.ends_with("FOR SHARE"),
                "{}",
                lookup.sql
            );
            assert_eq!(assert_scoped(lookup, tenant), 1);
            assert_eq!(param(lookup, 2), &Value::from(group));
        }
        let log: Vec<Statement> = calls[..2]
            .iter()
            .map(|call| call.statements[1].clone())
            .chain(one_each(&calls[2..]))
            .collect();
        for insert in &log[..2] {
            assert!(
                insert.sql.starts_with("INSERT INTO \"group_members\"")
                    && insert.sql.ends_with(
                        "ON CONFLICT (\"tenant_id\", \"group_id\", \"user_id\") DO NOTHING"
                    ),
                "{}",
                insert.sql
            );
            assert_scoped(insert, tenant);
            assert_eq!(inserted(insert, "group_id"), &Value::from(group));
            assert_eq!(inserted(insert, "user_id"), &Value::from(user));
        }
        for delete in &log[2..] {
            let sql = &delete.sql;
            assert!(sql.starts_with("DELETE FROM \"group_members\""), "{sql}");
            assert_eq!(assert_scoped(delete, tenant), 1);
            assert!(sql.contains("\"group_members\".\"group_id\" = $2"), "{sql}");
            assert!(sql.contains("\"group_members\".\"user_id\" = $3"), "{sql}");
            assert_eq!(param(delete, 2), &Value::from(group));
            assert_eq!(param(delete, 3), &Value::from(user));
        }
        Ok(())
    }

    #[tokio::test]
    async fn membership_lists_scope_their_subqueries_too() -> anyhow::Result<()> {
        let tenant = Uuid::now_v7();
        let (group, user, after) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let ctx = ctx(tenant);
        let db = postgres()
            .append_exec_results([bound(), bound()])
            .append_query_results([vec![user_row(tenant, user)]])
            .append_query_results([vec![group_row(tenant, group)]])
            .into_connection();
        let groups = GroupRepository::new(&db);
        let members = groups
            .list_members(&ctx, group, &PageRequest::after(after, 10))
            .await?;
        assert_eq!(members.items.len(), 1);
        let of_user = groups.list_user_groups(&ctx, user).await?;
        assert_eq!(of_user.len(), 1);

        let log = one_each(&tenant_calls(db, tenant));
        assert_eq!(log.len(), 2);
        // One predicate for the outer table and one inside the membership subquery.
        let members = &log[0];
        assert_eq!(assert_scoped(members, tenant), 2);
        let sql = &members.sql;
        assert!(
            sql.contains(
                "\"users\".\"id\" IN (SELECT \"group_members\".\"user_id\" FROM \"group_members\" \
                 WHERE \"group_members\".\"tenant_id\" = $2 AND \"group_members\".\"group_id\" = $3)"
            ),
            "{sql}"
        );
        assert_eq!(param(members, 3), &Value::from(group));
        assert!(sql.contains("\"users\".\"id\" > $4"), "{sql}");
        assert_eq!(param(members, 4), &Value::from(after));
        assert!(
            sql.ends_with("ORDER BY \"users\".\"id\" ASC LIMIT $5"),
            "{sql}"
        );

        let user_groups = &log[1];
        assert_eq!(assert_scoped(user_groups, tenant), 2);
        let sql = &user_groups.sql;
        assert!(
            sql.contains(
                "\"groups\".\"id\" IN (SELECT \"group_members\".\"group_id\" FROM \"group_members\" \
                 WHERE \"group_members\".\"tenant_id\" = $2 AND \"group_members\".\"user_id\" = $3)"
            ),
            "{sql}"
        );
        assert_eq!(param(user_groups, 3), &Value::from(user));
        assert!(sql.ends_with("ORDER BY \"groups\".\"id\" ASC"), "{sql}");
        Ok(())
    }

    #[tokio::test]
    async fn member_workloads_ties_the_joined_tasks_to_the_tenant() -> anyhow::Result<()> {
        let tenant = Uuid::now_v7();
        let group = Uuid::now_v7();
        let (idle, busy) = (Uuid::now_v7(), Uuid::now_v7());
        let row = |user: Uuid, open: i64| {
            BTreeMap::from([
                ("user_id", Value::from(user)),
                ("open_tasks", Value::from(open)),
            ])
        };
        let db = postgres()
            .append_exec_results([bound()])
            .append_query_results([vec![row(idle, 0), row(busy, 3)]])
            .into_connection();
        let workloads = GroupRepository::new(&db)
            .member_workloads(&ctx(tenant), group)
            .await?;
        assert_eq!(
            workloads,
            [
                MemberWorkload {
                    user_id: idle,
                    open_tasks: 0
                },
                MemberWorkload {
                    user_id: busy,
                    open_tasks: 3
                },
            ]
        );

        let calls = tenant_calls(db, tenant);
        assert_eq!(calls.len(), 1);
        let log = one_each(&calls);
        let statement = &log[0];
        assert_eq!(assert_scoped(statement, tenant), 1);
        let sql = &statement.sql;
        assert!(
            sql.contains(
                "FROM \"group_members\" LEFT JOIN \"tasks\" ON \"tasks\".\"tenant_id\" = \
                 \"group_members\".\"tenant_id\" AND"
            ),
            "{sql}"
        );
        assert!(
            sql.contains(
                "COALESCE(\"tasks\".\"claimed_by\", \"tasks\".\"assigned_user_id\") = \
                 \"group_members\".\"user_id\""
            ),
            "{sql}"
        );
        assert!(sql.contains("\"group_members\".\"group_id\" = $6"), "{sql}");
        assert_eq!(param(statement, 6), &Value::from(group));
        // The open statuses, and only those, count.
        let open: Vec<_> = (1..=4).map(|n| param(statement, n).clone()).collect();
        assert_eq!(
            open,
            ["CREATED", "ASSIGNED", "CLAIMED", "ESCALATED"].map(Value::from)
        );
        assert!(
            sql.ends_with(
                "GROUP BY \"group_members\".\"user_id\" ORDER BY COUNT(\"tasks\".\"id\") ASC, \
                 \"group_members\".\"user_id\" ASC"
            ),
            "{sql}"
        );
        Ok(())
    }
}
