//! Conversations of a tenant (a chat thread, an email thread, a Slack thread) and their messages.
//!
//! A conversation is `ACTIVE` until it is closed, and closed or active until it is archived:
//! `ACTIVE -> CLOSED -> ARCHIVED`, or `ACTIVE -> ARCHIVED` directly. Only an active conversation
//! takes messages. Every state change is one guarded `UPDATE ... WHERE status ... RETURNING`, so a
//! lost race or an illegal change writes nothing and names the state the conversation is in.

use chrono::{DateTime, FixedOffset};
use orkestra_entity::{conversations, messages, sea_orm_active_enums::ConversationStatus, tasks};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, FromQueryResult, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, Statement,
    sea_query::{Expr, ExprTrait, Func, OnConflict, Value as SeaValue},
};
use serde_json::Value;
use uuid::Uuid;

use crate::context::RequestContext;
use crate::error::{DbResultExt, Error, Result};
use crate::page::{self, Page, PageRequest, TimeCursor};
use crate::template::{self, Template, returning_all};
use crate::trace::{span, traced};
use crate::tx::Connection;
use crate::{clock, now, scope, tenant_read, tenant_transaction, validate};

/// The unique constraint a second conversation with the same channel and external id violates.
pub const EXTERNAL_KEY: &str = "conversations_tenant_id_channel_external_id_key";
/// The foreign key a conversation of a missing tenant violates.
const TENANT_FKEY: &str = "conversations_tenant_id_fkey";
/// The kind of row named in errors.
const ENTITY: &str = "conversation";

/// A conversation to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConversation {
    /// Who the conversation is with, a JSON object (for example `{"kind": "user", "id": "u-1"}`).
    pub participant: Value,
    /// The id of the conversation in its channel (a Slack thread id, an email `Message-ID`);
    /// trimmed before it is stored.
    pub external_id: Option<String>,
    /// The channel it happens on (`"slack"`, `"email"`, `"web"`); trimmed before it is stored.
    pub channel: Option<String>,
}

impl NewConversation {
    /// A conversation with `participant` and no external identity.
    pub fn new(participant: Value) -> NewConversation {
        NewConversation {
            participant,
            external_id: None,
            channel: None,
        }
    }

    /// The same conversation, identified as `external_id` on `channel`.
    pub fn external(
        mut self,
        channel: impl Into<String>,
        external_id: impl Into<String>,
    ) -> NewConversation {
        self.channel = Some(channel.into());
        self.external_id = Some(external_id.into());
        self
    }
}

/// A message to append to a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Who speaks (`"user"`, `"assistant"`, `"system"`); trimmed before it is stored.
    pub role: String,
    /// What is said, stored exactly as given (whitespace included).
    pub content: String,
    /// Anything else worth keeping with the message, a JSON object.
    pub metadata: Option<Value>,
}

impl NewMessage {
    /// A message with the given role and content and no metadata.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> NewMessage {
        NewMessage {
            role: role.into(),
            content: content.into(),
            metadata: None,
        }
    }
}

/// The conversations of the context's tenant, their messages and the tasks raised in them.
#[derive(Debug, Clone, Copy)]
pub struct ConversationRepository<'a, C> {
    db: &'a C,
}

impl<'a, C: Connection> ConversationRepository<'a, C> {
    /// A repository on `db`, a pool or a transaction.
    pub fn new(db: &'a C) -> Self {
        ConversationRepository { db }
    }

    /// Creates an active conversation in the context's tenant.
    ///
    /// The pair (channel, external id) is unique in a tenant only when both are given: rows that
    /// lack either are never duplicates of each other.
    ///
    /// # Errors
    /// - [`Error::Validation`]: a participant that is not a JSON object (or is too deep, too large
    ///   or holds a NUL character); an empty, blank, over-long or NUL-holding external id or
    ///   channel;
    /// - [`Error::Conflict`] ([`EXTERNAL_KEY`]): the tenant already has a conversation with this
    ///   channel and external id;
    /// - [`Error::Reference`]: the context's tenant does not exist;
    /// - [`Error::Db`].
    pub async fn create(
        &self,
        ctx: &RequestContext,
        conversation: NewConversation,
    ) -> Result<conversations::Model> {
        traced(span!("orkestra.conversations.create", ctx), async move {
            validate::json_object("participant", &conversation.participant)?;
            let external_id = validate::optional_text(
                "external_id",
                conversation.external_id.as_deref(),
                validate::ID_MAX,
            )?;
            let channel = validate::optional_text(
                "channel",
                conversation.channel.as_deref(),
                validate::LABEL_MAX,
            )?;
            let row = new_row(ctx, conversation.participant, external_id, channel);
            tenant_transaction(self.db, ctx, async |txn| {
                row.insert(txn)
                    .await
                    .or_constraints(EXTERNAL_KEY, TENANT_FKEY)
            })
            .await
        })
        .await
    }

    /// The conversation with this id in the context's tenant, if any.
    ///
    /// # Errors
    /// [`Error::Db`].
    pub async fn find_by_id(
        &self,
        ctx: &RequestContext,
        id: Uuid,
    ) -> Result<Option<conversations::Model>> {
        traced(
            span!("orkestra.conversations.find_by_id", ctx, conversation.id = %id),
            async move {
                let query = scope::find::<conversations::Entity>(ctx)
                    .filter(conversations::Column::Id.eq(id));
                tenant_read(self.db, ctx, async |txn| Ok(query.one(txn).await?)).await
            },
        )
        .await
    }

    /// The conversation with this external id on this channel (both compared trimmed) in the
    /// context's tenant, if any.
    ///
    /// # Errors
    /// [`Error::Validation`] for a channel or external id that could not have been stored;
    /// [`Error::Db`].
    pub async fn find_by_external_id(
        &self,
        ctx: &RequestContext,
        channel: &str,
        external_id: &str,
    ) -> Result<Option<conversations::Model>> {
        let span = span!(
            "orkestra.conversations.find_by_external_id",
            ctx,
            conversation.channel = ?channel,
            conversation.external_id = ?external_id,
        );
        traced(span, async move {
            let channel = validate::text("channel", channel, validate::LABEL_MAX)?;
            let external_id = validate::text("external_id", external_id, validate::ID_MAX)?;
            tenant_read(self.db, ctx, async |txn| {
                by_external_id(txn, ctx, &channel, &external_id).await
            })
            .await
        })
        .await
    }

    /// The conversation with this external id on this channel, created (active, with
    /// `participant`) when the tenant has none; `true` when this call created it.
    ///
    /// Safe under concurrency: one `INSERT ... ON CONFLICT DO NOTHING` on the unique key
    /// ([`EXTERNAL_KEY`]), then a read, so any number of concurrent calls end with one row and
    /// exactly one of them reports creating it. An existing conversation is returned as it is,
    /// whatever its status and participant.
    ///
    /// Inside a caller's `REPEATABLE READ` or `SERIALIZABLE` transaction on PostgreSQL, a row
    /// committed concurrently after the transaction's snapshot makes the insert fail with a
    /// serialization error ([`Error::Db`]); retry the transaction.
    ///
    /// # Errors
    /// - [`Error::Validation`]: an empty, blank, over-long or NUL-holding channel or external id;
    ///   a participant that is not a JSON object (or is too deep, too large or holds a NUL);
    /// - [`Error::Reference`]: the context's tenant does not exist;
    /// - [`Error::NotFound`]: the conversation was deleted concurrently, every time this call
    ///   tried to create and read it;
    /// - [`Error::Db`].
    pub async fn get_or_create(
        &self,
        ctx: &RequestContext,
        channel: &str,
        external_id: &str,
        participant: Value,
    ) -> Result<(conversations::Model, bool)> {
        let span = span!(
            "orkestra.conversations.get_or_create",
            ctx,
            conversation.channel = ?channel,
            conversation.external_id = ?external_id,
        );
        traced(span, async move {
            let channel = validate::text("channel", channel, validate::LABEL_MAX)?;
            let external_id = validate::text("external_id", external_id, validate::ID_MAX)?;
            validate::json_object("participant", &participant)?;
            // The read after an insert that did nothing misses the row only when it is deleted in
            // between; trying again then creates it anew.
            tenant_transaction(self.db, ctx, async |txn| {
                for _ in 0..GET_OR_CREATE_ATTEMPTS {
                    let row = new_row(
                        ctx,
                        participant.clone(),
                        Some(external_id.clone()),
                        Some(channel.clone()),
                    );
                    let inserted = conversations::Entity::insert(row)
                        .on_conflict(
                            OnConflict::columns([
                                conversations::Column::TenantId,
                                conversations::Column::Channel,
                                conversations::Column::ExternalId,
                            ])
                            .do_nothing()
                            .to_owned(),
                        )
                        .exec_without_returning(txn)
                        .await
                        .or_reference(TENANT_FKEY)?;
                    if let Some(found) = by_external_id(txn, ctx, &channel, &external_id).await? {
                        return Ok((found, inserted > 0));
                    }
                }
                Err(Error::not_found(ENTITY, format!("{channel}/{external_id}")))
            })
            .await
        })
        .await
    }

    /// Appends a message to an active conversation and moves the conversation's `updated_at`
    /// forward; returns the message as stored.
    ///
    /// Runs in one transaction (a savepoint inside a caller's): the guarded update of the
    /// conversation comes first, so a conversation that is not active, or not the tenant's,
    /// gets no message, and concurrent appends to one conversation on PostgreSQL take their turn.
    /// The conversation's new `updated_at` is therefore the time of that update, slightly before
    /// the message's `created_at` (taken once the update holds the row): page the messages, not
    /// `updated_at`, to find the newest one.
    ///
    /// # Errors
    /// - [`Error::Validation`]: an empty, blank, over-long or NUL-holding role; empty, blank,
    ///   over-long or NUL-holding content; metadata that is not a JSON object (or is too deep, too
    ///   large or holds a NUL character);
    /// - [`Error::NotFound`]: no such conversation in the tenant;
    /// - [`Error::InvalidState`]: the conversation is closed or archived;
    /// - [`Error::Db`].
    pub async fn append_message(
        &self,
        ctx: &RequestContext,
        conversation_id: Uuid,
        message: NewMessage,
    ) -> Result<messages::Model> {
        traced(
            span!("orkestra.conversations.append_message", ctx, conversation.id = %conversation_id),
            async move {
                let role = validate::text("role", &message.role, validate::LABEL_MAX)?;
                let content =
                    validate::verbatim("content", &message.content, validate::CONTENT_MAX)?;
                if let Some(metadata) = &message.metadata {
                    validate::json_object("metadata", metadata)?;
                }
                static TOUCH: Template = Template::new();
                static INSERT: Template = Template::new();
                let row = MessageRow {
                    conversation_id,
                    id: Uuid::now_v7(),
                    role,
                    content,
                    metadata: message.metadata,
                    touched_at: now(),
                    created_at: now(),
                };
                let sentinels = MessageRow {
                    conversation_id: template::id(1),
                    id: template::id(2),
                    role: template::text(1),
                    content: template::text(2),
                    metadata: Some(template::json(1)),
                    touched_at: template::time(1),
                    created_at: template::time(2),
                };
                tenant_transaction(self.db, ctx, async |txn| {
                    let backend = txn.get_database_backend();
                    let mut row = row;
                    // SQLite's RETURNING does not show what the AFTER trigger writes, so the statement moves
                    // `updated_at` itself; PostgreSQL's trigger moves it either way. Only whether a row
                    // was touched matters here: the conversation is not read back.
                    let touch = TOUCH.bind(
                        backend,
                        ctx,
                        |backend, ctx, row| row.touch_statement(backend, ctx),
                        &sentinels,
                        &row,
                        row.bind(ctx, &sentinels),
                    );
                    #[allow(clippy::disallowed_methods)]
                    // Built through scope::update_many (touch_statement).
                    let touched = txn.execute_raw(touch).await?;
                    if touched.rows_affected() == 0 {
                        return Err(refusal(txn, ctx, conversation_id, "append a message to").await);
                    }
                    // Taken after the update holds the conversation's row lock, so that on PostgreSQL messages
                    // of one conversation from one service instance get `created_at` in the order they commit,
                    // and a reader paging by `(created_at, id)` does not skip one committed late with an
                    // earlier time. Instances whose clocks disagree can still interleave by their skew.
                    row.created_at = now();
                    let insert = INSERT.bind(
                        backend,
                        ctx,
                        |backend, ctx, row| row.insert_statement(backend, ctx),
                        &sentinels,
                        &row,
                        row.bind(ctx, &sentinels),
                    );
                    let message = messages::Model::find_by_statement(insert)
                        .one(txn)
                        .await?
                        .ok_or(DbErr::RecordNotInserted)?;
                    Ok(message)
                })
                .await
            },
        )
        .await
    }

    /// A page of a conversation's messages, oldest first (by `created_at`, then id).
    ///
    /// A conversation that does not exist in the tenant has no messages: the page is empty, not an
    /// error (use [`ConversationRepository::find_by_id`] to tell the two apart).
    ///
    /// # Errors
    /// [`Error::Validation`] for a limit outside 1..=500 or a cursor (field `after`) holding a time
    /// outside years 1 to 9999 ([`validate::INSTANT_MIN`]); [`Error::Db`].
    pub async fn list_messages(
        &self,
        ctx: &RequestContext,
        conversation_id: Uuid,
        page: &PageRequest<TimeCursor>,
    ) -> Result<Page<messages::Model, TimeCursor>> {
        traced(
            span!("orkestra.conversations.list_messages", ctx, conversation.id = %conversation_id),
            async move {
                page.after.as_ref().map(TimeCursor::check).transpose()?;
                static FIRST: Template = Template::new();
                static AFTER: Template = Template::new();
                let args = MessagePage {
                    conversation_id,
                    limit: page.fetch()?,
                    after: page
                        .after
                        .map(|after| (clock::utc(after.created_at), after.id)),
                };
                let sentinels = MessagePage {
                    conversation_id: template::id(1),
                    // No page is this long: limits stop at a few hundred.
                    limit: 4_000_000_001,
                    after: args.after.map(|_| (template::time(1), template::id(2))),
                };
                let bind = [
                    (template::id(0).into(), ctx.tenant_id().into()),
                    (
                        sentinels.conversation_id.into(),
                        args.conversation_id.into(),
                    ),
                    (sentinels.limit.into(), args.limit.into()),
                    (
                        sentinels.after.map(|a| a.0).into(),
                        args.after.map(|a| a.0).into(),
                    ),
                    (
                        sentinels.after.map(|a| a.1).into(),
                        args.after.map(|a| a.1).into(),
                    ),
                ];
                let text = if args.after.is_some() { &AFTER } else { &FIRST };
                let rows = tenant_read(self.db, ctx, async |txn| {
                    let statement = text.bind(
                        txn.get_database_backend(),
                        ctx,
                        |backend, ctx, page| page.statement(backend, ctx),
                        &sentinels,
                        &args,
                        bind,
                    );
                    Ok(messages::Model::find_by_statement(statement)
                        .all(txn)
                        .await?)
                })
                .await?;
                Ok(Page::from_rows(rows, page.limit, |message| TimeCursor {
                    created_at: message.created_at,
                    id: message.id,
                }))
            },
        )
        .await
    }

    /// Closes an active conversation (`closed_at` and `updated_at` become now); returns it as
    /// stored.
    ///
    /// # Errors
    /// - [`Error::NotFound`]: no such conversation in the tenant;
    /// - [`Error::InvalidState`]: the conversation is already closed, or archived;
    /// - [`Error::Db`].
    pub async fn close(&self, ctx: &RequestContext, id: Uuid) -> Result<conversations::Model> {
        traced(
            span!("orkestra.conversations.close", ctx, conversation.id = %id),
            async move {
                let now = now();
                let close = scope::update_many::<conversations::Entity>(ctx)
                    .col_expr(
                        conversations::Column::Status,
                        Expr::value(ConversationStatus::Closed),
                    )
                    .col_expr(conversations::Column::ClosedAt, Expr::value(now))
                    .col_expr(conversations::Column::UpdatedAt, Expr::value(now))
                    .filter(conversations::Column::Id.eq(id))
                    .filter(conversations::Column::Status.eq(ConversationStatus::Active));
                tenant_transaction(self.db, ctx, async |txn| {
                    match close.exec_with_returning(txn).await?.pop() {
                        Some(conversation) => Ok(conversation),
                        None => Err(refusal(txn, ctx, id, "close").await),
                    }
                })
                .await
            },
        )
        .await
    }

    /// Archives an active or closed conversation; returns it as stored. `closed_at` keeps the
    /// time the conversation was closed, or becomes now when it was still active.
    ///
    /// # Errors
    /// - [`Error::NotFound`]: no such conversation in the tenant;
    /// - [`Error::InvalidState`]: the conversation is already archived;
    /// - [`Error::Db`].
    pub async fn archive(&self, ctx: &RequestContext, id: Uuid) -> Result<conversations::Model> {
        traced(
            span!("orkestra.conversations.archive", ctx, conversation.id = %id),
            async move {
                let now = now();
                let archive = scope::update_many::<conversations::Entity>(ctx)
                    .col_expr(
                        conversations::Column::Status,
                        Expr::value(ConversationStatus::Archived),
                    )
                    .col_expr(
                        conversations::Column::ClosedAt,
                        Func::coalesce([
                            Expr::col(conversations::Column::ClosedAt),
                            Expr::value(now),
                        ])
                        .into(),
                    )
                    .col_expr(conversations::Column::UpdatedAt, Expr::value(now))
                    .filter(conversations::Column::Id.eq(id))
                    .filter(
                        conversations::Column::Status
                            .is_in([ConversationStatus::Active, ConversationStatus::Closed]),
                    );
                tenant_transaction(self.db, ctx, async |txn| {
                    match archive.exec_with_returning(txn).await?.pop() {
                        Some(conversation) => Ok(conversation),
                        None => Err(refusal(txn, ctx, id, "archive").await),
                    }
                })
                .await
            },
        )
        .await
    }

    /// A page of the tasks raised in a conversation, in creation order (ids are UUIDv7).
    ///
    /// A conversation that does not exist in the tenant has no tasks: the page is empty, not an
    /// error.
    ///
    /// # Errors
    /// [`Error::Validation`] for a limit outside 1..=500; [`Error::Db`].
    pub async fn list_tasks(
        &self,
        ctx: &RequestContext,
        conversation_id: Uuid,
        page: &PageRequest<Uuid>,
    ) -> Result<Page<tasks::Model, Uuid>> {
        traced(
            span!("orkestra.conversations.list_tasks", ctx, conversation.id = %conversation_id),
            async move {
                let query = scope::find::<tasks::Entity>(ctx)
                    .filter(tasks::Column::ConversationId.eq(conversation_id));
                let query = page::by_id(query, tasks::Column::Id, page)?;
                let rows = tenant_read(self.db, ctx, async |txn| Ok(query.all(txn).await?)).await?;
                Ok(Page::from_rows(rows, page.limit, |task| task.id))
            },
        )
        .await
    }
}

/// The conversation with this (already validated) channel and external id.
async fn by_external_id(
    db: &impl ConnectionTrait,
    ctx: &RequestContext,
    channel: &str,
    external_id: &str,
) -> Result<Option<conversations::Model>> {
    Ok(scope::find::<conversations::Entity>(ctx)
        .filter(conversations::Column::Channel.eq(channel))
        .filter(conversations::Column::ExternalId.eq(external_id))
        .one(db)
        .await?)
}

/// How many times [`ConversationRepository::get_or_create`] inserts and reads before giving up.
const GET_OR_CREATE_ATTEMPTS: usize = 3;

/// An active conversation of the context's tenant, created now.
fn new_row(
    ctx: &RequestContext,
    participant: Value,
    external_id: Option<String>,
    channel: Option<String>,
) -> conversations::ActiveModel {
    let now = now();
    conversations::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(ctx.tenant_id()),
        external_id: Set(external_id),
        channel: Set(channel),
        participant: Set(participant),
        status: Set(ConversationStatus::Active),
        created_at: Set(now),
        updated_at: Set(now),
        closed_at: Set(None),
    }
}

/// Why a guarded write of conversation `id` matched no row: it is missing from the tenant, or its
/// state does not allow `action`. Read after the write, so it reports the state that refused it.
async fn refusal(
    db: &impl ConnectionTrait,
    ctx: &RequestContext,
    id: Uuid,
    action: &'static str,
) -> Error {
    let current = scope::find::<conversations::Entity>(ctx)
        .filter(conversations::Column::Id.eq(id))
        .one(db)
        .await;
    match current {
        Ok(Some(conversation)) => Error::InvalidState {
            entity: ENTITY,
            id: id.to_string(),
            state: conversation.status.as_str().to_owned(),
            action,
        },
        Ok(None) => Error::not_found(ENTITY, id),
        Err(error) => Error::from(error),
    }
}

/// A page of a conversation's messages: the call's values, or the sentinels its text is built
/// from.
#[derive(Debug, Clone, PartialEq)]
struct MessagePage {
    conversation_id: Uuid,
    /// Rows to fetch: the page and one more.
    limit: u64,
    /// The cursor (UTC), the last message of the previous page.
    after: Option<(DateTime<FixedOffset>, Uuid)>,
}

impl MessagePage {
    /// Oldest first, after the cursor.
    fn statement(&self, backend: DbBackend, ctx: &RequestContext) -> Statement {
        let mut query = scope::find::<messages::Entity>(ctx)
            .filter(messages::Column::ConversationId.eq(self.conversation_id));
        if let Some((created_at, id)) = self.after {
            query = query.filter(
                Expr::tuple([
                    Expr::col((messages::Entity, messages::Column::CreatedAt)),
                    Expr::col((messages::Entity, messages::Column::Id)),
                ])
                .gt(Expr::tuple([Expr::value(created_at), Expr::value(id)])),
            );
        }
        query
            .order_by_asc(messages::Column::CreatedAt)
            .order_by_asc(messages::Column::Id)
            .limit(self.limit)
            .build(backend)
    }
}

/// A message appended to a conversation, and the conversation's update.
#[derive(Debug, Clone, PartialEq)]
struct MessageRow {
    conversation_id: Uuid,
    id: Uuid,
    role: String,
    content: String,
    metadata: Option<Value>,
    /// The conversation's new `updated_at`.
    touched_at: DateTime<FixedOffset>,
    created_at: DateTime<FixedOffset>,
}

impl MessageRow {
    /// Each sentinel with this row's value in its place.
    fn bind(&self, ctx: &RequestContext, sentinels: &MessageRow) -> [(SeaValue, SeaValue); 8] {
        let s = sentinels;
        [
            (template::id(0).into(), ctx.tenant_id().into()),
            (s.conversation_id.into(), self.conversation_id.into()),
            (s.id.into(), self.id.into()),
            (s.role.clone().into(), self.role.clone().into()),
            (s.content.clone().into(), self.content.clone().into()),
            (s.metadata.clone().into(), self.metadata.clone().into()),
            (s.touched_at.into(), self.touched_at.into()),
            (s.created_at.into(), self.created_at.into()),
        ]
    }

    /// Moves the conversation's `updated_at`, if it is active.
    fn touch_statement(&self, backend: DbBackend, ctx: &RequestContext) -> Statement {
        scope::update_many::<conversations::Entity>(ctx)
            .col_expr(
                conversations::Column::UpdatedAt,
                Expr::value(self.touched_at),
            )
            .filter(conversations::Column::Id.eq(self.conversation_id))
            .filter(conversations::Column::Status.eq(ConversationStatus::Active))
            .build(backend)
    }

    /// `INSERT ... RETURNING` every column.
    fn insert_statement(&self, backend: DbBackend, ctx: &RequestContext) -> Statement {
        let model = messages::ActiveModel {
            id: Set(self.id),
            tenant_id: Set(ctx.tenant_id()),
            conversation_id: Set(self.conversation_id),
            role: Set(self.role.clone()),
            content: Set(self.content.clone()),
            metadata: Set(self.metadata.clone()),
            created_at: Set(self.created_at),
        };
        let mut query = messages::Entity::insert(model).into_query();
        query.returning(returning_all::<messages::Entity>(backend));
        backend.build(&query)
    }
}

#[cfg(test)]
mod tests {
    //! The SQL each method sends, on a mock PostgreSQL: every statement on a tenant-owned table
    //! names the context's tenant.

    use std::collections::BTreeMap;

    use chrono::{DateTime, FixedOffset};
    use sea_orm::{DatabaseConnection, DbBackend, MockDatabase, MockExecResult, Value};
    use serde_json::json;

    use super::*;
    use crate::context::Actor;
    use crate::testing::{
        Call, affected, bound, committed, one_each, sent, statements, tenant_calls,
    };

    fn ctx() -> Result<RequestContext> {
        RequestContext::new(Uuid::now_v7(), Actor::user(Uuid::now_v7())?)
    }

    fn time() -> DateTime<FixedOffset> {
        now()
    }

    /// A conversation row as the mock returns it; the status is a string (sea-orm 2.0.4 mocks
    /// cannot carry a native enum value).
    fn conversation_row(tenant: Uuid, id: Uuid, status: &str) -> BTreeMap<&'static str, Value> {
        BTreeMap::from([
            ("id", id.into()),
            ("tenant_id", tenant.into()),
            ("external_id", Some("thread-1".to_owned()).into()),
            ("channel", Some("slack".to_owned()).into()),
            ("participant", json!({"kind": "user"}).into()),
            ("status", status.into()),
            ("created_at", time().into()),
            ("updated_at", time().into()),
            ("closed_at", Option::<DateTime<FixedOffset>>::None.into()),
        ])
    }

    fn message_row(tenant: Uuid, conversation: Uuid) -> messages::Model {
        messages::Model {
            id: Uuid::now_v7(),
            tenant_id: tenant,
            conversation_id: conversation,
            role: "user".to_owned(),
            content: "hello".to_owned(),
            metadata: None,
            created_at: time(),
        }
    }

    fn task_row(tenant: Uuid, conversation: Uuid) -> BTreeMap<&'static str, Value> {
        let none_uuid = || Value::from(Option::<Uuid>::None);
        let none_time = || Value::from(Option::<DateTime<FixedOffset>>::None);
        BTreeMap::from([
            ("id", Uuid::now_v7().into()),
            ("tenant_id", tenant.into()),
            ("workflow_id", "wf-1".into()),
            ("workflow_run_id", "run-1".into()),
            ("title", "Approve".into()),
            ("description", Option::<String>::None.into()),
            ("form_schema", json!({}).into()),
            ("form_data", Option::<serde_json::Value>::None.into()),
            ("assigned_user_id", none_uuid()),
            ("assigned_group_id", none_uuid()),
            ("claimed_by", none_uuid()),
            ("context", json!({}).into()),
            ("conversation_id", Some(conversation).into()),
            ("sla_deadline", none_time()),
            ("sla_config", Option::<serde_json::Value>::None.into()),
            ("status", "CREATED".into()),
            ("created_at", time().into()),
            ("updated_at", time().into()),
            ("completed_at", none_time()),
            ("completed_by", none_uuid()),
        ])
    }

    fn exec(rows_affected: u64) -> MockExecResult {
        MockExecResult {
            last_insert_id: 0,
            rows_affected,
        }
    }

    /// Each call the mock received, checked to bind the tenant first, and every statement it sent
    /// after that to carry the tenant: as a `"tenant_id" = $n` predicate, or as the inserted
    /// `tenant_id` value.
    #[track_caller]
    fn scoped_calls(db: DatabaseConnection, tenant: Uuid) -> Vec<Call> {
        let calls = tenant_calls(db, tenant);
        for stmt in sent(&calls) {
            crate::testing::assert_scoped(&stmt, tenant);
        }
        calls
    }

    #[tokio::test]
    async fn create_inserts_into_the_tenant() -> Result<()> {
        let ctx = ctx()?;
        let tenant = ctx.tenant_id();
        let db = MockDatabase::new(DbBackend::Postgres)
            .append_exec_results([bound()])
            .append_query_results([[conversation_row(tenant, Uuid::now_v7(), "ACTIVE")]])
            .into_connection();
        let created = ConversationRepository::new(&db)
            .create(
                &ctx,
                NewConversation::new(json!({"kind": "user"})).external("slack", "thread-1"),
            )
            .await?;
        assert_eq!(created.status, ConversationStatus::Active);
        let calls = scoped_calls(db, tenant);
        assert_eq!(committed(&calls), [true]);
        let statements = one_each(&calls);
        assert!(
            statements[0]
                .sql
                .starts_with("INSERT INTO \"conversations\"")
        );
        Ok(())
    }

    #[tokio::test]
    async fn refused_arguments_send_nothing() -> Result<()> {
        let ctx = ctx()?;
        let id = Uuid::now_v7();
        let db = MockDatabase::new(DbBackend::Postgres).into_connection();
        let repo = ConversationRepository::new(&db);
        let refused = |result: Result<()>, field: &str| {
            assert!(
                matches!(&result, Err(Error::Validation { field: f, .. }) if *f == field),
                "{field}: {result:?}"
            );
        };
        let create = repo.create(&ctx, NewConversation::new(json!([1]))).await;
        refused(create.map(drop), "participant");
        let lookup = repo.find_by_external_id(&ctx, " ", "thread-1").await;
        refused(lookup.map(drop), "channel");
        let get = repo.get_or_create(&ctx, "slack", "", json!({})).await;
        refused(get.map(drop), "external_id");
        let get = repo
            .get_or_create(&ctx, "slack", "thread-1", json!("x"))
            .await;
        refused(get.map(drop), "participant");
        let append = repo
            .append_message(&ctx, id, NewMessage::new("user", " "))
            .await;
        refused(append.map(drop), "content");
        let mut message = NewMessage::new("user", "hello");
        message.metadata = Some(json!(1));
        let append = repo.append_message(&ctx, id, message).await;
        refused(append.map(drop), "metadata");
        let list = repo.list_messages(&ctx, id, &PageRequest::first(0)).await;
        refused(list.map(drop), "limit");
        let list = repo.list_tasks(&ctx, id, &PageRequest::first(501)).await;
        refused(list.map(drop), "limit");
        assert!(
            statements(db).is_empty(),
            "a refused call reached the database"
        );
        Ok(())
    }

    #[tokio::test]
    async fn lookups_name_the_tenant() -> Result<()> {
        let ctx = ctx()?;
        let tenant = ctx.tenant_id();
        let id = Uuid::now_v7();
        let db = MockDatabase::new(DbBackend::Postgres)
            .append_exec_results([bound(), bound()])
            .append_query_results([[conversation_row(tenant, id, "ACTIVE")]])
            .append_query_results([[conversation_row(tenant, id, "ACTIVE")]])
            .into_connection();
        let repo = ConversationRepository::new(&db);
        assert!(repo.find_by_id(&ctx, id).await?.is_some());
        assert!(
            repo.find_by_external_id(&ctx, " slack ", "thread-1")
                .await?
                .is_some()
        );
        let statements = one_each(&scoped_calls(db, tenant));
        assert_eq!(statements.len(), 2);
        assert!(statements.iter().all(|s| s.sql.starts_with("SELECT")));
        // The lookup is trimmed, as the value was when stored.
        assert!(
            statements[1]
                .values
                .as_ref()
                .is_some_and(|v| v.0.contains(&Value::from("slack")))
        );
        Ok(())
    }

    #[tokio::test]
    async fn get_or_create_inserts_on_conflict_do_nothing_then_reads() -> Result<()> {
        let ctx = ctx()?;
        let tenant = ctx.tenant_id();
        let row = conversation_row(tenant, Uuid::now_v7(), "ACTIVE");
        let db = MockDatabase::new(DbBackend::Postgres)
            .append_exec_results([bound(), exec(1), bound(), exec(0)])
            .append_query_results([[row.clone()], [row]])
            .into_connection();
        let repo = ConversationRepository::new(&db);
        let (first, created) = repo
            .get_or_create(&ctx, "slack", "thread-1", json!({}))
            .await?;
        assert!(created);
        let (second, created) = repo
            .get_or_create(&ctx, "slack", "thread-1", json!({}))
            .await?;
        assert!(!created);
        assert_eq!(first.id, second.id);
        let calls = scoped_calls(db, tenant);
        assert_eq!(committed(&calls), [true, true]);
        // Per call: the insert, then the read.
        assert!(
            calls.iter().all(|call| call.statements.len() == 2),
            "{calls:?}"
        );
        let statements = sent(&calls);
        for insert in [&statements[0], &statements[2]] {
            assert!(
                insert.sql.ends_with(
                    "ON CONFLICT (\"tenant_id\", \"channel\", \"external_id\") DO NOTHING"
                ),
                "{}",
                insert.sql
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn append_message_updates_then_inserts_in_one_transaction() -> Result<()> {
        let ctx = ctx()?;
        let tenant = ctx.tenant_id();
        let id = Uuid::now_v7();
        let db = MockDatabase::new(DbBackend::Postgres)
            // The binding, then the conversation's update (one row).
            .append_exec_results([bound(), affected(1)])
            .append_query_results([[message_row(tenant, id)]])
            .into_connection();
        ConversationRepository::new(&db)
            .append_message(&ctx, id, NewMessage::new("user", "hello"))
            .await?;
        // One transaction: BEGIN, the binding, the update, the insert, COMMIT.
        let calls = tenant_calls(db, tenant);
        assert_eq!(committed(&calls), [true], "one transaction: {calls:?}");
        let sql: Vec<&str> = calls[0].statements.iter().map(|s| s.sql.as_str()).collect();
        assert_eq!(sql.len(), 2, "{sql:?}");
        assert!(sql[0].starts_with("UPDATE \"conversations\""), "{}", sql[0]);
        assert!(
            sql[0].contains("\"status\" = $4::\"conversation_status\""),
            "{}",
            sql[0]
        );
        assert!(sql[1].starts_with("INSERT INTO \"messages\""), "{}", sql[1]);
        Ok(())
    }

    #[tokio::test]
    async fn append_message_statements_name_the_tenant() -> Result<()> {
        let ctx = ctx()?;
        let tenant = ctx.tenant_id();
        let id = Uuid::now_v7();
        let db = MockDatabase::new(DbBackend::Postgres)
            // The binding, then the conversation's update (one row).
            .append_exec_results([bound(), affected(1)])
            .append_query_results([[message_row(tenant, id)]])
            .into_connection();
        ConversationRepository::new(&db)
            .append_message(&ctx, id, NewMessage::new("user", "hello"))
            .await?;
        assert_eq!(sent(&scoped_calls(db, tenant)).len(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn append_message_to_a_closed_conversation_diagnoses_and_inserts_nothing() -> Result<()> {
        let ctx = ctx()?;
        let tenant = ctx.tenant_id();
        let id = Uuid::now_v7();
        let db = MockDatabase::new(DbBackend::Postgres)
            // The binding, then the conversation's update (no row: it is closed).
            .append_exec_results([bound(), affected(0)])
            .append_query_results([[conversation_row(tenant, id, "CLOSED")]])
            .into_connection();
        let error = ConversationRepository::new(&db)
            .append_message(&ctx, id, NewMessage::new("user", "hello"))
            .await
            .expect_err("a closed conversation takes no message");
        assert!(
            matches!(&error, Error::InvalidState { state, action, .. }
                if state == "CLOSED" && *action == "append a message to"),
            "{error:?}"
        );
        let calls = scoped_calls(db, tenant);
        assert_eq!(committed(&calls), [false]);
        let statements = sent(&calls);
        assert_eq!(statements.len(), 2);
        assert!(statements[0].sql.starts_with("UPDATE"));
        assert!(statements[1].sql.starts_with("SELECT"));
        Ok(())
    }

    #[tokio::test]
    async fn list_messages_pages_by_created_at_and_id() -> Result<()> {
        let ctx = ctx()?;
        let tenant = ctx.tenant_id();
        let id = Uuid::now_v7();
        let db = MockDatabase::new(DbBackend::Postgres)
            .append_exec_results([bound()])
            .append_query_results([[message_row(tenant, id), message_row(tenant, id)]])
            .into_connection();
        let cursor = TimeCursor {
            created_at: time(),
            id: Uuid::now_v7(),
        };
        let page = ConversationRepository::new(&db)
            .list_messages(&ctx, id, &PageRequest::after(cursor, 1))
            .await?;
        assert_eq!(page.items.len(), 1);
        assert!(page.next.is_some());
        let statements = one_each(&scoped_calls(db, tenant));
        assert_eq!(statements.len(), 1);
        let sql = &statements[0].sql;
        assert!(
            sql.contains("(\"messages\".\"created_at\", \"messages\".\"id\") > ($"),
            "{sql}"
        );
        assert!(
            sql.ends_with(
                "ORDER BY \"messages\".\"created_at\" ASC, \"messages\".\"id\" ASC LIMIT $5"
            ),
            "{sql}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn close_is_guarded_and_diagnosed_in_the_tenant() -> Result<()> {
        let ctx = ctx()?;
        let tenant = ctx.tenant_id();
        let id = Uuid::now_v7();
        let db = MockDatabase::new(DbBackend::Postgres)
            .append_exec_results([bound(), bound()])
            .append_query_results([[conversation_row(tenant, id, "CLOSED")]])
            .append_query_results([Vec::<BTreeMap<&str, Value>>::new()])
            .append_query_results([Vec::<BTreeMap<&str, Value>>::new()])
            .into_connection();
        let repo = ConversationRepository::new(&db);
        repo.close(&ctx, id).await?;
        let error = repo.close(&ctx, id).await.expect_err("missing");
        assert!(
            matches!(
                error,
                Error::NotFound {
                    entity: "conversation",
                    ..
                }
            ),
            "{error:?}"
        );
        let calls = scoped_calls(db, tenant);
        assert_eq!(committed(&calls), [true, false]);
        // A miss reads the conversation once, to say why.
        assert_eq!(calls[1].statements.len(), 2, "{calls:?}");
        let statements = sent(&calls);
        assert_eq!(statements.len(), 3);
        assert!(statements[0].sql.starts_with("UPDATE \"conversations\""));
        assert!(statements[0].sql.contains("RETURNING"));
        Ok(())
    }

    #[tokio::test]
    async fn archive_is_guarded_and_keeps_closed_at() -> Result<()> {
        let ctx = ctx()?;
        let tenant = ctx.tenant_id();
        let id = Uuid::now_v7();
        let db = MockDatabase::new(DbBackend::Postgres)
            .append_exec_results([bound(), bound()])
            .append_query_results([[conversation_row(tenant, id, "ARCHIVED")]])
            .append_query_results([Vec::<BTreeMap<&str, Value>>::new()])
            .append_query_results([[conversation_row(tenant, id, "ARCHIVED")]])
            .into_connection();
        let repo = ConversationRepository::new(&db);
        repo.archive(&ctx, id).await?;
        let error = repo.archive(&ctx, id).await.expect_err("archived already");
        assert!(
            matches!(&error, Error::InvalidState { state, action: "archive", .. }
                if state == "ARCHIVED"),
            "{error:?}"
        );
        let calls = scoped_calls(db, tenant);
        assert_eq!(committed(&calls), [true, false]);
        assert_eq!(calls[1].statements.len(), 2, "{calls:?}");
        let statements = sent(&calls);
        assert_eq!(statements.len(), 3);
        assert!(
            statements[0]
                .sql
                .contains("\"closed_at\" = COALESCE(\"closed_at\", $"),
            "{}",
            statements[0].sql
        );
        assert!(statements[0].sql.contains("\"status\" IN ("));
        Ok(())
    }

    #[tokio::test]
    async fn list_tasks_pages_by_id() -> Result<()> {
        let ctx = ctx()?;
        let tenant = ctx.tenant_id();
        let id = Uuid::now_v7();
        let db = MockDatabase::new(DbBackend::Postgres)
            .append_exec_results([bound()])
            .append_query_results([[task_row(tenant, id)]])
            .into_connection();
        let page = ConversationRepository::new(&db)
            .list_tasks(&ctx, id, &PageRequest::after(Uuid::now_v7(), 10))
            .await?;
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.next, None);
        let statements = one_each(&scoped_calls(db, tenant));
        assert_eq!(statements.len(), 1);
        assert!(statements[0].sql.contains("\"tasks\".\"id\" > $"));
        Ok(())
    }
}
