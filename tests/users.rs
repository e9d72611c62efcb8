//! `UserRepository` on the real schema, on both backends: creation and its validation, email
//! normalisation and uniqueness per tenant, lookups, filtered keyset pages, updates, status and
//! activity, and confinement to the context's tenant.

use chrono::Utc;
use orkestra_entity::{
    sea_orm_active_enums::{UserRole, UserStatus},
    users,
};
use orkestra_repository::{
    NewTenant, NewUser, PageRequest, TenantRepository, UserFilter, UserRepository, UserUpdate,
    users::EMAIL_KEY,
    validate::{EMAIL_MAX, NAME_MAX},
};
use orkestra_tests::{
    TestDb, fixtures,
    repo::{
        Snapshot, assert_conflict, assert_not_found, assert_reference, assert_validation, ctx,
        refused,
    },
};
use sea_orm::{DatabaseConnection, EntityTrait};
use serde_json::{Value, json};
use uuid::Uuid;

/// A database with one tenant; returns it and the tenant's id.
async fn with_tenant() -> anyhow::Result<(TestDb, Uuid)> {
    let db = TestDb::migrated().await?;
    let tenant = TenantRepository::new(db.conn())
        .create(NewTenant::new("Acme", "acme"))
        .await?
        .id;
    Ok((db, tenant))
}

/// The user as stored now.
async fn stored(conn: &DatabaseConnection, tenant: Uuid, id: Uuid) -> anyhow::Result<users::Model> {
    Ok(users::Entity::find_by_id((id, tenant))
        .one(conn)
        .await?
        .expect("the user exists"))
}

#[tokio::test]
async fn create_normalises_and_stores_a_user() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = UserRepository::new(conn);
    let ctx = ctx(tenant);

    let ada = repo
        .create(
            &ctx,
            NewUser::new("  Ada.Lovelace@Example.COM \t", "  Ada  "),
        )
        .await?;
    assert_eq!(ada.tenant_id, tenant);
    assert_eq!(
        ada.email, "ada.lovelace@example.com",
        "trimmed and lower-cased"
    );
    assert_eq!(ada.name, "Ada");
    assert_eq!(ada.role, UserRole::Member);
    assert_eq!(ada.status, UserStatus::Active);
    assert_eq!(ada.preferences, json!({}));
    assert_eq!(ada.last_active_at, None);
    assert_eq!(
        stored(conn, tenant, ada.id).await?,
        ada,
        "returned as stored"
    );

    let mut grace = NewUser::new("grace@example.com", "Grace");
    grace.role = Some(UserRole::Admin);
    grace.preferences = Some(json!({"theme": "dark", "digest": [1, 2]}));
    let grace = repo.create(&ctx, grace).await?;
    assert_eq!(grace.role, UserRole::Admin);
    assert_eq!(
        grace.preferences,
        json!({"theme": "dark", "digest": [1, 2]})
    );
    assert_eq!(stored(conn, tenant, grace.id).await?, grace);

    assert_eq!(repo.find_by_id(&ctx, ada.id).await?, Some(ada));
    assert_eq!(repo.find_by_id(&ctx, Uuid::now_v7()).await?, None);
    Ok(())
}

#[tokio::test]
async fn create_refuses_each_invalid_field_and_writes_nothing() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = UserRepository::new(conn);
    let ctx = ctx(tenant);
    repo.create(&ctx, NewUser::new("existing@example.com", "Existing"))
        .await?;

    let at_domain = "@example.com";
    let local_at_limit = "a".repeat(EMAIL_MAX - at_domain.len());
    let emailed = |email: &str| NewUser::new(email, "Ada");
    let named = |name: &str| NewUser::new("ada@example.com", name);
    let preferring = |preferences: Value| NewUser {
        preferences: Some(preferences),
        ..NewUser::new("ada@example.com", "Ada")
    };
    let cases = [
        (emailed(""), "email"),
        (emailed("   "), "email"),
        (emailed("ada"), "email"),
        (emailed("@example.com"), "email"),
        (emailed("ada@"), "email"),
        (emailed("ada@example"), "email"),
        (emailed("ada@.example.com"), "email"),
        (emailed("ada@example.com."), "email"),
        (emailed("a b@example.com"), "email"),
        (emailed("ada@exa@mple.com"), "email"),
        (emailed("ada\u{7}@example.com"), "email"),
        (emailed("ada\0@example.com"), "email"),
        (emailed(&format!("{local_at_limit}a{at_domain}")), "email"),
        (named(""), "name"),
        (named(" \t "), "name"),
        (named(&"n".repeat(NAME_MAX + 1)), "name"),
        (named("Ad\0a"), "name"),
        (preferring(json!([])), "preferences"),
        (preferring(json!("dark")), "preferences"),
        (preferring(Value::Null), "preferences"),
        (preferring(json!({"theme": "da\u{0}rk"})), "preferences"),
    ];
    for (user, field) in cases {
        let error = refused(conn, repo.create(&ctx, user.clone())).await?;
        assert_validation(&error, field);
    }

    // Exactly at the limits is accepted.
    let email = format!("{local_at_limit}{at_domain}");
    assert_eq!(email.len(), EMAIL_MAX);
    let long = repo
        .create(&ctx, NewUser::new(email.clone(), "é".repeat(NAME_MAX)))
        .await?;
    assert_eq!(long.email, email);
    assert_eq!(long.name.chars().count(), NAME_MAX);
    Ok(())
}

#[tokio::test]
async fn an_email_is_unique_per_tenant_whatever_its_case() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = UserRepository::new(conn);
    let ada = repo
        .create(&ctx(tenant), NewUser::new("ada@example.com", "Ada"))
        .await?;

    for email in ["ada@example.com", "ADA@Example.com", "  ada@example.com  "] {
        let error = refused(
            conn,
            repo.create(&ctx(tenant), NewUser::new(email, "Other")),
        )
        .await?;
        assert_conflict(&error, EMAIL_KEY);
    }
    assert_eq!(stored(conn, tenant, ada.id).await?, ada);

    // Another tenant may have the same address.
    let other = TenantRepository::new(conn)
        .create(NewTenant::new("Globex", "globex"))
        .await?
        .id;
    let twin = repo
        .create(&ctx(other), NewUser::new("Ada@Example.com", "Ada"))
        .await?;
    assert_eq!(twin.email, ada.email);
    assert_ne!(twin.id, ada.id);
    Ok(())
}

#[tokio::test]
async fn a_user_of_a_tenant_that_does_not_exist_is_refused() -> anyhow::Result<()> {
    let (db, _) = with_tenant().await?;
    let conn = db.conn();
    let ghost = Uuid::now_v7();
    let error = refused(
        conn,
        UserRepository::new(conn).create(&ctx(ghost), NewUser::new("ada@example.com", "Ada")),
    )
    .await?;
    assert_reference(&error, "users_tenant_id_fkey");
    Ok(())
}

#[tokio::test]
async fn find_by_email_matches_case_insensitively_within_the_tenant() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = UserRepository::new(conn);
    let ctx = ctx(tenant);
    let ada = repo
        .create(&ctx, NewUser::new("Ada@Example.com", "Ada"))
        .await?;

    for email in ["ada@example.com", "ADA@EXAMPLE.COM", "  aDa@example.Com\n"] {
        assert_eq!(
            repo.find_by_email(&ctx, email).await?,
            Some(ada.clone()),
            "{email}"
        );
    }
    assert_eq!(repo.find_by_email(&ctx, "grace@example.com").await?, None);
    for email in ["", "ada", "ada@example", "a\0@example.com"] {
        let error = repo.find_by_email(&ctx, email).await.expect_err(email);
        assert_validation(&error, "email");
    }
    Ok(())
}

/// Reads every page of `filter`'s users, `limit` at a time.
async fn walk(
    repo: &UserRepository<'_, DatabaseConnection>,
    ctx: &orkestra_repository::RequestContext,
    filter: &UserFilter,
    limit: u64,
) -> anyhow::Result<Vec<Uuid>> {
    let mut seen = Vec::new();
    let mut page = PageRequest::first(limit);
    loop {
        let result = repo.list(ctx, filter, &page).await?;
        assert!(result.items.len() as u64 <= limit);
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
            None => return Ok(seen),
        }
    }
}

#[tokio::test]
async fn list_walks_every_page_with_each_filter() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = UserRepository::new(conn);
    let ctx = ctx(tenant);
    // (role, active) of each user, in creation order.
    let people = [
        (UserRole::Member, true),
        (UserRole::Admin, true),
        (UserRole::Member, false),
        (UserRole::Member, true),
        (UserRole::Admin, false),
        (UserRole::Member, true),
        (UserRole::Admin, true),
        (UserRole::Member, false),
    ];
    let mut users = Vec::new();
    for (n, (role, active)) in people.iter().enumerate() {
        let mut user = NewUser::new(format!("user{n}@example.com"), format!("User {n}"));
        user.role = Some(role.clone());
        let user = repo.create(&ctx, user).await?;
        if !active {
            repo.deactivate(&ctx, user.id).await?;
        }
        users.push(user.id);
    }
    // Another tenant's users never show up.
    let other = TenantRepository::new(conn)
        .create(NewTenant::new("Globex", "globex"))
        .await?
        .id;
    for n in 0..3 {
        fixtures::user(conn, other, &format!("user{n}@example.com")).await?;
    }

    let expect = |role: Option<UserRole>, status: Option<UserStatus>| {
        people
            .iter()
            .zip(&users)
            .filter(|((r, active), _)| {
                let s = if *active {
                    UserStatus::Active
                } else {
                    UserStatus::Inactive
                };
                role.as_ref().is_none_or(|role| role == r)
                    && status.as_ref().is_none_or(|st| *st == s)
            })
            .map(|(_, id)| *id)
            .collect::<Vec<_>>()
    };
    let roles = [None, Some(UserRole::Admin), Some(UserRole::Member)];
    let statuses = [None, Some(UserStatus::Active), Some(UserStatus::Inactive)];
    for role in &roles {
        for status in &statuses {
            let filter = UserFilter {
                role: role.clone(),
                status: status.clone(),
            };
            let expected = expect(role.clone(), status.clone());
            assert!(!expected.is_empty(), "every combination matches someone");
            for limit in [1, 2, 3, 8, 500] {
                assert_eq!(
                    walk(&repo, &ctx, &filter, limit).await?,
                    expected,
                    "{filter:?}, limit {limit}"
                );
            }
        }
    }

    for limit in [0, 501] {
        let error = repo
            .list(&ctx, &UserFilter::default(), &PageRequest::first(limit))
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
    let repo = UserRepository::new(conn);
    let ctx = ctx(tenant);
    let mut new = NewUser::new("ada@example.com", "Ada");
    new.preferences = Some(json!({"theme": "light"}));
    let ada = repo.create(&ctx, new).await?;
    let grace = repo
        .create(&ctx, NewUser::new("grace@example.com", "Grace"))
        .await?;

    let renamed = repo
        .update(
            &ctx,
            ada.id,
            UserUpdate {
                name: Some(" Ada Lovelace ".to_owned()),
                ..UserUpdate::default()
            },
        )
        .await?;
    assert_eq!(
        renamed,
        users::Model {
            name: "Ada Lovelace".to_owned(),
            ..ada.clone()
        }
    );
    let promoted = repo
        .update(
            &ctx,
            ada.id,
            UserUpdate {
                role: Some(UserRole::Admin),
                ..UserUpdate::default()
            },
        )
        .await?;
    assert_eq!(promoted.role, UserRole::Admin);
    assert_eq!(promoted.name, "Ada Lovelace");
    let preferring = repo
        .update(
            &ctx,
            ada.id,
            UserUpdate {
                preferences: Some(json!({"digest": true})),
                ..UserUpdate::default()
            },
        )
        .await?;
    assert_eq!(
        preferring.preferences,
        json!({"digest": true}),
        "replaced, not merged"
    );
    assert_eq!(preferring.role, UserRole::Admin);
    assert_eq!(stored(conn, tenant, ada.id).await?, preferring);
    assert_eq!(
        stored(conn, tenant, grace.id).await?,
        grace,
        "others unchanged"
    );

    let all = repo
        .update(
            &ctx,
            grace.id,
            UserUpdate {
                name: Some("Grace Hopper".to_owned()),
                role: Some(UserRole::Admin),
                preferences: Some(json!({"a": 1})),
            },
        )
        .await?;
    assert_eq!(
        all,
        users::Model {
            name: "Grace Hopper".to_owned(),
            role: UserRole::Admin,
            preferences: json!({"a": 1}),
            ..grace
        }
    );
    Ok(())
}

#[tokio::test]
async fn update_refuses_invalid_changes_and_unknown_users() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = UserRepository::new(conn);
    let ctx = ctx(tenant);
    let ada = repo
        .create(&ctx, NewUser::new("ada@example.com", "Ada"))
        .await?;

    let name = |name: &str| UserUpdate {
        name: Some(name.to_owned()),
        ..UserUpdate::default()
    };
    let preferences = |preferences: Value| UserUpdate {
        preferences: Some(preferences),
        ..UserUpdate::default()
    };
    let cases = [
        (UserUpdate::default(), "update"),
        (name(""), "name"),
        (name("   "), "name"),
        (name(&"n".repeat(NAME_MAX + 1)), "name"),
        (name("A\0"), "name"),
        (preferences(json!([1])), "preferences"),
        (preferences(Value::Null), "preferences"),
        (preferences(json!({"k": "\u{0}"})), "preferences"),
        // A valid field does not carry an invalid one through.
        (
            UserUpdate {
                name: Some("Fine".to_owned()),
                role: Some(UserRole::Admin),
                preferences: Some(json!(true)),
            },
            "preferences",
        ),
    ];
    for (update, field) in cases {
        let error = refused(conn, repo.update(&ctx, ada.id, update)).await?;
        assert_validation(&error, field);
    }
    let at_limit = repo
        .update(&ctx, ada.id, name(&"n".repeat(NAME_MAX)))
        .await?;
    assert_eq!(at_limit.name.len(), NAME_MAX);

    let ghost = Uuid::now_v7();
    let error = refused(conn, repo.update(&ctx, ghost, name("Ghost"))).await?;
    assert_not_found(&error, "user", ghost);
    Ok(())
}

#[tokio::test]
async fn deactivate_and_activate_are_idempotent() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = UserRepository::new(conn);
    let ctx = ctx(tenant);
    let ada = repo
        .create(&ctx, NewUser::new("ada@example.com", "Ada"))
        .await?;
    let grace = repo
        .create(&ctx, NewUser::new("grace@example.com", "Grace"))
        .await?;

    let inactive = repo.deactivate(&ctx, ada.id).await?;
    assert_eq!(
        inactive,
        users::Model {
            status: UserStatus::Inactive,
            ..ada.clone()
        }
    );
    assert_eq!(repo.deactivate(&ctx, ada.id).await?, inactive);
    assert_eq!(stored(conn, tenant, ada.id).await?, inactive);

    let active = repo.activate(&ctx, ada.id).await?;
    assert_eq!(active, ada);
    assert_eq!(repo.activate(&ctx, ada.id).await?, ada);
    assert_eq!(stored(conn, tenant, ada.id).await?, ada);
    assert_eq!(stored(conn, tenant, grace.id).await?, grace);

    let ghost = Uuid::now_v7();
    for error in [
        refused(conn, repo.deactivate(&ctx, ghost)).await?,
        refused(conn, repo.activate(&ctx, ghost)).await?,
        refused(conn, repo.record_activity(&ctx, ghost)).await?,
    ] {
        assert_not_found(&error, "user", ghost);
    }
    Ok(())
}

#[tokio::test]
async fn record_activity_sets_last_active_at() -> anyhow::Result<()> {
    let (db, tenant) = with_tenant().await?;
    let conn = db.conn();
    let repo = UserRepository::new(conn);
    let ctx = ctx(tenant);
    let ada = repo
        .create(&ctx, NewUser::new("ada@example.com", "Ada"))
        .await?;

    let before = Utc::now();
    let active = repo.record_activity(&ctx, ada.id).await?;
    let after = Utc::now();
    let at = active.last_active_at.expect("last_active_at is set");
    // Stored to the microsecond, so compare at that resolution.
    assert!(
        at >= before - chrono::Duration::microseconds(1) && at <= after,
        "{before} <= {at} <= {after}"
    );
    assert_eq!(
        active,
        users::Model {
            last_active_at: Some(at),
            ..ada.clone()
        },
        "nothing else changes"
    );
    assert_eq!(stored(conn, tenant, ada.id).await?, active);

    let again = repo.record_activity(&ctx, ada.id).await?;
    assert!(again.last_active_at >= active.last_active_at);
    assert_eq!(stored(conn, tenant, ada.id).await?, again);
    Ok(())
}

#[tokio::test]
async fn a_tenant_sees_and_changes_none_of_another_tenants_users() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let conn = db.conn();
    let tenants = TenantRepository::new(conn);
    let a = tenants.create(NewTenant::new("Acme", "acme")).await?.id;
    let b = tenants.create(NewTenant::new("Globex", "globex")).await?.id;
    let (ctx_a, ctx_b) = (ctx(a), ctx(b));
    let repo = UserRepository::new(conn);
    // Both tenants have a user with the same email; B also has an admin and an inactive user.
    let ada_a = repo
        .create(&ctx_a, NewUser::new("ada@example.com", "Ada A"))
        .await?;
    let ada_b = repo
        .create(&ctx_b, NewUser::new("ada@example.com", "Ada B"))
        .await?;
    let mut admin = NewUser::new("boss@example.com", "Boss");
    admin.role = Some(UserRole::Admin);
    let boss_b = repo.create(&ctx_b, admin).await?;
    let idle_b = repo
        .create(&ctx_b, NewUser::new("idle@example.com", "Idle"))
        .await?;
    repo.deactivate(&ctx_b, idle_b.id).await?;
    let group_b = fixtures::group(conn, b, "reviewers").await?;
    fixtures::membership(conn, b, group_b.id, ada_b.id).await?;
    let b_before = Snapshot::of_tenant(conn, b).await?;

    // Reads under A.
    for id in [ada_b.id, boss_b.id, idle_b.id] {
        assert_eq!(repo.find_by_id(&ctx_a, id).await?, None);
    }
    assert_eq!(
        repo.find_by_email(&ctx_a, "ada@example.com").await?,
        Some(ada_a.clone()),
        "A's own user, not B's"
    );
    assert_eq!(repo.find_by_email(&ctx_a, "boss@example.com").await?, None);
    for filter in [
        UserFilter::default(),
        UserFilter {
            role: Some(UserRole::Admin),
            status: None,
        },
        UserFilter {
            role: None,
            status: Some(UserStatus::Inactive),
        },
    ] {
        let page = repo.list(&ctx_a, &filter, &PageRequest::first(500)).await?;
        assert!(
            page.items.iter().all(|user| user.tenant_id == a),
            "{filter:?}: {page:?}"
        );
    }
    let all_a = repo
        .list(&ctx_a, &UserFilter::default(), &PageRequest::first(500))
        .await?;
    assert_eq!(all_a.items, [ada_a]);

    // Writes under A naming B's users find nothing.
    let rename = UserUpdate {
        name: Some("Hijacked".to_owned()),
        role: Some(UserRole::Admin),
        preferences: Some(json!({"owned": true})),
    };
    for id in [ada_b.id, boss_b.id, idle_b.id] {
        for error in [
            refused(conn, repo.update(&ctx_a, id, rename.clone())).await?,
            refused(conn, repo.deactivate(&ctx_a, id)).await?,
            refused(conn, repo.activate(&ctx_a, id)).await?,
            refused(conn, repo.record_activity(&ctx_a, id)).await?,
        ] {
            assert_not_found(&error, "user", id);
        }
    }
    assert_eq!(Snapshot::of_tenant(conn, b).await?, b_before, "B unchanged");
    Ok(())
}
