//! Traces: every public repository method runs in a `tracing` span, and every statement it sends
//! in a child span.
//!
//! A method's span is named `orkestra.<repository>.<method>` (`orkestra.tasks.claim`), at level
//! `INFO`, and carries:
//! - `tenant.id`, `actor.kind` and `actor.id` from the request context (methods of tenant
//!   administration carry the tenant they are given instead);
//! - the ids the method was called with (`task.id`, `user.id`, `group.id`, `conversation.id`, ...);
//! - on failure, `error.type`, the [`Error`]'s variant ([`Error::kind`]), and
//!   `otel.status_code = "ERROR"`.
//!
//! A statement's span is named `db.statement`, at level `DEBUG`, with OpenTelemetry's database
//! fields: `db.system.name` (`postgresql` or `sqlite`), `db.operation.name` (`SELECT`, `INSERT`,
//! `BEGIN`, ...), `db.collection.name` (the table, when the statement names one),
//! `db.query.text` (the statement with its placeholders: values never reach a trace), and
//! `otel.name` (`UPDATE tasks`), which `tracing-opentelemetry` uses as the exported span's name.
//! Nothing is parsed unless a subscriber wants the span.

use std::future::Future;

use sea_orm::DbBackend;
use tracing::{Instrument, Span, field::Empty};

use crate::error::Result;

/// The span of a public repository method: `span!("orkestra.tasks.claim", ctx, task.id = %id)`
/// with the request context, or `span!("orkestra.tenants.suspend"; tenant.id = %id)` without one.
macro_rules! span {
    ($name:literal, $ctx:expr $(, $($field:tt)+)?) => {
        ::tracing::info_span!(
            $name,
            tenant.id = %$ctx.tenant_id(),
            actor.kind = $ctx.actor().kind().as_str(),
            actor.id = $ctx.actor().id(),
            error.type = ::tracing::field::Empty,
            otel.status_code = ::tracing::field::Empty,
            $($($field)+)?
        )
    };
    ($name:literal; $($field:tt)*) => {
        ::tracing::info_span!(
            $name,
            error.type = ::tracing::field::Empty,
            otel.status_code = ::tracing::field::Empty,
            $($field)*
        )
    };
}
pub(crate) use span;

/// Records an optional id the method was called with, when there is one.
pub(crate) fn ids(span: &Span, field: &'static str, id: Option<uuid::Uuid>) {
    if let Some(id) = id {
        span.record(field, tracing::field::display(id));
    }
}

/// Runs a method's body in its span, and records the error's variant on the span when it fails.
pub(crate) async fn traced<T>(span: Span, body: impl Future<Output = Result<T>>) -> Result<T> {
    let result = body.instrument(span.clone()).await;
    if let Err(error) = &result {
        span.record("error.type", error.kind());
        span.record("otel.status_code", "ERROR");
    }
    result
}

/// The span of one statement sent on `backend`.
pub(crate) fn statement(backend: DbBackend, sql: &str) -> Span {
    let span = tracing::debug_span!(
        "db.statement",
        otel.name = Empty,
        otel.kind = "client",
        db.system.name = system(backend),
        db.operation.name = Empty,
        db.collection.name = Empty,
        db.query.text = Empty,
    );
    if !span.is_disabled() {
        let (operation, collection) = describe(sql);
        span.record("db.operation.name", operation.as_str());
        span.record("db.query.text", sql);
        match collection {
            Some(collection) => {
                span.record("db.collection.name", collection.as_str());
                span.record("otel.name", format!("{operation} {collection}"));
            }
            None => {
                span.record("otel.name", operation.as_str());
            }
        }
    }
    span
}

/// OpenTelemetry's name of the database system.
fn system(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "postgresql",
        DbBackend::Sqlite => "sqlite",
        _ => "other_sql",
    }
}

/// The operation (the statement's first keyword) and the table it works on: the name after
/// `INSERT INTO`, `UPDATE`, `DELETE FROM` or a `SELECT`'s first `FROM`, unquoted. The statements
/// are the repository's own, built by sea-query; this reads them, it does not validate them.
fn describe(sql: &str) -> (String, Option<String>) {
    let mut words = sql.split_whitespace();
    let operation = words.next().unwrap_or_default().trim_end_matches(';');
    let operation = operation.to_ascii_uppercase();
    let after = |keyword: &str| {
        let mut words = sql.split_whitespace();
        words.find(|word| word.eq_ignore_ascii_case(keyword))?;
        words.next()
    };
    let table = match operation.as_str() {
        "INSERT" => after("INTO"),
        "UPDATE" => sql.split_whitespace().nth(1),
        "DELETE" | "SELECT" => after("FROM"),
        _ => None,
    };
    let table = table
        .map(|name| name.trim_matches(|c: char| c == '"' || c == '`' || c == '(' || c == ')'))
        .filter(|name| !name.is_empty())
        .map(str::to_owned);
    (operation, table)
}

#[cfg(test)]
mod tests {
    use super::describe;

    /// Every public method of every repository opens with its span, named after it.
    #[test]
    fn every_public_repository_method_runs_in_its_span() {
        let sources = [
            ("audit", include_str!("audit.rs")),
            ("conversations", include_str!("conversations.rs")),
            ("groups", include_str!("groups.rs")),
            ("system", include_str!("system.rs")),
            ("tasks", include_str!("tasks.rs")),
            ("tenants", include_str!("tenants.rs")),
            ("users", include_str!("users.rs")),
        ];
        let mut methods = 0;
        for (repository, source) in sources {
            let source = source.split("#[cfg(test)]").next().unwrap_or_default();
            for method in source.split("    pub async fn ").skip(1) {
                let name = method.split('(').next().unwrap_or_default();
                let body = method
                    .split_once(" {\n")
                    .map(|(_, body)| body)
                    .unwrap_or_default();
                let span = format!("span!(\n            \"orkestra.{repository}.{name}\"");
                let inline = format!("span!(\"orkestra.{repository}.{name}\"");
                let opening: String = body.lines().take(3).collect::<Vec<_>>().join("\n");
                assert!(
                    opening.contains(&span) || opening.contains(&inline),
                    "{repository}::{name} does not open with its span:\n{opening}"
                );
                methods += 1;
            }
        }
        assert!(methods >= 59, "only {methods} methods found");
    }

    #[test]
    fn statements_are_described_by_operation_and_table() {
        let cases = [
            (
                r#"UPDATE "tasks" SET "status" = $1 WHERE "tasks"."tenant_id" = $2"#,
                ("UPDATE", Some("tasks")),
            ),
            (
                r#"INSERT INTO "task_history" ("id") VALUES ($1) RETURNING "id""#,
                ("INSERT", Some("task_history")),
            ),
            (
                r#"SELECT "tasks"."id" FROM "tasks" WHERE "id" IN (SELECT 1 FROM "groups")"#,
                ("SELECT", Some("tasks")),
            ),
            (
                r#"DELETE FROM "group_members" WHERE "tenant_id" = $1"#,
                ("DELETE", Some("group_members")),
            ),
            ("SELECT orkestra_bind_tenant($1)", ("SELECT", None)),
            ("BEGIN", ("BEGIN", None)),
            ("commit;", ("COMMIT", None)),
        ];
        for (sql, (operation, table)) in cases {
            let (got_operation, got_table) = describe(sql);
            assert_eq!(got_operation, operation, "{sql}");
            assert_eq!(got_table.as_deref(), table, "{sql}");
        }
    }
}
