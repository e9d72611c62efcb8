//! A walk through the whole lifecycle, printed step by step.
//!
//! ```sh
//! cargo run --example quickstart                      # an in-memory SQLite database
//! RUST_LOG=orkestra=debug cargo run --example quickstart   # with every call's span on stderr
//! DATABASE_URL=postgres://... cargo run --example quickstart
//! # as deployed: a service login (orkestra_app) and an administration login (orkestra_system),
//! # on a database an operator migrated with `sea-orm-cli migrate up`
//! DATABASE_URL=postgres://orders_svc:...@host/orkestra \
//!     SYSTEM_DATABASE_URL=postgres://orkestra_admin:...@host/orkestra cargo run --example quickstart
//! ```
//!
//! It migrates the database, creates a tenant with users and a group, raises tasks inside a
//! conversation, shows a user's inbox, lets two people race for one task, completes it, and prints
//! the task's history and the tenant's audit trail. With `SYSTEM_DATABASE_URL` it creates the
//! tenant on that connection and does everything else on `DATABASE_URL`'s, as a service does, and
//! leaves the migrations to the operator (neither role may change the schema).

use chrono::{Duration, Utc};
use orkestra_entity::sea_orm_active_enums::{AssignmentStrategy, UserRole};
use orkestra_repository::{
    Actor, AssignTo, AuditQuery, AuditRepository, ConversationRepository, DbConfig, Error,
    GroupRepository, NewAuditEvent, NewGroup, NewMessage, NewTask, NewTenant, NewUser, PageRequest,
    RequestContext, TaskRepository, TenantRepository, UserRepository, connect,
};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    print_traces()?;
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".to_owned());
    let backend = if url.starts_with("sqlite:") {
        "SQLite"
    } else {
        "PostgreSQL"
    };
    // Tenant administration goes to the system login when there is one, as in a deployment.
    let (db, system) = match std::env::var("SYSTEM_DATABASE_URL") {
        Ok(system_url) => {
            let db = connect(&DbConfig::new(url)).await?;
            let system = connect(&DbConfig::new(system_url)).await?;
            println!(
                "1. Connected to {backend} as a service and as the administration role (the \
                 operator migrated the database).\n"
            );
            (db, Some(system))
        }
        Err(_) => {
            let db = connect(&DbConfig::new(url).migrating()).await?;
            println!("1. Connected to {backend} and applied every migration.\n");
            (db, None)
        }
    };

    // A tenant: the one system-level repository. A suffix keeps reruns on a server apart.
    let suffix = &uuid::Uuid::now_v7().simple().to_string()[20..];
    let tenant = TenantRepository::new(system.as_ref().unwrap_or(&db))
        .create(NewTenant::new("Acme Corp", format!("acme-{suffix}")))
        .await?;
    println!("2. Tenant {:?} ({}) created.", tenant.name, tenant.slug);

    // Everything else happens in the tenant's context, here on behalf of the workflow engine.
    let ctx = RequestContext::new(
        tenant.id,
        Actor::system("workflow-engine")?.named("Engine")?,
    )?
    .with_trace("4bf92f3577b34da6a3ce929d0e0e4736", Some("00f067aa0ba902b7"))?;

    let users = UserRepository::new(&db);
    let mut ada = NewUser::new("Ada@Acme.example", "Ada Lovelace");
    ada.role = Some(UserRole::Admin);
    let ada = users.create(&ctx, ada).await?;
    let grace = users
        .create(&ctx, NewUser::new("grace@acme.example", "Grace Hopper"))
        .await?;
    let linus = users
        .create(&ctx, NewUser::new("linus@acme.example", "Linus Torvalds"))
        .await?;
    println!(
        "3. Users: {} <{}> (admin), {} <{}>, {} <{}>.",
        ada.name, ada.email, grace.name, grace.email, linus.name, linus.email
    );
    if let Err(error) = users
        .create(&ctx, NewUser::new(" ADA@acme.example ", "Impostor"))
        .await
    {
        println!("   A second user with Ada's email is refused: {error}");
    }

    let groups = GroupRepository::new(&db);
    let mut reviewers = NewGroup::new("Invoice reviewers", "invoice-reviewers");
    reviewers.assignment_strategy = Some(AssignmentStrategy::LoadBalanced);
    let reviewers = groups.create(&ctx, reviewers).await?;
    groups.add_member(&ctx, reviewers.id, ada.id).await?;
    groups.add_member(&ctx, reviewers.id, grace.id).await?;
    let again = groups.add_member(&ctx, reviewers.id, grace.id).await?;
    println!(
        "4. Group {:?} with Ada and Grace (adding Grace twice added her {}).\n",
        reviewers.name,
        if again { "twice" } else { "once" }
    );

    // A conversation, found or created by its identity on its channel.
    let conversations = ConversationRepository::new(&db);
    let (conversation, created) = conversations
        .get_or_create(
            &ctx,
            "slack",
            "T024BE7LD/C024BE91L/1700000000.000100",
            json!({"kind": "customer", "name": "Initech"}),
        )
        .await?;
    conversations
        .append_message(
            &ctx,
            conversation.id,
            NewMessage::new("user", "Can someone approve invoice #1042?"),
        )
        .await?;
    println!(
        "5. Conversation on slack {} ({}), with the customer's question.",
        conversation.id,
        if created { "created" } else { "found" }
    );

    // Tasks: one for Ada directly, one for the reviewers, both with deadlines.
    let tasks = TaskRepository::new(&db);
    let form = json!({"type": "object", "properties": {"approved": {"type": "boolean"}}});
    let in_hours = |h| (Utc::now() + Duration::hours(h)).fixed_offset();
    let for_ada = tasks
        .create(
            &ctx,
            NewTask::new(
                "wf-invoices",
                "run-1042",
                "Check the vendor of #1042",
                form.clone(),
            )
            .assigned_to(AssignTo::user(ada.id))
            .with_sla(in_hours(8), json!({"remind_after_minutes": 60}))
            .in_conversation(conversation.id),
        )
        .await?;
    let for_group = tasks
        .create(
            &ctx,
            NewTask::new(
                "wf-invoices",
                "run-1042",
                "Approve invoice #1042",
                form.clone(),
            )
            .assigned_to(AssignTo::group(reviewers.id))
            .with_sla(in_hours(2), json!({"escalate_to": "finance"}))
            .in_conversation(conversation.id),
        )
        .await?;
    println!(
        "6. Tasks created: {:?} for Ada ({}), {:?} for the reviewers ({}).",
        for_ada.title, for_ada.status, for_group.title, for_group.status
    );

    let inbox = tasks
        .find_pending_for_user(&ctx, ada.id, &PageRequest::first(50))
        .await?;
    println!("7. Ada's inbox, soonest deadline first:");
    for task in &inbox.items {
        let due = task.sla_deadline.map(|d| d.format("%H:%M UTC").to_string());
        println!("   - {:<28} due {}", task.title, due.unwrap_or_default());
    }

    // Grace and Ada both go for the group task; the first claim wins, the second is told why not.
    let as_grace = RequestContext::new(tenant.id, Actor::user(grace.id)?.named(&grace.name)?)?;
    let as_ada = RequestContext::new(tenant.id, Actor::user(ada.id)?.named(&ada.name)?)?;
    let claimed = tasks.claim(&as_grace, for_group.id, grace.id).await?;
    println!(
        "\n8. Grace claims {:?}: it is {}.",
        claimed.title, claimed.status
    );
    match tasks.claim(&as_ada, for_group.id, ada.id).await {
        Err(Error::InvalidTransition { current, .. }) => {
            println!("   Ada claims it a moment later and loses the race: it is already {current}.")
        }
        other => anyhow::bail!("expected Ada to lose the race, got {other:?}"),
    }
    if let Err(error) = tasks.claim(&ctx, for_ada.id, linus.id).await {
        println!("   Linus may not claim Ada's task: {error}");
    }

    let done = tasks
        .complete(&as_grace, for_group.id, grace.id, json!({"approved": true}))
        .await?;
    println!(
        "9. Grace completes it with {}: it is {}.",
        done.form_data.clone().unwrap_or_default(),
        done.status
    );
    let direct = tasks
        .complete(&as_ada, for_ada.id, ada.id, json!({"approved": true}))
        .await?;
    println!(
        "   Ada completes her own task without a separate claim: it is {}.",
        direct.status
    );
    conversations
        .append_message(
            &as_grace,
            conversation.id,
            NewMessage::new("assistant", "Invoice #1042 is approved."),
        )
        .await?;

    println!("\n10. History of {:?}:", for_group.title);
    let names = [&ada, &grace, &linus].map(|user| (user.id.to_string(), user.name.clone()));
    for entry in tasks.history(&ctx, for_group.id).await? {
        let actor = names
            .iter()
            .find(|(id, _)| *id == entry.actor_id)
            .map_or(entry.actor_id.as_str(), |(_, name)| name.as_str());
        println!(
            "   {}  {:<9} by {} {}",
            entry.created_at.format("%H:%M:%S%.3f"),
            entry.action,
            entry.actor_type,
            actor
        );
    }

    let messages = conversations
        .list_messages(&ctx, conversation.id, &PageRequest::first(50))
        .await?;
    println!("\n11. The conversation:");
    for message in &messages.items {
        println!("   [{}] {}", message.role, message.content);
    }
    let closed = conversations.close(&ctx, conversation.id).await?;
    println!("   Closed; it is now {}.", closed.status.as_str());

    // The audit trail: one event at a time, or many in one statement.
    let audit = AuditRepository::new(&db);
    audit
        .record(
            &as_grace,
            NewAuditEvent::new(
                "task.completed",
                "complete",
                "task",
                for_group.id.to_string(),
            )
            .with_details(json!({"approved": true})),
        )
        .await?;
    audit
        .record_many(
            &ctx,
            vec![
                NewAuditEvent::new("task.created", "create", "task", for_ada.id.to_string()),
                NewAuditEvent::new("task.created", "create", "task", for_group.id.to_string()),
                NewAuditEvent::new(
                    "conversation.closed",
                    "close",
                    "conversation",
                    conversation.id.to_string(),
                ),
            ],
        )
        .await?;
    let trail = audit
        .query(&ctx, &AuditQuery::all(), &PageRequest::first(10))
        .await?;
    let tasks_created = audit
        .count(&ctx, &AuditQuery::all().event_type("task.created"))
        .await?;
    println!("\n12. Audit trail, newest first ({tasks_created} task.created events):");
    for event in &trail.items {
        println!(
            "   {:<20} {} {:<8} by {} {} (trace {})",
            event.event_type,
            event.resource_type,
            &event.resource_id[..8],
            event.actor_type,
            event.actor_name.as_deref().unwrap_or(&event.actor_id),
            event.trace_id.as_deref().unwrap_or("-"),
        );
    }
    println!("\nDone: every write above went through a tenant-scoped repository.");
    Ok(())
}

/// With `RUST_LOG` set (`orkestra=debug`: every call's span and its statements; `orkestra=info`:
/// the calls alone), prints each span on standard error as it closes, with its fields and time.
fn print_traces() -> anyhow::Result<()> {
    use tracing_subscriber::fmt::format::FmtSpan;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let Ok(filter) = std::env::var("RUST_LOG") else {
        return Ok(());
    };
    let targets: tracing_subscriber::filter::Targets = filter.parse()?;
    let spans = tracing_subscriber::fmt::layer()
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(std::io::stderr);
    tracing_subscriber::registry()
        .with(spans)
        .with(targets)
        .try_init()?;
    Ok(())
}
