# The developer's verbs. `just --list` shows them with their purpose.

set shell := ["bash", "-euo", "pipefail", "-c"]

# The PostgreSQL server docker-compose.yml starts; override with DATABASE_URL.
export DATABASE_URL := env("DATABASE_URL", "postgres://orkestra:orkestra@localhost:5432/orkestra")

# The generator version and flags the committed entities were made with. Change them only together
# with a regeneration (`just entities`).
sea_orm_cli_version := "2.0.4"
# Models serialise with camelCase field names and enums with the database's labels ("CLAIMED",
# "ROUND_ROBIN"), as the seed's Prisma client hands them to a REST layer.
entity_flags := "--lib --with-serde both --date-time-crate chrono --entity-format compact --model-extra-attributes 'serde(rename_all = \"camelCase\")' --enum-extra-attributes 'serde(rename_all = \"SCREAMING_SNAKE_CASE\")'"
entity_dir := "entity/src/generated"
# squawk (PyPI: squawk-cli), the migration linter CI runs, and the PostgreSQL version it lints for.
squawk_version := "2.70.0"
squawk_pg_version := "15"

# List the recipes
default:
    @just --list

# Start PostgreSQL from docker-compose.yml and wait until it is healthy
db-up:
    docker compose up -d --wait

# Stop PostgreSQL (the data volume stays)
db-down:
    docker compose down

# Apply every pending migration to DATABASE_URL
migrate:
    sea-orm-cli migrate up

# Regenerate the entities from a scratch database migrated from scratch (needs PostgreSQL)
entities: (_generate entity_dir)

# Fail, printing the difference, if the committed entities differ from what the generator makes
check-entities:
    #!/usr/bin/env bash
    set -euo pipefail
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
    just _generate "$out/generated"
    if ! diff -ru --label committed --label regenerated {{entity_dir}} "$out/generated"; then
        echo "error: {{entity_dir}} is stale; run 'just entities' and commit the result" >&2
        exit 1
    fi
    echo "entities are up to date"

# Run the whole suite on in-memory SQLite
test *args:
    env -u DATABASE_URL cargo test --workspace {{args}}

# Run the whole suite on PostgreSQL (DATABASE_URL), PostgreSQL-only tests included; the fault
# tests restart the server with ORKESTRA_PG_RESTART (default: the docker-compose service)
[doc("Run the whole suite on PostgreSQL (DATABASE_URL), PostgreSQL-only and fault tests included")]
test-pg *args:
    ORKESTRA_PG_RESTART="${ORKESTRA_PG_RESTART:-docker compose restart postgres}" cargo test --workspace {{args}}

# The quickstart and the suites a service relies on, through PgBouncer in transaction mode
# (.ci/pgbouncer: Debian's pgbouncer, installed if missing, started if down and then stopped
# again): the quickstart as orkestra_app / orkestra_system logins on a scratch database migrated
# directly, then rls, isolation, tasks, conversations, faults (all but the server restart) and
# pooler, with every pool of every test through the pooler (ORKESTRA_POOLER_URL); databases are
# created, migrated and dropped directly on DATABASE_URL's server
[doc("The quickstart and the services' suites through PgBouncer in transaction mode")]
test-pgbouncer *args:
    #!/usr/bin/env bash
    set -euo pipefail
    started=$(date +%s)
    was_up=0
    if .ci/pgbouncer status > /dev/null 2>&1; then was_up=1; fi
    url=
    log=$(mktemp)
    cleanup() {
        if [ -n "$url" ]; then cargo run -q -p orkestra-tests --bin scratch-db -- drop "$url" || true; fi
        rm -f "$log"
        if [ "$was_up" = 0 ]; then .ci/pgbouncer down || true; fi
    }
    trap cleanup EXIT
    pooler=$(.ci/pgbouncer up | tail -n 1)
    url=$(cargo run -q -p orkestra-tests --bin scratch-db -- create --pid $$)
    # The scratch database through the pooler as login $1 (password: its name), no statement cache.
    hostport=${pooler#*@}; hostport=${hostport%%/*}
    through() { echo "postgres://$1:$1@${hostport}/${url##*/}?statement-cache-capacity=0"; }
    echo "== quickstart as the owner, directly: it migrates (migrations never go through the pooler)"
    DATABASE_URL="$url" cargo run -q --example quickstart > /dev/null
    for role in orkestra_test_app:orkestra_app orkestra_test_system:orkestra_system; do
        just _test_login_role "$url" "${role%%:*}" "${role#*:}"
    done
    echo "== quickstart through PgBouncer (${hostport}) as orkestra_test_app, tenants on orkestra_test_system"
    DATABASE_URL="$(through orkestra_test_app)" SYSTEM_DATABASE_URL="$(through orkestra_test_system)" \
        cargo run -q --example quickstart
    echo "== the suites through PgBouncer (ORKESTRA_POOLER_URL=${pooler})"
    status=0
    ORKESTRA_POOLER_URL="$pooler" cargo test -p orkestra-tests --test rls --test isolation \
        --test tasks --test conversations --test faults --test pooler {{args}} \
        -- --skip the_repository_recovers_from_a_server_restart_between_calls 2>&1 | tee "$log" || status=$?
    echo "== per suite, through PgBouncer"
    awk '/^ *Running [a-z_]+\.rs/ { suite = $2 }
        /^test result:/ { printf "  %-18s %s passed, %s failed, %s ignored, %s filtered out\n", suite, $4, $6, $8, $12 }' "$log"
    summary=$(.ci/summarize "PostgreSQL through PgBouncer" "$log") || status=1
    echo "$summary"
    if ! grep -q ' 0 ignored' <<< "$summary"; then
        echo "error: tests were ignored through PgBouncer; every selected test must run" >&2
        status=1
    fi
    echo "test-pgbouncer took $(( $(date +%s) - started )) s"
    exit "$status"

# The Citus cluster of the optional docker-compose profile (coordinator on localhost:5433)
[doc("Start a Citus coordinator and worker from docker-compose.yml (profile citus)")]
citus-db-up:
    docker compose --profile citus up -d --wait citus-coordinator citus-worker
    docker compose --profile citus run --rm citus-setup

# Stop the Citus cluster of docker-compose.yml (the data volumes stay)
citus-db-down:
    docker compose --profile citus down

# Everything on a Citus cluster: the migrations (with Citus's defaults in the session: the migration
# sets what it needs), the quickstart as the owner and as the application and system logins, and
# the suite (ORKESTRA_CITUS=1: one shared database, each test alone on it). The cluster is
# CITUS_URL's, or else the local one of ../shared/citus/cluster (started if down, emptied first).
[doc("Migrations, quickstart (owner; app + system logins) and the suite on a Citus cluster")]
test-citus *args:
    #!/usr/bin/env bash
    set -euo pipefail
    cluster="${CITUS_CLUSTER:-../shared/citus/cluster}"
    if [ -n "${CITUS_URL:-}" ]; then
        url="$CITUS_URL"
    else
        if [ ! -x "$cluster" ]; then
            echo "error: no Citus cluster: set CITUS_URL, or CITUS_CLUSTER to the cluster script" >&2
            exit 1
        fi
        url=$("$cluster" up | tail -n 1)
        "$cluster" reset-db > /dev/null
    fi
    sep='?'; case "$url" in *\?*) sep='&' ;; esac
    # The URL as login role $1, whose password is its name (as the test harness's roles).
    as() { local u="${url#*://}"; echo "postgres://$1:$1@${u#*@}"; }
    cluster_is=$(psql "$url" -v ON_ERROR_STOP=1 -Atc "SELECT split_part(citus_version(), ' on ', 1) \
        || ', ' || (SELECT count(*) FROM pg_dist_node) || ' nodes, PostgreSQL ' \
        || current_setting('server_version')")
    echo "== $cluster_is"
    propagate=$(psql "$url" -v ON_ERROR_STOP=1 -Atc 'SHOW citus.propagate_set_commands')
    if [ "$propagate" != local ]; then
        echo "error: the coordinator has citus.propagate_set_commands = $propagate; it must be 'local' (README)" >&2
        exit 1
    fi
    echo "== migrations (sea-orm-cli migrate up), with Citus's defaults in the session"
    sea-orm-cli migrate up -u "${url}${sep}options=-c%20citus.enable_unsafe_triggers%3Doff%20-c%20citus.enable_local_reference_table_foreign_keys%3Don%20-c%20citus.multi_shard_modify_mode%3Dparallel"
    echo "== login roles for the quickstart"
    for role in quickstart_app:orkestra_app quickstart_system:orkestra_system; do
        just _test_login_role "$url" "${role%%:*}" "${role#*:}"
    done
    echo "== quickstart as the owner"
    DATABASE_URL="$url" cargo run -q --example quickstart
    echo "== quickstart as quickstart_app (orkestra_app), tenants on quickstart_system (orkestra_system)"
    DATABASE_URL="$(as quickstart_app)" SYSTEM_DATABASE_URL="$(as quickstart_system)" \
        cargo run -q --example quickstart
    # Never the plain server's restart command here: the restart test would restart it mid-run.
    suite() { env -u ORKESTRA_PG_RESTART DATABASE_URL="$url" ORKESTRA_CITUS=1 \
        ORKESTRA_EXPECT_BACKEND=citus cargo test "$@"; }
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    if [ -z "{{args}}" ]; then
        echo "== routing and commits on the cluster (tests/citus.rs, with their output)"
        suite -p orkestra-tests --test citus -- --nocapture 2>&1 | tee "$log"
        .ci/summarize "Citus (tests/citus.rs)" "$log"
    fi
    echo "== the suite on Citus (cargo test --workspace, ORKESTRA_CITUS=1)"
    status=0
    suite --workspace {{args}} 2>&1 | tee "$log" || status=$?
    .ci/summarize Citus "$log" || status=1
    echo "ignored on Citus (each with its reason):"
    grep -E '^test .* \.\.\. ignored' "$log" | sed 's/^test /  /' || true
    exit "$status"

# Create a login role for a service: a member of orkestra_app, confined by row-level security to
# the tenant each transaction names (run the migrations first; they create orkestra_app)
[doc("Create a service login role in orkestra_app (confined to one tenant per transaction)")]
app-role name password: (_login_role name password "orkestra_app")

# Create a login role for system-level work (tenant administration, audit retention): a member of
# orkestra_system, which row-level security does not confine
[doc("Create a login role in orkestra_system (tenant administration, retention)")]
system-role name password: (_login_role name password "orkestra_system")

# A login role in `group` whose password is its name, as the test harness's roles, on `url`; left as
# it is when it exists (the quickstart runs of test-citus and test-pgbouncer)
[private]
_test_login_role url name group:
    @psql "{{url}}" -v ON_ERROR_STOP=1 -q -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{{name}}') THEN CREATE ROLE {{name}} LOGIN PASSWORD '{{name}}' IN ROLE {{group}}; END IF; END \$\$"

[private]
_login_role name password group:
    printf '%s\n' "CREATE ROLE :\"name\" LOGIN PASSWORD :'password' IN ROLE {{group}};" \
        | psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -q -v name="{{name}}" -v password="{{password}}"
    echo "created login role {{name}} in {{group}}"

# Check formatting and lints (warnings are errors), and that the tenant-scoping lint bites
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    just doc
    just lint-citus
    just lint-scoping

# Build the documentation of the three crates (no dependencies), warnings as errors
doc:
    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p orkestra-entity -p orkestra-migration -p orkestra-repository

# Lint the SQL each migration sends to PostgreSQL with squawk, at the version pinned here (installed
# from PyPI when another is found): migration-sql captures it on a scratch database of DATABASE_URL's
# server. Exceptions, per migration, live in migration/squawk-exceptions.txt. Also proves the lint
# bites: a blocking index build on a live table must fail it.
[doc("Lint every migration's PostgreSQL SQL with squawk (pinned; needs DATABASE_URL's server)")]
lint-migrations:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! squawk --version 2>/dev/null | grep -qx 'squawk {{squawk_version}}'; then
        python3 -m pip install --quiet --disable-pip-version-check 'squawk-cli=={{squawk_version}}'
    fi
    squawk --version
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
    cargo run -q -p orkestra-tests --bin migration-sql -- "$out/sql"
    squawk --pg-version {{squawk_pg_version}} "$out"/sql/*.sql
    printf '%s\n' 'BEGIN;' "SET LOCAL lock_timeout = '5s';" "SET LOCAL statement_timeout = '1min';" \
        'CREATE INDEX tasks_probe_idx ON tasks (tenant_id, created_at);' 'COMMIT;' > "$out/probe.sql"
    probe=$(squawk --pg-version {{squawk_pg_version}} --reporter gcc "$out/probe.sql" || true)
    if ! grep -q 'require-concurrent-index-creation' <<< "$probe"; then
        echo "error: squawk passed a blocking index build on a live table" >&2
        exit 1
    fi
    echo "squawk refuses a blocking index build on a live table, as it should"

# Clippy on the tests compiled only for a Citus cluster (tests/citus.rs): the build script needs a
# postgres:// URL and ORKESTRA_CITUS to compile them in; nothing connects
lint-citus:
    DATABASE_URL=postgres://lint@localhost/lint ORKESTRA_CITUS=1 \
        cargo clippy -p orkestra-tests --all-targets -- -D warnings

# Prove the tenant-scoping lint works: clippy must refuse each way around it in src/lint_probe.rs
lint-scoping:
    #!/usr/bin/env bash
    set -euo pipefail
    if out=$(cargo clippy -q -p orkestra-repository -- --cfg orkestra_lint_probe -D warnings 2>&1); then
        echo "error: clippy accepted the unscoped queries of repository/src/lint_probe.rs" >&2
        exit 1
    fi
    missing=0
    for method in EntityTrait::find ActiveModelTrait::update ModelTrait::delete \
        UpdateStatement::new ConnectionTrait::execute SelectStatement::new \
        ConnectionTrait::query_all ConnectionTrait::execute_unprepared; do
        if grep -q "disallowed method \`sea_orm::\(sea_query::\)\?$method\`" <<< "$out"; then
            echo "refused: $method"
        else
            echo "error: clippy did not refuse $method" >&2
            missing=1
        fi
    done
    if [ "$missing" = 1 ]; then echo "$out" >&2; exit 1; fi
    echo "ok: clippy refuses every unscoped query of the probe"

# Measure what row-level security costs: the same repository calls with and without it (PostgreSQL)
bench-rls rounds="500":
    cargo run --release -q -p orkestra-bench --bin rls-bench -- {{rounds}}

# Fill a database with the scale data set of issue 5 (migrating it first), with a progress bar:
# `target` is a postgres:// URL or `scratch` (a new database on DATABASE_URL's server, whose URL is
# printed; kept until the next `just sweep`). Defaults: 1,000 tenants, 1,000,000 tasks with
# history, 100,000 users, 1,000,000 audit events.
[doc("Fill a database with the scale data set (1,000 tenants, 1M tasks by default)")]
seed-scale target="scratch" tasks="1000000" tenants="1000" users="100000" audit="1000000":
    cargo run --release -q -p orkestra-bench --bin seed-scale -- "{{target}}" --tasks {{tasks}} \
        --tenants {{tenants}} --users {{users}} --audit {{audit}}

# Time the inbox, overdue, task-history, message-page and audit-query operations on databases
# filled by seed-scale (median and p99 per database), as the application role; draws the medians
# against table size in docs/benchmarks/scale.svg
[doc("Time the five read operations on seeded databases; draws docs/benchmarks/scale.svg")]
bench-scale +urls:
    cargo run --release -q -p orkestra-bench --bin scale-bench -- --svg docs/benchmarks/scale.svg {{urls}}

# The scale curve of BENCHMARKS.md from nothing: seeds 10k, 100k and 1M tasks (1,000 tenants, users
# and audit events in proportion; about 7 minutes), runs bench-scale on them, drops them
[doc("Seed 10k, 100k and 1M tasks, run bench-scale on them, drop them (about 7 minutes)")]
bench-curve:
    #!/usr/bin/env bash
    set -euo pipefail
    urls=()
    cleanup() { for url in "${urls[@]}"; do cargo run --release -q -p orkestra-tests --bin scratch-db -- drop "$url"; done; }
    trap cleanup EXIT
    for tasks in 10000 100000 1000000; do
        # Kept even when seeding fails after printing the URL, so that cleanup drops it.
        status=0
        url=$(cargo run --release -q -p orkestra-bench --bin seed-scale -- scratch \
            --tasks $tasks --users $((tasks / 10)) --audit $tasks) || status=$?
        if [ -n "$url" ]; then urls+=("$url"); fi
        if [ "$status" != 0 ]; then exit "$status"; fi
    done
    cargo run --release -q -p orkestra-bench --bin scale-bench -- --svg docs/benchmarks/scale.svg "${urls[@]}"

# Workers (1 to 32) claiming and completing tasks from shared group queues, through the repository
# as the application role: throughput, p99, lost races, double claims (must be 0); draws
# docs/benchmarks/claims.svg and claims-p99.svg (PostgreSQL)
[doc("1 to 32 workers claiming from shared queues: throughput, p99, double claims")]
bench-claims seconds="5":
    cargo run --release -q -p orkestra-bench --bin claim-bench -- --seconds {{seconds}} --svg docs/benchmarks/claims.svg

# Each core operation through the repository and written by hand with sqlx, alternating on the same
# data, as the application role: medians, p99s, ratios, statements and round trips (PostgreSQL)
[doc("Each core operation: repository vs hand-written sqlx, ratios and round trips (PostgreSQL)")]
bench *args:
    #!/usr/bin/env bash
    set -euo pipefail
    case "$DATABASE_URL" in
        postgres://*|postgresql://*) ;;
        *) echo "error: just bench needs PostgreSQL: set DATABASE_URL=postgres://..." >&2; exit 1 ;;
    esac
    cargo run --release -q -p orkestra-bench --bin repo-bench -- {{args}}

# Everything CI runs (.ci/run): lint, both test runs, entity drift, migration CLI round trip
ci:
    bash .ci/run

# Run the migration CLI against a scratch database: up, status, reset, up, fresh, refresh, down
migrate-roundtrip:
    #!/usr/bin/env bash
    set -euo pipefail
    url=$(cargo run -q -p orkestra-tests --bin scratch-db -- create --pid $$)
    trap 'cargo run -q -p orkestra-tests --bin scratch-db -- drop "$url"' EXIT
    for verb in up status reset up fresh refresh down status; do
        echo "== sea-orm-cli migrate $verb"
        sea-orm-cli migrate "$verb" -u "$url"
    done
    cargo run -q -p orkestra-migration -- -u "$url" up

# Run the quickstart on in-memory SQLite, then on a scratch PostgreSQL database (DATABASE_URL's server)
quickstart:
    #!/usr/bin/env bash
    set -euo pipefail
    echo "== quickstart on SQLite (DATABASE_URL unset)"
    env -u DATABASE_URL cargo run -q --example quickstart
    url=$(cargo run -q -p orkestra-tests --bin scratch-db -- create --pid $$)
    trap 'cargo run -q -p orkestra-tests --bin scratch-db -- drop "$url"' EXIT
    echo "== quickstart on PostgreSQL (a scratch database)"
    DATABASE_URL="$url" cargo run -q --example quickstart

# Drop the databases that exited test runs left on DATABASE_URL's server
sweep:
    cargo run -q -p orkestra-tests --bin scratch-db -- sweep

[private]
_generate out:
    #!/usr/bin/env bash
    set -euo pipefail
    version=$(sea-orm-cli --version | awk '{print $2}')
    if [ "$version" != "{{sea_orm_cli_version}}" ]; then
        echo "error: sea-orm-cli $version found; the entities are generated with {{sea_orm_cli_version}}:" >&2
        echo "  cargo install sea-orm-cli@{{sea_orm_cli_version}} --locked" >&2
        exit 1
    fi
    url=$(cargo run -q -p orkestra-tests --bin scratch-db -- create --pid $$)
    trap 'cargo run -q -p orkestra-tests --bin scratch-db -- drop "$url"' EXIT
    cargo run -q -p orkestra-migration -- -u "$url" up > /dev/null
    rm -rf "{{out}}"
    sea-orm-cli generate entity -u "$url" -o "{{out}}" {{entity_flags}} > /dev/null
