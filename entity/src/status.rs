//! Behaviour of the generated status enums.

use crate::sea_orm_active_enums::{ConversationStatus, TaskStatus, TenantStatus, UserStatus};

impl TaskStatus {
    /// The states in which a task still waits for someone: created, assigned, claimed or escalated.
    pub const OPEN: [TaskStatus; 4] = [
        TaskStatus::Created,
        TaskStatus::Assigned,
        TaskStatus::Claimed,
        TaskStatus::Escalated,
    ];

    /// Whether the task still waits for someone (see [`TaskStatus::OPEN`]).
    pub fn is_open(&self) -> bool {
        Self::OPEN.contains(self)
    }

    /// Whether the task has reached a final state (completed, expired or cancelled).
    pub fn is_final(&self) -> bool {
        !self.is_open()
    }

    /// The label stored in the database (`"CLAIMED"`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            TaskStatus::Created => "CREATED",
            TaskStatus::Assigned => "ASSIGNED",
            TaskStatus::Claimed => "CLAIMED",
            TaskStatus::Completed => "COMPLETED",
            TaskStatus::Escalated => "ESCALATED",
            TaskStatus::Expired => "EXPIRED",
            TaskStatus::Cancelled => "CANCELLED",
        }
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TenantStatus {
    /// The label stored in the database (`"ACTIVE"`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            TenantStatus::Active => "ACTIVE",
            TenantStatus::Suspended => "SUSPENDED",
            TenantStatus::Deleted => "DELETED",
        }
    }

    /// Whether the tenant may use the platform (only `ACTIVE` tenants may).
    pub fn is_active(&self) -> bool {
        *self == TenantStatus::Active
    }
}

impl UserStatus {
    /// Whether the user may be assigned work and claim it.
    pub fn is_active(&self) -> bool {
        *self == UserStatus::Active
    }
}

impl ConversationStatus {
    /// The label stored in the database (`"ACTIVE"`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            ConversationStatus::Active => "ACTIVE",
            ConversationStatus::Closed => "CLOSED",
            ConversationStatus::Archived => "ARCHIVED",
        }
    }

    /// Whether messages may still be appended.
    pub fn is_active(&self) -> bool {
        *self == ConversationStatus::Active
    }
}
