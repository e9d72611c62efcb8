//! A migration that builds indexes on a table in use, on PostgreSQL: migration 17 replaces two
//! indexes of `tasks` while services create and claim tasks, on a database seeded with the scale
//! generator (100,000 tasks).
//!
//! What it shows, in one test (its phases share the seeded database, which takes the longest):
//! 1. **A concurrent build outwaits long transactions, and a failed one leaves nothing invalid
//!    behind on rerun.** A transaction that holds an old snapshot makes the concurrent build wait
//!    for it. The build is seen still waiting past a schema change's lock timeout (5 s), which
//!    would have made it fail; it has a lock timeout of its own (10 minutes). It is then
//!    cancelled, as an operator would: the migration fails and leaves an invalid index, as
//!    PostgreSQL does. The rerun drops it and builds it again.
//! 2. **No writer waits on the migration.** While the rerun builds and drops its indexes, writers
//!    of the application role create and claim tasks, and a sampler watches `pg_stat_activity` for
//!    writers waiting on a lock. The bound: no writer is seen waiting on a lock for
//!    [`LOCK_WAIT_BOUND`], and no write takes longer than [`WRITE_BOUND`] (generous: it also covers
//!    a CI machine's CPU contention; lock waits are what the migration could cause).
//! 3. **The probe would see a blocking build.** A plain `CREATE INDEX` on `tasks`, in a transaction
//!    that stays open [`CONTROL_HOLD`] longer as a build on a larger table would, must make the
//!    same writers wait past both bounds, or the probe proves nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use orkestra_migration::timeouts::{
    CONCURRENT_LOCK_TIMEOUT_VAR, DEFAULT_CONCURRENT_LOCK_TIMEOUT, DEFAULT_LOCK_TIMEOUT,
};
use orkestra_migration::{Migrator, MigratorTrait};
use orkestra_repository::{AssignTo, DbConfig, NewTask, TaskRepository, connect};
use orkestra_tests::repo::ctx;
use orkestra_tests::scale::{self, Scale};
use orkestra_tests::{TestDb, pg};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use serde_json::json;
use tokio::task::JoinSet;
use uuid::Uuid;

/// The data set: 100,000 tasks over 20 tenants.
const SCALE: Scale = Scale {
    tenants: 20,
    tasks: 100_000,
    users: 2_000,
    audit_events: 20_000,
};
/// Writers creating and claiming tasks at once.
const WRITERS: usize = 4;
/// The longest a writer may be seen waiting on a lock while the migration runs.
const LOCK_WAIT_BOUND: Duration = Duration::from_millis(200);
/// The longest one write (a create or a claim) may take while the migration runs.
const WRITE_BOUND: Duration = Duration::from_secs(2);
/// How long the control's blocking build keeps its lock after building.
const CONTROL_HOLD: Duration = Duration::from_millis(2500);
/// How often the sampler looks at `pg_stat_activity`.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// How long the first build must be seen waiting for the old snapshot before it is cancelled:
/// longer than a schema change's lock timeout, [`DEFAULT_LOCK_TIMEOUT`] (asserted).
const PAST_THE_LOCK_TIMEOUT: Duration = Duration::from_secs(6);

/// The indexes migration 17 builds and the ones it drops.
const BUILT: [&str; 2] = [
    "tasks_tenant_id_workflow_id_workflow_run_id_id_idx",
    "tasks_tenant_id_conversation_id_id_idx",
];
const DROPPED: [&str; 2] = [
    "tasks_tenant_id_workflow_id_workflow_run_id_idx",
    "tasks_tenant_id_conversation_id_idx",
];

fn sql(text: &str) -> Statement {
    Statement::from_string(DbBackend::Postgres, text)
}

/// The validity of each index of `tasks` named in `names` that exists: (name, valid).
async fn indexes(db: &DatabaseConnection, names: &[&str]) -> anyhow::Result<Vec<(String, bool)>> {
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT c.relname AS name, i.indisvalid AS valid FROM pg_index i \
             JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = ANY($1) ORDER BY 1",
            [names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>()
                .into()],
        ))
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("", "name")?, row.try_get("", "valid")?)))
        .collect()
}

/// The backend of a concurrent index build waiting for a lock, and how long it has waited.
async fn waiting_build(db: &DatabaseConnection) -> anyhow::Result<Option<(i32, Duration)>> {
    let row = db
        .query_one_raw(sql(
            "SELECT a.pid, extract(epoch FROM clock_timestamp() - l.waitstart)::float8 AS waited \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE NOT l.granted AND l.waitstart IS NOT NULL \
             AND a.datname = current_database() AND a.query ILIKE 'CREATE INDEX CONCURRENTLY%' \
             ORDER BY waited DESC LIMIT 1",
        ))
        .await?;
    row.map(|row| {
        let waited: f64 = row.try_get("", "waited")?;
        Ok((
            row.try_get("", "pid")?,
            Duration::from_secs_f64(waited.max(0.0)),
        ))
    })
    .transpose()
}

/// What the writers and the sampler saw over one phase.
#[derive(Default)]
struct Observed {
    /// Creates and claims that succeeded.
    writes: u64,
    /// The slowest of them.
    slowest_write: Duration,
    /// Every write's duration, for the percentiles.
    durations: Vec<Duration>,
    /// The longest a writer was seen waiting on a lock.
    longest_lock_wait: Duration,
    /// Samples taken.
    samples: u64,
}

impl Observed {
    fn percentile(&self, q: f64) -> Duration {
        let mut sorted = self.durations.clone();
        sorted.sort();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((sorted.len() as f64) * q).ceil() as usize;
        sorted
            .get(rank.saturating_sub(1))
            .copied()
            .unwrap_or_default()
    }

    fn report(&self, phase: &str, took: Duration) {
        orkestra_tests::report!(
            "{phase}: {:.2} s; {} writes (p50 {:.1} ms, p99 {:.1} ms, slowest {:.1} ms); \
             longest lock wait seen {:.1} ms over {} samples",
            took.as_secs_f64(),
            self.writes,
            self.percentile(0.5).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.slowest_write.as_secs_f64() * 1e3,
            self.longest_lock_wait.as_secs_f64() * 1e3,
            self.samples,
        );
    }
}

/// Writers of the application role and a sampler, running until [`Load::stop`].
struct Load {
    stop: Arc<AtomicBool>,
    writers: JoinSet<anyhow::Result<Vec<Duration>>>,
    sampler: tokio::task::JoinHandle<anyhow::Result<(Duration, u64)>>,
}

impl Load {
    /// Starts [`WRITERS`] writers, each creating a task assigned to `user` of `tenant` and claiming
    /// it, over and over, and the sampler.
    fn start(
        app: &DatabaseConnection,
        owner: &DatabaseConnection,
        tenant: Uuid,
        user: Uuid,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = JoinSet::new();
        for writer in 0..WRITERS {
            let app = app.clone();
            let stop = Arc::clone(&stop);
            writers.spawn(async move {
                let tasks = TaskRepository::new(&app);
                let ctx = ctx(tenant);
                let mut durations = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let mut task =
                        NewTask::new("live-index", format!("w{writer}-{n}"), "Review", json!({}));
                    task.assign_to = Some(AssignTo::user(user));
                    let started = Instant::now();
                    let task = tasks.create(&ctx, task).await?;
                    durations.push(started.elapsed());
                    let started = Instant::now();
                    tasks.claim(&ctx, task.id, user).await?;
                    durations.push(started.elapsed());
                }
                Ok(durations)
            });
        }
        let owner = owner.clone();
        let sampling = Arc::clone(&stop);
        let sampler = tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            let mut samples = 0;
            // The writers are the application login's backends; a lock wait of theirs can only
            // come from the migration or the control (each writer touches its own task).
            let query = Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - query_start)), 0)::float8 \
                 AS waited FROM pg_stat_activity WHERE datname = current_database() \
                 AND usename = $1 AND wait_event_type = 'Lock'",
                [pg::APP_LOGIN.into()],
            );
            while !sampling.load(Ordering::Relaxed) {
                let row = owner.query_one_raw(query.clone()).await?;
                let waited: f64 = row.map_or(Ok(0.0), |row| row.try_get("", "waited"))?;
                longest = longest.max(Duration::from_secs_f64(waited));
                samples += 1;
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            Ok((longest, samples))
        });
        Load {
            stop,
            writers,
            sampler,
        }
    }

    /// Stops the writers and the sampler; what they saw.
    async fn stop(mut self) -> anyhow::Result<Observed> {
        self.stop.store(true, Ordering::Relaxed);
        let mut observed = Observed::default();
        while let Some(durations) = self.writers.join_next().await {
            let durations = durations??;
            observed.writes += durations.len() as u64;
            observed.durations.extend(durations);
        }
        observed.slowest_write = observed.durations.iter().copied().max().unwrap_or_default();
        (observed.longest_lock_wait, observed.samples) = self.sampler.await??;
        Ok(observed)
    }
}

#[tokio::test]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: concurrent index builds; set DATABASE_URL=postgres://..."
)]
#[cfg_attr(
    orkestra_citus,
    ignore = "the Citus suite shares one database, which this test would fill with 100,000 tasks \
              and migrate down and up; migration 17 itself runs on Citus in tests/migrations.rs"
)]
async fn indexes_are_built_on_a_live_table_without_blocking_writers() -> anyhow::Result<()> {
    // Phase 1 relies on the defaults: a build outwaits a schema change's lock timeout.
    assert!(
        std::env::var_os(CONCURRENT_LOCK_TIMEOUT_VAR).is_none(),
        "unset {CONCURRENT_LOCK_TIMEOUT_VAR} for this test: it measures the default"
    );
    assert_eq!(
        (DEFAULT_LOCK_TIMEOUT, DEFAULT_CONCURRENT_LOCK_TIMEOUT),
        ("5s", "10min"),
        "PAST_THE_LOCK_TIMEOUT is chosen for these"
    );
    let db = TestDb::postgres_only().await?;
    let owner = db.conn();
    let seeded = scale::seed(owner, SCALE, |_, _| {}).await?;
    let total: i64 = owner
        .query_one_raw(sql("SELECT count(*) AS n FROM tasks"))
        .await?
        .expect("a count")
        .try_get("", "n")?;
    assert!(
        total >= 100_000,
        "the scale generator made only {total} tasks"
    );
    orkestra_tests::report!(
        "seeded {total} tasks in {:.1} s",
        seeded.elapsed.as_secs_f64()
    );
    // Back to the schema before migration 17, with the data.
    Migrator::down(owner, Some(1)).await?;
    assert_eq!(indexes(owner, &BUILT).await?, vec![]);

    let probe = scale::probe(owner, &seeded.tenants[0]).await?;
    let mut config = DbConfig::new(pg::url_as(db.url().expect("PostgreSQL"), pg::APP_LOGIN)?);
    config.max_connections = u32::try_from(WRITERS)?;
    let app = connect(&config).await?;

    // 1. A transaction with an old snapshot holds the concurrent build, past a schema change's
    //    lock timeout, until the build is cancelled.
    let blocker = owner.begin().await?;
    blocker
        .execute_unprepared("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await?;
    blocker
        .query_one_raw(sql("SELECT count(*) FROM tenants"))
        .await?;
    let started = Instant::now();
    let migrating = tokio::spawn({
        let owner = owner.clone();
        async move { Migrator::up(&owner, None).await }
    });
    let (build, waited) = loop {
        anyhow::ensure!(
            !migrating.is_finished(),
            "the migration ended while an old snapshot was open: {:?}",
            migrating.await?
        );
        if let Some(waiting) = waiting_build(owner).await?
            && waiting.1 >= PAST_THE_LOCK_TIMEOUT
        {
            break waiting;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    owner
        .execute_raw(sql(&format!("SELECT pg_cancel_backend({build})")))
        .await?;
    let failed = migrating
        .await?
        .expect_err("a cancelled build fails its migration");
    blocker.rollback().await?;
    orkestra_tests::report!(
        "failed run: the build waited {:.2} s for the old snapshot, cancelled after {:.2} s: {failed}",
        waited.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed
            .to_string()
            .contains("canceling statement due to user request"),
        "expected the cancel, got: {failed}"
    );
    assert_eq!(
        indexes(owner, &BUILT).await?,
        vec![(BUILT[0].to_owned(), false)],
        "PostgreSQL leaves the failed concurrent build's index, invalid"
    );

    // 2. The rerun, under load.
    let load = Load::start(&app, owner, probe.tenant, probe.user);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    Migrator::up(owner, None).await?;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let live = load.stop().await?;
    live.report("migration 17 under load", took);
    let mut valid: Vec<(String, bool)> = BUILT
        .iter()
        .map(|name| ((*name).to_owned(), true))
        .collect();
    valid.sort();
    assert_eq!(
        indexes(owner, &BUILT).await?,
        valid,
        "built and valid, nothing invalid left"
    );
    assert_eq!(
        indexes(owner, &DROPPED).await?,
        vec![],
        "the replaced indexes are gone"
    );
    assert!(
        live.writes > 0 && live.samples > 0,
        "the load did not run: {} writes, {} samples",
        live.writes,
        live.samples
    );
    assert!(
        live.longest_lock_wait < LOCK_WAIT_BOUND,
        "a writer waited {:?} on a lock during the migration (bound {LOCK_WAIT_BOUND:?})",
        live.longest_lock_wait
    );
    assert!(
        live.slowest_write < WRITE_BOUND,
        "a write took {:?} during the migration (bound {WRITE_BOUND:?})",
        live.slowest_write
    );

    // 3. The control: a build that blocks writes must show in the same measurements.
    let load = Load::start(&app, owner, probe.tenant, probe.user);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let control = owner.begin().await?;
    control
        .execute_unprepared("CREATE INDEX tasks_control_idx ON tasks (tenant_id, created_at)")
        .await?;
    tokio::time::sleep(CONTROL_HOLD).await;
    control.rollback().await?;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let blocked = load.stop().await?;
    blocked.report("control: plain CREATE INDEX", took);
    assert!(
        blocked.longest_lock_wait >= LOCK_WAIT_BOUND && blocked.slowest_write >= WRITE_BOUND,
        "the probe did not see the blocking build: longest lock wait {:?}, slowest write {:?}",
        blocked.longest_lock_wait,
        blocked.slowest_write
    );
    app.close().await?;
    Ok(())
}
