//! The task repository: creation, the inbox, every state change and its history, lists, overdue
//! pages, atomicity, composed transactions, isolation between tenants, and (on PostgreSQL) racing
//! claimers.

use chrono::{Duration, FixedOffset, Utc};
use orkestra_entity::{sea_orm_active_enums::TaskStatus, task_history, tasks};
use orkestra_repository::{
    Actor, AssignTo, Error, GroupRepository, NewGroup, NewTask, NewUser, PageRequest,
    RequestContext, TaskAction, TaskRepository, UserRepository, tasks::ASSIGNEE_FKEY,
    tasks::CONVERSATION_FKEY, tasks::GROUP_FKEY, transaction,
};
use orkestra_tests::{TestDb, fixtures};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait};
use serde_json::json;
use uuid::Uuid;

/// One tenant's cast: an admin context, two users of a group, an outsider, a group and a
/// conversation.
struct Tenant {
    ctx: RequestContext,
    ada: Uuid,
    grace: Uuid,
    outsider: Uuid,
    group: Uuid,
    other_group: Uuid,
    conversation: Uuid,
}

async fn tenant(db: &DatabaseConnection, slug: &str) -> anyhow::Result<Tenant> {
    let tenant_id = fixtures::tenant(db, slug).await?.id;
    let ctx = RequestContext::new(tenant_id, Actor::system("workflow-engine")?)?;
    let users = UserRepository::new(db);
    let ada = users
        .create(&ctx, NewUser::new("ada@example.com", "Ada"))
        .await?
        .id;
    let grace = users
        .create(&ctx, NewUser::new("grace@example.com", "Grace"))
        .await?
        .id;
    let outsider = users
        .create(&ctx, NewUser::new("linus@example.com", "Linus"))
        .await?
        .id;
    let groups = GroupRepository::new(db);
    let group = groups
        .create(&ctx, NewGroup::new("Reviewers", "reviewers"))
        .await?
        .id;
    let other_group = groups
        .create(&ctx, NewGroup::new("Finance", "finance"))
        .await?
        .id;
    groups.add_member(&ctx, group, ada).await?;
    groups.add_member(&ctx, group, grace).await?;
    groups.add_member(&ctx, other_group, outsider).await?;
    let conversation = fixtures::conversation(db, tenant_id).await?.id;
    Ok(Tenant {
        ctx,
        ada,
        grace,
        outsider,
        group,
        other_group,
        conversation,
    })
}

fn new_task(title: &str) -> NewTask {
    NewTask::new("wf-invoice", "run-1", title, json!({"type": "object"}))
}

fn as_user(t: &Tenant, user: Uuid) -> RequestContext {
    RequestContext::new(
        t.ctx.tenant_id(),
        Actor::user(user).expect("a non-nil user"),
    )
    .expect("valid context")
}

async fn counts(db: &impl ConnectionTrait) -> anyhow::Result<(u64, u64)> {
    Ok((
        tasks::Entity::find().count(db).await?,
        task_history::Entity::find().count(db).await?,
    ))
}

#[track_caller]
fn assert_invalid_transition<T: std::fmt::Debug>(
    result: Result<T, Error>,
    expected: TaskStatus,
    expected_action: TaskAction,
) {
    match result {
        Err(Error::InvalidTransition {
            current, action, ..
        }) => {
            assert_eq!(current, expected);
            assert_eq!(action, expected_action);
        }
        other => panic!("expected InvalidTransition({expected}), got {other:?}"),
    }
}

#[track_caller]
fn assert_forbidden<T: std::fmt::Debug>(result: Result<T, Error>) {
    assert!(
        matches!(result, Err(Error::Forbidden { .. })),
        "expected Forbidden, got {result:?}"
    );
}

#[track_caller]
fn assert_reference<T: std::fmt::Debug>(result: Result<T, Error>, expected: &str) {
    match result {
        Err(Error::Reference { constraint }) => assert_eq!(constraint, expected),
        other => panic!("expected Reference({expected}), got {other:?}"),
    }
}

#[tokio::test]
async fn create_starts_assigned_or_created_and_writes_its_history() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let t = tenant(db.conn(), "acme").await?;
    let repo = TaskRepository::new(db.conn());

    let deadline = (Utc::now() + Duration::hours(4)).fixed_offset();
    let direct = repo
        .create(
            &t.ctx,
            new_task("Approve")
                .assigned_to(AssignTo::user(t.ada))
                .with_sla(deadline, json!({"escalate_to": "finance"}))
                .in_conversation(t.conversation),
        )
        .await?;
    assert_eq!(direct.status, TaskStatus::Assigned);
    assert_eq!(direct.assigned_user_id, Some(t.ada));
    assert_eq!(direct.conversation_id, Some(t.conversation));
    assert_eq!(direct.sla_config, Some(json!({"escalate_to": "finance"})));
    assert_eq!(direct.context, json!({}));
    assert_eq!(direct.tenant_id, t.ctx.tenant_id());

    let unassigned = repo.create(&t.ctx, new_task("Triage")).await?;
    assert_eq!(unassigned.status, TaskStatus::Created);
    assert_eq!(unassigned.assigned_user_id, None);

    let stored = repo.find_by_id(&t.ctx, direct.id).await?.expect("stored");
    assert_eq!(stored, direct);

    let history = repo.history(&t.ctx, direct.id).await?;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].action, "created");
    assert_eq!(history[0].actor_type, "system");
    assert_eq!(history[0].actor_id, "workflow-engine");
    assert_eq!(
        history[0].details,
        Some(json!({"status": "ASSIGNED", "assigned_user_id": t.ada, "assigned_group_id": null}))
    );
    Ok(())
}

#[tokio::test]
async fn create_refuses_bad_input_and_writes_nothing() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let t = tenant(db.conn(), "acme").await?;
    let repo = TaskRepository::new(db.conn());
    let before = counts(db.conn()).await?;

    let cases: Vec<(&str, NewTask)> = vec![
        ("title", new_task("")),
        ("title", new_task("   ")),
        ("title", new_task("a\0b")),
        ("title", new_task(&"x".repeat(501))),
        ("workflow_id", NewTask::new("", "run", "T", json!({}))),
        (
            "form_schema",
            NewTask::new("wf", "run", "T", json!(["not", "an", "object"])),
        ),
        (
            "form_schema",
            NewTask::new("wf", "run", "T", json!({"k": "nul \u{0} inside"})),
        ),
        ("context", {
            let mut task = new_task("T");
            task.context = Some(json!(42));
            task
        }),
        (
            "sla.config",
            new_task("T").with_sla(Utc::now().fixed_offset(), json!("soon")),
        ),
        (
            "assign_to",
            new_task("T").assigned_to(AssignTo {
                user_id: None,
                group_id: None,
            }),
        ),
    ];
    for (field, task) in cases {
        match repo.create(&t.ctx, task).await {
            Err(Error::Validation { field: actual, .. }) => assert_eq!(actual, field),
            other => panic!("{field}: expected a validation error, got {other:?}"),
        }
    }
    // Exactly at the limit is accepted.
    repo.create(&t.ctx, new_task(&"x".repeat(500))).await?;
    assert_eq!(counts(db.conn()).await?, (before.0 + 1, before.1 + 1));
    Ok(())
}

#[tokio::test]
async fn create_naming_another_tenants_rows_is_refused_with_the_key_that_refused_it()
-> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let a = tenant(db.conn(), "acme").await?;
    let b = tenant(db.conn(), "globex").await?;
    let repo = TaskRepository::new(db.conn());
    let before = counts(db.conn()).await?;

    assert_reference(
        repo.create(&a.ctx, new_task("T").assigned_to(AssignTo::user(b.ada)))
            .await,
        ASSIGNEE_FKEY,
    );
    assert_reference(
        repo.create(&a.ctx, new_task("T").assigned_to(AssignTo::group(b.group)))
            .await,
        GROUP_FKEY,
    );
    assert_reference(
        repo.create(&a.ctx, new_task("T").in_conversation(b.conversation))
            .await,
        CONVERSATION_FKEY,
    );
    assert_reference(
        repo.create(
            &a.ctx,
            new_task("T").assigned_to(AssignTo::user(Uuid::now_v7())),
        )
        .await,
        ASSIGNEE_FKEY,
    );
    assert_eq!(counts(db.conn()).await?, before, "a refused create wrote");
    Ok(())
}

#[tokio::test]
async fn the_inbox_holds_the_users_and_their_groups_pending_tasks_soonest_deadline_first()
-> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let t = tenant(db.conn(), "acme").await?;
    let other = tenant(db.conn(), "globex").await?;
    let repo = TaskRepository::new(db.conn());
    let in_hours = |h: i64| (Utc::now() + Duration::hours(h)).fixed_offset();
    // The same instant for two tasks (ties break by creation), and deadlines given in other
    // offsets than UTC: SQLite compares stored times as text, so they must be stored in UTC.
    let five = in_hours(5);
    let plus_five = FixedOffset::east_opt(5 * 3600).expect("offset");
    let minus_three = FixedOffset::west_opt(3 * 3600).expect("offset");

    let mut expected = Vec::new();
    // Ada's, in the order the inbox must show them.
    let soon = repo
        .create(
            &t.ctx,
            new_task("soon")
                .assigned_to(AssignTo::group(t.group))
                .with_sla(in_hours(1).with_timezone(&minus_three), json!({})),
        )
        .await?;
    let later = repo
        .create(
            &t.ctx,
            new_task("later")
                .assigned_to(AssignTo::user(t.ada))
                .with_sla(five, json!({})),
        )
        .await?;
    let later_too = repo
        .create(
            &t.ctx,
            new_task("later too")
                .assigned_to(AssignTo::user(t.ada))
                .with_sla(five.with_timezone(&plus_five), json!({})),
        )
        .await?;
    let no_deadline_1 = repo
        .create(
            &t.ctx,
            new_task("whenever 1").assigned_to(AssignTo::group(t.group)),
        )
        .await?;
    let no_deadline_2 = repo
        .create(
            &t.ctx,
            new_task("whenever 2").assigned_to(AssignTo::user(t.ada)),
        )
        .await?;
    let escalated = repo
        .create(
            &t.ctx,
            new_task("escalated").assigned_to(AssignTo::user(t.grace)),
        )
        .await?;
    repo.escalate(&t.ctx, escalated.id, Some(AssignTo::group(t.group)), None)
        .await?;
    expected.extend([
        soon.id,
        later.id,
        later_too.id,
        no_deadline_1.id,
        no_deadline_2.id,
        escalated.id,
    ]);

    // Not Ada's: another group, another user, claimed, final, another tenant.
    repo.create(
        &t.ctx,
        new_task("finance").assigned_to(AssignTo::group(t.other_group)),
    )
    .await?;
    repo.create(
        &t.ctx,
        new_task("grace's").assigned_to(AssignTo::user(t.grace)),
    )
    .await?;
    let claimed = repo
        .create(
            &t.ctx,
            new_task("claimed").assigned_to(AssignTo::group(t.group)),
        )
        .await?;
    repo.claim(&t.ctx, claimed.id, t.grace).await?;
    let cancelled = repo
        .create(
            &t.ctx,
            new_task("cancelled").assigned_to(AssignTo::user(t.ada)),
        )
        .await?;
    repo.cancel(&t.ctx, cancelled.id, None).await?;
    repo.create(
        &other.ctx,
        new_task("other tenant").assigned_to(AssignTo::user(other.ada)),
    )
    .await?;
    repo.create(&t.ctx, new_task("unassigned")).await?;

    let all = repo
        .find_pending_for_user(&t.ctx, t.ada, &PageRequest::first(100))
        .await?;
    let ids: Vec<Uuid> = all.items.iter().map(|task| task.id).collect();
    assert_eq!(ids, expected);
    assert_eq!(all.next, None);

    // Page by page, two at a time: the same rows, none missing or repeated.
    let mut paged = Vec::new();
    let mut page = PageRequest::first(2);
    loop {
        let result = repo.find_pending_for_user(&t.ctx, t.ada, &page).await?;
        assert!(result.items.len() <= 2);
        paged.extend(result.items.iter().map(|task| task.id));
        match result.next {
            Some(cursor) => page = PageRequest::after(cursor, 2),
            None => break,
        }
    }
    assert_eq!(paged, expected);

    // The other tenant's context sees none of it, even naming Ada.
    let theirs = repo
        .find_pending_for_user(&other.ctx, t.ada, &PageRequest::first(100))
        .await?;
    assert!(theirs.items.is_empty());
    Ok(())
}

#[tokio::test]
async fn claims_go_to_the_assignee_or_a_member_of_the_group_and_only_once() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let t = tenant(db.conn(), "acme").await?;
    let repo = TaskRepository::new(db.conn());

    let group_task = repo
        .create(
            &t.ctx,
            new_task("group").assigned_to(AssignTo::group(t.group)),
        )
        .await?;
    let direct = repo
        .create(
            &t.ctx,
            new_task("direct").assigned_to(AssignTo::user(t.ada)),
        )
        .await?;
    let unassigned = repo.create(&t.ctx, new_task("unassigned")).await?;

    // Not a member, not the assignee.
    assert_forbidden(repo.claim(&t.ctx, group_task.id, t.outsider).await);
    assert_forbidden(repo.claim(&t.ctx, direct.id, t.grace).await);
    // Unassigned tasks are assigned before anyone claims them.
    assert_invalid_transition(
        repo.claim(&t.ctx, unassigned.id, t.ada).await,
        TaskStatus::Created,
        TaskAction::Claim,
    );
    // An inactive member cannot claim.
    UserRepository::new(db.conn())
        .deactivate(&t.ctx, t.grace)
        .await?;
    assert_forbidden(repo.claim(&t.ctx, group_task.id, t.grace).await);
    UserRepository::new(db.conn())
        .activate(&t.ctx, t.grace)
        .await?;

    let before_claim = repo.find_by_id(&t.ctx, group_task.id).await?.expect("task");
    let claimed = repo
        .claim(&as_user(&t, t.grace), group_task.id, t.grace)
        .await?;
    assert_eq!(claimed.status, TaskStatus::Claimed);
    assert_eq!(claimed.claimed_by, Some(t.grace));
    assert!(claimed.updated_at > before_claim.updated_at);
    assert_invalid_transition(
        repo.claim(&t.ctx, group_task.id, t.ada).await,
        TaskStatus::Claimed,
        TaskAction::Claim,
    );
    let direct = repo.claim(&t.ctx, direct.id, t.ada).await?;
    assert_eq!(direct.claimed_by, Some(t.ada));

    let history = repo.history(&t.ctx, group_task.id).await?;
    let actions: Vec<&str> = history.iter().map(|h| h.action.as_str()).collect();
    assert_eq!(
        actions,
        ["created", "claimed"],
        "refused claims leave no history"
    );
    assert_eq!(history[1].actor_type, "user");
    assert_eq!(history[1].actor_id, t.grace.to_string());
    assert_eq!(history[1].details, Some(json!({"user_id": t.grace})));
    Ok(())
}

#[tokio::test]
async fn release_complete_escalate_expire_and_cancel_follow_the_lifecycle() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let t = tenant(db.conn(), "acme").await?;
    let repo = TaskRepository::new(db.conn());
    let form = json!({"approved": true, "note": "'; DROP TABLE tasks; --"});

    // Release gives the claim back; the task can be claimed again.
    let task = repo
        .create(
            &t.ctx,
            new_task("group").assigned_to(AssignTo::group(t.group)),
        )
        .await?;
    assert_invalid_transition(
        repo.release(&t.ctx, task.id, t.ada).await,
        TaskStatus::Assigned,
        TaskAction::Release,
    );
    repo.claim(&t.ctx, task.id, t.ada).await?;
    assert_forbidden(repo.release(&t.ctx, task.id, t.grace).await);
    let released = repo.release(&t.ctx, task.id, t.ada).await?;
    assert_eq!(released.status, TaskStatus::Assigned);
    assert_eq!(released.claimed_by, None);
    assert_eq!(released.assigned_group_id, Some(t.group));

    // A group task must be claimed before it is completed, and only its claimer completes it.
    assert_forbidden(repo.complete(&t.ctx, task.id, t.ada, form.clone()).await);
    repo.claim(&t.ctx, task.id, t.grace).await?;
    assert_forbidden(repo.complete(&t.ctx, task.id, t.ada, form.clone()).await);
    assert!(matches!(
        repo.complete(&t.ctx, task.id, t.grace, json!("yes")).await,
        Err(Error::Validation {
            field: "form_data",
            ..
        })
    ));
    let done = repo
        .complete(&t.ctx, task.id, t.grace, form.clone())
        .await?;
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.form_data, Some(form.clone()), "stored verbatim");
    assert_eq!(done.completed_by, Some(t.grace));
    assert!(done.completed_at.is_some());
    assert_invalid_transition(
        repo.complete(&t.ctx, task.id, t.grace, form.clone()).await,
        TaskStatus::Completed,
        TaskAction::Complete,
    );
    for (result, action) in [
        (repo.cancel(&t.ctx, task.id, None).await, TaskAction::Cancel),
        (repo.expire(&t.ctx, task.id).await, TaskAction::Expire),
        (
            repo.escalate(&t.ctx, task.id, None, None).await,
            TaskAction::Escalate,
        ),
        (
            repo.assign(&t.ctx, task.id, AssignTo::user(t.ada)).await,
            TaskAction::Assign,
        ),
    ] {
        assert_invalid_transition(result, TaskStatus::Completed, action);
    }

    // A direct assignee completes without a separate claim.
    let direct = repo
        .create(
            &t.ctx,
            new_task("direct").assigned_to(AssignTo::user(t.ada)),
        )
        .await?;
    let done = repo.complete(&t.ctx, direct.id, t.ada, json!({})).await?;
    assert_eq!(done.status, TaskStatus::Completed);

    // Escalation drops the claim and hands the task to another group, whose members claim it.
    let task = repo
        .create(
            &t.ctx,
            new_task("escalate me").assigned_to(AssignTo::group(t.group)),
        )
        .await?;
    repo.claim(&t.ctx, task.id, t.ada).await?;
    let escalated = repo
        .escalate(
            &t.ctx,
            task.id,
            Some(AssignTo::group(t.other_group)),
            Some(json!({"why": "SLA at risk"})),
        )
        .await?;
    assert_eq!(escalated.status, TaskStatus::Escalated);
    assert_eq!(escalated.claimed_by, None);
    assert_eq!(escalated.assigned_group_id, Some(t.other_group));
    assert_forbidden(repo.claim(&t.ctx, task.id, t.ada).await);
    repo.claim(&t.ctx, task.id, t.outsider).await?;

    // Expire and cancel end open tasks, once.
    let expiring = repo.create(&t.ctx, new_task("expire me")).await?;
    assert_eq!(
        repo.expire(&t.ctx, expiring.id).await?.status,
        TaskStatus::Expired
    );
    assert_invalid_transition(
        repo.expire(&t.ctx, expiring.id).await,
        TaskStatus::Expired,
        TaskAction::Expire,
    );
    let cancelling = repo.create(&t.ctx, new_task("cancel me")).await?;
    let cancelled = repo
        .cancel(&t.ctx, cancelling.id, Some("duplicate"))
        .await?;
    assert_eq!(cancelled.status, TaskStatus::Cancelled);

    let history = repo.history(&t.ctx, task.id).await?;
    let actions: Vec<&str> = history.iter().map(|h| h.action.as_str()).collect();
    assert_eq!(actions, ["created", "claimed", "escalated", "claimed"]);
    assert_eq!(
        history[2].details,
        Some(json!({
            "reason": {"why": "SLA at risk"},
            "to": {"user_id": null, "group_id": t.other_group},
        }))
    );
    let cancel_history = repo.history(&t.ctx, cancelling.id).await?;
    assert_eq!(
        cancel_history.last().and_then(|h| h.details.clone()),
        Some(json!({"reason": "duplicate"}))
    );
    Ok(())
}

#[tokio::test]
async fn an_inactive_user_can_neither_claim_nor_complete() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let t = tenant(db.conn(), "acme").await?;
    let repo = TaskRepository::new(db.conn());
    let users = UserRepository::new(db.conn());
    let direct = repo
        .create(
            &t.ctx,
            new_task("direct").assigned_to(AssignTo::user(t.ada)),
        )
        .await?;
    let claimed = repo
        .create(
            &t.ctx,
            new_task("group").assigned_to(AssignTo::group(t.group)),
        )
        .await?;
    repo.claim(&t.ctx, claimed.id, t.ada).await?;

    users.deactivate(&t.ctx, t.ada).await?;
    assert_forbidden(repo.complete(&t.ctx, direct.id, t.ada, json!({})).await);
    assert_forbidden(repo.complete(&t.ctx, claimed.id, t.ada, json!({})).await);
    assert_forbidden(repo.claim(&t.ctx, direct.id, t.ada).await);
    // Giving a claim back is still theirs to do.
    repo.release(&t.ctx, claimed.id, t.ada).await?;

    users.activate(&t.ctx, t.ada).await?;
    let done = repo.complete(&t.ctx, direct.id, t.ada, json!({})).await?;
    assert_eq!(done.status, TaskStatus::Completed);
    Ok(())
}

#[tokio::test]
async fn assign_reassigns_unclaimed_tasks_within_the_tenant_only() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let t = tenant(db.conn(), "acme").await?;
    let other = tenant(db.conn(), "globex").await?;
    let repo = TaskRepository::new(db.conn());

    let task = repo.create(&t.ctx, new_task("triage")).await?;
    let assigned = repo.assign(&t.ctx, task.id, AssignTo::user(t.ada)).await?;
    assert_eq!(assigned.status, TaskStatus::Assigned);
    let reassigned = repo
        .assign(&t.ctx, task.id, AssignTo::group(t.group))
        .await?;
    assert_eq!(reassigned.assigned_user_id, None);
    assert_eq!(reassigned.assigned_group_id, Some(t.group));

    let before = counts(db.conn()).await?;
    assert_reference(
        repo.assign(&t.ctx, task.id, AssignTo::user(other.ada))
            .await,
        ASSIGNEE_FKEY,
    );
    assert_reference(
        repo.assign(&t.ctx, task.id, AssignTo::group(other.group))
            .await,
        GROUP_FKEY,
    );
    assert_eq!(counts(db.conn()).await?, before);
    assert_eq!(
        repo.find_by_id(&t.ctx, task.id).await?,
        Some(reassigned.clone())
    );

    repo.claim(&t.ctx, task.id, t.ada).await?;
    assert_invalid_transition(
        repo.assign(&t.ctx, task.id, AssignTo::user(t.grace)).await,
        TaskStatus::Claimed,
        TaskAction::Assign,
    );
    assert!(matches!(
        repo.assign(
            &t.ctx,
            task.id,
            AssignTo {
                user_id: None,
                group_id: None
            }
        )
        .await,
        Err(Error::Validation {
            field: "assign_to",
            ..
        })
    ));
    let missing = Uuid::now_v7();
    assert!(matches!(
        repo.assign(&t.ctx, missing, AssignTo::user(t.ada)).await,
        Err(Error::NotFound { entity: "task", .. })
    ));
    Ok(())
}

#[tokio::test]
async fn overdue_pages_list_open_tasks_past_their_deadline_earliest_first() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let t = tenant(db.conn(), "acme").await?;
    let other = tenant(db.conn(), "globex").await?;
    let repo = TaskRepository::new(db.conn());
    let at = |h: i64| (Utc::now() + Duration::hours(h)).fixed_offset();

    // Two tasks share a deadline; deadlines come in several offsets, one far from UTC.
    let three_ago = at(-3);
    let east = FixedOffset::east_opt(9 * 3600).expect("offset");
    let west = FixedOffset::west_opt(7 * 3600).expect("offset");
    let mut expected = Vec::new();
    for deadline in [
        at(-5).with_timezone(&east),
        three_ago,
        three_ago.with_timezone(&west),
        at(-1).with_timezone(&east),
    ] {
        let task = repo
            .create(
                &t.ctx,
                new_task("late")
                    .assigned_to(AssignTo::group(t.group))
                    .with_sla(deadline, json!({})),
            )
            .await?;
        expected.push(task.id);
    }
    // Claimed and escalated tasks are still open.
    repo.claim(&t.ctx, expected[1], t.ada).await?;
    repo.escalate(&t.ctx, expected[2], None, None).await?;
    // Not overdue: future deadline, no deadline, final, another tenant.
    repo.create(
        &t.ctx,
        new_task("future").with_sla(at(2).with_timezone(&east), json!({})),
    )
    .await?;
    repo.create(&t.ctx, new_task("no deadline")).await?;
    let done = repo
        .create(
            &t.ctx,
            new_task("done")
                .assigned_to(AssignTo::user(t.ada))
                .with_sla(at(-2), json!({})),
        )
        .await?;
    repo.complete(&t.ctx, done.id, t.ada, json!({})).await?;
    repo.create(&other.ctx, new_task("theirs").with_sla(at(-4), json!({})))
        .await?;

    let now = Utc::now().with_timezone(&west);
    let mut seen = Vec::new();
    // Pages of two: the second page starts between the two tasks that share a deadline.
    let mut page = PageRequest::first(2);
    loop {
        let result = repo.overdue(&t.ctx, now, &page).await?;
        seen.extend(result.items.iter().map(|task| task.id));
        match result.next {
            Some(cursor) => page = PageRequest::after(cursor, 2),
            None => break,
        }
    }
    assert_eq!(seen, expected);

    // The sweeper expires them; they leave the list.
    for id in &expected {
        repo.expire(&t.ctx, *id).await?;
    }
    assert!(
        repo.overdue(&t.ctx, now, &PageRequest::first(10))
            .await?
            .items
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn lists_by_workflow_run_and_by_status_page_in_creation_order() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let t = tenant(db.conn(), "acme").await?;
    let repo = TaskRepository::new(db.conn());
    let mut run_2 = Vec::new();
    for i in 0..5 {
        let task = repo
            .create(
                &t.ctx,
                NewTask::new("wf-invoice", "run-2", format!("step {i}"), json!({})),
            )
            .await?;
        run_2.push(task.id);
    }
    repo.create(
        &t.ctx,
        NewTask::new("wf-invoice", "run-3", "other run", json!({})),
    )
    .await?;
    repo.create(
        &t.ctx,
        NewTask::new("wf-other", "run-2", "other workflow", json!({})),
    )
    .await?;
    repo.cancel(&t.ctx, run_2[1], None).await?;

    let first = repo
        .list_by_workflow_run(&t.ctx, "wf-invoice", "run-2", &PageRequest::first(3))
        .await?;
    let cursor = first.next.expect("a second page");
    let second = repo
        .list_by_workflow_run(
            &t.ctx,
            "wf-invoice",
            "run-2",
            &PageRequest::after(cursor, 3),
        )
        .await?;
    assert_eq!(second.next, None);
    let ids: Vec<Uuid> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|task| task.id)
        .collect();
    assert_eq!(ids, run_2);

    let cancelled = repo
        .list_by_status(&t.ctx, TaskStatus::Cancelled, &PageRequest::first(10))
        .await?;
    assert_eq!(cancelled.items.len(), 1);
    assert_eq!(cancelled.items[0].id, run_2[1]);
    let created = repo
        .list_by_status(&t.ctx, TaskStatus::Created, &PageRequest::first(500))
        .await?;
    assert_eq!(created.items.len(), 6);
    for limit in [0, 501] {
        assert!(matches!(
            repo.list_by_status(&t.ctx, TaskStatus::Created, &PageRequest::first(limit))
                .await,
            Err(Error::Validation { field: "limit", .. })
        ));
    }
    Ok(())
}

#[tokio::test]
async fn a_transition_whose_history_insert_fails_leaves_the_task_unchanged() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let t = tenant(db.conn(), "acme").await?;
    let repo = TaskRepository::new(db.conn());
    let task = repo
        .create(
            &t.ctx,
            new_task("atomic").assigned_to(AssignTo::user(t.ada)),
        )
        .await?;

    // Make every history insert fail, as a full disk or a broken constraint would. (Named test_*:
    // on a shared database the harness drops such objects before the next test.)
    let conn = db.conn();
    match db.backend() {
        sea_orm::DbBackend::Postgres => {
            conn.execute_unprepared(
                "CREATE FUNCTION test_refuse_history() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN RAISE EXCEPTION 'history refused'; END $$",
            )
            .await?;
            conn.execute_unprepared(
                "CREATE TRIGGER test_refuse_history BEFORE INSERT ON task_history \
                 FOR EACH ROW EXECUTE FUNCTION test_refuse_history()",
            )
            .await?;
        }
        _ => {
            conn.execute_unprepared(
                "CREATE TRIGGER test_refuse_history BEFORE INSERT ON task_history \
                 BEGIN SELECT RAISE(ABORT, 'history refused'); END",
            )
            .await?;
        }
    }

    let result = repo.claim(&t.ctx, task.id, t.ada).await;
    assert!(matches!(result, Err(Error::Db(_))), "{result:?}");
    let after = repo.find_by_id(&t.ctx, task.id).await?.expect("task");
    assert_eq!(
        after, task,
        "the task changed although its history was not written"
    );
    assert!(repo.create(&t.ctx, new_task("no history")).await.is_err());
    assert_eq!(counts(conn).await?, (1, 1));
    Ok(())
}

#[tokio::test]
async fn calls_compose_in_one_transaction_and_nest_as_savepoints() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let t = tenant(db.conn(), "acme").await?;
    let conn = db.conn();
    let ctx = &t.ctx;
    let ada = t.ada;

    // All or nothing: an error after two writes undoes both.
    let result: Result<(), Error> = transaction(conn, async |txn| {
        let repo = TaskRepository::new(txn);
        let task = repo
            .create(ctx, new_task("tx").assigned_to(AssignTo::user(ada)))
            .await?;
        repo.claim(ctx, task.id, ada).await?;
        Err(Error::validation("test", "abort on purpose"))
    })
    .await;
    assert!(matches!(
        result,
        Err(Error::Validation { field: "test", .. })
    ));
    assert_eq!(counts(conn).await?, (0, 0));

    // A failed inner call rolls back its savepoint only; the outer transaction commits.
    let kept = transaction(conn, async |txn| {
        let repo = TaskRepository::new(txn);
        let task = repo
            .create(ctx, new_task("kept").assigned_to(AssignTo::user(ada)))
            .await?;
        let inner: Result<(), Error> = transaction(txn, async |inner| {
            TaskRepository::new(inner)
                .create(ctx, new_task("dropped"))
                .await?;
            Err(Error::validation("test", "inner abort"))
        })
        .await;
        assert!(inner.is_err());
        // A refused transition inside the transaction leaves it usable.
        assert!(repo.release(ctx, task.id, ada).await.is_err());
        repo.claim(ctx, task.id, ada).await
    })
    .await?;
    assert_eq!(kept.status, TaskStatus::Claimed);
    assert_eq!(counts(conn).await?, (1, 2));
    Ok(())
}

#[tokio::test]
async fn a_tenant_sees_and_changes_nothing_of_another_tenants_tasks() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let a = tenant(db.conn(), "acme").await?;
    let b = tenant(db.conn(), "globex").await?;
    let repo = TaskRepository::new(db.conn());
    let at = (Utc::now() - Duration::hours(1)).fixed_offset();

    let theirs = repo
        .create(
            &b.ctx,
            NewTask::new("wf", "run", "B's", json!({}))
                .assigned_to(AssignTo::group(b.group))
                .with_sla(at, json!({})),
        )
        .await?;
    repo.create(
        &a.ctx,
        NewTask::new("wf", "run", "A's", json!({})).assigned_to(AssignTo::user(a.ada)),
    )
    .await?;
    let b_before = tasks::Entity::find_by_id((theirs.id, b.ctx.tenant_id()))
        .one(db.conn())
        .await?;
    let history_before = repo.history(&b.ctx, theirs.id).await?;

    // Reads under A return nothing of B's.
    assert_eq!(repo.find_by_id(&a.ctx, theirs.id).await?, None);
    assert!(repo.history(&a.ctx, theirs.id).await?.is_empty());
    assert!(
        repo.overdue(&a.ctx, Utc::now().fixed_offset(), &PageRequest::first(50))
            .await?
            .items
            .is_empty()
    );
    let run = repo
        .list_by_workflow_run(&a.ctx, "wf", "run", &PageRequest::first(50))
        .await?;
    assert!(
        run.items
            .iter()
            .all(|task| task.tenant_id == a.ctx.tenant_id())
    );
    let assigned = repo
        .list_by_status(&a.ctx, TaskStatus::Assigned, &PageRequest::first(50))
        .await?;
    assert!(
        assigned
            .items
            .iter()
            .all(|task| task.tenant_id == a.ctx.tenant_id())
    );
    assert!(
        repo.find_pending_for_user(&a.ctx, b.ada, &PageRequest::first(50))
            .await?
            .items
            .is_empty()
    );

    // Writes under A naming B's task find nothing.
    let not_found = |result: Result<tasks::Model, Error>| {
        assert!(
            matches!(result, Err(Error::NotFound { entity: "task", .. })),
            "{result:?}"
        );
    };
    not_found(repo.claim(&a.ctx, theirs.id, a.ada).await);
    not_found(repo.claim(&a.ctx, theirs.id, b.ada).await);
    not_found(repo.assign(&a.ctx, theirs.id, AssignTo::user(a.ada)).await);
    not_found(repo.release(&a.ctx, theirs.id, b.ada).await);
    not_found(repo.complete(&a.ctx, theirs.id, b.ada, json!({})).await);
    not_found(repo.escalate(&a.ctx, theirs.id, None, None).await);
    not_found(repo.expire(&a.ctx, theirs.id).await);
    not_found(repo.cancel(&a.ctx, theirs.id, None).await);

    let b_after = tasks::Entity::find_by_id((theirs.id, b.ctx.tenant_id()))
        .one(db.conn())
        .await?;
    assert_eq!(b_before, b_after);
    assert_eq!(repo.history(&b.ctx, theirs.id).await?, history_before);
    Ok(())
}

/// Sixteen tasks, eight users racing to claim each, on real connections: exactly one winner per
/// task, every loser told the task is already claimed, one `claimed` history row per task.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: set DATABASE_URL=postgres://..."
)]
async fn pg_racing_claimers_produce_exactly_one_winner_per_task() -> anyhow::Result<()> {
    let db = TestDb::postgres_only().await?;
    let conn = db.conn().clone();
    let t = tenant(&conn, "acme").await?;
    let users = UserRepository::new(&conn);
    let groups = GroupRepository::new(&conn);
    let mut racers = Vec::new();
    for i in 0..8 {
        let user = users
            .create(
                &t.ctx,
                NewUser::new(format!("racer{i}@example.com"), format!("Racer {i}")),
            )
            .await?;
        groups.add_member(&t.ctx, t.group, user.id).await?;
        racers.push(user.id);
    }

    for round in 0..3 {
        let repo = TaskRepository::new(&conn);
        let mut task_ids = Vec::new();
        for i in 0..16 {
            let task = repo
                .create(
                    &t.ctx,
                    new_task(&format!("round {round} task {i}"))
                        .assigned_to(AssignTo::group(t.group)),
                )
                .await?;
            task_ids.push(task.id);
        }
        let mut handles = Vec::new();
        for &task_id in &task_ids {
            for &user in &racers {
                let conn = conn.clone();
                let ctx = as_user(&t, user);
                handles.push(tokio::spawn(async move {
                    let result = TaskRepository::new(&conn).claim(&ctx, task_id, user).await;
                    (task_id, user, result)
                }));
            }
        }
        let mut winners = std::collections::HashMap::new();
        let mut losers = 0;
        for handle in handles {
            let (task_id, user, result) = handle.await?;
            match result {
                Ok(task) => {
                    assert_eq!(task.claimed_by, Some(user));
                    assert!(
                        winners.insert(task_id, user).is_none(),
                        "two winners for {task_id}"
                    );
                }
                Err(Error::InvalidTransition {
                    current, action, ..
                }) => {
                    assert_eq!(current, TaskStatus::Claimed);
                    assert_eq!(action, TaskAction::Claim);
                    losers += 1;
                }
                Err(other) => panic!("unexpected error: {other:?}"),
            }
        }
        assert_eq!(winners.len(), 16, "round {round}");
        assert_eq!(losers, 16 * 7, "round {round}");
        for task_id in task_ids {
            let stored = repo.find_by_id(&t.ctx, task_id).await?.expect("task");
            assert_eq!(stored.claimed_by, winners.get(&task_id).copied());
            let claims = repo
                .history(&t.ctx, task_id)
                .await?
                .into_iter()
                .filter(|h| h.action == "claimed")
                .count();
            assert_eq!(claims, 1, "history of {task_id}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn claim_next_takes_the_first_claimable_task_of_the_inbox() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let t = tenant(db.conn(), "acme").await?;
    let repo = TaskRepository::new(db.conn());
    let soon = Utc::now().fixed_offset() + Duration::hours(1);
    let later = soon + Duration::hours(1);

    // Not for Ada: unassigned, another group's, claimed by someone else.
    repo.create(&t.ctx, new_task("unassigned")).await?;
    repo.create(
        &t.ctx,
        new_task("finance")
            .assigned_to(AssignTo::group(t.other_group))
            .with_sla(soon, json!({})),
    )
    .await?;
    let taken = repo
        .create(
            &t.ctx,
            new_task("taken")
                .assigned_to(AssignTo::group(t.group))
                .with_sla(soon, json!({})),
        )
        .await?;
    repo.claim(&t.ctx, taken.id, t.grace).await?;
    // Ada's, in inbox order: the sooner deadline, the later one, then none.
    let undated = repo
        .create(
            &t.ctx,
            new_task("undated").assigned_to(AssignTo::user(t.ada)),
        )
        .await?;
    let second = repo
        .create(
            &t.ctx,
            new_task("later")
                .assigned_to(AssignTo::group(t.group))
                .with_sla(later, json!({})),
        )
        .await?;
    let first = repo
        .create(
            &t.ctx,
            new_task("sooner")
                .assigned_to(AssignTo::user(t.ada))
                .with_sla(soon, json!({})),
        )
        .await?;

    let ada = as_user(&t, t.ada);
    let mut claimed = Vec::new();
    while let Some(task) = repo.claim_next(&ada, t.ada).await? {
        assert_eq!(task.status, TaskStatus::Claimed);
        assert_eq!(task.claimed_by, Some(t.ada));
        let history = repo.history(&t.ctx, task.id).await?;
        let last = history.last().expect("history");
        assert_eq!(last.action, "claimed");
        assert_eq!(last.actor_id, t.ada.to_string());
        assert_eq!(last.details, Some(json!({"user_id": t.ada})));
        claimed.push(task.id);
    }
    assert_eq!(claimed, [first.id, second.id, undated.id]);

    // Nothing left for Ada; Grace's queue holds nothing either (hers is claimed).
    assert!(repo.claim_next(&ada, t.ada).await?.is_none());
    assert!(repo.claim_next(&t.ctx, t.grace).await?.is_none());

    // An unknown user and an inactive one are told so, and nothing is written.
    let unclaimed = repo
        .create(
            &t.ctx,
            new_task("waiting").assigned_to(AssignTo::group(t.group)),
        )
        .await?;
    let before = counts(db.conn()).await?;
    let nobody = Uuid::now_v7();
    match repo.claim_next(&t.ctx, nobody).await {
        Err(Error::NotFound { entity, id }) => {
            assert_eq!((entity, id), ("user", nobody.to_string()));
        }
        other => panic!("expected NotFound(user), got {other:?}"),
    }
    UserRepository::new(db.conn())
        .deactivate(&t.ctx, t.grace)
        .await?;
    match repo.claim_next(&t.ctx, t.grace).await {
        Err(Error::InvalidState { entity, state, .. }) => {
            assert_eq!((entity, state.as_str()), ("user", "INACTIVE"));
        }
        other => panic!("expected InvalidState(user), got {other:?}"),
    }
    assert_eq!(counts(db.conn()).await?, before);
    let waiting = repo.find_by_id(&t.ctx, unclaimed.id).await?.expect("task");
    assert_eq!(waiting.status, TaskStatus::Assigned);
    Ok(())
}

/// Eight workers draining one shared queue with `claim_next` at once: every task claimed exactly
/// once, nobody refused, and the queue empty at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: set DATABASE_URL=postgres://..."
)]
async fn pg_concurrent_claim_next_hands_each_task_to_exactly_one_worker() -> anyhow::Result<()> {
    let db = TestDb::postgres_only().await?;
    let t = tenant(db.conn(), "acme").await?;
    let users = UserRepository::new(db.conn());
    let groups = GroupRepository::new(db.conn());
    let mut workers = Vec::new();
    for i in 0..8 {
        let user = users
            .create(
                &t.ctx,
                NewUser::new(format!("worker{i}@example.com"), format!("Worker {i}")),
            )
            .await?;
        groups.add_member(&t.ctx, t.group, user.id).await?;
        workers.push(user.id);
    }
    let repo = TaskRepository::new(db.conn());
    let mut queued = std::collections::BTreeSet::new();
    for i in 0..60 {
        let task = repo
            .create(
                &t.ctx,
                new_task(&format!("task {i}")).assigned_to(AssignTo::group(t.group)),
            )
            .await?;
        queued.insert(task.id);
    }

    let mut handles = Vec::new();
    for &user in &workers {
        // As the application role: the policies and SKIP LOCKED together.
        let conn = db.app_conn().clone();
        let ctx = as_user(&t, user);
        handles.push(tokio::spawn(async move {
            let repo = TaskRepository::new(&conn);
            let mut mine = Vec::new();
            while let Some(task) = repo.claim_next(&ctx, user).await? {
                assert_eq!(task.claimed_by, Some(user));
                mine.push(task.id);
            }
            anyhow::Ok(mine)
        }));
    }
    let mut claimed = std::collections::BTreeSet::new();
    let mut workers_with_work = 0;
    for handle in handles {
        let mine = handle.await??;
        workers_with_work += usize::from(!mine.is_empty());
        for id in mine {
            assert!(claimed.insert(id), "{id} claimed twice");
        }
    }
    assert_eq!(claimed, queued);
    assert!(workers_with_work > 1, "one worker took the whole queue");
    for id in queued {
        let claims = repo
            .history(&t.ctx, id)
            .await?
            .into_iter()
            .filter(|h| h.action == "claimed")
            .count();
        assert_eq!(claims, 1, "history of {id}");
    }
    Ok(())
}
