//! `scale-bench`: times the repository's read operations on databases filled by `seed-scale`, to
//! show that they stay flat as the data grows.
//!
//! ```text
//! scale-bench [--rounds N] [--svg FILE] <postgres://...> [<postgres://...> ...]
//! ```
//! For each database (connecting as its owner): applies pending migrations and `ANALYZE`s, finds
//! the tenant with the most tasks, then connects as a login role of `orkestra_app` (created when
//! missing, as the test harness does) and runs each operation `N` times (default 300),
//! round-robin, through the repository: the inbox page (50) of a user in several groups, the
//! overdue page (50), a task's history, a message page (50) and an audit query page (50). Prints
//! the median and p99 of each, in milliseconds, one table row per database and operation. With
//! `--svg`, also draws each operation's median against the database's task count.

use std::time::Instant;

use anyhow::Context as _;
use orkestra_bench::plot::{Chart, Series};
use orkestra_bench::stats::Latencies;
use orkestra_migration::{Migrator, MigratorTrait};
use orkestra_repository::{
    AuditQuery, AuditRepository, ConversationRepository, PageRequest, TaskRepository,
};
use orkestra_tests::repo::ctx;
use orkestra_tests::{pg, scale};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};

const OPERATIONS: [&str; 5] = [
    "inbox page",
    "overdue page",
    "task history",
    "message page",
    "audit page",
];

async fn connect(url: &str) -> anyhow::Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url.to_owned());
    options.max_connections(1).sqlx_logging(false);
    Database::connect(options)
        .await
        .with_context(|| format!("connecting to {}", pg::redact(url)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut rounds = 300;
    let mut svg = None;
    loop {
        match args.first().map(String::as_str) {
            Some("--rounds") => {
                rounds = args.get(1).context("--rounds takes a count")?.parse()?;
            }
            Some("--svg") => svg = Some(args.get(1).context("--svg takes a file")?.clone()),
            _ => break,
        }
        args.drain(..2);
    }
    anyhow::ensure!(
        !args.is_empty(),
        "usage: scale-bench [--rounds N] [--svg FILE] <postgres://...> ..."
    );
    let mut curves: Vec<Series> = OPERATIONS
        .iter()
        .map(|name| Series {
            name: (*name).to_owned(),
            points: Vec::new(),
        })
        .collect();
    println!(
        "| tasks | largest tenant's tasks | operation | rows | median ms | p99 ms |\n|---:|---:|---|---:|---:|---:|"
    );
    for url in &args {
        pg::require_postgres(url)?;
        let owner = connect(url).await?;
        Migrator::up(&owner, None).await?;
        owner.execute_unprepared("ANALYZE").await?;
        owner
            .execute_unprepared(&format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{login}') THEN \
                 CREATE ROLE {login} LOGIN PASSWORD '{login}' IN ROLE orkestra_app; END IF; END $$",
                login = pg::APP_LOGIN
            ))
            .await?;
        let total: i64 = owner
            .query_one_raw(sea_orm::Statement::from_string(
                owner.get_database_backend(),
                "SELECT count(*) AS n FROM tasks",
            ))
            .await?
            .context("a count")?
            .try_get("", "n")?;
        let largest = scale::largest_tenant(&owner).await?;
        let probe = scale::probe(&owner, &largest).await?;
        owner.close().await?;

        let app = connect(&pg::url_as(url, pg::APP_LOGIN)?).await?;
        let ctx = ctx(probe.tenant);
        let tasks = TaskRepository::new(&app);
        let conversations = ConversationRepository::new(&app);
        let audit = AuditRepository::new(&app);
        let now = chrono::Utc::now().into();
        let mut times: Vec<Latencies> = vec![Latencies::new(); OPERATIONS.len()];
        let mut returned = [0; OPERATIONS.len()];
        // A warm-up round, then the measured ones.
        for round in 0..=rounds {
            for (op, samples) in times.iter_mut().enumerate() {
                let started = Instant::now();
                let rows = match op {
                    0 => tasks
                        .find_pending_for_user(&ctx, probe.user, &PageRequest::first(50))
                        .await?
                        .items
                        .len(),
                    1 => tasks
                        .overdue(&ctx, now, &PageRequest::first(50))
                        .await?
                        .items
                        .len(),
                    2 => tasks.history(&ctx, probe.task).await?.len(),
                    3 => conversations
                        .list_messages(&ctx, probe.conversation, &PageRequest::first(50))
                        .await?
                        .items
                        .len(),
                    _ => audit
                        .query(&ctx, &AuditQuery::all(), &PageRequest::first(50))
                        .await?
                        .items
                        .len(),
                };
                let elapsed = started.elapsed();
                anyhow::ensure!(rows > 0, "{} returned nothing", OPERATIONS[op]);
                returned[op] = rows;
                if round > 0 {
                    samples.record(elapsed);
                }
            }
        }
        app.close().await?;
        for (op, samples) in times.iter().enumerate() {
            #[allow(clippy::cast_precision_loss)]
            curves[op]
                .points
                .push((total as f64, samples.quantile_ms(0.5)));
            println!(
                "| {total} | {} | {} | {} | {:.3} | {:.3} |",
                largest.tasks,
                OPERATIONS[op],
                returned[op],
                samples.quantile_ms(0.5),
                samples.quantile_ms(0.99)
            );
        }
    }
    if let Some(path) = svg {
        let chart = Chart {
            title: "Read operations against table size (median)".into(),
            x_label: "tasks in the database".into(),
            y_label: "ms per call".into(),
            log_x: true,
            series: curves,
        };
        chart.write(&path)?;
        eprintln!("wrote {path}");
    }
    Ok(())
}
