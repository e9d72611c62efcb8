//! Building blocks the migrations share, so that every table follows the same rules.
//!
//! The rules (see `DESIGN.md`):
//! - a tenant-owned table starts with `id`, `tenant_id` and has the primary key `(tenant_id, id)`;
//! - a reference between tenant-owned tables is a composite foreign key that carries `tenant_id` on
//!   both sides, so PostgreSQL and SQLite refuse a row that points into another tenant;
//! - names follow Prisma's conventions (`users_pkey`, `users_tenant_id_email_key`,
//!   `tasks_tenant_id_status_idx`, `tasks_tenant_id_assigned_user_id_fkey`), so the constraint a
//!   database error names can be traced back to the seed;
//! - enums are native PostgreSQL types; on SQLite they are text columns with a `CHECK` on the labels.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{DbBackend, Statement};
use sea_orm_migration::sea_query::extension::postgres::Type;

/// The key columns every tenant-owned table has.
#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum Key {
    Id,
    TenantId,
}

/// `now()` on SQLite, written in the RFC 3339 form sqlx writes for `DateTime<FixedOffset>`, so that
/// values the database fills in and values the application writes sort together as text.
const SQLITE_NOW: &str = "strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')";

/// An enum of the seed: a native type on PostgreSQL, checked text on SQLite.
pub(crate) struct DbEnum {
    /// The type's name (snake_case of the Prisma enum).
    pub(crate) name: &'static str,
    /// The labels, in the seed's order and spelling.
    pub(crate) labels: &'static [&'static str],
}

pub(crate) const TENANT_STATUS: DbEnum = DbEnum {
    name: "tenant_status",
    labels: &["ACTIVE", "SUSPENDED", "DELETED"],
};
pub(crate) const USER_ROLE: DbEnum = DbEnum {
    name: "user_role",
    labels: &["ADMIN", "MEMBER"],
};
pub(crate) const USER_STATUS: DbEnum = DbEnum {
    name: "user_status",
    labels: &["ACTIVE", "INACTIVE"],
};
pub(crate) const ASSIGNMENT_STRATEGY: DbEnum = DbEnum {
    name: "assignment_strategy",
    labels: &["ROUND_ROBIN", "LOAD_BALANCED", "MANUAL"],
};
pub(crate) const TASK_STATUS: DbEnum = DbEnum {
    name: "task_status",
    labels: &[
        "CREATED",
        "ASSIGNED",
        "CLAIMED",
        "COMPLETED",
        "ESCALATED",
        "EXPIRED",
        "CANCELLED",
    ],
};
pub(crate) const CONVERSATION_STATUS: DbEnum = DbEnum {
    name: "conversation_status",
    labels: &["ACTIVE", "CLOSED", "ARCHIVED"],
};
/// A group's lifecycle (migration 16); not in the seed.
pub(crate) const GROUP_STATUS: DbEnum = DbEnum {
    name: "group_status",
    labels: &["ACTIVE", "ARCHIVED"],
};

/// The enums of the first migrations (the seed's). Later ones are made by their own migration:
/// [`GROUP_STATUS`] by migration 16.
pub(crate) const ENUMS: [&DbEnum; 6] = [
    &TENANT_STATUS,
    &USER_ROLE,
    &USER_STATUS,
    &ASSIGNMENT_STRATEGY,
    &TASK_STATUS,
    &CONVERSATION_STATUS,
];

/// The tenant-owned tables, each after the tables it references (`tenants` aside), so that
/// creating, distributing or securing them in this order never meets a missing parent.
pub(crate) const TENANT_TABLES: [&str; 8] = [
    "users",
    "groups",
    "group_members",
    "conversations",
    "messages",
    "tasks",
    "task_history",
    "audit_events",
];

/// Whether the database has the `citus` extension (PostgreSQL only): a migration that creates a
/// tenant-owned table distributes it when it does (README, "Scaling out with Citus").
///
/// # Errors
/// When the catalog cannot be read.
pub(crate) async fn citus_installed(manager: &SchemaManager<'_>) -> Result<bool, DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres {
        return Ok(false);
    }
    let row = manager
        .get_connection()
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') AS citus",
        ))
        .await?;
    match row {
        Some(row) => row.try_get("", "citus"),
        None => Ok(false),
    }
}

/// The tables Citus distributes (reference tables included), by name; call only where
/// [`citus_installed`].
///
/// # Errors
/// When Citus's catalog cannot be read.
pub(crate) async fn distributed_tables(manager: &SchemaManager<'_>) -> Result<Vec<String>, DbErr> {
    let rows = manager
        .get_connection()
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT logicalrelid::regclass::text AS name FROM pg_dist_partition",
        ))
        .await?;
    rows.iter().map(|row| row.try_get("", "name")).collect()
}

/// Runs `statements` in order on PostgreSQL; on SQLite, which has none of what they create
/// (functions, casts, policies, roles, distribution), does nothing.
pub(crate) async fn execute_on_postgres(
    manager: &SchemaManager<'_>,
    statements: Vec<String>,
) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let db = manager.get_connection();
    for sql in statements {
        db.execute_unprepared(&sql).await?;
    }
    Ok(())
}

impl DbEnum {
    /// Creates the type on PostgreSQL; SQLite has no enum types, so there is nothing to create.
    pub(crate) async fn create(&self, manager: &SchemaManager<'_>) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager
            .create_type(
                Type::create()
                    .as_enum(self.name)
                    .values(self.labels.iter().copied())
                    .to_owned(),
            )
            .await
    }

    /// Drops the type on PostgreSQL (the exact inverse of [`DbEnum::create`]).
    pub(crate) async fn drop(&self, manager: &SchemaManager<'_>) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        manager
            .drop_type(Type::drop().name(self.name).to_owned())
            .await
    }

    /// The immutable cast of this type to text and its function (PostgreSQL), which Citus needs
    /// in `RETURNING` clauses: see migration 12, which made them for the first six enums.
    pub(crate) fn text_cast(&self) -> [String; 2] {
        let (name, function) = (self.name, self.text_cast_function());
        // `OR REPLACE`: `migrate fresh` drops types (and with them this cast and function), but a
        // function left behind by an interrupted run must not stop a rerun.
        [
            format!(
                "CREATE OR REPLACE FUNCTION {function}({name}) RETURNS text \
                 LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE \
                 AS $$ SELECT pg_catalog.textin(pg_catalog.enum_out($1)) $$"
            ),
            format!("CREATE CAST ({name} AS text) WITH FUNCTION {function}({name}) AS ASSIGNMENT"),
        ]
    }

    /// Drops what [`DbEnum::text_cast`] makes.
    pub(crate) fn drop_text_cast(&self) -> [String; 2] {
        let name = self.name;
        [
            format!("DROP CAST ({name} AS text)"),
            format!("DROP FUNCTION {}({name})", self.text_cast_function()),
        ]
    }

    /// The function behind the cast of this type to text.
    fn text_cast_function(&self) -> String {
        format!("orkestra_{}_text", self.name)
    }

    /// A `NOT NULL` column of this enum with the given default label.
    pub(crate) fn column<C>(
        &self,
        backend: DbBackend,
        column: C,
        default: &'static str,
    ) -> ColumnDef
    where
        C: IntoIden + Copy + 'static,
    {
        debug_assert!(self.labels.contains(&default));
        let mut def = ColumnDef::new(column);
        def.enumeration(self.name, self.labels.iter().copied())
            .not_null()
            .default(default);
        if backend == DbBackend::Sqlite {
            def.check(Expr::col(column).is_in(self.labels.iter().copied()));
        }
        def
    }
}

/// A `NOT NULL` `uuid` column.
pub(crate) fn uuid<C: IntoIden>(column: C) -> ColumnDef {
    ColumnDef::new(column).uuid().not_null().to_owned()
}

/// A nullable `uuid` column.
pub(crate) fn uuid_null<C: IntoIden>(column: C) -> ColumnDef {
    ColumnDef::new(column).uuid().null().to_owned()
}

/// A `NOT NULL` `text` column.
pub(crate) fn text<C: IntoIden>(column: C) -> ColumnDef {
    ColumnDef::new(column).text().not_null().to_owned()
}

/// A nullable `text` column.
pub(crate) fn text_null<C: IntoIden>(column: C) -> ColumnDef {
    ColumnDef::new(column).text().null().to_owned()
}

/// A `NOT NULL` `jsonb` column.
pub(crate) fn jsonb<C: IntoIden>(column: C) -> ColumnDef {
    ColumnDef::new(column).json_binary().not_null().to_owned()
}

/// A `NOT NULL` `jsonb` column that defaults to the empty object (the seed's `@default("{}")`).
pub(crate) fn jsonb_object<C: IntoIden>(column: C) -> ColumnDef {
    jsonb(column).default("{}").to_owned()
}

/// A nullable `jsonb` column.
pub(crate) fn jsonb_null<C: IntoIden>(column: C) -> ColumnDef {
    ColumnDef::new(column).json_binary().null().to_owned()
}

/// A nullable `timestamptz` column.
pub(crate) fn timestamptz_null<C: IntoIden>(column: C) -> ColumnDef {
    ColumnDef::new(column)
        .timestamp_with_time_zone()
        .null()
        .to_owned()
}

/// A `NOT NULL` `timestamptz` column that defaults to the current time.
pub(crate) fn timestamptz_now<C: IntoIden>(backend: DbBackend, column: C) -> ColumnDef {
    let now = match backend {
        DbBackend::Sqlite => Expr::cust(format!("({SQLITE_NOW})")),
        _ => Expr::current_timestamp(),
    };
    ColumnDef::new(column)
        .timestamp_with_time_zone()
        .not_null()
        .default(now)
        .to_owned()
}

/// Joins a table's name and column names the way Prisma names constraints and indexes.
fn object_name(table: &str, columns: &[String], suffix: &str) -> String {
    format!("{table}_{}_{suffix}", columns.join("_"))
}

/// `tenant_id` followed by the given columns, as names.
fn tenant_led<C: Iden>(columns: &[C]) -> Vec<String> {
    std::iter::once(Key::TenantId.to_string())
        .chain(columns.iter().map(Iden::to_string))
        .collect()
}

/// Starts a tenant-owned table: `id uuid`, `tenant_id uuid` and the primary key `(tenant_id, id)`.
///
/// The key leads with the tenant so that every lookup by id names its tenant, and so that the table
/// distributes on `tenant_id` unchanged (Citus refuses a key without the distribution column).
pub(crate) fn tenant_table<T: Iden + Copy + 'static>(table: T) -> TableCreateStatement {
    Table::create()
        .table(table)
        .col(uuid(Key::Id))
        .col(uuid(Key::TenantId))
        .primary_key(
            Index::create()
                .name(format!("{}_pkey", table.to_string()))
                .col(Key::TenantId)
                .col(Key::Id),
        )
        .to_owned()
}

/// The action of a foreign key that refuses to delete (or re-key) a row that is still referenced.
///
/// `NO ACTION` rather than `RESTRICT`: both refuse the same statements here (no key is deferred),
/// but SQLite reports a `RESTRICT` refusal as a trigger constraint (extended code 1811) that drivers
/// do not classify as a foreign-key violation, while `NO ACTION` gives the standard code on both
/// backends (SQLite 787, PostgreSQL 23503). Keys never change (`id` and `tenant_id` are
/// immutable), so updates refuse too rather than cascade.
pub(crate) const REFUSE: ForeignKeyAction = ForeignKeyAction::NoAction;

/// A foreign key from `table.tenant_id` to `tenants.id` (the seed's `tenant` relation).
///
/// `NO ACTION`: tenants are soft-deleted (status `DELETED`), never removed while they own rows
/// (see [`REFUSE`]).
pub(crate) fn tenant_fk<T: Iden + Copy + 'static>(table: T) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(object_name(
            &table.to_string(),
            &[Key::TenantId.to_string()],
            "fkey",
        ))
        .from(table, Key::TenantId)
        .to("tenants", Key::Id)
        .on_delete(REFUSE)
        .on_update(REFUSE)
        .to_owned()
}

/// A composite foreign key `(tenant_id, column) REFERENCES parent (tenant_id, id)`.
///
/// Because both sides carry the tenant, the database itself refuses a reference into another
/// tenant. A `NULL` in `column` leaves the key unchecked (`MATCH SIMPLE`), which is what optional
/// references such as `tasks.assigned_user_id` need.
pub(crate) fn child_fk<T, C, P>(
    table: T,
    column: C,
    parent: P,
    on_delete: ForeignKeyAction,
) -> ForeignKeyCreateStatement
where
    T: Iden + Copy + 'static,
    C: Iden + Copy + 'static,
    P: Iden + Copy + 'static,
{
    ForeignKey::create()
        .name(object_name(
            &table.to_string(),
            &tenant_led(&[column]),
            "fkey",
        ))
        .from(table, (Key::TenantId, column))
        .to(parent, (Key::TenantId, Key::Id))
        .on_delete(on_delete)
        .on_update(REFUSE)
        .to_owned()
}

/// An index (or unique index) over the named columns, named the way Prisma names them.
fn named_index<T: Iden + Copy + 'static>(
    table: T,
    columns: Vec<String>,
    unique: bool,
) -> IndexCreateStatement {
    let suffix = if unique { "key" } else { "idx" };
    let mut index = Index::create();
    index
        .name(object_name(&table.to_string(), &columns, suffix))
        .table(table);
    if unique {
        index.unique();
    }
    for column in columns {
        index.col(column);
    }
    index
}

/// A secondary index on `(tenant_id, columns...)`, named `<table>_tenant_id_<columns>_idx`.
///
/// Every index of a tenant-owned table leads with the tenant: each query names its tenant, and on a
/// tenant-sharded cluster the index then lives on the shard that holds the tenant.
pub(crate) fn tenant_index<T, C>(table: T, columns: &[C]) -> IndexCreateStatement
where
    T: Iden + Copy + 'static,
    C: Iden,
{
    named_index(table, tenant_led(columns), false)
}

/// The name of the index [`tenant_index`] creates for the same table and columns.
pub(crate) fn tenant_index_name<T: Iden, C: Iden>(table: T, columns: &[C]) -> String {
    object_name(&table.to_string(), &tenant_led(columns), "idx")
}

/// A unique index on `(tenant_id, columns...)`, named `<table>_tenant_id_<columns>_key` (the seed's
/// `@@unique`, or a per-tenant form of its `@unique`).
pub(crate) fn tenant_unique<T, C>(table: T, columns: &[C]) -> IndexCreateStatement
where
    T: Iden + Copy + 'static,
    C: Iden,
{
    named_index(table, tenant_led(columns), true)
}

/// A unique index on the given columns of a table that is not tenant-owned (`tenants.slug`).
pub(crate) fn unique<T, C>(table: T, columns: &[C]) -> IndexCreateStatement
where
    T: Iden + Copy + 'static,
    C: Iden,
{
    named_index(table, columns.iter().map(Iden::to_string).collect(), true)
}

/// Drops a table (the inverse of its `create_table`; its indexes and triggers go with it).
pub(crate) async fn drop_table<T: Iden + 'static>(
    manager: &SchemaManager<'_>,
    table: T,
) -> Result<(), DbErr> {
    manager
        .drop_table(Table::drop().table(table).to_owned())
        .await
}

/// The PostgreSQL function behind every `updated_at` trigger.
///
/// `OR REPLACE`: `migrate fresh` drops every table and type but not functions, then runs `up` again.
/// `clock_timestamp()`, not `now()`: two updates in one transaction must still advance the value,
/// and `GREATEST` keeps it advancing even when the clock steps back.
const PG_TOUCH_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION orkestra_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := GREATEST(clock_timestamp(), OLD.updated_at + interval '1 microsecond');
    RETURN NEW;
END
$$"#;

/// Creates the function the `updated_at` triggers call (PostgreSQL only; SQLite triggers inline it).
pub(crate) async fn create_touch_function(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    if manager.get_database_backend() == DbBackend::Postgres {
        manager
            .get_connection()
            .execute_unprepared(PG_TOUCH_FUNCTION)
            .await?;
    }
    Ok(())
}

/// Drops the function [`create_touch_function`] creates.
pub(crate) async fn drop_touch_function(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    if manager.get_database_backend() == DbBackend::Postgres {
        manager
            .get_connection()
            .execute_unprepared("DROP FUNCTION orkestra_touch_updated_at()")
            .await?;
    }
    Ok(())
}

/// Makes `updated_at` advance on every update of `table`.
///
/// sea-query has no trigger builder, so this is the one place where the migrations write SQL.
/// - PostgreSQL: a `BEFORE UPDATE` trigger sets it, whatever the statement set, so `RETURNING` sees
///   the new value.
/// - SQLite cannot change `NEW` before the write: an `AFTER UPDATE` trigger rewrites the row when
///   the statement did not move `updated_at` forward itself (recursive triggers are off by default,
///   so it does not fire itself). `RETURNING` shows the row before that rewrite, so code that wants
///   the exact value back sets `updated_at` in its statement. The values compare as text, which
///   orders the RFC 3339 UTC form sqlx writes to the nanosecond (`julianday` would round to the
///   millisecond). SQLite's clock has millisecond resolution; the trigger adds a millisecond when
///   two updates fall within one.
pub(crate) async fn create_touch_trigger<T: Iden>(
    manager: &SchemaManager<'_>,
    table: T,
) -> Result<(), DbErr> {
    let table = table.to_string();
    let sql = match manager.get_database_backend() {
        DbBackend::Postgres => format!(
            "CREATE TRIGGER {table}_touch_updated_at BEFORE UPDATE ON {table} \
             FOR EACH ROW EXECUTE FUNCTION orkestra_touch_updated_at()"
        ),
        DbBackend::Sqlite => format!(
            "CREATE TRIGGER {table}_touch_updated_at AFTER UPDATE ON {table} FOR EACH ROW \
             WHEN NEW.updated_at <= OLD.updated_at \
             BEGIN UPDATE {table} SET updated_at = strftime('%Y-%m-%dT%H:%M:%f+00:00', \
             max(julianday('now'), julianday(OLD.updated_at) + 1.0 / 86400000.0)) \
             WHERE rowid = NEW.rowid; END"
        ),
        other => {
            return Err(DbErr::Migration(format!(
                "the Orkestra schema supports PostgreSQL and SQLite, not {other:?}"
            )));
        }
    };
    manager.get_connection().execute_unprepared(&sql).await?;
    Ok(())
}
