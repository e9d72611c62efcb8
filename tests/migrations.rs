//! The migrations themselves: up, down to zero and up again, step by step, on the backend
//! `DATABASE_URL` selects.

use orkestra_migration::{Migrator, MigratorTrait};
use orkestra_tests::{TestDb, catalog::Catalog};

const TABLES: [&str; 9] = [
    "audit_events",
    "conversations",
    "group_members",
    "groups",
    "messages",
    "task_history",
    "tasks",
    "tenants",
    "users",
];

#[tokio::test]
async fn up_builds_every_table_and_down_to_zero_leaves_nothing_behind() -> anyhow::Result<()> {
    let db = TestDb::empty().await?;
    let conn = db.conn();

    Migrator::up(conn, None).await?;
    let first = Catalog::read(conn).await?;
    assert_eq!(first.tables.keys().collect::<Vec<_>>(), TABLES);
    if db.backend() == sea_orm::DbBackend::Postgres {
        assert_eq!(first.enums.len(), 7, "{:?}", first.enums.keys());
        assert_eq!(
            first.functions,
            [
                "orkestra_assignment_strategy_text",
                "orkestra_bind_tenant",
                "orkestra_conversation_status_text",
                "orkestra_current_tenant",
                "orkestra_group_status_text",
                "orkestra_refuse_audit_update",
                "orkestra_task_status_text",
                "orkestra_tenant_status_text",
                "orkestra_touch_updated_at",
                "orkestra_user_role_text",
                "orkestra_user_status_text",
            ]
        );
        // One immutable cast to text per enum (migrations 12 and 16).
        assert_eq!(first.casts.len(), 7, "{:?}", first.casts);
        for (name, table) in &first.tables {
            assert_eq!(table.row_security, (true, true), "row security of {name}");
            assert!(!table.policies.is_empty(), "policies of {name}");
            assert!(!table.grants.is_empty(), "grants of {name}");
            // Distributed on Citus (migration 14), local everywhere else.
            let expected = match (db.is_citus(), name.as_str()) {
                (false, _) => None,
                (true, "tenants") => Some("reference with tenants"),
                (true, _) => Some("hash(tenant_id) with audit_events"),
            };
            assert_eq!(
                table.distribution.as_deref(),
                expected,
                "distribution of {name}"
            );
        }
    }

    Migrator::down(conn, None).await?;
    let zero = Catalog::read(conn).await?;
    assert!(
        zero.tables.is_empty(),
        "left behind: {:?}",
        zero.tables.keys()
    );
    assert!(zero.enums.is_empty(), "left behind: {:?}", zero.enums);
    assert!(
        zero.functions.is_empty(),
        "left behind: {:?}",
        zero.functions
    );
    assert!(zero.casts.is_empty(), "left behind: {:?}", zero.casts);
    assert!(Migrator::get_applied_migrations(conn).await?.is_empty());

    Migrator::up(conn, None).await?;
    let again = Catalog::read(conn).await?;
    assert_eq!(
        first, again,
        "up, down to zero, up again changed the schema"
    );
    Ok(())
}

/// Applies every migration on a database with none, then `rebuild`s it: the schema must come out
/// the same, with every migration applied.
async fn rebuilds_the_same_schema(
    what: &str,
    rebuild: impl AsyncFnOnce(&sea_orm::DatabaseConnection) -> Result<(), sea_orm::DbErr>,
) -> anyhow::Result<()> {
    let db = TestDb::empty().await?;
    let conn = db.conn();

    Migrator::up(conn, None).await?;
    let first = Catalog::read(conn).await?;

    rebuild(conn).await?;
    assert_eq!(
        first,
        Catalog::read(conn).await?,
        "{what} changed the schema"
    );
    assert_eq!(
        Migrator::get_applied_migrations(conn).await?.len(),
        Migrator::migrations().len()
    );
    Ok(())
}

/// `fresh` drops every table and type but leaves functions (and server-wide roles) behind, then
/// runs every migration again: each one must cope with what it finds.
#[tokio::test]
#[cfg_attr(
    orkestra_citus,
    ignore = "sea-orm-migration's fresh drops every type of the schema that no extension owns, \
              and Citus's views citus_tables and citus_schemas in public have row types it cannot \
              drop; on Citus, refresh (tested) rebuilds the schema"
)]
async fn fresh_rebuilds_the_same_schema() -> anyhow::Result<()> {
    rebuilds_the_same_schema("fresh", async |conn| Migrator::fresh(conn).await).await
}

/// `refresh` takes every migration down and up again.
#[tokio::test]
async fn refresh_rebuilds_the_same_schema() -> anyhow::Result<()> {
    rebuilds_the_same_schema("refresh", async |conn| Migrator::refresh(conn).await).await
}

#[tokio::test]
async fn each_migration_down_restores_exactly_the_schema_before_it() -> anyhow::Result<()> {
    let db = TestDb::empty().await?;
    let conn = db.conn();
    let count = Migrator::migrations().len();
    assert_eq!(count, 17);
    // Row-level security and its roles (migration 8), the enum casts (12), the policies' form
    // (13) and the tenant-binding function (15) exist on PostgreSQL only; the distribution (14)
    // on Citus only. The group lifecycle (16) adds columns on both, and 17 replaces two indexes.
    let changes_the_schema = |step: usize| match step {
        7 | 11 | 12 | 14 => db.backend() == sea_orm::DbBackend::Postgres,
        13 => db.is_citus(),
        _ => true,
    };
    // The bookkeeping table appears with the first migration and outlives `down`: make it first.
    Migrator::install(conn).await?;

    for step in 0..count {
        let before = Catalog::read(conn).await?;
        Migrator::up(conn, Some(1)).await?;
        let after = Catalog::read(conn).await?;
        if changes_the_schema(step) {
            assert_ne!(before, after, "migration {step} changed nothing");
        } else {
            assert_eq!(before, after, "migration {step} changed the schema");
        }

        Migrator::down(conn, Some(1)).await?;
        assert_eq!(
            Catalog::read(conn).await?,
            before,
            "down of migration {step} did not restore the schema before it"
        );
        Migrator::up(conn, Some(1)).await?;
        assert_eq!(
            Catalog::read(conn).await?,
            after,
            "re-applying migration {step}"
        );
    }
    assert_eq!(Migrator::get_pending_migrations(conn).await?.len(), 0);
    assert_eq!(Migrator::get_applied_migrations(conn).await?.len(), count);
    Ok(())
}

#[tokio::test]
async fn the_template_every_test_copies_is_fully_migrated() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    assert!(
        Migrator::get_pending_migrations(db.conn())
            .await?
            .is_empty()
    );
    let catalog = Catalog::read(db.conn()).await?;
    assert_eq!(catalog.tables.keys().collect::<Vec<_>>(), TABLES);
    Ok(())
}
