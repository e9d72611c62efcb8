//! Behaviour of the generated status enums, and their parsing from the labels an API receives.

use std::str::FromStr;

use crate::sea_orm_active_enums::{
    AssignmentStrategy, ConversationStatus, GroupStatus, TaskStatus, TenantStatus, UserRole,
    UserStatus,
};

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

impl GroupStatus {
    /// The label stored in the database (`"ACTIVE"`, `"ARCHIVED"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            GroupStatus::Active => "ACTIVE",
            GroupStatus::Archived => "ARCHIVED",
        }
    }

    /// Whether the group takes new tasks and members, and offers its tasks to its members.
    pub fn is_active(&self) -> bool {
        *self == GroupStatus::Active
    }
}

impl UserStatus {
    /// The label stored in the database (`"ACTIVE"`, `"INACTIVE"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            UserStatus::Active => "ACTIVE",
            UserStatus::Inactive => "INACTIVE",
        }
    }

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

/// A string that names no variant of an enum: what parsing one of the enums of this crate from an
/// API's input refuses.
///
/// Parsing (`"IN_PROGRESS".parse::<TaskStatus>()`) accepts exactly the labels stored in the
/// database, upper-case as the schema spells them (`"CLAIMED"`, `"ROUND_ROBIN"`): no other case, no
/// surrounding whitespace, no abbreviation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVariant {
    /// The database type of the enum (`"task_status"`, `"user_role"`, ...).
    pub kind: &'static str,
    /// The string refused, as given.
    pub value: String,
}

impl std::fmt::Display for UnknownVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Debug formatting quotes and escapes the value, so control characters and NUL bytes from
        // an untrusted caller never reach a log line raw.
        write!(f, "unknown {} {:?}", self.kind, self.value)
    }
}

impl std::error::Error for UnknownVariant {}

/// `FromStr` for a generated enum, through the exact-label `TryFrom<&str>` its derive provides.
macro_rules! parse_labels {
    ($($enum:ty => $kind:literal),* $(,)?) => {$(
        impl FromStr for $enum {
            type Err = UnknownVariant;

            /// Parses a database label exactly (`"ACTIVE"`, not `"active"` or `" ACTIVE"`).
            fn from_str(value: &str) -> Result<Self, UnknownVariant> {
                <$enum>::try_from(value).map_err(|_| UnknownVariant {
                    kind: $kind,
                    value: value.to_owned(),
                })
            }
        }
    )*};
}

parse_labels! {
    TaskStatus => "task_status",
    TenantStatus => "tenant_status",
    UserRole => "user_role",
    UserStatus => "user_status",
    ConversationStatus => "conversation_status",
    AssignmentStrategy => "assignment_strategy",
    GroupStatus => "group_status",
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use sea_orm::Iterable;

    use super::*;

    /// Each label parses to its variant, every variant has a label, near misses are refused, and
    /// each variant serialises to its label in JSON and back (as a REST layer hands it on).
    fn parses_exactly<E>(kind: &str, labels: &[(&str, E)])
    where
        E: FromStr<Err = UnknownVariant>
            + Iterable
            + PartialEq
            + Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
    {
        for (label, variant) in labels {
            let json = serde_json::to_value(variant).expect("an enum serialises");
            assert_eq!(json, serde_json::json!(label), "{kind} {variant:?}");
            let back: E = serde_json::from_value(json).expect("a label deserialises");
            assert_eq!(&back, variant, "{kind} {label}");
        }
        // The Rust variant names were what models carried before the labels.
        for (label, variant) in labels {
            let name = format!("{variant:?}");
            if name != *label {
                assert!(serde_json::from_value::<E>(serde_json::json!(name)).is_err());
            }
        }
        assert_eq!(
            E::iter().count(),
            labels.len(),
            "{kind}: a variant is missing"
        );
        let mut refused = vec![
            String::new(),
            " ".to_owned(),
            "\0".to_owned(),
            "IN_PROGRESS".to_owned(),
            "unknown".to_owned(),
            "'; DROP TABLE tasks; --".to_owned(),
        ];
        for (label, variant) in labels {
            assert_eq!(label.parse::<E>().as_ref(), Ok(variant), "{kind} {label}");
            refused.extend([
                label.to_lowercase(),
                format!(" {label}"),
                format!("{label}\n"),
                format!("{label}\0"),
                format!("\0{label}"),
                label.replace('_', " "),
                label.replace('_', "-"),
            ]);
        }
        for value in refused {
            if labels.iter().any(|(label, _)| *label == value) {
                continue; // `ADMIN` has no `_` to replace.
            }
            let error = value.parse::<E>().expect_err(&value);
            assert_eq!(error.kind, kind);
            assert_eq!(error.value, value);
        }
    }

    #[test]
    fn every_enum_parses_exactly_its_database_labels() {
        use AssignmentStrategy as A;
        use ConversationStatus as C;
        use GroupStatus as G;
        use TaskStatus as T;
        use TenantStatus as N;
        use UserRole as R;
        use UserStatus as U;
        let tasks = [
            ("CREATED", T::Created),
            ("ASSIGNED", T::Assigned),
            ("CLAIMED", T::Claimed),
            ("COMPLETED", T::Completed),
            ("ESCALATED", T::Escalated),
            ("EXPIRED", T::Expired),
            ("CANCELLED", T::Cancelled),
        ];
        parses_exactly("task_status", &tasks);
        let tenants = [
            ("ACTIVE", N::Active),
            ("SUSPENDED", N::Suspended),
            ("DELETED", N::Deleted),
        ];
        parses_exactly("tenant_status", &tenants);
        parses_exactly("user_role", &[("ADMIN", R::Admin), ("MEMBER", R::Member)]);
        let users = [("ACTIVE", U::Active), ("INACTIVE", U::Inactive)];
        parses_exactly("user_status", &users);
        let conversations = [
            ("ACTIVE", C::Active),
            ("CLOSED", C::Closed),
            ("ARCHIVED", C::Archived),
        ];
        parses_exactly("conversation_status", &conversations);
        let strategies = [
            ("ROUND_ROBIN", A::RoundRobin),
            ("LOAD_BALANCED", A::LoadBalanced),
            ("MANUAL", A::Manual),
        ];
        parses_exactly("assignment_strategy", &strategies);
        let groups = [("ACTIVE", G::Active), ("ARCHIVED", G::Archived)];
        parses_exactly("group_status", &groups);
        // What `as_str` writes, parsing reads back.
        for status in T::iter() {
            assert_eq!(status.as_str().parse::<T>(), Ok(status));
        }
    }

    #[test]
    fn the_error_escapes_what_it_shows() {
        let error = "a\0b\n\u{202e}".parse::<TaskStatus>().expect_err("refused");
        assert_eq!(error.to_string(), r#"unknown task_status "a\0b\n\u{202e}""#);
        let boxed: Box<dyn std::error::Error> = Box::new(error);
        assert!(boxed.source().is_none());
    }
}
