//! `claim-bench`: workers claiming and completing tasks from shared group queues, through the
//! repository, as the application role: throughput, latency, lost races and double claims.
//!
//! ```text
//! DATABASE_URL=postgres://... claim-bench [--workers 1,2,4,8,16,32] [--seconds S] [--svg FILE]
//! ```
//! (`just bench-claims`.) For each way of taking work and each worker count it makes a tenant of
//! its own with four groups, 32 users (each in two of the groups) and a backlog of assigned group
//! tasks larger than the run can drain, then runs that many workers for `S` seconds (default 5),
//! each as its own user on one shared pool, each completing what it claims. The two ways:
//! - `inbox + claim`: read the first page (10) of the inbox, pick one of its tasks at random and
//!   `claim` it. A claim that lost the race to another worker is refused with
//!   `InvalidTransition`, and the worker reads its inbox again.
//! - `claim_next`: one call that claims the first task of the inbox nobody else is claiming
//!   (`FOR UPDATE SKIP LOCKED`); it cannot lose a race.
//!
//! Times: `take`, from a worker's first attempt to its won claim (inbox reads and lost races
//! included); `cycle`, to the task's completion.
//!
//! A double claim is a task two workers both believe they claimed. Counted twice: by the workers
//! (a task id in two workers' won claims) and in the database (a task whose history holds two
//! `claimed` rows, or that is completed by someone other than its claimer). Both must be 0; the
//! run fails otherwise. Works in a database of its own and drops it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use orkestra_bench::plot::{Chart, Series};
use orkestra_bench::stats::Latencies;
use orkestra_repository::{
    DbConfig, Error, GroupRepository, NewGroup, NewTenant, NewUser, PageRequest, RequestContext,
    TaskRepository, TenantRepository, UserRepository, connect,
};
use orkestra_tests::{TestDb, pg, repo::ctx};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::json;
use uuid::Uuid;

const GROUPS: usize = 4;
const USERS: usize = 32;
/// The inbox page a worker chooses from.
const PAGE: u64 = 10;

struct Options {
    workers: Vec<usize>,
    seconds: u64,
    svg: Option<String>,
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        workers: vec![1, 2, 4, 8, 16, 32],
        seconds: 5,
        svg: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} takes a value"));
        match flag.as_str() {
            "--workers" => {
                options.workers = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--seconds" => options.seconds = value()?.parse()?,
            "--svg" => options.svg = Some(value()?),
            _ => bail!(
                "usage: claim-bench [--workers 1,2,4,8,16,32] [--seconds S] [--svg FILE]; unknown {flag}"
            ),
        }
    }
    ensure!(
        options.workers.iter().all(|n| (1..=USERS).contains(n)),
        "worker counts must be 1 to {USERS}"
    );
    Ok(options)
}

/// A tenant with its groups, users and a backlog of `tasks` assigned group tasks.
struct Queue {
    ctx: RequestContext,
    tenant: Uuid,
    users: Vec<Uuid>,
}

async fn queue(owner: &DatabaseConnection, name: &str, tasks: usize) -> anyhow::Result<Queue> {
    let tenant = TenantRepository::new(owner)
        .create(NewTenant::new(
            format!("Claims {name}"),
            format!("claims-{name}"),
        ))
        .await?
        .id;
    let ctx = ctx(tenant);
    let groups = GroupRepository::new(owner);
    let mut group_ids = Vec::new();
    for g in 0..GROUPS {
        let group = groups
            .create(
                &ctx,
                NewGroup::new(format!("Queue {g}"), format!("queue-{g}")),
            )
            .await?;
        group_ids.push(group.id);
    }
    let mut users = Vec::new();
    for u in 0..USERS {
        let user = UserRepository::new(owner)
            .create(
                &ctx,
                NewUser::new(format!("worker{u}@example.com"), format!("Worker {u}")),
            )
            .await?
            .id;
        groups.add_member(&ctx, group_ids[u % GROUPS], user).await?;
        groups
            .add_member(&ctx, group_ids[(u + 1) % GROUPS], user)
            .await?;
        users.push(user);
    }
    let groups_literal = group_ids
        .iter()
        .map(|g| format!("'{g}'"))
        .collect::<Vec<_>>()
        .join(",");
    // The backlog, in bulk as the owner: what is measured is the claiming.
    owner
        .execute_unprepared(&format!(
            "INSERT INTO tasks (id, tenant_id, workflow_id, workflow_run_id, title, form_schema, \
             assigned_group_id, status, sla_deadline, created_at) \
             SELECT gen_random_uuid(), '{tenant}', 'wf', 'run', 'Task ' || i, '{{}}', \
                    (ARRAY[{groups_literal}]::uuid[])[1 + i % {GROUPS}], 'ASSIGNED', \
                    now() + (i || ' seconds')::interval, now() \
             FROM generate_series(1, {tasks}) AS i"
        ))
        .await?;
    owner.execute_unprepared("ANALYZE tasks").await?;
    Ok(Queue { ctx, tenant, users })
}

/// How a worker takes its next task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    InboxThenClaim,
    ClaimNext,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::InboxThenClaim => "inbox + claim",
            Strategy::ClaimNext => "claim_next",
        }
    }
}

/// What one worker did.
#[derive(Default)]
struct Tally {
    won: Vec<Uuid>,
    lost: u64,
    /// From the first attempt to a won claim.
    take_times: Vec<Duration>,
    /// From the first attempt to the task's completion.
    cycle_times: Vec<Duration>,
}

/// xorshift64: a worker's choice among its inbox page needs no more than this.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn worker(
    db: DatabaseConnection,
    ctx: RequestContext,
    user: Uuid,
    strategy: Strategy,
    seed: u64,
    until: Instant,
) -> anyhow::Result<Tally> {
    let tasks = TaskRepository::new(&db);
    let mut tally = Tally::default();
    let mut state = seed | 1;
    'work: while Instant::now() < until {
        // Timed from the first attempt to the won claim: the inbox reads and the lost races a
        // worker goes through before it has a task are part of taking one.
        let started = Instant::now();
        let pick = match strategy {
            Strategy::InboxThenClaim => loop {
                let page = tasks
                    .find_pending_for_user(&ctx, user, &PageRequest::first(PAGE))
                    .await?;
                if page.items.is_empty() {
                    bail!("the backlog ran dry: raise the task count");
                }
                #[allow(clippy::cast_possible_truncation)]
                let pick = page.items[(next(&mut state) % page.items.len() as u64) as usize].id;
                match tasks.claim(&ctx, pick, user).await {
                    Ok(_) => break pick,
                    Err(Error::InvalidTransition { .. }) => {
                        tally.lost += 1;
                        if Instant::now() >= until {
                            break 'work;
                        }
                    }
                    Err(other) => return Err(other.into()),
                }
            },
            Strategy::ClaimNext => {
                tasks
                    .claim_next(&ctx, user)
                    .await?
                    .context("the backlog ran dry: raise the task count")?
                    .id
            }
        };
        tally.take_times.push(started.elapsed());
        tasks
            .complete(&ctx, pick, user, json!({ "done": true }))
            .await?;
        tally.won.push(pick);
        tally.cycle_times.push(started.elapsed());
    }
    Ok(tally)
}

/// Tasks that the database shows claimed twice, or completed by someone other than their claimer.
async fn double_claims_in_database(
    owner: &DatabaseConnection,
    tenant: Uuid,
) -> anyhow::Result<i64> {
    let row = owner
        .query_one_raw(Statement::from_string(
            owner.get_database_backend(),
            format!(
                "SELECT (SELECT count(*) FROM (SELECT task_id FROM task_history \
                         WHERE tenant_id = '{tenant}' AND action = 'claimed' \
                         GROUP BY task_id HAVING count(*) > 1) twice) \
                      + (SELECT count(*) FROM tasks WHERE tenant_id = '{tenant}' \
                         AND status = 'COMPLETED' AND completed_by IS DISTINCT FROM claimed_by) \
                 AS n"
            ),
        ))
        .await?
        .context("a count")?;
    Ok(row.try_get("", "n")?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let db = TestDb::migrated().await?;
    let url = db
        .url()
        .context("claim-bench needs PostgreSQL: set DATABASE_URL=postgres://...")?;
    let max_workers = options.workers.iter().copied().max().unwrap_or(1);
    let mut config = DbConfig::new(pg::url_as(url, pg::APP_LOGIN)?);
    config.max_connections = u32::try_from(max_workers)? + 2;
    let app = connect(&config).await?;

    println!(
        "{} s per run; each worker its own user (in 2 of {GROUPS} groups), one pool of {} \
         connections as the application role; times in ms",
        options.seconds, config.max_connections
    );
    println!(
        "| way | workers | completed/s | take p50 | take p99 | cycle p50 | cycle p99 | \
         lost races | double claims (workers) | double claims (database) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut throughput = Vec::new();
    let mut p99 = Vec::new();
    for strategy in [Strategy::InboxThenClaim, Strategy::ClaimNext] {
        let mut rates = Vec::new();
        let mut cycle_p99s = Vec::new();
        for &workers in &options.workers {
            // Enough work that nobody runs dry: a generous bound on what one run can complete.
            let backlog = 2_000 + 600 * usize::try_from(options.seconds)? * workers.min(8);
            let name = format!("{}-{workers}", strategy.name().replace([' ', '+', '_'], ""));
            let queue = queue(db.conn(), &name, backlog).await?;
            let until = Instant::now() + Duration::from_secs(options.seconds);
            let started = Instant::now();
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    tokio::spawn(worker(
                        app.clone(),
                        queue.ctx.clone(),
                        queue.users[w],
                        strategy,
                        0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1),
                        until,
                    ))
                })
                .collect();
            let mut tallies = Vec::new();
            for handle in handles {
                tallies.push(handle.await??);
            }
            let elapsed = started.elapsed().as_secs_f64();

            let mut claimed_by: HashMap<Uuid, usize> = HashMap::new();
            for tally in &tallies {
                for id in &tally.won {
                    *claimed_by.entry(*id).or_default() += 1;
                }
            }
            let client_doubles = claimed_by.values().filter(|n| **n > 1).count();
            let database_doubles = double_claims_in_database(db.conn(), queue.tenant).await?;
            let completed: usize = tallies.iter().map(|t| t.won.len()).sum();
            let lost: u64 = tallies.iter().map(|t| t.lost).sum();
            let takes: Latencies = tallies
                .iter()
                .flat_map(|t| t.take_times.iter().copied())
                .collect();
            let cycles: Latencies = tallies
                .iter()
                .flat_map(|t| t.cycle_times.iter().copied())
                .collect();
            #[allow(clippy::cast_precision_loss)]
            let rate = completed as f64 / elapsed;
            let cycle_p99 = cycles.quantile_ms(0.99);
            println!(
                "| {} | {workers} | {rate:.0} | {:.2} | {:.2} | {:.2} | {cycle_p99:.2} | {lost} | \
             {client_doubles} | {database_doubles} |",
                strategy.name(),
                takes.quantile_ms(0.5),
                takes.quantile_ms(0.99),
                cycles.quantile_ms(0.5),
            );
            ensure!(
                client_doubles == 0 && database_doubles == 0,
                "double claims with {workers} workers: {client_doubles} seen by the workers, \
             {database_doubles} in the database"
            );
            #[allow(clippy::cast_precision_loss)]
            let x = workers as f64;
            rates.push((x, rate));
            cycle_p99s.push((x, cycle_p99));
        }
        throughput.push(Series {
            name: strategy.name().into(),
            points: rates,
        });
        p99.push(Series {
            name: strategy.name().into(),
            points: cycle_p99s,
        });
    }
    app.close().await?;

    if let Some(path) = options.svg {
        let chart = Chart {
            title: "Claim and complete from shared group queues".into(),
            x_label: "workers".into(),
            y_label: "completed tasks per second".into(),
            log_x: true,
            series: throughput,
        };
        chart.write(&path)?;
        let latency = Chart {
            title: "Claim and complete: p99 of one cycle".into(),
            x_label: "workers".into(),
            y_label: "ms (taking a task and completing it)".into(),
            log_x: true,
            series: p99,
        };
        let latency_path = path.replace(".svg", "-p99.svg");
        latency.write(&latency_path)?;
        eprintln!("wrote {path} and {latency_path}");
    }
    Ok(())
}
