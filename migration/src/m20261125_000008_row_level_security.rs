//! Row-level security and the database roles (PostgreSQL only; SQLite has neither, and an embedded
//! database has one user).
//!
//! - Two group roles, created when missing (roles belong to the whole server, so `down` leaves
//!   them): `orkestra_app`, which services log in as members of, and `orkestra_system`, for
//!   tenant administration, cross-tenant sweeps and retention. Neither can log in; an operator
//!   creates login roles in them (README, "Roles").
//! - Every table has row-level security enabled and forced (the owner is held to it too; only
//!   superusers and `BYPASSRLS` roles are not). On every tenant-owned table, the policy
//!   `tenant_isolation` lets a statement see and write only rows whose `tenant_id` is the
//!   transaction's `app.tenant_id` setting, which the repository sets in every transaction it runs.
//!   `tenants` shows a tenant its own row, read-only. `system_access` gives `orkestra_system` every
//!   row.
//! - `orkestra_current_tenant()` reads the setting and fails closed: unset, empty or not a UUID
//!   is NULL, which equals no `tenant_id`, so no row is seen and no row can be written (never a
//!   cast error). Policies call it as `(SELECT orkestra_current_tenant())`, an init-plan evaluated
//!   once per statement whose result the planner compares like a parameter, so the tenant-leading
//!   indexes serve every query.
//! - `orkestra_app` is granted only what the repository does: it reads its tenant's row, inserts
//!   and reads history, messages and audit events but never changes or deletes them, and deletes
//!   only groups and memberships.

use crate::common::execute_on_postgres;
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The role services log in as members of.
pub const APP_ROLE: &str = "orkestra_app";
/// The role of system-level work.
pub const SYSTEM_ROLE: &str = "orkestra_system";

/// Each tenant-owned table and what `orkestra_app` may do to it.
const TENANT_TABLES: [(&str, &str); 8] = [
    ("users", "SELECT, INSERT, UPDATE"),
    ("groups", "SELECT, INSERT, UPDATE, DELETE"),
    ("group_members", "SELECT, INSERT, DELETE"),
    ("conversations", "SELECT, INSERT, UPDATE"),
    ("messages", "SELECT, INSERT"),
    ("tasks", "SELECT, INSERT, UPDATE"),
    ("task_history", "SELECT, INSERT"),
    ("audit_events", "SELECT, INSERT"),
];

/// The UUID in `app.tenant_id`, or NULL. The pattern admits exactly what a `uuid` cast of the
/// canonical form accepts, so the cast cannot fail. `OR REPLACE` because `migrate fresh` drops
/// tables and types but leaves functions behind, and must still be able to run this again.
pub(crate) const CURRENT_TENANT: &str = r#"
CREATE OR REPLACE FUNCTION orkestra_current_tenant() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN current_setting('app.tenant_id', true)
            ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
        THEN current_setting('app.tenant_id', true)::uuid
    END
$$"#;

/// Creates a group role unless it exists. Two migrations racing on one server (tests do) may both
/// see it missing; the loser's duplicate is ignored.
fn create_role(role: &str) -> String {
    format!(
        "DO $$ BEGIN \
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN \
                 CREATE ROLE {role} NOLOGIN; \
             END IF; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; \
         END $$"
    )
}

/// Grants or revokes schema usage on the schema the tables live in.
fn schema_usage(verb: &str) -> String {
    let direction = if verb == "GRANT" { "TO" } else { "FROM" };
    format!(
        "DO $$ BEGIN EXECUTE format('{verb} USAGE ON SCHEMA %I {direction} {APP_ROLE}, {SYSTEM_ROLE}', \
         current_schema()); END $$"
    )
}

fn up_statements() -> Vec<String> {
    let mut sql = vec![
        create_role(APP_ROLE),
        create_role(SYSTEM_ROLE),
        CURRENT_TENANT.to_owned(),
        schema_usage("GRANT"),
    ];
    for (table, privileges) in TENANT_TABLES {
        sql.extend([
            format!("ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"),
            format!("ALTER TABLE {table} FORCE ROW LEVEL SECURITY"),
            format!(
                "CREATE POLICY tenant_isolation ON {table} \
                 USING (tenant_id = (SELECT orkestra_current_tenant())) \
                 WITH CHECK (tenant_id = (SELECT orkestra_current_tenant()))"
            ),
            format!(
                "CREATE POLICY system_access ON {table} TO {SYSTEM_ROLE} \
                 USING (true) WITH CHECK (true)"
            ),
            format!("GRANT {privileges} ON {table} TO {APP_ROLE}"),
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {SYSTEM_ROLE}"),
        ]);
    }
    sql.extend([
        "ALTER TABLE tenants ENABLE ROW LEVEL SECURITY".to_owned(),
        "ALTER TABLE tenants FORCE ROW LEVEL SECURITY".to_owned(),
        "CREATE POLICY tenant_self ON tenants FOR SELECT \
         USING (id = (SELECT orkestra_current_tenant()))"
            .to_owned(),
        format!(
            "CREATE POLICY system_access ON tenants TO {SYSTEM_ROLE} USING (true) WITH CHECK (true)"
        ),
        format!("GRANT SELECT ON tenants TO {APP_ROLE}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON tenants TO {SYSTEM_ROLE}"),
    ]);
    sql
}

fn down_statements() -> Vec<String> {
    let mut sql = vec![
        "DROP POLICY tenant_self ON tenants".to_owned(),
        "DROP POLICY system_access ON tenants".to_owned(),
        "ALTER TABLE tenants NO FORCE ROW LEVEL SECURITY".to_owned(),
        "ALTER TABLE tenants DISABLE ROW LEVEL SECURITY".to_owned(),
        format!("REVOKE ALL ON tenants FROM {APP_ROLE}, {SYSTEM_ROLE}"),
    ];
    for (table, _) in TENANT_TABLES.iter().rev() {
        sql.extend([
            format!("DROP POLICY system_access ON {table}"),
            format!("DROP POLICY tenant_isolation ON {table}"),
            format!("ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY"),
            format!("ALTER TABLE {table} DISABLE ROW LEVEL SECURITY"),
            format!("REVOKE ALL ON {table} FROM {APP_ROLE}, {SYSTEM_ROLE}"),
        ]);
    }
    sql.extend([
        schema_usage("REVOKE"),
        "DROP FUNCTION orkestra_current_tenant()".to_owned(),
    ]);
    sql
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        execute_on_postgres(manager, up_statements()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        execute_on_postgres(manager, down_statements()).await
    }
}
