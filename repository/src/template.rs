//! Statements built once and bound on every call.
//!
//! Building a statement with sea-query (the expression tree, its clones, the rendering to SQL) was
//! most of the client's work in a task write: about half of the instructions of a `claim`, more
//! than sending the statements and decoding the rows. The text of a repository statement depends
//! only on which method runs (and, for a few, on which optional inputs are given), never on the
//! values: so each such statement is built once per backend, by the same scoped builder as before,
//! from sentinel values standing in for the call's own, and every call copies the values and puts
//! its own where the sentinels are. The text is identical, so PostgreSQL's prepared statement is
//! reused as before; the tests of each template check that a bound template equals the statement
//! built afresh from the same inputs.
//!
//! Only the template's own values are compared with the sentinels, never a caller's: a sentinel
//! needs only to differ from the other sentinels and from the constants a builder writes itself
//! (status labels, NULLs), which the odd forms below do.

use std::sync::OnceLock;

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use sea_orm::sea_query::{Query, ReturningClause, Value, Values};
use sea_orm::{ColumnTrait, DbBackend, EntityTrait, Iterable, Statement};
use uuid::Uuid;

use crate::context::RequestContext;

/// One statement's text and values, built once per backend with sentinel values.
pub(crate) struct Template {
    postgres: OnceLock<Statement>,
    sqlite: OnceLock<Statement>,
}

impl Template {
    /// An empty template: the first call for each backend builds it.
    pub(crate) const fn new() -> Template {
        Template {
            postgres: OnceLock::new(),
            sqlite: OnceLock::new(),
        }
    }

    /// The statement `build` makes on `backend` for `ctx` and `actual`: built from the sentinel
    /// context ([`id`]`(0)` as its tenant) and `sentinels` on the first call, then with each
    /// `(sentinel, value)` of `bind` in place of its sentinel. In debug builds (every test run)
    /// each call also builds the statement afresh from `ctx` and `actual` and panics if the two
    /// differ, so a builder that writes a call's value without a sentinel, or whose text depends on
    /// one, fails the first test that reaches it. Nothing is cloned for that check: `actual` is
    /// only borrowed.
    pub(crate) fn bind<A, const N: usize>(
        &self,
        backend: DbBackend,
        ctx: &RequestContext,
        build: impl Fn(DbBackend, &RequestContext, &A) -> Statement,
        sentinels: &A,
        actual: &A,
        bind: [(Value, Value); N],
    ) -> Statement {
        let cell = match backend {
            DbBackend::Postgres => &self.postgres,
            _ => &self.sqlite,
        };
        let template = cell.get_or_init(|| build(backend, &sentinel_ctx(), sentinels));
        let values = template.values.as_ref().map(|Values(values)| {
            Values(
                values
                    .iter()
                    .map(|value| {
                        bind.iter()
                            .find(|(sentinel, _)| sentinel == value)
                            .map_or_else(|| value.clone(), |(_, actual)| actual.clone())
                    })
                    .collect(),
            )
        });
        let bound = Statement {
            sql: template.sql.clone(),
            values,
            db_backend: backend,
        };
        debug_assert_eq!(
            bound,
            build(backend, ctx, actual),
            "a template bound differently"
        );
        bound
    }
}

/// Every column of `E` as `RETURNING` lists them for a model (enums as text), as sea-orm's own
/// `exec_with_returning` writes it.
pub(crate) fn returning_all<E: EntityTrait>(backend: DbBackend) -> ReturningClause {
    Query::returning().exprs(
        E::Column::iter().map(|column| column.select_as(column.into_returning_expr(backend))),
    )
}

/// A context whose tenant is the sentinel [`id`]`(0)`.
fn sentinel_ctx() -> RequestContext {
    let actor = crate::Actor::system("template").expect("a valid name");
    RequestContext::new(id(0), actor).expect("a valid context")
}

/// The `n`th sentinel id: version 8 (custom), never made by `Uuid::now_v7`.
pub(crate) const fn id(n: u8) -> Uuid {
    Uuid::from_u128(0x0bad_5e47_1000_8000_8000_0000_0000_0000 | n as u128)
}

/// The `n`th sentinel time: seconds into 1901-01-01.
pub(crate) fn time(n: u8) -> DateTime<FixedOffset> {
    Utc.with_ymd_and_hms(1901, 1, 1, 0, 0, u32::from(n))
        .single()
        .expect("a valid time")
        .fixed_offset()
}

/// The `n`th sentinel text: starts with a control character, which no builder writes.
pub(crate) fn text(n: u8) -> String {
    format!("\u{1}orkestra-sentinel-{n}")
}

/// The `n`th sentinel JSON document: a string of [`text`].
pub(crate) fn json(n: u8) -> serde_json::Value {
    serde_json::Value::String(text(n))
}

#[cfg(test)]
mod tests {
    use sea_orm::sea_query::{Expr, ExprTrait, PostgresQueryBuilder, Query, SqliteQueryBuilder};

    use super::*;

    fn build(backend: DbBackend, a: Uuid, b: Uuid) -> Statement {
        #[allow(clippy::disallowed_methods)] // Reads no table: two values.
        let mut query = Query::select();
        query
            .expr(Expr::val(a))
            .and_where(ExprTrait::eq(Expr::val(b), Expr::val(a)))
            .and_where(ExprTrait::is_not_null(Expr::val("constant")));
        let (sql, values) = match backend {
            DbBackend::Postgres => query.build(PostgresQueryBuilder),
            _ => query.build(SqliteQueryBuilder),
        };
        Statement::from_sql_and_values(backend, sql, values)
    }

    #[test]
    fn a_bound_template_is_the_statement_built_from_the_values() {
        static TEMPLATE: Template = Template::new();
        for backend in [DbBackend::Postgres, DbBackend::Sqlite] {
            for _ in 0..3 {
                let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
                let bound = TEMPLATE.bind(
                    backend,
                    &sentinel_ctx(),
                    |backend, _, &(a, b)| build(backend, a, b),
                    &(id(1), id(2)),
                    &(a, b),
                    [(id(1).into(), a.into()), (id(2).into(), b.into())],
                );
                assert_eq!(bound, build(backend, a, b));
            }
        }
    }

    #[test]
    fn sentinels_differ_from_each_other_and_from_made_values() {
        assert_ne!(id(1), id(2));
        assert_ne!(id(1).get_version_num(), 7);
        assert_ne!(time(1), time(2));
        assert_ne!(json(1), json(2));
    }
}
