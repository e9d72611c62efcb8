//! The request context: who acts, for which tenant, under which trace.

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::validate;

/// What kind of actor performs an operation; recorded in task history and the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActorKind {
    /// A person, identified by their user id.
    User,
    /// The platform itself (schedulers, SLA sweepers, workflow engine).
    System,
    /// An automated agent acting on someone's behalf.
    Agent,
}

impl ActorKind {
    /// The label stored in `actor_type` columns: `user`, `system` or `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::System => "system",
            ActorKind::Agent => "agent",
        }
    }
}

/// Who performs an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    kind: ActorKind,
    id: String,
    name: Option<String>,
}

impl Actor {
    /// An actor of the given kind and id, with an optional display name.
    ///
    /// # Errors
    /// [`Error::Validation`] (field `actor.id` or `actor.name`) when the id or the name is blank,
    /// too long or holds a control character (see [`validate`]), or the id is the nil UUID in any
    /// of its spellings: history and audit rows would name no one.
    pub fn new(kind: ActorKind, id: impl Into<String>, name: Option<String>) -> Result<Actor> {
        let id = validate::text("actor.id", &id.into(), validate::ID_MAX)?;
        if Uuid::try_parse(&id).is_ok_and(|id| id.is_nil()) {
            return Err(Error::validation("actor.id", "must not be the nil UUID"));
        }
        let name = name
            .map(|name| validate::text("actor.name", &name, validate::NAME_MAX))
            .transpose()?;
        Ok(Actor { kind, id, name })
    }

    /// A user acting for themselves; the id is their user id.
    ///
    /// # Errors
    /// [`Error::Validation`] (field `actor.id`) when `id` is the nil UUID.
    pub fn user(id: Uuid) -> Result<Actor> {
        if id.is_nil() {
            return Err(Error::validation("actor.id", "must not be the nil UUID"));
        }
        Ok(Actor {
            kind: ActorKind::User,
            id: id.to_string(),
            name: None,
        })
    }

    /// The platform itself, under a component name such as `"sla-sweeper"`.
    ///
    /// # Errors
    /// [`Error::Validation`] when the component name is not a valid id (see [`Actor::new`]).
    pub fn system(component: &str) -> Result<Actor> {
        Actor::new(ActorKind::System, component, None)
    }

    /// The same actor with a display name.
    ///
    /// # Errors
    /// [`Error::Validation`] when the name is blank, too long or holds a control character.
    pub fn named(mut self, name: &str) -> Result<Actor> {
        self.name = Some(validate::text("actor.name", name, validate::NAME_MAX)?);
        Ok(self)
    }

    /// The kind of actor.
    pub fn kind(&self) -> ActorKind {
        self.kind
    }

    /// The actor's id (a user id, a component name, an agent id).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The display name, if known.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

/// Everything a tenant-owned read or write needs: the tenant, the actor, and optionally the trace.
///
/// Every repository method of tenant-owned data takes one; there is no way to reach such data
/// without naming its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    tenant_id: Uuid,
    actor: Actor,
    trace_id: Option<String>,
    span_id: Option<String>,
}

impl RequestContext {
    /// A context for `tenant_id`, acted on by `actor`.
    ///
    /// # Errors
    /// [`Error::Validation`] (field `tenant_id`) when `tenant_id` is the nil UUID.
    pub fn new(tenant_id: Uuid, actor: Actor) -> Result<RequestContext> {
        if tenant_id.is_nil() {
            return Err(Error::validation("tenant_id", "must not be the nil UUID"));
        }
        Ok(RequestContext {
            tenant_id,
            actor,
            trace_id: None,
            span_id: None,
        })
    }

    /// The same context carrying a trace id and optionally a span id (recorded in audit events).
    ///
    /// # Errors
    /// [`Error::Validation`] when either is blank, longer than 128 characters or holds a control
    /// character.
    pub fn with_trace(mut self, trace_id: &str, span_id: Option<&str>) -> Result<RequestContext> {
        self.trace_id = Some(validate::text("trace_id", trace_id, validate::TRACE_MAX)?);
        self.span_id = span_id
            .map(|span| validate::text("span_id", span, validate::TRACE_MAX))
            .transpose()?;
        Ok(self)
    }

    /// The tenant every read and write of this context is confined to.
    pub fn tenant_id(&self) -> Uuid {
        self.tenant_id
    }

    /// Who acts.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The trace id, if set.
    pub fn trace_id(&self) -> Option<&str> {
        self.trace_id.as_deref()
    }

    /// The span id, if set.
    pub fn span_id(&self) -> Option<&str> {
        self.span_id.as_deref()
    }
}
