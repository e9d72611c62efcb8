//! Hostile and malformed input, table-driven, on both backends: every public repository method that
//! takes text, JSON or ids, given NUL bytes, blank and over-long text, malformed slugs and emails,
//! JSON of the wrong shape, too deep or too large, SQL fragments and awkward Unicode, the nil UUID,
//! ids that do not exist and ids of another tenant's rows, page sizes out of range, and labels
//! that name no enum variant.
//!
//! Each row of a table is one call and what it must come to:
//! - a typed refusal ([`Expect::Invalid`] with the field named, [`Expect::NotFound`],
//!   [`Expect::Reference`] with the constraint, [`Expect::Forbidden`]), with every row of every
//!   table unchanged ([`Snapshot::all`] before and after);
//! - a read that finds nothing ([`Expect::Nothing`]) or something ([`Expect::Read`]), also with the
//!   database unchanged;
//! - or a write that stores the input exactly ([`Expect::Stored`]): the row is read back through
//!   the entity, compared with what the method returned, and each named field compared with the
//!   input (trimmed where the field is documented as trimmed, byte for byte otherwise).
//!
//! Each call runs in a task of its own, so a panic is reported as that row's failure; every failed
//! row is listed at the end, not only the first. Each test function uses one migrated database
//! and prints how many rows it ran (`cargo test --test hostile -- --nocapture`).

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, NaiveDate, TimeDelta, TimeZone, Utc};
use orkestra_entity::{
    audit_events, conversations, groups, messages,
    sea_orm_active_enums::{
        AssignmentStrategy, ConversationStatus, TaskStatus, TenantStatus, UserRole, UserStatus,
    },
    status::UnknownVariant,
    task_history, tasks, tenants, users,
};
use orkestra_repository::{
    Actor, ActorKind, AssignTo, AuditQuery, AuditRepository, ConversationRepository, Error,
    GroupRepository, GroupUpdate, InboxCursor, NewAuditEvent, NewConversation, NewGroup,
    NewMessage, NewTask, NewTenant, NewUser, OverdueCursor, PageRequest, RECORD_MANY_MAX,
    RequestContext, TaskRepository, TenantRepository, TenantUpdate, TimeCursor, UserFilter,
    UserRepository, UserUpdate,
    groups::{MEMBER_GROUP_FKEY, MEMBER_USER_FKEY},
    tasks::{ASSIGNEE_FKEY, CONVERSATION_FKEY, GROUP_FKEY},
    validate::{
        CONTENT_MAX, DESCRIPTION_MAX, EMAIL_MAX, ID_MAX, INSTANT_MAX, INSTANT_MIN, JSON_BYTES_MAX,
        JSON_DEPTH_MAX, LABEL_MAX, NAME_MAX, PAGE_MAX, SLUG_MAX, TITLE_MAX, TRACE_MAX,
    },
};
use orkestra_tests::{TestDb, repo::Snapshot};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The table machinery
// ---------------------------------------------------------------------------------------------

/// What a call returned: the row(s) as stored or read, as JSON, or the repository's error.
type Outcome = Result<Value, Error>;
/// One call, running.
type Fut = Pin<Box<dyn Future<Output = Outcome> + Send>>;
/// One call, ready to run on the test's database.
type Call = Box<dyn FnOnce(Env) -> Fut + Send>;
/// A call that takes the hostile value as an argument, so one call serves a whole list of inputs.
type With<T> = Arc<dyn Fn(Env, T) -> Fut + Send + Sync>;

/// A [`Call`] from an async body that evaluates to an [`Outcome`].
macro_rules! call {
    (|$env:ident| $body:expr) => {
        Box::new(move |$env: Env| -> Fut { Box::pin(async move { $body }) }) as Call
    };
}

/// A [`With`] from an async body that evaluates to an [`Outcome`].
macro_rules! with {
    (|$env:ident, $arg:ident : $t:ty| $body:expr) => {
        Arc::new(move |$env: Env, $arg: $t| -> Fut { Box::pin(async move { $body }) }) as With<$t>
    };
}

/// What a row of the table must come to.
#[derive(Debug, Clone)]
enum Expect {
    /// `Error::Validation` naming this field; nothing written.
    Invalid(&'static str),
    /// `Error::NotFound` of this kind of row; nothing written.
    NotFound(&'static str),
    /// `Error::Reference` naming this constraint; nothing written.
    Reference(&'static str),
    /// `Error::Forbidden`; nothing written.
    Forbidden,
    /// `Error::InvalidState` of this kind of row; nothing written.
    State(&'static str),
    /// `Ok` with nothing in it (`None`, an empty list or page, `false`, `0`); nothing written.
    Nothing,
    /// `Ok`, whatever was read; nothing written.
    Read,
    /// `Ok`, and the row read back holds exactly these values (JSON pointers into it).
    Stored(Vec<(String, Value)>),
}

/// The expectation that the row read back holds `value` at `pointer`.
fn stored(pointer: &str, value: impl Into<Value>) -> Expect {
    Expect::Stored(vec![(pointer.to_owned(), value.into())])
}

/// Rows a call needs that the database should already hold when its snapshot is taken (a fresh
/// task to complete, say); returns the environment naming them.
type Prepare = fn(Env) -> Pin<Box<dyn Future<Output = anyhow::Result<Env>> + Send>>;

/// One row of a table.
struct Case {
    /// The method and what is wrong with its input, for the failure report.
    name: String,
    /// Which hostile input it uses (counted to report how many distinct inputs were tried).
    input: String,
    expect: Expect,
    prepare: Option<Prepare>,
    call: Call,
}

/// The table of one test function.
struct Table {
    area: &'static str,
    cases: Vec<Case>,
    /// What the rows added from now on prepare before their snapshot.
    prepare: Option<Prepare>,
}

impl Table {
    fn new(area: &'static str) -> Table {
        Table {
            area,
            cases: Vec::new(),
            prepare: None,
        }
    }

    fn add(
        &mut self,
        name: impl Into<String>,
        input: impl Into<String>,
        expect: Expect,
        call: Call,
    ) {
        self.cases.push(Case {
            name: name.into(),
            input: input.into(),
            expect,
            prepare: self.prepare,
            call,
        });
    }

    /// Appends `other`'s rows after this table's.
    fn append(&mut self, other: Table) {
        self.cases.extend(other.cases);
    }

    /// Runs every row on `env`'s database in order, then fails listing every row that did not
    /// come to what it must.
    async fn run(self, env: &Env) -> anyhow::Result<()> {
        let count = self.cases.len();
        let inputs: BTreeSet<&str> = self.cases.iter().map(|c| c.input.as_str()).collect();
        let inputs = inputs.len();
        let mut failures = Vec::new();
        for case in self.cases {
            let env = match case.prepare {
                Some(prepare) => prepare(env.clone()).await?,
                None => env.clone(),
            };
            let env = &env;
            let writes = matches!(case.expect, Expect::Stored(_));
            let before = if writes {
                None
            } else {
                Some(Snapshot::all(&env.conn).await?)
            };
            // A task of its own, so that a panic fails this row instead of the whole table.
            let outcome = tokio::spawn((case.call)(env.clone())).await;
            let unchanged = match before {
                Some(before) => Snapshot::all(&env.conn).await? == before,
                None => true,
            };
            let verdict = match outcome {
                Err(join) => Err(format!("panicked: {join}")),
                Ok(outcome) => check(&case.expect, &outcome, unchanged),
            };
            if let Err(why) = verdict {
                failures.push(format!("- {} [{}]: {why}", case.name, case.input));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {count} hostile-input cases ({}) failed:\n{}",
            failures.len(),
            self.area,
            failures.join("\n")
        );
        println!(
            "hostile input ({}): {count} cases, {inputs} distinct inputs, all refused or stored \
             exactly",
            self.area
        );
        Ok(())
    }
}

/// Whether `outcome` is what `expect` asks for.
fn check(expect: &Expect, outcome: &Outcome, unchanged: bool) -> Result<(), String> {
    if let Expect::Stored(fields) = expect {
        let row = outcome
            .as_ref()
            .map_err(|error| format!("expected it stored, got {}", short(error)))?;
        if let Some(returned) = row.get("!returned") {
            return Err(format!(
                "returned {} but stored {}",
                short(returned),
                short(row)
            ));
        }
        for (pointer, want) in fields {
            match row.pointer(pointer) {
                Some(got) if got == want => {}
                got => {
                    return Err(format!(
                        "{pointer}: stored {}, expected {}",
                        short(&got),
                        short(want)
                    ));
                }
            }
        }
        return Ok(());
    }
    if !unchanged {
        return Err(format!("the database changed (outcome {})", short(outcome)));
    }
    let matched = match (expect, outcome) {
        (Expect::Invalid(field), Err(Error::Validation { field: f, .. })) => f == field,
        (Expect::NotFound(entity), Err(Error::NotFound { entity: e, .. })) => e == entity,
        (Expect::Reference(constraint), Err(Error::Reference { constraint: c })) => c == constraint,
        (Expect::Forbidden, Err(Error::Forbidden { .. })) => true,
        (Expect::State(entity), Err(Error::InvalidState { entity: e, .. })) => e == entity,
        (Expect::Nothing, Ok(value)) => is_nothing(value),
        (Expect::Read, Ok(_)) => true,
        _ => false,
    };
    if matched {
        Ok(())
    } else {
        Err(format!("expected {expect:?}, got {}", short(outcome)))
    }
}

/// `None`, `false`, `0`, an empty list, or an empty page.
fn is_nothing(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::Number(n) => n.as_u64() == Some(0),
        Value::Array(items) => items.is_empty(),
        Value::Object(page) => {
            page.get("items")
                .and_then(Value::as_array)
                .is_some_and(Vec::is_empty)
                && page.get("next").is_some_and(Value::is_null)
        }
        Value::String(_) | Value::Bool(true) => false,
    }
}

/// A debug rendering cut to a readable length (some inputs are 256 KiB).
fn short(value: &impl Debug) -> String {
    let text = format!("{value:?}");
    if text.chars().count() > 300 {
        format!(
            "{}... ({} chars)",
            text.chars().take(300).collect::<String>(),
            text.len()
        )
    } else {
        text
    }
}

// ---------------------------------------------------------------------------------------------
// Reading back what a call wrote
// ---------------------------------------------------------------------------------------------

/// A row that can be read back by its key, straight through the entity.
trait Row: Serialize + PartialEq + Debug + Send + Sync + Sized {
    fn reread(
        &self,
        conn: &DatabaseConnection,
    ) -> impl Future<Output = Result<Option<Self>, DbErr>> + Send;
}

impl Row for tenants::Model {
    fn reread(
        &self,
        conn: &DatabaseConnection,
    ) -> impl Future<Output = Result<Option<Self>, DbErr>> + Send {
        tenants::Entity::find_by_id(self.id).one(conn)
    }
}

/// [`Row`] for the tenant-owned entities, keyed `(id, tenant_id)`.
macro_rules! tenant_rows {
    ($($module:ident),*) => {$(
        impl Row for $module::Model {
            fn reread(
                &self,
                conn: &DatabaseConnection,
            ) -> impl Future<Output = Result<Option<Self>, DbErr>> + Send {
                $module::Entity::find_by_id((self.id, self.tenant_id)).one(conn)
            }
        }
    )*};
}

tenant_rows!(users, groups, tasks, conversations, messages, audit_events);

/// The row `returned` names, as stored now, as JSON; `"!returned"` holds what the call returned
/// when that differs from what is stored.
async fn kept<M: Row>(env: &Env, returned: Result<M, Error>) -> Outcome {
    let returned = returned?;
    let stored = returned
        .reread(&env.conn)
        .await?
        .expect("a row the call returned is stored");
    let mut value = serde_json::to_value(&stored).expect("a model serialises");
    if stored != returned {
        value["!returned"] = serde_json::to_value(&returned).expect("a model serialises");
    }
    Ok(value)
}

/// The task as [`kept`], with its newest history row under `"history"`.
async fn kept_with_history(env: &Env, returned: Result<tasks::Model, Error>) -> Outcome {
    let returned = returned?;
    let (id, tenant) = (returned.id, returned.tenant_id);
    let mut value = kept(env, Ok(returned)).await?;
    let newest = task_history::Entity::find()
        .filter(task_history::Column::TenantId.eq(tenant))
        .filter(task_history::Column::TaskId.eq(id))
        .order_by_desc(task_history::Column::Id)
        .limit(1)
        .one(&env.conn)
        .await?;
    value["history"] = serde_json::to_value(newest).expect("a model serialises");
    Ok(value)
}

/// What a read returned, as JSON.
fn out<T: Serialize>(read: Result<T, Error>) -> Outcome {
    Ok(serde_json::to_value(read?).expect("a read serialises"))
}

// ---------------------------------------------------------------------------------------------
// The cast: two tenants with a user, a group, tasks and a conversation each
// ---------------------------------------------------------------------------------------------

/// The rows of one tenant that the calls name.
#[derive(Debug, Clone, Copy)]
struct Ids {
    tenant: Uuid,
    /// An active user, member of `group`.
    user: Uuid,
    group: Uuid,
    /// A task assigned to `user` directly (`ASSIGNED`).
    task: Uuid,
    /// A task of `group`, claimed by `user` (`CLAIMED`).
    claimed: Uuid,
    /// An active conversation (`slack` / `T-1`) with one message.
    conversation: Uuid,
}

/// Everything a call needs: the database, the context of the tenant under test, the ids of its
/// rows and of another tenant's.
#[derive(Clone)]
struct Env {
    /// The owner's connection, which row-level security does not confine: for snapshots and
    /// re-reads.
    conn: DatabaseConnection,
    /// Where the repositories run: as the application role on PostgreSQL, so every hostile call
    /// also goes through the row-level security policies.
    app: DatabaseConnection,
    /// Where tenant administration runs: as the system role on PostgreSQL.
    system: DatabaseConnection,
    /// The context of `me.tenant`.
    ctx: RequestContext,
    /// A context naming a tenant that does not exist.
    ghost: RequestContext,
    me: Ids,
    /// Another tenant, whose rows must stay out of reach.
    them: Ids,
}

fn context(tenant: Uuid) -> RequestContext {
    RequestContext::new(tenant, Actor::system("hostile-tests").expect("a valid id"))
        .and_then(|ctx| ctx.with_trace("trace-1", Some("span-1")))
        .expect("a valid context")
}

async fn cast(conn: &DatabaseConnection, slug: &str) -> anyhow::Result<Ids> {
    let tenant = TenantRepository::new(conn)
        .create(NewTenant::new(slug, slug))
        .await?
        .id;
    let ctx = context(tenant);
    let user = UserRepository::new(conn)
        .create(&ctx, NewUser::new(format!("ada@{slug}.example"), "Ada"))
        .await?
        .id;
    let groups = GroupRepository::new(conn);
    let group = groups
        .create(&ctx, NewGroup::new("Reviewers", "reviewers"))
        .await?
        .id;
    groups.add_member(&ctx, group, user).await?;
    let tasks = TaskRepository::new(conn);
    let task = tasks
        .create(&ctx, plain_task().assigned_to(AssignTo::user(user)))
        .await?
        .id;
    let claimed = tasks
        .create(&ctx, plain_task().assigned_to(AssignTo::group(group)))
        .await?
        .id;
    tasks.claim(&ctx, claimed, user).await?;
    let conversations = ConversationRepository::new(conn);
    let conversation = conversations
        .create(
            &ctx,
            NewConversation::new(json!({"kind": "user"})).external("slack", "T-1"),
        )
        .await?
        .id;
    conversations
        .append_message(&ctx, conversation, NewMessage::new("user", "hello"))
        .await?;
    AuditRepository::new(conn)
        .record(
            &ctx,
            NewAuditEvent::new("task.created", "create", "task", "t-1"),
        )
        .await?;
    Ok(Ids {
        tenant,
        user,
        group,
        task,
        claimed,
        conversation,
    })
}

/// One migrated database with two tenants' casts.
async fn setup() -> anyhow::Result<(TestDb, Env)> {
    let db = TestDb::migrated().await?;
    let conn = db.conn().clone();
    let me = cast(&conn, "acme").await?;
    let them = cast(&conn, "globex").await?;
    let env = Env {
        ctx: context(me.tenant),
        ghost: context(Uuid::now_v7()),
        app: db.app_conn().clone(),
        system: db.system_conn().clone(),
        conn,
        me,
        them,
    };
    Ok((db, env))
}

fn plain_task() -> NewTask {
    NewTask::new(
        "wf-1",
        "run-1",
        "Approve the invoice",
        json!({"type": "object"}),
    )
}

/// A string unique to this call, lower-case letters and digits.
fn unique(prefix: &str) -> String {
    format!("{prefix}{}", Uuid::now_v7().simple())
}

/// Which id a call is given.
type Pick = fn(&Env) -> Uuid;

/// The ids that name nothing the tenant may see: the nil UUID and one that names no row.
const NOWHERE: [(&str, Pick); 2] = [
    ("nil UUID", |_| Uuid::nil()),
    ("random UUID", |_| Uuid::now_v7()),
];

// ---------------------------------------------------------------------------------------------
// The hostile inputs
// ---------------------------------------------------------------------------------------------

/// Texts with nothing in them once trimmed (Unicode `White_Space`), or nothing visible: zero-width
/// characters are kept inside text, but are not content.
const BLANK: [(&str, &str); 6] = [
    ("empty", ""),
    ("space", " "),
    ("ASCII whitespace", " \t\r\n\u{b}\u{c} "),
    (
        "Unicode spaces",
        "\u{a0}\u{1680}\u{2003}\u{2028}\u{2029}\u{202f}\u{3000}\u{85}",
    ),
    ("blank padding", "\u{3000} \u{a0}"),
    ("only invisible characters", "\u{200b}\u{200c}\u{200d}"),
];

/// Control characters other than tab and line breaks: refused in every text field (they would
/// reach terminals, logs and exports as commands).
const CONTROLS: [(&str, &str); 4] = [
    (
        "C0 and C1 controls",
        "bell\u{7} esc\u{1b}[31m del\u{7f} csi\u{9b}",
    ),
    ("escape sequence", "\u{1b}[2J\u{1b}[H"),
    ("DEL inside", "a\u{7f}b"),
    ("C1 next line inside", "a\u{85}b"),
];

/// Tabs and line breaks inside: refused in single-line fields, kept in multi-line ones
/// (descriptions, reasons, message contents).
const LINE_BREAKS: [(&str, &str); 2] = [
    ("line breaks inside", "line one\nline two\r\n\ttabbed"),
    ("tab inside", "a\tb"),
];

/// Texts holding a NUL byte, which PostgreSQL cannot store in `text`.
const NUL: [(&str, &str); 5] = [
    ("NUL alone", "\0"),
    ("NUL inside", "a\0b"),
    ("NUL at the end", "abc\0"),
    ("NUL at the start", "\0abc"),
    ("NUL between spaces", "  \0  "),
];

/// Texts that must be stored as given and read back byte for byte, never interpreted. None starts
/// or ends with whitespace, so trimmed fields store them unchanged too.
const VERBATIM: [(&str, &str); 17] = [
    ("SQL: quote, semicolon, DROP", "'; DROP TABLE tasks; --"),
    ("SQL: double quote OR 1=1", "\" OR 1=1 --"),
    ("SQL: tautology", "' OR '1'='1"),
    (
        "SQL: stacked DELETE",
        "Robert'); DELETE FROM users WHERE ('1'='1",
    ),
    ("SQL: UNION", "x' UNION SELECT id, slug FROM tenants --"),
    ("SQL: comments", "a/* c */b -- d # e"),
    ("SQL: LIKE wildcards", "100% _match_ [a-z]* \\% \\_"),
    (
        "SQL: dollar quotes and placeholders",
        "$1 $$x$$ $tag$y$tag$ ? ?1 :name @p",
    ),
    (
        "backslashes and escapes",
        "C:\\path\\to \\\\ \\' \\\" \\0 \\n \\u0000 \\x00",
    ),
    ("JSON-looking text", "{\"$ne\": null, \"a\": [1]}"),
    ("HTML", "<script>alert('x')</script>&amp;&#0;"),
    (
        "combining marks and case traps",
        "e\u{301}te\u{301} \u{fb01} \u{df} \u{3a3}\u{391}\u{3a3} \u{130}\u{131} \u{212a}",
    ),
    ("emoji with ZWJ and flags", "👩‍👩‍👧‍👦 🏳️‍🌈 🇺🇳 ✔️"),
    (
        "RTL marks and override",
        "\u{200f}مرحبا\u{200e} \u{202e}txet desrever\u{202c} שלום",
    ),
    (
        "zero-width characters and BOM",
        "zero\u{200b}width\u{200d}joiner\u{feff}bom\u{2060}",
    ),
    (
        "astral and noncharacters",
        "𝕌𝕟𝕚𝕔𝕠𝕕𝕖 \u{1d11e} \u{fffe} \u{10ffff}",
    ),
    ("format strings", "%s %d %n {0} {} ${HOME} `id` $(id)"),
];

/// `n` characters of four bytes each, varied so PostgreSQL cannot compress them away: the
/// largest value (in bytes) a limit counted in characters lets through.
fn wide(n: usize) -> String {
    (0..n)
        .map(|i| {
            let offset = u32::try_from(i * 7919 % 0xA6D0).expect("small");
            char::from_u32(0x2_0000 + offset).expect("a CJK Extension B character")
        })
        .collect()
}

/// Ways to get a required JSON object wrong in shape.
fn not_objects() -> Vec<(&'static str, Value)> {
    vec![
        ("JSON array", json!([])),
        ("JSON array of an object", json!([{"a": 1}])),
        ("JSON string", json!("{}")),
        ("JSON number", json!(1)),
        ("JSON true", json!(true)),
        ("JSON null", Value::Null),
    ]
}

/// JSON holding a NUL character, which PostgreSQL's `jsonb` cannot store.
fn json_nul() -> Vec<(&'static str, Value)> {
    vec![
        ("JSON: NUL in a string", json!({"a": "x\u{0}y"})),
        ("JSON: NUL in a key", json!({"a\u{0}": 1})),
        (
            "JSON: NUL deep in arrays",
            json!({"a": [[{"b": ["ok", "\u{0}"]}]]}),
        ),
    ]
}

/// A document whose objects and arrays nest `levels` deep (alternating, the outermost an object),
/// with a number inside the innermost.
fn nested(levels: usize) -> Value {
    let mut value = json!(1);
    for level in 0..levels {
        value = if (levels - level) % 2 == 1 {
            json!({"k": value})
        } else {
            json!([value])
        };
    }
    value
}

/// An object that serialises to exactly `bytes` bytes.
fn sized(bytes: usize) -> Value {
    let value = json!({"a": "x".repeat(bytes - r#"{"a":""}"#.len())});
    assert_eq!(
        serde_json::to_vec(&value).map(|v| v.len()).ok(),
        Some(bytes)
    );
    value
}

/// An object made of every verbatim text, control characters and line breaks included (JSON keeps
/// every character but NUL), as keys and as values, with numbers at their edges.
fn verbatim_json() -> Value {
    let all = || VERBATIM.iter().chain(&CONTROLS).chain(&LINE_BREAKS);
    let texts: serde_json::Map<String, Value> = all()
        .map(|(label, text)| ((*text).to_owned(), json!(label)))
        .collect();
    json!({
        "texts": all().map(|(_, text)| *text).collect::<Vec<_>>(),
        "as keys": texts,
        "numbers": [0, -1, u64::MAX, i64::MIN, 0.5, -2.25, 1e-7, 1.5e300],
        "literals": [true, false, null, {}, [], "", " "],
        "\\u0000 spelled out": "\\u0000",
    })
}

// ---------------------------------------------------------------------------------------------
// Rows generated per field
// ---------------------------------------------------------------------------------------------

/// How a text field treats its input.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// One line, trimmed, then checked and stored (names, ids, labels...).
    Trimmed,
    /// Several lines, trimmed, then checked and stored (descriptions, reasons).
    Prose,
    /// Several lines, stored exactly as given, whitespace included (message contents).
    Verbatim,
}

/// A text argument that a method writes: refused blank, with a NUL or over `max`; stored exactly at
/// `max` (four-byte characters), and for every verbatim text. `pointer` locates it in the row read
/// back.
#[allow(clippy::too_many_arguments)]
fn text_written(
    table: &mut Table,
    method: &str,
    field: &'static str,
    max: usize,
    pointer: &str,
    kept: Kept,
    write: With<String>,
) {
    let mut add = |input: &str, value: String, expect: Expect| {
        let write = write.clone();
        table.add(
            format!("{method}: {field}"),
            input,
            expect,
            call!(|env| write(env, value).await),
        );
    };
    for (input, text) in BLANK {
        add(input, text.to_owned(), Expect::Invalid(field));
    }
    for (input, text) in NUL {
        add(input, text.to_owned(), Expect::Invalid(field));
    }
    add(
        "one over the limit",
        "x".repeat(max + 1),
        Expect::Invalid(field),
    );
    add(
        "one over the limit in 4-byte characters",
        wide(max + 1),
        Expect::Invalid(field),
    );
    add(
        "at the limit in 4-byte characters",
        wide(max),
        stored(pointer, wide(max)),
    );
    add(
        "at the limit in ASCII",
        "y".repeat(max),
        stored(pointer, "y".repeat(max)),
    );
    for (input, text) in CONTROLS {
        add(input, text.to_owned(), Expect::Invalid(field));
    }
    for (input, text) in LINE_BREAKS {
        let expect = match kept {
            Kept::Trimmed => Expect::Invalid(field),
            Kept::Prose | Kept::Verbatim => stored(pointer, text),
        };
        add(input, text.to_owned(), expect);
    }
    let padded = format!("  {}\t\n", wide(max));
    match kept {
        Kept::Trimmed | Kept::Prose => {
            add("at the limit, padded", padded, stored(pointer, wide(max)));
        }
        Kept::Verbatim => {
            add("at the limit, padded", padded, Expect::Invalid(field));
            let padded = format!(" {} ", wide(max - 2));
            add(
                "padded within the limit",
                padded.clone(),
                stored(pointer, padded),
            );
        }
    }
    for (input, text) in VERBATIM {
        assert_eq!(text.trim(), text, "{input}");
        if text.chars().count() <= max {
            add(input, text.to_owned(), stored(pointer, text));
        }
    }
}

/// A text argument that a method looks up by: refused blank, with a NUL or over `max`; any other
/// text is only compared, never interpreted, so the verbatim texts find nothing and change nothing.
fn text_looked_up(
    table: &mut Table,
    method: &str,
    field: &'static str,
    max: usize,
    read: With<String>,
) {
    let mut add = |input: &str, value: String, expect: Expect| {
        let read = read.clone();
        table.add(
            format!("{method}: {field}"),
            input,
            expect,
            call!(|env| read(env, value).await),
        );
    };
    for (input, text) in BLANK
        .into_iter()
        .chain(NUL)
        .chain(CONTROLS)
        .chain(LINE_BREAKS)
    {
        add(input, text.to_owned(), Expect::Invalid(field));
    }
    add(
        "one over the limit",
        "x".repeat(max + 1),
        Expect::Invalid(field),
    );
    add(
        "at the limit in 4-byte characters",
        wide(max),
        Expect::Nothing,
    );
    for (input, text) in VERBATIM {
        if text.chars().count() <= max {
            add(input, text.to_owned(), Expect::Nothing);
        }
    }
}

/// A JSON argument that a method writes: refused with a NUL, deeper than [`JSON_DEPTH_MAX`] or
/// larger than [`JSON_BYTES_MAX`] (and, when `object` is set, when it is not an object); stored
/// exactly at both limits and for a document of every verbatim text.
fn json_written(
    table: &mut Table,
    late: &mut Table,
    method: &str,
    field: &'static str,
    pointer: &str,
    object: bool,
    write: With<Value>,
) {
    let add = |table: &mut Table, input: &str, value: Value, expect: Expect| {
        let write = write.clone();
        table.add(
            format!("{method}: {field}"),
            input,
            expect,
            call!(|env| write(env, value).await),
        );
    };
    for (input, value) in not_objects() {
        let expect = if object {
            Expect::Invalid(field)
        } else if value.is_null() {
            // "no details": see `json_null_is_no_details`.
            continue;
        } else {
            stored(pointer, value.clone())
        };
        add(table, input, value, expect);
    }
    for (input, value) in json_nul() {
        add(table, input, value, Expect::Invalid(field));
    }
    let too_deep = nested(JSON_DEPTH_MAX + 1);
    add(
        table,
        "JSON one level too deep",
        too_deep,
        Expect::Invalid(field),
    );
    add(
        table,
        "JSON 1000 levels deep",
        nested(1000),
        Expect::Invalid(field),
    );
    let deepest = nested(JSON_DEPTH_MAX);
    add(
        table,
        "JSON at the depth limit",
        deepest.clone(),
        stored(pointer, deepest),
    );
    add(
        table,
        "JSON one byte over the size limit",
        sized(JSON_BYTES_MAX + 1),
        Expect::Invalid(field),
    );
    let verbatim = verbatim_json();
    add(
        table,
        "JSON of verbatim texts",
        verbatim.clone(),
        stored(pointer, verbatim),
    );
    // Stored last, so the snapshots of the other rows do not each read 256 KiB more.
    let largest = sized(JSON_BYTES_MAX);
    add(
        late,
        "JSON at the size limit",
        largest.clone(),
        stored(pointer, largest),
    );
}

/// A call given ids that name nothing the tenant may see (nil, random, and `theirs`, another
/// tenant's row), each of which must come to `expect`.
fn ids_refused(
    table: &mut Table,
    method: &str,
    theirs: Option<(&str, Pick)>,
    expect: &Expect,
    call: With<Uuid>,
) {
    for (input, pick) in NOWHERE.into_iter().chain(theirs) {
        let call = call.clone();
        table.add(
            format!("{method}: id"),
            input,
            expect.clone(),
            call!(|env| {
                let id = pick(&env);
                call(env, id).await
            }),
        );
    }
}

/// A page size out of range (0, one over [`PAGE_MAX`], `u64::MAX`) refused, and `PAGE_MAX` read.
fn limits(table: &mut Table, method: &str, call: With<u64>) {
    for (input, limit, expect) in [
        ("page limit 0", 0, Expect::Invalid("limit")),
        (
            "page limit one over",
            PAGE_MAX + 1,
            Expect::Invalid("limit"),
        ),
        ("page limit u64::MAX", u64::MAX, Expect::Invalid("limit")),
        ("page limit at the maximum", PAGE_MAX, Expect::Read),
        ("page limit 1", 1, Expect::Read),
    ] {
        let call = call.clone();
        table.add(
            format!("{method}: limit"),
            input,
            expect,
            call!(|env| call(env, limit).await),
        );
    }
}

/// The furthest instants a caller can name: what a cursor or a time filter from an API may hold.
fn extreme_times() -> Vec<(&'static str, DateTime<FixedOffset>)> {
    let at = |year: i32, offset_hours: i32| {
        NaiveDate::from_ymd_opt(year, 1, 1)
            .and_then(|day| day.and_hms_opt(0, 0, 0))
            .and_then(|time| {
                FixedOffset::east_opt(offset_hours * 3600)?
                    .from_local_datetime(&time)
                    .single()
            })
            .expect("a valid instant")
    };
    let micro = TimeDelta::microseconds(1);
    vec![
        (
            "time: chrono's maximum",
            DateTime::<Utc>::MAX_UTC.fixed_offset(),
        ),
        (
            "time: chrono's minimum",
            DateTime::<Utc>::MIN_UTC.fixed_offset(),
        ),
        ("time: year 10000", at(10_000, 0)),
        ("time: year 1 at UTC+14 (year 0 in UTC)", at(1, 14)),
        (
            "time: a microsecond before the earliest",
            (INSTANT_MIN - micro).fixed_offset(),
        ),
        (
            "time: a microsecond after the latest",
            (INSTANT_MAX + micro).fixed_offset(),
        ),
    ]
}

/// The earliest and latest instants a caller may pass, in UTC and at another offset.
fn limit_times() -> Vec<(&'static str, DateTime<FixedOffset>)> {
    let west = FixedOffset::west_opt(12 * 3600).expect("a valid offset");
    vec![
        ("time: the earliest", INSTANT_MIN.fixed_offset()),
        ("time: the latest", INSTANT_MAX.fixed_offset()),
        (
            "time: the latest, at UTC-12",
            INSTANT_MAX.with_timezone(&west),
        ),
    ]
}

/// Slugs that are not lower-case letters, digits and single inner hyphens.
const BAD_SLUGS: [(&str, &str); 16] = [
    ("slug: upper case", "Acme"),
    ("slug: leading hyphen", "-acme"),
    ("slug: trailing hyphen", "acme-"),
    ("slug: double hyphen", "ac--me"),
    ("slug: inner space", "ac me"),
    ("slug: accented letter", "acm\u{e9}"),
    ("slug: underscore", "a_b"),
    ("slug: dot", "a.b"),
    ("slug: dot-dot", ".."),
    ("slug: slash", "a/b"),
    ("slug: zero-width space", "acme\u{200b}"),
    (
        "slug: full-width letters",
        "\u{ff41}\u{ff43}\u{ff4d}\u{ff45}",
    ),
    ("slug: dotted capital I", "\u{130}stanbul"),
    ("slug: emoji", "\u{1f600}"),
    ("slug: SQL", "'; drop table tenants; --"),
    ("slug: hyphen alone", "-"),
];

/// A slug argument that a method writes.
fn slugs_written(table: &mut Table, method: &str, write: With<String>) {
    let mut add = |input: &str, value: String, expect: Expect| {
        let write = write.clone();
        table.add(
            format!("{method}: slug"),
            input,
            expect,
            call!(|env| write(env, value).await),
        );
    };
    let bad = BLANK
        .into_iter()
        .chain(NUL)
        .chain(BAD_SLUGS)
        .chain(VERBATIM);
    for (input, slug) in bad {
        add(input, slug.to_owned(), Expect::Invalid("slug"));
    }
    add(
        "slug: one over the limit",
        "a".repeat(SLUG_MAX + 1),
        Expect::Invalid("slug"),
    );
    let longest = "a".repeat(SLUG_MAX);
    add(
        "slug: at the limit",
        longest.clone(),
        stored("/slug", longest),
    );
    add("slug: one digit", "0".to_owned(), stored("/slug", "0"));
    add(
        "slug: hyphens",
        "a-1-b-2".to_owned(),
        stored("/slug", "a-1-b-2"),
    );
    add(
        "slug: padded",
        " \tz-9\n ".to_owned(),
        stored("/slug", "z-9"),
    );
}

/// A slug argument that a method looks up by.
fn slugs_looked_up(table: &mut Table, method: &str, read: With<String>) {
    let mut add = |input: &str, value: String, expect: Expect| {
        let read = read.clone();
        table.add(
            format!("{method}: slug"),
            input,
            expect,
            call!(|env| read(env, value).await),
        );
    };
    let bad = BLANK
        .into_iter()
        .chain(NUL)
        .chain(BAD_SLUGS)
        .chain(VERBATIM);
    for (input, slug) in bad {
        add(input, slug.to_owned(), Expect::Invalid("slug"));
    }
    add(
        "slug: one over the limit",
        "a".repeat(SLUG_MAX + 1),
        Expect::Invalid("slug"),
    );
    add(
        "slug: valid, absent",
        "no-such-slug".to_owned(),
        Expect::Nothing,
    );
}

/// Emails that are not one `@` between a local part and a dotted domain, without whitespace or
/// control characters.
const BAD_EMAILS: [(&str, &str); 14] = [
    ("email: no at sign", "ada"),
    ("email: no local part", "@example.com"),
    ("email: no domain", "ada@"),
    ("email: undotted domain", "ada@example"),
    ("email: domain starts with a dot", "ada@.example.com"),
    ("email: domain ends with a dot", "ada@example.com."),
    ("email: inner space", "a b@example.com"),
    ("email: two at signs", "ada@exa@mple.com"),
    ("email: bell character", "ada\u{7}@example.com"),
    ("email: tab inside", "ada\t@example.com"),
    (
        "email: line break inside",
        "ada@example.com\nBcc: eve@example.com",
    ),
    ("email: no-break space inside", "ada\u{a0}x@example.com"),
    ("email: SQL", "'; DROP TABLE users; --"),
    ("email: SQL tautology", "\" OR 1=1 --"),
];

/// Emails that are accepted, and how they are stored (trimmed, lower-cased).
fn good_emails() -> Vec<(&'static str, String, String)> {
    let domain = "@example.com";
    let longest = format!("{}{domain}", "a".repeat(EMAIL_MAX - domain.len()));
    vec![
        ("email: at the limit", longest.clone(), longest),
        (
            "email: quote and plus",
            "O'Reilly+Tag@Example.COM".to_owned(),
            "o'reilly+tag@example.com".to_owned(),
        ),
        (
            "email: SQL in the local part",
            "x';DROP--TABLE@example.com".to_owned(),
            "x';drop--table@example.com".to_owned(),
        ),
        (
            "email: quoted local part",
            "\"q;--\"@example.com".to_owned(),
            "\"q;--\"@example.com".to_owned(),
        ),
        (
            "email: Unicode",
            "\u{dc}n\u{ef}c\u{f8}d\u{e9}@B\u{fc}cher.example".to_owned(),
            "\u{fc}n\u{ef}c\u{f8}d\u{e9}@b\u{fc}cher.example".to_owned(),
        ),
        (
            "email: padded",
            " \t Grace@Example.com \n".to_owned(),
            "grace@example.com".to_owned(),
        ),
    ]
}

/// An email argument that a method writes.
fn emails_written(table: &mut Table, method: &str, write: With<String>) {
    let mut add = |input: &str, value: String, expect: Expect| {
        let write = write.clone();
        table.add(
            format!("{method}: email"),
            input,
            expect,
            call!(|env| write(env, value).await),
        );
    };
    for (input, email) in BLANK.into_iter().chain(NUL).chain(BAD_EMAILS) {
        add(input, email.to_owned(), Expect::Invalid("email"));
    }
    let domain = "@example.com";
    let over = format!("{}{domain}", "a".repeat(EMAIL_MAX + 1 - domain.len()));
    add("email: one over the limit", over, Expect::Invalid("email"));
    // Lower-casing `İ` gives two characters: at the limit as given, one over it as it would be
    // stored.
    let grows = format!(
        "\u{130}{}{domain}",
        "a".repeat(EMAIL_MAX - 1 - domain.len())
    );
    add(
        "email: at the limit, over it once lower-cased",
        grows,
        Expect::Invalid("email"),
    );
    for (input, email, kept) in good_emails() {
        add(input, email, stored("/email", kept));
    }
}

/// An email argument that a method looks up by.
fn emails_looked_up(table: &mut Table, method: &str, read: With<String>) {
    let mut add = |input: &str, value: String, expect: Expect| {
        let read = read.clone();
        table.add(
            format!("{method}: email"),
            input,
            expect,
            call!(|env| read(env, value).await),
        );
    };
    for (input, email) in BLANK.into_iter().chain(NUL).chain(BAD_EMAILS) {
        add(input, email.to_owned(), Expect::Invalid("email"));
    }
    let domain = "@example.com";
    let over = format!("{}{domain}", "a".repeat(EMAIL_MAX + 1 - domain.len()));
    add("email: one over the limit", over, Expect::Invalid("email"));
    add(
        "email: valid, absent",
        "nobody@example.com".to_owned(),
        Expect::Nothing,
    );
}

// ---------------------------------------------------------------------------------------------
// Tenants
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hostile_input_tenants() -> anyhow::Result<()> {
    let (_db, env) = setup().await?;
    let mut table = Table::new("tenants");
    let mut late = Table::new("tenants");

    text_written(
        &mut table,
        "TenantRepository::create",
        "name",
        NAME_MAX,
        "/name",
        Kept::Trimmed,
        with!(|env, name: String| {
            let tenant = NewTenant::new(name, unique("t"));
            kept(
                &env,
                TenantRepository::new(&env.system).create(tenant).await,
            )
            .await
        }),
    );
    text_written(
        &mut table,
        "TenantRepository::update",
        "name",
        NAME_MAX,
        "/name",
        Kept::Trimmed,
        with!(|env, name: String| {
            let update = TenantUpdate {
                name: Some(name),
                ..TenantUpdate::default()
            };
            kept(
                &env,
                TenantRepository::new(&env.system)
                    .update(env.me.tenant, update)
                    .await,
            )
            .await
        }),
    );
    slugs_written(
        &mut table,
        "TenantRepository::create",
        with!(|env, slug: String| {
            let tenant = NewTenant::new("Slugged", slug);
            kept(
                &env,
                TenantRepository::new(&env.system).create(tenant).await,
            )
            .await
        }),
    );
    slugs_looked_up(
        &mut table,
        "TenantRepository::find_by_slug",
        with!(|env, slug: String| out(TenantRepository::new(&env.system)
            .find_by_slug(&slug)
            .await)),
    );
    for field in ["config", "limits"] {
        let (field, pointer): (&'static str, &str) = if field == "config" {
            ("config", "/config")
        } else {
            ("limits", "/limits")
        };
        let create = with!(|env, value: Value| {
            let mut tenant = NewTenant::new("Configured", unique("t"));
            if field == "config" {
                tenant.config = Some(value);
            } else {
                tenant.limits = Some(value);
            }
            kept(
                &env,
                TenantRepository::new(&env.system).create(tenant).await,
            )
            .await
        });
        json_written(
            &mut table,
            &mut late,
            "TenantRepository::create",
            field,
            pointer,
            true,
            create,
        );
        let update = with!(|env, value: Value| {
            let mut update = TenantUpdate::default();
            if field == "config" {
                update.config = Some(value);
            } else {
                update.limits = Some(Some(value));
            }
            kept(
                &env,
                TenantRepository::new(&env.system)
                    .update(env.me.tenant, update)
                    .await,
            )
            .await
        });
        json_written(
            &mut table,
            &mut late,
            "TenantRepository::update",
            field,
            pointer,
            true,
            update,
        );
    }
    table.add(
        "TenantRepository::update: no change",
        "empty update",
        Expect::Invalid("update"),
        call!(|env| kept(
            &env,
            TenantRepository::new(&env.system)
                .update(env.me.tenant, TenantUpdate::default())
                .await
        )
        .await),
    );
    table.add(
        "TenantRepository::update: limits removed",
        "limits: Some(None)",
        stored("/limits", Value::Null),
        call!(|env| {
            let update = TenantUpdate {
                limits: Some(None),
                ..TenantUpdate::default()
            };
            kept(
                &env,
                TenantRepository::new(&env.system)
                    .update(env.me.tenant, update)
                    .await,
            )
            .await
        }),
    );

    ids_refused(
        &mut table,
        "TenantRepository::find_by_id",
        None,
        &Expect::Nothing,
        with!(|env, id: Uuid| out(TenantRepository::new(&env.system).find_by_id(id).await)),
    );
    ids_refused(
        &mut table,
        "TenantRepository::update",
        None,
        &Expect::NotFound("tenant"),
        with!(|env, id: Uuid| {
            let update = TenantUpdate {
                name: Some("Renamed".to_owned()),
                ..TenantUpdate::default()
            };
            out(TenantRepository::new(&env.system).update(id, update).await)
        }),
    );
    ids_refused(
        &mut table,
        "TenantRepository::suspend",
        None,
        &Expect::NotFound("tenant"),
        with!(|env, id: Uuid| out(TenantRepository::new(&env.system).suspend(id).await)),
    );
    ids_refused(
        &mut table,
        "TenantRepository::reactivate",
        None,
        &Expect::NotFound("tenant"),
        with!(|env, id: Uuid| out(TenantRepository::new(&env.system).reactivate(id).await)),
    );
    ids_refused(
        &mut table,
        "TenantRepository::soft_delete",
        None,
        &Expect::NotFound("tenant"),
        with!(|env, id: Uuid| out(TenantRepository::new(&env.system).soft_delete(id).await)),
    );
    limits(
        &mut table,
        "TenantRepository::list",
        with!(|env, limit: u64| out(TenantRepository::new(&env.system)
            .list(None, &PageRequest::first(limit))
            .await)),
    );
    for (input, pick) in NOWHERE {
        table.add(
            "TenantRepository::list: cursor",
            format!("cursor: {input}"),
            Expect::Read,
            call!(|env| out(TenantRepository::new(&env.system)
                .list(
                    Some(TenantStatus::Deleted),
                    &PageRequest::after(pick(&env), 10)
                )
                .await)),
        );
    }

    table.append(late);
    table.run(&env).await
}

// ---------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hostile_input_users() -> anyhow::Result<()> {
    let (_db, env) = setup().await?;
    let mut table = Table::new("users");
    let mut late = Table::new("users");

    text_written(
        &mut table,
        "UserRepository::create",
        "name",
        NAME_MAX,
        "/name",
        Kept::Trimmed,
        with!(|env, name: String| {
            let user = NewUser::new(format!("{}@example.com", unique("u")), name);
            kept(
                &env,
                UserRepository::new(&env.app).create(&env.ctx, user).await,
            )
            .await
        }),
    );
    text_written(
        &mut table,
        "UserRepository::update",
        "name",
        NAME_MAX,
        "/name",
        Kept::Trimmed,
        with!(|env, name: String| {
            let update = UserUpdate {
                name: Some(name),
                ..UserUpdate::default()
            };
            let updated = UserRepository::new(&env.app)
                .update(&env.ctx, env.me.user, update)
                .await;
            kept(&env, updated).await
        }),
    );
    emails_written(
        &mut table,
        "UserRepository::create",
        with!(|env, email: String| {
            let user = NewUser::new(email, "Emailed");
            kept(
                &env,
                UserRepository::new(&env.app).create(&env.ctx, user).await,
            )
            .await
        }),
    );
    emails_looked_up(
        &mut table,
        "UserRepository::find_by_email",
        with!(|env, email: String| out(UserRepository::new(&env.app)
            .find_by_email(&env.ctx, &email)
            .await)),
    );
    // What was stored is found again by any spelling that normalises to it, and only in its tenant.
    for (input, spelling, expect) in [
        (
            "email: quote and plus, shouted",
            " O'REILLY+TAG@EXAMPLE.COM ",
            stored("/email", "o'reilly+tag@example.com"),
        ),
        (
            "email: SQL in the local part, as stored",
            "x';drop--table@example.com",
            stored("/email", "x';drop--table@example.com"),
        ),
    ] {
        table.add(
            "UserRepository::find_by_email: finds the stored row",
            input,
            expect,
            call!(|env| out(UserRepository::new(&env.app)
                .find_by_email(&env.ctx, spelling)
                .await)),
        );
    }
    table.add(
        "UserRepository::find_by_email: another tenant's email",
        "email of another tenant's user",
        Expect::Nothing,
        call!(|env| out(UserRepository::new(&env.app)
            .find_by_email(&env.ctx, "ada@globex.example")
            .await)),
    );
    json_written(
        &mut table,
        &mut late,
        "UserRepository::create",
        "preferences",
        "/preferences",
        true,
        with!(|env, preferences: Value| {
            let user = NewUser {
                preferences: Some(preferences),
                ..NewUser::new(format!("{}@example.com", unique("p")), "Preferring")
            };
            kept(
                &env,
                UserRepository::new(&env.app).create(&env.ctx, user).await,
            )
            .await
        }),
    );
    json_written(
        &mut table,
        &mut late,
        "UserRepository::update",
        "preferences",
        "/preferences",
        true,
        with!(|env, preferences: Value| {
            let update = UserUpdate {
                preferences: Some(preferences),
                ..UserUpdate::default()
            };
            let updated = UserRepository::new(&env.app)
                .update(&env.ctx, env.me.user, update)
                .await;
            kept(&env, updated).await
        }),
    );
    table.add(
        "UserRepository::update: no change",
        "empty update",
        Expect::Invalid("update"),
        call!(|env| out(UserRepository::new(&env.app)
            .update(&env.ctx, env.me.user, UserUpdate::default())
            .await)),
    );
    table.add(
        "UserRepository::create: a tenant that does not exist",
        "context of a missing tenant",
        Expect::Reference("users_tenant_id_fkey"),
        call!(|env| out(UserRepository::new(&env.app)
            .create(&env.ghost, NewUser::new("ghost@example.com", "Ghost"))
            .await)),
    );

    let theirs: Option<(&str, Pick)> = Some(("another tenant's user", |env| env.them.user));
    ids_refused(
        &mut table,
        "UserRepository::find_by_id",
        theirs,
        &Expect::Nothing,
        with!(|env, id: Uuid| out(UserRepository::new(&env.app).find_by_id(&env.ctx, id).await)),
    );
    ids_refused(
        &mut table,
        "UserRepository::update",
        theirs,
        &Expect::NotFound("user"),
        with!(|env, id: Uuid| {
            let update = UserUpdate {
                name: Some("Mallory".to_owned()),
                role: Some(UserRole::Admin),
                preferences: Some(json!({"pwned": true})),
            };
            out(UserRepository::new(&env.app)
                .update(&env.ctx, id, update)
                .await)
        }),
    );
    ids_refused(
        &mut table,
        "UserRepository::deactivate",
        theirs,
        &Expect::NotFound("user"),
        with!(|env, id: Uuid| out(UserRepository::new(&env.app).deactivate(&env.ctx, id).await)),
    );
    ids_refused(
        &mut table,
        "UserRepository::activate",
        theirs,
        &Expect::NotFound("user"),
        with!(|env, id: Uuid| out(UserRepository::new(&env.app).activate(&env.ctx, id).await)),
    );
    ids_refused(
        &mut table,
        "UserRepository::record_activity",
        theirs,
        &Expect::NotFound("user"),
        with!(|env, id: Uuid| out(UserRepository::new(&env.app)
            .record_activity(&env.ctx, id)
            .await)),
    );
    limits(
        &mut table,
        "UserRepository::list",
        with!(|env, limit: u64| out(UserRepository::new(&env.app)
            .list(&env.ctx, &UserFilter::default(), &PageRequest::first(limit))
            .await)),
    );
    for (input, pick) in NOWHERE.into_iter().chain(theirs) {
        table.add(
            "UserRepository::list: cursor",
            format!("cursor: {input}"),
            Expect::Read,
            call!(|env| out(UserRepository::new(&env.app)
                .list(
                    &env.ctx,
                    &UserFilter::default(),
                    &PageRequest::after(pick(&env), 10)
                )
                .await)),
        );
    }

    table.append(late);
    table.run(&env).await
}

// ---------------------------------------------------------------------------------------------
// Groups
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hostile_input_groups() -> anyhow::Result<()> {
    let (_db, env) = setup().await?;
    let mut table = Table::new("groups");

    text_written(
        &mut table,
        "GroupRepository::create",
        "name",
        NAME_MAX,
        "/name",
        Kept::Trimmed,
        with!(|env, name: String| {
            let group = NewGroup::new(name, unique("g"));
            kept(
                &env,
                GroupRepository::new(&env.app).create(&env.ctx, group).await,
            )
            .await
        }),
    );
    text_written(
        &mut table,
        "GroupRepository::create",
        "description",
        DESCRIPTION_MAX,
        "/description",
        Kept::Prose,
        with!(|env, description: String| {
            let group = NewGroup {
                description: Some(description),
                ..NewGroup::new("Described", unique("g"))
            };
            kept(
                &env,
                GroupRepository::new(&env.app).create(&env.ctx, group).await,
            )
            .await
        }),
    );
    text_written(
        &mut table,
        "GroupRepository::update",
        "name",
        NAME_MAX,
        "/name",
        Kept::Trimmed,
        with!(|env, name: String| {
            let update = GroupUpdate {
                name: Some(name),
                ..GroupUpdate::default()
            };
            let updated = GroupRepository::new(&env.app)
                .update(&env.ctx, env.me.group, update)
                .await;
            kept(&env, updated).await
        }),
    );
    text_written(
        &mut table,
        "GroupRepository::update",
        "description",
        DESCRIPTION_MAX,
        "/description",
        Kept::Prose,
        with!(|env, description: String| {
            let update = GroupUpdate {
                description: Some(Some(description)),
                ..GroupUpdate::default()
            };
            let updated = GroupRepository::new(&env.app)
                .update(&env.ctx, env.me.group, update)
                .await;
            kept(&env, updated).await
        }),
    );
    table.add(
        "GroupRepository::update: description removed",
        "description: Some(None)",
        stored("/description", Value::Null),
        call!(|env| {
            let update = GroupUpdate {
                description: Some(None),
                ..GroupUpdate::default()
            };
            let updated = GroupRepository::new(&env.app)
                .update(&env.ctx, env.me.group, update)
                .await;
            kept(&env, updated).await
        }),
    );
    table.add(
        "GroupRepository::update: no change",
        "empty update",
        Expect::Invalid("update"),
        call!(|env| out(GroupRepository::new(&env.app)
            .update(&env.ctx, env.me.group, GroupUpdate::default())
            .await)),
    );
    slugs_written(
        &mut table,
        "GroupRepository::create",
        with!(|env, slug: String| {
            let group = NewGroup::new("Slugged", slug);
            kept(
                &env,
                GroupRepository::new(&env.app).create(&env.ctx, group).await,
            )
            .await
        }),
    );
    slugs_looked_up(
        &mut table,
        "GroupRepository::find_by_slug",
        with!(|env, slug: String| out(GroupRepository::new(&env.app)
            .find_by_slug(&env.ctx, &slug)
            .await)),
    );
    table.add(
        "GroupRepository::create: a tenant that does not exist",
        "context of a missing tenant",
        Expect::Reference("groups_tenant_id_fkey"),
        call!(|env| out(GroupRepository::new(&env.app)
            .create(&env.ghost, NewGroup::new("Ghosts", "ghosts"))
            .await)),
    );

    let their_group: Option<(&str, Pick)> = Some(("another tenant's group", |env| env.them.group));
    let their_user: Option<(&str, Pick)> = Some(("another tenant's user", |env| env.them.user));
    ids_refused(
        &mut table,
        "GroupRepository::find_by_id",
        their_group,
        &Expect::Nothing,
        with!(|env, id: Uuid| out(GroupRepository::new(&env.app)
            .find_by_id(&env.ctx, id)
            .await)),
    );
    ids_refused(
        &mut table,
        "GroupRepository::update",
        their_group,
        &Expect::NotFound("group"),
        with!(|env, id: Uuid| {
            let update = GroupUpdate {
                name: Some("Mallory's".to_owned()),
                description: Some(None),
                assignment_strategy: Some(AssignmentStrategy::Manual),
            };
            out(GroupRepository::new(&env.app)
                .update(&env.ctx, id, update)
                .await)
        }),
    );
    ids_refused(
        &mut table,
        "GroupRepository::delete",
        their_group,
        &Expect::NotFound("group"),
        with!(|env, id: Uuid| out(GroupRepository::new(&env.app).delete(&env.ctx, id).await)),
    );
    ids_refused(
        &mut table,
        "GroupRepository::add_member (group)",
        their_group,
        &Expect::Reference(MEMBER_GROUP_FKEY),
        with!(|env, id: Uuid| out(GroupRepository::new(&env.app)
            .add_member(&env.ctx, id, env.me.user)
            .await)),
    );
    ids_refused(
        &mut table,
        "GroupRepository::add_member (user)",
        their_user,
        &Expect::Reference(MEMBER_USER_FKEY),
        with!(|env, id: Uuid| out(GroupRepository::new(&env.app)
            .add_member(&env.ctx, env.me.group, id)
            .await)),
    );
    ids_refused(
        &mut table,
        "GroupRepository::remove_member (group)",
        their_group,
        &Expect::Nothing,
        with!(|env, id: Uuid| out(GroupRepository::new(&env.app)
            .remove_member(&env.ctx, id, env.me.user)
            .await)),
    );
    ids_refused(
        &mut table,
        "GroupRepository::remove_member (user)",
        their_user,
        &Expect::Nothing,
        with!(|env, id: Uuid| out(GroupRepository::new(&env.app)
            .remove_member(&env.ctx, env.me.group, id)
            .await)),
    );
    table.add(
        "GroupRepository::remove_member: another tenant's membership",
        "another tenant's group and user",
        Expect::Nothing,
        call!(|env| out(GroupRepository::new(&env.app)
            .remove_member(&env.ctx, env.them.group, env.them.user)
            .await)),
    );
    ids_refused(
        &mut table,
        "GroupRepository::list_members",
        their_group,
        &Expect::Nothing,
        with!(|env, id: Uuid| out(GroupRepository::new(&env.app)
            .list_members(&env.ctx, id, &PageRequest::first(10))
            .await)),
    );
    ids_refused(
        &mut table,
        "GroupRepository::list_user_groups",
        their_user,
        &Expect::Nothing,
        with!(|env, id: Uuid| out(GroupRepository::new(&env.app)
            .list_user_groups(&env.ctx, id)
            .await)),
    );
    ids_refused(
        &mut table,
        "GroupRepository::member_workloads",
        their_group,
        &Expect::Nothing,
        with!(|env, id: Uuid| out(GroupRepository::new(&env.app)
            .member_workloads(&env.ctx, id)
            .await
            .map(|members| {
                let pairs = members.into_iter().map(|m| (m.user_id, m.open_tasks));
                pairs.collect::<Vec<_>>()
            }))),
    );
    limits(
        &mut table,
        "GroupRepository::list",
        with!(|env, limit: u64| out(GroupRepository::new(&env.app)
            .list(&env.ctx, &PageRequest::first(limit))
            .await)),
    );
    limits(
        &mut table,
        "GroupRepository::list_members",
        with!(|env, limit: u64| out(GroupRepository::new(&env.app)
            .list_members(&env.ctx, env.me.group, &PageRequest::first(limit))
            .await)),
    );
    for (method, call) in [
        (
            "GroupRepository::archive",
            with!(|env, id: Uuid| out(GroupRepository::new(&env.app).archive(&env.ctx, id).await)),
        ),
        (
            "GroupRepository::restore",
            with!(|env, id: Uuid| out(GroupRepository::new(&env.app).restore(&env.ctx, id).await)),
        ),
    ] {
        ids_refused(
            &mut table,
            method,
            their_group,
            &Expect::NotFound("group"),
            call,
        );
    }
    table.add(
        "GroupRepository::restore: an active group",
        "active group",
        Expect::State("group"),
        call!(|env| out(GroupRepository::new(&env.app)
            .restore(&env.ctx, env.me.group)
            .await)),
    );
    limits(
        &mut table,
        "TaskRepository::list_in_archived_groups",
        with!(|env, limit: u64| out(TaskRepository::new(&env.app)
            .list_in_archived_groups(&env.ctx, &PageRequest::first(limit))
            .await)),
    );

    // What an archived group refuses: each row works on a group archived for it.
    table.prepare = Some(archived_group);
    table.add(
        "GroupRepository::archive: archived already",
        "archived group",
        Expect::State("group"),
        call!(|env| out(GroupRepository::new(&env.app)
            .archive(&env.ctx, env.me.group)
            .await)),
    );
    table.add(
        "GroupRepository::add_member: archived group",
        "archived group",
        Expect::State("group"),
        call!(|env| out(GroupRepository::new(&env.app)
            .add_member(&env.ctx, env.me.group, env.me.user)
            .await)),
    );
    table.add(
        "TaskRepository::create: assigned to an archived group",
        "archived group",
        Expect::State("group"),
        call!(|env| out(TaskRepository::new(&env.app)
            .create(
                &env.ctx,
                plain_task().assigned_to(AssignTo::group(env.me.group))
            )
            .await)),
    );
    table.add(
        "TaskRepository::assign: to an archived group",
        "archived group",
        Expect::State("group"),
        call!(|env| out(TaskRepository::new(&env.app)
            .assign(&env.ctx, env.me.task, AssignTo::group(env.me.group))
            .await)),
    );
    table.add(
        "TaskRepository::escalate: to an archived group",
        "archived group",
        Expect::State("group"),
        call!(|env| out(TaskRepository::new(&env.app)
            .escalate(
                &env.ctx,
                env.me.task,
                Some(AssignTo::group(env.me.group)),
                None
            )
            .await)),
    );
    table.add(
        "TaskRepository::find_pending_for_user: a member of an archived group",
        "archived group",
        Expect::Nothing,
        call!(|env| out(TaskRepository::new(&env.app)
            .find_pending_for_user(&env.ctx, env.me.user, &PageRequest::first(50))
            .await
            .map(|page| {
                // Only the archived group's task counts: the user's own stay in the inbox.
                let group = Some(env.me.group);
                let items = page.items.into_iter();
                items
                    .filter(|t| t.assigned_group_id == group)
                    .collect::<Vec<_>>()
            }))),
    );
    table.add(
        "TaskRepository::claim: through an archived group",
        "archived group",
        Expect::Forbidden,
        call!(|env| out(TaskRepository::new(&env.app)
            .claim(&env.ctx, env.me.claimed, env.me.user)
            .await)),
    );
    table.prepare = None;
    table.run(&env).await
}

// ---------------------------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------------------------

/// A fresh task assigned directly to the tenant's user, in place of `env.me.task`.
fn fresh_task(mut env: Env) -> Pin<Box<dyn Future<Output = anyhow::Result<Env>> + Send>> {
    Box::pin(async move {
        let task = TaskRepository::new(&env.app)
            .create(
                &env.ctx,
                plain_task().assigned_to(AssignTo::user(env.me.user)),
            )
            .await?;
        env.me.task = task.id;
        Ok(env)
    })
}

/// Archives a new group of which the user is a member and which holds an assigned task
/// (`me.claimed`, unclaimed here): `me.group` names the group.
fn archived_group(mut env: Env) -> Pin<Box<dyn Future<Output = anyhow::Result<Env>> + Send>> {
    Box::pin(async move {
        let groups = GroupRepository::new(&env.app);
        let group = groups
            .create(&env.ctx, NewGroup::new("Retired", unique("r")))
            .await?
            .id;
        groups.add_member(&env.ctx, group, env.me.user).await?;
        let task = TaskRepository::new(&env.app)
            .create(&env.ctx, plain_task().assigned_to(AssignTo::group(group)))
            .await?;
        groups.archive(&env.ctx, group).await?;
        env.me.group = group;
        env.me.claimed = task.id;
        Ok(env)
    })
}

#[tokio::test]
async fn hostile_input_tasks() -> anyhow::Result<()> {
    let (_db, env) = setup().await?;
    let mut table = Table::new("tasks");
    let mut late = Table::new("tasks");

    text_written(
        &mut table,
        "TaskRepository::create",
        "workflow_id",
        ID_MAX,
        "/workflowId",
        Kept::Trimmed,
        with!(|env, id: String| {
            let task = NewTask::new(id, "run-1", "Title", json!({}));
            kept(
                &env,
                TaskRepository::new(&env.app).create(&env.ctx, task).await,
            )
            .await
        }),
    );
    text_written(
        &mut table,
        "TaskRepository::create",
        "workflow_run_id",
        ID_MAX,
        "/workflowRunId",
        Kept::Trimmed,
        with!(|env, id: String| {
            let task = NewTask::new("wf-1", id, "Title", json!({}));
            kept(
                &env,
                TaskRepository::new(&env.app).create(&env.ctx, task).await,
            )
            .await
        }),
    );
    // Both ids at their limit in four-byte characters: the largest key of the workflow index.
    table.add(
        "TaskRepository::create: workflow_id and workflow_run_id",
        "both at the limit in 4-byte characters",
        Expect::Stored(vec![
            ("/workflowId".to_owned(), json!(wide(ID_MAX))),
            (
                "/workflowRunId".to_owned(),
                json!(wide(ID_MAX).chars().rev().collect::<String>()),
            ),
        ]),
        call!(|env| {
            let run: String = wide(ID_MAX).chars().rev().collect();
            let task = NewTask::new(wide(ID_MAX), run, "Title", json!({}));
            kept(
                &env,
                TaskRepository::new(&env.app).create(&env.ctx, task).await,
            )
            .await
        }),
    );
    text_written(
        &mut table,
        "TaskRepository::create",
        "title",
        TITLE_MAX,
        "/title",
        Kept::Trimmed,
        with!(|env, title: String| {
            let task = NewTask::new("wf-1", "run-1", title, json!({}));
            kept(
                &env,
                TaskRepository::new(&env.app).create(&env.ctx, task).await,
            )
            .await
        }),
    );
    text_written(
        &mut table,
        "TaskRepository::create",
        "description",
        DESCRIPTION_MAX,
        "/description",
        Kept::Prose,
        with!(|env, description: String| {
            let task = NewTask {
                description: Some(description),
                ..plain_task()
            };
            kept(
                &env,
                TaskRepository::new(&env.app).create(&env.ctx, task).await,
            )
            .await
        }),
    );
    for (field, pointer) in [
        ("form_schema", "/formSchema"),
        ("context", "/context"),
        ("sla.config", "/slaConfig"),
    ] {
        json_written(
            &mut table,
            &mut late,
            "TaskRepository::create",
            field,
            pointer,
            true,
            with!(|env, value: Value| {
                let task = match field {
                    "form_schema" => NewTask::new("wf-1", "run-1", "Title", value),
                    "context" => NewTask {
                        context: Some(value),
                        ..plain_task()
                    },
                    _ => plain_task().with_sla(Utc::now().fixed_offset(), value),
                };
                kept(
                    &env,
                    TaskRepository::new(&env.app).create(&env.ctx, task).await,
                )
                .await
            }),
        );
    }
    // Looking tasks up by workflow run: refused texts, texts that match nothing, and the verbatim
    // ids stored above found again exactly.
    text_looked_up(
        &mut table,
        "TaskRepository::list_by_workflow_run",
        "workflow_id",
        ID_MAX,
        with!(|env, id: String| out(TaskRepository::new(&env.app)
            .list_by_workflow_run(&env.ctx, &id, "no-such-run", &PageRequest::first(10))
            .await)),
    );
    text_looked_up(
        &mut table,
        "TaskRepository::list_by_workflow_run",
        "workflow_run_id",
        ID_MAX,
        with!(|env, id: String| out(TaskRepository::new(&env.app)
            .list_by_workflow_run(&env.ctx, "no-such-workflow", &id, &PageRequest::first(10))
            .await)),
    );
    for (input, text) in VERBATIM {
        table.add(
            "TaskRepository::list_by_workflow_run: finds the stored task",
            input,
            Expect::Stored(vec![
                ("/items/0/workflowId".to_owned(), json!(text)),
                ("/next".to_owned(), Value::Null),
            ]),
            call!(|env| out(TaskRepository::new(&env.app)
                .list_by_workflow_run(&env.ctx, text, "run-1", &PageRequest::first(10))
                .await)),
        );
    }

    // Assignments and references.
    let nobody = AssignTo {
        user_id: None,
        group_id: None,
    };
    table.add(
        "TaskRepository::create: assign_to",
        "assignment naming nobody",
        Expect::Invalid("assign_to"),
        call!(|env| out(TaskRepository::new(&env.app)
            .create(&env.ctx, plain_task().assigned_to(nobody))
            .await)),
    );
    let their_user: Option<(&str, Pick)> = Some(("another tenant's user", |env| env.them.user));
    let their_group: Option<(&str, Pick)> = Some(("another tenant's group", |env| env.them.group));
    let their_task: Option<(&str, Pick)> = Some(("another tenant's task", |env| env.them.task));
    let their_conversation: Option<(&str, Pick)> =
        Some(("another tenant's conversation", |env| env.them.conversation));
    ids_refused(
        &mut table,
        "TaskRepository::create (assignee)",
        their_user,
        &Expect::Reference(ASSIGNEE_FKEY),
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .create(&env.ctx, plain_task().assigned_to(AssignTo::user(id)))
            .await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::create (group)",
        their_group,
        &Expect::Reference(GROUP_FKEY),
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .create(&env.ctx, plain_task().assigned_to(AssignTo::group(id)))
            .await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::create (conversation)",
        their_conversation,
        &Expect::Reference(CONVERSATION_FKEY),
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .create(&env.ctx, plain_task().in_conversation(id))
            .await)),
    );
    table.add(
        "TaskRepository::create: a tenant that does not exist",
        "context of a missing tenant",
        Expect::Reference("tasks_tenant_id_fkey"),
        call!(|env| out(TaskRepository::new(&env.app)
            .create(&env.ghost, plain_task())
            .await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::find_by_id",
        their_task,
        &Expect::Nothing,
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app).find_by_id(&env.ctx, id).await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::history",
        their_task,
        &Expect::Nothing,
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app).history(&env.ctx, id).await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::find_pending_for_user",
        their_user,
        &Expect::Nothing,
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .find_pending_for_user(&env.ctx, id, &PageRequest::first(10))
            .await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::assign (task)",
        their_task,
        &Expect::NotFound("task"),
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .assign(&env.ctx, id, AssignTo::user(env.me.user))
            .await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::assign (assignee)",
        their_user,
        &Expect::Reference(ASSIGNEE_FKEY),
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .assign(&env.ctx, env.me.task, AssignTo::user(id))
            .await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::assign (group)",
        their_group,
        &Expect::Reference(GROUP_FKEY),
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .assign(&env.ctx, env.me.task, AssignTo::group(id))
            .await)),
    );
    table.add(
        "TaskRepository::assign: assign_to",
        "assignment naming nobody",
        Expect::Invalid("assign_to"),
        call!(|env| out(TaskRepository::new(&env.app)
            .assign(&env.ctx, env.me.task, nobody)
            .await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::claim (task)",
        their_task,
        &Expect::NotFound("task"),
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .claim(&env.ctx, id, env.me.user)
            .await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::claim (user)",
        their_user,
        &Expect::Forbidden,
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .claim(&env.ctx, env.me.task, id)
            .await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::claim_next (user)",
        their_user,
        &Expect::NotFound("user"),
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app).claim_next(&env.ctx, id).await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::release (task)",
        their_task,
        &Expect::NotFound("task"),
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .release(&env.ctx, id, env.me.user)
            .await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::release (user)",
        their_user,
        &Expect::Forbidden,
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .release(&env.ctx, env.me.claimed, id)
            .await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::complete (task)",
        their_task,
        &Expect::NotFound("task"),
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .complete(&env.ctx, id, env.me.user, json!({"ok": true}))
            .await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::complete (user)",
        their_user,
        &Expect::Forbidden,
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .complete(&env.ctx, env.me.task, id, json!({"ok": true}))
            .await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::escalate (task)",
        their_task,
        &Expect::NotFound("task"),
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .escalate(&env.ctx, id, None, Some(json!("overdue")))
            .await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::escalate (assignee)",
        their_user,
        &Expect::Reference(ASSIGNEE_FKEY),
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .escalate(&env.ctx, env.me.task, Some(AssignTo::user(id)), None)
            .await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::escalate (group)",
        their_group,
        &Expect::Reference(GROUP_FKEY),
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .escalate(&env.ctx, env.me.task, Some(AssignTo::group(id)), None)
            .await)),
    );
    table.add(
        "TaskRepository::escalate: assign_to",
        "assignment naming nobody",
        Expect::Invalid("assign_to"),
        call!(|env| out(TaskRepository::new(&env.app)
            .escalate(&env.ctx, env.me.task, Some(nobody), None)
            .await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::expire",
        their_task,
        &Expect::NotFound("task"),
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app).expire(&env.ctx, id).await)),
    );
    ids_refused(
        &mut table,
        "TaskRepository::cancel",
        their_task,
        &Expect::NotFound("task"),
        with!(|env, id: Uuid| out(TaskRepository::new(&env.app)
            .cancel(&env.ctx, id, Some("'; DROP TABLE tasks; --"))
            .await)),
    );

    // Texts and JSON that state changes write: each stored case works on a fresh task.
    table.prepare = Some(fresh_task);
    late.prepare = Some(fresh_task);
    text_written(
        &mut table,
        "TaskRepository::cancel",
        "reason",
        DESCRIPTION_MAX,
        "/history/details/reason",
        Kept::Prose,
        with!(|env, reason: String| {
            let cancelled = TaskRepository::new(&env.app)
                .cancel(&env.ctx, env.me.task, Some(&reason))
                .await;
            kept_with_history(&env, cancelled).await
        }),
    );
    json_written(
        &mut table,
        &mut late,
        "TaskRepository::complete",
        "form_data",
        "/formData",
        true,
        with!(|env, form_data: Value| {
            let completed = TaskRepository::new(&env.app)
                .complete(&env.ctx, env.me.task, env.me.user, form_data)
                .await;
            kept(&env, completed).await
        }),
    );
    json_written(
        &mut table,
        &mut late,
        "TaskRepository::escalate",
        "reason",
        "/history/details/reason",
        false,
        with!(|env, reason: Value| {
            let escalated = TaskRepository::new(&env.app)
                .escalate(&env.ctx, env.me.task, None, Some(reason))
                .await;
            kept_with_history(&env, escalated).await
        }),
    );
    table.prepare = None;
    late.prepare = None;

    // Page sizes and cursors.
    limits(
        &mut table,
        "TaskRepository::find_pending_for_user",
        with!(|env, limit: u64| out(TaskRepository::new(&env.app)
            .find_pending_for_user(&env.ctx, env.me.user, &PageRequest::first(limit))
            .await)),
    );
    limits(
        &mut table,
        "TaskRepository::list_by_workflow_run",
        with!(|env, limit: u64| out(TaskRepository::new(&env.app)
            .list_by_workflow_run(&env.ctx, "wf-1", "run-1", &PageRequest::first(limit))
            .await)),
    );
    limits(
        &mut table,
        "TaskRepository::list_by_status",
        with!(|env, limit: u64| out(TaskRepository::new(&env.app)
            .list_by_status(&env.ctx, TaskStatus::Assigned, &PageRequest::first(limit))
            .await)),
    );
    limits(
        &mut table,
        "TaskRepository::overdue",
        with!(|env, limit: u64| out(TaskRepository::new(&env.app)
            .overdue(
                &env.ctx,
                Utc::now().fixed_offset(),
                &PageRequest::first(limit)
            )
            .await)),
    );

    // Times from outside: deadlines, the sweeper's "now", and cursors.
    for (input, time) in extreme_times() {
        table.add(
            "TaskRepository::create: sla.deadline",
            input,
            Expect::Invalid("sla.deadline"),
            call!(|env| out(TaskRepository::new(&env.app)
                .create(&env.ctx, plain_task().with_sla(time, json!({})))
                .await)),
        );
        table.add(
            "TaskRepository::overdue: now",
            input,
            Expect::Invalid("now"),
            call!(|env| out(TaskRepository::new(&env.app)
                .overdue(&env.ctx, time, &PageRequest::first(10))
                .await)),
        );
        table.add(
            "TaskRepository::overdue: cursor",
            input,
            Expect::Invalid("after"),
            call!(|env| {
                let cursor = OverdueCursor {
                    sla_deadline: time,
                    id: Uuid::nil(),
                };
                out(TaskRepository::new(&env.app)
                    .overdue(
                        &env.ctx,
                        Utc::now().fixed_offset(),
                        &PageRequest::after(cursor, 10),
                    )
                    .await)
            }),
        );
        table.add(
            "TaskRepository::find_pending_for_user: cursor",
            input,
            Expect::Invalid("after"),
            call!(|env| {
                let cursor = InboxCursor {
                    sla_deadline: Some(time),
                    created_at: time,
                    id: Uuid::nil(),
                };
                out(TaskRepository::new(&env.app)
                    .find_pending_for_user(&env.ctx, env.me.user, &PageRequest::after(cursor, 10))
                    .await)
            }),
        );
    }

    for (input, time) in limit_times() {
        table.add(
            "TaskRepository::create: sla.deadline",
            input,
            stored(
                "/slaDeadline",
                json!(time.with_timezone(&Utc).fixed_offset()),
            ),
            call!(|env| {
                let task = plain_task().with_sla(time, json!({}));
                kept(
                    &env,
                    TaskRepository::new(&env.app).create(&env.ctx, task).await,
                )
                .await
            }),
        );
        table.add(
            "TaskRepository::overdue: now",
            input,
            Expect::Read,
            call!(|env| out(TaskRepository::new(&env.app)
                .overdue(&env.ctx, time, &PageRequest::first(10))
                .await)),
        );
        table.add(
            "TaskRepository::overdue: cursor",
            input,
            Expect::Read,
            call!(|env| {
                let cursor = OverdueCursor {
                    sla_deadline: time,
                    id: Uuid::nil(),
                };
                out(TaskRepository::new(&env.app)
                    .overdue(
                        &env.ctx,
                        Utc::now().fixed_offset(),
                        &PageRequest::after(cursor, 10),
                    )
                    .await)
            }),
        );
        table.add(
            "TaskRepository::find_pending_for_user: cursor",
            input,
            Expect::Read,
            call!(|env| {
                let cursor = InboxCursor {
                    sla_deadline: Some(time),
                    created_at: time,
                    id: Uuid::nil(),
                };
                out(TaskRepository::new(&env.app)
                    .find_pending_for_user(&env.ctx, env.me.user, &PageRequest::after(cursor, 10))
                    .await)
            }),
        );
    }

    table.append(late);
    table.run(&env).await
}

// ---------------------------------------------------------------------------------------------
// Conversations
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hostile_input_conversations() -> anyhow::Result<()> {
    let (_db, env) = setup().await?;
    let mut table = Table::new("conversations");
    let mut late = Table::new("conversations");
    let tenant_fkey = "conversations_tenant_id_fkey";

    json_written(
        &mut table,
        &mut late,
        "ConversationRepository::create",
        "participant",
        "/participant",
        true,
        with!(|env, participant: Value| {
            let conversation = NewConversation::new(participant);
            kept(
                &env,
                ConversationRepository::new(&env.app)
                    .create(&env.ctx, conversation)
                    .await,
            )
            .await
        }),
    );
    text_written(
        &mut table,
        "ConversationRepository::create",
        "external_id",
        ID_MAX,
        "/externalId",
        Kept::Trimmed,
        with!(|env, external_id: String| {
            let conversation = NewConversation::new(json!({})).external(unique("c"), external_id);
            kept(
                &env,
                ConversationRepository::new(&env.app)
                    .create(&env.ctx, conversation)
                    .await,
            )
            .await
        }),
    );
    text_written(
        &mut table,
        "ConversationRepository::create",
        "channel",
        LABEL_MAX,
        "/channel",
        Kept::Trimmed,
        with!(|env, channel: String| {
            let conversation = NewConversation::new(json!({})).external(channel, unique("x"));
            kept(
                &env,
                ConversationRepository::new(&env.app)
                    .create(&env.ctx, conversation)
                    .await,
            )
            .await
        }),
    );
    // The widest key of the (channel, external id) index.
    table.add(
        "ConversationRepository::create: channel and external_id",
        "both at the limit in 4-byte characters",
        Expect::Stored(vec![
            ("/channel".to_owned(), json!(wide(LABEL_MAX))),
            ("/externalId".to_owned(), json!(wide(ID_MAX))),
        ]),
        call!(|env| {
            let conversation =
                NewConversation::new(json!({})).external(wide(LABEL_MAX), wide(ID_MAX));
            kept(
                &env,
                ConversationRepository::new(&env.app)
                    .create(&env.ctx, conversation)
                    .await,
            )
            .await
        }),
    );
    table.add(
        "ConversationRepository::create: a tenant that does not exist",
        "context of a missing tenant",
        Expect::Reference(tenant_fkey),
        call!(|env| out(ConversationRepository::new(&env.app)
            .create(&env.ghost, NewConversation::new(json!({})))
            .await)),
    );
    text_written(
        &mut table,
        "ConversationRepository::get_or_create",
        "channel",
        LABEL_MAX,
        "/channel",
        Kept::Trimmed,
        with!(|env, channel: String| {
            let got = ConversationRepository::new(&env.app)
                .get_or_create(&env.ctx, &channel, &unique("x"), json!({}))
                .await;
            kept(&env, got.map(|(conversation, _)| conversation)).await
        }),
    );
    text_written(
        &mut table,
        "ConversationRepository::get_or_create",
        "external_id",
        ID_MAX,
        "/externalId",
        Kept::Trimmed,
        with!(|env, external_id: String| {
            let got = ConversationRepository::new(&env.app)
                .get_or_create(&env.ctx, &unique("c"), &external_id, json!({}))
                .await;
            kept(&env, got.map(|(conversation, _)| conversation)).await
        }),
    );
    json_written(
        &mut table,
        &mut late,
        "ConversationRepository::get_or_create",
        "participant",
        "/participant",
        true,
        with!(|env, participant: Value| {
            let got = ConversationRepository::new(&env.app)
                .get_or_create(&env.ctx, "web", &unique("x"), participant)
                .await;
            kept(&env, got.map(|(conversation, _)| conversation)).await
        }),
    );
    // An existing conversation is found, not overwritten, whatever participant is offered.
    table.add(
        "ConversationRepository::get_or_create: existing, hostile participant",
        "JSON of verbatim texts",
        Expect::Stored(vec![
            ("/id".to_owned(), Value::Null),
            ("/participant".to_owned(), json!({"kind": "user"})),
        ]),
        call!(|env| {
            let (found, created) = ConversationRepository::new(&env.app)
                .get_or_create(&env.ctx, " slack ", "T-1\n", verbatim_json())
                .await?;
            let mut row = kept(&env, Ok(found.clone())).await?;
            // The id is compared here; `Stored` compares the rest.
            row["id"] = if found.id == env.me.conversation && !created {
                Value::Null
            } else {
                json!("a different conversation")
            };
            Ok(row)
        }),
    );
    table.add(
        "ConversationRepository::get_or_create: a tenant that does not exist",
        "context of a missing tenant",
        Expect::Reference(tenant_fkey),
        call!(|env| out(ConversationRepository::new(&env.app)
            .get_or_create(&env.ghost, "slack", "T-1", json!({}))
            .await)),
    );
    text_looked_up(
        &mut table,
        "ConversationRepository::find_by_external_id",
        "channel",
        LABEL_MAX,
        with!(
            |env, channel: String| out(ConversationRepository::new(&env.app)
                .find_by_external_id(&env.ctx, &channel, "no-such-thread")
                .await)
        ),
    );
    text_looked_up(
        &mut table,
        "ConversationRepository::find_by_external_id",
        "external_id",
        ID_MAX,
        with!(
            |env, external_id: String| out(ConversationRepository::new(&env.app)
                .find_by_external_id(&env.ctx, "no-such-channel", &external_id)
                .await)
        ),
    );
    table.add(
        "ConversationRepository::find_by_external_id: another tenant's thread",
        "channel and external id of another tenant's conversation",
        Expect::Read,
        call!(|env| {
            let found = ConversationRepository::new(&env.app)
                .find_by_external_id(&env.ctx, "slack", "T-1")
                .await?;
            // The tenant's own conversation has the same channel and id: that one, never theirs.
            assert_eq!(found.map(|c| c.id), Some(env.me.conversation));
            Ok(Value::Null)
        }),
    );

    text_written(
        &mut table,
        "ConversationRepository::append_message",
        "role",
        LABEL_MAX,
        "/role",
        Kept::Trimmed,
        with!(|env, role: String| {
            let appended = ConversationRepository::new(&env.app)
                .append_message(&env.ctx, env.me.conversation, NewMessage::new(role, "hi"))
                .await;
            kept(&env, appended).await
        }),
    );
    text_written(
        &mut table,
        "ConversationRepository::append_message",
        "content",
        CONTENT_MAX,
        "/content",
        Kept::Verbatim,
        with!(|env, content: String| {
            let appended = ConversationRepository::new(&env.app)
                .append_message(
                    &env.ctx,
                    env.me.conversation,
                    NewMessage::new("user", content),
                )
                .await;
            kept(&env, appended).await
        }),
    );
    json_written(
        &mut table,
        &mut late,
        "ConversationRepository::append_message",
        "metadata",
        "/metadata",
        true,
        with!(|env, metadata: Value| {
            let message = NewMessage {
                metadata: Some(metadata),
                ..NewMessage::new("user", "with metadata")
            };
            let appended = ConversationRepository::new(&env.app)
                .append_message(&env.ctx, env.me.conversation, message)
                .await;
            kept(&env, appended).await
        }),
    );

    let theirs: Option<(&str, Pick)> =
        Some(("another tenant's conversation", |env| env.them.conversation));
    ids_refused(
        &mut table,
        "ConversationRepository::find_by_id",
        theirs,
        &Expect::Nothing,
        with!(|env, id: Uuid| out(ConversationRepository::new(&env.app)
            .find_by_id(&env.ctx, id)
            .await)),
    );
    ids_refused(
        &mut table,
        "ConversationRepository::append_message",
        theirs,
        &Expect::NotFound("conversation"),
        with!(|env, id: Uuid| out(ConversationRepository::new(&env.app)
            .append_message(
                &env.ctx,
                id,
                NewMessage::new("user", "'; DROP TABLE messages; --")
            )
            .await)),
    );
    ids_refused(
        &mut table,
        "ConversationRepository::list_messages",
        theirs,
        &Expect::Nothing,
        with!(|env, id: Uuid| out(ConversationRepository::new(&env.app)
            .list_messages(&env.ctx, id, &PageRequest::first(10))
            .await)),
    );
    ids_refused(
        &mut table,
        "ConversationRepository::close",
        theirs,
        &Expect::NotFound("conversation"),
        with!(|env, id: Uuid| out(ConversationRepository::new(&env.app)
            .close(&env.ctx, id)
            .await)),
    );
    ids_refused(
        &mut table,
        "ConversationRepository::archive",
        theirs,
        &Expect::NotFound("conversation"),
        with!(|env, id: Uuid| out(ConversationRepository::new(&env.app)
            .archive(&env.ctx, id)
            .await)),
    );
    ids_refused(
        &mut table,
        "ConversationRepository::list_tasks",
        theirs,
        &Expect::Nothing,
        with!(|env, id: Uuid| out(ConversationRepository::new(&env.app)
            .list_tasks(&env.ctx, id, &PageRequest::first(10))
            .await)),
    );
    limits(
        &mut table,
        "ConversationRepository::list_messages",
        with!(|env, limit: u64| out(ConversationRepository::new(&env.app)
            .list_messages(&env.ctx, env.me.conversation, &PageRequest::first(limit))
            .await)),
    );
    limits(
        &mut table,
        "ConversationRepository::list_tasks",
        with!(|env, limit: u64| out(ConversationRepository::new(&env.app)
            .list_tasks(&env.ctx, env.me.conversation, &PageRequest::first(limit))
            .await)),
    );
    let times = extreme_times()
        .into_iter()
        .map(|(input, time)| (input, time, Expect::Invalid("after")))
        .chain(
            limit_times()
                .into_iter()
                .map(|(input, time)| (input, time, Expect::Read)),
        );
    for (input, time, expect) in times {
        table.add(
            "ConversationRepository::list_messages: cursor",
            input,
            expect,
            call!(|env| {
                let cursor = TimeCursor {
                    created_at: time,
                    id: Uuid::nil(),
                };
                out(ConversationRepository::new(&env.app)
                    .list_messages(
                        &env.ctx,
                        env.me.conversation,
                        &PageRequest::after(cursor, 10),
                    )
                    .await)
            }),
        );
    }

    table.append(late);
    table.run(&env).await
}

// ---------------------------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------------------------

fn event() -> NewAuditEvent {
    NewAuditEvent::new("task.completed", "complete", "task", "t-1")
}

#[tokio::test]
async fn hostile_input_audit() -> anyhow::Result<()> {
    let (_db, env) = setup().await?;
    let mut table = Table::new("audit");
    let mut late = Table::new("audit");
    let tenant_fkey = "audit_events_tenant_id_fkey";

    // Filters, before the rows below store the texts they look for: refused where the text could
    // not have been stored, compared (never interpreted) otherwise, by `query` and `count` alike.
    type Filter = fn(String) -> AuditQuery;
    let filters: [(&'static str, usize, Filter); 5] = [
        ("event_type", LABEL_MAX, |text| {
            AuditQuery::all().event_type(text)
        }),
        ("resource_type", LABEL_MAX, |text| {
            AuditQuery::all().resource(text, "no-such-id")
        }),
        ("resource_id", ID_MAX, |text| {
            AuditQuery::all().resource("no-such-type", text)
        }),
        ("actor_type", LABEL_MAX, |text| {
            AuditQuery::all().actor(text, "no-such-actor")
        }),
        ("actor_id", ID_MAX, |text| {
            AuditQuery::all().actor("no-such-kind", text)
        }),
    ];
    for (field, max, filter) in filters {
        text_looked_up(
            &mut table,
            "AuditRepository::query",
            field,
            max,
            with!(|env, text: String| out(AuditRepository::new(&env.app)
                .query(&env.ctx, &filter(text), &PageRequest::first(10))
                .await)),
        );
        text_looked_up(
            &mut table,
            "AuditRepository::count",
            field,
            max,
            with!(|env, text: String| out(AuditRepository::new(&env.app)
                .count(&env.ctx, &filter(text))
                .await)),
        );
    }
    for (field, max) in [
        ("event_type", LABEL_MAX),
        ("action", LABEL_MAX),
        ("resource_type", LABEL_MAX),
        ("resource_id", ID_MAX),
    ] {
        // The model's JSON names its fields in camelCase.
        let pointer = match field {
            "event_type" => "/eventType",
            "resource_type" => "/resourceType",
            "resource_id" => "/resourceId",
            _ => "/action",
        };
        let set = move |event: &mut NewAuditEvent, text: String| match field {
            "event_type" => event.event_type = text,
            "action" => event.action = text,
            "resource_type" => event.resource_type = text,
            _ => event.resource_id = text,
        };
        text_written(
            &mut table,
            "AuditRepository::record",
            field,
            max,
            pointer,
            Kept::Trimmed,
            with!(|env, text: String| {
                let mut event = event();
                set(&mut event, text);
                kept(
                    &env,
                    AuditRepository::new(&env.app).record(&env.ctx, event).await,
                )
                .await
            }),
        );
        // A batch is all or none: one bad event, last of three, writes nothing.
        for (input, bad) in BLANK.into_iter().chain(NUL).take(4) {
            table.add(
                format!("AuditRepository::record_many: {field}"),
                input,
                Expect::Invalid(field),
                call!(|env| {
                    let mut last = event();
                    set(&mut last, bad.to_owned());
                    out(AuditRepository::new(&env.app)
                        .record_many(&env.ctx, vec![event(), event(), last])
                        .await)
                }),
            );
        }
        table.add(
            format!("AuditRepository::record_many: {field}"),
            "one over the limit",
            Expect::Invalid(field),
            call!(|env| {
                let mut last = event();
                set(&mut last, "x".repeat(max + 1));
                out(AuditRepository::new(&env.app)
                    .record_many(&env.ctx, vec![event(), last])
                    .await)
            }),
        );
    }
    json_written(
        &mut table,
        &mut late,
        "AuditRepository::record",
        "details",
        "/details",
        false,
        with!(|env, details: Value| {
            let event = event().with_details(details);
            kept(
                &env,
                AuditRepository::new(&env.app).record(&env.ctx, event).await,
            )
            .await
        }),
    );
    table.add(
        "AuditRepository::record: details",
        "JSON null",
        stored("/details", Value::Null),
        call!(|env| {
            let event = event().with_details(Value::Null);
            kept(
                &env,
                AuditRepository::new(&env.app).record(&env.ctx, event).await,
            )
            .await
        }),
    );
    table.add(
        "AuditRepository::record_many: events",
        "one event over the batch limit",
        Expect::Invalid("events"),
        call!(|env| out(AuditRepository::new(&env.app)
            .record_many(&env.ctx, vec![event(); RECORD_MANY_MAX + 1])
            .await)),
    );
    table.add(
        "AuditRepository::record_many: details",
        "JSON: NUL in a string",
        Expect::Invalid("details"),
        call!(|env| out(AuditRepository::new(&env.app)
            .record_many(
                &env.ctx,
                vec![event(), event().with_details(json!(["\u{0}"]))]
            )
            .await)),
    );
    table.add(
        "AuditRepository::record_many: no events",
        "empty batch",
        Expect::Nothing,
        call!(|env| out(AuditRepository::new(&env.app)
            .record_many(&env.ctx, Vec::new())
            .await)),
    );
    for (input, text) in VERBATIM {
        table.add(
            "AuditRepository::record_many: every text",
            input,
            Expect::Stored(vec![
                ("/count".to_owned(), json!(2)),
                ("/rows/0/eventType".to_owned(), json!(text)),
                ("/rows/0/action".to_owned(), json!(text)),
                ("/rows/0/resourceType".to_owned(), json!(text)),
                ("/rows/0/resourceId".to_owned(), json!(text)),
                ("/rows/1/details".to_owned(), json!({ "text": text })),
            ]),
            call!(|env| {
                let events = vec![
                    NewAuditEvent::new(text, text, text, text),
                    NewAuditEvent::new(text, text, text, text)
                        .with_details(json!({ "text": text })),
                ];
                let count = AuditRepository::new(&env.app)
                    .record_many(&env.ctx, events)
                    .await?;
                // The two newest events of this tenant, oldest first.
                let mut rows = audit_events::Entity::find()
                    .filter(audit_events::Column::TenantId.eq(env.me.tenant))
                    .order_by_desc(audit_events::Column::Id)
                    .limit(2)
                    .all(&env.conn)
                    .await?;
                rows.reverse();
                Ok(json!({ "count": count, "rows": rows }))
            }),
        );
    }
    table.add(
        "AuditRepository::record: a tenant that does not exist",
        "context of a missing tenant",
        Expect::Reference(tenant_fkey),
        call!(|env| out(AuditRepository::new(&env.app)
            .record(&env.ghost, event())
            .await)),
    );
    table.add(
        "AuditRepository::record_many: a tenant that does not exist",
        "context of a missing tenant",
        Expect::Reference(tenant_fkey),
        call!(|env| out(AuditRepository::new(&env.app)
            .record_many(&env.ghost, vec![event(), event()])
            .await)),
    );

    table.add(
        "AuditRepository::query: finds the stored events",
        "SQL: quote, semicolon, DROP",
        Expect::Stored(vec![
            ("/items/0/resourceId".to_owned(), json!(VERBATIM[0].1)),
            ("/items/1/resourceId".to_owned(), json!(VERBATIM[0].1)),
        ]),
        call!(|env| out(AuditRepository::new(&env.app)
            .query(
                &env.ctx,
                &AuditQuery::all().resource(VERBATIM[0].1, VERBATIM[0].1),
                &PageRequest::first(10),
            )
            .await)),
    );
    let now = Utc::now().fixed_offset();
    table.add(
        "AuditRepository::query: to",
        "from after to",
        Expect::Invalid("to"),
        call!(|env| out(AuditRepository::new(&env.app)
            .query(
                &env.ctx,
                &AuditQuery::all().from(now).to(now - TimeDelta::seconds(1)),
                &PageRequest::first(10),
            )
            .await)),
    );
    let times = extreme_times()
        .into_iter()
        .map(|(input, time)| (input, time, false))
        .chain(
            limit_times()
                .into_iter()
                .map(|(input, time)| (input, time, true)),
        );
    for (input, time, accepted) in times {
        let expect = |field| {
            if accepted {
                Expect::Read
            } else {
                Expect::Invalid(field)
            }
        };
        for (field, query) in [
            ("from", AuditQuery::all().from(time)),
            ("to", AuditQuery::all().to(time)),
        ] {
            let counted = query.clone();
            table.add(
                format!("AuditRepository::query: {field}"),
                input,
                expect(field),
                call!(|env| out(AuditRepository::new(&env.app)
                    .query(&env.ctx, &query, &PageRequest::first(10))
                    .await)),
            );
            table.add(
                format!("AuditRepository::count: {field}"),
                input,
                expect(field),
                call!(|env| out(AuditRepository::new(&env.app)
                    .count(&env.ctx, &counted)
                    .await)),
            );
        }
        table.add(
            "AuditRepository::query: cursor",
            input,
            expect("after"),
            call!(|env| {
                let cursor = TimeCursor {
                    created_at: time,
                    id: Uuid::max(),
                };
                out(AuditRepository::new(&env.app)
                    .query(
                        &env.ctx,
                        &AuditQuery::all(),
                        &PageRequest::after(cursor, 10),
                    )
                    .await)
            }),
        );
    }
    limits(
        &mut table,
        "AuditRepository::query",
        with!(|env, limit: u64| out(AuditRepository::new(&env.app)
            .query(&env.ctx, &AuditQuery::all(), &PageRequest::first(limit))
            .await)),
    );

    // Last of all, so that no snapshot after it reads 5000 more rows.
    late.add(
        "AuditRepository::record_many: events",
        "a batch at the limit",
        Expect::Stored(vec![
            ("/count".to_owned(), json!(RECORD_MANY_MAX)),
            ("/stored".to_owned(), json!(RECORD_MANY_MAX)),
        ]),
        call!(|env| {
            let batch = unique("batch-");
            let events =
                vec![NewAuditEvent::new("bulk", "import", "batch", &batch); RECORD_MANY_MAX];
            let count = AuditRepository::new(&env.app)
                .record_many(&env.ctx, events)
                .await?;
            let stored = audit_events::Entity::find()
                .filter(audit_events::Column::TenantId.eq(env.me.tenant))
                .filter(audit_events::Column::ResourceId.eq(batch))
                .count(&env.conn)
                .await?;
            Ok(json!({ "count": count, "stored": stored }))
        }),
    );

    table.append(late);
    table.run(&env).await
}

// ---------------------------------------------------------------------------------------------
// Request contexts and actors
// ---------------------------------------------------------------------------------------------

/// Records an event under `ctx` and returns it as stored: where the actor and trace end up.
async fn recorded(env: &Env, ctx: Result<RequestContext, Error>) -> Outcome {
    let ctx = ctx?;
    kept(
        env,
        AuditRepository::new(&env.app).record(&ctx, event()).await,
    )
    .await
}

#[tokio::test]
async fn hostile_input_contexts() -> anyhow::Result<()> {
    let (_db, env) = setup().await?;
    let mut table = Table::new("contexts");

    table.add(
        "RequestContext::new: tenant_id",
        "nil UUID",
        Expect::Invalid("tenant_id"),
        call!(|env| {
            let ctx = RequestContext::new(Uuid::nil(), Actor::user(env.me.user)?);
            recorded(&env, ctx).await
        }),
    );
    table.add(
        "Actor::user: id",
        "nil UUID",
        Expect::Invalid("actor.id"),
        call!(|env| {
            let ctx = Actor::user(Uuid::nil())
                .and_then(|actor| RequestContext::new(env.me.tenant, actor));
            recorded(&env, ctx).await
        }),
    );
    for kind in [ActorKind::User, ActorKind::System, ActorKind::Agent] {
        // Every spelling of the nil UUID that `Uuid::parse_str` reads.
        let nils = [
            "00000000-0000-0000-0000-000000000000",
            "00000000000000000000000000000000",
            "{00000000-0000-0000-0000-000000000000}",
            "urn:uuid:00000000-0000-0000-0000-000000000000",
            "  00000000-0000-0000-0000-000000000000 ",
        ];
        for nil in nils {
            table.add(
                format!("Actor::new ({kind:?}): actor.id"),
                format!("nil UUID {nil:?}"),
                Expect::Invalid("actor.id"),
                call!(|env| {
                    let ctx = Actor::new(kind, nil, None)
                        .and_then(|actor| RequestContext::new(env.me.tenant, actor));
                    recorded(&env, ctx).await
                }),
            );
        }
        text_written(
            &mut table,
            "Actor::new",
            "actor.id",
            ID_MAX,
            "/actorId",
            Kept::Trimmed,
            with!(|env, id: String| {
                let ctx = Actor::new(kind, id, None)
                    .and_then(|actor| RequestContext::new(env.me.tenant, actor));
                recorded(&env, ctx).await
            }),
        );
    }
    text_written(
        &mut table,
        "Actor::new",
        "actor.name",
        NAME_MAX,
        "/actorName",
        Kept::Trimmed,
        with!(|env, name: String| {
            let ctx = Actor::new(ActorKind::Agent, "agent-7", Some(name))
                .and_then(|actor| RequestContext::new(env.me.tenant, actor));
            recorded(&env, ctx).await
        }),
    );
    text_written(
        &mut table,
        "Actor::system",
        "actor.id",
        ID_MAX,
        "/actorId",
        Kept::Trimmed,
        with!(|env, component: String| {
            let ctx = Actor::system(&component)
                .and_then(|actor| RequestContext::new(env.me.tenant, actor));
            recorded(&env, ctx).await
        }),
    );
    text_written(
        &mut table,
        "Actor::named",
        "actor.name",
        NAME_MAX,
        "/actorName",
        Kept::Trimmed,
        with!(|env, name: String| {
            let ctx = Actor::user(env.me.user)?
                .named(&name)
                .and_then(|actor| RequestContext::new(env.me.tenant, actor));
            recorded(&env, ctx).await
        }),
    );
    text_written(
        &mut table,
        "RequestContext::with_trace",
        "trace_id",
        TRACE_MAX,
        "/traceId",
        Kept::Trimmed,
        with!(|env, trace: String| {
            let ctx = RequestContext::new(env.me.tenant, Actor::user(env.me.user)?)
                .and_then(|ctx| ctx.with_trace(&trace, None));
            recorded(&env, ctx).await
        }),
    );
    text_written(
        &mut table,
        "RequestContext::with_trace",
        "span_id",
        TRACE_MAX,
        "/spanId",
        Kept::Trimmed,
        with!(|env, span: String| {
            let ctx = RequestContext::new(env.me.tenant, Actor::user(env.me.user)?)
                .and_then(|ctx| ctx.with_trace("trace-1", Some(&span)));
            recorded(&env, ctx).await
        }),
    );
    // The actor goes into task history too, as given.
    for (input, text) in VERBATIM {
        table.add(
            "TaskRepository::create: history actor_id",
            input,
            stored("/history/actorId", text),
            call!(|env| {
                let ctx =
                    RequestContext::new(env.me.tenant, Actor::new(ActorKind::Agent, text, None)?)?;
                let created = TaskRepository::new(&env.app)
                    .create(&ctx, plain_task())
                    .await;
                kept_with_history(&env, created).await
            }),
        );
    }
    table.run(&env).await
}

// ---------------------------------------------------------------------------------------------
// Enum labels from outside
// ---------------------------------------------------------------------------------------------

/// Strings that name no variant of any enum: each is refused by every parser with
/// [`UnknownVariant`] naming the enum and the string as given.
const NOT_LABELS: [(&str, &str); 12] = [
    ("label: empty", ""),
    ("label: space", " "),
    ("label: NUL", "\0"),
    ("label: unknown", "IN_PROGRESS"),
    ("label: SQL", "ACTIVE'; DROP TABLE tenants; --"),
    ("label: SQL tautology", "' OR '1'='1"),
    ("label: lower case", "active"),
    ("label: mixed case", "Claimed"),
    ("label: padded", " ACTIVE "),
    ("label: NUL suffix", "ACTIVE\0"),
    (
        "label: full-width",
        "\u{ff21}\u{ff23}\u{ff34}\u{ff29}\u{ff36}\u{ff25}",
    ),
    ("label: zero-width space", "ACTIVE\u{200b}"),
];

/// Refuses every [`NOT_LABELS`] string as an `E` and each label's near misses; returns how many
/// strings were refused.
fn refuses_all<E>(kind: &str, labels: &[&str]) -> usize
where
    E: FromStr<Err = UnknownVariant> + Debug,
{
    let mut strings: Vec<String> = NOT_LABELS.iter().map(|(_, s)| (*s).to_owned()).collect();
    for label in labels {
        strings.push(label.to_lowercase());
        strings.push(format!("{label}\0"));
        strings.push(format!("\0{label}"));
        strings.push(format!("{label} "));
        strings.push(label.replace('_', "-"));
    }
    strings.sort();
    strings.dedup();
    strings.retain(|s| !labels.contains(&s.as_str()));
    for string in &strings {
        match string.parse::<E>() {
            Err(UnknownVariant { kind: k, value }) => {
                assert_eq!((k, value.as_str()), (kind, string.as_str()), "{string:?}");
                assert!(!UnknownVariant { kind: k, value }.to_string().contains('\0'));
            }
            Ok(parsed) => panic!("{kind}: {string:?} parsed as {parsed:?}"),
        }
    }
    strings.len()
}

#[tokio::test]
async fn hostile_input_enum_labels() -> anyhow::Result<()> {
    let (_db, env) = setup().await?;
    let mut refused = 0;
    refused += refuses_all::<TaskStatus>(
        "task_status",
        &[
            "CREATED",
            "ASSIGNED",
            "CLAIMED",
            "COMPLETED",
            "ESCALATED",
            "EXPIRED",
            "CANCELLED",
        ],
    );
    refused += refuses_all::<TenantStatus>("tenant_status", &["ACTIVE", "SUSPENDED", "DELETED"]);
    refused += refuses_all::<UserRole>("user_role", &["ADMIN", "MEMBER"]);
    refused += refuses_all::<UserStatus>("user_status", &["ACTIVE", "INACTIVE"]);
    refused +=
        refuses_all::<ConversationStatus>("conversation_status", &["ACTIVE", "CLOSED", "ARCHIVED"]);
    refused += refuses_all::<AssignmentStrategy>(
        "assignment_strategy",
        &["ROUND_ROBIN", "LOAD_BALANCED", "MANUAL"],
    );

    // Every label parses, and the parsed value works against the database.
    let mut table = Table::new("enum labels");
    for label in [
        "CREATED",
        "ASSIGNED",
        "CLAIMED",
        "COMPLETED",
        "ESCALATED",
        "EXPIRED",
        "CANCELLED",
    ] {
        table.add(
            "TaskRepository::list_by_status: parsed status",
            format!("label {label}"),
            Expect::Read,
            call!(|env| {
                let status: TaskStatus = label.parse().expect("a label");
                let page = TaskRepository::new(&env.app)
                    .list_by_status(&env.ctx, status.clone(), &PageRequest::first(50))
                    .await?;
                assert!(page.items.iter().all(|task| task.status == status));
                out(Ok(page))
            }),
        );
    }
    for label in ["ACTIVE", "SUSPENDED", "DELETED"] {
        table.add(
            "TenantRepository::list: parsed status",
            format!("label {label}"),
            Expect::Read,
            call!(|env| {
                let status: TenantStatus = label.parse().expect("a label");
                out(TenantRepository::new(&env.system)
                    .list(Some(status), &PageRequest::first(50))
                    .await)
            }),
        );
    }
    for (role, status) in [("ADMIN", "ACTIVE"), ("MEMBER", "INACTIVE")] {
        table.add(
            "UserRepository::list: parsed role and status",
            format!("labels {role} {status}"),
            Expect::Read,
            call!(|env| {
                let filter = UserFilter {
                    role: Some(role.parse().expect("a label")),
                    status: Some(status.parse().expect("a label")),
                };
                out(UserRepository::new(&env.app)
                    .list(&env.ctx, &filter, &PageRequest::first(50))
                    .await)
            }),
        );
    }
    for label in ["ROUND_ROBIN", "LOAD_BALANCED", "MANUAL"] {
        table.add(
            "GroupRepository::create: parsed assignment strategy",
            format!("label {label}"),
            // Models serialise their enums by label, as the database and the seed spell them.
            stored("/assignmentStrategy", json!(label)),
            call!(|env| {
                let group = NewGroup {
                    assignment_strategy: Some(label.parse().expect("a label")),
                    ..NewGroup::new("Strategic", unique("s"))
                };
                kept(
                    &env,
                    GroupRepository::new(&env.app).create(&env.ctx, group).await,
                )
                .await
            }),
        );
    }
    for label in ["ACTIVE", "CLOSED", "ARCHIVED"] {
        table.add(
            "ConversationStatus: parsed and compared with a stored row",
            format!("label {label}"),
            Expect::Read,
            call!(|env| {
                let status: ConversationStatus = label.parse().expect("a label");
                let found = ConversationRepository::new(&env.app)
                    .find_by_id(&env.ctx, env.me.conversation)
                    .await?
                    .expect("the conversation");
                assert_eq!(found.status == status, label == "ACTIVE");
                Ok(Value::Null)
            }),
        );
    }
    let used = table.cases.len();
    table.run(&env).await?;
    println!(
        "hostile input (enum labels): {refused} unknown labels refused across 6 enums, {used} \
         parsed labels used"
    );
    Ok(())
}
