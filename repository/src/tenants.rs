//! Tenants: the one system-level repository. Tenant administration only; it takes no
//! [`RequestContext`](crate::RequestContext) and reaches no tenant-owned table.

use orkestra_entity::{sea_orm_active_enums::TenantStatus, tenants};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, QueryFilter, UpdateMany,
    sea_query::Expr,
};
use serde_json::Value;
use uuid::Uuid;

use crate::error::{DbResultExt, Error, Result};
use crate::page::{self, Page, PageRequest};
use crate::scope::system;
use crate::trace::{span, traced};
use crate::tx::Connection;
use crate::{now, system_transaction, validate};

/// The unique constraint a duplicate slug violates.
pub const SLUG_KEY: &str = "tenants_slug_key";

/// A tenant to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTenant {
    /// The display name.
    pub name: String,
    /// The slug, unique across tenants: lower-case letters, digits and single hyphens, 1 to 63.
    pub slug: String,
    /// Configuration, a JSON object (default `{}`).
    pub config: Option<Value>,
    /// Limits, a JSON object (default none).
    pub limits: Option<Value>,
}

impl NewTenant {
    /// A tenant with the given name and slug, default configuration and no limits.
    pub fn new(name: impl Into<String>, slug: impl Into<String>) -> NewTenant {
        NewTenant {
            name: name.into(),
            slug: slug.into(),
            config: None,
            limits: None,
        }
    }
}

/// Changes to a tenant; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantUpdate {
    /// A new display name.
    pub name: Option<String>,
    /// New configuration (a JSON object; replaces the old one).
    pub config: Option<Value>,
    /// New limits: `Some(Some(object))` sets them, `Some(None)` removes them.
    pub limits: Option<Option<Value>>,
}

/// Tenant administration.
#[derive(Debug, Clone, Copy)]
pub struct TenantRepository<'a, C> {
    db: &'a C,
}

impl<'a, C: Connection> TenantRepository<'a, C> {
    /// A repository on `db`, a pool or a transaction.
    pub fn new(db: &'a C) -> Self {
        TenantRepository { db }
    }

    /// Creates an active tenant.
    ///
    /// # Errors
    /// - [`Error::Validation`]: an empty, over-long or NUL-holding name, a malformed slug, a config
    ///   or limits that are not JSON objects;
    /// - [`Error::Conflict`] ([`SLUG_KEY`]): the slug is taken;
    /// - [`Error::Db`].
    pub async fn create(&self, tenant: NewTenant) -> Result<tenants::Model> {
        traced(span!("orkestra.tenants.create";), async move {
            let name = validate::text("name", &tenant.name, validate::NAME_MAX)?;
            let slug = validate::slug("slug", &tenant.slug)?;
            let config = tenant.config.unwrap_or_else(|| serde_json::json!({}));
            validate::json_object("config", &config)?;
            if let Some(limits) = &tenant.limits {
                validate::json_object("limits", limits)?;
            }
            let at = now();
            let tenant = tenants::ActiveModel {
                id: Set(Uuid::now_v7()),
                name: Set(name),
                slug: Set(slug),
                config: Set(config),
                limits: Set(tenant.limits),
                status: Set(TenantStatus::Active),
                created_at: Set(at),
                updated_at: Set(at),
            };
            system_transaction(self.db, async |txn| {
                tenant.insert(txn).await.or_unique(SLUG_KEY)
            })
            .await
        })
        .await
    }

    /// The tenant with this id, whatever its status.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub async fn find_by_id(&self, id: Uuid) -> Result<Option<tenants::Model>> {
        traced(
            span!("orkestra.tenants.find_by_id"; tenant.id = %id),
            async move { system_transaction(self.db, async |txn| find(txn, id).await).await },
        )
        .await
    }

    /// The tenant with this slug, whatever its status.
    ///
    /// # Errors
    /// [`Error::Validation`] for a slug that could not have been stored; [`Error::Db`].
    pub async fn find_by_slug(&self, slug: &str) -> Result<Option<tenants::Model>> {
        traced(span!("orkestra.tenants.find_by_slug";), async move {
            let slug = validate::slug("slug", slug)?;
            let query = system::tenants().filter(tenants::Column::Slug.eq(slug));
            system_transaction(self.db, async |txn| Ok(query.one(txn).await?)).await
        })
        .await
    }

    /// A page of tenants (only those with `status`, when given), in creation order.
    ///
    /// # Errors
    /// [`Error::Validation`] for a limit outside 1..=500; [`Error::Db`].
    pub async fn list(
        &self,
        status: Option<TenantStatus>,
        page: &PageRequest<Uuid>,
    ) -> Result<Page<tenants::Model, Uuid>> {
        traced(span!("orkestra.tenants.list";), async move {
            let mut query = system::tenants();
            if let Some(status) = status {
                query = query.filter(tenants::Column::Status.eq(status));
            }
            let query = page::by_id(query, tenants::Column::Id, page)?;
            let rows = system_transaction(self.db, async |txn| Ok(query.all(txn).await?)).await?;
            Ok(Page::from_rows(rows, page.limit, |tenant| tenant.id))
        })
        .await
    }

    /// Changes a tenant's name, configuration and/or limits; a deleted tenant cannot be changed.
    ///
    /// # Errors
    /// - [`Error::Validation`]: an invalid name, config or limits, or no change given;
    /// - [`Error::NotFound`]: no such tenant;
    /// - [`Error::InvalidState`]: the tenant is deleted;
    /// - [`Error::Db`].
    pub async fn update(&self, id: Uuid, update: TenantUpdate) -> Result<tenants::Model> {
        traced(
            span!("orkestra.tenants.update"; tenant.id = %id),
            async move {
                let mut statement = system::update_tenants();
                let mut changed = false;
                if let Some(name) = &update.name {
                    let name = validate::text("name", name, validate::NAME_MAX)?;
                    statement = statement.col_expr(tenants::Column::Name, Expr::value(name));
                    changed = true;
                }
                if let Some(config) = update.config {
                    validate::json_object("config", &config)?;
                    statement = statement.col_expr(tenants::Column::Config, Expr::value(config));
                    changed = true;
                }
                if let Some(limits) = update.limits {
                    if let Some(limits) = &limits {
                        validate::json_object("limits", limits)?;
                    }
                    statement = statement.col_expr(tenants::Column::Limits, Expr::value(limits));
                    changed = true;
                }
                if !changed {
                    return Err(Error::validation("update", "names no field to change"));
                }
                self.guarded(
                    statement,
                    id,
                    &[TenantStatus::Active, TenantStatus::Suspended],
                    "update",
                )
                .await
            },
        )
        .await
    }

    /// Suspends a tenant (its data stays; services refuse its requests). Idempotent.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidState`] when the tenant is deleted; [`Error::Db`].
    pub async fn suspend(&self, id: Uuid) -> Result<tenants::Model> {
        traced(
            span!("orkestra.tenants.suspend"; tenant.id = %id),
            async move {
                self.set_status(id, TenantStatus::Suspended, "suspend")
                    .await
            },
        )
        .await
    }

    /// Makes a suspended tenant active again. Idempotent.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::InvalidState`] when the tenant is deleted; [`Error::Db`].
    pub async fn reactivate(&self, id: Uuid) -> Result<tenants::Model> {
        traced(
            span!("orkestra.tenants.reactivate"; tenant.id = %id),
            async move {
                self.set_status(id, TenantStatus::Active, "reactivate")
                    .await
            },
        )
        .await
    }

    /// Soft-deletes a tenant: its status becomes `DELETED`, and the row and all its data stay (the
    /// audit trail outlives the tenant). Final: a deleted tenant cannot be reactivated. Idempotent.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Db`].
    pub async fn soft_delete(&self, id: Uuid) -> Result<tenants::Model> {
        traced(
            span!("orkestra.tenants.soft_delete"; tenant.id = %id),
            async move {
                let statement = system::update_tenants()
                    .col_expr(tenants::Column::Status, Expr::value(TenantStatus::Deleted));
                self.guarded(
                    statement,
                    id,
                    &[
                        TenantStatus::Active,
                        TenantStatus::Suspended,
                        TenantStatus::Deleted,
                    ],
                    "delete",
                )
                .await
            },
        )
        .await
    }

    async fn set_status(
        &self,
        id: Uuid,
        status: TenantStatus,
        action: &'static str,
    ) -> Result<tenants::Model> {
        let statement =
            system::update_tenants().col_expr(tenants::Column::Status, Expr::value(status));
        self.guarded(
            statement,
            id,
            &[TenantStatus::Active, TenantStatus::Suspended],
            action,
        )
        .await
    }

    /// Applies `statement` to tenant `id` if its status is one of `from`, in one statement; tells
    /// a missing tenant from one in the wrong state only when nothing was written.
    async fn guarded(
        &self,
        statement: UpdateMany<tenants::Entity>,
        id: Uuid,
        from: &[TenantStatus],
        action: &'static str,
    ) -> Result<tenants::Model> {
        let statement = statement
            .col_expr(tenants::Column::UpdatedAt, Expr::value(now()))
            .filter(tenants::Column::Id.eq(id))
            .filter(tenants::Column::Status.is_in(from.iter().cloned()));
        system_transaction(self.db, async |txn| {
            if let Some(tenant) = statement.exec_with_returning(txn).await?.pop() {
                return Ok(tenant);
            }
            match find(txn, id).await? {
                None => Err(Error::not_found("tenant", id)),
                Some(tenant) => Err(Error::InvalidState {
                    entity: "tenant",
                    id: id.to_string(),
                    state: tenant.status.as_str().to_owned(),
                    action,
                }),
            }
        })
        .await
    }
}

/// The tenant with this id.
async fn find(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<tenants::Model>> {
    Ok(system::tenants()
        .filter(tenants::Column::Id.eq(id))
        .one(db)
        .await?)
}

#[cfg(test)]
mod tests {
    use sea_orm::Value;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::testing::{
        assert_system, committed, inserted, none, one_each, param, postgres, sent, statements,
        system_calls, system_role, tenant_row,
    };

    #[tokio::test]
    async fn create_and_reads_stay_on_the_tenants_table() -> anyhow::Result<()> {
        let id = Uuid::now_v7();
        let after = Uuid::now_v7();
        let db = postgres()
            .append_query_results([system_role(true), vec![tenant_row(id, "ACTIVE")]])
            .append_query_results([system_role(true), vec![tenant_row(id, "ACTIVE")]])
            .append_query_results([system_role(true), none()])
            .append_query_results([system_role(true), vec![tenant_row(id, "SUSPENDED")]])
            .into_connection();
        let tenants = TenantRepository::new(&db);
        let mut tenant = NewTenant::new(" Acme ", "acme");
        tenant.limits = Some(json!({"users": 10}));
        tenants.create(tenant).await?;
        assert!(tenants.find_by_id(id).await?.is_some());
        assert!(tenants.find_by_slug("acme").await?.is_none());
        let page = tenants
            .list(Some(TenantStatus::Suspended), &PageRequest::after(after, 7))
            .await?;
        assert_eq!(page.items[0].status, TenantStatus::Suspended);

        let calls = system_calls(db);
        assert_eq!(committed(&calls), [true; 4]);
        let log = one_each(&calls);
        log.iter().for_each(assert_system);
        let insert = &log[0];
        assert!(
            insert.sql.starts_with("INSERT INTO \"tenants\""),
            "{}",
            insert.sql
        );
        assert_eq!(inserted(insert, "name"), &Value::from("Acme"));
        assert_eq!(inserted(insert, "status"), &Value::from("ACTIVE"));
        assert_eq!(inserted(insert, "config"), &Value::from(json!({})));
        assert_eq!(
            inserted(insert, "limits"),
            &Value::from(json!({"users": 10}))
        );
        assert!(
            log[1].sql.contains("WHERE \"tenants\".\"id\" = $1"),
            "{}",
            log[1].sql
        );
        assert_eq!(param(&log[1], 1), &Value::from(id));
        assert!(
            log[2].sql.contains("WHERE \"tenants\".\"slug\" = $1"),
            "{}",
            log[2].sql
        );
        let sql = &log[3].sql;
        assert!(
            sql.contains(
                "WHERE \"tenants\".\"status\" = $1::\"tenant_status\" AND \"tenants\".\"id\" > $2 \
                 ORDER BY \"tenants\".\"id\" ASC LIMIT $3"
            ),
            "{sql}"
        );
        assert_eq!(param(&log[3], 1), &Value::from("SUSPENDED"));
        assert_eq!(param(&log[3], 3), &Value::from(8_u64));
        Ok(())
    }

    #[tokio::test]
    async fn refused_arguments_send_nothing() {
        let db = postgres().into_connection();
        let tenants = TenantRepository::new(&db);
        let mut bad_config = NewTenant::new("Acme", "acme");
        bad_config.config = Some(json!("x"));
        for tenant in [NewTenant::new("Acme", "ac--me"), bad_config] {
            let result = tenants.create(tenant.clone()).await;
            assert!(
                matches!(result, Err(Error::Validation { .. })),
                "{tenant:?}: {result:?}"
            );
        }
        let result = tenants.find_by_slug("Acme").await;
        assert!(matches!(
            result,
            Err(Error::Validation { field: "slug", .. })
        ));
        let result = tenants
            .update(Uuid::now_v7(), TenantUpdate::default())
            .await;
        assert!(matches!(
            result,
            Err(Error::Validation {
                field: "update",
                ..
            })
        ));
        let result = tenants.list(None, &PageRequest::first(0)).await;
        assert!(matches!(
            result,
            Err(Error::Validation { field: "limit", .. })
        ));
        assert!(
            statements(db).is_empty(),
            "a refused call reached the database"
        );
    }

    #[tokio::test]
    async fn a_role_confined_to_one_tenant_is_denied_before_anything_else_is_sent() {
        let db = postgres()
            .append_query_results(vec![system_role(false); 4])
            .into_connection();
        let tenants = TenantRepository::new(&db);
        let id = Uuid::now_v7();
        assert_denied(tenants.create(NewTenant::new("Acme", "acme")).await);
        assert_denied(tenants.find_by_id(id).await);
        assert_denied(tenants.suspend(id).await);
        assert_denied(tenants.list(None, &PageRequest::first(1)).await);

        let calls = system_calls(db);
        assert_eq!(committed(&calls), [false; 4]);
        assert!(sent(&calls).is_empty(), "{calls:?}");
    }

    #[track_caller]
    fn assert_denied<T: std::fmt::Debug>(result: Result<T>) {
        assert!(matches!(result, Err(Error::Denied { .. })), "{result:?}");
    }

    /// The `status IN (...)` labels a guarded statement accepts, read from its placeholders.
    fn guard(statement: &sea_orm::Statement) -> Vec<Value> {
        let sql = &statement.sql;
        let start = sql
            .find("\"tenants\".\"status\" IN (")
            .expect("a status guard");
        let list = &sql[start..start + sql[start..].find(')').expect("a closed list")];
        list.split('$')
            .skip(1)
            .map(|p| {
                let n: String = p.chars().take_while(char::is_ascii_digit).collect();
                param(statement, n.parse().expect("a placeholder")).clone()
            })
            .collect()
    }

    #[tokio::test]
    async fn status_changes_are_one_guarded_statement() -> anyhow::Result<()> {
        let id = Uuid::now_v7();
        let db = postgres()
            .append_query_results([system_role(true), vec![tenant_row(id, "SUSPENDED")]])
            .append_query_results([system_role(true), vec![tenant_row(id, "ACTIVE")]])
            .append_query_results([system_role(true), vec![tenant_row(id, "DELETED")]])
            .append_query_results([system_role(true), vec![tenant_row(id, "ACTIVE")]])
            .into_connection();
        let tenants = TenantRepository::new(&db);
        tenants.suspend(id).await?;
        tenants.reactivate(id).await?;
        tenants.soft_delete(id).await?;
        let update = TenantUpdate {
            name: Some("Acme Corp".to_owned()),
            config: None,
            limits: Some(None),
        };
        tenants.update(id, update).await?;

        let calls = system_calls(db);
        assert_eq!(committed(&calls), [true; 4]);
        // Nothing is read when the write succeeds.
        let log = one_each(&calls);
        let live = ["ACTIVE", "SUSPENDED"].map(Value::from).to_vec();
        let expected = [
            (
                "\"status\" = $1::\"tenant_status\"",
                "SUSPENDED",
                live.clone(),
            ),
            ("\"status\" = $1::\"tenant_status\"", "ACTIVE", live.clone()),
            (
                "\"status\" = $1::\"tenant_status\"",
                "DELETED",
                ["ACTIVE", "SUSPENDED", "DELETED"].map(Value::from).to_vec(),
            ),
            ("\"name\" = $1", "Acme Corp", live),
        ];
        for (statement, (set, value, from)) in log.iter().zip(expected) {
            assert_system(statement);
            let sql = &statement.sql;
            assert!(sql.starts_with("UPDATE \"tenants\" SET"), "{sql}");
            assert!(sql.contains(set), "{sql}");
            assert!(sql.contains("\"updated_at\" = $"), "{sql}");
            assert!(sql.contains("\"tenants\".\"id\" = $"), "{sql}");
            assert!(sql.contains("RETURNING"), "{sql}");
            assert_eq!(param(statement, 1), &Value::from(value));
            assert_eq!(guard(statement), from, "{sql}");
        }
        // Removing the limits writes NULL.
        assert!(log[3].sql.contains("\"limits\" = $2"), "{}", log[3].sql);
        assert_eq!(param(&log[3], 2), &Value::Json(None));
        Ok(())
    }

    #[tokio::test]
    async fn a_refused_status_change_reads_the_tenant_once_to_say_why() {
        let (deleted, missing) = (Uuid::now_v7(), Uuid::now_v7());
        let db = postgres()
            .append_query_results([
                system_role(true),
                none(),
                vec![tenant_row(deleted, "DELETED")],
            ])
            .append_query_results([system_role(true), none(), none()])
            .into_connection();
        let tenants = TenantRepository::new(&db);
        let result = tenants.suspend(deleted).await;
        assert!(
            matches!(
                &result,
                Err(Error::InvalidState { entity: "tenant", state, action: "suspend", .. })
                    if state == "DELETED"
            ),
            "{result:?}"
        );
        let result = tenants.reactivate(missing).await;
        assert!(
            matches!(
                result,
                Err(Error::NotFound {
                    entity: "tenant",
                    ..
                })
            ),
            "{result:?}"
        );

        let calls = system_calls(db);
        assert_eq!(committed(&calls), [false, false]);
        assert!(
            calls.iter().all(|call| call.statements.len() == 2),
            "{calls:?}"
        );
        let log = sent(&calls);
        log.iter().for_each(assert_system);
        assert!(log[0].sql.starts_with("UPDATE"), "{}", log[0].sql);
        assert!(log[1].sql.starts_with("SELECT"), "{}", log[1].sql);
        assert_eq!(param(&log[1], 1), &Value::from(deleted));
        assert!(log[2].sql.starts_with("UPDATE"), "{}", log[2].sql);
        assert_eq!(param(&log[3], 1), &Value::from(missing));
    }
}
