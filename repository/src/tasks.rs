//! Tasks and their lifecycle.
//!
//! ```text
//!             assign                claim                complete
//!  CREATED ──────────▶ ASSIGNED ──────────▶ CLAIMED ──────────▶ COMPLETED
//!     │                 ▲  │  ▲    release    │
//!     │                 │  │  └───────────────┘
//!     │   assign        │  │ complete (direct assignee, no claim needed)
//!     │  ┌──────────────┘  └──────────────────────────────────▶ COMPLETED
//!     │  │
//!     └──┴──▶ ESCALATED (escalate, from any open state; claimable again)
//!  any open state ──▶ EXPIRED (expire) | CANCELLED (cancel)
//! ```
//!
//! Open states are CREATED, ASSIGNED, CLAIMED and ESCALATED; COMPLETED, EXPIRED and CANCELLED are
//! final. Every change is one guarded `UPDATE tasks ... WHERE tenant_id = $1 AND id = $2 AND status
//! IN (...) [AND <who may>] RETURNING *` and its `task_history` row, in one transaction (a
//! savepoint inside a caller's). A change the state or the user does not allow, including one that
//! lost a race to a concurrent change, matches no row, writes nothing and returns
//! [`Error::InvalidTransition`] with the task's current status (or [`Error::Forbidden`] when only
//! the user was wrong).

use chrono::{DateTime, FixedOffset};
use orkestra_entity::{
    conversations, group_members, groups,
    sea_orm_active_enums::{GroupStatus, TaskStatus, UserStatus},
    task_history, tasks, users,
};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, FromQueryResult, Order,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select, Statement,
    UpdateMany,
    sea_query::{
        Expr, ExprTrait, LockBehavior, LockType, NullOrdering, SelectStatement, Value as SeaValue,
    },
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::clock::utc;
use crate::context::RequestContext;
use crate::error::{Error, Result, TaskAction};
use crate::groups::active_group;
use crate::page::{self, Page, PageRequest};
use crate::template::{self, Template, returning_all};
use crate::trace::{self, span, traced};
use crate::tx::name_refusal;
use crate::tx::{Connection, Txn};
use crate::{now, scope, tenant_read, tenant_transaction, validate};
use tracing::field::Empty;

/// The foreign key a task naming a user outside the tenant as assignee violates.
pub const ASSIGNEE_FKEY: &str = "tasks_tenant_id_assigned_user_id_fkey";
/// The foreign key a task naming a group outside the tenant violates.
pub const GROUP_FKEY: &str = "tasks_tenant_id_assigned_group_id_fkey";
/// The foreign key a task naming a conversation outside the tenant violates.
pub const CONVERSATION_FKEY: &str = "tasks_tenant_id_conversation_id_fkey";
/// The foreign key a task of a tenant that does not exist violates.
pub const TENANT_FKEY: &str = "tasks_tenant_id_fkey";

/// Who a task is assigned to: a user, a group, or both (a group task with a preferred member).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignTo {
    /// The user, who alone may claim it (besides members of the group, if one is named too).
    pub user_id: Option<Uuid>,
    /// The group, any member of which may claim it.
    pub group_id: Option<Uuid>,
}

impl AssignTo {
    /// Assigned to one user.
    pub fn user(user_id: Uuid) -> AssignTo {
        AssignTo {
            user_id: Some(user_id),
            group_id: None,
        }
    }

    /// Assigned to a group.
    pub fn group(group_id: Uuid) -> AssignTo {
        AssignTo {
            user_id: None,
            group_id: Some(group_id),
        }
    }

    fn validate(&self) -> Result<()> {
        if self.user_id.is_none() && self.group_id.is_none() {
            return Err(Error::validation(
                "assign_to",
                "names neither a user nor a group",
            ));
        }
        Ok(())
    }

    fn details(&self) -> Value {
        json!({ "user_id": self.user_id, "group_id": self.group_id })
    }
}

/// A task's service-level agreement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sla {
    /// When the task must be done by.
    pub deadline: DateTime<FixedOffset>,
    /// How to enforce it (reminders, escalation targets, ...), a JSON object.
    pub config: Value,
}

/// A task to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    /// The workflow that creates it.
    pub workflow_id: String,
    /// The run of that workflow.
    pub workflow_run_id: String,
    /// What to do.
    pub title: String,
    /// More about it.
    pub description: Option<String>,
    /// The form to fill in, a JSON object (a JSON Schema, typically).
    pub form_schema: Value,
    /// Who it is for; `None` creates it unassigned (`CREATED`), otherwise it starts `ASSIGNED`.
    pub assign_to: Option<AssignTo>,
    /// Workflow context shown with it, a JSON object (default `{}`).
    pub context: Option<Value>,
    /// The conversation it belongs to.
    pub conversation_id: Option<Uuid>,
    /// Its deadline and SLA configuration.
    pub sla: Option<Sla>,
}

impl NewTask {
    /// An unassigned task with no description, context, conversation or SLA.
    pub fn new(
        workflow_id: impl Into<String>,
        workflow_run_id: impl Into<String>,
        title: impl Into<String>,
        form_schema: Value,
    ) -> NewTask {
        NewTask {
            workflow_id: workflow_id.into(),
            workflow_run_id: workflow_run_id.into(),
            title: title.into(),
            description: None,
            form_schema,
            assign_to: None,
            context: None,
            conversation_id: None,
            sla: None,
        }
    }

    /// The same task, assigned.
    pub fn assigned_to(mut self, assign_to: AssignTo) -> NewTask {
        self.assign_to = Some(assign_to);
        self
    }

    /// The same task, with a deadline.
    pub fn with_sla(mut self, deadline: DateTime<FixedOffset>, config: Value) -> NewTask {
        self.sla = Some(Sla { deadline, config });
        self
    }

    /// The same task, in a conversation.
    pub fn in_conversation(mut self, conversation_id: Uuid) -> NewTask {
        self.conversation_id = Some(conversation_id);
        self
    }
}

/// The position of a task in a user's inbox: `(sla_deadline NULLS LAST, created_at, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboxCursor {
    /// The task's deadline (`None` sorts after every deadline).
    pub sla_deadline: Option<DateTime<FixedOffset>>,
    /// The task's creation time.
    pub created_at: DateTime<FixedOffset>,
    /// The task's id.
    pub id: Uuid,
}

impl InboxCursor {
    fn of(task: &tasks::Model) -> InboxCursor {
        InboxCursor {
            sla_deadline: task.sla_deadline,
            created_at: task.created_at,
            id: task.id,
        }
    }

    /// Refuses a cursor no stored task could have given (field `after`).
    fn check(&self) -> Result<()> {
        if let Some(deadline) = self.sla_deadline {
            validate::instant("after", deadline)?;
        }
        validate::instant("after", self.created_at)
    }
}

/// The position of a task in the overdue list: `(sla_deadline, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OverdueCursor {
    /// The task's deadline.
    pub sla_deadline: DateTime<FixedOffset>,
    /// The task's id.
    pub id: Uuid,
}

impl OverdueCursor {
    /// Refuses a cursor no stored task could have given (field `after`).
    fn check(&self) -> Result<()> {
        validate::instant("after", self.sla_deadline)
    }
}

/// The statuses in which a task waits to be claimed: what an inbox shows.
pub const PENDING: [TaskStatus; 3] = [
    TaskStatus::Created,
    TaskStatus::Assigned,
    TaskStatus::Escalated,
];
const ASSIGNABLE: [TaskStatus; 3] = PENDING;
const CLAIMABLE: [TaskStatus; 2] = [TaskStatus::Assigned, TaskStatus::Escalated];
/// How many times a state change is tried when the task keeps changing under it.
const ATTEMPTS: usize = 3;

/// `tasks.assigned_group_id` is one of the groups `groups` selects.
///
/// On PostgreSQL, `= ANY(ARRAY(subquery))`: the subquery runs once, as an init-plan, and its array
/// is an index condition, so the inbox reads `(tenant_id, assigned_user_id)` and
/// `(tenant_id, assigned_group_id)` for only the user's and the groups' tasks (a bitmap OR of two
/// index scans). With `IN (subquery)` under the `OR`, PostgreSQL can only filter with the
/// subquery, and read every task of the tenant to do it. SQLite keeps `IN`.
fn group_match(backend: DbBackend, groups: SelectStatement) -> Expr {
    let column = Expr::col((tasks::Entity, tasks::Column::AssignedGroupId));
    if backend == DbBackend::Postgres {
        Expr::cust_with_exprs(
            "$1 = ANY(ARRAY($2))",
            [column, Expr::SubQuery(None, Box::new(groups.into()))],
        )
    } else {
        column.in_subquery(groups)
    }
}

/// The task is assigned to `user_id` or to one of the user's groups: what an inbox holds.
fn assigned_to_user_or_groups(
    backend: DbBackend,
    ctx: &RequestContext,
    user_id: Uuid,
) -> Condition {
    Condition::any()
        .add(tasks::Column::AssignedUserId.eq(user_id))
        .add(group_match(backend, groups_of(ctx, user_id)))
}

/// The inbox's order: soonest deadline first (tasks without one last), then oldest first.
fn inbox_order(query: Select<tasks::Entity>) -> Select<tasks::Entity> {
    query
        .order_by_with_nulls(tasks::Column::SlaDeadline, Order::Asc, NullOrdering::Last)
        .order_by_asc(tasks::Column::CreatedAt)
        .order_by_asc(tasks::Column::Id)
}

/// The tasks of the context's tenant.
#[derive(Debug, Clone, Copy)]
pub struct TaskRepository<'a, C> {
    db: &'a C,
}

impl<'a, C: Connection> TaskRepository<'a, C> {
    /// A repository on `db`, a pool or a transaction.
    pub fn new(db: &'a C) -> Self {
        TaskRepository { db }
    }

    /// Creates a task (`ASSIGNED` when given a user or group, else `CREATED`) and its `created`
    /// history row, in one transaction.
    ///
    /// # Errors
    /// - [`Error::Validation`]: empty, over-long or NUL-holding text; a form schema, context or SLA
    ///   config that is not a JSON object; an assignment naming nobody; an SLA deadline outside
    ///   [`validate::INSTANT_MIN`]..=[`validate::INSTANT_MAX`] (years 1 to 9999);
    /// - [`Error::Reference`] ([`ASSIGNEE_FKEY`], [`GROUP_FKEY`], [`CONVERSATION_FKEY`],
    ///   [`TENANT_FKEY`]): the assignee, group or conversation is not the tenant's (or the tenant
    ///   does not exist);
    /// - [`Error::InvalidState`] (entity `"group"`): the group is archived;
    /// - [`Error::Db`].
    pub async fn create(&self, ctx: &RequestContext, task: NewTask) -> Result<tasks::Model> {
        let span = span!(
            "orkestra.tasks.create",
            ctx,
            workflow.id = ?task.workflow_id,
            workflow.run_id = ?task.workflow_run_id,
            assignee.user.id = Empty,
            assignee.group.id = Empty,
            conversation.id = Empty,
        );
        let assign_to = task.assign_to.as_ref();
        trace::ids(&span, "assignee.user.id", assign_to.and_then(|a| a.user_id));
        trace::ids(
            &span,
            "assignee.group.id",
            assign_to.and_then(|a| a.group_id),
        );
        trace::ids(&span, "conversation.id", task.conversation_id);
        traced(span, async move {
            let workflow_id = validate::text("workflow_id", &task.workflow_id, validate::ID_MAX)?;
            let workflow_run_id =
                validate::text("workflow_run_id", &task.workflow_run_id, validate::ID_MAX)?;
            let title = validate::text("title", &task.title, validate::TITLE_MAX)?;
            let description = validate::optional_prose(
                "description",
                task.description.as_deref(),
                validate::DESCRIPTION_MAX,
            )?;
            validate::json_object("form_schema", &task.form_schema)?;
            let context = task.context.unwrap_or_else(|| json!({}));
            validate::json_object("context", &context)?;
            if let Some(assign_to) = &task.assign_to {
                assign_to.validate()?;
            }
            if let Some(sla) = &task.sla {
                validate::json_object("sla.config", &sla.config)?;
                validate::instant("sla.deadline", sla.deadline)?;
            }
            let assign_to = task.assign_to.unwrap_or(AssignTo {
                user_id: None,
                group_id: None,
            });
            let status = if task.assign_to.is_some() {
                TaskStatus::Assigned
            } else {
                TaskStatus::Created
            };
            let row = NewRow {
                id: Uuid::now_v7(),
                workflow_id,
                workflow_run_id,
                title,
                description,
                form_schema: task.form_schema,
                assigned_user_id: assign_to.user_id,
                assigned_group_id: assign_to.group_id,
                context,
                conversation_id: task.conversation_id,
                sla_deadline: task.sla.as_ref().map(|sla| utc(sla.deadline)),
                sla_config: task.sla.map(|sla| sla.config),
                status: status.clone(),
                at: now(),
            };
            // One text per initial status (a status is an enum, not a value a sentinel can stand for).
            static INSERT_ASSIGNED: Template = Template::new();
            static INSERT_CREATED: Template = Template::new();
            let insert = if status == TaskStatus::Assigned {
                &INSERT_ASSIGNED
            } else {
                &INSERT_CREATED
            };
            let sentinels = NewRow::sentinels(status.clone());
            let bind = row.bind(ctx, &sentinels);

            let created = tenant_transaction(self.db, ctx, async |txn| {
                if let Some(group) = assign_to.group_id {
                    active_group(txn, ctx, group, "assign a task to").await?;
                }
                let statement = insert.bind(
                    txn.get_database_backend(),
                    ctx,
                    |backend, ctx, row| row.insert_statement(backend, ctx),
                    &sentinels,
                    &row,
                    bind,
                );
                let created = tasks::Model::find_by_statement(statement)
                    .one(txn)
                    .await?
                    .ok_or_else(|| DbErr::RecordNotInserted)?;
                let details = json!({
                    "status": status.as_str(),
                    "assigned_user_id": created.assigned_user_id,
                    "assigned_group_id": created.assigned_group_id,
                });
                record(txn, ctx, &created, "created", details).await?;
                Ok(created)
            })
            .await;
            self.name_reference(ctx, created, assign_to, task.conversation_id)
                .await
        })
        .await
    }

    /// The task with this id in the context's tenant, if any.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub async fn find_by_id(&self, ctx: &RequestContext, id: Uuid) -> Result<Option<tasks::Model>> {
        traced(
            span!("orkestra.tasks.find_by_id", ctx, task.id = %id),
            async move {
                let query = scope::find::<tasks::Entity>(ctx).filter(tasks::Column::Id.eq(id));
                tenant_read(self.db, ctx, async |txn| Ok(query.one(txn).await?)).await
            },
        )
        .await
    }

    /// A user's inbox: the tasks waiting to be claimed (created, assigned or escalated) that are
    /// assigned to the user or to any active (not archived) group the user belongs to, soonest deadline first (tasks
    /// without one last), then oldest first. One statement, memberships in a subquery.
    ///
    /// # Errors
    /// [`Error::Validation`] for a limit outside 1..=500 or a cursor (field `after`) holding a time
    /// outside years 1 to 9999 ([`validate::INSTANT_MIN`]); [`Error::Db`].
    pub async fn find_pending_for_user(
        &self,
        ctx: &RequestContext,
        user_id: Uuid,
        page: &PageRequest<InboxCursor>,
    ) -> Result<Page<tasks::Model, InboxCursor>> {
        traced(
            span!("orkestra.tasks.find_pending_for_user", ctx, user.id = %user_id),
            async move {
                page.after.as_ref().map(InboxCursor::check).transpose()?;
                // One text per cursor shape: none, after a deadline, after the tasks without one.
                static FIRST: Template = Template::new();
                static AFTER_DEADLINE: Template = Template::new();
                static AFTER_NO_DEADLINE: Template = Template::new();
                let args = PageArgs {
                    user: user_id,
                    at: None,
                    limit: page.fetch()?,
                    after: page.after.as_ref().map(|after| After {
                        deadline: after.sla_deadline.map(utc),
                        created_at: utc(after.created_at),
                        id: after.id,
                    }),
                };
                let text = match &args.after {
                    None => &FIRST,
                    Some(After {
                        deadline: Some(_), ..
                    }) => &AFTER_DEADLINE,
                    Some(After { deadline: None, .. }) => &AFTER_NO_DEADLINE,
                };
                let rows = tenant_read(self.db, ctx, async |txn| {
                    let statement =
                        args.bind_to(text, txn.get_database_backend(), ctx, inbox_statement);
                    Ok(tasks::Model::find_by_statement(statement).all(txn).await?)
                })
                .await?;
                Ok(Page::from_rows(rows, page.limit, InboxCursor::of))
            },
        )
        .await
    }

    /// The tasks of one workflow run, in creation order.
    ///
    /// # Errors
    /// [`Error::Validation`] for empty ids or a limit outside 1..=500; [`Error::Db`].
    pub async fn list_by_workflow_run(
        &self,
        ctx: &RequestContext,
        workflow_id: &str,
        workflow_run_id: &str,
        page: &PageRequest<Uuid>,
    ) -> Result<Page<tasks::Model, Uuid>> {
        let span = span!(
            "orkestra.tasks.list_by_workflow_run",
            ctx,
            workflow.id = ?workflow_id,
            workflow.run_id = ?workflow_run_id,
        );
        traced(span, async move {
            let workflow_id = validate::text("workflow_id", workflow_id, validate::ID_MAX)?;
            let workflow_run_id =
                validate::text("workflow_run_id", workflow_run_id, validate::ID_MAX)?;
            let query = scope::find::<tasks::Entity>(ctx)
                .filter(tasks::Column::WorkflowId.eq(workflow_id))
                .filter(tasks::Column::WorkflowRunId.eq(workflow_run_id));
            let query = page::by_id(query, tasks::Column::Id, page)?;
            let rows = tenant_read(self.db, ctx, async |txn| Ok(query.all(txn).await?)).await?;
            Ok(Page::from_rows(rows, page.limit, |task| task.id))
        })
        .await
    }

    /// The tenant's tasks in one status, in creation order.
    ///
    /// # Errors
    /// [`Error::Validation`] for a limit outside 1..=500; [`Error::Db`].
    pub async fn list_by_status(
        &self,
        ctx: &RequestContext,
        status: TaskStatus,
        page: &PageRequest<Uuid>,
    ) -> Result<Page<tasks::Model, Uuid>> {
        traced(span!("orkestra.tasks.list_by_status", ctx), async move {
            // Ordered by (status, id), which is id order since the status is fixed: the planner then
            // reads the page from `(tenant_id, status, id)` in order. Ordered by id alone, it could not
            // tell a rare status from a common one (row-level security hides the column's statistics
            // from it, since enum equality is not leakproof) and walked the primary key filtering on
            // status, reading the whole tenant for a status whose tasks are few and the newest.
            let query = scope::find::<tasks::Entity>(ctx)
                .filter(status_in(&[status]))
                .order_by_asc(tasks::Column::Status);
            let query = page::by_id(query, tasks::Column::Id, page)?;
            let rows = tenant_read(self.db, ctx, async |txn| Ok(query.all(txn).await?)).await?;
            Ok(Page::from_rows(rows, page.limit, |task| task.id))
        })
        .await
    }

    /// The open tasks (created, assigned, claimed or escalated) assigned to an archived group, in
    /// creation order: what is left to hand on after
    /// [`GroupRepository::archive`](crate::GroupRepository::archive). [`assign`](Self::assign)
    /// moves an unclaimed one to a user or an active group; a claimed one stays with its claimer
    /// until completed or released.
    ///
    /// # Errors
    /// [`Error::Validation`] for a limit outside 1..=500; [`Error::Db`].
    pub async fn list_in_archived_groups(
        &self,
        ctx: &RequestContext,
        page: &PageRequest<Uuid>,
    ) -> Result<Page<tasks::Model, Uuid>> {
        traced(
            span!("orkestra.tasks.list_in_archived_groups", ctx),
            async move {
                let archived = scope::find::<groups::Entity>(ctx)
                    .select_only()
                    .column(groups::Column::Id)
                    .filter(
                        Expr::col((groups::Entity, groups::Column::Status))
                            .eq(Expr::Constant(GroupStatus::Archived.as_str().into())),
                    )
                    .into_query();
                let query = scope::find::<tasks::Entity>(ctx)
                    .filter(status_in(&TaskStatus::OPEN))
                    .filter(tasks::Column::AssignedGroupId.in_subquery(archived));
                let query = page::by_id(query, tasks::Column::Id, page)?;
                let rows = tenant_read(self.db, ctx, async |txn| Ok(query.all(txn).await?)).await?;
                Ok(Page::from_rows(rows, page.limit, |task| task.id))
            },
        )
        .await
    }

    /// The open tasks whose deadline passed before `now`, earliest deadline first: what an SLA
    /// sweeper expires or escalates, page by page.
    ///
    /// # Errors
    /// [`Error::Validation`] for a limit outside 1..=500, or a `now` or cursor (field `after`)
    /// outside years 1 to 9999 ([`validate::INSTANT_MIN`]); [`Error::Db`].
    pub async fn overdue(
        &self,
        ctx: &RequestContext,
        now: DateTime<FixedOffset>,
        page: &PageRequest<OverdueCursor>,
    ) -> Result<Page<tasks::Model, OverdueCursor>> {
        traced(span!("orkestra.tasks.overdue", ctx), async move {
            validate::instant("now", now)?;
            page.after.as_ref().map(OverdueCursor::check).transpose()?;
            static FIRST: Template = Template::new();
            static AFTER: Template = Template::new();
            let args = PageArgs {
                user: Uuid::nil(),
                at: Some(utc(now)),
                limit: page.fetch()?,
                after: page.after.as_ref().map(|after| After {
                    deadline: Some(utc(after.sla_deadline)),
                    created_at: template::time(0),
                    id: after.id,
                }),
            };
            let text = if args.after.is_some() { &AFTER } else { &FIRST };
            let rows = tenant_read(self.db, ctx, async |txn| {
                let statement =
                    args.bind_to(text, txn.get_database_backend(), ctx, overdue_statement);
                Ok(tasks::Model::find_by_statement(statement).all(txn).await?)
            })
            .await?;
            Ok(Page::from_rows(rows, page.limit, |task| OverdueCursor {
                // Always set: the query only returns tasks with a deadline.
                sla_deadline: task.sla_deadline.unwrap_or(task.created_at),
                id: task.id,
            }))
        })
        .await
    }

    /// A task's history, oldest first. An unknown task has none.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub async fn history(
        &self,
        ctx: &RequestContext,
        task_id: Uuid,
    ) -> Result<Vec<task_history::Model>> {
        traced(
            span!("orkestra.tasks.history", ctx, task.id = %task_id),
            async move {
                let query = scope::find::<task_history::Entity>(ctx)
                    .filter(task_history::Column::TaskId.eq(task_id))
                    .order_by_asc(task_history::Column::CreatedAt)
                    .order_by_asc(task_history::Column::Id);
                tenant_read(self.db, ctx, async |txn| Ok(query.all(txn).await?)).await
            },
        )
        .await
    }

    /// Assigns (or reassigns) a task that is not claimed: it becomes `ASSIGNED` to `assign_to`.
    ///
    /// # Errors
    /// - [`Error::Validation`]: the assignment names nobody;
    /// - [`Error::NotFound`]: no such task in the tenant;
    /// - [`Error::InvalidTransition`]: the task is claimed or final;
    /// - [`Error::Reference`] ([`ASSIGNEE_FKEY`], [`GROUP_FKEY`]): the user or group is not the
    ///   tenant's;
    /// - [`Error::InvalidState`] (entity `"group"`): the group is archived;
    /// - [`Error::Db`].
    pub async fn assign(
        &self,
        ctx: &RequestContext,
        id: Uuid,
        assign_to: AssignTo,
    ) -> Result<tasks::Model> {
        let span = span!(
            "orkestra.tasks.assign",
            ctx,
            task.id = %id,
            assignee.user.id = Empty,
            assignee.group.id = Empty,
        );
        trace::ids(&span, "assignee.user.id", assign_to.user_id);
        trace::ids(&span, "assignee.group.id", assign_to.group_id);
        traced(span, async move {
            assign_to.validate()?;
            static WRITE: Template = Template::new();
            let change = Transition {
                action: TaskAction::Assign,
                from: &ASSIGNABLE,
                who: None,
                details: assign_to.details(),
                assign_to: Some(assign_to),
                write: &WRITE,
                set: |update, args| {
                    update
                        .col_expr(tasks::Column::Status, Expr::value(TaskStatus::Assigned))
                        .col_expr(tasks::Column::AssignedUserId, Expr::value(args.to_user))
                        .col_expr(tasks::Column::AssignedGroupId, Expr::value(args.to_group))
                        .col_expr(tasks::Column::ClaimedBy, Expr::value(None::<Uuid>))
                },
            };
            let args = Args {
                to_user: assign_to.user_id,
                to_group: assign_to.group_id,
                ..Args::new(id)
            };
            self.transition(ctx, args, change).await
        })
        .await
    }

    /// Claims an assigned or escalated task for `user_id`, who must be active and either its
    /// assignee or a member of its group (while the group is active: see
    /// [`GroupRepository::archive`](crate::GroupRepository::archive)). Of many concurrent claims, exactly one wins; the others
    /// get [`Error::InvalidTransition`] naming `CLAIMED`.
    ///
    /// # Errors
    /// - [`Error::NotFound`]: no such task in the tenant;
    /// - [`Error::InvalidTransition`]: the task is not assigned or escalated (claimed already,
    ///   unassigned, or final);
    /// - [`Error::Forbidden`]: the user is neither the assignee nor a member of the group, or is
    ///   inactive;
    /// - [`Error::Db`].
    pub async fn claim(
        &self,
        ctx: &RequestContext,
        id: Uuid,
        user_id: Uuid,
    ) -> Result<tasks::Model> {
        traced(span!("orkestra.tasks.claim", ctx, task.id = %id, user.id = %user_id), async move {
        static WRITE: Template = Template::new();
        let change = Transition {
            action: TaskAction::Claim,
            from: &CLAIMABLE,
            who: Some(Who {
                condition: |ctx, args| may_claim(ctx, args.user),
                reason: "the user is not the assignee or a member of the assigned group (or the \
                         group is archived), or is inactive",
            }),
            details: json!({ "user_id": user_id }),
            assign_to: None,
            write: &WRITE,
            set: |update, args| {
                update
                    .col_expr(tasks::Column::Status, Expr::value(TaskStatus::Claimed))
                    .col_expr(tasks::Column::ClaimedBy, Expr::value(args.user))
            },
        };
        let args = Args {
            user: user_id,
            ..Args::new(id)
        };
        self.transition(ctx, args, change).await
        })
        .await
    }

    /// Claims the first task of the user's inbox that nobody else is claiming at this moment: the
    /// way workers sharing group queues take work without racing each other. The task is the
    /// first claimable one (assigned or escalated, to the user or to one of the user's active groups) in
    /// inbox order; on PostgreSQL a task another transaction holds locked (claiming or otherwise
    /// changing it) is skipped (`FOR NO KEY UPDATE SKIP LOCKED`), not waited for, so concurrent
    /// callers get different tasks and none loses a race. One `UPDATE ... RETURNING` and the
    /// history row, in one transaction. `None` when nothing is claimable for the user right now:
    /// nothing waits, or everything that waits is locked by other transactions at this moment.
    ///
    /// Unlike [`claim`](Self::claim), which names a task and refuses an inactive user with
    /// [`Error::Forbidden`] for that task, this names none, so an inactive user is a state of the
    /// user.
    ///
    /// # Errors
    /// - [`Error::NotFound`]: no such user in the tenant (checked only when nothing was claimed);
    /// - [`Error::InvalidState`] (entity `"user"`): the user is not active (likewise);
    /// - [`Error::Db`].
    pub async fn claim_next(
        &self,
        ctx: &RequestContext,
        user_id: Uuid,
    ) -> Result<Option<tasks::Model>> {
        traced(
            span!("orkestra.tasks.claim_next", ctx, user.id = %user_id),
            async move {
                let mut next = inbox_order(
                    scope::find::<tasks::Entity>(ctx)
                        .select_only()
                        .column(tasks::Column::Id)
                        .filter(status_in(&CLAIMABLE))
                        .filter(assigned_to_user_or_groups(
                            self.db.get_database_backend(),
                            ctx,
                            user_id,
                        ))
                        .filter(active_user(ctx, user_id)),
                )
                .limit(1)
                .into_query();
                // SQLite has no row locks (its writers are serialised); sea-query leaves the clause out.
                // NO KEY UPDATE, the lock the UPDATE itself takes: FOR UPDATE would also collide with the
                // KEY SHARE locks that inserting history rows takes on their task.
                next.lock_with_behavior(LockType::NoKeyUpdate, LockBehavior::SkipLocked);
                let update = scope::update_many::<tasks::Entity>(ctx)
                    // `= (SELECT ...)`, evaluated once. Not `IN (SELECT ...)`: PostgreSQL may rescan that
                    // subquery for each row it updates, and each rescan skips the rows this statement has
                    // just claimed and yields the next, so one call would claim several tasks.
                    .filter(
                        Expr::col((tasks::Entity, tasks::Column::Id))
                            .eq(Expr::SubQuery(None, Box::new(next.into()))),
                    )
                    .filter(status_in(&CLAIMABLE))
                    .col_expr(tasks::Column::Status, Expr::value(TaskStatus::Claimed))
                    .col_expr(tasks::Column::ClaimedBy, Expr::value(user_id))
                    .col_expr(tasks::Column::UpdatedAt, Expr::value(now()));
                tenant_transaction(self.db, ctx, async |txn| {
                    if let Some(task) = update.exec_with_returning(txn).await?.pop() {
                        let details = json!({ "user_id": user_id });
                        record(txn, ctx, &task, TaskAction::Claim.history_label(), details).await?;
                        return Ok(Some(task));
                    }
                    let user = scope::find::<users::Entity>(ctx)
                        .filter(users::Column::Id.eq(user_id))
                        .one(txn)
                        .await?
                        .ok_or_else(|| Error::not_found("user", user_id))?;
                    if !user.status.is_active() {
                        return Err(Error::InvalidState {
                            entity: "user",
                            id: user_id.to_string(),
                            state: user.status.as_str().to_owned(),
                            action: "claim a task as",
                        });
                    }
                    Ok(None)
                })
                .await
            },
        )
        .await
    }

    /// Gives a claim back, by the user who holds it: the task is `ASSIGNED` again, to the same
    /// user or group, and claimable. (To take a task away from its claimer, escalate it.) A task
    /// claimed after an escalation goes back to `ASSIGNED` too; its history keeps the escalation.
    ///
    /// # Errors
    /// - [`Error::NotFound`];
    /// - [`Error::InvalidTransition`]: the task is not claimed;
    /// - [`Error::Forbidden`]: someone else claimed it;
    /// - [`Error::Db`].
    pub async fn release(
        &self,
        ctx: &RequestContext,
        id: Uuid,
        user_id: Uuid,
    ) -> Result<tasks::Model> {
        traced(
            span!("orkestra.tasks.release", ctx, task.id = %id, user.id = %user_id),
            async move {
                static WRITE: Template = Template::new();
                let change = Transition {
                    action: TaskAction::Release,
                    from: &[TaskStatus::Claimed],
                    who: Some(Who {
                        condition: |_, args| {
                            Condition::all().add(tasks::Column::ClaimedBy.eq(args.user))
                        },
                        reason: "the task is claimed by another user",
                    }),
                    details: json!({ "user_id": user_id }),
                    assign_to: None,
                    write: &WRITE,
                    set: |update, _| {
                        update
                            .col_expr(tasks::Column::Status, Expr::value(TaskStatus::Assigned))
                            .col_expr(tasks::Column::ClaimedBy, Expr::value(None::<Uuid>))
                    },
                };
                let args = Args {
                    user: user_id,
                    ..Args::new(id)
                };
                self.transition(ctx, args, change).await
            },
        )
        .await
    }

    /// Completes a task with `form_data`, by `user_id`: the user who claimed it, or (without a
    /// separate claim) the user it is assigned to directly, since nobody else could claim it from
    /// them. A group task must be claimed first, so that two members never both complete it.
    ///
    /// # Errors
    /// - [`Error::Validation`]: form data that is not a JSON object or exceeds the JSON limits;
    /// - [`Error::NotFound`];
    /// - [`Error::InvalidTransition`]: the task is neither claimed nor assigned;
    /// - [`Error::Forbidden`]: the user neither claimed it nor is its direct assignee;
    /// - [`Error::Db`].
    pub async fn complete(
        &self,
        ctx: &RequestContext,
        id: Uuid,
        user_id: Uuid,
        form_data: Value,
    ) -> Result<tasks::Model> {
        traced(span!("orkestra.tasks.complete", ctx, task.id = %id, user.id = %user_id), async move {
        validate::json_object("form_data", &form_data)?;
        static WRITE: Template = Template::new();
        let change = Transition {
            action: TaskAction::Complete,
            from: &[TaskStatus::Claimed, TaskStatus::Assigned],
            who: Some(Who {
                condition: |ctx, args| {
                    let holds_it = Condition::any()
                        .add(
                            Condition::all()
                                .add(tasks::Column::Status.eq(TaskStatus::Claimed))
                                .add(tasks::Column::ClaimedBy.eq(args.user)),
                        )
                        .add(
                            Condition::all()
                                .add(tasks::Column::Status.eq(TaskStatus::Assigned))
                                .add(tasks::Column::AssignedUserId.eq(args.user))
                                .add(tasks::Column::AssignedGroupId.is_null()),
                        );
                    active_user(ctx, args.user).add(holds_it)
                },
                reason: "the user neither claimed the task nor is its direct assignee, or is \
                         inactive",
            }),
            details: json!({ "user_id": user_id }),
            assign_to: None,
            write: &WRITE,
            set: |update, args| {
                update
                    .col_expr(tasks::Column::Status, Expr::value(TaskStatus::Completed))
                    .col_expr(tasks::Column::FormData, Expr::value(args.form_data.clone()))
                    .col_expr(tasks::Column::CompletedBy, Expr::value(args.user))
                    .col_expr(tasks::Column::CompletedAt, Expr::value(args.at))
            },
        };
        let args = Args {
            user: user_id,
            form_data: Some(form_data),
            ..Args::new(id)
        };
        self.transition(ctx, args, change).await
        })
        .await
    }

    /// Escalates an open task: it becomes `ESCALATED`, any claim is dropped, and it is reassigned
    /// to `to` when given (a supervisor, a higher tier). `reason` goes to the history row.
    ///
    /// # Errors
    /// - [`Error::Validation`]: an assignment naming nobody, a reason over the JSON limits;
    /// - [`Error::NotFound`]; [`Error::InvalidTransition`] when the task is final;
    /// - [`Error::Reference`] ([`ASSIGNEE_FKEY`], [`GROUP_FKEY`]): `to` is not the tenant's;
    /// - [`Error::InvalidState`] (entity `"group"`): `to` names an archived group;
    /// - [`Error::Db`].
    pub async fn escalate(
        &self,
        ctx: &RequestContext,
        id: Uuid,
        to: Option<AssignTo>,
        reason: Option<Value>,
    ) -> Result<tasks::Model> {
        let span = span!(
            "orkestra.tasks.escalate",
            ctx,
            task.id = %id,
            assignee.user.id = Empty,
            assignee.group.id = Empty,
        );
        trace::ids(&span, "assignee.user.id", to.and_then(|to| to.user_id));
        trace::ids(&span, "assignee.group.id", to.and_then(|to| to.group_id));
        traced(span, async move {
            if let Some(to) = &to {
                to.validate()?;
            }
            if let Some(reason) = &reason {
                validate::json("reason", reason)?;
            }
            // Two texts: with a reassignment and without.
            static WRITE: Template = Template::new();
            static WRITE_REASSIGNING: Template = Template::new();
            let change = Transition {
                action: TaskAction::Escalate,
                from: &TaskStatus::OPEN,
                who: None,
                details: json!({ "reason": reason, "to": to.map(|to| to.details()) }),
                assign_to: to,
                write: if to.is_some() {
                    &WRITE_REASSIGNING
                } else {
                    &WRITE
                },
                set: if to.is_some() {
                    |update, args| {
                        escalate_set(update)
                            .col_expr(tasks::Column::AssignedUserId, Expr::value(args.to_user))
                            .col_expr(tasks::Column::AssignedGroupId, Expr::value(args.to_group))
                    }
                } else {
                    |update, _| escalate_set(update)
                },
            };
            let args = Args {
                to_user: to.and_then(|to| to.user_id),
                to_group: to.and_then(|to| to.group_id),
                ..Args::new(id)
            };
            self.transition(ctx, args, change).await
        })
        .await
    }

    /// Marks an open task `EXPIRED` (its SLA passed).
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidTransition`] when the task is final; [`Error::Db`].
    pub async fn expire(&self, ctx: &RequestContext, id: Uuid) -> Result<tasks::Model> {
        traced(
            span!("orkestra.tasks.expire", ctx, task.id = %id),
            async move {
                static WRITE: Template = Template::new();
                let change = Transition {
                    action: TaskAction::Expire,
                    from: &TaskStatus::OPEN,
                    who: None,
                    details: json!({}),
                    assign_to: None,
                    write: &WRITE,
                    set: |update, _| {
                        update.col_expr(tasks::Column::Status, Expr::value(TaskStatus::Expired))
                    },
                };
                self.transition(ctx, Args::new(id), change).await
            },
        )
        .await
    }

    /// Cancels an open task; `reason` goes to the history row.
    ///
    /// # Errors
    /// [`Error::Validation`] for an empty, blank, over-long (over [`validate::DESCRIPTION_MAX`]
    /// characters) or NUL-holding reason; [`Error::NotFound`];
    /// [`Error::InvalidTransition`] when the task is final; [`Error::Db`].
    pub async fn cancel(
        &self,
        ctx: &RequestContext,
        id: Uuid,
        reason: Option<&str>,
    ) -> Result<tasks::Model> {
        traced(
            span!("orkestra.tasks.cancel", ctx, task.id = %id),
            async move {
                let reason = validate::optional_prose("reason", reason, validate::DESCRIPTION_MAX)?;
                static WRITE: Template = Template::new();
                let change = Transition {
                    action: TaskAction::Cancel,
                    from: &TaskStatus::OPEN,
                    who: None,
                    details: json!({ "reason": reason }),
                    assign_to: None,
                    write: &WRITE,
                    set: |update, _| {
                        update.col_expr(tasks::Column::Status, Expr::value(TaskStatus::Cancelled))
                    },
                };
                self.transition(ctx, Args::new(id), change).await
            },
        )
        .await
    }

    /// One guarded write and its history row, in one transaction. On a miss, reads the task to say
    /// why: missing, in a state the change does not leave, or (for changes that depend on the user)
    /// a user the change does not allow. When the task is back in an allowed state by the time it
    /// is read (another transaction changed it twice in between), the write is tried again, up to
    /// [`ATTEMPTS`] times in all.
    async fn transition(
        &self,
        ctx: &RequestContext,
        args: Args,
        change: Transition,
    ) -> Result<tasks::Model> {
        let id = args.id;
        let sentinels = Args::sentinels();
        let written = tenant_transaction(self.db, ctx, async |txn| {
            if let Some(group) = args.to_group {
                active_group(txn, ctx, group, "assign a task to").await?;
            }
            let backend = txn.get_database_backend();
            let mut current = None;
            for _ in 0..ATTEMPTS {
                let write = change.write.bind(
                    backend,
                    ctx,
                    |backend, ctx, args| change.write_statement(backend, ctx, args),
                    &sentinels,
                    &args,
                    args.bind(ctx, &sentinels),
                );
                if let Some(task) = tasks::Model::find_by_statement(write).one(txn).await? {
                    let details = change.details.clone();
                    record(txn, ctx, &task, change.action.history_label(), details).await?;
                    return Ok(task);
                }
                let task = scope::find::<tasks::Entity>(ctx)
                    .filter(tasks::Column::Id.eq(id))
                    .one(txn)
                    .await?
                    .ok_or_else(|| Error::not_found("task", id))?;
                if !change.from.contains(&task.status) {
                    return Err(Error::InvalidTransition {
                        task_id: id,
                        current: task.status,
                        action: change.action,
                    });
                }
                if let Some(who) = &change.who {
                    let allowed = scope::find::<tasks::Entity>(ctx)
                        .filter(tasks::Column::Id.eq(id))
                        .filter((who.condition)(ctx, &args))
                        .count(txn)
                        .await?;
                    if allowed == 0 {
                        return Err(Error::Forbidden {
                            task_id: id,
                            action: change.action,
                            reason: who.reason.to_owned(),
                        });
                    }
                }
                current = Some(task.status);
            }
            Err(Error::InvalidTransition {
                task_id: id,
                current: current.unwrap_or(TaskStatus::Created),
                action: change.action,
            })
        })
        .await;
        let assign_to = change.assign_to.unwrap_or(AssignTo {
            user_id: None,
            group_id: None,
        });
        self.name_reference(ctx, written, assign_to, None).await
    }

    /// Names the foreign key that refused a task write when the database did not
    /// ([`name_refusal`]): the assignee, the group, the conversation, in PostgreSQL's order, and
    /// else the tenant.
    async fn name_reference<T>(
        &self,
        ctx: &RequestContext,
        result: Result<T>,
        assign_to: AssignTo,
        conversation_id: Option<Uuid>,
    ) -> Result<T> {
        let lookup = async |txn: &Txn| {
            if let Some(user) = assign_to.user_id {
                let found = scope::find::<users::Entity>(ctx)
                    .filter(users::Column::Id.eq(user))
                    .count(txn)
                    .await?;
                if found == 0 {
                    return Ok(Some(ASSIGNEE_FKEY));
                }
            }
            if let Some(group) = assign_to.group_id {
                let found = scope::find::<groups::Entity>(ctx)
                    .filter(groups::Column::Id.eq(group))
                    .count(txn)
                    .await?;
                if found == 0 {
                    return Ok(Some(GROUP_FKEY));
                }
            }
            if let Some(conversation) = conversation_id {
                let found = scope::find::<conversations::Entity>(ctx)
                    .filter(conversations::Column::Id.eq(conversation))
                    .count(txn)
                    .await?;
                if found == 0 {
                    return Ok(Some(CONVERSATION_FKEY));
                }
            }
            Ok(None)
        };
        name_refusal(self.db, ctx, result, lookup, TENANT_FKEY).await
    }
}

/// A state change: the states it leaves, who may make it, what it writes, what history records.
struct Transition {
    action: TaskAction,
    from: &'static [TaskStatus],
    who: Option<Who>,
    details: Value,
    /// The assignment the change writes, for naming a refused reference.
    assign_to: Option<AssignTo>,
    /// The guarded write's text, built once ([`Template`]).
    write: &'static Template,
    /// The columns the change sets, from the call's values.
    set: fn(UpdateMany<tasks::Entity>, &Args) -> UpdateMany<tasks::Entity>,
}

impl Transition {
    /// The guarded `UPDATE ... RETURNING` of the change: the task, in a state the change leaves,
    /// for a user it allows.
    fn write_statement(&self, backend: DbBackend, ctx: &RequestContext, args: &Args) -> Statement {
        let mut update = scope::update_many::<tasks::Entity>(ctx)
            .filter(tasks::Column::Id.eq(args.id))
            .filter(tasks::Column::Status.is_in(self.from.iter().cloned()));
        if let Some(who) = &self.who {
            update = update.filter((who.condition)(ctx, args));
        }
        // Set here so that RETURNING shows it on SQLite too (PostgreSQL's trigger moves it on).
        let update =
            (self.set)(update, args).col_expr(tasks::Column::UpdatedAt, Expr::value(args.at));
        let mut query = update.into_query();
        query.returning(returning_all::<tasks::Entity>(backend));
        backend.build(&query)
    }
}

/// The values a change's write depends on besides the tenant: the call's, or the sentinels its
/// text is built from.
#[derive(Debug, Clone, PartialEq)]
struct Args {
    id: Uuid,
    /// The acting user (claim, release, complete).
    user: Uuid,
    /// `updated_at`, and `completed_at` of a completion.
    at: DateTime<FixedOffset>,
    form_data: Option<Value>,
    /// The assignment written (assign, escalate with a reassignment).
    to_user: Option<Uuid>,
    to_group: Option<Uuid>,
}

impl Args {
    /// The values of a change of task `id`, now, by nobody in particular.
    fn new(id: Uuid) -> Args {
        Args {
            id,
            user: Uuid::nil(),
            at: now(),
            form_data: None,
            to_user: None,
            to_group: None,
        }
    }

    fn sentinels() -> Args {
        Args {
            id: template::id(1),
            user: template::id(2),
            at: template::time(1),
            form_data: Some(template::json(1)),
            to_user: Some(template::id(3)),
            to_group: Some(template::id(4)),
        }
    }

    /// Each sentinel with the value of this call in its place.
    fn bind(&self, ctx: &RequestContext, sentinels: &Args) -> [(SeaValue, SeaValue); 7] {
        [
            (template::id(0).into(), ctx.tenant_id().into()),
            (sentinels.id.into(), self.id.into()),
            (sentinels.user.into(), self.user.into()),
            (sentinels.at.into(), self.at.into()),
            (
                sentinels.form_data.clone().into(),
                self.form_data.clone().into(),
            ),
            (sentinels.to_user.into(), self.to_user.into()),
            (sentinels.to_group.into(), self.to_group.into()),
        ]
    }
}

/// A condition on the user beyond the task's state, and how to explain its failure.
struct Who {
    condition: fn(&RequestContext, &Args) -> Condition,
    reason: &'static str,
}

/// An escalation's columns, before any reassignment.
fn escalate_set(update: UpdateMany<tasks::Entity>) -> UpdateMany<tasks::Entity> {
    update
        .col_expr(tasks::Column::Status, Expr::value(TaskStatus::Escalated))
        .col_expr(tasks::Column::ClaimedBy, Expr::value(None::<Uuid>))
}

/// `tasks.status IN ('A', 'B', ...)`, the labels written into the statement as literals.
///
/// For the filters of lists, which PostgreSQL evaluates on every row it examines. A bound label
/// needs `CAST($n AS task_status)` (the driver sends it as text), an I/O conversion that PostgreSQL
/// does not fold into a constant (the enum's input function is only stable), so it runs again for
/// every row and label: on an inbox of a few thousand tasks that doubled the statement's time. A
/// literal is typed once, when the statement is parsed. The labels are this crate's constants,
/// never input.
pub(crate) fn status_in(statuses: &[TaskStatus]) -> Expr {
    Expr::col((tasks::Entity, tasks::Column::Status)).is_in(
        statuses
            .iter()
            .map(|status| Expr::Constant(status.as_str().into())),
    )
}

/// The ids of the active groups `user_id` belongs to, as a subquery: an archived group's tasks are
/// no longer offered to its members.
fn groups_of(ctx: &RequestContext, user_id: Uuid) -> SelectStatement {
    // The label as a literal, for the reason `status_in` gives.
    let active = scope::find::<groups::Entity>(ctx)
        .select_only()
        .expr(Expr::val(1))
        .filter(
            Expr::col((groups::Entity, groups::Column::Id))
                .equals((group_members::Entity, group_members::Column::GroupId)),
        )
        .filter(
            Expr::col((groups::Entity, groups::Column::Status))
                .eq(Expr::Constant(GroupStatus::Active.as_str().into())),
        )
        .into_query();
    scope::find::<group_members::Entity>(ctx)
        .select_only()
        .column(group_members::Column::GroupId)
        .filter(group_members::Column::UserId.eq(user_id))
        .filter(Expr::exists(active))
        .into_query()
}

/// `user_id` is an active user of the tenant.
fn active_user(ctx: &RequestContext, user_id: Uuid) -> Condition {
    let active = scope::find::<users::Entity>(ctx)
        .select_only()
        .column(users::Column::Id)
        .filter(users::Column::Id.eq(user_id))
        .filter(users::Column::Status.eq(UserStatus::Active))
        .into_query();
    Condition::all().add(Expr::val(user_id).in_subquery(active))
}

/// `user_id` is active and is the task's assignee or a member of its group.
fn may_claim(ctx: &RequestContext, user_id: Uuid) -> Condition {
    let groups_of_user = groups_of(ctx, user_id);
    active_user(ctx, user_id).add(
        Condition::any()
            .add(tasks::Column::AssignedUserId.eq(user_id))
            .add(tasks::Column::AssignedGroupId.in_subquery(groups_of_user)),
    )
}

/// Rows after `cursor` in `(sla_deadline NULLS LAST, created_at, id)` order.
fn after_inbox_cursor(cursor: &After) -> Condition {
    let later_in_same_deadline = Expr::tuple([
        Expr::col((tasks::Entity, tasks::Column::CreatedAt)),
        Expr::col((tasks::Entity, tasks::Column::Id)),
    ])
    .gt(Expr::tuple([
        Expr::value(cursor.created_at),
        Expr::value(cursor.id),
    ]));
    match cursor.deadline {
        Some(deadline) => Condition::any()
            .add(tasks::Column::SlaDeadline.gt(deadline))
            .add(tasks::Column::SlaDeadline.is_null())
            .add(
                Condition::all()
                    .add(tasks::Column::SlaDeadline.eq(deadline))
                    .add(later_in_same_deadline),
            ),
        None => Condition::all()
            .add(tasks::Column::SlaDeadline.is_null())
            .add(later_in_same_deadline),
    }
}

/// Writes a history row for `task`, with the context's actor.
async fn record(
    db: &impl ConnectionTrait,
    ctx: &RequestContext,
    task: &tasks::Model,
    action: &str,
    details: Value,
) -> Result<()> {
    static INSERT: Template = Template::new();
    let row = HistoryRow {
        id: Uuid::now_v7(),
        task_id: task.id,
        action: action.to_owned(),
        actor_type: ctx.actor().kind().as_str().to_owned(),
        actor_id: ctx.actor().id().to_owned(),
        details,
        at: now(),
    };
    let sentinels = HistoryRow {
        id: template::id(1),
        task_id: template::id(2),
        action: template::text(1),
        actor_type: template::text(2),
        actor_id: template::text(3),
        details: template::json(1),
        at: template::time(1),
    };
    let bind = [
        (template::id(0).into(), ctx.tenant_id().into()),
        (sentinels.id.into(), row.id.into()),
        (sentinels.task_id.into(), row.task_id.into()),
        (sentinels.action.clone().into(), row.action.clone().into()),
        (
            sentinels.actor_type.clone().into(),
            row.actor_type.clone().into(),
        ),
        (
            sentinels.actor_id.clone().into(),
            row.actor_id.clone().into(),
        ),
        (sentinels.details.clone().into(), row.details.clone().into()),
        (sentinels.at.into(), row.at.into()),
    ];
    let insert = INSERT.bind(
        db.get_database_backend(),
        ctx,
        |backend, ctx, row| row.insert_statement(backend, ctx.tenant_id()),
        &sentinels,
        &row,
        bind,
    );
    #[allow(clippy::disallowed_methods)]
    // An insert, its tenant the context's (as scope.rs allows).
    db.execute_raw(insert).await?;
    Ok(())
}

/// The values a page of tasks depends on besides the tenant: the call's, or the sentinels its
/// text is built from.
#[derive(Debug, Clone, PartialEq)]
struct PageArgs {
    /// Whose inbox.
    user: Uuid,
    /// The time an overdue page is overdue at.
    at: Option<DateTime<FixedOffset>>,
    /// Rows to fetch: the page and one more.
    limit: u64,
    after: Option<After>,
}

/// A cursor's values (UTC): the last row of the previous page.
#[derive(Debug, Clone, PartialEq)]
struct After {
    deadline: Option<DateTime<FixedOffset>>,
    created_at: DateTime<FixedOffset>,
    id: Uuid,
}

impl PageArgs {
    /// The sentinels of this call's shape (a cursor or none, with a deadline or without).
    fn sentinels(&self) -> PageArgs {
        PageArgs {
            user: template::id(1),
            at: Some(template::time(1)),
            // No page is this long: limits stop at a few hundred.
            limit: 4_000_000_001,
            after: self.after.as_ref().map(|after| After {
                deadline: after.deadline.map(|_| template::time(2)),
                created_at: template::time(3),
                id: template::id(2),
            }),
        }
    }

    /// The statement `build` makes for this call, from `text` (see [`Template`]).
    fn bind_to(
        &self,
        text: &Template,
        backend: DbBackend,
        ctx: &RequestContext,
        build: fn(DbBackend, &RequestContext, &PageArgs) -> Statement,
    ) -> Statement {
        let sentinels = self.sentinels();
        let (s, after) = (&sentinels, self.after.as_ref());
        let s_after = s.after.as_ref();
        let bind = [
            (template::id(0).into(), ctx.tenant_id().into()),
            (s.user.into(), self.user.into()),
            (s.at.into(), self.at.into()),
            (s.limit.into(), self.limit.into()),
            (
                s_after.and_then(|a| a.deadline).into(),
                after.and_then(|a| a.deadline).into(),
            ),
            (
                s_after.map(|a| a.created_at).into(),
                after.map(|a| a.created_at).into(),
            ),
            (s_after.map(|a| a.id).into(), after.map(|a| a.id).into()),
        ];
        text.bind(backend, ctx, build, &sentinels, self, bind)
    }
}

/// A page of `args.user`'s inbox (see [`TaskRepository::find_pending_for_user`]).
fn inbox_statement(backend: DbBackend, ctx: &RequestContext, args: &PageArgs) -> Statement {
    let mut query = scope::find::<tasks::Entity>(ctx)
        .filter(status_in(&PENDING))
        .filter(assigned_to_user_or_groups(backend, ctx, args.user));
    if let Some(after) = &args.after {
        query = query.filter(after_inbox_cursor(after));
    }
    inbox_order(query).limit(args.limit).build(backend)
}

/// A page of the tasks overdue at `args.at` (see [`TaskRepository::overdue`]).
fn overdue_statement(backend: DbBackend, ctx: &RequestContext, args: &PageArgs) -> Statement {
    let mut query = scope::find::<tasks::Entity>(ctx)
        .filter(status_in(&TaskStatus::OPEN))
        .filter(tasks::Column::SlaDeadline.lt(args.at));
    if let Some(after) = &args.after {
        query = query.filter(
            Expr::tuple([
                Expr::col((tasks::Entity, tasks::Column::SlaDeadline)),
                Expr::col((tasks::Entity, tasks::Column::Id)),
            ])
            .gt(Expr::tuple([
                Expr::value(after.deadline),
                Expr::value(after.id),
            ])),
        );
    }
    query
        .order_by_asc(tasks::Column::SlaDeadline)
        .order_by_asc(tasks::Column::Id)
        .limit(args.limit)
        .build(backend)
}

/// A new task's row, as [`TaskRepository::create`] inserts it.
#[derive(Debug, Clone, PartialEq)]
struct NewRow {
    id: Uuid,
    workflow_id: String,
    workflow_run_id: String,
    title: String,
    description: Option<String>,
    form_schema: Value,
    assigned_user_id: Option<Uuid>,
    assigned_group_id: Option<Uuid>,
    context: Value,
    conversation_id: Option<Uuid>,
    sla_deadline: Option<DateTime<FixedOffset>>,
    sla_config: Option<Value>,
    status: TaskStatus,
    at: DateTime<FixedOffset>,
}

impl NewRow {
    fn sentinels(status: TaskStatus) -> NewRow {
        NewRow {
            id: template::id(1),
            workflow_id: template::text(1),
            workflow_run_id: template::text(2),
            title: template::text(3),
            description: Some(template::text(4)),
            form_schema: template::json(1),
            assigned_user_id: Some(template::id(2)),
            assigned_group_id: Some(template::id(3)),
            context: template::json(2),
            conversation_id: Some(template::id(4)),
            sla_deadline: Some(template::time(1)),
            sla_config: Some(template::json(3)),
            status,
            at: template::time(2),
        }
    }

    /// Each sentinel with this row's value in its place.
    fn bind(&self, ctx: &RequestContext, sentinels: &NewRow) -> [(SeaValue, SeaValue); 14] {
        let s = sentinels;
        [
            (template::id(0).into(), ctx.tenant_id().into()),
            (s.id.into(), self.id.into()),
            (
                s.workflow_id.clone().into(),
                self.workflow_id.clone().into(),
            ),
            (
                s.workflow_run_id.clone().into(),
                self.workflow_run_id.clone().into(),
            ),
            (s.title.clone().into(), self.title.clone().into()),
            (
                s.description.clone().into(),
                self.description.clone().into(),
            ),
            (
                s.form_schema.clone().into(),
                self.form_schema.clone().into(),
            ),
            (s.assigned_user_id.into(), self.assigned_user_id.into()),
            (s.assigned_group_id.into(), self.assigned_group_id.into()),
            (s.context.clone().into(), self.context.clone().into()),
            (s.conversation_id.into(), self.conversation_id.into()),
            (s.sla_deadline.into(), self.sla_deadline.into()),
            (s.sla_config.clone().into(), self.sla_config.clone().into()),
            (s.at.into(), self.at.into()),
        ]
    }

    /// `INSERT ... RETURNING` every column.
    fn insert_statement(&self, backend: DbBackend, ctx: &RequestContext) -> Statement {
        let model = tasks::ActiveModel {
            id: Set(self.id),
            tenant_id: Set(ctx.tenant_id()),
            workflow_id: Set(self.workflow_id.clone()),
            workflow_run_id: Set(self.workflow_run_id.clone()),
            title: Set(self.title.clone()),
            description: Set(self.description.clone()),
            form_schema: Set(self.form_schema.clone()),
            form_data: Set(None),
            assigned_user_id: Set(self.assigned_user_id),
            assigned_group_id: Set(self.assigned_group_id),
            claimed_by: Set(None),
            context: Set(self.context.clone()),
            conversation_id: Set(self.conversation_id),
            sla_deadline: Set(self.sla_deadline),
            sla_config: Set(self.sla_config.clone()),
            status: Set(self.status.clone()),
            created_at: Set(self.at),
            updated_at: Set(self.at),
            completed_at: Set(None),
            completed_by: Set(None),
        };
        let mut query = tasks::Entity::insert(model).into_query();
        query.returning(returning_all::<tasks::Entity>(backend));
        backend.build(&query)
    }
}

/// A `task_history` row, as [`record`] writes it.
#[derive(Debug, Clone, PartialEq)]
struct HistoryRow {
    id: Uuid,
    task_id: Uuid,
    action: String,
    actor_type: String,
    actor_id: String,
    details: Value,
    at: DateTime<FixedOffset>,
}

impl HistoryRow {
    fn insert_statement(&self, backend: DbBackend, tenant: Uuid) -> Statement {
        let row = task_history::ActiveModel {
            id: Set(self.id),
            tenant_id: Set(tenant),
            task_id: Set(self.task_id),
            action: Set(self.action.clone()),
            actor_type: Set(self.actor_type.clone()),
            actor_id: Set(self.actor_id.clone()),
            details: Set(Some(self.details.clone())),
            created_at: Set(self.at),
        };
        backend.build(&task_history::Entity::insert(row).into_query())
    }
}

#[cfg(test)]
mod tests {
    //! The statements each task operation sends, on a mock PostgreSQL connection: every one that
    //! touches a tenant-owned table names the context's tenant.

    use std::collections::BTreeMap;

    use sea_orm::{
        DbBackend, IdenStatic, Iterable, MockDatabase, MockExecResult, ModelTrait, Statement, Value,
    };

    use super::*;
    use crate::Actor;
    use crate::testing::{bound, committed, one_each, sent, statements, tenant_calls};

    fn ctx() -> RequestContext {
        RequestContext::new(
            Uuid::now_v7(),
            Actor::user(Uuid::now_v7()).expect("a non-nil user"),
        )
        .expect("context")
    }

    fn task(ctx: &RequestContext, status: TaskStatus) -> tasks::Model {
        let at = now();
        tasks::Model {
            id: Uuid::now_v7(),
            tenant_id: ctx.tenant_id(),
            workflow_id: "wf".into(),
            workflow_run_id: "run".into(),
            title: "T".into(),
            description: None,
            form_schema: json!({}),
            form_data: None,
            assigned_user_id: None,
            assigned_group_id: None,
            claimed_by: None,
            context: json!({}),
            conversation_id: None,
            sla_deadline: None,
            sla_config: None,
            status,
            created_at: at,
            updated_at: at,
            completed_at: None,
            completed_by: None,
        }
    }

    /// A mock row of `task`; sea-orm 2.0.4's mock reads a native enum only from a string value.
    fn row(task: &tasks::Model) -> BTreeMap<String, Value> {
        let mut row: BTreeMap<String, Value> = tasks::Column::iter()
            .map(|column| (column.as_str().to_owned(), task.get(column)))
            .collect();
        row.insert("status".into(), task.status.as_str().into());
        row
    }

    fn exec(rows: u64) -> MockExecResult {
        MockExecResult {
            last_insert_id: 0,
            rows_affected: rows,
        }
    }

    /// Every statement is confined to the context's tenant, subqueries included.
    #[track_caller]
    fn assert_tenant_everywhere(statements: &[Statement], ctx: &RequestContext) {
        assert!(!statements.is_empty());
        for statement in statements {
            crate::testing::assert_scoped(statement, ctx.tenant_id());
        }
    }

    #[tokio::test]
    async fn create_inserts_the_task_and_its_history_for_the_tenant() {
        let ctx = ctx();
        let created = task(&ctx, TaskStatus::Created);
        let db = MockDatabase::new(DbBackend::Postgres)
            .append_query_results([vec![row(&created)]])
            .append_exec_results([bound(), exec(1)])
            .into_connection();
        let result = TaskRepository::new(&db)
            .create(&ctx, NewTask::new("wf", "run", "T", json!({})))
            .await;
        assert_eq!(result.ok(), Some(created));
        // One transaction: the task and its history, or neither.
        let calls = tenant_calls(db, ctx.tenant_id());
        assert_eq!(committed(&calls), [true]);
        let statements = sent(&calls);
        assert_eq!(statements.len(), 2);
        assert!(statements[0].sql.starts_with(r#"INSERT INTO "tasks""#));
        assert!(
            statements[1]
                .sql
                .starts_with(r#"INSERT INTO "task_history""#)
        );
        assert_tenant_everywhere(&statements, &ctx);
    }

    #[tokio::test]
    async fn refused_arguments_send_nothing() {
        let ctx = ctx();
        let db = MockDatabase::new(DbBackend::Postgres).into_connection();
        let repo = TaskRepository::new(&db);
        let (id, user) = (Uuid::now_v7(), Uuid::now_v7());
        let nobody = AssignTo {
            user_id: None,
            group_id: None,
        };
        let refused = |result: Result<()>, field: &str| {
            assert!(
                matches!(&result, Err(Error::Validation { field: f, .. }) if *f == field),
                "{field}: {result:?}"
            );
        };
        let task = || NewTask::new("wf", "run", "T", json!({}));
        for (new, field) in [
            (NewTask::new("wf", "run", " ", json!({})), "title"),
            (NewTask::new("wf", "run", "T", json!([])), "form_schema"),
            (task().assigned_to(nobody), "assign_to"),
            (task().with_sla(now(), json!(null)), "sla.config"),
        ] {
            refused(repo.create(&ctx, new).await.map(drop), field);
        }
        let page = PageRequest::first(0);
        let run = repo.list_by_workflow_run(&ctx, "", "run", &page).await;
        refused(run.map(drop), "workflow_id");
        let status = repo.list_by_status(&ctx, TaskStatus::Created, &page).await;
        refused(status.map(drop), "limit");
        let inbox = repo
            .find_pending_for_user(&ctx, user, &PageRequest::first(0))
            .await;
        refused(inbox.map(drop), "limit");
        let overdue = repo.overdue(&ctx, now(), &PageRequest::first(501)).await;
        refused(overdue.map(drop), "limit");
        refused(repo.assign(&ctx, id, nobody).await.map(drop), "assign_to");
        let complete = repo.complete(&ctx, id, user, json!("done")).await;
        refused(complete.map(drop), "form_data");
        let escalate = repo.escalate(&ctx, id, Some(nobody), None).await;
        refused(escalate.map(drop), "assign_to");
        refused(
            repo.cancel(&ctx, id, Some("a\0b")).await.map(drop),
            "reason",
        );
        assert!(
            statements(db).is_empty(),
            "a refused call reached the database"
        );
    }

    #[tokio::test]
    async fn reads_filter_on_the_tenant() {
        let ctx = ctx();
        let found = task(&ctx, TaskStatus::Assigned);
        let db = MockDatabase::new(DbBackend::Postgres)
            .append_query_results([
                vec![row(&found)],
                vec![row(&found)],
                vec![row(&found)],
                vec![row(&found)],
                vec![],
            ])
            .append_query_results([Vec::<BTreeMap<String, Value>>::new()])
            .append_exec_results(vec![bound(); 6])
            .into_connection();
        let repo = TaskRepository::new(&db);
        let page = PageRequest::first(10);
        repo.find_by_id(&ctx, found.id).await.expect("find");
        repo.find_pending_for_user(&ctx, Uuid::now_v7(), &PageRequest::first(10))
            .await
            .expect("inbox");
        repo.list_by_workflow_run(&ctx, "wf", "run", &page)
            .await
            .expect("run");
        repo.list_by_status(&ctx, TaskStatus::Assigned, &page)
            .await
            .expect("status");
        repo.overdue(&ctx, now(), &PageRequest::first(10))
            .await
            .expect("overdue");
        repo.history(&ctx, found.id).await.expect("history");
        let calls = tenant_calls(db, ctx.tenant_id());
        assert_eq!(committed(&calls), [true; 6]);
        let statements = one_each(&calls);
        assert!(statements[1].sql.contains(r#""group_members""#));
        assert!(statements[1].sql.contains("NULLS LAST"));
        // The statuses are literals, typed once by PostgreSQL, not a cast per row.
        assert!(
            statements[1]
                .sql
                .contains(r#""tasks"."status" IN ('CREATED', 'ASSIGNED', 'ESCALATED')"#),
            "{}",
            statements[1].sql
        );
        assert!(
            statements[4]
                .sql
                .contains(r#""tasks"."status" IN ('CREATED', 'ASSIGNED', 'CLAIMED', 'ESCALATED')"#),
            "{}",
            statements[4].sql
        );
        assert_tenant_everywhere(&statements, &ctx);
    }

    #[tokio::test]
    async fn a_transition_is_one_guarded_update_and_one_history_insert() {
        let ctx = ctx();
        let user = Uuid::now_v7();
        let mut claimed = task(&ctx, TaskStatus::Claimed);
        claimed.claimed_by = Some(user);
        let db = MockDatabase::new(DbBackend::Postgres)
            .append_query_results([vec![row(&claimed)]])
            .append_exec_results([bound(), exec(1)])
            .into_connection();
        let result = TaskRepository::new(&db).claim(&ctx, claimed.id, user).await;
        assert_eq!(result.ok(), Some(claimed));
        let calls = tenant_calls(db, ctx.tenant_id());
        assert_eq!(committed(&calls), [true]);
        let statements = sent(&calls);
        assert_eq!(statements.len(), 2);
        let update = &statements[0].sql;
        assert!(update.starts_with(r#"UPDATE "tasks" SET"#), "{update}");
        assert!(update.contains(r#""status" IN"#), "{update}");
        assert!(update.contains("RETURNING"), "{update}");
        assert!(update.contains(r#""group_members""#), "{update}");
        assert!(update.contains(r#""users""#), "{update}");
        assert_tenant_everywhere(&statements, &ctx);
    }

    #[tokio::test]
    async fn a_refused_transition_reads_the_task_once_and_writes_nothing() {
        let ctx = ctx();
        let done = task(&ctx, TaskStatus::Completed);
        let db = MockDatabase::new(DbBackend::Postgres)
            .append_query_results([Vec::<BTreeMap<String, Value>>::new(), vec![row(&done)]])
            .append_exec_results([bound()])
            .into_connection();
        let result = TaskRepository::new(&db).cancel(&ctx, done.id, None).await;
        assert!(matches!(
            result,
            Err(Error::InvalidTransition {
                current: TaskStatus::Completed,
                action: TaskAction::Cancel,
                ..
            })
        ));
        let calls = tenant_calls(db, ctx.tenant_id());
        assert_eq!(committed(&calls), [false]);
        let statements = sent(&calls);
        assert_eq!(statements.len(), 2);
        assert!(statements[0].sql.starts_with("UPDATE"));
        assert!(statements[1].sql.starts_with("SELECT"));
        assert!(!statements.iter().any(|s| s.sql.contains("task_history")));
        assert_tenant_everywhere(&statements, &ctx);
    }

    #[tokio::test]
    async fn every_transition_names_the_tenant() {
        let ctx = ctx();
        let user = Uuid::now_v7();
        let updated = task(&ctx, TaskStatus::Assigned);
        let mut db = MockDatabase::new(DbBackend::Postgres);
        for _ in 0..7 {
            db = db
                .append_query_results([vec![row(&updated)]])
                .append_exec_results([bound(), exec(1)]);
        }
        let db = db.into_connection();
        let repo = TaskRepository::new(&db);
        let id = updated.id;
        repo.assign(&ctx, id, AssignTo::user(user))
            .await
            .expect("assign");
        repo.claim(&ctx, id, user).await.expect("claim");
        repo.release(&ctx, id, user).await.expect("release");
        repo.complete(&ctx, id, user, json!({}))
            .await
            .expect("complete");
        repo.escalate(&ctx, id, None, None).await.expect("escalate");
        repo.expire(&ctx, id).await.expect("expire");
        repo.cancel(&ctx, id, None).await.expect("cancel");
        let calls = tenant_calls(db, ctx.tenant_id());
        assert_eq!(committed(&calls), [true; 7]);
        // Per transition: the guarded update and its history row.
        assert!(
            calls.iter().all(|call| call.statements.len() == 2),
            "{calls:?}"
        );
        let statements = sent(&calls);
        assert_tenant_everywhere(&statements, &ctx);
    }

    #[test]
    fn the_inbox_cursor_orders_deadlines_before_none() {
        let cursor = After {
            deadline: None,
            created_at: now(),
            id: Uuid::now_v7(),
        };
        let sql = scope::find::<tasks::Entity>(&ctx())
            .filter(after_inbox_cursor(&cursor))
            .build(DbBackend::Postgres)
            .to_string();
        assert!(sql.contains(r#""sla_deadline" IS NULL"#), "{sql}");
    }
}
