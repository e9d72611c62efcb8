//! `migration-sql`: the SQL every migration sends to PostgreSQL, one file per migration, for
//! squawk (`just lint-migrations`).
//!
//! ```text
//! migration-sql <out dir>    writes <out dir>/<migration>.sql for each migration's `up`
//! ```
//! The migrations are Rust, and much of their SQL is built by sea-query or chosen at run time (the
//! Citus branches, the enum casts), so no file holds it. This runs them, one at a time, on a new
//! scratch database of the server `DATABASE_URL` names, and keeps what sqlx sent: its statement
//! log (`sqlx::query` events) carries each statement's text as sent. The migrator's own
//! bookkeeping (`seaql_migrations`) is left out. Transactions are written between `BEGIN` and
//! `COMMIT`, as they ran, so squawk judges their statements as run in one.
//!
//! Each file starts with the exceptions `migration/squawk-exceptions.txt` grants that migration, as
//! `-- squawk-ignore-file` comments. An exception is only granted to a migration that creates a
//! table: a rule about locking or rewriting a live table cannot bite a table that nobody uses
//! yet. Anything else must be fixed in the migration.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail, ensure};
use orkestra_migration::{Migrator, MigratorTrait};
use orkestra_tests::pg;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DbBackend, Statement};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// The exceptions file, relative to the workspace root.
const EXCEPTIONS: &str = "migration/squawk-exceptions.txt";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let out = match std::env::args().skip(1).collect::<Vec<_>>().as_slice() {
        [out] => PathBuf::from(out),
        _ => bail!("usage: migration-sql <out dir>"),
    };
    let admin_url = std::env::var("DATABASE_URL")
        .context("DATABASE_URL must name the PostgreSQL server to use")?;
    pg::require_postgres(&admin_url)?;
    let exceptions = exceptions(&workspace_root().join(EXCEPTIONS))?;

    let sent = Arc::new(Mutex::new(Vec::new()));
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(Statements(Arc::clone(&sent))),
    )?;

    let scratch = pg::OwnedDatabase::create(&admin_url, None).await?;
    let mut options = ConnectOptions::new(scratch.url());
    options
        .max_connections(1)
        .sqlx_logging(true)
        .sqlx_logging_level(log::LevelFilter::Info);
    let db = Database::connect(options).await?;
    let version: String = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_setting('server_version') AS v",
        ))
        .await?
        .context("no server version")?
        .try_get("", "v")?;

    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut granted = 0;
    for migration in Migrator::migrations() {
        let name = migration.name().to_owned();
        sent.lock().expect("poisoned").clear();
        Migrator::up(&db, Some(1))
            .await
            .with_context(|| format!("migration {name} failed"))?;
        let statements: Vec<String> = std::mem::take(&mut *sent.lock().expect("poisoned"))
            .into_iter()
            .filter(|sql| !sql.contains("seaql_migrations"))
            .collect();
        let rules = exceptions.get(&name).map(Vec::as_slice).unwrap_or_default();
        if !rules.is_empty() {
            ensure!(
                statements
                    .iter()
                    .any(|sql| sql.trim_start().starts_with("CREATE TABLE")),
                "{EXCEPTIONS} excuses {name}, which creates no table: fix the migration instead"
            );
            granted += rules.len();
        }

        let mut file = format!(
            "-- {name} (up), as sent to PostgreSQL {version} by `migration-sql`; do not edit.\n"
        );
        for (rule, why) in rules {
            writeln!(file, "-- squawk-ignore-file {rule}\n--   {why}")?;
        }
        file.push_str(&with_begins(&name, &statements)?);
        let path = out.join(format!("{name}.sql"));
        std::fs::write(&path, file).with_context(|| format!("writing {}", path.display()))?;
        println!("{}: {} statements", path.display(), statements.len());
    }
    let unknown: Vec<&String> = exceptions
        .keys()
        .filter(|name| !Migrator::migrations().iter().any(|m| m.name() == *name))
        .collect();
    ensure!(
        unknown.is_empty(),
        "{EXCEPTIONS} names no migration: {unknown:?}"
    );
    println!("{granted} exceptions granted from {EXCEPTIONS}");
    db.close().await?;
    Ok(())
}

/// The statements as a script, with the `BEGIN`s sqlx does not log put back.
///
/// sqlx logs a transaction's `COMMIT` but not its `BEGIN`. Every transaction of a migration starts
/// by setting the migration timeouts (`SET LOCAL lock_timeout`, see `orkestra_migration::timeouts`),
/// so that is where its `BEGIN` goes; a transaction that ends without having started that way is
/// an error, since squawk would then judge its statements as run outside one.
fn with_begins(name: &str, statements: &[String]) -> anyhow::Result<String> {
    let mut script = String::new();
    let mut in_transaction = false;
    for sql in statements {
        let sql = sql.trim().trim_end_matches(';');
        if sql.starts_with("SET LOCAL lock_timeout") && !in_transaction {
            script.push_str("BEGIN;\n");
            in_transaction = true;
        }
        if matches!(sql, "COMMIT" | "ROLLBACK") {
            ensure!(
                in_transaction,
                "{name}: a transaction ended that did not start by setting the migration timeouts"
            );
            in_transaction = false;
        }
        writeln!(script, "{sql};")?;
    }
    ensure!(!in_transaction, "{name}: a transaction never ended");
    Ok(script)
}

/// The workspace root: this crate's parent.
fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
}

/// Reads the exceptions file: `<migration> <rule> <why>` per line; `#` starts a comment. Every
/// exception must say why.
fn exceptions(path: &Path) -> anyhow::Result<BTreeMap<String, Vec<(String, String)>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut granted: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.splitn(3, char::is_whitespace);
        match (words.next(), words.next(), words.next().map(str::trim)) {
            (Some(migration), Some(rule), Some(why)) if !why.is_empty() => granted
                .entry(migration.to_owned())
                .or_default()
                .push((rule.to_owned(), why.to_owned())),
            _ => bail!(
                "{}:{}: expected `<migration> <rule> <why>`",
                path.display(),
                number + 1
            ),
        }
    }
    Ok(granted)
}

/// Keeps the text of every statement sqlx logs.
struct Statements(Arc<Mutex<Vec<String>>>);

impl<S: Subscriber> Layer<S> for Statements {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        // sqlx logs a statement short enough to be its own summary only as the summary.
        let sql = if fields.statement.trim().is_empty() {
            fields.summary
        } else {
            fields.statement
        };
        self.0.lock().expect("poisoned").push(sql);
    }
}

/// The two fields of sqlx's statement event that hold its text.
#[derive(Default)]
struct Fields {
    summary: String,
    statement: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "summary" => value.clone_into(&mut self.summary),
            "db.statement" => value.clone_into(&mut self.statement),
            _ => {}
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}
