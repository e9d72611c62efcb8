//! The repository's traces, on both backends: each call captured by a `tracing` layer, its span's
//! name and fields, the error's variant when it fails, and its statements as child spans with
//! OpenTelemetry's database fields.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use orkestra_repository::{
    AssignTo, GroupRepository, NewGroup, NewTask, NewTenant, NewUser, TaskRepository,
    TenantRepository, UserRepository,
};
use orkestra_tests::{TestDb, repo::ctx};
use serde_json::json;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

/// A span as captured: its name, its fields as text, and its parent's name.
#[derive(Debug, Clone)]
struct Captured {
    name: &'static str,
    fields: BTreeMap<String, String>,
    parent: Option<&'static str>,
    /// The span's id and its parent's, which tell apart the spans of several calls.
    id: u64,
    parent_id: Option<u64>,
}

impl Captured {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Captures every span, in creation order, with the fields recorded on it later.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S> Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx.span(id).and_then(|span| span.parent());
        self.0.lock().expect("not poisoned").push(Captured {
            name: attrs.metadata().name(),
            fields,
            parent: parent.as_ref().map(|p| p.name()),
            id: id.into_u64(),
            parent_id: parent.map(|p| p.id().into_u64()),
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.0.lock().expect("not poisoned");
        // Span ids are reused once a span closes: the newest span with the id is this one.
        if let Some(span) = spans.iter_mut().rev().find(|s| s.id == id.into_u64()) {
            values.record(&mut Fields(&mut span.fields));
        }
    }
}

impl Capture {
    fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut *self.0.lock().expect("not poisoned"))
    }
}

/// The statements (`db.statement` spans) under the span `method`.
fn statements<'a>(spans: &'a [Captured], method: &Captured) -> Vec<&'a Captured> {
    spans
        .iter()
        .filter(|s| s.parent_id == Some(method.id) && s.name == "db.statement")
        .collect()
}

fn only<'a>(spans: &'a [Captured], name: &str) -> &'a Captured {
    let found: Vec<&Captured> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span: {spans:#?}");
    found[0]
}

/// Held by each test from its first statement to its last.
///
/// `tracing` caches, process-wide, whether a callsite is wanted, and computes it once, when the
/// callsite is first reached, from the subscriber of the thread that reaches it. A test running
/// the repository without a subscriber while another has installed its own would cache the
/// statement span as never wanted, and the other test would capture no statement (seen in CI).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Installs a capturing subscriber on this thread until the guard is dropped. Installing it has
/// every callsite reached so far ask again whether it is wanted; [`ONE_AT_A_TIME`] keeps other
/// threads from reaching one for the first time while it is installed.
fn capture() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let guard = tracing::subscriber::set_default(subscriber);
    (capture, guard)
}

/// A migrated database with a tenant and one user: the database, the tenant's id and the user's.
async fn with_user() -> anyhow::Result<(TestDb, uuid::Uuid, uuid::Uuid)> {
    let db = TestDb::migrated().await?;
    let tenant = TenantRepository::new(db.conn())
        .create(NewTenant::new("Acme", "acme"))
        .await?
        .id;
    let ada = UserRepository::new(db.conn())
        .create(&ctx(tenant), NewUser::new("ada@example.com", "Ada"))
        .await?
        .id;
    Ok((db, tenant, ada))
}

#[tokio::test]
async fn every_call_runs_in_a_span_with_its_ids_and_its_statements_as_children()
-> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (db, tenant, ada) = with_user().await?;
    let (conn, app) = (db.conn(), db.app_conn());
    let ctx = ctx(tenant);
    let group = GroupRepository::new(conn)
        .create(&ctx, NewGroup::new("Reviewers", "reviewers"))
        .await?
        .id;
    GroupRepository::new(conn)
        .add_member(&ctx, group, ada)
        .await?;

    let (capture, _default) = capture();
    let tasks = TaskRepository::new(app);
    let task = tasks
        .create(
            &ctx,
            NewTask::new("wf-1", "run-1", "Review", json!({})).assigned_to(AssignTo::group(group)),
        )
        .await?;
    tasks.claim(&ctx, task.id, ada).await?;
    let spans = capture.take();

    let system = match db.backend() {
        sea_orm::DbBackend::Postgres => "postgresql",
        _ => "sqlite",
    };
    let create = only(&spans, "orkestra.tasks.create");
    assert_eq!(create.parent, None, "a call's span is a root span here");
    assert_eq!(create.field("tenant.id"), Some(tenant.to_string().as_str()));
    assert_eq!(
        create.field("actor.kind"),
        Some(ctx.actor().kind().as_str())
    );
    assert_eq!(create.field("actor.id"), Some(ctx.actor().id()));
    assert_eq!(
        create.field("assignee.group.id"),
        Some(group.to_string().as_str())
    );
    assert_eq!(create.field("assignee.user.id"), None);
    assert_eq!(create.field("workflow.id"), Some("\"wf-1\""));
    assert_eq!(create.field("error.type"), None);
    let sent = statements(&spans, create);
    let described: Vec<(Option<&str>, Option<&str>)> = sent
        .iter()
        .map(|s| (s.field("db.operation.name"), s.field("db.collection.name")))
        .collect();
    assert_eq!(
        described,
        [
            (Some("BEGIN"), None),
            (Some("SELECT"), Some("groups")), // the group must be active
            (Some("INSERT"), Some("tasks")),
            (Some("INSERT"), Some("task_history")),
            (Some("COMMIT"), None),
        ],
        "{sent:#?}"
    );
    for statement in &sent {
        assert_eq!(statement.field("db.system.name"), Some(system));
        assert_eq!(statement.field("otel.kind"), Some("client"));
        let text = statement
            .field("db.query.text")
            .expect("the statement's text");
        assert!(!text.contains(&ada.to_string()), "values stay out: {text}");
    }
    assert_eq!(sent[2].field("otel.name"), Some("INSERT tasks"));

    let claim = only(&spans, "orkestra.tasks.claim");
    assert_eq!(claim.field("task.id"), Some(task.id.to_string().as_str()));
    assert_eq!(claim.field("user.id"), Some(ada.to_string().as_str()));
    let update = statements(&spans, claim)
        .into_iter()
        .find(|s| s.field("db.operation.name") == Some("UPDATE"))
        .expect("the claim's UPDATE");
    assert_eq!(update.field("db.collection.name"), Some("tasks"));
    Ok(())
}

#[tokio::test]
async fn a_failed_call_records_the_errors_variant() -> anyhow::Result<()> {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (db, tenant, ada) = with_user().await?;
    let conn = db.conn();
    let ctx = ctx(tenant);
    let task = TaskRepository::new(conn)
        .create(
            &ctx,
            NewTask::new("wf-1", "run-1", "Review", json!({})).assigned_to(AssignTo::user(ada)),
        )
        .await?;
    TaskRepository::new(conn).claim(&ctx, task.id, ada).await?;

    let (capture, _default) = capture();
    let tasks = TaskRepository::new(db.app_conn());
    tasks
        .claim(&ctx, task.id, ada)
        .await
        .expect_err("claimed already");
    tasks
        .create(&ctx, NewTask::new("", "run-1", "Review", json!({})))
        .await
        .expect_err("an empty workflow id");
    let missing = uuid::Uuid::now_v7();
    tasks.expire(&ctx, missing).await.expect_err("no such task");
    TenantRepository::new(conn)
        .suspend(missing)
        .await
        .expect_err("no such tenant");
    let spans = capture.take();

    for (name, variant) in [
        ("orkestra.tasks.claim", "InvalidTransition"),
        ("orkestra.tasks.create", "Validation"),
        ("orkestra.tasks.expire", "NotFound"),
        ("orkestra.tenants.suspend", "NotFound"),
    ] {
        let span = only(&spans, name);
        assert_eq!(span.field("error.type"), Some(variant), "{name}");
        assert_eq!(span.field("otel.status_code"), Some("ERROR"), "{name}");
    }
    let suspend = only(&spans, "orkestra.tenants.suspend");
    assert_eq!(
        suspend.field("tenant.id"),
        Some(missing.to_string().as_str())
    );
    // Refused before anything was sent: no statement at all.
    assert!(statements(&spans, only(&spans, "orkestra.tasks.create")).is_empty());
    Ok(())
}
