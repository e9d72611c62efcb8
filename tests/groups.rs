//! `GroupRepository` on the real schema, on both backends: creation and its validation, lookups,
//! keyset pages, updates, deletion, membership, member workloads, archiving and what an archived
//! group refuses, and confinement to the context's tenant.

use orkestra_entity::{
    group_members, groups,
    sea_orm_active_enums::{AssignmentStrategy, GroupStatus},
};
use orkestra_repository::{
    AssignTo, Error, GroupRepository, GroupUpdate, MemberWorkload, NewGroup, NewTask, NewTenant,
    NewUser, PageRequest, RequestContext, TaskRepository, TenantRepository, UserRepository,
    groups::{MEMBER_GROUP_FKEY, MEMBER_USER_FKEY, SLUG_KEY, TASK_GROUP_FKEY},
    validate::{DESCRIPTION_MAX, NAME_MAX, SLUG_MAX},
};
use orkestra_tests::{
    TestDb,
    repo::{
        Snapshot, assert_conflict, assert_not_found, assert_reference, assert_validation, ctx,
        refused,
    },
};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait};
use serde_json::json;
use uuid::Uuid;

/// A database with one tenant; returns it and the tenant's id.
async fn with_tenant() -> anyhow::Result<(TestDb, Uuid)> {
    let db = TestDb::migrated().await?;
    let tenant = tenant(db.conn(), "acme").await?;
    Ok((db, tenant))
}

async fn tenant(conn: &DatabaseConnection, slug: &str) -> anyhow::Result<Uuid> {
    Ok(TenantRepository::new(conn)
        .create(NewTenant::new(slug, slug))
        .await?
        .id)
}

async fn user(conn: &DatabaseConnection, ctx: &RequestContext, name: &str) -> anyhow::Result<Uuid> {
    Ok(UserRepository::new(conn)
        .create(ctx, NewUser::new(format!("{name}@example.com"), name))
        .await?
        .id)
}

async fn group(
    conn: &DatabaseConnection,
    ctx: &RequestContext,
    slug: &str,
) -> anyhow::Result<Uuid> {
    Ok(GroupRepository::new(conn)
        .create(ctx, NewGroup::new(slug, slug))
        .await?
        .id)
}

/// The group as stored now.
async fn stored(
    conn: &DatabaseConnection,
    tenant: Uuid,
    id: Uuid,
) -> anyhow::Result<groups::Model> {
    Ok(groups::Entity::find_by_id((id, tenant))
        .one(conn)
        .await?
        .expect("the group exists"))
}

/// A task to create, assigned to no one yet.
fn task() -> NewTask {
    NewTask::new("wf", "run", "Review", json!({}))
}

async fn membership_count(conn: &DatabaseConnection) -> anyhow::Result<u64> {
    Ok(group_members::Entity::find().count(conn).await?)
}

#[tokio::test]
async fn create_stores_a_group_with_defaults() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = GroupRepository::new(conn);
    let ctx = ctx(tenant);

    let reviewers = repo
        .create(&ctx, NewGroup::new("  Reviewers ", " reviewers "))
        .await?;
    assert_eq!(reviewers.tenant_id, tenant);
    assert_eq!(reviewers.name, "Reviewers");
    assert_eq!(reviewers.slug, "reviewers");
    assert_eq!(reviewers.description, None);
    assert_eq!(
        reviewers.assignment_strategy,
        AssignmentStrategy::RoundRobin
    );
    assert_eq!(reviewers.created_at, reviewers.updated_at);
    assert_eq!(stored(conn, tenant, reviewers.id).await?, reviewers);

    let tier2 = repo
        .create(
            &ctx,
            NewGroup {
                description: Some("  Second line  ".to_owned()),
                assignment_strategy: Some(AssignmentStrategy::LoadBalanced),
                ..NewGroup::new("Tier 2", "tier-2")
            },
        )
        .await?;
    assert_eq!(tier2.description.as_deref(), Some("Second line"));
    assert_eq!(tier2.assignment_strategy, AssignmentStrategy::LoadBalanced);
    assert_eq!(stored(conn, tenant, tier2.id).await?, tier2);

    assert_eq!(repo.find_by_id(&ctx, tier2.id).await?, Some(tier2.clone()));
    assert_eq!(repo.find_by_id(&ctx, Uuid::now_v7()).await?, None);
    assert_eq!(repo.find_by_slug(&ctx, " tier-2 ").await?, Some(tier2));
    assert_eq!(repo.find_by_slug(&ctx, "tier-3").await?, None);
    for slug in ["", "Tier-2", "tier--2", "-x", "t\0"] {
        let error = repo.find_by_slug(&ctx, slug).await.expect_err(slug);
        assert_validation(&error, "slug");
    }
    Ok(())
}

#[tokio::test]
async fn create_refuses_each_invalid_field_and_writes_nothing() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = GroupRepository::new(conn);
    let ctx = ctx(tenant);
    repo.create(&ctx, NewGroup::new("Existing", "existing"))
        .await?;

    let named = |name: &str| NewGroup::new(name, "reviewers");
    let slugged = |slug: &str| NewGroup::new("Reviewers", slug);
    let described = |description: &str| NewGroup {
        description: Some(description.to_owned()),
        ..NewGroup::new("Reviewers", "reviewers")
    };
    let cases = [
        (named(""), "name"),
        (named("   "), "name"),
        (named(&"n".repeat(NAME_MAX + 1)), "name"),
        (named("Re\0viewers"), "name"),
        (slugged(""), "slug"),
        (slugged(" "), "slug"),
        (slugged("Reviewers"), "slug"),
        (slugged("-reviewers"), "slug"),
        (slugged("reviewers-"), "slug"),
        (slugged("re--viewers"), "slug"),
        (slugged("re viewers"), "slug"),
        (slugged("re_viewers"), "slug"),
        (slugged("rëviewers"), "slug"),
        (slugged("re\0viewers"), "slug"),
        (slugged(&"s".repeat(SLUG_MAX + 1)), "slug"),
        (described(""), "description"),
        (described("  "), "description"),
        (described(&"d".repeat(DESCRIPTION_MAX + 1)), "description"),
        (described("a\0b"), "description"),
    ];
    for (group, field) in cases {
        let error = refused(conn, repo.create(&ctx, group.clone())).await?;
        assert_validation(&error, field);
    }

    // Exactly at the limits is accepted.
    let long = repo
        .create(
            &ctx,
            NewGroup {
                description: Some("é".repeat(DESCRIPTION_MAX)),
                ..NewGroup::new("n".repeat(NAME_MAX), "s".repeat(SLUG_MAX))
            },
        )
        .await?;
    assert_eq!(long.name.len(), NAME_MAX);
    assert_eq!(long.slug.len(), SLUG_MAX);
    assert_eq!(
        long.description.map(|d| d.chars().count()),
        Some(DESCRIPTION_MAX)
    );
    Ok(())
}

#[tokio::test]
async fn a_slug_is_unique_per_tenant() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = GroupRepository::new(conn);
    let reviewers = repo
        .create(&ctx(tenant), NewGroup::new("Reviewers", "reviewers"))
        .await?;

    for slug in ["reviewers", " reviewers "] {
        let error = refused(
            conn,
            repo.create(&ctx(tenant), NewGroup::new("Other", slug)),
        )
        .await?;
        assert_conflict(&error, SLUG_KEY);
    }
    assert_eq!(stored(conn, tenant, reviewers.id).await?, reviewers);

    let other = self::tenant(conn, "globex").await?;
    let twin = repo
        .create(&ctx(other), NewGroup::new("Reviewers", "reviewers"))
        .await?;
    assert_eq!(twin.slug, reviewers.slug);
    Ok(())
}

#[tokio::test]
async fn a_group_of_a_tenant_that_does_not_exist_is_refused() -> anyhow::Result<()> {
    let (db, _) = with_tenant().await?;
    let conn = db.conn();
    let error = refused(
        conn,
        GroupRepository::new(conn).create(&ctx(Uuid::now_v7()), NewGroup::new("R", "r")),
    )
    .await?;
    assert_reference(&error, "groups_tenant_id_fkey");
    Ok(())
}

/// Reads every page of the tenant's groups, `limit` at a time.
async fn walk_groups(
    repo: &GroupRepository<'_, DatabaseConnection>,
    ctx: &RequestContext,
    limit: u64,
) -> anyhow::Result<Vec<Uuid>> {
    let mut seen = Vec::new();
    let mut page = PageRequest::first(limit);
    loop {
        let result = repo.list(ctx, &page).await?;
        seen.extend(result.items.iter().map(|group| group.id));
        match result.next {
            Some(next) => {
                assert_eq!(Some(&next), seen.last(), "the cursor is the last row");
                assert_eq!(
                    result.items.len() as u64,
                    limit,
                    "a short page ends the list"
                );
                page = PageRequest::after(next, limit);
            }
            None => {
                assert!(result.items.len() as u64 <= limit);
                return Ok(seen);
            }
        }
    }
}

/// Reads every page of a group's members, `limit` at a time.
async fn walk_members(
    repo: &GroupRepository<'_, DatabaseConnection>,
    ctx: &RequestContext,
    group: Uuid,
    limit: u64,
) -> anyhow::Result<Vec<Uuid>> {
    let mut seen = Vec::new();
    let mut page = PageRequest::first(limit);
    loop {
        let result = repo.list_members(ctx, group, &page).await?;
        seen.extend(result.items.iter().map(|user| user.id));
        match result.next {
            Some(next) => {
                assert_eq!(Some(&next), seen.last(), "the cursor is the last row");
                assert_eq!(
                    result.items.len() as u64,
                    limit,
                    "a short page ends the list"
                );
                page = PageRequest::after(next, limit);
            }
            None => {
                assert!(result.items.len() as u64 <= limit);
                return Ok(seen);
            }
        }
    }
}

#[tokio::test]
async fn list_walks_every_page_in_creation_order() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = GroupRepository::new(conn);
    let ctx = ctx(tenant);
    let mut all = Vec::new();
    for n in 0..7 {
        all.push(group(conn, &ctx, &format!("g{n}")).await?);
    }
    let other = self::tenant(conn, "globex").await?;
    for n in 0..3 {
        group(conn, &self::ctx(other), &format!("g{n}")).await?;
    }

    for limit in [1, 2, 3, 6, 7, 8, 500] {
        assert_eq!(walk_groups(&repo, &ctx, limit).await?, all, "limit {limit}");
    }
    for limit in [0, 501] {
        let error = repo
            .list(&ctx, &PageRequest::first(limit))
            .await
            .expect_err("an out-of-range limit");
        assert_validation(&error, "limit");
    }
    Ok(())
}

#[tokio::test]
async fn update_changes_only_the_named_fields() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = GroupRepository::new(conn);
    let ctx = ctx(tenant);
    let reviewers = repo
        .create(
            &ctx,
            NewGroup {
                description: Some("Reviews".to_owned()),
                ..NewGroup::new("Reviewers", "reviewers")
            },
        )
        .await?;
    let other = repo.create(&ctx, NewGroup::new("Other", "other")).await?;

    let renamed = repo
        .update(
            &ctx,
            reviewers.id,
            GroupUpdate {
                name: Some(" Senior reviewers ".to_owned()),
                ..GroupUpdate::default()
            },
        )
        .await?;
    assert_eq!(renamed.name, "Senior reviewers");
    assert_eq!(renamed.description.as_deref(), Some("Reviews"));
    assert_eq!(renamed.slug, reviewers.slug);
    assert_eq!(renamed.created_at, reviewers.created_at);
    assert!(renamed.updated_at > reviewers.updated_at);
    assert_eq!(
        renamed,
        stored(conn, tenant, reviewers.id).await?,
        "returned as stored"
    );

    let undescribed = repo
        .update(
            &ctx,
            reviewers.id,
            GroupUpdate {
                description: Some(None),
                assignment_strategy: Some(AssignmentStrategy::Manual),
                ..GroupUpdate::default()
            },
        )
        .await?;
    assert_eq!(undescribed.description, None);
    assert_eq!(undescribed.assignment_strategy, AssignmentStrategy::Manual);
    assert_eq!(undescribed.name, "Senior reviewers");
    assert!(undescribed.updated_at > renamed.updated_at);

    let described = repo
        .update(
            &ctx,
            reviewers.id,
            GroupUpdate {
                description: Some(Some(" Look twice ".to_owned())),
                ..GroupUpdate::default()
            },
        )
        .await?;
    assert_eq!(described.description.as_deref(), Some("Look twice"));
    assert_eq!(described.assignment_strategy, AssignmentStrategy::Manual);
    let now = stored(conn, tenant, reviewers.id).await?;
    assert_eq!(described, now, "returned as stored");
    assert!(now.updated_at > undescribed.updated_at);
    assert_eq!(
        stored(conn, tenant, other.id).await?,
        other,
        "others unchanged"
    );
    Ok(())
}

#[tokio::test]
async fn update_refuses_invalid_changes_and_unknown_groups() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = GroupRepository::new(conn);
    let ctx = ctx(tenant);
    let reviewers = group(conn, &ctx, "reviewers").await?;

    let name = |name: &str| GroupUpdate {
        name: Some(name.to_owned()),
        ..GroupUpdate::default()
    };
    let description = |description: &str| GroupUpdate {
        description: Some(Some(description.to_owned())),
        ..GroupUpdate::default()
    };
    let cases = [
        (GroupUpdate::default(), "update"),
        (name(""), "name"),
        (name("  "), "name"),
        (name(&"n".repeat(NAME_MAX + 1)), "name"),
        (name("a\0"), "name"),
        (description(""), "description"),
        (description(" "), "description"),
        (description(&"d".repeat(DESCRIPTION_MAX + 1)), "description"),
        (description("\0"), "description"),
        // A valid field does not carry an invalid one through.
        (
            GroupUpdate {
                name: Some("Fine".to_owned()),
                description: Some(Some(String::new())),
                assignment_strategy: Some(AssignmentStrategy::Manual),
            },
            "description",
        ),
    ];
    for (update, field) in cases {
        let error = refused(conn, repo.update(&ctx, reviewers, update)).await?;
        assert_validation(&error, field);
    }
    let at_limit = repo
        .update(
            &ctx,
            reviewers,
            GroupUpdate {
                name: Some("n".repeat(NAME_MAX)),
                description: Some(Some("d".repeat(DESCRIPTION_MAX))),
                assignment_strategy: None,
            },
        )
        .await?;
    assert_eq!(at_limit.name.len(), NAME_MAX);

    let ghost = Uuid::now_v7();
    let error = refused(conn, repo.update(&ctx, ghost, name("Ghost"))).await?;
    assert_not_found(&error, "group", ghost);
    Ok(())
}

#[tokio::test]
async fn delete_removes_the_group_and_its_memberships_only() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = GroupRepository::new(conn);
    let ctx = ctx(tenant);
    let (ada, grace) = (
        user(conn, &ctx, "ada").await?,
        user(conn, &ctx, "grace").await?,
    );
    let (doomed, kept) = (
        group(conn, &ctx, "doomed").await?,
        group(conn, &ctx, "kept").await?,
    );
    for (g, u) in [(doomed, ada), (doomed, grace), (kept, ada)] {
        assert!(repo.add_member(&ctx, g, u).await?);
    }

    repo.delete(&ctx, doomed).await?;
    assert_eq!(repo.find_by_id(&ctx, doomed).await?, None);
    let left = Snapshot::all(conn).await?;
    assert_eq!(
        left.memberships,
        [group_members::Model {
            tenant_id: tenant,
            group_id: kept,
            user_id: ada,
        }]
    );
    assert_eq!(left.users.len(), 2, "the members stay");
    assert_eq!(left.groups.len(), 1);

    for ghost in [doomed, Uuid::now_v7()] {
        let error = refused(conn, repo.delete(&ctx, ghost)).await?;
        assert_not_found(&error, "group", ghost);
    }
    Ok(())
}

#[tokio::test]
async fn a_group_that_tasks_name_cannot_be_deleted() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = GroupRepository::new(conn);
    let tasks = TaskRepository::new(conn);
    let ctx = ctx(tenant);
    let ada = user(conn, &ctx, "ada").await?;
    let reviewers = group(conn, &ctx, "reviewers").await?;
    repo.add_member(&ctx, reviewers, ada).await?;
    let task = tasks
        .create(
            &ctx,
            NewTask::new("wf", "run", "Review", json!({})).assigned_to(AssignTo::group(reviewers)),
        )
        .await?;

    let error = refused(conn, repo.delete(&ctx, reviewers)).await?;
    assert_reference(&error, TASK_GROUP_FKEY);
    assert_eq!(membership_count(conn).await?, 1, "the memberships stay too");

    // A finished task still names its group (the record keeps who it was for).
    tasks.claim(&ctx, task.id, ada).await?;
    tasks.complete(&ctx, task.id, ada, json!({})).await?;
    let error = refused(conn, repo.delete(&ctx, reviewers)).await?;
    assert_reference(&error, TASK_GROUP_FKEY);
    Ok(())
}

#[tokio::test]
async fn adding_a_member_twice_keeps_one_membership() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = GroupRepository::new(conn);
    let ctx = ctx(tenant);
    let (ada, grace) = (
        user(conn, &ctx, "ada").await?,
        user(conn, &ctx, "grace").await?,
    );
    let reviewers = group(conn, &ctx, "reviewers").await?;

    assert!(repo.add_member(&ctx, reviewers, ada).await?);
    let before = Snapshot::all(conn).await?;
    assert!(
        !repo.add_member(&ctx, reviewers, ada).await?,
        "already a member"
    );
    assert_eq!(Snapshot::all(conn).await?, before);
    assert!(repo.add_member(&ctx, reviewers, grace).await?);
    assert_eq!(membership_count(conn).await?, 2);

    assert!(repo.remove_member(&ctx, reviewers, ada).await?);
    assert!(
        !repo.remove_member(&ctx, reviewers, ada).await?,
        "no longer a member"
    );
    assert!(!repo.remove_member(&ctx, Uuid::now_v7(), grace).await?);
    assert!(!repo.remove_member(&ctx, reviewers, Uuid::now_v7()).await?);
    let left = Snapshot::all(conn).await?;
    assert_eq!(
        left.memberships,
        [group_members::Model {
            tenant_id: tenant,
            group_id: reviewers,
            user_id: grace,
        }]
    );
    // Removing a membership leaves the user and the group.
    assert_eq!(left.users.len(), 2);
    assert_eq!(left.groups.len(), 1);

    // Joining again after leaving works.
    assert!(repo.add_member(&ctx, reviewers, ada).await?);
    assert_eq!(membership_count(conn).await?, 2);
    Ok(())
}

#[tokio::test]
async fn a_membership_naming_a_missing_group_or_user_is_refused() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = GroupRepository::new(conn);
    let ctx = ctx(tenant);
    let ada = user(conn, &ctx, "ada").await?;
    let reviewers = group(conn, &ctx, "reviewers").await?;
    repo.add_member(&ctx, reviewers, ada).await?;
    let (no_group, no_user) = (Uuid::now_v7(), Uuid::now_v7());

    let cases = [
        (no_group, ada, MEMBER_GROUP_FKEY),
        (reviewers, no_user, MEMBER_USER_FKEY),
        // Both missing: the group is reported, on both backends.
        (no_group, no_user, MEMBER_GROUP_FKEY),
    ];
    for (group, user, constraint) in cases {
        let error = refused(conn, repo.add_member(&ctx, group, user)).await?;
        assert_reference(&error, constraint);
    }
    Ok(())
}

#[tokio::test]
async fn list_members_pages_by_user_id_and_list_user_groups_in_creation_order() -> anyhow::Result<()>
{
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = GroupRepository::new(conn);
    let ctx = ctx(tenant);
    let mut people = Vec::new();
    for n in 0..9 {
        people.push(user(conn, &ctx, &format!("user{n}")).await?);
    }
    let mut all_groups = Vec::new();
    for slug in ["a", "b", "c", "d"] {
        all_groups.push(group(conn, &ctx, slug).await?);
    }
    let (big, small) = (all_groups[0], all_groups[1]);
    // Members join in reverse; the list still follows user ids. Users 0 and 8 stay out.
    let members: Vec<Uuid> = people[1..8].to_vec();
    for &member in members.iter().rev() {
        repo.add_member(&ctx, big, member).await?;
    }
    repo.add_member(&ctx, small, people[0]).await?;

    for limit in [1, 2, 3, 6, 7, 8, 500] {
        assert_eq!(
            walk_members(&repo, &ctx, big, limit).await?,
            members,
            "limit {limit}"
        );
    }
    assert_eq!(walk_members(&repo, &ctx, small, 1).await?, [people[0]]);
    assert!(
        walk_members(&repo, &ctx, all_groups[2], 5)
            .await?
            .is_empty()
    );
    assert!(
        walk_members(&repo, &ctx, Uuid::now_v7(), 5)
            .await?
            .is_empty()
    );
    let page = repo.list_members(&ctx, big, &PageRequest::first(2)).await?;
    assert_eq!(
        page.items[0].email, "user1@example.com",
        "whole users come back"
    );
    for limit in [0, 501] {
        let error = repo
            .list_members(&ctx, big, &PageRequest::first(limit))
            .await
            .expect_err("an out-of-range limit");
        assert_validation(&error, "limit");
    }

    // User 3 joins d, b and a (in that order); the list follows group creation.
    repo.add_member(&ctx, all_groups[3], people[3]).await?;
    repo.add_member(&ctx, small, people[3]).await?;
    let ids = |groups: Vec<groups::Model>| groups.into_iter().map(|g| g.id).collect::<Vec<_>>();
    assert_eq!(
        ids(repo.list_user_groups(&ctx, people[3]).await?),
        [all_groups[0], all_groups[1], all_groups[3]]
    );
    assert_eq!(ids(repo.list_user_groups(&ctx, people[0]).await?), [small]);
    assert!(repo.list_user_groups(&ctx, people[8]).await?.is_empty());
    assert!(
        repo.list_user_groups(&ctx, Uuid::now_v7())
            .await?
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn member_workloads_count_open_tasks_least_loaded_first() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let conn = db.conn();
    let (a, b) = (tenant(conn, "acme").await?, tenant(conn, "globex").await?);
    let (ctx, ctx_b) = (ctx(a), ctx(b));
    let repo = GroupRepository::new(conn);
    let tasks = TaskRepository::new(conn);

    let mut m = Vec::new();
    for n in 0..5 {
        m.push(user(conn, &ctx, &format!("m{n}")).await?);
    }
    let h = user(conn, &ctx, "h").await?;
    let outsider = user(conn, &ctx, "outsider").await?;
    let (g, other_group) = (group(conn, &ctx, "g").await?, group(conn, &ctx, "h").await?);
    for &member in &m {
        repo.add_member(&ctx, g, member).await?;
    }
    repo.add_member(&ctx, other_group, h).await?;
    repo.add_member(&ctx, other_group, m[1]).await?;

    let new = |to: AssignTo| NewTask::new("wf", "run", "Do it", json!({})).assigned_to(to);
    let both = |user: Uuid, group: Uuid| AssignTo {
        user_id: Some(user),
        group_id: Some(group),
    };
    // m0 holds nothing.
    // m1: finished tasks do not count; a task of the other group m1 claimed does, since a
    // workload is everything the user holds.
    let done = tasks.create(&ctx, new(AssignTo::user(m[1]))).await?;
    tasks.complete(&ctx, done.id, m[1], json!({})).await?;
    let cancelled = tasks.create(&ctx, new(AssignTo::user(m[1]))).await?;
    tasks.cancel(&ctx, cancelled.id, None).await?;
    let claimed_then_done = tasks.create(&ctx, new(AssignTo::group(g))).await?;
    tasks.claim(&ctx, claimed_then_done.id, m[1]).await?;
    tasks
        .complete(&ctx, claimed_then_done.id, m[1], json!({}))
        .await?;
    let elsewhere = tasks
        .create(&ctx, new(AssignTo::group(other_group)))
        .await?;
    tasks.claim(&ctx, elsewhere.id, m[1]).await?;
    // m2: two direct assignments, plus m3's task claimed through the group (it counts for the
    // claimer, not the assignee).
    let mut direct = Vec::new();
    for _ in 0..2 {
        direct.push(tasks.create(&ctx, new(AssignTo::user(m[2]))).await?.id);
    }
    let taken = tasks.create(&ctx, new(both(m[3], g))).await?;
    tasks.claim(&ctx, taken.id, m[2]).await?;
    // m3: one group task claimed.
    let claimed = tasks.create(&ctx, new(AssignTo::group(g))).await?;
    tasks.claim(&ctx, claimed.id, m[3]).await?;
    // m4: one escalated and one assigned; an expired one does not count.
    let escalated = tasks.create(&ctx, new(AssignTo::user(m[4]))).await?;
    tasks.escalate(&ctx, escalated.id, None, None).await?;
    tasks.create(&ctx, new(AssignTo::user(m[4]))).await?;
    let expired = tasks.create(&ctx, new(AssignTo::user(m[4]))).await?;
    tasks.expire(&ctx, expired.id).await?;
    // Held by nobody: unclaimed group tasks, of this group and the other.
    tasks.create(&ctx, new(AssignTo::group(g))).await?;
    tasks
        .create(&ctx, new(AssignTo::group(other_group)))
        .await?;
    // Held by people outside the group.
    tasks.create(&ctx, new(AssignTo::user(h))).await?;
    tasks.create(&ctx, new(AssignTo::user(outsider))).await?;
    // Another tenant: a group with a busy member.
    let b_member = user(conn, &ctx_b, "b").await?;
    let b_group = group(conn, &ctx_b, "g").await?;
    repo.add_member(&ctx_b, b_group, b_member).await?;
    for _ in 0..2 {
        tasks.create(&ctx_b, new(AssignTo::user(b_member))).await?;
    }

    let load = |user: Uuid, open: i64| MemberWorkload {
        user_id: user,
        open_tasks: open,
    };
    assert_eq!(
        repo.member_workloads(&ctx, g).await?,
        // m1 and m3 tie: user id decides.
        [
            load(m[0], 0),
            load(m[1], 1),
            load(m[3], 1),
            load(m[4], 2),
            load(m[2], 3)
        ]
    );
    assert_eq!(
        repo.member_workloads(&ctx, other_group).await?,
        [load(m[1], 1), load(h, 1)]
    );
    assert_eq!(
        repo.member_workloads(&ctx_b, b_group).await?,
        [load(b_member, 2)]
    );
    assert!(
        repo.member_workloads(&ctx, Uuid::now_v7())
            .await?
            .is_empty()
    );
    assert!(repo.member_workloads(&ctx, b_group).await?.is_empty());
    assert!(repo.member_workloads(&ctx_b, g).await?.is_empty());

    // Finishing work moves a member up the list.
    for task in direct.into_iter().chain([taken.id]) {
        tasks.complete(&ctx, task, m[2], json!({})).await?;
    }
    assert_eq!(
        repo.member_workloads(&ctx, g).await?,
        [
            load(m[0], 0),
            load(m[2], 0),
            load(m[1], 1),
            load(m[3], 1),
            load(m[4], 2)
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_tenant_sees_and_changes_none_of_another_tenants_groups() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let conn = db.conn();
    let (a, b) = (tenant(conn, "acme").await?, tenant(conn, "globex").await?);
    let (ctx_a, ctx_b) = (ctx(a), ctx(b));
    let repo = GroupRepository::new(conn);
    // Mirror images: the same slugs, emails and memberships in both tenants.
    let (ada_a, ada_b) = (
        user(conn, &ctx_a, "ada").await?,
        user(conn, &ctx_b, "ada").await?,
    );
    user(conn, &ctx_a, "grace").await?;
    let grace_b = user(conn, &ctx_b, "grace").await?;
    let (team_a, team_b) = (
        group(conn, &ctx_a, "team").await?,
        group(conn, &ctx_b, "team").await?,
    );
    let solo_b = group(conn, &ctx_b, "solo").await?;
    for (ctx, group, user) in [
        (&ctx_a, team_a, ada_a),
        (&ctx_b, team_b, ada_b),
        (&ctx_b, team_b, grace_b),
        (&ctx_b, solo_b, grace_b),
    ] {
        repo.add_member(ctx, group, user).await?;
    }
    TaskRepository::new(conn)
        .create(
            &ctx_b,
            NewTask::new("wf", "run", "B's", json!({})).assigned_to(AssignTo::user(grace_b)),
        )
        .await?;
    let b_before = Snapshot::of_tenant(conn, b).await?;

    // Reads under A.
    for id in [team_b, solo_b] {
        assert_eq!(repo.find_by_id(&ctx_a, id).await?, None);
        let members = repo
            .list_members(&ctx_a, id, &PageRequest::first(500))
            .await?;
        assert!(members.items.is_empty(), "{members:?}");
        assert!(repo.member_workloads(&ctx_a, id).await?.is_empty());
    }
    assert_eq!(
        repo.find_by_slug(&ctx_a, "team").await?.map(|g| g.id),
        Some(team_a),
        "A's own group, not B's"
    );
    assert_eq!(repo.find_by_slug(&ctx_a, "solo").await?, None);
    let listed = repo.list(&ctx_a, &PageRequest::first(500)).await?;
    assert_eq!(
        listed.items.iter().map(|g| g.id).collect::<Vec<_>>(),
        [team_a]
    );
    for user in [ada_b, grace_b] {
        assert!(repo.list_user_groups(&ctx_a, user).await?.is_empty());
    }
    let members = repo
        .list_members(&ctx_a, team_a, &PageRequest::first(500))
        .await?;
    assert_eq!(
        members.items.iter().map(|u| u.id).collect::<Vec<_>>(),
        [ada_a]
    );
    assert_eq!(
        repo.member_workloads(&ctx_a, team_a).await?,
        [MemberWorkload {
            user_id: ada_a,
            open_tasks: 0
        }]
    );

    // Writes under A naming B's rows.
    let rename = GroupUpdate {
        name: Some("Hijacked".to_owned()),
        description: Some(Some("owned".to_owned())),
        assignment_strategy: Some(AssignmentStrategy::Manual),
    };
    for id in [team_b, solo_b] {
        let error = refused(conn, repo.update(&ctx_a, id, rename.clone())).await?;
        assert_not_found(&error, "group", id);
        let error = refused(conn, repo.delete(&ctx_a, id)).await?;
        assert_not_found(&error, "group", id);
    }
    for (group, user, constraint) in [
        (team_b, ada_a, MEMBER_GROUP_FKEY),
        (team_a, grace_b, MEMBER_USER_FKEY),
        (team_b, grace_b, MEMBER_GROUP_FKEY),
        (solo_b, ada_b, MEMBER_GROUP_FKEY),
    ] {
        let error = refused(conn, repo.add_member(&ctx_a, group, user)).await?;
        assert_reference(&error, constraint);
    }
    for (group, user) in [(team_b, ada_b), (team_b, grace_b), (solo_b, grace_b)] {
        assert!(!repo.remove_member(&ctx_a, group, user).await?);
    }
    assert_eq!(Snapshot::of_tenant(conn, b).await?, b_before, "B unchanged");
    assert_eq!(membership_count(conn).await?, 4);
    Ok(())
}

/// Asserts that `error` is the refusal of `action` on an archived group.
#[track_caller]
fn assert_archived(error: &Error, group: Uuid, action: &str) {
    match error {
        Error::InvalidState {
            entity: "group",
            id,
            state,
            action: a,
        } => {
            assert_eq!(id, &group.to_string());
            assert_eq!(state, "ARCHIVED");
            assert_eq!(*a, action);
        }
        other => panic!("expected the archived group refused, got {other:?}"),
    }
}

#[tokio::test]
async fn an_archived_group_takes_no_new_tasks_or_members_and_keeps_its_history()
-> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let (conn, app) = (db.conn(), db.app_conn());
    let ctx = ctx(tenant);
    let (ada, grace) = (
        user(conn, &ctx, "ada").await?,
        user(conn, &ctx, "grace").await?,
    );
    let (retired, other) = (
        group(conn, &ctx, "retired").await?,
        group(conn, &ctx, "other").await?,
    );
    let groups = GroupRepository::new(app);
    let tasks = TaskRepository::new(app);
    groups.add_member(&ctx, retired, ada).await?;
    groups.add_member(&ctx, other, grace).await?;
    let waiting = tasks
        .create(&ctx, task().assigned_to(AssignTo::group(retired)))
        .await?;
    let claimed = tasks
        .create(&ctx, task().assigned_to(AssignTo::group(retired)))
        .await?;
    tasks.claim(&ctx, claimed.id, ada).await?;
    let finished = tasks
        .create(&ctx, task().assigned_to(AssignTo::group(retired)))
        .await?;
    tasks.cancel(&ctx, finished.id, Some("not needed")).await?;
    let mine = tasks
        .create(
            &ctx,
            task().assigned_to(AssignTo {
                user_id: Some(ada),
                group_id: Some(retired),
            }),
        )
        .await?;
    assert_eq!(
        tasks
            .find_pending_for_user(&ctx, ada, &PageRequest::first(10))
            .await?
            .items
            .len(),
        2,
        "before archiving, ada sees the group's task and her own"
    );

    let archived = groups.archive(&ctx, retired).await?;
    assert_eq!(archived.status, GroupStatus::Archived);
    let at = archived.archived_at.expect("archived_at is set");
    assert_eq!(stored(conn, tenant, retired).await?, archived);
    assert_eq!(
        groups.find_by_id(&ctx, retired).await?.map(|g| g.status),
        Some(GroupStatus::Archived)
    );

    // No new members, no new tasks, no task moved to it.
    let error = refused(conn, groups.add_member(&ctx, retired, grace)).await?;
    assert_archived(&error, retired, "add a member to");
    let error = refused(
        conn,
        tasks.create(&ctx, task().assigned_to(AssignTo::group(retired))),
    )
    .await?;
    assert_archived(&error, retired, "assign a task to");
    let elsewhere = tasks
        .create(&ctx, task().assigned_to(AssignTo::group(other)))
        .await?;
    let error = refused(
        conn,
        tasks.assign(&ctx, elsewhere.id, AssignTo::group(retired)),
    )
    .await?;
    assert_archived(&error, retired, "assign a task to");
    let error = refused(conn, groups.archive(&ctx, retired)).await?;
    assert_archived(&error, retired, "archive");

    // Its members no longer see or claim its tasks; a task assigned to them by name stays theirs.
    let inbox = tasks
        .find_pending_for_user(&ctx, ada, &PageRequest::first(10))
        .await?;
    assert_eq!(
        inbox.items.iter().map(|t| t.id).collect::<Vec<_>>(),
        [mine.id]
    );
    let error = refused(conn, tasks.claim(&ctx, waiting.id, ada)).await?;
    assert!(matches!(error, Error::Forbidden { .. }), "{error:?}");
    let next = tasks.claim_next(&ctx, ada).await?;
    assert_eq!(next.map(|t| t.id), Some(mine.id), "only her own task");
    assert_eq!(tasks.claim_next(&ctx, ada).await?, None);

    // The open tasks are listed for handing on; the finished one is not.
    let stranded = tasks
        .list_in_archived_groups(&ctx, &PageRequest::first(10))
        .await?;
    let mut ids: Vec<Uuid> = stranded.items.iter().map(|t| t.id).collect();
    ids.sort();
    let mut open = vec![waiting.id, claimed.id, mine.id];
    open.sort();
    assert_eq!(ids, open);
    // The claimed one stays with its claimer, who completes it.
    tasks
        .complete(&ctx, claimed.id, ada, json!({"ok": true}))
        .await?;
    // The waiting one moves to an active group, whose member claims it.
    tasks
        .assign(&ctx, waiting.id, AssignTo::group(other))
        .await?;
    tasks.claim(&ctx, waiting.id, grace).await?;
    let stranded = tasks
        .list_in_archived_groups(&ctx, &PageRequest::first(10))
        .await?;
    assert_eq!(
        stranded.items.iter().map(|t| t.id).collect::<Vec<_>>(),
        [mine.id]
    );

    // History still names the group; members can still leave it; it still cannot be deleted.
    let history = tasks.history(&ctx, finished.id).await?;
    assert_eq!(
        history[0]
            .details
            .as_ref()
            .map(|d| d["assigned_group_id"].clone()),
        Some(json!(retired))
    );
    assert!(groups.remove_member(&ctx, retired, ada).await?);
    let error = refused(conn, groups.delete(&ctx, retired)).await?;
    assert_reference(&error, TASK_GROUP_FKEY);

    // Restored, it takes members and tasks again.
    let restored = groups.restore(&ctx, retired).await?;
    assert_eq!(
        (restored.status, restored.archived_at),
        (GroupStatus::Active, None)
    );
    assert!(restored.updated_at >= at);
    assert!(groups.add_member(&ctx, retired, grace).await?);
    tasks
        .create(&ctx, task().assigned_to(AssignTo::group(retired)))
        .await?;
    assert!(
        tasks
            .list_in_archived_groups(&ctx, &PageRequest::first(10))
            .await?
            .items
            .is_empty()
    );
    let error = refused(conn, groups.restore(&ctx, retired)).await?;
    assert!(
        matches!(&error, Error::InvalidState { entity: "group", state, action: "restore", .. } if state == "ACTIVE"),
        "{error:?}"
    );
    Ok(())
}

#[tokio::test]
async fn archiving_is_confined_to_the_contexts_tenant() -> anyhow::Result<()> {
    let (db, acme) = with_tenant().await?;
    let (conn, app) = (db.conn(), db.app_conn());
    let globex = tenant(conn, "globex").await?;
    let (acme_ctx, globex_ctx) = (ctx(acme), ctx(globex));
    let theirs = group(conn, &globex_ctx, "theirs").await?;
    let groups = GroupRepository::new(app);
    let error = refused(conn, groups.archive(&acme_ctx, theirs)).await?;
    assert_not_found(&error, "group", theirs);
    groups.archive(&globex_ctx, theirs).await?;
    let error = refused(conn, groups.restore(&acme_ctx, theirs)).await?;
    assert_not_found(&error, "group", theirs);
    let globex_user = user(conn, &globex_ctx, "hal").await?;
    // Globex's archived group strands none of Acme's tasks, and Acme's list shows none of its.
    let acme_group = group(conn, &acme_ctx, "ours").await?;
    TaskRepository::new(app)
        .create(&acme_ctx, task().assigned_to(AssignTo::group(acme_group)))
        .await?;
    assert!(
        TaskRepository::new(app)
            .list_in_archived_groups(&acme_ctx, &PageRequest::first(10))
            .await?
            .items
            .is_empty()
    );
    assert!(
        TaskRepository::new(app)
            .list_in_archived_groups(&globex_ctx, &PageRequest::first(10))
            .await?
            .items
            .is_empty()
    );
    let error = refused(conn, groups.add_member(&globex_ctx, theirs, globex_user)).await?;
    assert_archived(&error, theirs, "add a member to");
    Ok(())
}

/// PostgreSQL itself keeps `archived_at` set exactly while a group is archived.
#[tokio::test]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "SQLite cannot add a table constraint to an existing table"
)]
async fn pg_archived_at_is_set_exactly_when_archived() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let ctx = ctx(tenant);
    let id = group(conn, &ctx, "g").await?;
    for set in [
        "status = 'ARCHIVED'",
        "archived_at = now()",
        "status = 'ACTIVE', archived_at = now()",
    ] {
        let sql = format!("UPDATE groups SET {set} WHERE id = '{id}'");
        let error = conn
            .execute_unprepared(&sql)
            .await
            .expect_err("the check refuses it");
        assert!(
            error.to_string().contains("groups_archived_at_check"),
            "{set}: {error}"
        );
    }
    Ok(())
}
