//! `orkestra_bind_tenant(uuid)`: binds the current transaction to a tenant, as
//! `SET LOCAL app.tenant_id = '<uuid>'` does, from inside a function (PostgreSQL only).
//!
//! The repository begins a transaction and binds its tenant in one message,
//! `BEGIN; SELECT orkestra_bind_tenant('<uuid>')`, so a call pays one round trip for both. The
//! function, rather than `BEGIN; SET LOCAL ...` in the message, is for Citus: the coordinator
//! forwards a `SET LOCAL` to the workers by replaying the text of the statement that ran it, and in
//! a multi-statement message that text is the whole message, `BEGIN` included, so each worker the
//! transaction opens would warn that a transaction is already in progress. Run by `EXECUTE` inside
//! the function, the replayed text is the `SET LOCAL` alone. `%L` quotes the value, and the
//! parameter is a `uuid`, so nothing but a UUID can reach the setting. `STRICT`: a NULL tenant binds
//! nothing, which the policies read as no tenant.

use sea_orm_migration::prelude::*;

use crate::common::execute_on_postgres;

#[derive(DeriveMigrationName)]
pub struct Migration;

const BIND_TENANT: &str = r#"
CREATE OR REPLACE FUNCTION orkestra_bind_tenant(tenant uuid) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT AS $$
BEGIN
    EXECUTE format('SET LOCAL app.tenant_id = %L', tenant);
END
$$"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        execute_on_postgres(manager, vec![BIND_TENANT.to_owned()]).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let drop = "DROP FUNCTION orkestra_bind_tenant(uuid)";
        execute_on_postgres(manager, vec![drop.to_owned()]).await
    }
}
