//! Helpers for the `MockDatabase` unit tests: contexts, mocked rows, and reading the statements a
//! repository call sent.

use std::collections::BTreeMap;

use sea_orm::{DatabaseConnection, DbBackend, MockDatabase, MockExecResult, Statement, Value};
use uuid::Uuid;

use crate::{Actor, RequestContext};

/// A mocked row, keyed by column name.
pub(crate) type Row = BTreeMap<&'static str, Value>;

/// A context for `tenant`, acted on by a user.
pub(crate) fn ctx(tenant: Uuid) -> RequestContext {
    RequestContext::new(tenant, Actor::user(Uuid::now_v7()).expect("a non-nil user"))
        .expect("a non-nil tenant")
}

/// A mock PostgreSQL database; the dialect matters, since the tenant predicates are read from the
/// SQL it renders.
pub(crate) fn postgres() -> MockDatabase {
    MockDatabase::new(DbBackend::Postgres)
}

/// An exec result that touched `rows` rows.
pub(crate) fn affected(rows: u64) -> MockExecResult {
    MockExecResult {
        last_insert_id: 0,
        rows_affected: rows,
    }
}

/// No rows, typed for `append_query_results`.
pub(crate) fn none() -> Vec<Row> {
    Vec::new()
}

fn stamp() -> Value {
    Value::from(chrono::Utc::now().fixed_offset())
}

/// A user row. Native-enum columns hold their labels as strings: sea-orm 2.0.4 cannot read a
/// mocked row whose enum cell holds the Rust enum.
pub(crate) fn user_row(tenant: Uuid, id: Uuid) -> Row {
    BTreeMap::from([
        ("id", Value::from(id)),
        ("tenant_id", Value::from(tenant)),
        ("email", Value::from("ada@example.com")),
        ("name", Value::from("Ada")),
        ("role", Value::from("MEMBER")),
        ("preferences", Value::from(serde_json::json!({}))),
        ("status", Value::from("ACTIVE")),
        ("created_at", stamp()),
        ("last_active_at", Value::ChronoDateTimeWithTimeZone(None)),
    ])
}

/// A group row (see [`user_row`] for the enum cell).
pub(crate) fn group_row(tenant: Uuid, id: Uuid) -> Row {
    BTreeMap::from([
        ("id", Value::from(id)),
        ("tenant_id", Value::from(tenant)),
        ("name", Value::from("Reviewers")),
        ("slug", Value::from("reviewers")),
        ("description", Value::String(None)),
        ("assignment_strategy", Value::from("ROUND_ROBIN")),
        ("status", Value::from("ACTIVE")),
        ("archived_at", Value::ChronoDateTimeWithTimeZone(None)),
        ("created_at", stamp()),
        ("updated_at", stamp()),
    ])
}

/// A tenant row with the given status label (see [`user_row`] for the enum cell).
pub(crate) fn tenant_row(id: Uuid, status: &'static str) -> Row {
    BTreeMap::from([
        ("id", Value::from(id)),
        ("name", Value::from("Acme")),
        ("slug", Value::from("acme")),
        ("config", Value::from(serde_json::json!({}))),
        ("limits", Value::Json(None)),
        ("status", Value::from(status)),
        ("created_at", stamp()),
        ("updated_at", stamp()),
    ])
}

/// Every statement the connection received, in order, transaction control included.
pub(crate) fn statements(db: DatabaseConnection) -> Vec<Statement> {
    db.into_transaction_log()
        .iter()
        .flat_map(|transaction| transaction.statements().to_vec())
        .collect()
}

/// The statements of each transaction the connection ran, kept apart, in order. The mock logs a
/// statement sent outside any transaction as a transaction of its own, without `BEGIN`.
pub(crate) fn transactions(db: DatabaseConnection) -> Vec<Vec<Statement>> {
    db.into_transaction_log()
        .iter()
        .map(|transaction| transaction.statements().to_vec())
        .collect()
}

/// What `system_transaction` sends first on PostgreSQL. Spelled out rather than shared with
/// `tx.rs`, so that a change to the statement shows here (as [`bind_tenant`]'s does).
const CHECK_SYSTEM_ROLE: &str = "SELECT r.rolsuper OR r.rolbypassrls \
    OR pg_has_role(current_user, 'orkestra_system', 'USAGE') AS system, \
    current_user::text AS role FROM pg_roles r WHERE r.rolname = current_user";

/// What `tenant_transaction` sends first on PostgreSQL, to bind the transaction to `tenant`: an
/// unprepared `SET LOCAL` whose literal is the tenant's hyphenated, lower-case form. Spelled out
/// rather than shared with `tx.rs`, so that a change to the statement the row-level security
/// policies read shows here.
pub(crate) fn bind_tenant(tenant: Uuid) -> Statement {
    let tenant = tenant.to_string();
    assert_eq!(tenant.len(), 36, "a hyphenated uuid");
    Statement::from_string(
        DbBackend::Postgres,
        format!("SET LOCAL app.tenant_id = '{tenant}'"),
    )
}

/// The role check of a system-level transaction.
pub(crate) fn check_system_role() -> Statement {
    Statement::from_string(DbBackend::Postgres, CHECK_SYSTEM_ROLE)
}

/// The exec result of the statement that binds a transaction to its tenant: every tenant-scoped
/// call sends it first, so queue one ahead of each call's own exec results.
pub(crate) fn bound() -> MockExecResult {
    affected(1)
}

/// The row of the role check, for a role that may (`true`) or may not do system-level work: every
/// system-level call reads it first, so queue one ahead of each call's own query results.
pub(crate) fn system_role(system: bool) -> Vec<Row> {
    let role = if system {
        "orkestra_system"
    } else {
        "orkestra_app"
    };
    vec![BTreeMap::from([
        ("system", Value::from(system)),
        ("role", Value::from(role)),
    ])]
}

/// One repository call on a pool, as the mock logged its transaction.
#[derive(Debug)]
pub(crate) struct Call {
    /// What the call sent after binding its tenant (or checking its role), before it ended.
    pub(crate) statements: Vec<Statement>,
    /// Whether the transaction committed; it rolled back otherwise.
    pub(crate) committed: bool,
}

/// Asserts that `transaction` is a whole transaction whose first statement is exactly `first`.
#[track_caller]
fn call(transaction: &[Statement], first: &Statement) -> Call {
    let sql: Vec<&str> = transaction.iter().map(|s| s.sql.as_str()).collect();
    assert!(
        sql.len() >= 3 && sql[0] == "BEGIN",
        "not a transaction that sends {:?} first: {sql:?}",
        first.sql
    );
    let committed = match sql[sql.len() - 1] {
        "COMMIT" => true,
        "ROLLBACK" => false,
        _ => panic!("a transaction that did not end: {sql:?}"),
    };
    assert_eq!(
        &transaction[1], first,
        "the transaction does not start with {:?}: {sql:?}",
        first.sql
    );
    Call {
        statements: transaction[2..transaction.len() - 1].to_vec(),
        committed,
    }
}

/// Asserts that `transaction` (one of [`transactions`]) binds `tenant` before anything else: it
/// opens, sends exactly the `SET LOCAL` statement naming the tenant, and ends. Returns what
/// it sent in between, for the checks of the statements proper ([`assert_scoped`] and the like).
#[track_caller]
pub(crate) fn assert_bound(transaction: &[Statement], tenant: Uuid) -> Call {
    call(transaction, &bind_tenant(tenant))
}

/// Asserts that `transaction` checks the connection's role before anything else (see
/// [`assert_bound`]).
#[track_caller]
pub(crate) fn assert_role_checked(transaction: &[Statement]) -> Call {
    call(transaction, &check_system_role())
}

/// Each transaction the connection ran, asserted to be bound to `tenant` (see
/// [`assert_bound`]): a statement sent outside one, or before the binding, fails.
#[track_caller]
pub(crate) fn tenant_calls(db: DatabaseConnection, tenant: Uuid) -> Vec<Call> {
    let mut calls = Vec::new();
    for transaction in transactions(db) {
        calls.push(assert_bound(&transaction, tenant));
    }
    calls
}

/// Each transaction the connection ran, asserted to check the role first (see
/// [`assert_role_checked`]).
#[track_caller]
pub(crate) fn system_calls(db: DatabaseConnection) -> Vec<Call> {
    let mut calls = Vec::new();
    for transaction in transactions(db) {
        calls.push(assert_role_checked(&transaction));
    }
    calls
}

/// What the calls sent, in order.
pub(crate) fn sent(calls: &[Call]) -> Vec<Statement> {
    calls
        .iter()
        .flat_map(|call| call.statements.iter().cloned())
        .collect()
}

/// What the calls sent, asserting that each sent exactly one statement.
#[track_caller]
pub(crate) fn one_each(calls: &[Call]) -> Vec<Statement> {
    for (n, call) in calls.iter().enumerate() {
        assert_eq!(call.statements.len(), 1, "call {n}: {:?}", call.statements);
    }
    sent(calls)
}

/// Whether each call committed (`false`: it rolled back).
pub(crate) fn committed(calls: &[Call]) -> Vec<bool> {
    calls.iter().map(|call| call.committed).collect()
}

/// The value bound to placeholder `$n` (1-based) of `statement`.
pub(crate) fn param(statement: &Statement, n: usize) -> &Value {
    let values = statement.values.as_ref().expect("a statement with values");
    values
        .0
        .get(n - 1)
        .unwrap_or_else(|| panic!("no ${n} in {statement:?}"))
}

/// The placeholders compared to a `tenant_id` column, in the order they appear.
pub(crate) fn tenant_placeholders(statement: &Statement) -> Vec<usize> {
    const NEEDLE: &str = "\"tenant_id\" = $";
    statement
        .sql
        .match_indices(NEEDLE)
        .map(|(at, _)| {
            let digits: String = statement.sql[at + NEEDLE.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().expect("a placeholder number")
        })
        .collect()
}

/// The tables whose rows belong to a tenant (every table but `tenants`).
const TENANT_OWNED: [&str; 8] = [
    "users",
    "groups",
    "group_members",
    "tasks",
    "task_history",
    "conversations",
    "messages",
    "audit_events",
];

/// Asserts that `statement` is confined to `tenant`: every tenant-owned table it reads, updates or
/// deletes from (subqueries included) is compared to a placeholder bound to `tenant`, every table it
/// joins is tied to the tenant of the row it joins from, an insert writes `tenant`, and no
/// `tenant_id` is compared to anything else. Returns how many tenant predicates it found.
#[track_caller]
pub(crate) fn assert_scoped(statement: &Statement, tenant: Uuid) -> usize {
    let sql = &statement.sql;
    let count = |needle: String| sql.matches(&needle).count();
    let mut touched = 0;
    for table in TENANT_OWNED {
        // `DELETE FROM` counts as a `FROM`.
        let reads = count(format!("FROM \"{table}\"")) + count(format!("UPDATE \"{table}\""));
        let predicates = count(format!("\"{table}\".\"tenant_id\" = $"));
        assert!(
            predicates >= reads,
            "{table} is read {reads} time(s) but tenant-scoped {predicates} time(s) in {sql}"
        );
        let joins = count(format!("JOIN \"{table}\""));
        let tied = count(format!("\"{table}\".\"tenant_id\" = \""));
        assert!(
            tied >= joins,
            "{table} is joined {joins} time(s) but tied to a tenant column {tied} time(s) in {sql}"
        );
        if sql.starts_with(&format!("INSERT INTO \"{table}\"")) {
            assert_eq!(
                inserted(statement, "tenant_id"),
                &Value::from(tenant),
                "the insert does not write the context's tenant: {statement:?}"
            );
            touched += 1;
        }
        touched += reads + joins;
    }
    assert!(touched > 0, "no tenant-owned table in {sql}");
    let placeholders = tenant_placeholders(statement);
    for &n in &placeholders {
        assert_eq!(
            param(statement, n),
            &Value::from(tenant),
            "${n} is not the context's tenant in {statement:?}"
        );
    }
    placeholders.len()
}

/// Asserts that a system-level statement reaches `tenants` and no tenant-owned table.
#[track_caller]
pub(crate) fn assert_system(statement: &Statement) {
    let sql = &statement.sql;
    assert!(sql.contains("\"tenants\""), "not on tenants: {sql}");
    for table in TENANT_OWNED {
        assert!(
            !sql.contains(&format!("\"{table}\"")),
            "a system-level statement reaches {table}: {sql}"
        );
    }
}

/// The value an `INSERT` of one row writes to `column`.
#[track_caller]
pub(crate) fn inserted<'s>(statement: &'s Statement, column: &str) -> &'s Value {
    let sql = &statement.sql;
    assert!(sql.starts_with("INSERT INTO"), "not an insert: {sql}");
    let open = sql.find('(').expect("a column list");
    let close = open + sql[open..].find(')').expect("a column list");
    let position = sql[open + 1..close]
        .split(',')
        .position(|name| name.trim() == format!("\"{column}\""))
        .unwrap_or_else(|| panic!("{column} is not inserted by {sql}"));
    param(statement, position + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(sql: &str, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
    }

    #[test]
    fn a_scoped_statement_passes() {
        let tenant = Uuid::now_v7();
        let scoped = statement(
            r#"SELECT "users"."id" FROM "users" WHERE "users"."tenant_id" = $1 AND "users"."id" IN (SELECT "group_members"."user_id" FROM "group_members" WHERE "group_members"."tenant_id" = $2)"#,
            vec![tenant.into(), tenant.into()],
        );
        assert_eq!(assert_scoped(&scoped, tenant), 2);
    }

    #[test]
    #[should_panic(expected = "group_members is read 1 time(s) but tenant-scoped 0")]
    fn an_unscoped_subquery_fails() {
        let tenant = Uuid::now_v7();
        let unscoped = statement(
            r#"SELECT "users"."id" FROM "users" WHERE "users"."tenant_id" = $1 AND "users"."id" IN (SELECT "group_members"."user_id" FROM "group_members" WHERE "group_members"."group_id" = $2)"#,
            vec![tenant.into(), Uuid::now_v7().into()],
        );
        assert_scoped(&unscoped, tenant);
    }

    #[test]
    #[should_panic(expected = "tasks is joined 1 time(s) but tied to a tenant column 0")]
    fn an_untied_join_fails() {
        let tenant = Uuid::now_v7();
        let unscoped = statement(
            r#"SELECT 1 FROM "group_members" LEFT JOIN "tasks" ON "tasks"."claimed_by" = "group_members"."user_id" WHERE "group_members"."tenant_id" = $1"#,
            vec![tenant.into()],
        );
        assert_scoped(&unscoped, tenant);
    }

    #[test]
    #[should_panic(expected = "is not the context's tenant")]
    fn another_tenant_fails() {
        let other = statement(
            r#"DELETE FROM "groups" WHERE "groups"."tenant_id" = $1"#,
            vec![Uuid::now_v7().into()],
        );
        assert_scoped(&other, Uuid::now_v7());
    }

    fn control(sql: &str) -> Statement {
        Statement::from_string(DbBackend::Postgres, sql)
    }

    fn select(tenant: Uuid) -> Statement {
        statement(
            r#"SELECT "users"."id" FROM "users" WHERE "users"."tenant_id" = $1"#,
            vec![tenant.into()],
        )
    }

    #[test]
    fn a_bound_transaction_passes() {
        let tenant = Uuid::now_v7();
        let transaction = [
            control("BEGIN"),
            bind_tenant(tenant),
            select(tenant),
            control("ROLLBACK"),
        ];
        let call = assert_bound(&transaction, tenant);
        assert_eq!(call.statements, [select(tenant)]);
        assert!(!call.committed);
    }

    #[test]
    #[should_panic(expected = "does not start with")]
    fn a_transaction_bound_to_another_tenant_fails() {
        let tenant = Uuid::now_v7();
        let transaction = [
            control("BEGIN"),
            bind_tenant(Uuid::now_v7()),
            select(tenant),
            control("COMMIT"),
        ];
        assert_bound(&transaction, tenant);
    }

    #[test]
    #[should_panic(expected = "does not start with")]
    fn a_statement_before_the_binding_fails() {
        let tenant = Uuid::now_v7();
        let transaction = [
            control("BEGIN"),
            select(tenant),
            bind_tenant(tenant),
            control("COMMIT"),
        ];
        assert_bound(&transaction, tenant);
    }

    #[test]
    #[should_panic(expected = "not a transaction")]
    fn a_statement_outside_a_transaction_fails() {
        let tenant = Uuid::now_v7();
        assert_bound(&[select(tenant)], tenant);
    }

    #[test]
    #[should_panic(expected = "does not start with")]
    fn a_system_transaction_without_the_role_check_fails() {
        let transaction = [
            control("BEGIN"),
            statement(r#"SELECT "tenants"."id" FROM "tenants""#, vec![]),
            control("COMMIT"),
        ];
        assert_role_checked(&transaction);
    }

    #[test]
    #[should_panic(expected = "does not write the context's tenant")]
    fn an_insert_for_another_tenant_fails() {
        let insert = statement(
            r#"INSERT INTO "users" ("id", "tenant_id") VALUES ($1, $2)"#,
            vec![Uuid::now_v7().into(), Uuid::now_v7().into()],
        );
        assert_scoped(&insert, Uuid::now_v7());
    }
}
