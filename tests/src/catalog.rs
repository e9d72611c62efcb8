//! What the database says its schema is, read from its own catalog (PostgreSQL's `pg_catalog`,
//! SQLite's `sqlite_master` and pragmas) into one shape, so that tests can assert on the schema and
//! compare it before and after a migration round trip.

use std::collections::BTreeMap;

use anyhow::Context as _;
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement};

/// A column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type as the database spells it (`uuid`, `jsonb`, `task_status`; SQLite: the declared type).
    pub data_type: String,
    /// Whether it accepts `NULL`.
    pub nullable: bool,
    /// Its default expression, as the database prints it.
    pub default: Option<String>,
}

/// An index, unique or not (the primary key is kept apart, in [`Table::primary_key`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Index {
    /// Its name.
    pub name: String,
    /// Its columns, in key order.
    pub columns: Vec<String>,
    /// Whether it is unique.
    pub unique: bool,
    /// A partial index's `WHERE` condition, as the database prints it.
    pub predicate: Option<String>,
}

/// A foreign key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForeignKey {
    /// Its name (SQLite does not report names: `None` there).
    pub name: Option<String>,
    /// The referencing columns, in key order.
    pub columns: Vec<String>,
    /// The referenced table.
    pub references: String,
    /// The referenced columns, in key order.
    pub referenced_columns: Vec<String>,
    /// `CASCADE`, `RESTRICT`, `NO ACTION`, `SET NULL` or `SET DEFAULT`.
    pub on_delete: String,
}

/// A table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Its columns, in table order.
    pub columns: Vec<Column>,
    /// The primary key's columns, in key order.
    pub primary_key: Vec<String>,
    /// Its indexes other than the primary key, by name.
    pub indexes: Vec<Index>,
    /// Its foreign keys.
    pub foreign_keys: Vec<ForeignKey>,
    /// The names of its triggers.
    pub triggers: Vec<String>,
    /// Row-level security: (enabled, forced). PostgreSQL only.
    pub row_security: (bool, bool),
    /// Its row-level security policies, each as `name cmd roles USING (..) WITH CHECK (..)`.
    /// PostgreSQL only.
    pub policies: Vec<String>,
    /// The privileges granted on it to roles other than its owner, each as `role:PRIVILEGE`.
    /// PostgreSQL only.
    pub grants: Vec<String>,
    /// How Citus distributes it (`reference` or `hash(<column>)`, and the first table, by name, of
    /// its co-location group); `None` for a local table and everywhere but on Citus.
    pub distribution: Option<String>,
}

impl Table {
    /// The column called `name`, if any.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|column| column.name == name)
    }

    /// The names of the columns, in table order.
    pub fn column_names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }
}

/// The whole schema (tables other than `seaql_migrations`, enum types and functions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Tables by name.
    pub tables: BTreeMap<String, Table>,
    /// The migration bookkeeping table, if present (kept apart: it outlives `down` to zero).
    pub has_migrations_table: bool,
    /// Enum types and their labels in order (PostgreSQL only).
    pub enums: BTreeMap<String, Vec<String>>,
    /// Functions in the schema (PostgreSQL only).
    pub functions: Vec<String>,
    /// Their definitions, in the same order, so that a migration replacing a function's body
    /// shows (PostgreSQL only).
    pub function_definitions: Vec<String>,
    /// Casts from the schema's types, each as `source -> target via function` (PostgreSQL only).
    pub casts: Vec<String>,
}

impl Catalog {
    /// Reads the catalog of the database `db` is connected to.
    ///
    /// # Errors
    /// When a catalog query fails.
    pub async fn read(db: &impl ConnectionTrait) -> anyhow::Result<Catalog> {
        let mut catalog = match db.get_database_backend() {
            DbBackend::Postgres => read_postgres(db).await,
            DbBackend::Sqlite => read_sqlite(db).await,
            other => anyhow::bail!("no catalog reader for {other:?}"),
        }
        .context("reading the catalog")?;
        catalog.has_migrations_table = catalog.tables.remove("seaql_migrations").is_some();
        for table in catalog.tables.values_mut() {
            table.indexes.sort();
            table.foreign_keys.sort();
            table.triggers.sort();
            table.policies.sort();
            table.grants.sort();
        }
        Ok(catalog)
    }

    /// The table called `name`.
    ///
    /// # Panics
    /// When there is none.
    pub fn table(&self, name: &str) -> &Table {
        self.tables
            .get(name)
            .unwrap_or_else(|| panic!("no table {name} in {:?}", self.tables.keys()))
    }
}

async fn rows(db: &impl ConnectionTrait, sql: &str) -> anyhow::Result<Vec<QueryResult>> {
    db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .with_context(|| format!("running {sql}"))
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, column: &str) -> anyhow::Result<T> {
    row.try_get("", column)
        .with_context(|| format!("reading {column}"))
}

fn split(list: String) -> Vec<String> {
    list.split(',').map(str::to_owned).collect()
}

fn on_delete_pg(code: &str) -> String {
    match code {
        "c" => "CASCADE",
        "r" => "RESTRICT",
        "n" => "SET NULL",
        "d" => "SET DEFAULT",
        _ => "NO ACTION",
    }
    .to_owned()
}

async fn read_postgres(db: &impl ConnectionTrait) -> anyhow::Result<Catalog> {
    let mut catalog = Catalog::default();
    for row in rows(
        db,
        "SELECT c.relname AS table_name, a.attname AS column_name,
                format_type(a.atttypid, a.atttypmod) AS data_type, NOT a.attnotnull AS nullable,
                pg_get_expr(d.adbin, d.adrelid) AS column_default
         FROM pg_class c
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
         ORDER BY c.relname, a.attnum",
    )
    .await?
    {
        let table: String = get(&row, "table_name")?;
        catalog
            .tables
            .entry(table)
            .or_default()
            .columns
            .push(Column {
                name: get(&row, "column_name")?,
                data_type: get(&row, "data_type")?,
                nullable: get(&row, "nullable")?,
                default: get(&row, "column_default")?,
            });
    }
    for row in rows(
        db,
        "SELECT t.relname AS table_name, i.relname AS index_name, x.indisunique AS is_unique,
                x.indisprimary AS is_primary, pg_get_expr(x.indpred, x.indrelid) AS predicate,
                (SELECT string_agg(a.attname, ',' ORDER BY k.ord)
                 FROM unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum) AS columns
         FROM pg_index x
         JOIN pg_class i ON i.oid = x.indexrelid
         JOIN pg_class t ON t.oid = x.indrelid
         WHERE t.relnamespace = 'public'::regnamespace",
    )
    .await?
    {
        let table = catalog.tables.entry(get(&row, "table_name")?).or_default();
        let columns = split(get(&row, "columns")?);
        if get::<bool>(&row, "is_primary")? {
            table.primary_key = columns;
        } else {
            table.indexes.push(Index {
                name: get(&row, "index_name")?,
                columns,
                unique: get(&row, "is_unique")?,
                predicate: get(&row, "predicate")?,
            });
        }
    }
    for row in rows(
        db,
        "SELECT t.relname AS table_name, c.conname AS name, r.relname AS references,
                c.confdeltype::text AS on_delete,
                (SELECT string_agg(a.attname, ',' ORDER BY k.ord)
                 FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum) AS columns,
                (SELECT string_agg(a.attname, ',' ORDER BY k.ord)
                 FROM unnest(c.confkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum)
                    AS referenced_columns
         FROM pg_constraint c
         JOIN pg_class t ON t.oid = c.conrelid
         JOIN pg_class r ON r.oid = c.confrelid
         WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace",
    )
    .await?
    {
        let table = catalog.tables.entry(get(&row, "table_name")?).or_default();
        table.foreign_keys.push(ForeignKey {
            name: Some(get(&row, "name")?),
            columns: split(get(&row, "columns")?),
            references: get(&row, "references")?,
            referenced_columns: split(get(&row, "referenced_columns")?),
            on_delete: on_delete_pg(&get::<String>(&row, "on_delete")?),
        });
    }
    for row in rows(
        db,
        "SELECT c.relname AS table_name, t.tgname AS name
         FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE NOT t.tgisinternal AND c.relnamespace = 'public'::regnamespace",
    )
    .await?
    {
        let table = catalog.tables.entry(get(&row, "table_name")?).or_default();
        table.triggers.push(get(&row, "name")?);
    }
    for row in rows(
        db,
        "SELECT c.relname AS table_name, c.relrowsecurity AS enabled,
                c.relforcerowsecurity AS forced
         FROM pg_class c
         WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace",
    )
    .await?
    {
        let table = catalog.tables.entry(get(&row, "table_name")?).or_default();
        table.row_security = (get(&row, "enabled")?, get(&row, "forced")?);
    }
    for row in rows(
        db,
        "SELECT tablename AS table_name,
                concat_ws(' ', policyname, cmd, roles::text, 'USING', qual, 'WITH CHECK',
                          with_check) AS policy
         FROM pg_policies WHERE schemaname = 'public'",
    )
    .await?
    {
        let table = catalog.tables.entry(get(&row, "table_name")?).or_default();
        table.policies.push(get(&row, "policy")?);
    }
    for row in rows(
        db,
        "SELECT table_name, grantee || ':' || privilege_type AS grant
         FROM information_schema.role_table_grants g
         WHERE table_schema = 'public'
           AND grantee <> (SELECT pg_get_userbyid(c.relowner) FROM pg_class c
                           WHERE c.oid = to_regclass('public.' || quote_ident(g.table_name))
                             -- Tables only: Citus adds views (citus_tables) to the schema.
                             AND c.relkind IN ('r', 'p'))",
    )
    .await?
    {
        let table = catalog.tables.entry(get(&row, "table_name")?).or_default();
        table.grants.push(get(&row, "grant")?);
    }
    for row in rows(
        db,
        "SELECT t.typname AS name, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) AS labels
         FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
         WHERE t.typnamespace = 'public'::regnamespace
         GROUP BY t.typname",
    )
    .await?
    {
        catalog
            .enums
            .insert(get(&row, "name")?, split(get(&row, "labels")?));
    }
    for row in rows(
        db,
        "SELECT proname, pg_get_functiondef(oid) AS definition
         FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY proname",
    )
    .await?
    {
        catalog.functions.push(get(&row, "proname")?);
        catalog.function_definitions.push(get(&row, "definition")?);
    }
    for row in rows(
        db,
        "SELECT format('%s -> %s via %s', c.castsource::regtype, c.casttarget::regtype,
                       c.castfunc::regproc) AS cast
         FROM pg_cast c JOIN pg_type t ON t.oid = c.castsource
         WHERE t.typnamespace = 'public'::regnamespace ORDER BY 1",
    )
    .await?
    {
        catalog.casts.push(get(&row, "cast")?);
    }
    read_distribution(db, &mut catalog).await?;
    Ok(catalog)
}

/// Reads how Citus distributes each table, when the database has Citus's metadata.
async fn read_distribution(db: &impl ConnectionTrait, catalog: &mut Catalog) -> anyhow::Result<()> {
    let citus = rows(
        db,
        "SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL AS citus",
    )
    .await?;
    if !citus
        .first()
        .map(|row| get::<bool>(row, "citus"))
        .transpose()?
        .unwrap_or(false)
    {
        return Ok(());
    }
    // Co-location groups are numbered anew each time tables are distributed: the group is named
    // by its first table instead, so that a schema distributed again compares equal.
    for row in rows(
        db,
        "SELECT p.logicalrelid::regclass::text AS table_name,
                CASE p.partmethod WHEN 'n' THEN 'reference'
                     ELSE 'hash(' || column_to_column_name(p.logicalrelid, p.partkey) || ')'
                END || ' with ' || (SELECT min(o.logicalrelid::regclass::text)
                                    FROM pg_dist_partition o
                                    WHERE o.colocationid = p.colocationid) AS distribution
         FROM pg_dist_partition p",
    )
    .await?
    {
        if let Some(table) = catalog.tables.get_mut(&get::<String>(&row, "table_name")?) {
            table.distribution = Some(get(&row, "distribution")?);
        }
    }
    Ok(())
}

async fn read_sqlite(db: &impl ConnectionTrait) -> anyhow::Result<Catalog> {
    let mut catalog = Catalog::default();
    let tables = rows(
        db,
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
    )
    .await?;
    for row in tables {
        // The names below come from the catalog itself, so formatting them into SQL is safe.
        let name: String = get(&row, "name")?;
        let mut table = Table::default();
        let mut primary_key = Vec::new();
        for column in rows(
            db,
            &format!(
                r#"SELECT name, type, "notnull" AS not_null, dflt_value, pk
                   FROM pragma_table_info('{name}') ORDER BY cid"#
            ),
        )
        .await?
        {
            let column_name: String = get(&column, "name")?;
            let pk: i32 = get(&column, "pk")?;
            if pk > 0 {
                primary_key.push((pk, column_name.clone()));
            }
            table.columns.push(Column {
                name: column_name,
                data_type: get(&column, "type")?,
                nullable: get::<i32>(&column, "not_null")? == 0,
                default: get(&column, "dflt_value")?,
            });
        }
        primary_key.sort();
        table.primary_key = primary_key.into_iter().map(|(_, column)| column).collect();
        for index in rows(
            db,
            &format!(
                r#"SELECT l.name, l."unique" AS is_unique, l.origin, m.sql
                   FROM pragma_index_list('{name}') AS l
                   LEFT JOIN sqlite_master AS m ON m.type = 'index' AND m.name = l.name"#
            ),
        )
        .await?
        {
            if get::<String>(&index, "origin")? == "pk" {
                continue;
            }
            let index_name: String = get(&index, "name")?;
            let mut columns = Vec::new();
            for column in rows(
                db,
                &format!("SELECT name FROM pragma_index_info('{index_name}') ORDER BY seqno"),
            )
            .await?
            {
                columns.push(get(&column, "name")?);
            }
            // SQLite keeps only the statement that made the index; the condition is its tail.
            let sql: Option<String> = get(&index, "sql")?;
            let predicate = sql.and_then(|sql| {
                sql.find(" WHERE ")
                    .map(|at| sql[at + " WHERE ".len()..].trim().to_owned())
            });
            table.indexes.push(Index {
                name: index_name,
                columns,
                unique: get::<i32>(&index, "is_unique")? == 1,
                predicate,
            });
        }
        let mut keys: BTreeMap<i32, ForeignKey> = BTreeMap::new();
        for fk in rows(
            db,
            &format!(
                r#"SELECT id, seq, "table" AS references_table, "from" AS from_column,
                          "to" AS to_column, on_delete
                   FROM pragma_foreign_key_list('{name}') ORDER BY id, seq"#
            ),
        )
        .await?
        {
            let key = keys.entry(get(&fk, "id")?).or_insert_with(|| ForeignKey {
                name: None,
                columns: Vec::new(),
                references: String::new(),
                referenced_columns: Vec::new(),
                on_delete: String::new(),
            });
            key.columns.push(get(&fk, "from_column")?);
            key.referenced_columns.push(get(&fk, "to_column")?);
            key.references = get(&fk, "references_table")?;
            key.on_delete = get(&fk, "on_delete")?;
        }
        table.foreign_keys = keys.into_values().collect();
        catalog.tables.insert(name, table);
    }
    for row in rows(
        db,
        "SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger'",
    )
    .await?
    {
        let table: String = get(&row, "tbl_name")?;
        if let Some(table) = catalog.tables.get_mut(&table) {
            table.triggers.push(get(&row, "name")?);
        }
    }
    Ok(catalog)
}
