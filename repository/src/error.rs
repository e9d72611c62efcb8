//! The one error type of the repositories.

use orkestra_entity::sea_orm_active_enums::TaskStatus;
use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr, SqlErr, sqlx};
use uuid::Uuid;

/// A task operation, named in [`Error::InvalidTransition`] and [`Error::Forbidden`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskAction {
    /// Assign or reassign to a user and/or a group.
    Assign,
    /// Claim (start working on) the task.
    Claim,
    /// Give a claim back.
    Release,
    /// Complete with form data.
    Complete,
    /// Escalate.
    Escalate,
    /// Mark as expired (SLA passed).
    Expire,
    /// Cancel.
    Cancel,
}

impl TaskAction {
    /// The verb as recorded in `task_history.action` (`assigned`, `claimed`, ...).
    pub fn history_label(self) -> &'static str {
        match self {
            TaskAction::Assign => "assigned",
            TaskAction::Claim => "claimed",
            TaskAction::Release => "released",
            TaskAction::Complete => "completed",
            TaskAction::Escalate => "escalated",
            TaskAction::Expire => "expired",
            TaskAction::Cancel => "cancelled",
        }
    }
}

impl std::fmt::Display for TaskAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = match self {
            TaskAction::Assign => "assign",
            TaskAction::Claim => "claim",
            TaskAction::Release => "release",
            TaskAction::Complete => "complete",
            TaskAction::Escalate => "escalate",
            TaskAction::Expire => "expire",
            TaskAction::Cancel => "cancel",
        };
        f.write_str(verb)
    }
}

/// Everything a repository call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No row of this kind with this id exists in the context's tenant (rows of other tenants are
    /// indistinguishable from missing ones).
    #[error("{entity} {id} not found")]
    NotFound {
        /// The kind of row (`"task"`, `"user"`, ...).
        entity: &'static str,
        /// The id (or slug, email, external id) looked up.
        id: String,
    },
    /// A unique constraint refused the write.
    #[error("conflict: the value must be unique ({constraint})")]
    Conflict {
        /// The constraint that refused it, such as `users_tenant_id_email_key`.
        constraint: String,
    },
    /// A foreign key refused the write: the row it references does not exist in this tenant
    /// (it belongs to another tenant, or to none), or a row still references the one deleted.
    #[error("reference refused: {constraint}")]
    Reference {
        /// The foreign key that refused it, such as `tasks_tenant_id_assigned_user_id_fkey`.
        constraint: String,
    },
    /// The task is not in a state that allows the action (including after losing a race).
    #[error("cannot {action} task {task_id}: it is {current}")]
    InvalidTransition {
        /// The task.
        task_id: Uuid,
        /// Its status when the action was refused.
        current: TaskStatus,
        /// What was attempted.
        action: TaskAction,
    },
    /// A tenant, conversation or user is not in a state that allows the action (a deleted tenant
    /// cannot be suspended; a closed conversation takes no messages; an inactive user cannot
    /// claim the next task).
    #[error("cannot {action} {entity} {id}: it is {state}")]
    InvalidState {
        /// The kind of row (`"tenant"`, `"conversation"`, `"user"`).
        entity: &'static str,
        /// Its id.
        id: String,
        /// Its status when the action was refused.
        state: String,
        /// What was attempted (`"suspend"`, `"append a message to"`, ...).
        action: &'static str,
    },
    /// The task is in a state that allows the action, but not by this user.
    #[error("cannot {action} task {task_id}: {reason}")]
    Forbidden {
        /// The task.
        task_id: Uuid,
        /// What was attempted.
        action: TaskAction,
        /// Why not (for example, "the user is neither the assignee nor a member of the group").
        reason: String,
    },
    /// An argument was refused before anything was written.
    #[error("invalid {field}: {reason}")]
    Validation {
        /// The argument or field (`"email"`, `"form_schema"`, ...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The connection's database role may not do this: system-level work on a role that is not
    /// `orkestra_system`, or a write the role holds no privilege for (the application role cannot
    /// change or delete audit events, for one). PostgreSQL only.
    #[error("permission denied: {reason}")]
    Denied {
        /// What was refused, as the database or the check put it.
        reason: String,
    },
    /// The database is set up in a way the repositories cannot work on safely, found by
    /// [`connect`](crate::connect()): a Citus coordinator without
    /// `citus.propagate_set_commands = 'local'` never forwards the tenant binding to the workers,
    /// so every read would come back empty and every write be refused.
    #[error("misconfigured database: {reason}")]
    Misconfigured {
        /// What is wrong and how to set it right.
        reason: String,
    },
    /// No connection became free within the pool's acquire timeout
    /// ([`DbConfig::acquire_timeout`](crate::DbConfig)): every connection is in use, or the server
    /// cannot be reached. Nothing was sent; the call can be retried.
    #[error("no database connection available within the pool's acquire timeout")]
    PoolTimeout,
    /// Any other database failure (the connection lost mid-call, a server error, ...).
    #[error("database error: {0}")]
    Db(#[source] DbErr),
}

/// The constraint of an error whose constraint neither the driver nor the call site could name.
const UNNAMED: &str = "unnamed constraint";

/// The result type of the repositories.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The variant's name (`"NotFound"`, `"InvalidTransition"`, ...): what the repository's
    /// traces record as `error.type` when a call fails, and a label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "NotFound",
            Error::Conflict { .. } => "Conflict",
            Error::Reference { .. } => "Reference",
            Error::InvalidTransition { .. } => "InvalidTransition",
            Error::InvalidState { .. } => "InvalidState",
            Error::Forbidden { .. } => "Forbidden",
            Error::Validation { .. } => "Validation",
            Error::Denied { .. } => "Denied",
            Error::Misconfigured { .. } => "Misconfigured",
            Error::PoolTimeout => "PoolTimeout",
            Error::Db(_) => "Db",
        }
    }

    /// A validation error for `field`.
    pub fn validation(field: &'static str, reason: impl Into<String>) -> Error {
        Error::Validation {
            field,
            reason: reason.into(),
        }
    }

    /// A not-found error.
    pub fn not_found(entity: &'static str, id: impl ToString) -> Error {
        Error::NotFound {
            entity,
            id: id.to_string(),
        }
    }

    /// Classifies a database error, naming the constraint the driver reports.
    ///
    /// SQLite does not report constraint names; `unique` and `reference` are the unique key and
    /// the foreign key the call site knows it can violate, used when the driver is silent.
    pub(crate) fn from_db_with(
        error: DbErr,
        unique: Option<&str>,
        reference: Option<&str>,
    ) -> Error {
        if matches!(error, DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)) {
            return Error::PoolTimeout;
        }
        if driver_code(&error).as_deref() == Some(INSUFFICIENT_PRIVILEGE) {
            return Error::Denied {
                reason: driver_message(&error).unwrap_or_else(|| error.to_string()),
            };
        }
        let Some(kind) = error.sql_err() else {
            return Error::Db(error);
        };
        let named = |fallback: Option<&str>| {
            driver_constraint(&error)
                .or_else(|| fallback.map(str::to_owned))
                .unwrap_or_else(|| UNNAMED.to_owned())
        };
        match kind {
            SqlErr::UniqueConstraintViolation(_) => Error::Conflict {
                constraint: named(unique),
            },
            SqlErr::ForeignKeyConstraintViolation(_) => Error::Reference {
                constraint: named(reference),
            },
            _ => Error::Db(error),
        }
    }

    /// The SQLSTATE the server reported, when this is an [`Error::Db`] from the server (`None`
    /// for every other variant, and for errors that never reached it): for telling apart the
    /// server errors this crate does not classify, such as Citus's `0A000` (`feature not
    /// supported`).
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            Error::Db(error) => driver_code(error),
            _ => None,
        }
    }

    /// Whether this is a refusal by a foreign key whose name the driver did not report.
    pub(crate) fn is_unnamed_reference(&self) -> bool {
        matches!(self, Error::Reference { constraint } if constraint == UNNAMED)
    }
}

/// SQLSTATE `insufficient_privilege`: a missing privilege, or the audit trail's refusal of an update.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// The database error the driver reports, if the error is one.
fn database_error(error: &DbErr) -> Option<&(dyn sqlx::error::DatabaseError + 'static)> {
    match error {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            e.as_database_error()
        }
        _ => None,
    }
}

/// The SQLSTATE the driver reports.
fn driver_code(error: &DbErr) -> Option<String> {
    database_error(error)
        .and_then(|e| e.code())
        .map(|code| code.into_owned())
}

/// The server's message, as it wrote it.
fn driver_message(error: &DbErr) -> Option<String> {
    database_error(error).map(|e| e.message().to_owned())
}

/// The constraint name the driver reports (PostgreSQL does; SQLite does not).
fn driver_constraint(error: &DbErr) -> Option<String> {
    database_error(error)
        .and_then(|e| e.constraint())
        .map(str::to_owned)
}

impl From<DbErr> for Error {
    fn from(error: DbErr) -> Error {
        Error::from_db_with(error, None, None)
    }
}

/// Names the constraints a call site can violate, for drivers that do not (SQLite).
pub(crate) trait DbResultExt<T> {
    /// Maps the error, naming `unique` for a unique-key refusal the driver did not name.
    fn or_unique(self, unique: &str) -> Result<T>;
    /// Maps the error, naming `reference` for a foreign-key refusal the driver did not name.
    fn or_reference(self, reference: &str) -> Result<T>;
    /// Maps the error, naming `unique` or `reference` when the driver did not.
    fn or_constraints(self, unique: &str, reference: &str) -> Result<T>;
}

impl<T> DbResultExt<T> for std::result::Result<T, DbErr> {
    fn or_unique(self, unique: &str) -> Result<T> {
        self.map_err(|error| Error::from_db_with(error, Some(unique), None))
    }

    fn or_reference(self, reference: &str) -> Result<T> {
        self.map_err(|error| Error::from_db_with(error, None, Some(reference)))
    }

    fn or_constraints(self, unique: &str, reference: &str) -> Result<T> {
        self.map_err(|error| Error::from_db_with(error, Some(unique), Some(reference)))
    }
}
