//! Row-level security in a form Citus accepts and evaluates safely (PostgreSQL only):
//!
//! - The policies compare `tenant_id` to `orkestra_current_tenant()` directly, instead of to the
//!   sub-select `(SELECT orkestra_current_tenant())` of migration 8: Citus refuses a policy that
//!   holds a subquery on a distributed table (`Subqueries are not supported in policies on
//!   distributed tables`).
//! - `orkestra_current_tenant()` validates and converts the setting in one expression that no
//!   part of can fail: `substring(setting FROM <uuid pattern>)::uuid` is NULL for anything but a
//!   canonical UUID. Migration 8's `CASE WHEN setting ~* <pattern> THEN setting::uuid END` relied
//!   on the `CASE` to skip the cast, but Citus evaluates the stable parts of a write's expressions
//!   on the coordinator one by one: after a transaction had bound a tenant, the session's setting
//!   is `''`, and an insert with no tenant failed with `invalid input syntax for type uuid`
//!   instead of being refused by the policy.
//!
//! The guarantees stay the same: an unset, empty or malformed setting is NULL, which equals no
//! tenant, so nothing is seen or written; the policies keep their names, roles and commands. So
//! does the index use: the function is a `STABLE` SQL function, which the planner inlines into
//! the policy, and a stable expression bounds an index scan like a parameter, evaluated once when
//! the scan starts, as the sub-select's init-plan was. The `rls` and `plans` tests check the
//! plans, and `just bench-rls` the cost (BENCHMARKS.md).

use sea_orm_migration::prelude::*;

use crate::common::{TENANT_TABLES, execute_on_postgres};
use crate::m20261125_000008_row_level_security::CURRENT_TENANT;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The UUID in `app.tenant_id`, or NULL. The pattern admits exactly the canonical form, in either
/// case, which a `uuid` cast always accepts.
const CURRENT_TENANT_SAFE: &str = r#"
CREATE OR REPLACE FUNCTION orkestra_current_tenant() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT substring(
        current_setting('app.tenant_id', true)
        FROM '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'
    )::uuid
$$"#;

/// The statements that make `function` the tenant function and set each policy's expression to
/// `tenant`, the current tenant as the policies compare it.
fn statements(function: &str, tenant: &str) -> Vec<String> {
    let policies = TENANT_TABLES.iter().map(|table| {
        format!(
            "ALTER POLICY tenant_isolation ON {table} \
             USING (tenant_id = {tenant}) WITH CHECK (tenant_id = {tenant})"
        )
    });
    [function.to_owned()]
        .into_iter()
        .chain(policies)
        .chain([format!(
            "ALTER POLICY tenant_self ON tenants USING (id = {tenant})"
        )])
        .collect()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = statements(CURRENT_TENANT_SAFE, "orkestra_current_tenant()");
        execute_on_postgres(manager, statements).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = statements(CURRENT_TENANT, "(SELECT orkestra_current_tenant())");
        execute_on_postgres(manager, statements).await
    }
}
