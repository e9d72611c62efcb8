//! The conversation repository on a real database: every method on both backends with its error
//! paths, message order and pagination, tenant isolation, and (PostgreSQL only) concurrent
//! get-or-create and appends racing a close.

use std::fmt::Debug;

use orkestra_entity::{conversations, messages, sea_orm_active_enums::ConversationStatus, tasks};
use orkestra_repository::{
    Actor, ConversationRepository, Error, NewConversation, NewMessage, PageRequest, RequestContext,
    TimeCursor, conversations::EXTERNAL_KEY, transaction, validate,
};
use orkestra_tests::{TestDb, fixtures};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
};
use serde_json::{Value, json};
use uuid::Uuid;

const TENANT_FKEY: &str = "conversations_tenant_id_fkey";

/// A tenant and a context acting in it.
async fn tenant(db: &impl ConnectionTrait, slug: &str) -> anyhow::Result<RequestContext> {
    let tenant = fixtures::tenant(db, slug).await?;
    Ok(RequestContext::new(
        tenant.id,
        Actor::user(Uuid::now_v7())?,
    )?)
}

/// A context for a tenant that does not exist.
fn ghost() -> anyhow::Result<RequestContext> {
    Ok(RequestContext::new(
        Uuid::now_v7(),
        Actor::user(Uuid::now_v7())?,
    )?)
}

fn participant() -> Value {
    json!({"kind": "user", "id": "u-1", "name": "Ada"})
}

async fn active(
    repo: &ConversationRepository<'_, DatabaseConnection>,
    ctx: &RequestContext,
) -> anyhow::Result<conversations::Model> {
    Ok(repo
        .create(ctx, NewConversation::new(participant()))
        .await?)
}

async fn conversation_count(db: &impl ConnectionTrait) -> anyhow::Result<u64> {
    Ok(conversations::Entity::find().count(db).await?)
}

async fn message_count(db: &impl ConnectionTrait) -> anyhow::Result<u64> {
    Ok(messages::Entity::find().count(db).await?)
}

/// The conversation as stored now, read past the repository.
async fn stored(
    db: &impl ConnectionTrait,
    conversation: &conversations::Model,
) -> anyhow::Result<conversations::Model> {
    Ok(
        conversations::Entity::find_by_id((conversation.id, conversation.tenant_id))
            .one(db)
            .await?
            .expect("the conversation exists"),
    )
}

/// Asserts that a row a repository returned is the row as stored, `updated_at` included.
#[track_caller]
fn assert_same_row(returned: &conversations::Model, stored: &conversations::Model) {
    assert_eq!(returned, stored);
}

#[track_caller]
fn assert_validation<T: Debug>(result: Result<T, Error>, field: &str) {
    match result {
        Err(Error::Validation { field: actual, .. }) if actual == field => {}
        other => panic!("expected a validation error on {field}, got {other:?}"),
    }
}

#[track_caller]
fn assert_not_found<T: Debug>(result: Result<T, Error>) {
    match result {
        Err(Error::NotFound {
            entity: "conversation",
            ..
        }) => {}
        other => panic!("expected conversation not found, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid_state<T: Debug>(
    result: Result<T, Error>,
    id: Uuid,
    expected_state: &str,
    expected_action: &str,
) {
    match result {
        Err(Error::InvalidState {
            entity: "conversation",
            id: actual,
            state,
            action,
        }) if actual == id.to_string() && state == expected_state && action == expected_action => {}
        other => {
            panic!("expected InvalidState {expected_state} for {expected_action}, got {other:?}")
        }
    }
}

#[track_caller]
fn assert_reference<T: Debug>(result: Result<T, Error>, expected: &str) {
    match result {
        Err(Error::Reference { constraint }) if constraint == expected => {}
        other => panic!("expected a reference refusal by {expected}, got {other:?}"),
    }
}

/// Strings every required text field refuses, and why.
fn bad_texts(max: usize) -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("blank", " \t\n ".to_owned()),
        ("NUL", "a\0b".to_owned()),
        ("too long", "x".repeat(max + 1)),
    ]
}

/// JSON values that are not objects, or objects PostgreSQL cannot store.
fn bad_objects() -> Vec<Value> {
    vec![
        json!(null),
        json!([1, 2]),
        json!("text"),
        json!(42),
        json!(true),
        json!({"name": "a\u{0}b"}),
        json!({"a\u{0}": 1}),
    ]
}

// ---- create ----

#[tokio::test]
async fn create_stores_an_active_conversation() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let ctx = tenant(db.conn(), "acme").await?;
    let repo = ConversationRepository::new(db.conn());

    let created = repo
        .create(
            &ctx,
            NewConversation::new(participant()).external("  slack ", " T123/1700000000.000100 "),
        )
        .await?;
    assert_eq!(created.tenant_id, ctx.tenant_id());
    assert_eq!(created.status, ConversationStatus::Active);
    assert_eq!(created.channel.as_deref(), Some("slack"));
    assert_eq!(
        created.external_id.as_deref(),
        Some("T123/1700000000.000100")
    );
    assert_eq!(created.participant, participant());
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(created.closed_at, None);
    assert_eq!(created.id.get_version_num(), 7);
    assert_eq!(stored(db.conn(), &created).await?, created);
    assert_eq!(repo.find_by_id(&ctx, created.id).await?, Some(created));

    // Without an external identity (or with only half of one) nothing is unique.
    active(&repo, &ctx).await?;
    active(&repo, &ctx).await?;
    for _ in 0..2 {
        let mut only_channel = NewConversation::new(json!({}));
        only_channel.channel = Some("web".to_owned());
        repo.create(&ctx, only_channel).await?;
        let mut only_id = NewConversation::new(json!({}));
        only_id.external_id = Some("x-1".to_owned());
        repo.create(&ctx, only_id).await?;
    }
    assert_eq!(conversation_count(db.conn()).await?, 7);
    Ok(())
}

#[tokio::test]
async fn create_refuses_invalid_fields_and_writes_nothing() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let ctx = tenant(db.conn(), "acme").await?;
    let repo = ConversationRepository::new(db.conn());

    for bad in bad_objects() {
        assert_validation(
            repo.create(&ctx, NewConversation::new(bad)).await,
            "participant",
        );
    }
    for (why, bad) in bad_texts(validate::ID_MAX) {
        let result = repo
            .create(
                &ctx,
                NewConversation::new(participant()).external("slack", bad),
            )
            .await;
        assert!(result.is_err(), "external id {why} accepted");
        assert_validation(result, "external_id");
    }
    for (why, bad) in bad_texts(validate::LABEL_MAX) {
        let result = repo
            .create(
                &ctx,
                NewConversation::new(participant()).external(bad, "t-1"),
            )
            .await;
        assert!(result.is_err(), "channel {why} accepted");
        assert_validation(result, "channel");
    }
    assert_eq!(conversation_count(db.conn()).await?, 0);

    // The limits themselves are accepted.
    repo.create(
        &ctx,
        NewConversation::new(participant()).external(
            "c".repeat(validate::LABEL_MAX),
            "é".repeat(validate::ID_MAX),
        ),
    )
    .await?;
    assert_eq!(conversation_count(db.conn()).await?, 1);
    Ok(())
}

#[tokio::test]
async fn create_refuses_a_duplicate_external_id_per_tenant_and_channel() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let a = tenant(db.conn(), "acme").await?;
    let b = tenant(db.conn(), "globex").await?;
    let repo = ConversationRepository::new(db.conn());
    let thread = || NewConversation::new(participant()).external("slack", "thread-1");

    repo.create(&a, thread()).await?;
    match repo.create(&a, thread()).await {
        Err(Error::Conflict { constraint }) => assert_eq!(constraint, EXTERNAL_KEY),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Compared after trimming, as stored.
    match repo
        .create(
            &a,
            NewConversation::new(participant()).external(" slack", "thread-1 "),
        )
        .await
    {
        Err(Error::Conflict { constraint }) => assert_eq!(constraint, EXTERNAL_KEY),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(conversation_count(db.conn()).await?, 1);

    // The same id on another channel, or in another tenant, is another conversation.
    repo.create(
        &a,
        NewConversation::new(participant()).external("email", "thread-1"),
    )
    .await?;
    repo.create(&b, thread()).await?;
    assert_eq!(conversation_count(db.conn()).await?, 3);
    Ok(())
}

#[tokio::test]
async fn create_and_get_or_create_refuse_an_unknown_tenant() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let ghost = ghost()?;
    let repo = ConversationRepository::new(db.conn());
    assert_reference(
        repo.create(&ghost, NewConversation::new(participant()))
            .await,
        TENANT_FKEY,
    );
    assert_reference(
        repo.get_or_create(&ghost, "slack", "t-1", participant())
            .await,
        TENANT_FKEY,
    );
    assert_eq!(conversation_count(db.conn()).await?, 0);
    Ok(())
}

// ---- lookups ----

#[tokio::test]
async fn find_by_id_and_external_id() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let ctx = tenant(db.conn(), "acme").await?;
    let repo = ConversationRepository::new(db.conn());
    let slack = repo
        .create(
            &ctx,
            NewConversation::new(participant()).external("slack", "thread-1"),
        )
        .await?;
    let email = repo
        .create(
            &ctx,
            NewConversation::new(participant()).external("email", "thread-1"),
        )
        .await?;

    assert_eq!(repo.find_by_id(&ctx, slack.id).await?, Some(slack.clone()));
    assert_eq!(repo.find_by_id(&ctx, Uuid::now_v7()).await?, None);
    assert_eq!(
        repo.find_by_external_id(&ctx, "slack", "thread-1").await?,
        Some(slack)
    );
    assert_eq!(
        repo.find_by_external_id(&ctx, " email ", " thread-1")
            .await?,
        Some(email)
    );
    assert_eq!(
        repo.find_by_external_id(&ctx, "slack", "thread-2").await?,
        None
    );
    assert_eq!(
        repo.find_by_external_id(&ctx, "web", "thread-1").await?,
        None
    );
    for (_, bad) in bad_texts(validate::LABEL_MAX) {
        assert_validation(
            repo.find_by_external_id(&ctx, &bad, "thread-1").await,
            "channel",
        );
    }
    for (_, bad) in bad_texts(validate::ID_MAX) {
        assert_validation(
            repo.find_by_external_id(&ctx, "slack", &bad).await,
            "external_id",
        );
    }
    Ok(())
}

// ---- get_or_create ----

#[tokio::test]
async fn get_or_create_creates_once_then_returns_the_row() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let ctx = tenant(db.conn(), "acme").await?;
    let repo = ConversationRepository::new(db.conn());

    let (first, created) = repo
        .get_or_create(&ctx, "slack", "thread-1", participant())
        .await?;
    assert!(created);
    assert_eq!(first.status, ConversationStatus::Active);
    assert_eq!(first.participant, participant());
    assert_eq!(first.channel.as_deref(), Some("slack"));
    assert_eq!(first.external_id.as_deref(), Some("thread-1"));

    // Another participant does not change the existing row.
    let (second, created) = repo
        .get_or_create(&ctx, " slack ", "thread-1", json!({"kind": "bot"}))
        .await?;
    assert!(!created);
    assert_eq!(second, first);

    let (other, created) = repo
        .get_or_create(&ctx, "email", "thread-1", participant())
        .await?;
    assert!(created);
    assert_ne!(other.id, first.id);
    assert_eq!(conversation_count(db.conn()).await?, 2);

    // A conversation made by `create`, and a closed one, are returned as they are.
    let made = repo
        .create(
            &ctx,
            NewConversation::new(participant()).external("web", "w-1"),
        )
        .await?;
    let closed = repo.close(&ctx, made.id).await?;
    let (found, created) = repo
        .get_or_create(&ctx, "web", "w-1", participant())
        .await?;
    assert!(!created);
    assert_eq!(found, stored(db.conn(), &closed).await?);
    assert_eq!(found.status, ConversationStatus::Closed);
    assert_eq!(conversation_count(db.conn()).await?, 3);
    Ok(())
}

#[tokio::test]
async fn get_or_create_refuses_invalid_arguments_and_writes_nothing() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let ctx = tenant(db.conn(), "acme").await?;
    let repo = ConversationRepository::new(db.conn());
    for (_, bad) in bad_texts(validate::LABEL_MAX) {
        assert_validation(
            repo.get_or_create(&ctx, &bad, "t-1", participant()).await,
            "channel",
        );
    }
    for (_, bad) in bad_texts(validate::ID_MAX) {
        assert_validation(
            repo.get_or_create(&ctx, "slack", &bad, participant()).await,
            "external_id",
        );
    }
    for bad in bad_objects() {
        assert_validation(
            repo.get_or_create(&ctx, "slack", "t-1", bad).await,
            "participant",
        );
    }
    assert_eq!(conversation_count(db.conn()).await?, 0);
    Ok(())
}

// ---- append_message ----

#[tokio::test]
async fn append_message_stores_it_and_moves_updated_at() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let ctx = tenant(db.conn(), "acme").await?;
    let repo = ConversationRepository::new(db.conn());
    let conversation = active(&repo, &ctx).await?;

    let content = "  Hello,\n\tworld!  \n";
    let mut message = NewMessage::new(" user ", content);
    message.metadata = Some(json!({"source": "slack", "ts": "1700000000.000100"}));
    let appended = repo.append_message(&ctx, conversation.id, message).await?;
    assert_eq!(appended.tenant_id, ctx.tenant_id());
    assert_eq!(appended.conversation_id, conversation.id);
    assert_eq!(appended.role, "user", "the role is trimmed");
    assert_eq!(appended.content, content, "the content is stored verbatim");
    assert_eq!(
        appended.metadata,
        Some(json!({"source": "slack", "ts": "1700000000.000100"}))
    );
    assert_eq!(appended.id.get_version_num(), 7);
    let read = messages::Entity::find_by_id((appended.id, ctx.tenant_id()))
        .one(db.conn())
        .await?;
    assert_eq!(read, Some(appended.clone()));

    let after_first = stored(db.conn(), &conversation).await?;
    assert!(after_first.updated_at > conversation.updated_at);
    assert_eq!(after_first.created_at, conversation.created_at);

    let second = repo
        .append_message(&ctx, conversation.id, NewMessage::new("assistant", "Hi"))
        .await?;
    assert_eq!(second.metadata, None);
    let after_second = stored(db.conn(), &conversation).await?;
    assert!(after_second.updated_at > after_first.updated_at);
    assert_eq!(after_second.status, ConversationStatus::Active);

    // The content limit itself is accepted.
    repo.append_message(
        &ctx,
        conversation.id,
        NewMessage::new("user", "é".repeat(validate::CONTENT_MAX)),
    )
    .await?;
    assert_eq!(message_count(db.conn()).await?, 3);
    Ok(())
}

#[tokio::test]
async fn append_message_refuses_invalid_fields_and_writes_nothing() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let ctx = tenant(db.conn(), "acme").await?;
    let repo = ConversationRepository::new(db.conn());
    let conversation = active(&repo, &ctx).await?;

    for (why, bad) in bad_texts(validate::LABEL_MAX) {
        let result = repo
            .append_message(&ctx, conversation.id, NewMessage::new(bad, "hello"))
            .await;
        assert!(result.is_err(), "role {why} accepted");
        assert_validation(result, "role");
    }
    for (why, bad) in bad_texts(validate::CONTENT_MAX) {
        let result = repo
            .append_message(&ctx, conversation.id, NewMessage::new("user", bad))
            .await;
        assert!(result.is_err(), "content {why} accepted");
        assert_validation(result, "content");
    }
    for bad in bad_objects() {
        let mut message = NewMessage::new("user", "hello");
        message.metadata = Some(bad);
        assert_validation(
            repo.append_message(&ctx, conversation.id, message).await,
            "metadata",
        );
    }
    // Validation comes first, even for a conversation that does not exist.
    assert_validation(
        repo.append_message(&ctx, Uuid::now_v7(), NewMessage::new("", "hello"))
            .await,
        "role",
    );
    assert_eq!(message_count(db.conn()).await?, 0);
    assert_eq!(stored(db.conn(), &conversation).await?, conversation);
    Ok(())
}

#[tokio::test]
async fn a_closed_or_archived_conversation_refuses_messages_and_writes_nothing()
-> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let ctx = tenant(db.conn(), "acme").await?;
    let repo = ConversationRepository::new(db.conn());

    let closed = active(&repo, &ctx).await?;
    repo.append_message(&ctx, closed.id, NewMessage::new("user", "before"))
        .await?;
    let closed = repo.close(&ctx, closed.id).await?;
    let closed = stored(db.conn(), &closed).await?;
    let archived = active(&repo, &ctx).await?;
    let archived = repo.archive(&ctx, archived.id).await?;
    let archived = stored(db.conn(), &archived).await?;
    let messages_before = message_count(db.conn()).await?;
    assert_eq!(messages_before, 1);

    assert_invalid_state(
        repo.append_message(&ctx, closed.id, NewMessage::new("user", "after"))
            .await,
        closed.id,
        "CLOSED",
        "append a message to",
    );
    assert_invalid_state(
        repo.append_message(&ctx, archived.id, NewMessage::new("user", "after"))
            .await,
        archived.id,
        "ARCHIVED",
        "append a message to",
    );
    assert_not_found(
        repo.append_message(&ctx, Uuid::now_v7(), NewMessage::new("user", "after"))
            .await,
    );
    assert_eq!(message_count(db.conn()).await?, messages_before);
    assert_eq!(stored(db.conn(), &closed).await?, closed);
    assert_eq!(stored(db.conn(), &archived).await?, archived);
    Ok(())
}

#[tokio::test]
async fn append_message_joins_a_callers_transaction() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let ctx = tenant(db.conn(), "acme").await?;
    let repo = ConversationRepository::new(db.conn());
    let conversation = active(&repo, &ctx).await?;
    let id = conversation.id;

    // Rolled back with the caller's transaction: no message, no moved updated_at.
    let result: Result<(), Error> = transaction(db.conn(), async |txn| {
        let repo = ConversationRepository::new(txn);
        repo.append_message(&ctx, id, NewMessage::new("user", "one"))
            .await?;
        repo.append_message(&ctx, id, NewMessage::new("user", "two"))
            .await?;
        Err(Error::validation("test", "roll back"))
    })
    .await;
    assert!(matches!(
        result,
        Err(Error::Validation { field: "test", .. })
    ));
    assert_eq!(message_count(db.conn()).await?, 0);
    assert_eq!(stored(db.conn(), &conversation).await?, conversation);

    // A refused append inside a transaction leaves the caller's earlier work in place.
    let appended = transaction(db.conn(), async |txn| {
        let repo = ConversationRepository::new(txn);
        let message = repo
            .append_message(&ctx, id, NewMessage::new("user", "kept"))
            .await?;
        let refused = repo
            .append_message(&ctx, Uuid::now_v7(), NewMessage::new("user", "lost"))
            .await;
        assert!(
            matches!(refused, Err(Error::NotFound { .. })),
            "{refused:?}"
        );
        Ok(message)
    })
    .await?;
    let page = repo
        .list_messages(&ctx, id, &PageRequest::first(10))
        .await?;
    assert_eq!(page.items, vec![appended]);
    Ok(())
}

// ---- list_messages ----

#[tokio::test]
async fn messages_come_back_in_order_across_pages() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let ctx = tenant(db.conn(), "acme").await?;
    let repo = ConversationRepository::new(db.conn());
    let conversation = active(&repo, &ctx).await?;
    let other = active(&repo, &ctx).await?;

    let mut appended = Vec::new();
    for i in 0..7 {
        appended.push(
            repo.append_message(
                &ctx,
                conversation.id,
                NewMessage::new("user", format!("m{i}")),
            )
            .await?,
        );
        repo.append_message(&ctx, other.id, NewMessage::new("user", format!("o{i}")))
            .await?;
    }

    let mut read = Vec::new();
    let mut sizes = Vec::new();
    let mut page = PageRequest::first(3);
    loop {
        let got = repo.list_messages(&ctx, conversation.id, &page).await?;
        sizes.push(got.items.len());
        read.extend(got.items);
        match got.next {
            Some(cursor) => page = PageRequest::after(cursor, 3),
            None => break,
        }
    }
    assert_eq!(sizes, [3, 3, 1]);
    assert_eq!(read, appended, "the order they were appended in");
    assert!(
        read.windows(2)
            .all(|w| (w[0].created_at, w[0].id) < (w[1].created_at, w[1].id))
    );

    // A page that ends exactly at the last message says there is no next one.
    let all = repo
        .list_messages(&ctx, conversation.id, &PageRequest::first(7))
        .await?;
    assert_eq!(all.items, appended);
    assert_eq!(all.next, None);
    let cursor = TimeCursor {
        created_at: appended[6].created_at,
        id: appended[6].id,
    };
    let past_the_end = repo
        .list_messages(&ctx, conversation.id, &PageRequest::after(cursor, 5))
        .await?;
    assert!(past_the_end.items.is_empty());
    assert_eq!(past_the_end.next, None);

    // A cursor in another offset names the same instant.
    let cursor = TimeCursor {
        created_at: appended[2]
            .created_at
            .with_timezone(&chrono::FixedOffset::east_opt(5 * 3600 + 1800).expect("offset")),
        id: appended[2].id,
    };
    let shifted = repo
        .list_messages(&ctx, conversation.id, &PageRequest::after(cursor, 2))
        .await?;
    assert_eq!(shifted.items, appended[3..5]);

    // An unknown conversation has no messages.
    let unknown = repo
        .list_messages(&ctx, Uuid::now_v7(), &PageRequest::first(10))
        .await?;
    assert!(unknown.items.is_empty());
    assert_eq!(unknown.next, None);
    Ok(())
}

#[tokio::test]
async fn messages_written_at_the_same_instant_page_by_id() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let ctx = tenant(db.conn(), "acme").await?;
    let repo = ConversationRepository::new(db.conn());
    let conversation = active(&repo, &ctx).await?;

    // Written past the repository, all with one `created_at`, in an order unlike their ids.
    let instant = repo
        .append_message(&ctx, conversation.id, NewMessage::new("user", "first"))
        .await?
        .created_at;
    let mut ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    for id in ids.iter().rev() {
        messages::ActiveModel {
            id: Set(*id),
            tenant_id: Set(ctx.tenant_id()),
            conversation_id: Set(conversation.id),
            role: Set("user".to_owned()),
            content: Set(id.to_string()),
            metadata: Set(None),
            created_at: Set(instant),
        }
        .insert(db.conn())
        .await?;
    }
    ids.sort();

    let mut read = Vec::new();
    let mut page = PageRequest::first(2);
    loop {
        let got = repo.list_messages(&ctx, conversation.id, &page).await?;
        read.extend(got.items.iter().map(|m| m.id));
        match got.next {
            Some(cursor) => page = PageRequest::after(cursor, 2),
            None => break,
        }
    }
    assert_eq!(read.len(), 6);
    assert_eq!(read[1..], ids[..], "ties are broken by id");
    Ok(())
}

#[tokio::test]
async fn list_methods_refuse_a_limit_out_of_range() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let ctx = tenant(db.conn(), "acme").await?;
    let repo = ConversationRepository::new(db.conn());
    let conversation = active(&repo, &ctx).await?;
    for limit in [0, validate::PAGE_MAX + 1] {
        assert_validation(
            repo.list_messages(&ctx, conversation.id, &PageRequest::first(limit))
                .await,
            "limit",
        );
        assert_validation(
            repo.list_tasks(&ctx, conversation.id, &PageRequest::first(limit))
                .await,
            "limit",
        );
    }
    repo.list_messages(
        &ctx,
        conversation.id,
        &PageRequest::first(validate::PAGE_MAX),
    )
    .await?;
    Ok(())
}

// ---- close and archive ----

#[tokio::test]
async fn close_only_an_active_conversation() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let ctx = tenant(db.conn(), "acme").await?;
    let repo = ConversationRepository::new(db.conn());
    let conversation = active(&repo, &ctx).await?;

    let closed = repo.close(&ctx, conversation.id).await?;
    assert_eq!(closed.status, ConversationStatus::Closed);
    let closed_at = closed.closed_at.expect("closed_at is set");
    assert!(closed_at >= conversation.created_at);
    assert!(closed.updated_at > conversation.updated_at);
    assert_eq!(closed.created_at, conversation.created_at);
    let stored_closed = stored(db.conn(), &closed).await?;
    assert_same_row(&closed, &stored_closed);

    assert_invalid_state(
        repo.close(&ctx, conversation.id).await,
        conversation.id,
        "CLOSED",
        "close",
    );
    let archived = repo.archive(&ctx, conversation.id).await?;
    assert_invalid_state(
        repo.close(&ctx, conversation.id).await,
        conversation.id,
        "ARCHIVED",
        "close",
    );
    assert_not_found(repo.close(&ctx, Uuid::now_v7()).await);
    // Refusals changed nothing.
    let stored_archived = stored(db.conn(), &archived).await?;
    assert_same_row(&archived, &stored_archived);
    assert_eq!(stored_archived.status, ConversationStatus::Archived);
    Ok(())
}

#[tokio::test]
async fn archive_an_active_or_closed_conversation_once() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let ctx = tenant(db.conn(), "acme").await?;
    let repo = ConversationRepository::new(db.conn());

    // Active -> archived: closed now.
    let conversation = active(&repo, &ctx).await?;
    let archived = repo.archive(&ctx, conversation.id).await?;
    assert_eq!(archived.status, ConversationStatus::Archived);
    assert!(archived.closed_at.expect("closed_at is set") >= conversation.created_at);
    assert!(archived.updated_at > conversation.updated_at);
    assert_same_row(&archived, &stored(db.conn(), &archived).await?);

    // Closed -> archived: keeps the time it was closed.
    let conversation = active(&repo, &ctx).await?;
    let closed = repo.close(&ctx, conversation.id).await?;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let archived = repo.archive(&ctx, conversation.id).await?;
    assert_eq!(archived.status, ConversationStatus::Archived);
    assert_eq!(archived.closed_at, closed.closed_at);
    assert!(archived.updated_at > closed.updated_at);
    let stored_archived = stored(db.conn(), &archived).await?;
    assert_same_row(&archived, &stored_archived);

    assert_invalid_state(
        repo.archive(&ctx, conversation.id).await,
        conversation.id,
        "ARCHIVED",
        "archive",
    );
    assert_not_found(repo.archive(&ctx, Uuid::now_v7()).await);
    assert_eq!(stored(db.conn(), &archived).await?, stored_archived);
    Ok(())
}

// ---- list_tasks ----

#[tokio::test]
async fn tasks_of_a_conversation_come_back_by_id_across_pages() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let ctx = tenant(db.conn(), "acme").await?;
    let repo = ConversationRepository::new(db.conn());
    let conversation = active(&repo, &ctx).await?;
    let other = active(&repo, &ctx).await?;

    let mut ids = Vec::new();
    for _ in 0..5 {
        let mut task = fixtures::task(ctx.tenant_id());
        task.conversation_id = Set(Some(conversation.id));
        ids.push(task.insert(db.conn()).await?.id);
        let mut elsewhere = fixtures::task(ctx.tenant_id());
        elsewhere.conversation_id = Set(Some(other.id));
        elsewhere.insert(db.conn()).await?;
    }
    fixtures::task(ctx.tenant_id()).insert(db.conn()).await?;
    ids.sort();

    let mut read = Vec::new();
    let mut sizes = Vec::new();
    let mut page = PageRequest::first(2);
    loop {
        let got = repo.list_tasks(&ctx, conversation.id, &page).await?;
        sizes.push(got.items.len());
        assert!(
            got.items
                .iter()
                .all(|t| t.conversation_id == Some(conversation.id))
        );
        read.extend(got.items.iter().map(|t| t.id));
        match got.next {
            Some(cursor) => page = PageRequest::after(cursor, 2),
            None => break,
        }
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(read, ids);

    let unknown = repo
        .list_tasks(&ctx, Uuid::now_v7(), &PageRequest::first(10))
        .await?;
    assert!(unknown.items.is_empty());
    assert_eq!(unknown.next, None);
    Ok(())
}

// ---- isolation ----

/// Everything tenant `tenant_id` has, read past the repository.
async fn snapshot(
    db: &impl ConnectionTrait,
    tenant_id: Uuid,
) -> anyhow::Result<(
    Vec<conversations::Model>,
    Vec<messages::Model>,
    Vec<tasks::Model>,
)> {
    Ok((
        conversations::Entity::find()
            .filter(conversations::Column::TenantId.eq(tenant_id))
            .order_by_asc(conversations::Column::Id)
            .all(db)
            .await?,
        messages::Entity::find()
            .filter(messages::Column::TenantId.eq(tenant_id))
            .order_by_asc(messages::Column::Id)
            .all(db)
            .await?,
        tasks::Entity::find()
            .filter(tasks::Column::TenantId.eq(tenant_id))
            .order_by_asc(tasks::Column::Id)
            .all(db)
            .await?,
    ))
}

/// A tenant's populated conversations: an active one on slack/thread-1 with messages and a task,
/// and a closed one on email/thread-2.
struct Populated {
    active: conversations::Model,
    closed: conversations::Model,
}

async fn populate(
    repo: &ConversationRepository<'_, DatabaseConnection>,
    db: &DatabaseConnection,
    ctx: &RequestContext,
) -> anyhow::Result<Populated> {
    let (active, _) = repo
        .get_or_create(ctx, "slack", "thread-1", participant())
        .await?;
    for i in 0..3 {
        repo.append_message(ctx, active.id, NewMessage::new("user", format!("m{i}")))
            .await?;
    }
    let mut task = fixtures::task(ctx.tenant_id());
    task.conversation_id = Set(Some(active.id));
    task.insert(db).await?;
    let closed = repo
        .create(
            ctx,
            NewConversation::new(participant()).external("email", "thread-2"),
        )
        .await?;
    let closed = repo.close(ctx, closed.id).await?;
    Ok(Populated { active, closed })
}

#[tokio::test]
async fn a_tenant_reads_and_writes_none_of_another_tenants_conversations() -> anyhow::Result<()> {
    let db = TestDb::migrated().await?;
    let conn = db.conn();
    let a = tenant(conn, "acme").await?;
    let b = tenant(conn, "globex").await?;
    let repo = ConversationRepository::new(conn);
    let mine = populate(&repo, conn, &a).await?;
    let theirs = populate(&repo, conn, &b).await?;
    let before = snapshot(conn, b.tenant_id()).await?;
    let mine_before = snapshot(conn, a.tenant_id()).await?;

    // Reads under A return nothing of B's.
    for id in [theirs.active.id, theirs.closed.id] {
        assert_eq!(repo.find_by_id(&a, id).await?, None);
        let messages = repo.list_messages(&a, id, &PageRequest::first(50)).await?;
        assert!(messages.items.is_empty());
        let tasks = repo.list_tasks(&a, id, &PageRequest::first(50)).await?;
        assert!(tasks.items.is_empty());
    }
    let found = repo
        .find_by_external_id(&a, "slack", "thread-1")
        .await?
        .expect("A's own");
    assert_eq!(found.id, mine.active.id);
    // A cursor taken from B's messages still reads only A's.
    let b_first = repo
        .list_messages(&b, theirs.active.id, &PageRequest::first(1))
        .await?;
    let cursor = b_first.next.expect("B has more messages");
    let page = repo
        .list_messages(&a, theirs.active.id, &PageRequest::after(cursor, 50))
        .await?;
    assert!(page.items.is_empty());

    // Writes under A naming B's ids find nothing and change nothing.
    for id in [theirs.active.id, theirs.closed.id] {
        assert_not_found(
            repo.append_message(&a, id, NewMessage::new("user", "intruder"))
                .await,
        );
        assert_not_found(repo.close(&a, id).await);
        assert_not_found(repo.archive(&a, id).await);
    }
    // get_or_create under A with B's external identity is A's own conversation.
    let (again, created) = repo
        .get_or_create(&a, "slack", "thread-1", participant())
        .await?;
    assert!(!created);
    assert_eq!(again.id, mine.active.id);
    let (new, created) = repo
        .get_or_create(&a, "web", "only-b-has-none", participant())
        .await?;
    assert!(created);
    assert_eq!(new.tenant_id, a.tenant_id());

    assert_eq!(snapshot(conn, b.tenant_id()).await?, before);
    // A's own rows changed only by A's one new conversation.
    let mine_after = snapshot(conn, a.tenant_id()).await?;
    assert_eq!(mine_after.0.len(), mine_before.0.len() + 1);
    assert_eq!(mine_after.1, mine_before.1);
    assert_eq!(mine_after.2, mine_before.2);
    Ok(())
}

// ---- concurrency (PostgreSQL) ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: set DATABASE_URL=postgres://..."
)]
async fn pg_concurrent_get_or_create_makes_one_row() -> anyhow::Result<()> {
    const CALLERS: usize = 16;
    let db = TestDb::postgres_only().await?;
    let ctx = tenant(db.conn(), "acme").await?;

    for round in 0..5 {
        let external_id = format!("thread-{round}");
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CALLERS));
        let mut handles = Vec::new();
        for caller in 0..CALLERS {
            let conn = db.conn().clone();
            let ctx = ctx.clone();
            let external_id = external_id.clone();
            let barrier = barrier.clone();
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                ConversationRepository::new(&conn)
                    .get_or_create(&ctx, "slack", &external_id, json!({"caller": caller}))
                    .await
            }));
        }
        let mut results = Vec::new();
        for handle in handles {
            results.push(handle.await??);
        }
        let created = results.iter().filter(|(_, created)| *created).count();
        assert_eq!(created, 1, "round {round}: one caller creates");
        let id = results[0].0.id;
        assert!(
            results.iter().all(|(row, _)| row.id == id),
            "round {round}: every caller gets the same conversation"
        );
        let rows = conversations::Entity::find()
            .filter(conversations::Column::TenantId.eq(ctx.tenant_id()))
            .filter(conversations::Column::ExternalId.eq(external_id.as_str()))
            .count(db.conn())
            .await?;
        assert_eq!(rows, 1, "round {round}: one row");
    }
    assert_eq!(conversation_count(db.conn()).await?, 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(orkestra_pg),
    ignore = "PostgreSQL only: set DATABASE_URL=postgres://..."
)]
async fn pg_appends_racing_a_close_either_land_or_write_nothing() -> anyhow::Result<()> {
    const WRITERS: usize = 16;
    let db = TestDb::postgres_only().await?;
    let ctx = tenant(db.conn(), "acme").await?;
    let conversation = active(&ConversationRepository::new(db.conn()), &ctx).await?;

    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(WRITERS + 1));
    let mut appends = Vec::new();
    for writer in 0..WRITERS {
        let conn = db.conn().clone();
        let ctx = ctx.clone();
        let barrier = barrier.clone();
        appends.push(tokio::spawn(async move {
            barrier.wait().await;
            ConversationRepository::new(&conn)
                .append_message(
                    &ctx,
                    conversation.id,
                    NewMessage::new("user", format!("w{writer}")),
                )
                .await
        }));
    }
    let close = {
        let conn = db.conn().clone();
        let ctx = ctx.clone();
        let barrier = barrier.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            ConversationRepository::new(&conn)
                .close(&ctx, conversation.id)
                .await
        })
    };
    let mut landed = 0;
    for append in appends {
        match append.await? {
            Ok(_) => landed += 1,
            refused => {
                assert_invalid_state(refused, conversation.id, "CLOSED", "append a message to")
            }
        }
    }
    close.await??;
    assert_eq!(message_count(db.conn()).await?, landed);
    let refused = ConversationRepository::new(db.conn())
        .append_message(&ctx, conversation.id, NewMessage::new("user", "late"))
        .await;
    assert_invalid_state(refused, conversation.id, "CLOSED", "append a message to");
    assert_eq!(message_count(db.conn()).await?, landed);
    Ok(())
}
