//! `seed-scale`: fills a PostgreSQL database with the scale data set of issue 5 (see
//! `orkestra_tests::scale`), migrating it first.
//!
//! ```text
//! seed-scale <postgres://...|scratch> [--tenants N] [--tasks N] [--users N] [--audit N]
//! ```
//! Defaults: 1,000 tenants, 1,000,000 tasks, 100,000 users, 1,000,000 audit events. `scratch`
//! creates a scratch database on `DATABASE_URL`'s server and prints its URL on standard output; it
//! is kept until a sweep after this process exits (`just sweep`), or `scratch-db drop <url>`.
//! Progress (a bar, when standard error is a terminal) and the final timing go to standard error.

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use orkestra_tests::{pg, scale};
use sea_orm::{ConnectOptions, Database};

fn usage() -> anyhow::Error {
    anyhow::anyhow!(
        "usage: seed-scale <postgres://...|scratch> [--tenants N] [--tasks N] [--users N] [--audit N]"
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (target, flags) = args.split_first().ok_or_else(usage)?;
    let mut scale = scale::Scale::default();
    for pair in flags.chunks(2) {
        let [flag, value] = pair else {
            return Err(usage());
        };
        let value: u64 = value
            .replace('_', "")
            .parse()
            .with_context(|| format!("{flag} takes a count"))?;
        match flag.as_str() {
            "--tenants" => scale.tenants = value,
            "--tasks" => scale.tasks = value,
            "--users" => scale.users = value,
            "--audit" => scale.audit_events = value,
            _ => return Err(usage()),
        }
    }
    if scale.tenants == 0 || scale.users < scale.tenants || scale.tasks < scale.tenants {
        bail!("need at least one tenant, and a user and a task per tenant: {scale:?}");
    }

    let url = if target == "scratch" {
        let admin_url = std::env::var("DATABASE_URL")
            .context("`scratch` needs DATABASE_URL to name the PostgreSQL server")?;
        pg::require_postgres(&admin_url)?;
        let admin = pg::admin(&admin_url).await?;
        let name = pg::database_name("scratch", std::process::id());
        pg::create_database(&admin, &name, None).await?;
        admin.close().await?;
        pg::url_for(&admin_url, &name)?
    } else {
        pg::require_postgres(target)?;
        target.clone()
    };
    println!("{url}");

    let mut options = ConnectOptions::new(url.clone());
    options.max_connections(1).sqlx_logging(false);
    let db = Database::connect(options)
        .await
        .with_context(|| format!("connecting to {}", pg::redact(&url)))?;
    eprintln!(
        "seeding {}: {} tenants, {} tasks, {} users, {} audit events",
        pg::redact(&url),
        scale.tenants,
        scale.tasks,
        scale.users,
        scale.audit_events
    );
    // `[#####.....]  52% 520000/1000000 tasks 31.2 s`, redrawn in place.
    let bar = ProgressBar::new(scale.tasks).with_style(
        ProgressStyle::with_template("[{bar:40}] {percent:>3}% {pos}/{len} tasks {seconds}")?
            .progress_chars("#.")
            .with_key(
                "seconds",
                |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                    let _ = write!(out, "{:.1} s", state.elapsed().as_secs_f64());
                },
            ),
    );
    let seeded = scale::seed(&db, scale, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await?;
    bar.finish();
    let largest = &seeded.tenants[0];
    eprintln!(
        "seeded in {:.1} s (ANALYZE included); the largest tenant {} has {} tasks, {} users",
        seeded.elapsed.as_secs_f64(),
        largest.id,
        largest.tasks,
        largest.users
    );
    db.close().await?;
    Ok(())
}
