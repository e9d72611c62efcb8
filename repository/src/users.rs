//! Users of a tenant.

use orkestra_entity::{
    sea_orm_active_enums::{UserRole, UserStatus},
    users,
};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, QueryFilter, sea_query::Expr};
use serde_json::Value;
use uuid::Uuid;

use crate::context::RequestContext;
use crate::error::{DbResultExt, Error, Result};
use crate::page::{self, Page, PageRequest};
use crate::trace::{span, traced};
use crate::tx::Connection;
use crate::{now, scope, tenant_read, tenant_transaction, validate};

/// The unique constraint a duplicate email violates.
pub const EMAIL_KEY: &str = "users_tenant_id_email_key";
/// The foreign key a user of a missing tenant violates.
const TENANT_FKEY: &str = "users_tenant_id_fkey";

/// A user to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// The email, unique in the tenant; trimmed and lower-cased before it is stored.
    pub email: String,
    /// The display name.
    pub name: String,
    /// The role (default `MEMBER`).
    pub role: Option<UserRole>,
    /// Preferences, a JSON object (default `{}`).
    pub preferences: Option<Value>,
}

impl NewUser {
    /// A member with the given email and name and no preferences.
    pub fn new(email: impl Into<String>, name: impl Into<String>) -> NewUser {
        NewUser {
            email: email.into(),
            name: name.into(),
            role: None,
            preferences: None,
        }
    }
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserUpdate {
    /// A new display name.
    pub name: Option<String>,
    /// A new role.
    pub role: Option<UserRole>,
    /// New preferences (a JSON object; replaces the old ones).
    pub preferences: Option<Value>,
}

/// Which users [`UserRepository::list`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserFilter {
    /// Only users with this role.
    pub role: Option<UserRole>,
    /// Only users with this status.
    pub status: Option<UserStatus>,
}

/// The users of the context's tenant.
#[derive(Debug, Clone, Copy)]
pub struct UserRepository<'a, C> {
    db: &'a C,
}

impl<'a, C: Connection> UserRepository<'a, C> {
    /// A repository on `db`, a pool or a transaction.
    pub fn new(db: &'a C) -> Self {
        UserRepository { db }
    }

    /// Creates a user in the context's tenant.
    ///
    /// # Errors
    /// - [`Error::Validation`]: empty, over-long or NUL-holding email or name, malformed email,
    ///   preferences that are not a JSON object; an email's length is counted once trimmed and
    ///   lower-cased, as stored (at most [`validate::EMAIL_MAX`] characters);
    /// - [`Error::Conflict`] ([`EMAIL_KEY`]): the tenant already has a user with this email;
    /// - [`Error::Reference`]: the context's tenant does not exist;
    /// - [`Error::Db`].
    pub async fn create(&self, ctx: &RequestContext, user: NewUser) -> Result<users::Model> {
        traced(span!("orkestra.users.create", ctx), async move {
            let email = validate::email(&user.email)?;
            let name = validate::text("name", &user.name, validate::NAME_MAX)?;
            let preferences = user.preferences.unwrap_or_else(|| serde_json::json!({}));
            validate::json_object("preferences", &preferences)?;
            let user = users::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(ctx.tenant_id()),
                email: Set(email),
                name: Set(name),
                role: Set(user.role.unwrap_or(UserRole::Member)),
                preferences: Set(preferences),
                status: Set(UserStatus::Active),
                created_at: Set(now()),
                last_active_at: Set(None),
            };
            tenant_transaction(self.db, ctx, async |txn| {
                user.insert(txn)
                    .await
                    .or_constraints(EMAIL_KEY, TENANT_FKEY)
            })
            .await
        })
        .await
    }

    /// The user with this id in the context's tenant, if any.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub async fn find_by_id(&self, ctx: &RequestContext, id: Uuid) -> Result<Option<users::Model>> {
        traced(
            span!("orkestra.users.find_by_id", ctx, user.id = %id),
            async move {
                let query = scope::find::<users::Entity>(ctx).filter(users::Column::Id.eq(id));
                tenant_read(self.db, ctx, async |txn| Ok(query.one(txn).await?)).await
            },
        )
        .await
    }

    /// The user with this email (compared trimmed and lower-cased) in the context's tenant, if any.
    ///
    /// # Errors
    /// [`Error::Validation`] for an email that could not have been stored; [`Error::Db`].
    pub async fn find_by_email(
        &self,
        ctx: &RequestContext,
        email: &str,
    ) -> Result<Option<users::Model>> {
        traced(span!("orkestra.users.find_by_email", ctx), async move {
            let email = validate::email(email)?;
            let query = scope::find::<users::Entity>(ctx).filter(users::Column::Email.eq(email));
            tenant_read(self.db, ctx, async |txn| Ok(query.one(txn).await?)).await
        })
        .await
    }

    /// A page of the tenant's users matching `filter`, in creation order (ids are UUIDv7).
    ///
    /// # Errors
    /// [`Error::Validation`] for a limit outside 1..=500; [`Error::Db`].
    pub async fn list(
        &self,
        ctx: &RequestContext,
        filter: &UserFilter,
        page: &PageRequest<Uuid>,
    ) -> Result<Page<users::Model, Uuid>> {
        traced(span!("orkestra.users.list", ctx), async move {
            let mut query = scope::find::<users::Entity>(ctx);
            if let Some(role) = &filter.role {
                query = query.filter(users::Column::Role.eq(role.clone()));
            }
            if let Some(status) = &filter.status {
                query = query.filter(users::Column::Status.eq(status.clone()));
            }
            let query = page::by_id(query, users::Column::Id, page)?;
            let rows = tenant_read(self.db, ctx, async |txn| Ok(query.all(txn).await?)).await?;
            Ok(Page::from_rows(rows, page.limit, |user| user.id))
        })
        .await
    }

    /// Changes a user's name, role and/or preferences; returns the user as stored.
    ///
    /// # Errors
    /// - [`Error::Validation`]: an invalid name or preferences, or no change given;
    /// - [`Error::NotFound`]: no such user in the tenant;
    /// - [`Error::Db`].
    pub async fn update(
        &self,
        ctx: &RequestContext,
        id: Uuid,
        update: UserUpdate,
    ) -> Result<users::Model> {
        traced(
            span!("orkestra.users.update", ctx, user.id = %id),
            async move {
                let mut statement = scope::update_many::<users::Entity>(ctx);
                let mut changed = false;
                if let Some(name) = &update.name {
                    let name = validate::text("name", name, validate::NAME_MAX)?;
                    statement = statement.col_expr(users::Column::Name, Expr::value(name));
                    changed = true;
                }
                if let Some(role) = update.role {
                    statement = statement.col_expr(users::Column::Role, Expr::value(role));
                    changed = true;
                }
                if let Some(preferences) = update.preferences {
                    validate::json_object("preferences", &preferences)?;
                    statement =
                        statement.col_expr(users::Column::Preferences, Expr::value(preferences));
                    changed = true;
                }
                if !changed {
                    return Err(Error::validation("update", "names no field to change"));
                }
                self.write(ctx, statement, id).await
            },
        )
        .await
    }

    /// Marks a user inactive (they keep their history; assigners skip them). Idempotent.
    ///
    /// # Errors
    /// [`Error::NotFound`]: no such user in the tenant; [`Error::Db`].
    pub async fn deactivate(&self, ctx: &RequestContext, id: Uuid) -> Result<users::Model> {
        traced(
            span!("orkestra.users.deactivate", ctx, user.id = %id),
            async move { self.set_status(ctx, id, UserStatus::Inactive).await },
        )
        .await
    }

    /// Marks a user active again. Idempotent.
    ///
    /// # Errors
    /// [`Error::NotFound`]: no such user in the tenant; [`Error::Db`].
    pub async fn activate(&self, ctx: &RequestContext, id: Uuid) -> Result<users::Model> {
        traced(
            span!("orkestra.users.activate", ctx, user.id = %id),
            async move { self.set_status(ctx, id, UserStatus::Active).await },
        )
        .await
    }

    /// Records that the user was active now (`last_active_at`).
    ///
    /// # Errors
    /// [`Error::NotFound`]: no such user in the tenant; [`Error::Db`].
    pub async fn record_activity(&self, ctx: &RequestContext, id: Uuid) -> Result<users::Model> {
        traced(
            span!("orkestra.users.record_activity", ctx, user.id = %id),
            async move {
                let statement = scope::update_many::<users::Entity>(ctx)
                    .col_expr(users::Column::LastActiveAt, Expr::value(now()));
                self.write(ctx, statement, id).await
            },
        )
        .await
    }

    async fn set_status(
        &self,
        ctx: &RequestContext,
        id: Uuid,
        status: UserStatus,
    ) -> Result<users::Model> {
        let statement = scope::update_many::<users::Entity>(ctx)
            .col_expr(users::Column::Status, Expr::value(status));
        self.write(ctx, statement, id).await
    }

    /// Runs a scoped update of one user and returns the row, or [`Error::NotFound`].
    async fn write(
        &self,
        ctx: &RequestContext,
        statement: sea_orm::UpdateMany<users::Entity>,
        id: Uuid,
    ) -> Result<users::Model> {
        let statement = statement.filter(users::Column::Id.eq(id));
        tenant_transaction(self.db, ctx, async |txn| {
            statement
                .exec_with_returning(txn)
                .await?
                .pop()
                .ok_or_else(|| Error::not_found("user", id))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use orkestra_entity::sea_orm_active_enums::{UserRole, UserStatus};
    use sea_orm::Value;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::testing::{
        assert_scoped, bound, committed, ctx, inserted, none, one_each, param, postgres,
        statements, tenant_calls, user_row,
    };

    #[tokio::test]
    async fn create_inserts_into_the_contexts_tenant() -> anyhow::Result<()> {
        let tenant = Uuid::now_v7();
        let db = postgres()
            .append_exec_results([bound()])
            .append_query_results([vec![user_row(tenant, Uuid::now_v7())]])
            .into_connection();
        let user = UserRepository::new(&db)
            .create(&ctx(tenant), NewUser::new("  Ada@Example.COM ", " Ada "))
            .await?;
        assert_eq!(user.tenant_id, tenant);

        let calls = tenant_calls(db, tenant);
        assert_eq!(committed(&calls), [true]);
        let log = one_each(&calls);
        assert_eq!(assert_scoped(&log[0], tenant), 0);
        assert!(log[0].sql.contains("RETURNING"), "{}", log[0].sql);
        assert_eq!(inserted(&log[0], "email"), &Value::from("ada@example.com"));
        assert_eq!(inserted(&log[0], "name"), &Value::from("Ada"));
        assert_eq!(inserted(&log[0], "role"), &Value::from("MEMBER"));
        assert_eq!(inserted(&log[0], "status"), &Value::from("ACTIVE"));
        assert_eq!(inserted(&log[0], "preferences"), &Value::from(json!({})));
        Ok(())
    }

    #[tokio::test]
    async fn refused_arguments_send_nothing() {
        let tenant = Uuid::now_v7();
        let ctx = ctx(tenant);
        let db = postgres().into_connection();
        let users = UserRepository::new(&db);
        let mut bad_preferences = NewUser::new("ada@example.com", "Ada");
        bad_preferences.preferences = Some(json!([1]));
        for user in [
            NewUser::new("ada", "Ada"),
            NewUser::new("ada@example.com", " "),
            bad_preferences,
        ] {
            let result = users.create(&ctx, user.clone()).await;
            assert!(
                matches!(result, Err(Error::Validation { .. })),
                "{user:?}: {result:?}"
            );
        }
        let result = users.find_by_email(&ctx, "not an email").await;
        assert!(matches!(
            result,
            Err(Error::Validation { field: "email", .. })
        ));
        let result = users
            .update(&ctx, Uuid::now_v7(), UserUpdate::default())
            .await;
        assert!(matches!(
            result,
            Err(Error::Validation {
                field: "update",
                ..
            })
        ));
        let result = users
            .list(&ctx, &UserFilter::default(), &PageRequest::first(0))
            .await;
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
    async fn find_by_id_and_email_are_scoped() -> anyhow::Result<()> {
        let tenant = Uuid::now_v7();
        let id = Uuid::now_v7();
        let db = postgres()
            .append_exec_results([bound(), bound()])
            .append_query_results([vec![user_row(tenant, id)]])
            .append_query_results([none()])
            .into_connection();
        let users = UserRepository::new(&db);
        assert_eq!(
            users.find_by_id(&ctx(tenant), id).await?.map(|u| u.id),
            Some(id)
        );
        assert_eq!(
            users
                .find_by_email(&ctx(tenant), " ADA@example.com")
                .await?,
            None
        );

        let calls = tenant_calls(db, tenant);
        assert_eq!(committed(&calls), [true, true]);
        let log = one_each(&calls);
        for statement in &log {
            assert!(statement.sql.starts_with("SELECT"), "{}", statement.sql);
            assert_eq!(assert_scoped(statement, tenant), 1);
        }
        assert!(
            log[0].sql.contains("\"users\".\"id\" = $2"),
            "{}",
            log[0].sql
        );
        assert_eq!(param(&log[0], 2), &Value::from(id));
        // Compared as stored: trimmed and lower-cased.
        assert!(
            log[1].sql.contains("\"users\".\"email\" = $2"),
            "{}",
            log[1].sql
        );
        assert_eq!(param(&log[1], 2), &Value::from("ada@example.com"));
        Ok(())
    }

    #[tokio::test]
    async fn list_is_scoped_filtered_and_keyset_paged() -> anyhow::Result<()> {
        let tenant = Uuid::now_v7();
        let after = Uuid::now_v7();
        let ids = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        let db = postgres()
            .append_exec_results([bound(), bound()])
            // One row more than the limit: the page says another follows.
            .append_query_results([ids
                .iter()
                .map(|&id| user_row(tenant, id))
                .collect::<Vec<_>>()])
            .append_query_results([none()])
            .into_connection();
        let users = UserRepository::new(&db);
        let filter = UserFilter {
            role: Some(UserRole::Admin),
            status: Some(UserStatus::Inactive),
        };
        let page = users
            .list(&ctx(tenant), &filter, &PageRequest::after(after, 2))
            .await?;
        assert_eq!(
            page.items.iter().map(|u| u.id).collect::<Vec<_>>(),
            ids[..2]
        );
        assert_eq!(page.next, Some(ids[1]));
        let page = users
            .list(&ctx(tenant), &UserFilter::default(), &PageRequest::first(5))
            .await?;
        assert_eq!(page.next, None);

        let calls = tenant_calls(db, tenant);
        assert_eq!(committed(&calls), [true, true]);
        let log = one_each(&calls);
        let filtered = &log[0];
        assert_eq!(assert_scoped(filtered, tenant), 1);
        let sql = &filtered.sql;
        assert!(
            sql.contains("\"users\".\"role\" = $2::\"user_role\""),
            "{sql}"
        );
        assert!(
            sql.contains("\"users\".\"status\" = $3::\"user_status\""),
            "{sql}"
        );
        assert!(sql.contains("\"users\".\"id\" > $4"), "{sql}");
        assert!(
            sql.ends_with("ORDER BY \"users\".\"id\" ASC LIMIT $5"),
            "{sql}"
        );
        assert_eq!(param(filtered, 2), &Value::from("ADMIN"));
        assert_eq!(param(filtered, 3), &Value::from("INACTIVE"));
        assert_eq!(param(filtered, 4), &Value::from(after));
        assert_eq!(param(filtered, 5), &Value::from(3_u64));

        let unfiltered = &log[1];
        assert_eq!(assert_scoped(unfiltered, tenant), 1);
        for absent in ["\"role\" =", "\"status\" =", "\"id\" >"] {
            assert!(!unfiltered.sql.contains(absent), "{}", unfiltered.sql);
        }
        Ok(())
    }

    #[tokio::test]
    async fn update_writes_one_scoped_statement() -> anyhow::Result<()> {
        let tenant = Uuid::now_v7();
        let id = Uuid::now_v7();
        let db = postgres()
            .append_exec_results([bound(), bound()])
            .append_query_results([vec![user_row(tenant, id)]])
            .append_query_results([none()])
            .into_connection();
        let users = UserRepository::new(&db);
        let update = UserUpdate {
            name: Some(" Grace ".to_owned()),
            role: Some(UserRole::Admin),
            preferences: Some(json!({"theme": "dark"})),
        };
        users.update(&ctx(tenant), id, update.clone()).await?;
        let missing = users.update(&ctx(tenant), id, update).await;
        assert!(
            matches!(missing, Err(Error::NotFound { entity: "user", .. })),
            "{missing:?}"
        );

        let calls = tenant_calls(db, tenant);
        assert_eq!(committed(&calls), [true, false]);
        // A miss is not looked up again.
        let log = one_each(&calls);
        for statement in &log {
            let sql = &statement.sql;
            assert!(sql.starts_with("UPDATE \"users\" SET"), "{sql}");
            assert!(sql.contains("RETURNING"), "{sql}");
            assert_eq!(assert_scoped(statement, tenant), 1);
            assert!(sql.contains("\"users\".\"id\" = $5"), "{sql}");
            assert_eq!(param(statement, 1), &Value::from("Grace"));
            assert_eq!(param(statement, 2), &Value::from("ADMIN"));
            assert_eq!(param(statement, 3), &Value::from(json!({"theme": "dark"})));
            assert_eq!(param(statement, 5), &Value::from(id));
        }
        Ok(())
    }

    #[tokio::test]
    async fn status_and_activity_changes_are_scoped() -> anyhow::Result<()> {
        let tenant = Uuid::now_v7();
        let id = Uuid::now_v7();
        let ctx = ctx(tenant);
        let db = postgres()
            .append_exec_results(vec![bound(); 4])
            .append_query_results([vec![user_row(tenant, id)]])
            .append_query_results([vec![user_row(tenant, id)]])
            .append_query_results([vec![user_row(tenant, id)]])
            .append_query_results([none()])
            .into_connection();
        let users = UserRepository::new(&db);
        users.deactivate(&ctx, id).await?;
        users.activate(&ctx, id).await?;
        users.record_activity(&ctx, id).await?;
        let missing = users.deactivate(&ctx, id).await;
        assert!(
            matches!(missing, Err(Error::NotFound { .. })),
            "{missing:?}"
        );

        let calls = tenant_calls(db, tenant);
        assert_eq!(committed(&calls), [true, true, true, false]);
        let log = one_each(&calls);
        let expected = [
            ("\"status\" = $1::\"user_status\"", Some("INACTIVE")),
            ("\"status\" = $1::\"user_status\"", Some("ACTIVE")),
            ("\"last_active_at\" = $1", None),
            ("\"status\" = $1::\"user_status\"", Some("INACTIVE")),
        ];
        for (statement, (set, value)) in log.iter().zip(expected) {
            let sql = &statement.sql;
            assert!(sql.starts_with("UPDATE \"users\" SET"), "{sql}");
            assert!(sql.contains(set), "{sql}");
            assert_eq!(assert_scoped(statement, tenant), 1);
            assert!(sql.contains("\"users\".\"id\" = $3"), "{sql}");
            assert_eq!(param(statement, 3), &Value::from(id));
            if let Some(value) = value {
                assert_eq!(param(statement, 1), &Value::from(value));
            }
        }
        Ok(())
    }
}
