//! The audit trail is append-only for everyone: a trigger refuses every `UPDATE` of
//! `audit_events`, on both backends, whoever runs it (the table owner and `orkestra_system`
//! included). Deleting stays possible for retention, and on PostgreSQL only `orkestra_system` holds
//! the privilege to (migration 8).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// SQLSTATE 42501 (`insufficient_privilege`): the same refusal the application role gets from its
/// missing `UPDATE` privilege, so both read alike. `OR REPLACE` because `migrate fresh` leaves
/// functions behind.
const PG_FUNCTION: &str = r#"
CREATE OR REPLACE FUNCTION orkestra_refuse_audit_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only' USING ERRCODE = 'insufficient_privilege';
END
$$"#;

const PG_TRIGGER: &str = "CREATE TRIGGER audit_events_append_only BEFORE UPDATE ON audit_events \
                          FOR EACH ROW EXECUTE FUNCTION orkestra_refuse_audit_update()";

const SQLITE_TRIGGER: &str = "CREATE TRIGGER audit_events_append_only BEFORE UPDATE ON audit_events \
                              BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match manager.get_database_backend() {
            DbBackend::Postgres => {
                db.execute_unprepared(PG_FUNCTION).await?;
                db.execute_unprepared(PG_TRIGGER).await?;
            }
            _ => {
                db.execute_unprepared(SQLITE_TRIGGER).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match manager.get_database_backend() {
            DbBackend::Postgres => {
                db.execute_unprepared("DROP TRIGGER audit_events_append_only ON audit_events")
                    .await?;
                db.execute_unprepared("DROP FUNCTION orkestra_refuse_audit_update()")
                    .await?;
            }
            _ => {
                db.execute_unprepared("DROP TRIGGER audit_events_append_only")
                    .await?;
            }
        }
        Ok(())
    }
}
