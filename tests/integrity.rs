//! What the schema itself guarantees, whatever the application does: cross-tenant references are
//! refused, uniqueness is per tenant, cascades remove children, defaults are the seed's and
//! `updated_at` advances. Runs on both backends unless marked PostgreSQL only.

use chrono::{DateTime, FixedOffset};
use orkestra_entity::{
    group_members, groups, links, messages,
    sea_orm_active_enums::{AssignmentStrategy, ConversationStatus, TaskStatus, TenantStatus},
    sea_orm_active_enums::{UserRole, UserStatus},
    task_history, tasks, tenants, users,
};
use orkestra_tests::{TestDb, fixtures};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait,
    IntoActiveModel, PaginatorTrait, QueryFilter, SqlErr, TransactionTrait,
};
use serde_json::json;
use uuid::Uuid;

/// Two tenants, each with two users, a group and a conversation.
struct World {
    db: TestDb,
    a: Side,
    b: Side,
}

struct Side {
    tenant: Uuid,
    user: Uuid,
    other_user: Uuid,
    group: Uuid,
    conversation: Uuid,
}

async fn side(db: &impl ConnectionTrait, slug: &str) -> anyhow::Result<Side> {
    let tenant = fixtures::tenant(db, slug).await?.id;
    Ok(Side {
        tenant,
        user: fixtures::user(db, tenant, "ada@example.com").await?.id,
        other_user: fixtures::user(db, tenant, "grace@example.com").await?.id,
        group: fixtures::group(db, tenant, "reviewers").await?.id,
        conversation: fixtures::conversation(db, tenant).await?.id,
    })
}

async fn world() -> anyhow::Result<World> {
    let db = TestDb::migrated().await?;
    let a = side(db.conn(), "acme").await?;
    let b = side(db.conn(), "globex").await?;
    Ok(World { db, a, b })
}

/// Asserts that `result` is the database refusing a foreign key.
#[track_caller]
fn assert_fk_refused<T: std::fmt::Debug>(result: Result<T, DbErr>) {
    match result {
        Err(error) => assert!(
            matches!(
                error.sql_err(),
                Some(SqlErr::ForeignKeyConstraintViolation(_))
            ),
            "expected a foreign-key refusal, got {error:?}"
        ),
        Ok(value) => panic!("the database accepted a cross-tenant reference: {value:?}"),
    }
}

/// Asserts that `result` is the database refusing a duplicate.
#[track_caller]
fn assert_unique_refused<T: std::fmt::Debug>(result: Result<T, DbErr>) {
    match result {
        Err(error) => assert!(
            matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))),
            "expected a unique-constraint refusal, got {error:?}"
        ),
        Ok(value) => panic!("the database accepted a duplicate: {value:?}"),
    }
}

async fn task_count(db: &impl ConnectionTrait) -> Result<u64, DbErr> {
    tasks::Entity::find().count(db).await
}

#[tokio::test]
async fn a_task_cannot_reference_another_tenants_user_group_or_conversation() -> anyhow::Result<()>
{
    let World { db, a, b } = world().await?;
    let conn = db.conn();

    let cases: [(&str, tasks::ActiveModel); 5] = [
        ("assignee", {
            let mut task = fixtures::task(a.tenant);
            task.assigned_user_id = Set(Some(b.user));
            task
        }),
        ("group", {
            let mut task = fixtures::task(a.tenant);
            task.assigned_group_id = Set(Some(b.group));
            task
        }),
        ("claimer", {
            let mut task = fixtures::task(a.tenant);
            task.claimed_by = Set(Some(b.user));
            task
        }),
        ("completer", {
            let mut task = fixtures::task(a.tenant);
            task.completed_by = Set(Some(b.user));
            task
        }),
        ("conversation", {
            let mut task = fixtures::task(a.tenant);
            task.conversation_id = Set(Some(b.conversation));
            task
        }),
    ];
    for (what, task) in cases {
        let before = task_count(conn).await?;
        let result = task.insert(conn).await;
        assert!(result.is_err(), "cross-tenant {what} accepted");
        assert_fk_refused(result);
        assert_eq!(task_count(conn).await?, before, "{what}: a row was written");
    }

    // The same references inside the tenant are accepted.
    let mut task = fixtures::task(a.tenant);
    task.assigned_user_id = Set(Some(a.user));
    task.assigned_group_id = Set(Some(a.group));
    task.claimed_by = Set(Some(a.user));
    task.completed_by = Set(Some(a.other_user));
    task.conversation_id = Set(Some(a.conversation));
    let task = task.insert(conn).await?;
    assert_eq!(task.assigned_user_id, Some(a.user));
    Ok(())
}

#[tokio::test]
async fn an_existing_task_cannot_be_pointed_at_another_tenant() -> anyhow::Result<()> {
    let World { db, a, b } = world().await?;
    let conn = db.conn();
    let task = fixtures::task(a.tenant).insert(conn).await?;

    for column in [
        tasks::Column::AssignedUserId,
        tasks::Column::ClaimedBy,
        tasks::Column::CompletedBy,
    ] {
        let mut update = task.clone().into_active_model();
        update.set(column, Some(b.user).into());
        assert_fk_refused(update.update(conn).await);
    }
    let mut update = task.clone().into_active_model();
    update.assigned_group_id = Set(Some(b.group));
    assert_fk_refused(update.update(conn).await);

    let stored = tasks::Entity::find_by_id((task.id, a.tenant))
        .one(conn)
        .await?
        .expect("task still there");
    assert_eq!(stored, task, "a refused update changed the row");
    Ok(())
}

#[tokio::test]
async fn history_messages_and_memberships_cannot_cross_tenants() -> anyhow::Result<()> {
    let World { db, a, b } = world().await?;
    let conn = db.conn();
    let task_b = fixtures::task(b.tenant).insert(conn).await?;

    // A history row of tenant A for tenant B's task.
    assert_fk_refused(fixtures::history(a.tenant, task_b.id).insert(conn).await);
    // A message of tenant A in tenant B's conversation.
    let message = messages::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(a.tenant),
        conversation_id: Set(b.conversation),
        role: Set("user".to_owned()),
        content: Set("hello".to_owned()),
        ..Default::default()
    };
    assert_fk_refused(message.insert(conn).await);
    // Memberships joining a group and a user of different tenants, either way round.
    assert_fk_refused(fixtures::membership(conn, a.tenant, a.group, b.user).await);
    assert_fk_refused(fixtures::membership(conn, a.tenant, b.group, a.user).await);
    assert_fk_refused(fixtures::membership(conn, b.tenant, a.group, a.user).await);

    assert_eq!(task_history::Entity::find().count(conn).await?, 0);
    assert_eq!(messages::Entity::find().count(conn).await?, 0);
    assert_eq!(group_members::Entity::find().count(conn).await?, 0);

    // Within one tenant all three are accepted.
    fixtures::history(b.tenant, task_b.id).insert(conn).await?;
    fixtures::membership(conn, a.tenant, a.group, a.user).await?;
    Ok(())
}

#[tokio::test]
async fn a_row_of_an_unknown_tenant_is_refused() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let conn = db.conn();
    let ghost = Uuid::now_v7();
    assert_fk_refused(fixtures::user(conn, ghost, "ada@example.com").await);
    assert_fk_refused(fixtures::group(conn, ghost, "reviewers").await);
    assert_fk_refused(fixtures::conversation(conn, ghost).await);
    assert_fk_refused(fixtures::task(ghost).insert(conn).await);
    assert_eq!(users::Entity::find().count(conn).await?, 0);
    Ok(())
}

#[tokio::test]
async fn email_and_group_slug_are_unique_per_tenant_and_tenant_slug_globally() -> anyhow::Result<()>
{
    let World { db, a, b } = world().await?;
    let conn = db.conn();

    // world() already gave both tenants the same emails and group slug: accepted across tenants.
    let same_email = users::Entity::find()
        .filter(users::Column::Email.eq("ada@example.com"))
        .count(conn)
        .await?;
    assert_eq!(same_email, 2);

    assert_unique_refused(fixtures::user(conn, a.tenant, "ada@example.com").await);
    assert_unique_refused(fixtures::group(conn, b.tenant, "reviewers").await);
    assert_unique_refused(fixtures::tenant(conn, "acme").await);
    assert_eq!(users::Entity::find().count(conn).await?, 4);
    assert_eq!(groups::Entity::find().count(conn).await?, 2);
    assert_eq!(tenants::Entity::find().count(conn).await?, 2);

    // Adding the same member twice is a duplicate of the membership's key.
    fixtures::membership(conn, a.tenant, a.group, a.user).await?;
    assert_unique_refused(fixtures::membership(conn, a.tenant, a.group, a.user).await);
    Ok(())
}

#[tokio::test]
async fn deleting_a_task_removes_its_history_and_a_group_its_memberships() -> anyhow::Result<()> {
    let World { db, a, b } = world().await?;
    let conn = db.conn();

    let task = fixtures::task(a.tenant).insert(conn).await?;
    let kept = fixtures::task(b.tenant).insert(conn).await?;
    for _ in 0..3 {
        fixtures::history(a.tenant, task.id).insert(conn).await?;
    }
    fixtures::history(b.tenant, kept.id).insert(conn).await?;
    tasks::Entity::delete_by_id((task.id, a.tenant))
        .exec(conn)
        .await?;
    let history = task_history::Entity::find().all(conn).await?;
    assert_eq!(history.len(), 1, "only the other task's history remains");
    assert_eq!(history[0].task_id, kept.id);

    fixtures::membership(conn, a.tenant, a.group, a.user).await?;
    fixtures::membership(conn, a.tenant, a.group, a.other_user).await?;
    fixtures::membership(conn, b.tenant, b.group, b.user).await?;
    groups::Entity::delete_by_id((a.group, a.tenant))
        .exec(conn)
        .await?;
    let members = group_members::Entity::find().all(conn).await?;
    assert_eq!(
        members.len(),
        1,
        "only the other tenant's membership remains"
    );
    assert_eq!(members[0].group_id, b.group);

    // Deleting a user removes their memberships too.
    users::Entity::delete_by_id((b.user, b.tenant))
        .exec(conn)
        .await?;
    assert_eq!(group_members::Entity::find().count(conn).await?, 0);

    // Deleting a conversation removes its messages.
    messages::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(a.tenant),
        conversation_id: Set(a.conversation),
        role: Set("user".to_owned()),
        content: Set("hello".to_owned()),
        ..Default::default()
    }
    .insert(conn)
    .await?;
    orkestra_entity::conversations::Entity::delete_by_id((a.conversation, a.tenant))
        .exec(conn)
        .await?;
    assert_eq!(messages::Entity::find().count(conn).await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_user_or_group_that_tasks_name_cannot_be_deleted() -> anyhow::Result<()> {
    let World { db, a, .. } = world().await?;
    let conn = db.conn();
    let mut task = fixtures::task(a.tenant);
    task.assigned_user_id = Set(Some(a.user));
    task.assigned_group_id = Set(Some(a.group));
    task.insert(conn).await?;

    assert_fk_refused(
        users::Entity::delete_by_id((a.user, a.tenant))
            .exec(conn)
            .await,
    );
    assert_fk_refused(
        groups::Entity::delete_by_id((a.group, a.tenant))
            .exec(conn)
            .await,
    );
    assert_fk_refused(tenants::Entity::delete_by_id(a.tenant).exec(conn).await);
    assert_eq!(users::Entity::find().count(conn).await?, 4);
    Ok(())
}

#[tokio::test]
async fn rows_get_the_seeds_defaults() -> anyhow::Result<()> {
    let World { db, a, .. } = world().await?;
    let conn = db.conn();

    let tenant = tenants::Entity::find_by_id(a.tenant)
        .one(conn)
        .await?
        .expect("tenant");
    assert_eq!(tenant.status, TenantStatus::Active);
    assert_eq!(tenant.config, json!({}));
    assert_eq!(tenant.limits, None);
    assert_eq!(tenant.created_at, tenant.updated_at);

    let user = users::Entity::find_by_id((a.user, a.tenant))
        .one(conn)
        .await?
        .expect("user");
    assert_eq!(user.role, UserRole::Member);
    assert_eq!(user.status, UserStatus::Active);
    assert_eq!(user.preferences, json!({}));
    assert_eq!(user.last_active_at, None);

    let group = groups::Entity::find_by_id((a.group, a.tenant))
        .one(conn)
        .await?
        .expect("group");
    assert_eq!(group.assignment_strategy, AssignmentStrategy::RoundRobin);

    let conversation =
        orkestra_entity::conversations::Entity::find_by_id((a.conversation, a.tenant))
            .one(conn)
            .await?
            .expect("conversation");
    assert_eq!(conversation.status, ConversationStatus::Active);

    let task = fixtures::task(a.tenant).insert(conn).await?;
    assert_eq!(task.status, TaskStatus::Created);
    assert_eq!(task.context, json!({}));
    assert!(task.created_at <= chrono::Utc::now().fixed_offset());
    Ok(())
}

#[tokio::test]
async fn an_unknown_enum_label_is_refused() -> anyhow::Result<()> {
    let World { db, a, .. } = world().await?;
    let conn = db.conn();
    fixtures::task(a.tenant).insert(conn).await?;
    // Raw SQL, past the entity's typed enum: PostgreSQL's enum type and SQLite's CHECK refuse it.
    let result = conn
        .execute_unprepared("UPDATE tasks SET status = 'DONE'")
        .await;
    assert!(result.is_err(), "an unknown status label was stored");
    let task = tasks::Entity::find().one(conn).await?.expect("task");
    assert_eq!(task.status, TaskStatus::Created);
    Ok(())
}

/// The task as stored now. SQLite's `RETURNING` shows a row before its `AFTER UPDATE` trigger ran,
/// so what the trigger wrote is read back rather than taken from the update.
async fn reread(conn: &impl ConnectionTrait, task: &tasks::Model) -> anyhow::Result<tasks::Model> {
    Ok(tasks::Entity::find_by_id((task.id, task.tenant_id))
        .one(conn)
        .await?
        .expect("task exists"))
}

/// Updates the task's title only (not `updated_at`) and returns the row as stored.
async fn touch(conn: &impl ConnectionTrait, task: &tasks::Model) -> anyhow::Result<tasks::Model> {
    let mut update = task.clone().into_active_model();
    update.title = Set(format!("{} again", task.title));
    update.update(conn).await?;
    reread(conn, task).await
}

#[tokio::test]
async fn updated_at_advances_on_every_update_even_within_one_transaction() -> anyhow::Result<()> {
    let World { db, a, .. } = world().await?;
    let conn = db.conn();
    let task = fixtures::task(a.tenant).insert(conn).await?;

    let first = touch(conn, &task).await?;
    assert!(first.updated_at > task.updated_at, "{first:?}");
    assert_eq!(first.created_at, task.created_at);

    // A statement that sets it backwards is moved forward anyway.
    let mut backdated = first.clone().into_active_model();
    let past: DateTime<FixedOffset> = "2000-01-01T00:00:00+00:00".parse()?;
    backdated.updated_at = Set(past);
    backdated.update(conn).await?;
    let backdated = reread(conn, &first).await?;
    assert!(backdated.updated_at > first.updated_at, "{backdated:?}");

    let txn = conn.begin().await?;
    let second = touch(&txn, &backdated).await?;
    let third = touch(&txn, &second).await?;
    txn.commit().await?;
    assert!(second.updated_at > backdated.updated_at);
    assert!(third.updated_at > second.updated_at, "{second:?} {third:?}");

    // The other tables that carry updated_at.
    let tenant = tenants::Entity::find_by_id(a.tenant)
        .one(conn)
        .await?
        .expect("tenant");
    let mut update = tenant.clone().into_active_model();
    update.name = Set("Renamed".to_owned());
    update.update(conn).await?;
    let renamed = tenants::Entity::find_by_id(a.tenant)
        .one(conn)
        .await?
        .expect("tenant");
    assert!(renamed.updated_at > tenant.updated_at);

    let group = groups::Entity::find_by_id((a.group, a.tenant))
        .one(conn)
        .await?
        .expect("group");
    let mut update = group.clone().into_active_model();
    update.description = Set(Some("Reviews things".to_owned()));
    update.update(conn).await?;
    let described = groups::Entity::find_by_id((a.group, a.tenant))
        .one(conn)
        .await?
        .expect("group");
    assert!(described.updated_at > group.updated_at);

    let conversation =
        orkestra_entity::conversations::Entity::find_by_id((a.conversation, a.tenant))
            .one(conn)
            .await?
            .expect("conversation");
    let mut update = conversation.clone().into_active_model();
    update.status = Set(ConversationStatus::Closed);
    update.update(conn).await?;
    let closed = orkestra_entity::conversations::Entity::find_by_id((a.conversation, a.tenant))
        .one(conn)
        .await?
        .expect("conversation");
    assert!(closed.updated_at > conversation.updated_at);
    Ok(())
}

#[tokio::test]
async fn named_links_follow_each_user_reference_of_a_task() -> anyhow::Result<()> {
    let World { db, a, .. } = world().await?;
    let conn = db.conn();
    let mut task = fixtures::task(a.tenant);
    task.assigned_user_id = Set(Some(a.user));
    task.claimed_by = Set(Some(a.user));
    task.completed_by = Set(Some(a.other_user));
    let task = task.insert(conn).await?;
    fixtures::task(a.tenant).insert(conn).await?;

    let scoped = || tasks::Entity::find().filter(tasks::Column::TenantId.eq(a.tenant));
    let assignee = scoped()
        .filter(tasks::Column::Id.eq(task.id))
        .find_also_linked(links::TaskAssignee)
        .one(conn)
        .await?
        .and_then(|(_, user)| user)
        .expect("assignee");
    assert_eq!(assignee.id, a.user);
    let claimer = scoped()
        .filter(tasks::Column::Id.eq(task.id))
        .find_also_linked(links::TaskClaimer)
        .one(conn)
        .await?
        .and_then(|(_, user)| user)
        .expect("claimer");
    assert_eq!(claimer.id, a.user);
    let completer = scoped()
        .filter(tasks::Column::Id.eq(task.id))
        .find_also_linked(links::TaskCompleter)
        .one(conn)
        .await?
        .and_then(|(_, user)| user)
        .expect("completer");
    assert_eq!(completer.id, a.other_user);

    // A task with no assignee comes back with none (a left join, not a dropped row).
    let all = scoped()
        .find_also_linked(links::TaskAssignee)
        .all(conn)
        .await?;
    assert_eq!(all.len(), 2);
    assert_eq!(all.iter().filter(|(_, user)| user.is_none()).count(), 1);
    Ok(())
}

#[tokio::test]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: set DATABASE_URL=postgres://..."
)]
async fn pg_raw_sql_assigning_a_task_to_another_tenants_user_is_refused_by_postgres()
-> anyhow::Result<()> {
    let db = TestDb::postgres_only().await?;
    let conn = db.conn();
    let a = side(conn, "acme").await?;
    let b = side(conn, "globex").await?;
    let task = Uuid::now_v7();

    // No entity, no repository: the statement an application bug (or a psql session) would send.
    let insert = format!(
        "INSERT INTO tasks (id, tenant_id, workflow_id, workflow_run_id, title, form_schema, \
         assigned_user_id) VALUES ('{task}', '{}', 'wf', 'run', 'T', '{{}}', '{}')",
        a.tenant, b.user
    );
    let error = conn
        .execute_unprepared(&insert)
        .await
        .expect_err("PostgreSQL accepted a cross-tenant assignee");
    assert!(
        error
            .to_string()
            .contains("tasks_tenant_id_assigned_user_id_fkey"),
        "{error}"
    );

    conn.execute_unprepared(&format!(
        "INSERT INTO tasks (id, tenant_id, workflow_id, workflow_run_id, title, form_schema) \
         VALUES ('{task}', '{}', 'wf', 'run', 'T', '{{}}')",
        a.tenant
    ))
    .await?;
    for (column, id, constraint) in [
        (
            "assigned_user_id",
            b.user,
            "tasks_tenant_id_assigned_user_id_fkey",
        ),
        (
            "assigned_group_id",
            b.group,
            "tasks_tenant_id_assigned_group_id_fkey",
        ),
        ("claimed_by", b.user, "tasks_tenant_id_claimed_by_fkey"),
        ("completed_by", b.user, "tasks_tenant_id_completed_by_fkey"),
        (
            "conversation_id",
            b.conversation,
            "tasks_tenant_id_conversation_id_fkey",
        ),
    ] {
        let error = conn
            .execute_unprepared(&format!(
                "UPDATE tasks SET {column} = '{id}' WHERE id = '{task}'"
            ))
            .await
            .expect_err("PostgreSQL accepted a cross-tenant reference");
        assert!(error.to_string().contains(constraint), "{column}: {error}");
    }
    // Moving a membership's rows is refused the same way.
    let error = conn
        .execute_unprepared(&format!(
            "INSERT INTO group_members (tenant_id, group_id, user_id) VALUES ('{}', '{}', '{}')",
            a.tenant, a.group, b.user
        ))
        .await
        .expect_err("PostgreSQL accepted a cross-tenant membership");
    assert!(
        error
            .to_string()
            .contains("group_members_tenant_id_user_id_fkey"),
        "{error}"
    );
    let unchanged: Option<Uuid> = tasks::Entity::find_by_id((task, a.tenant))
        .one(conn)
        .await?
        .expect("task")
        .assigned_user_id;
    assert_eq!(unchanged, None);
    Ok(())
}
