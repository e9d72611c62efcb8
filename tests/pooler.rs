//! A transaction pooler between the services and PostgreSQL (PgBouncer in transaction mode): what
//! the repository may and may not rely on there. Each transaction of a client connection may run
//! on another server connection, so nothing may outlive a transaction on the server: not the
//! tenant binding, not a prepared statement.
//!
//! With `ORKESTRA_POOLER_URL` set (`just test-pgbouncer`, which starts `.ci/pgbouncer`) the
//! application role's pools go through the pooler, and these tests show the failures the
//! settings of README's "Transaction poolers" prevent. Without it they run on PostgreSQL
//! directly, where the same calls succeed, and show why the statement cache is kept there.

use std::collections::BTreeSet;

use orkestra_repository::{
    DbConfig, Error, NewUser, RequestContext, UserRepository, connect, tenant_transaction,
    transaction,
};
use orkestra_tests::repo::ctx;
use orkestra_tests::{TestDb, fixtures, pg};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use uuid::Uuid;

/// SQLSTATE `invalid_sql_statement_name`: `prepared statement "..." does not exist`.
const NO_SUCH_STATEMENT: &str = "26000";

fn sql(text: &str) -> Statement {
    Statement::from_string(DbBackend::Postgres, text)
}

/// The test's URL as the application role, with the statement cache left to `config`: without
/// the pooler's `statement-cache-capacity` parameter that the harness adds.
fn app_url(db: &TestDb) -> anyhow::Result<String> {
    let url = pg::url_as(db.url().expect("PostgreSQL"), pg::APP_LOGIN)?;
    let mut url = url::Url::parse(&url)?;
    pg::without_param(&mut url, pg::STATEMENT_CACHE_PARAM);
    Ok(url.to_string())
}

/// A service's pool of one connection on the application role, opened by [`connect`].
async fn service(db: &TestDb, cache: Option<usize>) -> anyhow::Result<DatabaseConnection> {
    let mut config = DbConfig::new(app_url(db)?);
    config.max_connections = 1;
    config.min_connections = 0;
    config.statement_cache_capacity = cache;
    Ok(connect(&config).await?)
}

/// A tenant with one user; the context and the user's id.
async fn tenant_with_user(db: &TestDb) -> anyhow::Result<(RequestContext, Uuid)> {
    let tenant = fixtures::tenant(db.conn(), "pooler").await?.id;
    let ctx = ctx(tenant);
    let user = UserRepository::new(db.conn())
        .create(&ctx, NewUser::new("ada@example.com", "Ada"))
        .await?
        .id;
    Ok((ctx, user))
}

/// Through the pooler a cached statement is gone by the next transaction (the pooler deallocates
/// every statement when a transaction ends, and the next one may run on another server
/// connection anyway): the second identical call fails. With the cache off
/// (`DbConfig::behind_transaction_pooler`) every call prepares its statements afresh, inside its
/// transaction, and succeeds. Directly, both succeed.
#[tokio::test]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: set DATABASE_URL=postgres://..."
)]
#[cfg_attr(
    orkestra_citus,
    ignore = "about a pooler in front of one PostgreSQL server: runs on PostgreSQL, directly and \
              through PgBouncer (just test-pgbouncer)"
)]
async fn behind_a_transaction_pooler_only_a_pool_without_statement_cache_works()
-> anyhow::Result<()> {
    let db = TestDb::postgres_only().await?;
    let pooled = pg::pooler().is_some();
    let (ctx, user) = tenant_with_user(&db).await?;

    let cached = service(&db, Some(100)).await?;
    let users = UserRepository::new(&cached);
    assert!(users.find_by_id(&ctx, user).await?.is_some());
    let second = users.find_by_id(&ctx, user).await;
    if pooled {
        let error = second.expect_err("the cached statement is gone behind a transaction pooler");
        assert_eq!(
            error.sqlstate().as_deref(),
            Some(NO_SUCH_STATEMENT),
            "{error:?}"
        );
    } else {
        assert!(second?.is_some());
    }
    cached.close().await?;

    let uncached = service(&db, Some(0)).await?;
    let users = UserRepository::new(&uncached);
    for n in 0..5 {
        assert!(users.find_by_id(&ctx, user).await?.is_some());
        users
            .create(&ctx, NewUser::new(format!("u{n}@example.com"), "U"))
            .await?;
    }
    uncached.close().await?;
    println!(
        "pooler: {}: the cache-less pool's calls all succeeded",
        if pooled {
            "through the pooler the statement cache failed on its second call"
        } else {
            "directly the statement cache works"
        }
    );
    Ok(())
}

/// A statement sent on a pool by itself, outside a transaction, is prepared and executed in two
/// exchanges with the server, and a transaction pooler may hand each to another server
/// connection: it fails, where the same statement in a transaction succeeds. Every statement of
/// the repository runs in a transaction (`connect`'s own check included).
#[tokio::test]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: set DATABASE_URL=postgres://..."
)]
#[cfg_attr(
    orkestra_citus,
    ignore = "about a pooler in front of one PostgreSQL server: runs on PostgreSQL, directly and \
              through PgBouncer (just test-pgbouncer)"
)]
async fn behind_a_transaction_pooler_a_statement_needs_a_transaction() -> anyhow::Result<()> {
    let db = TestDb::postgres_only().await?;
    let pooled = pg::pooler().is_some();
    let pool = service(&db, Some(0)).await?;
    let alone = pool.query_one_raw(sql("SELECT 1 AS one")).await;
    if pooled {
        let error = Error::from(alone.expect_err("prepared and executed on two servers"));
        assert_eq!(
            error.sqlstate().as_deref(),
            Some(NO_SUCH_STATEMENT),
            "{error:?}"
        );
    } else {
        assert!(alone?.is_some());
    }
    let row = transaction(&pool, async |txn| {
        Ok(txn.query_one_raw(sql("SELECT 1 AS one")).await?)
    })
    .await?;
    assert_eq!(row.expect("a row").try_get::<i32>("", "one")?, 1);
    pool.close().await?;
    Ok(())
}

/// With the cache off, sqlx (0.9) still prepares each statement under a name it never closes.
/// Through the pooler, `server_reset_query = DEALLOCATE ALL` (run after every transaction) leaves
/// a transaction only the statements it prepared itself; without it the names of earlier
/// transactions, of any client, pile up on the server connection and collide
/// (`prepared statement "sqlx_s_1" already exists`). Directly, they pile up on the connection
/// until it closes: why the cache stays on there.
#[tokio::test]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: set DATABASE_URL=postgres://..."
)]
#[cfg_attr(
    orkestra_citus,
    ignore = "about a pooler in front of one PostgreSQL server: runs on PostgreSQL, directly and \
              through PgBouncer (just test-pgbouncer)"
)]
async fn without_a_cache_prepared_statements_last_until_the_pooler_deallocates_them()
-> anyhow::Result<()> {
    let db = TestDb::postgres_only().await?;
    let pooled = pg::pooler().is_some();
    let pool = service(&db, Some(0)).await?;
    let count = "SELECT count(*) AS n FROM pg_prepared_statements";
    let prepared = async || -> anyhow::Result<i64> {
        let row = transaction(&pool, async |txn| {
            for _ in 0..3 {
                txn.query_one_raw(sql("SELECT 1 AS one")).await?;
            }
            Ok(txn.query_one_raw(sql(count)).await?)
        })
        .await?;
        Ok(row.expect("a row").try_get("", "n")?)
    };
    let first = prepared().await?;
    let second = prepared().await?;
    if pooled {
        // Each transaction's three statements and the count itself, nothing earlier.
        assert_eq!(
            (first, second),
            (4, 4),
            "the pooler left earlier statements on the server"
        );
    } else {
        assert_eq!(
            second - first,
            4,
            "one connection keeps every statement it prepared"
        );
    }
    pool.close().await?;
    Ok(())
}

/// The tenant binding is local to its transaction: through the pooler the next transaction on a
/// server connection, another client's, finds no tenant bound and sees no row. Directly the two
/// pools have server connections of their own; through the pooler they share them (asserted: the
/// untenanted client ran on a server connection the tenant's client had used).
#[tokio::test]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: set DATABASE_URL=postgres://..."
)]
#[cfg_attr(
    orkestra_citus,
    ignore = "about a pooler in front of one PostgreSQL server: runs on PostgreSQL, directly and \
              through PgBouncer (just test-pgbouncer)"
)]
async fn the_tenant_binding_never_reaches_the_next_transaction_on_a_server_connection()
-> anyhow::Result<()> {
    let db = TestDb::postgres_only().await?;
    let pooled = pg::pooler().is_some();
    let (ctx, _user) = tenant_with_user(&db).await?;
    let tenant_client = service(&db, Some(0)).await?;
    let other_client = service(&db, Some(0)).await?;
    let backend_and_users = "SELECT pg_backend_pid() AS pid, \
         current_setting('app.tenant_id', true) AS tenant, \
         (SELECT count(*) FROM users) AS users";

    let mut tenant_backends = BTreeSet::new();
    let mut shared = 0;
    for _ in 0..20 {
        let row = tenant_transaction(&tenant_client, &ctx, async |txn| {
            Ok(txn.query_one_raw(sql(backend_and_users)).await?)
        })
        .await?
        .expect("a row");
        assert_eq!(row.try_get::<i64>("", "users")?, 1, "the tenant's own user");
        tenant_backends.insert(row.try_get::<i32>("", "pid")?);

        let row = transaction(&other_client, async |txn| {
            Ok(txn.query_one_raw(sql(backend_and_users)).await?)
        })
        .await?
        .expect("a row");
        let tenant: Option<String> = row.try_get("", "tenant")?;
        assert!(
            tenant.as_deref().unwrap_or_default().is_empty(),
            "a tenant outlived its transaction: {tenant:?}"
        );
        assert_eq!(row.try_get::<i64>("", "users")?, 0, "no tenant sees no row");
        if tenant_backends.contains(&row.try_get::<i32>("", "pid")?) {
            shared += 1;
        }
    }
    if pooled {
        assert!(
            shared > 0,
            "the two clients never shared a server connection"
        );
    } else {
        assert_eq!(shared, 0, "directly each pool has its own connections");
    }
    println!("pooler: {shared} of 20 untenanted transactions ran where the tenant's had run");
    tenant_client.close().await?;
    other_client.close().await?;
    Ok(())
}
