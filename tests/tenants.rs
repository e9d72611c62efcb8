//! `TenantRepository` on the real schema, on both backends: creation and its validation, lookups,
//! keyset pages, updates, and the status lifecycle (active, suspended, deleted for good).

use orkestra_entity::{sea_orm_active_enums::TenantStatus, tenants};
use orkestra_repository::{
    NewTenant, NewUser, PageRequest, TenantRepository, TenantUpdate, UserRepository,
    tenants::SLUG_KEY,
    validate::{NAME_MAX, SLUG_MAX},
};
use orkestra_tests::{
    TestDb,
    repo::{Snapshot, assert_conflict, assert_not_found, assert_validation, ctx, refused},
};
use sea_orm::{DatabaseConnection, EntityTrait};
use serde_json::{Value, json};
use uuid::Uuid;

/// Asserts that `returned` is tenant `id` as stored now.
async fn assert_stored(db: &TestDb, returned: &tenants::Model) -> anyhow::Result<()> {
    let now = stored(db.conn(), returned.id).await?;
    assert_eq!(*returned, now, "returned as stored");
    Ok(())
}

/// The tenant as stored now.
async fn stored(conn: &DatabaseConnection, id: Uuid) -> anyhow::Result<tenants::Model> {
    Ok(tenants::Entity::find_by_id(id)
        .one(conn)
        .await?
        .expect("the tenant exists"))
}

#[tokio::test]
async fn create_stores_an_active_tenant_with_defaults() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let conn = db.conn();
    let repo = TenantRepository::new(conn);

    let acme = repo.create(NewTenant::new("  Acme  ", " acme ")).await?;
    assert_eq!(acme.name, "Acme", "the name is trimmed");
    assert_eq!(acme.slug, "acme", "the slug is trimmed");
    assert_eq!(acme.status, TenantStatus::Active);
    assert_eq!(acme.config, json!({}));
    assert_eq!(acme.limits, None);
    assert_eq!(acme.created_at, acme.updated_at);
    assert_eq!(stored(conn, acme.id).await?, acme, "returned as stored");

    let mut globex = NewTenant::new("Globex", "globex-2");
    globex.config = Some(json!({"locale": "de", "features": ["sla"]}));
    globex.limits = Some(json!({"users": 50}));
    let globex = repo.create(globex).await?;
    assert_eq!(globex.config, json!({"locale": "de", "features": ["sla"]}));
    assert_eq!(globex.limits, Some(json!({"users": 50})));
    assert_eq!(stored(conn, globex.id).await?, globex);

    assert_eq!(repo.find_by_id(acme.id).await?, Some(acme.clone()));
    assert_eq!(repo.find_by_slug("acme").await?, Some(acme));
    assert_eq!(repo.find_by_slug(" globex-2 ").await?, Some(globex));
    assert_eq!(repo.find_by_id(Uuid::now_v7()).await?, None);
    assert_eq!(repo.find_by_slug("initech").await?, None);
    Ok(())
}

#[tokio::test]
async fn create_refuses_each_invalid_field_and_writes_nothing() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let conn = db.conn();
    let repo = TenantRepository::new(conn);
    repo.create(NewTenant::new("Existing", "existing")).await?;

    let named = |name: String| NewTenant::new(name, "acme");
    let slugged = |slug: &str| NewTenant::new("Acme", slug);
    let with_config = |config: Value| NewTenant {
        config: Some(config),
        ..NewTenant::new("Acme", "acme")
    };
    let with_limits = |limits: Value| NewTenant {
        limits: Some(limits),
        ..NewTenant::new("Acme", "acme")
    };
    let cases = [
        (named(String::new()), "name"),
        (named("   ".to_owned()), "name"),
        (named("a".repeat(NAME_MAX + 1)), "name"),
        (named("Ac\0me".to_owned()), "name"),
        (slugged(""), "slug"),
        (slugged("  "), "slug"),
        (slugged("Acme"), "slug"),
        (slugged("-acme"), "slug"),
        (slugged("acme-"), "slug"),
        (slugged("ac--me"), "slug"),
        (slugged("ac me"), "slug"),
        (slugged("ac_me"), "slug"),
        (slugged("acmé"), "slug"),
        (slugged("ac\0me"), "slug"),
        (slugged(&"a".repeat(SLUG_MAX + 1)), "slug"),
        (with_config(json!([])), "config"),
        (with_config(json!("x")), "config"),
        (with_config(json!(1)), "config"),
        (with_config(Value::Null), "config"),
        (with_config(json!({"a": "x\u{0}y"})), "config"),
        (with_limits(json!([1])), "limits"),
        (with_limits(Value::Null), "limits"),
        (with_limits(json!({"k\u{0}": 1})), "limits"),
    ];
    for (tenant, field) in cases {
        let error = refused(conn, repo.create(tenant.clone())).await?;
        assert_validation(&error, field);
    }

    // Exactly at the limits is accepted.
    let long = repo
        .create(NewTenant::new("é".repeat(NAME_MAX), "a".repeat(SLUG_MAX)))
        .await?;
    assert_eq!(long.name.chars().count(), NAME_MAX);
    assert_eq!(long.slug.len(), SLUG_MAX);
    Ok(())
}

#[tokio::test]
async fn a_taken_slug_is_a_conflict() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let conn = db.conn();
    let repo = TenantRepository::new(conn);
    let acme = repo.create(NewTenant::new("Acme", "acme")).await?;

    for slug in ["acme", " acme "] {
        let error = refused(conn, repo.create(NewTenant::new("Other", slug))).await?;
        assert_conflict(&error, SLUG_KEY);
    }
    assert_eq!(stored(conn, acme.id).await?, acme);
    Ok(())
}

#[tokio::test]
async fn find_by_slug_refuses_a_slug_that_could_not_be_stored() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let repo = TenantRepository::new(db.conn());
    for slug in ["", "Acme", "a--b", "ac\0me"] {
        let error = repo.find_by_slug(slug).await.expect_err(slug);
        assert_validation(&error, "slug");
    }
    Ok(())
}

/// Reads every page of `status` tenants, `limit` at a time.
async fn walk(
    repo: &TenantRepository<'_, DatabaseConnection>,
    status: Option<TenantStatus>,
    limit: u64,
) -> anyhow::Result<Vec<Uuid>> {
    let mut seen = Vec::new();
    let mut page = PageRequest::first(limit);
    loop {
        let result = repo.list(status.clone(), &page).await?;
        assert!(result.items.len() as u64 <= limit);
        seen.extend(result.items.iter().map(|tenant| tenant.id));
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
async fn list_walks_every_page_in_creation_order_with_and_without_a_status() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let conn = db.conn();
    let repo = TenantRepository::new(conn);
    let mut all = Vec::new();
    for n in 0..7 {
        all.push(
            repo.create(NewTenant::new(format!("T{n}"), format!("t{n}")))
                .await?
                .id,
        );
    }
    repo.suspend(all[1]).await?;
    repo.suspend(all[4]).await?;
    repo.soft_delete(all[5]).await?;
    let with = |indexes: &[usize]| indexes.iter().map(|&i| all[i]).collect::<Vec<_>>();

    for limit in [1, 2, 3, 6, 7, 8, 500] {
        assert_eq!(walk(&repo, None, limit).await?, all, "limit {limit}");
        assert_eq!(
            walk(&repo, Some(TenantStatus::Active), limit).await?,
            with(&[0, 2, 3, 6]),
            "limit {limit}"
        );
        assert_eq!(
            walk(&repo, Some(TenantStatus::Suspended), limit).await?,
            with(&[1, 4]),
            "limit {limit}"
        );
        assert_eq!(
            walk(&repo, Some(TenantStatus::Deleted), limit).await?,
            with(&[5]),
            "limit {limit}"
        );
    }
    // A page that holds exactly the rest says there is no next one.
    let last = repo.list(None, &PageRequest::after(all[3], 3)).await?;
    assert_eq!(last.items.len(), 3);
    assert_eq!(last.next, None);

    for limit in [0, 501] {
        let error = repo
            .list(None, &PageRequest::first(limit))
            .await
            .expect_err("an out-of-range limit");
        assert_validation(&error, "limit");
    }
    Ok(())
}

#[tokio::test]
async fn update_changes_only_the_named_fields() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let conn = db.conn();
    let repo = TenantRepository::new(conn);
    let mut new = NewTenant::new("Acme", "acme");
    new.config = Some(json!({"locale": "en"}));
    let acme = repo.create(new).await?;

    let renamed = repo
        .update(
            acme.id,
            TenantUpdate {
                name: Some(" Acme Corp ".to_owned()),
                ..TenantUpdate::default()
            },
        )
        .await?;
    assert_eq!(renamed.name, "Acme Corp");
    assert_eq!(renamed.config, acme.config);
    assert_eq!(renamed.limits, None);
    assert_eq!(renamed.slug, acme.slug);
    assert!(renamed.updated_at > acme.updated_at);
    assert_eq!(renamed.created_at, acme.created_at);
    assert_stored(&db, &renamed).await?;

    let limited = repo
        .update(
            acme.id,
            TenantUpdate {
                config: Some(json!({"locale": "fr"})),
                limits: Some(Some(json!({"users": 5}))),
                ..TenantUpdate::default()
            },
        )
        .await?;
    assert_eq!(limited.name, "Acme Corp");
    assert_eq!(
        limited.config,
        json!({"locale": "fr"}),
        "replaced, not merged"
    );
    assert_eq!(limited.limits, Some(json!({"users": 5})));
    assert!(limited.updated_at > renamed.updated_at);

    let unlimited = repo
        .update(
            acme.id,
            TenantUpdate {
                limits: Some(None),
                ..TenantUpdate::default()
            },
        )
        .await?;
    assert_eq!(unlimited.limits, None);
    assert_eq!(unlimited.config, json!({"locale": "fr"}));
    assert_stored(&db, &unlimited).await?;

    // A suspended tenant can still be changed.
    repo.suspend(acme.id).await?;
    let suspended = repo
        .update(
            acme.id,
            TenantUpdate {
                name: Some("Acme Suspended".to_owned()),
                ..TenantUpdate::default()
            },
        )
        .await?;
    assert_eq!(suspended.status, TenantStatus::Suspended);
    assert_eq!(suspended.name, "Acme Suspended");
    Ok(())
}

#[tokio::test]
async fn update_refuses_invalid_changes_and_unknown_tenants() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let conn = db.conn();
    let repo = TenantRepository::new(conn);
    let acme = repo.create(NewTenant::new("Acme", "acme")).await?;

    let name = |name: &str| TenantUpdate {
        name: Some(name.to_owned()),
        ..TenantUpdate::default()
    };
    let config = |config: Value| TenantUpdate {
        config: Some(config),
        ..TenantUpdate::default()
    };
    let limits = |limits: Value| TenantUpdate {
        limits: Some(Some(limits)),
        ..TenantUpdate::default()
    };
    let cases = [
        (TenantUpdate::default(), "update"),
        (name(""), "name"),
        (name("  "), "name"),
        (name(&"a".repeat(NAME_MAX + 1)), "name"),
        (name("a\0"), "name"),
        (config(json!([])), "config"),
        (config(Value::Null), "config"),
        (limits(json!("none")), "limits"),
        (limits(Value::Null), "limits"),
        // A valid field does not carry an invalid one through.
        (
            TenantUpdate {
                name: Some("Fine".to_owned()),
                config: Some(json!(3)),
                limits: None,
            },
            "config",
        ),
    ];
    for (update, field) in cases {
        let error = refused(conn, repo.update(acme.id, update)).await?;
        assert_validation(&error, field);
    }
    let at_limit = repo.update(acme.id, name(&"n".repeat(NAME_MAX))).await?;
    assert_eq!(at_limit.name.len(), NAME_MAX);

    let ghost = Uuid::now_v7();
    let error = refused(conn, repo.update(ghost, name("Ghost"))).await?;
    assert_not_found(&error, "tenant", ghost);
    Ok(())
}

#[tokio::test]
async fn suspend_and_reactivate_are_idempotent() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let conn = db.conn();
    let repo = TenantRepository::new(conn);
    let acme = repo.create(NewTenant::new("Acme", "acme")).await?;
    let other = repo.create(NewTenant::new("Other", "other")).await?;

    let suspended = repo.suspend(acme.id).await?;
    assert_eq!(suspended.status, TenantStatus::Suspended);
    assert!(suspended.updated_at > acme.updated_at);
    assert_stored(&db, &suspended).await?;
    let again = repo.suspend(acme.id).await?;
    assert_eq!(again.status, TenantStatus::Suspended);
    assert_eq!(again.name, acme.name);

    let active = repo.reactivate(acme.id).await?;
    assert_eq!(active.status, TenantStatus::Active);
    assert_stored(&db, &active).await?;
    assert_eq!(repo.reactivate(acme.id).await?.status, TenantStatus::Active);

    // Only the named tenant changed.
    assert_eq!(stored(conn, other.id).await?, other);

    let ghost = Uuid::now_v7();
    for error in [
        refused(conn, repo.suspend(ghost)).await?,
        refused(conn, repo.reactivate(ghost)).await?,
        refused(conn, repo.soft_delete(ghost)).await?,
    ] {
        assert_not_found(&error, "tenant", ghost);
    }
    Ok(())
}

#[tokio::test]
async fn soft_delete_keeps_the_row_and_its_data_and_is_final() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let conn = db.conn();
    let repo = TenantRepository::new(conn);
    let acme = repo.create(NewTenant::new("Acme", "acme")).await?;
    UserRepository::new(conn)
        .create(&ctx(acme.id), NewUser::new("ada@example.com", "Ada"))
        .await?;
    repo.suspend(acme.id).await?;

    let deleted = repo.soft_delete(acme.id).await?;
    assert_eq!(deleted.status, TenantStatus::Deleted);
    assert_stored(&db, &deleted).await?;
    let deleted = stored(conn, acme.id).await?;
    assert_eq!(
        repo.find_by_slug("acme").await?,
        Some(deleted.clone()),
        "the row stays"
    );
    let data = Snapshot::of_tenant(conn, acme.id).await?;
    assert_eq!(data.users.len(), 1, "the tenant's data stays");

    // Deleting again is harmless.
    assert_eq!(
        repo.soft_delete(acme.id).await?.status,
        TenantStatus::Deleted
    );

    let deleted = stored(conn, acme.id).await?;
    let rename = TenantUpdate {
        name: Some("Back".to_owned()),
        ..TenantUpdate::default()
    };
    for (error, action) in [
        (refused(conn, repo.suspend(acme.id)).await?, "suspend"),
        (refused(conn, repo.reactivate(acme.id)).await?, "reactivate"),
        (refused(conn, repo.update(acme.id, rename)).await?, "update"),
    ] {
        assert!(
            matches!(
                &error,
                orkestra_repository::Error::InvalidState { entity: "tenant", id, state, action: a }
                    if *id == acme.id.to_string() && state == "DELETED" && *a == action
            ),
            "{action}: {error:?}"
        );
    }
    assert_eq!(stored(conn, acme.id).await?, deleted);
    Ok(())
}
