//! The migrated schema, read back from the database's own catalog: every table, column, type,
//! default, key, index and cascade of the seed, with the design's tenant rules.

use std::collections::BTreeSet;

use orkestra_entity::sea_orm_active_enums::TaskStatus;
use orkestra_repository::tasks::PENDING;
use orkestra_tests::{
    TestDb,
    catalog::{Catalog, ForeignKey},
};
use sea_orm::{DbBackend, Iterable};

const TZ: &str = "timestamp with time zone";
const NOW: Option<&str> = Some("CURRENT_TIMESTAMP");
const EMPTY_OBJECT: Option<&str> = Some("'{}'::jsonb");

/// (column, PostgreSQL type, nullable, PostgreSQL default), in table order.
type Columns = &'static [(&'static str, &'static str, bool, Option<&'static str>)];

/// The seed's models as the design maps them: snake_case names from its `@map`s, `tenant_id` on
/// every tenant-owned row, uuid / timestamptz / jsonb / native enums.
const SCHEMA: &[(&str, Columns)] = &[
    (
        "audit_events",
        &[
            ("id", "uuid", false, None),
            ("tenant_id", "uuid", false, None),
            ("event_type", "text", false, None),
            ("action", "text", false, None),
            ("actor_type", "text", false, None),
            ("actor_id", "text", false, None),
            ("actor_name", "text", true, None),
            ("resource_type", "text", false, None),
            ("resource_id", "text", false, None),
            ("details", "jsonb", true, None),
            ("trace_id", "text", true, None),
            ("span_id", "text", true, None),
            ("created_at", TZ, false, NOW),
        ],
    ),
    (
        "conversations",
        &[
            ("id", "uuid", false, None),
            ("tenant_id", "uuid", false, None),
            ("external_id", "text", true, None),
            ("channel", "text", true, None),
            ("participant", "jsonb", false, None),
            (
                "status",
                "conversation_status",
                false,
                Some("'ACTIVE'::conversation_status"),
            ),
            ("created_at", TZ, false, NOW),
            ("updated_at", TZ, false, NOW),
            ("closed_at", TZ, true, None),
        ],
    ),
    (
        "group_members",
        &[
            ("tenant_id", "uuid", false, None),
            ("group_id", "uuid", false, None),
            ("user_id", "uuid", false, None),
        ],
    ),
    (
        "groups",
        &[
            ("id", "uuid", false, None),
            ("tenant_id", "uuid", false, None),
            ("name", "text", false, None),
            ("slug", "text", false, None),
            ("description", "text", true, None),
            (
                "assignment_strategy",
                "assignment_strategy",
                false,
                Some("'ROUND_ROBIN'::assignment_strategy"),
            ),
            ("created_at", TZ, false, NOW),
            ("updated_at", TZ, false, NOW),
            // Migration 16, after the seed's columns.
            (
                "status",
                "group_status",
                false,
                Some("'ACTIVE'::group_status"),
            ),
            ("archived_at", TZ, true, None),
        ],
    ),
    (
        "messages",
        &[
            ("id", "uuid", false, None),
            ("tenant_id", "uuid", false, None),
            ("conversation_id", "uuid", false, None),
            ("role", "text", false, None),
            ("content", "text", false, None),
            ("metadata", "jsonb", true, None),
            ("created_at", TZ, false, NOW),
        ],
    ),
    (
        "task_history",
        &[
            ("id", "uuid", false, None),
            ("tenant_id", "uuid", false, None),
            ("task_id", "uuid", false, None),
            ("action", "text", false, None),
            ("actor_type", "text", false, None),
            ("actor_id", "text", false, None),
            ("details", "jsonb", true, None),
            ("created_at", TZ, false, NOW),
        ],
    ),
    (
        "tasks",
        &[
            ("id", "uuid", false, None),
            ("tenant_id", "uuid", false, None),
            ("workflow_id", "text", false, None),
            ("workflow_run_id", "text", false, None),
            ("title", "text", false, None),
            ("description", "text", true, None),
            ("form_schema", "jsonb", false, None),
            ("form_data", "jsonb", true, None),
            ("assigned_user_id", "uuid", true, None),
            ("assigned_group_id", "uuid", true, None),
            ("claimed_by", "uuid", true, None),
            ("context", "jsonb", false, EMPTY_OBJECT),
            ("conversation_id", "uuid", true, None),
            ("sla_deadline", TZ, true, None),
            ("sla_config", "jsonb", true, None),
            (
                "status",
                "task_status",
                false,
                Some("'CREATED'::task_status"),
            ),
            ("created_at", TZ, false, NOW),
            ("updated_at", TZ, false, NOW),
            ("completed_at", TZ, true, None),
            ("completed_by", "uuid", true, None),
        ],
    ),
    (
        "tenants",
        &[
            ("id", "uuid", false, None),
            ("name", "text", false, None),
            ("slug", "text", false, None),
            ("config", "jsonb", false, EMPTY_OBJECT),
            ("limits", "jsonb", true, None),
            (
                "status",
                "tenant_status",
                false,
                Some("'ACTIVE'::tenant_status"),
            ),
            ("created_at", TZ, false, NOW),
            ("updated_at", TZ, false, NOW),
        ],
    ),
    (
        "users",
        &[
            ("id", "uuid", false, None),
            ("tenant_id", "uuid", false, None),
            ("email", "text", false, None),
            ("name", "text", false, None),
            ("role", "user_role", false, Some("'MEMBER'::user_role")),
            ("preferences", "jsonb", false, EMPTY_OBJECT),
            (
                "status",
                "user_status",
                false,
                Some("'ACTIVE'::user_status"),
            ),
            ("created_at", TZ, false, NOW),
            ("last_active_at", TZ, true, None),
        ],
    ),
];

/// Every index other than primary keys: (name, columns, unique).
const INDEXES: &[(&str, &[&str], bool)] = &[
    (
        "audit_events_tenant_id_actor_type_actor_id_created_at_idx",
        &["tenant_id", "actor_type", "actor_id", "created_at"],
        false,
    ),
    (
        "audit_events_tenant_id_created_at_id_idx",
        &["tenant_id", "created_at", "id"],
        false,
    ),
    (
        "audit_events_tenant_id_resource_type_resource_id_created_at_idx",
        &["tenant_id", "resource_type", "resource_id", "created_at"],
        false,
    ),
    (
        "audit_events_tenant_id_event_type_created_at_idx",
        &["tenant_id", "event_type", "created_at"],
        false,
    ),
    (
        "conversations_tenant_id_channel_external_id_key",
        &["tenant_id", "channel", "external_id"],
        true,
    ),
    (
        "conversations_tenant_id_external_id_idx",
        &["tenant_id", "external_id"],
        false,
    ),
    (
        "group_members_tenant_id_user_id_idx",
        &["tenant_id", "user_id"],
        false,
    ),
    ("groups_tenant_id_slug_key", &["tenant_id", "slug"], true),
    (
        "messages_tenant_id_conversation_id_created_at_idx",
        &["tenant_id", "conversation_id", "created_at"],
        false,
    ),
    (
        "task_history_tenant_id_task_id_created_at_idx",
        &["tenant_id", "task_id", "created_at"],
        false,
    ),
    (
        "tasks_tenant_id_assigned_group_id_idx",
        &["tenant_id", "assigned_group_id"],
        false,
    ),
    (
        "tasks_tenant_id_assigned_group_id_pending_idx",
        &["tenant_id", "assigned_group_id"],
        false,
    ),
    (
        "tasks_tenant_id_assigned_user_id_idx",
        &["tenant_id", "assigned_user_id"],
        false,
    ),
    (
        "tasks_tenant_id_assigned_user_id_pending_idx",
        &["tenant_id", "assigned_user_id"],
        false,
    ),
    (
        "tasks_tenant_id_claimed_by_idx",
        &["tenant_id", "claimed_by"],
        false,
    ),
    (
        "tasks_tenant_id_completed_by_idx",
        &["tenant_id", "completed_by"],
        false,
    ),
    (
        "tasks_tenant_id_conversation_id_id_idx",
        &["tenant_id", "conversation_id", "id"],
        false,
    ),
    (
        "tasks_tenant_id_status_id_idx",
        &["tenant_id", "status", "id"],
        false,
    ),
    (
        "tasks_tenant_id_sla_deadline_id_open_idx",
        &["tenant_id", "sla_deadline", "id"],
        false,
    ),
    (
        "tasks_tenant_id_workflow_id_workflow_run_id_id_idx",
        &["tenant_id", "workflow_id", "workflow_run_id", "id"],
        false,
    ),
    ("tenants_slug_key", &["slug"], true),
    ("users_tenant_id_email_key", &["tenant_id", "email"], true),
];

/// A foreign key: (table, columns, referenced table, referenced columns, on delete).
type Fk = (
    &'static str,
    &'static [&'static str],
    &'static str,
    &'static [&'static str],
    &'static str,
);

/// Every foreign key.
const FOREIGN_KEYS: &[Fk] = &[
    (
        "audit_events",
        &["tenant_id"],
        "tenants",
        &["id"],
        "NO ACTION",
    ),
    (
        "conversations",
        &["tenant_id"],
        "tenants",
        &["id"],
        "NO ACTION",
    ),
    (
        "group_members",
        &["tenant_id", "group_id"],
        "groups",
        &["tenant_id", "id"],
        "CASCADE",
    ),
    (
        "group_members",
        &["tenant_id", "user_id"],
        "users",
        &["tenant_id", "id"],
        "CASCADE",
    ),
    ("groups", &["tenant_id"], "tenants", &["id"], "NO ACTION"),
    (
        "messages",
        &["tenant_id", "conversation_id"],
        "conversations",
        &["tenant_id", "id"],
        "CASCADE",
    ),
    (
        "task_history",
        &["tenant_id", "task_id"],
        "tasks",
        &["tenant_id", "id"],
        "CASCADE",
    ),
    (
        "tasks",
        &["tenant_id", "assigned_group_id"],
        "groups",
        &["tenant_id", "id"],
        "NO ACTION",
    ),
    (
        "tasks",
        &["tenant_id", "assigned_user_id"],
        "users",
        &["tenant_id", "id"],
        "NO ACTION",
    ),
    (
        "tasks",
        &["tenant_id", "claimed_by"],
        "users",
        &["tenant_id", "id"],
        "NO ACTION",
    ),
    (
        "tasks",
        &["tenant_id", "completed_by"],
        "users",
        &["tenant_id", "id"],
        "NO ACTION",
    ),
    (
        "tasks",
        &["tenant_id", "conversation_id"],
        "conversations",
        &["tenant_id", "id"],
        "NO ACTION",
    ),
    ("tasks", &["tenant_id"], "tenants", &["id"], "NO ACTION"),
    ("users", &["tenant_id"], "tenants", &["id"], "NO ACTION"),
];

const ENUMS: &[(&str, &[&str])] = &[
    (
        "assignment_strategy",
        &["ROUND_ROBIN", "LOAD_BALANCED", "MANUAL"],
    ),
    ("conversation_status", &["ACTIVE", "CLOSED", "ARCHIVED"]),
    ("group_status", &["ACTIVE", "ARCHIVED"]),
    (
        "task_status",
        &[
            "CREATED",
            "ASSIGNED",
            "CLAIMED",
            "COMPLETED",
            "ESCALATED",
            "EXPIRED",
            "CANCELLED",
        ],
    ),
    ("tenant_status", &["ACTIVE", "SUSPENDED", "DELETED"]),
    ("user_role", &["ADMIN", "MEMBER"]),
    ("user_status", &["ACTIVE", "INACTIVE"]),
];

async fn catalog() -> anyhow::Result<(TestDb, Catalog)> {
    let db = TestDb::migrated().await?;
    let catalog = Catalog::read(db.conn()).await?;
    Ok((db, catalog))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

#[tokio::test]
async fn every_table_and_column_of_the_seed_exists_with_its_nullability() -> anyhow::Result<()> {
    let (_db, catalog) = catalog().await?;
    let tables: Vec<&str> = SCHEMA.iter().map(|(table, _)| *table).collect();
    assert_eq!(catalog.tables.keys().collect::<Vec<_>>(), tables);
    for (table, columns) in SCHEMA {
        let actual = catalog.table(table);
        let expected: Vec<&str> = columns.iter().map(|(name, ..)| *name).collect();
        assert_eq!(actual.column_names(), expected, "columns of {table}");
        for (name, _, nullable, _) in *columns {
            let column = actual.column(name).expect("listed above");
            assert_eq!(column.nullable, *nullable, "nullability of {table}.{name}");
        }
    }
    Ok(())
}

#[tokio::test]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: set DATABASE_URL=postgres://..."
)]
async fn pg_column_types_and_defaults_are_native_uuid_timestamptz_jsonb_and_enums()
-> anyhow::Result<()> {
    let (db, catalog) = catalog().await?;
    assert_eq!(db.backend(), DbBackend::Postgres);
    for (table, columns) in SCHEMA {
        for (name, data_type, _, default) in *columns {
            let column = catalog.table(table).column(name).expect("column exists");
            assert_eq!(column.data_type, *data_type, "type of {table}.{name}");
            assert_eq!(
                column.default.as_deref(),
                *default,
                "default of {table}.{name}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: set DATABASE_URL=postgres://..."
)]
async fn pg_enum_types_carry_the_seed_labels_in_order() -> anyhow::Result<()> {
    let (db, catalog) = catalog().await?;
    assert_eq!(db.backend(), DbBackend::Postgres);
    let expected = ENUMS
        .iter()
        .map(|(name, labels)| ((*name).to_owned(), strings(labels)))
        .collect();
    assert_eq!(catalog.enums, expected);
    Ok(())
}

#[tokio::test]
async fn every_primary_key_and_unique_index_of_a_tenant_owned_table_includes_tenant_id()
-> anyhow::Result<()> {
    let (_db, catalog) = catalog().await?;
    for (name, table) in &catalog.tables {
        if name == "tenants" {
            assert_eq!(table.primary_key, ["id"]);
            continue;
        }
        assert_eq!(
            table.primary_key.first().map(String::as_str),
            Some("tenant_id"),
            "primary key of {name}: {:?}",
            table.primary_key
        );
        let expected_key = if name == "group_members" {
            strings(&["tenant_id", "group_id", "user_id"])
        } else {
            strings(&["tenant_id", "id"])
        };
        assert_eq!(table.primary_key, expected_key, "primary key of {name}");
        for index in &table.indexes {
            assert_eq!(
                index.columns.first().map(String::as_str),
                Some("tenant_id"),
                "index {} of {name} does not lead with tenant_id",
                index.name
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn every_index_and_unique_constraint_of_the_seed_exists_and_no_other() -> anyhow::Result<()> {
    let (db, catalog) = catalog().await?;
    let actual: BTreeSet<(String, Vec<String>, bool)> = catalog
        .tables
        .values()
        .flat_map(|table| &table.indexes)
        .map(|index| (index.name.clone(), index.columns.clone(), index.unique))
        .collect();
    let expected: BTreeSet<(String, Vec<String>, bool)> = INDEXES
        .iter()
        .map(|(name, columns, unique)| ((*name).to_owned(), strings(columns), *unique))
        .collect();
    assert_eq!(actual, expected, "indexes on {:?}", db.backend());
    Ok(())
}

/// The partial indexes hold exactly the statuses the repository's lists ask for: the planner uses
/// a partial index only when a query's `IN` list proves its predicate.
#[tokio::test]
async fn the_partial_indexes_hold_the_statuses_the_repository_lists() -> anyhow::Result<()> {
    let (db, catalog) = catalog().await?;
    let partial: Vec<(&str, &str)> = catalog
        .tables
        .values()
        .flat_map(|table| &table.indexes)
        .filter_map(|index| Some((index.name.as_str(), index.predicate.as_deref()?)))
        .collect();
    let expected = [
        (
            "tasks_tenant_id_assigned_group_id_pending_idx",
            &PENDING[..],
        ),
        ("tasks_tenant_id_assigned_user_id_pending_idx", &PENDING[..]),
        (
            "tasks_tenant_id_sla_deadline_id_open_idx",
            &TaskStatus::OPEN[..],
        ),
    ];
    assert_eq!(
        partial.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        expected.map(|(name, _)| name),
        "partial indexes on {:?}",
        db.backend()
    );
    for ((name, predicate), (_, statuses)) in partial.iter().zip(expected) {
        for status in TaskStatus::iter() {
            let label = format!("'{}'", status.as_str());
            assert_eq!(
                predicate.contains(&label),
                statuses.contains(&status),
                "{name}: {predicate} and {label}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn every_foreign_key_between_tenant_owned_tables_carries_the_tenant_on_both_sides()
-> anyhow::Result<()> {
    let (db, catalog) = catalog().await?;
    let mut actual = BTreeSet::new();
    for (name, table) in &catalog.tables {
        for ForeignKey {
            name: constraint,
            columns,
            references,
            referenced_columns,
            on_delete,
        } in &table.foreign_keys
        {
            if references == "tenants" {
                assert_eq!(columns, &["tenant_id"], "{name} -> tenants");
            } else {
                assert_eq!(
                    columns[0], "tenant_id",
                    "{constraint:?} of {name}: {columns:?}"
                );
                assert_eq!(
                    referenced_columns[0], "tenant_id",
                    "{constraint:?} of {name} references {references} {referenced_columns:?}"
                );
            }
            if let Some(constraint) = constraint {
                assert_eq!(
                    constraint,
                    &format!("{name}_{}_fkey", columns.join("_")),
                    "constraint name"
                );
            }
            actual.insert((
                name.clone(),
                columns.clone(),
                references.clone(),
                referenced_columns.clone(),
                on_delete.clone(),
            ));
        }
    }
    let expected: BTreeSet<_> = FOREIGN_KEYS
        .iter()
        .map(|(table, columns, references, referenced, on_delete)| {
            (
                (*table).to_owned(),
                strings(columns),
                (*references).to_owned(),
                strings(referenced),
                (*on_delete).to_owned(),
            )
        })
        .collect();
    assert_eq!(actual, expected, "foreign keys on {:?}", db.backend());
    Ok(())
}

#[tokio::test]
async fn every_foreign_key_is_served_by_an_index_that_starts_with_its_columns() -> anyhow::Result<()>
{
    let (_db, catalog) = catalog().await?;
    for (name, table) in &catalog.tables {
        let mut keys: Vec<&Vec<String>> = table.indexes.iter().map(|i| &i.columns).collect();
        keys.push(&table.primary_key);
        for fk in &table.foreign_keys {
            assert!(
                keys.iter().any(|key| key.starts_with(&fk.columns)),
                "{name} {:?} -> {} has no index",
                fk.columns,
                fk.references
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn updated_at_has_a_trigger_on_every_table_that_has_the_column_and_audit_refuses_updates()
-> anyhow::Result<()> {
    let (_db, catalog) = catalog().await?;
    for (name, table) in &catalog.tables {
        let mut expected = if table.column("updated_at").is_some() {
            vec![format!("{name}_touch_updated_at")]
        } else {
            vec![]
        };
        if name == "audit_events" {
            expected.push("audit_events_append_only".to_owned());
        }
        assert_eq!(table.triggers, expected, "triggers of {name}");
    }
    Ok(())
}
