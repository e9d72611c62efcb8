//! Tenant isolation as a property: random sequences of repository operations, each acted by one of
//! three tenants sharing a database, never let a tenant see or change another tenant's rows.
//!
//! Each case migrates a database (in-memory SQLite, or a fresh PostgreSQL database when
//! `DATABASE_URL` names a server), creates three tenants on the system connection, and runs a
//! generated sequence of steps on the application connection (on PostgreSQL a login role of
//! `orkestra_app`, confined by row-level security like a service). A step is an acting tenant and an
//! operation; operations pick their ids from what earlier steps created, usually the acting
//! tenant's, sometimes another tenant's. Each tenant opens with a user, a group holding the user, a
//! conversation and a task; then come steps of every kind by any tenant. Before each step an oracle
//! predicts, from the owner's view of the acting tenant's rows, whether the operation succeeds or
//! which typed error refuses it; groups get archived and restored along the way, and the oracle
//! knows what an archived group refuses (new tasks, new members) and withholds (its tasks, from its
//! members' inboxes and claims). After each step:
//!
//! 1. for every tenant, reads under its context (its users, groups, tasks in every status, its open
//!    tasks in archived groups, each user's inbox, each task's history, each conversation's
//!    messages, its audit log) return exactly its rows as the owner sees them, and only rows of
//!    that tenant; on the fresh and the final state of a case the reads also cover the tasks of
//!    each workflow run, the overdue tasks, each user's groups, each group's members and
//!    workloads, each conversation's tasks and the audit count (steps read these too, for the ids
//!    they name);
//! 2. the other two tenants' rows are exactly as they were before the step;
//! 3. the acting tenant's rows changed only as the operation should have changed them (nothing at
//!    all when it was refused), and the operation's result or error is the one predicted.
//!
//! Cases: `ORKESTRA_PROPTEST_CASES` (default 16). Seed: `ORKESTRA_PROPTEST_SEED` (hex `0x...` or a
//! decimal u64), else a random one; it is printed at the start and in any failure, and the same
//! seed replays the same cases. Failure persistence is off: nothing is written to the repository.
//! Shrinking stops after 64 iterations or two minutes.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use chrono::{DateTime, Duration, FixedOffset, Utc};
use orkestra_entity::sea_orm_active_enums::{
    ConversationStatus, GroupStatus, TaskStatus, UserStatus,
};
use orkestra_entity::{
    audit_events, conversations, group_members, groups, messages, task_history, tasks, tenants,
    users,
};
use orkestra_repository::{
    AssignTo, AuditQuery, AuditRepository, ConversationRepository, Error, GroupRepository,
    MemberWorkload, NewAuditEvent, NewConversation, NewGroup, NewMessage, NewTask, NewTenant,
    NewUser, Page, PageRequest, RequestContext, TaskRepository, TenantRepository, UserFilter,
    UserRepository, UserUpdate, conversations::EXTERNAL_KEY, groups::MEMBER_GROUP_FKEY,
    groups::MEMBER_USER_FKEY, groups::SLUG_KEY, groups::TASK_GROUP_FKEY, tasks::ASSIGNEE_FKEY,
    tasks::CONVERSATION_FKEY, tasks::GROUP_FKEY, tasks::PENDING, users::EMAIL_KEY,
};
use orkestra_tests::repo::{Snapshot, ctx};
use orkestra_tests::{Backend, TestDb, thousands};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use sea_orm::{DatabaseConnection, DbErr, EntityTrait, QueryOrder};
use serde_json::json;
use uuid::Uuid;

/// How many tenants share each case's database.
const TENANTS: usize = 3;
/// Cases per run unless `ORKESTRA_PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 16;
/// Each tenant's opening steps after its first user, group, membership, conversation and task
/// (and, in some tenants, that group's archiving); then steps of every kind.
const OPENING_STEPS: std::ops::RangeInclusive<usize> = 0..=1;
const STEPS: std::ops::RangeInclusive<usize> = 10..=18;
/// The largest page every list is read with; no case comes near it.
const PAGE: u64 = 500;
/// The workflow every task belongs to, and its runs.
const WORKFLOW: &str = "wf";
const RUNS: [&str; 2] = ["run-0", "run-1"];
/// The channel of conversations with an external id.
const CHANNEL: &str = "slack";
/// Every task status, for the per-status lists.
const STATUSES: [TaskStatus; 7] = [
    TaskStatus::Created,
    TaskStatus::Assigned,
    TaskStatus::Claimed,
    TaskStatus::Completed,
    TaskStatus::Escalated,
    TaskStatus::Expired,
    TaskStatus::Cancelled,
];
const CLAIMABLE: [TaskStatus; 2] = [TaskStatus::Assigned, TaskStatus::Escalated];

// ---------------------------------------------------------------------------------------------
// What proptest generates.

/// Whose rows an operation names, relative to the acting tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Own,
    Next,
    Prev,
}

/// An id to pick from what earlier steps created: the `index`-th (modulo) of `owner`'s.
#[derive(Debug, Clone, Copy)]
struct Ref {
    owner: Owner,
    index: usize,
}

/// The user an operation acts as: the one the task calls for (its claimer, assignee or a member of
/// its group, from the task's tenant), or any picked user.
#[derive(Debug, Clone, Copy)]
enum Who {
    Natural(usize),
    Any(Ref),
}

/// Whom a task is assigned to.
#[derive(Debug, Clone, Copy)]
enum Assignee {
    Nobody,
    User(Ref),
    Group(Ref),
    Both(Ref, Ref),
}

#[derive(Debug, Clone)]
enum Op {
    CreateUser {
        email: u8,
    },
    UpdateUser {
        user: Ref,
        name: u8,
    },
    SetUserActive {
        user: Ref,
        active: bool,
    },
    FindUser {
        user: Ref,
    },
    CreateGroup {
        slug: u8,
    },
    DeleteGroup {
        group: Ref,
    },
    AddMember {
        group: Ref,
        user: Ref,
    },
    RemoveMember {
        group: Ref,
        user: Ref,
    },
    ReadGroup {
        group: Ref,
    },
    /// `fits`: an active group of the named tenant if it has one, else an archived one (see
    /// `Resolver::pick_group`).
    ArchiveGroup {
        group: Ref,
        fits: bool,
    },
    /// `fits`: an archived group of the named tenant if it has one, else an active one.
    RestoreGroup {
        group: Ref,
        fits: bool,
    },
    CreateTask {
        to: Assignee,
        conversation: Option<Ref>,
        run: u8,
        overdue: Option<bool>,
    },
    Assign {
        task: Ref,
        to: Assignee,
    },
    Claim {
        task: Ref,
        user: Who,
    },
    ClaimNext {
        user: Ref,
    },
    Release {
        task: Ref,
        user: Who,
    },
    Complete {
        task: Ref,
        user: Who,
    },
    Escalate {
        task: Ref,
        to: Assignee,
    },
    Expire {
        task: Ref,
    },
    Cancel {
        task: Ref,
    },
    ReadTask {
        task: Ref,
    },
    Inbox {
        user: Ref,
    },
    CreateConversation {
        external: Option<u8>,
    },
    GetOrCreate {
        external: u8,
    },
    AppendMessage {
        conversation: Ref,
    },
    Close {
        conversation: Ref,
    },
    Archive {
        conversation: Ref,
    },
    ReadConversation {
        conversation: Ref,
    },
    FindByKey {
        key: u8,
    },
    RecordAudit {
        events: u8,
    },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::CreateUser { .. } => "create_user",
            Op::UpdateUser { .. } => "update_user",
            Op::SetUserActive { active: true, .. } => "activate_user",
            Op::SetUserActive { active: false, .. } => "deactivate_user",
            Op::FindUser { .. } => "find_user",
            Op::CreateGroup { .. } => "create_group",
            Op::DeleteGroup { .. } => "delete_group",
            Op::AddMember { .. } => "add_member",
            Op::RemoveMember { .. } => "remove_member",
            Op::ReadGroup { .. } => "read_group",
            Op::ArchiveGroup { .. } => "archive_group",
            Op::RestoreGroup { .. } => "restore_group",
            Op::CreateTask { .. } => "create_task",
            Op::Assign { .. } => "assign",
            Op::Claim { .. } => "claim",
            Op::ClaimNext { .. } => "claim_next",
            Op::Release { .. } => "release",
            Op::Complete { .. } => "complete",
            Op::Escalate { .. } => "escalate",
            Op::Expire { .. } => "expire",
            Op::Cancel { .. } => "cancel",
            Op::ReadTask { .. } => "read_task",
            Op::Inbox { .. } => "inbox",
            Op::CreateConversation { .. } => "create_conversation",
            Op::GetOrCreate { .. } => "get_or_create_conversation",
            Op::AppendMessage { .. } => "append_message",
            Op::Close { .. } => "close_conversation",
            Op::Archive { .. } => "archive_conversation",
            Op::ReadConversation { .. } => "read_conversation",
            Op::FindByKey { .. } => "find_by_key",
            Op::RecordAudit { .. } => "record_audit",
        }
    }
}

#[derive(Debug, Clone)]
struct Step {
    tenant: usize,
    op: Op,
}

fn a_ref() -> impl Strategy<Value = Ref> {
    (
        prop_oneof![4 => Just(Owner::Own), 1 => Just(Owner::Next), 1 => Just(Owner::Prev)],
        0..8usize,
    )
        .prop_map(|(owner, index)| Ref { owner, index })
}

/// Whether a group's archiving or restoring picks a group it fits: mostly, so that groups do get
/// archived and restored, and sometimes not, so that it is refused.
fn fits() -> impl Strategy<Value = bool> {
    proptest::bool::weighted(0.75)
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![3 => (0..4usize).prop_map(Who::Natural), 1 => a_ref().prop_map(Who::Any)]
}

fn assignee() -> impl Strategy<Value = Assignee> {
    prop_oneof![
        1 => Just(Assignee::Nobody),
        3 => a_ref().prop_map(Assignee::User),
        3 => a_ref().prop_map(Assignee::Group),
        1 => (a_ref(), a_ref()).prop_map(|(user, group)| Assignee::Both(user, group)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..5u8).prop_map(|email| Op::CreateUser { email }),
        2 => (a_ref(), 0..3u8).prop_map(|(user, name)| Op::UpdateUser { user, name }),
        3 => (a_ref(), any::<bool>()).prop_map(|(user, active)| Op::SetUserActive { user, active }),
        2 => a_ref().prop_map(|user| Op::FindUser { user }),
        3 => (0..4u8).prop_map(|slug| Op::CreateGroup { slug }),
        2 => a_ref().prop_map(|group| Op::DeleteGroup { group }),
        6 => (a_ref(), a_ref()).prop_map(|(group, user)| Op::AddMember { group, user }),
        3 => (a_ref(), a_ref()).prop_map(|(group, user)| Op::RemoveMember { group, user }),
        2 => a_ref().prop_map(|group| Op::ReadGroup { group }),
        6 => (a_ref(), fits()).prop_map(|(group, fits)| Op::ArchiveGroup { group, fits }),
        2 => (a_ref(), fits()).prop_map(|(group, fits)| Op::RestoreGroup { group, fits }),
        8 => (assignee(), proptest::option::weighted(0.3, a_ref()), 0..2u8,
               proptest::option::weighted(0.3, any::<bool>()))
            .prop_map(|(to, conversation, run, overdue)| Op::CreateTask { to, conversation, run, overdue }),
        5 => (a_ref(), assignee()).prop_map(|(task, to)| Op::Assign { task, to }),
        10 => (a_ref(), who()).prop_map(|(task, user)| Op::Claim { task, user }),
        4 => a_ref().prop_map(|user| Op::ClaimNext { user }),
        4 => (a_ref(), who()).prop_map(|(task, user)| Op::Release { task, user }),
        8 => (a_ref(), who()).prop_map(|(task, user)| Op::Complete { task, user }),
        4 => (a_ref(), assignee()).prop_map(|(task, to)| Op::Escalate { task, to }),
        3 => a_ref().prop_map(|task| Op::Expire { task }),
        4 => a_ref().prop_map(|task| Op::Cancel { task }),
        3 => a_ref().prop_map(|task| Op::ReadTask { task }),
        2 => a_ref().prop_map(|user| Op::Inbox { user }),
        4 => proptest::option::weighted(0.6, 0..3u8)
            .prop_map(|external| Op::CreateConversation { external }),
        4 => (0..3u8).prop_map(|external| Op::GetOrCreate { external }),
        6 => a_ref().prop_map(|conversation| Op::AppendMessage { conversation }),
        2 => a_ref().prop_map(|conversation| Op::Close { conversation }),
        1 => a_ref().prop_map(|conversation| Op::Archive { conversation }),
        2 => a_ref().prop_map(|conversation| Op::ReadConversation { conversation }),
        2 => (0..5u8).prop_map(|key| Op::FindByKey { key }),
        4 => (1..=3u8).prop_map(|events| Op::RecordAudit { events }),
    ]
}

/// A ref to one of the acting tenant's own rows.
fn own_ref() -> impl Strategy<Value = Ref> {
    (0..8usize).prop_map(|index| Ref {
        owner: Owner::Own,
        index,
    })
}

/// The operations of a tenant's opening steps after its first user, group and membership:
/// creations (and claims, and archiving a group), so that later steps find ids to name, tasks in
/// every state and groups in both.
fn opening_op() -> impl Strategy<Value = Op> {
    let to = prop_oneof![
        own_ref().prop_map(Assignee::User),
        own_ref().prop_map(Assignee::Group),
        (own_ref(), own_ref()).prop_map(|(user, group)| Assignee::Both(user, group)),
    ];
    prop_oneof![
        3 => (0..5u8).prop_map(|email| Op::CreateUser { email }),
        1 => (0..4u8).prop_map(|slug| Op::CreateGroup { slug }),
        2 => (own_ref(), own_ref()).prop_map(|(group, user)| Op::AddMember { group, user }),
        1 => own_ref().prop_map(|group| Op::ArchiveGroup { group, fits: true }),
        4 => (to, 0..2u8).prop_map(|(to, run)| Op::CreateTask {
            to,
            conversation: None,
            run,
            overdue: None,
        }),
        2 => (own_ref(), 0..4usize).prop_map(|(task, n)| Op::Claim {
            task,
            user: Who::Natural(n),
        }),
        2 => (0..3u8).prop_map(|external| Op::GetOrCreate { external }),
    ]
}

/// The acting tenant's first row of a kind.
const OWN_FIRST: Ref = Ref {
    owner: Owner::Own,
    index: 0,
};

/// A tenant's opening steps: a user, a group with that user in it, a conversation, a task for
/// the user or the group (in the conversation or not), in one tenant of four the group's
/// archiving (so that cases start with tasks that only an archived group's members were offered),
/// then more.
fn opening(tenant: usize) -> impl Strategy<Value = Vec<Step>> {
    let to = prop_oneof![
        Just(Assignee::User(OWN_FIRST)),
        Just(Assignee::Group(OWN_FIRST)),
        Just(Assignee::Both(OWN_FIRST, OWN_FIRST)),
    ];
    (
        (0..5u8, 0..4u8, 0..3u8),
        (to, any::<bool>(), proptest::bool::weighted(0.25)),
        proptest::collection::vec(opening_op(), OPENING_STEPS),
    )
        .prop_map(
            move |((email, slug, external), (to, in_conversation, archived), ops)| {
                let member = Op::AddMember {
                    group: OWN_FIRST,
                    user: OWN_FIRST,
                };
                let task = Op::CreateTask {
                    to,
                    conversation: in_conversation.then_some(OWN_FIRST),
                    run: 0,
                    overdue: None,
                };
                [
                    Op::CreateUser { email },
                    Op::CreateGroup { slug },
                    member,
                    Op::GetOrCreate { external },
                    task,
                ]
                .into_iter()
                .chain(archived.then_some(Op::ArchiveGroup {
                    group: OWN_FIRST,
                    fits: true,
                }))
                .chain(ops)
                .map(|op| Step { tenant, op })
                .collect()
            },
        )
}

/// Merges the tenants' opening steps, each tenant's in order, in an order `choices` picks.
fn interleave(openings: [Vec<Step>; TENANTS], choices: &[usize]) -> Vec<Step> {
    let mut queues = openings.map(|steps| steps.into_iter());
    let mut merged = Vec::new();
    let mut choices = choices.iter().copied().chain(std::iter::repeat(0));
    loop {
        let start = choices.next().unwrap_or(0);
        let next = (0..TENANTS).find_map(|offset| queues[(start + offset) % TENANTS].next());
        match next {
            Some(step) => merged.push(step),
            None => return merged,
        }
    }
}

/// A case: the tenants' opening steps, interleaved, then steps of every kind by any tenant.
fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = (0..TENANTS, op()).prop_map(|(tenant, op)| Step { tenant, op });
    (
        (opening(0), opening(1), opening(2)),
        proptest::collection::vec(0..TENANTS, 24),
        proptest::collection::vec(step, STEPS),
    )
        .prop_map(|((a, b, c), choices, steps)| {
            let mut all = interleave([a, b, c], &choices);
            all.extend(steps);
            all
        })
}

// ---------------------------------------------------------------------------------------------
// The model: what each tenant created, and the calls steps resolve to.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    User,
    Group,
    Task,
    Conversation,
}

/// The ids each tenant's successful operations created (and did not delete), in creation order.
#[derive(Debug, Clone, Default)]
struct Created {
    users: Vec<Uuid>,
    groups: Vec<Uuid>,
    tasks: Vec<Uuid>,
    conversations: Vec<Uuid>,
}

impl Created {
    fn list(&self, kind: Kind) -> &Vec<Uuid> {
        match kind {
            Kind::User => &self.users,
            Kind::Group => &self.groups,
            Kind::Task => &self.tasks,
            Kind::Conversation => &self.conversations,
        }
    }

    fn list_mut(&mut self, kind: Kind) -> &mut Vec<Uuid> {
        match kind {
            Kind::User => &mut self.users,
            Kind::Group => &mut self.groups,
            Kind::Task => &mut self.tasks,
            Kind::Conversation => &mut self.conversations,
        }
    }

    /// Fails unless the ids are exactly those the owner sees in the tenant's snapshot.
    fn matches(&self, s: &Snapshot) -> Result<(), String> {
        let same = |what: &str, model: &[Uuid], stored: Vec<Uuid>| {
            let model: BTreeSet<Uuid> = model.iter().copied().collect();
            let stored: BTreeSet<Uuid> = stored.into_iter().collect();
            if model == stored {
                Ok(())
            } else {
                Err(format!(
                    "the {what} created through the repositories are {model:?}, but the tenant \
                     holds {stored:?}"
                ))
            }
        };
        same("users", &self.users, s.users.iter().map(|r| r.id).collect())?;
        same(
            "groups",
            &self.groups,
            s.groups.iter().map(|r| r.id).collect(),
        )?;
        same("tasks", &self.tasks, s.tasks.iter().map(|r| r.id).collect())?;
        same(
            "conversations",
            &self.conversations,
            s.conversations.iter().map(|r| r.id).collect(),
        )
    }
}

/// An operation with its ids resolved.
#[derive(Debug, Clone)]
enum Call {
    CreateUser {
        email: String,
    },
    UpdateUser {
        user: Uuid,
        name: String,
    },
    SetUserActive {
        user: Uuid,
        active: bool,
    },
    FindUser {
        user: Uuid,
    },
    CreateGroup {
        slug: String,
    },
    DeleteGroup {
        group: Uuid,
    },
    AddMember {
        group: Uuid,
        user: Uuid,
    },
    RemoveMember {
        group: Uuid,
        user: Uuid,
    },
    ReadGroup {
        group: Uuid,
    },
    ArchiveGroup {
        group: Uuid,
    },
    RestoreGroup {
        group: Uuid,
    },
    CreateTask {
        to: Option<AssignTo>,
        conversation: Option<Uuid>,
        run: &'static str,
        overdue: Option<bool>,
    },
    Assign {
        task: Uuid,
        to: AssignTo,
    },
    Claim {
        task: Uuid,
        user: Uuid,
    },
    ClaimNext {
        user: Uuid,
    },
    Release {
        task: Uuid,
        user: Uuid,
    },
    Complete {
        task: Uuid,
        user: Uuid,
    },
    Escalate {
        task: Uuid,
        to: Option<AssignTo>,
    },
    Expire {
        task: Uuid,
    },
    Cancel {
        task: Uuid,
    },
    ReadTask {
        task: Uuid,
    },
    Inbox {
        user: Uuid,
    },
    CreateConversation {
        external: Option<String>,
    },
    GetOrCreate {
        external: String,
    },
    AppendMessage {
        conversation: Uuid,
    },
    Close {
        conversation: Uuid,
    },
    Archive {
        conversation: Uuid,
    },
    ReadConversation {
        conversation: Uuid,
    },
    FindByKey {
        key: u8,
    },
    RecordAudit {
        events: usize,
    },
}

/// Resolves a step's picks against what exists; notes whether any names another tenant's row.
struct Resolver<'a> {
    actor: usize,
    created: &'a [Created; TENANTS],
    snaps: &'a [Snapshot; TENANTS],
    cross: bool,
}

impl Resolver<'_> {
    fn tenant_of(&self, owner: Owner) -> usize {
        match owner {
            Owner::Own => self.actor,
            Owner::Next => (self.actor + 1) % TENANTS,
            Owner::Prev => (self.actor + TENANTS - 1) % TENANTS,
        }
    }

    /// The picked id and the index of its tenant; `None` when the tenant has none of the kind. A
    /// ref to another tenant whose tenant has none falls back to the third tenant.
    fn pick_in(&mut self, r: Ref, kind: Kind) -> Option<(Uuid, usize)> {
        let named = self.tenant_of(r.owner);
        let fallback = match r.owner {
            Owner::Own => named,
            Owner::Next => self.tenant_of(Owner::Prev),
            Owner::Prev => self.tenant_of(Owner::Next),
        };
        let tenant = [named, fallback]
            .into_iter()
            .find(|&t| !self.created[t].list(kind).is_empty())?;
        let list = self.created[tenant].list(kind);
        if tenant != self.actor {
            self.cross = true;
        }
        Some((list[r.index % list.len()], tenant))
    }

    fn pick(&mut self, r: Ref, kind: Kind) -> Option<Uuid> {
        self.pick_in(r, kind).map(|(id, _)| id)
    }

    /// Like `pick` for a group, but among the named tenant's groups in `status` when it has any:
    /// archived groups are few, and a uniform pick would hardly ever restore one (or archive one
    /// twice).
    fn pick_group(&mut self, r: Ref, status: GroupStatus) -> Option<Uuid> {
        let (any, tenant) = self.pick_in(r, Kind::Group)?;
        let s = &self.snaps[tenant];
        let in_status: Vec<Uuid> = self.created[tenant]
            .groups
            .iter()
            .copied()
            .filter(|g| group_of(s, *g).is_some_and(|g| g.status == status))
            .collect();
        Some(match in_status.len() {
            0 => any,
            n => in_status[r.index % n],
        })
    }

    /// The assignment named, dropping parts that cannot be resolved; `None` if nothing is left.
    fn assign_to(&mut self, to: Assignee) -> Option<AssignTo> {
        let (user, group) = match to {
            Assignee::Nobody => (None, None),
            Assignee::User(user) => (self.pick(user, Kind::User), None),
            Assignee::Group(group) => (None, self.pick(group, Kind::Group)),
            Assignee::Both(user, group) => {
                (self.pick(user, Kind::User), self.pick(group, Kind::Group))
            }
        };
        (user.is_some() || group.is_some()).then_some(AssignTo {
            user_id: user,
            group_id: group,
        })
    }

    /// The user a task operation acts as. `natural` lists, from the task's own tenant, the users
    /// the operation calls for; without any, a user of the acting tenant.
    fn user_for(
        &mut self,
        who: Who,
        task: Uuid,
        task_tenant: usize,
        natural: fn(&tasks::Model, &Snapshot) -> Vec<Uuid>,
    ) -> Option<Uuid> {
        match who {
            Who::Any(r) => self.pick(r, Kind::User),
            Who::Natural(index) => {
                let s = &self.snaps[task_tenant];
                let candidates = s
                    .tasks
                    .iter()
                    .find(|t| t.id == task)
                    .map(|t| natural(t, s))
                    .unwrap_or_default();
                if candidates.is_empty() {
                    let own = &self.created[self.actor].users;
                    (!own.is_empty()).then(|| own[index % own.len()])
                } else {
                    Some(candidates[index % candidates.len()])
                }
            }
        }
    }

    fn resolve(&mut self, op: &Op) -> Option<Call> {
        Some(match *op {
            Op::CreateUser { email } => Call::CreateUser {
                email: format!("user{email}@example.com"),
            },
            Op::UpdateUser { user, name } => Call::UpdateUser {
                user: self.pick(user, Kind::User)?,
                name: format!("Renamed {name}"),
            },
            Op::SetUserActive { user, active } => Call::SetUserActive {
                user: self.pick(user, Kind::User)?,
                active,
            },
            Op::FindUser { user } => Call::FindUser {
                user: self.pick(user, Kind::User)?,
            },
            Op::CreateGroup { slug } => Call::CreateGroup {
                slug: format!("group-{slug}"),
            },
            Op::DeleteGroup { group } => Call::DeleteGroup {
                group: self.pick(group, Kind::Group)?,
            },
            Op::AddMember { group, user } => Call::AddMember {
                group: self.pick(group, Kind::Group)?,
                user: self.pick(user, Kind::User)?,
            },
            Op::RemoveMember { group, user } => Call::RemoveMember {
                group: self.pick(group, Kind::Group)?,
                user: self.pick(user, Kind::User)?,
            },
            Op::ReadGroup { group } => Call::ReadGroup {
                group: self.pick(group, Kind::Group)?,
            },
            Op::ArchiveGroup { group, fits } => {
                let status = if fits {
                    GroupStatus::Active
                } else {
                    GroupStatus::Archived
                };
                Call::ArchiveGroup {
                    group: self.pick_group(group, status)?,
                }
            }
            Op::RestoreGroup { group, fits } => {
                let status = if fits {
                    GroupStatus::Archived
                } else {
                    GroupStatus::Active
                };
                Call::RestoreGroup {
                    group: self.pick_group(group, status)?,
                }
            }
            Op::CreateTask {
                to,
                conversation,
                run,
                overdue,
            } => Call::CreateTask {
                to: self.assign_to(to),
                conversation: conversation.and_then(|c| self.pick(c, Kind::Conversation)),
                run: RUNS[usize::from(run) % RUNS.len()],
                overdue,
            },
            Op::Assign { task, to } => Call::Assign {
                task: self.pick(task, Kind::Task)?,
                to: self.assign_to(to)?,
            },
            Op::Claim { task, user } => {
                let (task, tenant) = self.pick_in(task, Kind::Task)?;
                let user = self.user_for(user, task, tenant, claimers)?;
                Call::Claim { task, user }
            }
            Op::ClaimNext { user } => Call::ClaimNext {
                user: self.pick(user, Kind::User)?,
            },
            Op::Release { task, user } => {
                let (task, tenant) = self.pick_in(task, Kind::Task)?;
                let user = self.user_for(user, task, tenant, |t, _| {
                    t.claimed_by.into_iter().collect()
                })?;
                Call::Release { task, user }
            }
            Op::Complete { task, user } => {
                let (task, tenant) = self.pick_in(task, Kind::Task)?;
                let user = self.user_for(user, task, tenant, completers)?;
                Call::Complete { task, user }
            }
            Op::Escalate { task, to } => Call::Escalate {
                task: self.pick(task, Kind::Task)?,
                to: self.assign_to(to),
            },
            Op::Expire { task } => Call::Expire {
                task: self.pick(task, Kind::Task)?,
            },
            Op::Cancel { task } => Call::Cancel {
                task: self.pick(task, Kind::Task)?,
            },
            Op::ReadTask { task } => Call::ReadTask {
                task: self.pick(task, Kind::Task)?,
            },
            Op::Inbox { user } => Call::Inbox {
                user: self.pick(user, Kind::User)?,
            },
            Op::CreateConversation { external } => Call::CreateConversation {
                external: external.map(|k| format!("ext-{k}")),
            },
            Op::GetOrCreate { external } => Call::GetOrCreate {
                external: format!("ext-{external}"),
            },
            Op::AppendMessage { conversation } => Call::AppendMessage {
                conversation: self.pick(conversation, Kind::Conversation)?,
            },
            Op::Close { conversation } => Call::Close {
                conversation: self.pick(conversation, Kind::Conversation)?,
            },
            Op::Archive { conversation } => Call::Archive {
                conversation: self.pick(conversation, Kind::Conversation)?,
            },
            Op::ReadConversation { conversation } => Call::ReadConversation {
                conversation: self.pick(conversation, Kind::Conversation)?,
            },
            Op::FindByKey { key } => Call::FindByKey { key },
            Op::RecordAudit { events } => Call::RecordAudit {
                events: usize::from(events),
            },
        })
    }
}

/// Who the task calls on to claim it: its assignee and the members of its group. Members of an
/// archived group are among them, so that claims through it are tried (and must be refused).
fn claimers(task: &tasks::Model, s: &Snapshot) -> Vec<Uuid> {
    let mut users: Vec<Uuid> = task.assigned_user_id.into_iter().collect();
    if let Some(group) = task.assigned_group_id {
        users.extend(
            s.memberships
                .iter()
                .filter(|m| m.group_id == group)
                .map(|m| m.user_id),
        );
    }
    users.dedup();
    users
}

/// Who may complete the task: its claimer, else its assignee, else who may claim it.
fn completers(task: &tasks::Model, s: &Snapshot) -> Vec<Uuid> {
    if let Some(claimer) = task.claimed_by {
        return vec![claimer];
    }
    if let Some(user) = task.assigned_user_id {
        return vec![user];
    }
    claimers(task, s)
}

// ---------------------------------------------------------------------------------------------
// The oracle: what the owner's view of the acting tenant says a call must do.

fn user_of(s: &Snapshot, id: Uuid) -> Option<&users::Model> {
    s.users.iter().find(|r| r.id == id)
}

fn group_of(s: &Snapshot, id: Uuid) -> Option<&groups::Model> {
    s.groups.iter().find(|r| r.id == id)
}

fn task_of(s: &Snapshot, id: Uuid) -> Option<&tasks::Model> {
    s.tasks.iter().find(|r| r.id == id)
}

fn conversation_of(s: &Snapshot, id: Uuid) -> Option<&conversations::Model> {
    s.conversations.iter().find(|r| r.id == id)
}

fn is_member(s: &Snapshot, group: Uuid, user: Uuid) -> bool {
    s.memberships
        .iter()
        .any(|m| m.group_id == group && m.user_id == user)
}

fn is_active(s: &Snapshot, user: Uuid) -> bool {
    user_of(s, user).is_some_and(|u| u.status == UserStatus::Active)
}

/// Whether the tenant has the group and it is active: only then does it offer its tasks to its
/// members (inboxes, claims).
fn is_active_group(s: &Snapshot, group: Uuid) -> bool {
    group_of(s, group).is_some_and(|g| g.status == GroupStatus::Active)
}

/// What giving an archived group a task refuses with.
const ASSIGN_TO_GROUP: &str = "assign a task to";

/// The refusal of `action` on `group` when it is one of the tenant's archived groups. A group the
/// tenant does not have passes: its foreign key refuses the write later, as before groups could
/// be archived.
fn archived_group(s: &Snapshot, group: Option<Uuid>, action: &'static str) -> Option<Refusal> {
    let group = group_of(s, group?)?;
    (group.status == GroupStatus::Archived).then(|| Refusal::InvalidState {
        entity: "group",
        id: group.id,
        state: group.status.as_str(),
        action,
    })
}

/// The foreign keys an assignment (and conversation) would violate, in the order they are named.
fn missing_references(
    s: &Snapshot,
    to: Option<AssignTo>,
    conversation: Option<Uuid>,
) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if let Some(to) = to {
        if to.user_id.is_some_and(|u| user_of(s, u).is_none()) {
            missing.push(ASSIGNEE_FKEY);
        }
        if to.group_id.is_some_and(|g| group_of(s, g).is_none()) {
            missing.push(GROUP_FKEY);
        }
    }
    if conversation.is_some_and(|c| conversation_of(s, c).is_none()) {
        missing.push(CONVERSATION_FKEY);
    }
    missing
}

/// A typed refusal the oracle predicts.
#[derive(Debug)]
enum Refusal {
    NotFound(&'static str, Uuid),
    Conflict(&'static str),
    /// Any of these foreign keys (several when several references are foreign).
    Reference(Vec<&'static str>),
    InvalidTransition(Uuid, TaskStatus),
    InvalidState {
        entity: &'static str,
        id: Uuid,
        state: &'static str,
        action: &'static str,
    },
    Forbidden(Uuid),
}

impl Refusal {
    fn admits(&self, error: &Error) -> bool {
        match (self, error) {
            (Refusal::NotFound(entity, id), Error::NotFound { entity: e, id: i }) => {
                e == entity && *i == id.to_string()
            }
            (Refusal::Conflict(c), Error::Conflict { constraint }) => constraint == c,
            (Refusal::Reference(cs), Error::Reference { constraint }) => {
                cs.contains(&constraint.as_str())
            }
            (
                Refusal::InvalidTransition(task, status),
                Error::InvalidTransition {
                    task_id, current, ..
                },
            ) => task_id == task && current == status,
            (
                Refusal::InvalidState {
                    entity,
                    id,
                    state,
                    action,
                },
                Error::InvalidState {
                    entity: e,
                    id: i,
                    state: s,
                    action: a,
                },
            ) => e == entity && *i == id.to_string() && s == state && a == action,
            (Refusal::Forbidden(task), Error::Forbidden { task_id, .. }) => task_id == task,
            _ => false,
        }
    }
}

/// The oracle's verdict for a task state change.
fn transition(
    s: &Snapshot,
    task: Uuid,
    from: &[TaskStatus],
    check: impl FnOnce(&tasks::Model) -> Option<Refusal>,
) -> Result<tasks::Model, Refusal> {
    let Some(current) = task_of(s, task) else {
        return Err(Refusal::NotFound("task", task));
    };
    if !from.contains(&current.status) {
        return Err(Refusal::InvalidTransition(task, current.status.clone()));
    }
    match check(current) {
        Some(refusal) => Err(refusal),
        None => Ok(current.clone()),
    }
}

// ---------------------------------------------------------------------------------------------
// Expected changes to the acting tenant's rows, and the difference of two snapshots.

/// Per table: how many rows a call adds and removes, and which one row it may modify.
#[derive(Debug, Default, Clone)]
struct Delta {
    added: usize,
    removed: usize,
    modifies: Option<String>,
}

#[derive(Debug, Default, Clone)]
struct Changes(BTreeMap<&'static str, Delta>);

impl Changes {
    fn none() -> Changes {
        Changes::default()
    }

    fn add(mut self, table: &'static str, n: usize) -> Changes {
        self.0.entry(table).or_default().added += n;
        self
    }

    fn remove(mut self, table: &'static str, n: usize) -> Changes {
        self.0.entry(table).or_default().removed += n;
        self
    }

    fn modify(mut self, table: &'static str, key: impl ToString) -> Changes {
        self.0.entry(table).or_default().modifies = Some(key.to_string());
        self
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct TableDiff {
    added: Vec<String>,
    removed: Vec<String>,
    modified: Vec<String>,
}

impl TableDiff {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.modified.is_empty()
    }
}

fn table_diff<M: PartialEq>(before: &[M], after: &[M], key: impl Fn(&M) -> String) -> TableDiff {
    let before: BTreeMap<String, &M> = before.iter().map(|r| (key(r), r)).collect();
    let after: BTreeMap<String, &M> = after.iter().map(|r| (key(r), r)).collect();
    let mut diff = TableDiff::default();
    for (k, row) in &after {
        match before.get(k) {
            None => diff.added.push(k.clone()),
            Some(old) if old != row => diff.modified.push(k.clone()),
            Some(_) => {}
        }
    }
    diff.removed = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .cloned()
        .collect();
    diff
}

/// Every table's difference between two snapshots.
fn snapshot_diff(before: &Snapshot, after: &Snapshot) -> Vec<(&'static str, TableDiff)> {
    vec![
        (
            "tenants",
            table_diff(&before.tenants, &after.tenants, |r| r.id.to_string()),
        ),
        (
            "users",
            table_diff(&before.users, &after.users, |r| r.id.to_string()),
        ),
        (
            "groups",
            table_diff(&before.groups, &after.groups, |r| r.id.to_string()),
        ),
        (
            "memberships",
            table_diff(&before.memberships, &after.memberships, |r| {
                format!("{}/{}", r.group_id, r.user_id)
            }),
        ),
        (
            "tasks",
            table_diff(&before.tasks, &after.tasks, |r| r.id.to_string()),
        ),
        (
            "history",
            table_diff(&before.history, &after.history, |r| r.id.to_string()),
        ),
        (
            "conversations",
            table_diff(&before.conversations, &after.conversations, |r| {
                r.id.to_string()
            }),
        ),
        (
            "messages",
            table_diff(&before.messages, &after.messages, |r| r.id.to_string()),
        ),
        (
            "audit",
            table_diff(&before.audit, &after.audit, |r| r.id.to_string()),
        ),
    ]
}

fn describe(diff: &[(&'static str, TableDiff)]) -> String {
    diff.iter()
        .filter(|(_, d)| !d.is_empty())
        .map(|(table, d)| format!("{table}: {d:?}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Fails unless `after` differs from `before` exactly as `changes` allows.
fn check_changes(before: &Snapshot, after: &Snapshot, changes: &Changes) -> Result<(), String> {
    let diff = snapshot_diff(before, after);
    for (table, d) in &diff {
        let want = changes.0.get(table).cloned().unwrap_or_default();
        let modified_ok = d
            .modified
            .iter()
            .all(|k| want.modifies.as_deref() == Some(k.as_str()));
        if d.added.len() != want.added || d.removed.len() != want.removed || !modified_ok {
            return Err(format!(
                "the acting tenant's {table} changed unexpectedly: expected {want:?}, the \
                 difference is {}",
                describe(&diff)
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Performing a call and comparing it with the oracle.

type Verify = Box<dyn FnOnce(&Snapshot, &Snapshot) -> Result<(), String>>;

/// What a performed call tells the step: the changes to expect, a check of the stored result, and
/// what the model gains or loses.
struct Done {
    refused: bool,
    changes: Changes,
    verify: Option<Verify>,
    created: Option<(Kind, Uuid)>,
    deleted: Option<(Kind, Uuid)>,
    reads: u64,
}

impl Done {
    fn nothing() -> Done {
        Done {
            refused: false,
            changes: Changes::none(),
            verify: None,
            created: None,
            deleted: None,
            reads: 0,
        }
    }

    fn refused() -> Done {
        Done {
            refused: true,
            ..Done::nothing()
        }
    }

    fn reads(n: u64) -> Done {
        Done {
            reads: n,
            ..Done::nothing()
        }
    }

    fn changes(changes: Changes, verify: Verify) -> Done {
        Done {
            changes,
            verify: Some(verify),
            ..Done::nothing()
        }
    }

    fn creating(mut self, kind: Kind, id: Uuid) -> Done {
        self.created = Some((kind, id));
        self
    }
}

/// Compares a call's result with the oracle's verdict; on a predicted success, `ok` checks the
/// value and says what changed.
fn settle<T: Debug, W>(
    want: Result<W, Refusal>,
    got: orkestra_repository::Result<T>,
    ok: impl FnOnce(W, T) -> Result<Done, String>,
) -> Result<Done, String> {
    match (want, got) {
        (Ok(want), Ok(value)) => ok(want, value),
        (Ok(_), Err(error)) => Err(format!("expected success, got {error:?}")),
        (Err(refusal), Ok(value)) => Err(format!(
            "expected the refusal {refusal:?}, but the call succeeded: {value:?}"
        )),
        (Err(refusal), Err(error)) if refusal.admits(&error) => Ok(Done::refused()),
        (Err(refusal), Err(error)) => {
            Err(format!("expected the refusal {refusal:?}, got {error:?}"))
        }
    }
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition { Ok(()) } else { Err(message()) }
}

fn same<T: PartialEq + Debug>(what: &str, got: &T, want: &T) -> Result<(), String> {
    ensure(got == want, || {
        format!("{what}: the repository returned {got:?}, the owner sees {want:?}")
    })
}

/// The stored row with `id`, which must equal what the call returned.
fn stored<'a, M: PartialEq + Debug>(
    what: &str,
    rows: &'a [M],
    returned: &M,
    id: impl Fn(&M) -> Uuid,
) -> Result<&'a M, String> {
    let row = rows.iter().find(|r| id(r) == id(returned)).ok_or_else(|| {
        format!("the {what} returned is not among the acting tenant's rows: {returned:?}")
    })?;
    same(&format!("the {what} returned and stored"), returned, row)?;
    Ok(row)
}

/// The history rows `after` has and `before` has not.
fn new_history<'a>(before: &Snapshot, after: &'a Snapshot) -> Vec<&'a task_history::Model> {
    let old: BTreeSet<Uuid> = before.history.iter().map(|h| h.id).collect();
    after
        .history
        .iter()
        .filter(|h| !old.contains(&h.id))
        .collect()
}

/// The result of a successful task state change: the task as predicted (`expected`, whose
/// `updated_at` and `completed_at` are taken from the result), stored as returned, with one new
/// history row for it.
fn task_changed(
    tenant: Uuid,
    action: &'static str,
    mut expected: tasks::Model,
    returned: tasks::Model,
) -> Result<Done, String> {
    expected.updated_at = returned.updated_at;
    if expected.status == TaskStatus::Completed {
        ensure(returned.completed_at.is_some(), || {
            format!("completed without a time: {returned:?}")
        })?;
        expected.completed_at = returned.completed_at;
    }
    same(&format!("the task after {action}"), &returned, &expected)?;
    let task = returned.id;
    let verify: Verify = Box::new(move |before, after| {
        stored("task", &after.tasks, &returned, |t| t.id)?;
        history_added(before, after, tenant, task, action)
    });
    Ok(Done::changes(
        Changes::none().modify("tasks", task).add("history", 1),
        verify,
    ))
}

fn history_added(
    before: &Snapshot,
    after: &Snapshot,
    tenant: Uuid,
    task: Uuid,
    action: &str,
) -> Result<(), String> {
    let added = new_history(before, after);
    ensure(
        added.len() == 1
            && added[0].task_id == task
            && added[0].tenant_id == tenant
            && added[0].action == action,
        || format!("expected one `{action}` history row of task {task}, got {added:?}"),
    )
}

struct Repos<'a> {
    users: UserRepository<'a, DatabaseConnection>,
    groups: GroupRepository<'a, DatabaseConnection>,
    tasks: TaskRepository<'a, DatabaseConnection>,
    conversations: ConversationRepository<'a, DatabaseConnection>,
    audit: AuditRepository<'a, DatabaseConnection>,
}

impl<'a> Repos<'a> {
    fn new(app: &'a DatabaseConnection) -> Repos<'a> {
        Repos {
            users: UserRepository::new(app),
            groups: GroupRepository::new(app),
            tasks: TaskRepository::new(app),
            conversations: ConversationRepository::new(app),
            audit: AuditRepository::new(app),
        }
    }
}

fn first<C>() -> PageRequest<C> {
    PageRequest::first(PAGE)
}

/// Runs `call` for the tenant of `ctx`, whose rows the owner sees as `me`, and checks its result.
#[allow(clippy::too_many_lines)]
async fn perform(
    r: &Repos<'_>,
    ctx: &RequestContext,
    me: &Snapshot,
    call: &Call,
) -> Result<Done, String> {
    let tenant = ctx.tenant_id();
    match call.clone() {
        Call::CreateUser { email } => {
            let want = match me.users.iter().any(|u| u.email == email) {
                true => Err(Refusal::Conflict(EMAIL_KEY)),
                false => Ok(()),
            };
            let got = r.users.create(ctx, NewUser::new(&email, "Someone")).await;
            settle(want, got, |(), user| {
                ensure(
                    user.tenant_id == tenant
                        && user.email == email
                        && user.status == UserStatus::Active,
                    || format!("created {user:?}"),
                )?;
                let id = user.id;
                Ok(Done::changes(
                    Changes::none().add("users", 1),
                    Box::new(move |_, after| {
                        stored("user", &after.users, &user, |u| u.id).map(drop)
                    }),
                )
                .creating(Kind::User, id))
            })
        }
        Call::UpdateUser { user, name } => {
            let want = user_of(me, user)
                .cloned()
                .ok_or(Refusal::NotFound("user", user));
            let update = UserUpdate {
                name: Some(name.clone()),
                ..UserUpdate::default()
            };
            let got = r.users.update(ctx, user, update).await;
            settle(want, got, |mut expected, updated| {
                expected.name = name;
                same("the updated user", &updated, &expected)?;
                Ok(Done::changes(
                    Changes::none().modify("users", user),
                    Box::new(move |_, after| {
                        stored("user", &after.users, &updated, |u| u.id).map(drop)
                    }),
                ))
            })
        }
        Call::SetUserActive { user, active } => {
            let want = user_of(me, user)
                .cloned()
                .ok_or(Refusal::NotFound("user", user));
            let got = if active {
                r.users.activate(ctx, user).await
            } else {
                r.users.deactivate(ctx, user).await
            };
            settle(want, got, |mut expected, updated| {
                expected.status = if active {
                    UserStatus::Active
                } else {
                    UserStatus::Inactive
                };
                same("the user", &updated, &expected)?;
                Ok(Done::changes(
                    Changes::none().modify("users", user),
                    Box::new(move |_, after| {
                        stored("user", &after.users, &updated, |u| u.id).map(drop)
                    }),
                ))
            })
        }
        Call::FindUser { user } => {
            let got = r
                .users
                .find_by_id(ctx, user)
                .await
                .map_err(|e| format!("find_by_id: {e:?}"))?;
            same("find user by id", &got, &user_of(me, user).cloned())?;
            let groups = r
                .groups
                .list_user_groups(ctx, user)
                .await
                .map_err(|e| format!("list_user_groups: {e:?}"))?;
            same("the user's groups", &groups, &user_groups(me, user))?;
            let inbox = r
                .tasks
                .find_pending_for_user(ctx, user, &first())
                .await
                .map_err(|e| format!("inbox: {e:?}"))?;
            same("the user's inbox", &inbox.items, &inbox_of(me, user))?;
            Ok(Done::reads(3))
        }
        Call::CreateGroup { slug } => {
            let want = match me.groups.iter().any(|g| g.slug == slug) {
                true => Err(Refusal::Conflict(SLUG_KEY)),
                false => Ok(()),
            };
            let got = r.groups.create(ctx, NewGroup::new("A group", &slug)).await;
            settle(want, got, |(), group| {
                ensure(group.tenant_id == tenant && group.slug == slug, || {
                    format!("created {group:?}")
                })?;
                let id = group.id;
                Ok(Done::changes(
                    Changes::none().add("groups", 1),
                    Box::new(move |_, after| {
                        stored("group", &after.groups, &group, |g| g.id).map(drop)
                    }),
                )
                .creating(Kind::Group, id))
            })
        }
        Call::DeleteGroup { group } => {
            let want = match group_of(me, group) {
                None => Err(Refusal::NotFound("group", group)),
                Some(_) if me.tasks.iter().any(|t| t.assigned_group_id == Some(group)) => {
                    Err(Refusal::Reference(vec![TASK_GROUP_FKEY]))
                }
                Some(_) => Ok(me
                    .memberships
                    .iter()
                    .filter(|m| m.group_id == group)
                    .count()),
            };
            let got = r.groups.delete(ctx, group).await;
            settle(want, got, |members, ()| {
                let mut done = Done::changes(
                    Changes::none()
                        .remove("groups", 1)
                        .remove("memberships", members),
                    Box::new(move |_, after| {
                        ensure(
                            group_of(after, group).is_none()
                                && after.memberships.iter().all(|m| m.group_id != group),
                            || format!("group {group} or its memberships survived its deletion"),
                        )
                    }),
                );
                done.deleted = Some((Kind::Group, group));
                Ok(done)
            })
        }
        Call::AddMember { group, user } => {
            // The group's state is checked before the insert: an archived group refuses whoever
            // is named, a member already or a user of no tenant.
            let known = (group_of(me, group).is_some(), user_of(me, user).is_some());
            let want = match (archived_group(me, Some(group), "add a member to"), known) {
                (Some(refusal), _) => Err(refusal),
                (None, (false, false)) => Err(Refusal::Reference(vec![
                    MEMBER_GROUP_FKEY,
                    MEMBER_USER_FKEY,
                ])),
                (None, (false, true)) => Err(Refusal::Reference(vec![MEMBER_GROUP_FKEY])),
                (None, (true, false)) => Err(Refusal::Reference(vec![MEMBER_USER_FKEY])),
                (None, (true, true)) => Ok(!is_member(me, group, user)),
            };
            let got = r.groups.add_member(ctx, group, user).await;
            settle(want, got, |new, added| {
                same("add_member added", &added, &new)?;
                if !added {
                    return Ok(Done::nothing());
                }
                Ok(Done::changes(
                    Changes::none().add("memberships", 1),
                    Box::new(move |_, after| {
                        ensure(
                            after.memberships.iter().any(|m| {
                                m.group_id == group && m.user_id == user && m.tenant_id == tenant
                            }),
                            || format!("membership {group}/{user} not stored"),
                        )
                    }),
                ))
            })
        }
        Call::RemoveMember { group, user } => {
            let was = is_member(me, group, user);
            let got = r.groups.remove_member(ctx, group, user).await;
            settle(Ok(was), got, |was, removed| {
                same("remove_member removed", &removed, &was)?;
                if !removed {
                    return Ok(Done::nothing());
                }
                Ok(Done::changes(
                    Changes::none().remove("memberships", 1),
                    Box::new(move |_, after| {
                        ensure(!is_member(after, group, user), || {
                            format!("membership {group}/{user} survived")
                        })
                    }),
                ))
            })
        }
        Call::ReadGroup { group } => {
            let found = r
                .groups
                .find_by_id(ctx, group)
                .await
                .map_err(|e| format!("find_by_id: {e:?}"))?;
            same("find group by id", &found, &group_of(me, group).cloned())?;
            let members = r
                .groups
                .list_members(ctx, group, &first())
                .await
                .map_err(|e| format!("list_members: {e:?}"))?;
            same(
                "the group's members",
                &members.items,
                &members_of(me, group),
            )?;
            let workloads = r
                .groups
                .member_workloads(ctx, group)
                .await
                .map_err(|e| format!("member_workloads: {e:?}"))?;
            same(
                "the group's workloads",
                &workloads,
                &workloads_of(me, group),
            )?;
            Ok(Done::reads(3))
        }
        Call::ArchiveGroup { group } | Call::RestoreGroup { group } => {
            let archive = matches!(call, Call::ArchiveGroup { .. });
            let (from, to, action) = if archive {
                (GroupStatus::Active, GroupStatus::Archived, "archive")
            } else {
                (GroupStatus::Archived, GroupStatus::Active, "restore")
            };
            let want = match group_of(me, group) {
                None => Err(Refusal::NotFound("group", group)),
                Some(g) if g.status != from => Err(Refusal::InvalidState {
                    entity: "group",
                    id: group,
                    state: g.status.as_str(),
                    action,
                }),
                Some(g) => Ok(g.clone()),
            };
            let got = if archive {
                r.groups.archive(ctx, group).await
            } else {
                r.groups.restore(ctx, group).await
            };
            settle(want, got, |mut expected, returned| {
                // The two change together (PostgreSQL checks it; SQLite relies on the repository).
                ensure(returned.archived_at.is_some() == archive, || {
                    format!("{action} left archived_at {:?}", returned.archived_at)
                })?;
                expected.status = to;
                expected.archived_at = returned.archived_at;
                expected.updated_at = returned.updated_at;
                same(&format!("the group after {action}"), &returned, &expected)?;
                Ok(Done::changes(
                    Changes::none().modify("groups", group),
                    Box::new(move |_, after| {
                        stored("group", &after.groups, &returned, |g| g.id).map(drop)
                    }),
                ))
            })
        }
        Call::CreateTask {
            to,
            conversation,
            run,
            overdue,
        } => {
            // The group's state is checked first, so it refuses whatever else is foreign.
            let archived = archived_group(me, to.and_then(|t| t.group_id), ASSIGN_TO_GROUP);
            let missing = missing_references(me, to, conversation);
            let want = match archived {
                Some(refusal) => Err(refusal),
                None if missing.is_empty() => Ok(()),
                None => Err(Refusal::Reference(missing)),
            };
            let mut task = NewTask::new(WORKFLOW, run, "A task", json!({"type": "object"}));
            task.assign_to = to;
            task.conversation_id = conversation;
            if let Some(overdue) = overdue {
                let hour = Duration::hours(1);
                let deadline = if overdue {
                    Utc::now() - hour
                } else {
                    Utc::now() + hour
                };
                task = task.with_sla(deadline.fixed_offset(), json!({"policy": "test"}));
            }
            let got = r.tasks.create(ctx, task).await;
            settle(want, got, |(), task| {
                let status = if to.is_some() {
                    TaskStatus::Assigned
                } else {
                    TaskStatus::Created
                };
                ensure(
                    task.tenant_id == tenant
                        && task.status == status
                        && task.assigned_user_id == to.and_then(|t| t.user_id)
                        && task.assigned_group_id == to.and_then(|t| t.group_id)
                        && task.conversation_id == conversation
                        && task.workflow_run_id == run
                        && task.sla_deadline.is_some() == overdue.is_some(),
                    || format!("created {task:?}"),
                )?;
                let id = task.id;
                Ok(Done::changes(
                    Changes::none().add("tasks", 1).add("history", 1),
                    Box::new(move |before, after| {
                        stored("task", &after.tasks, &task, |t| t.id)?;
                        history_added(before, after, tenant, id, "created")
                    }),
                )
                .creating(Kind::Task, id))
            })
        }
        Call::Assign { task, to } => {
            // The group's state is checked before the task is even looked up.
            let want = match archived_group(me, to.group_id, ASSIGN_TO_GROUP) {
                Some(refusal) => Err(refusal),
                None => transition(me, task, &PENDING, |_| {
                    let missing = missing_references(me, Some(to), None);
                    (!missing.is_empty()).then_some(Refusal::Reference(missing))
                }),
            };
            let got = r.tasks.assign(ctx, task, to).await;
            settle(want, got, |mut expected, returned| {
                expected.status = TaskStatus::Assigned;
                expected.assigned_user_id = to.user_id;
                expected.assigned_group_id = to.group_id;
                expected.claimed_by = None;
                task_changed(tenant, "assigned", expected, returned)
            })
        }
        Call::Claim { task, user } => {
            let want = transition(me, task, &CLAIMABLE, |t| {
                let may = is_active(me, user)
                    && (t.assigned_user_id == Some(user)
                        || t.assigned_group_id
                            .is_some_and(|g| is_active_group(me, g) && is_member(me, g, user)));
                (!may).then_some(Refusal::Forbidden(task))
            });
            let got = r.tasks.claim(ctx, task, user).await;
            settle(want, got, |mut expected, returned| {
                expected.status = TaskStatus::Claimed;
                expected.claimed_by = Some(user);
                task_changed(tenant, "claimed", expected, returned)
            })
        }
        Call::ClaimNext { user } => {
            // Only an active user of the tenant claims anything, so a missing or inactive one is
            // refused whatever waits; an active one with nothing claimable gets `None`.
            let want = match user_of(me, user) {
                None => Err(Refusal::NotFound("user", user)),
                Some(u) if u.status != UserStatus::Active => Err(Refusal::InvalidState {
                    entity: "user",
                    id: user,
                    state: u.status.as_str(),
                    action: "claim a task as",
                }),
                Some(_) => Ok(inbox_of(me, user)
                    .into_iter()
                    .find(|t| CLAIMABLE.contains(&t.status))),
            };
            let got = r.tasks.claim_next(ctx, user).await;
            settle(want, got, |next, claimed| match (next, claimed) {
                (Some(mut expected), Some(returned)) => {
                    expected.status = TaskStatus::Claimed;
                    expected.claimed_by = Some(user);
                    task_changed(tenant, "claimed", expected, returned)
                }
                (None, None) => Ok(Done::nothing()),
                (next, claimed) => Err(format!(
                    "claim_next should have claimed {next:?}, but claimed {claimed:?}"
                )),
            })
        }
        Call::Release { task, user } => {
            let want = transition(me, task, &[TaskStatus::Claimed], |t| {
                (t.claimed_by != Some(user)).then_some(Refusal::Forbidden(task))
            });
            let got = r.tasks.release(ctx, task, user).await;
            settle(want, got, |mut expected, returned| {
                expected.status = TaskStatus::Assigned;
                expected.claimed_by = None;
                task_changed(tenant, "released", expected, returned)
            })
        }
        Call::Complete { task, user } => {
            let want = transition(
                me,
                task,
                &[TaskStatus::Claimed, TaskStatus::Assigned],
                |t| {
                    let holds = match t.status {
                        TaskStatus::Claimed => t.claimed_by == Some(user),
                        _ => t.assigned_user_id == Some(user) && t.assigned_group_id.is_none(),
                    };
                    (!(is_active(me, user) && holds)).then_some(Refusal::Forbidden(task))
                },
            );
            let form = json!({"approved": true});
            let got = r.tasks.complete(ctx, task, user, form.clone()).await;
            settle(want, got, |mut expected, returned| {
                expected.status = TaskStatus::Completed;
                expected.form_data = Some(form);
                expected.completed_by = Some(user);
                task_changed(tenant, "completed", expected, returned)
            })
        }
        Call::Escalate { task, to } => {
            // A reassignment goes through the same group check as `assign`, first.
            let want = match archived_group(me, to.and_then(|t| t.group_id), ASSIGN_TO_GROUP) {
                Some(refusal) => Err(refusal),
                None => transition(me, task, &TaskStatus::OPEN, |_| {
                    let missing = missing_references(me, to, None);
                    (!missing.is_empty()).then_some(Refusal::Reference(missing))
                }),
            };
            let got = r
                .tasks
                .escalate(ctx, task, to, Some(json!("too slow")))
                .await;
            settle(want, got, |mut expected, returned| {
                expected.status = TaskStatus::Escalated;
                expected.claimed_by = None;
                if let Some(to) = to {
                    expected.assigned_user_id = to.user_id;
                    expected.assigned_group_id = to.group_id;
                }
                task_changed(tenant, "escalated", expected, returned)
            })
        }
        Call::Expire { task } => {
            let want = transition(me, task, &TaskStatus::OPEN, |_| None);
            let got = r.tasks.expire(ctx, task).await;
            settle(want, got, |mut expected, returned| {
                expected.status = TaskStatus::Expired;
                task_changed(tenant, "expired", expected, returned)
            })
        }
        Call::Cancel { task } => {
            let want = transition(me, task, &TaskStatus::OPEN, |_| None);
            let got = r.tasks.cancel(ctx, task, Some("no longer needed")).await;
            settle(want, got, |mut expected, returned| {
                expected.status = TaskStatus::Cancelled;
                task_changed(tenant, "cancelled", expected, returned)
            })
        }
        Call::ReadTask { task } => {
            let found = r
                .tasks
                .find_by_id(ctx, task)
                .await
                .map_err(|e| format!("find_by_id: {e:?}"))?;
            same("find task by id", &found, &task_of(me, task).cloned())?;
            let history = r
                .tasks
                .history(ctx, task)
                .await
                .map_err(|e| format!("history: {e:?}"))?;
            same("the task's history", &history, &history_of(me, task))?;
            Ok(Done::reads(2))
        }
        Call::Inbox { user } => {
            let inbox = r
                .tasks
                .find_pending_for_user(ctx, user, &first())
                .await
                .map_err(|e| format!("inbox: {e:?}"))?;
            same("the user's inbox", &inbox.items, &inbox_of(me, user))?;
            Ok(Done::reads(1))
        }
        Call::CreateConversation { external } => {
            let exists = external
                .as_ref()
                .is_some_and(|e| by_external(me, e).is_some());
            let want = if exists {
                Err(Refusal::Conflict(EXTERNAL_KEY))
            } else {
                Ok(())
            };
            let mut new = NewConversation::new(json!({"kind": "user", "id": "p-1"}));
            if let Some(external) = &external {
                new = new.external(CHANNEL, external);
            }
            let got = r.conversations.create(ctx, new).await;
            settle(want, got, |(), conversation| {
                ensure(
                    conversation.tenant_id == tenant
                        && conversation.status == ConversationStatus::Active
                        && conversation.external_id == external,
                    || format!("created {conversation:?}"),
                )?;
                let id = conversation.id;
                Ok(Done::changes(
                    Changes::none().add("conversations", 1),
                    Box::new(move |_, after| {
                        stored("conversation", &after.conversations, &conversation, |c| {
                            c.id
                        })
                        .map(drop)
                    }),
                )
                .creating(Kind::Conversation, id))
            })
        }
        Call::GetOrCreate { external } => {
            let existing = by_external(me, &external).cloned();
            let got = r
                .conversations
                .get_or_create(
                    ctx,
                    CHANNEL,
                    &external,
                    json!({"kind": "user", "id": "p-2"}),
                )
                .await;
            settle(
                Ok(existing),
                got,
                |existing, (conversation, created)| match existing {
                    Some(existing) => {
                        same(
                            "get_or_create of an existing conversation",
                            &(conversation, created),
                            &(existing, false),
                        )?;
                        Ok(Done::nothing())
                    }
                    None => {
                        ensure(
                            created
                                && conversation.tenant_id == tenant
                                && conversation.external_id.as_deref() == Some(external.as_str()),
                            || format!("get_or_create made {conversation:?} (created: {created})"),
                        )?;
                        let id = conversation.id;
                        Ok(Done::changes(
                            Changes::none().add("conversations", 1),
                            Box::new(move |_, after| {
                                stored("conversation", &after.conversations, &conversation, |c| {
                                    c.id
                                })
                                .map(drop)
                            }),
                        )
                        .creating(Kind::Conversation, id))
                    }
                },
            )
        }
        Call::AppendMessage { conversation } => {
            let want = match conversation_of(me, conversation) {
                None => Err(Refusal::NotFound("conversation", conversation)),
                Some(c) if c.status != ConversationStatus::Active => Err(Refusal::InvalidState {
                    entity: "conversation",
                    id: conversation,
                    state: c.status.as_str(),
                    action: "append a message to",
                }),
                Some(_) => Ok(()),
            };
            let got = r
                .conversations
                .append_message(ctx, conversation, NewMessage::new("user", "hello"))
                .await;
            settle(want, got, |(), message| {
                ensure(
                    message.tenant_id == tenant && message.conversation_id == conversation,
                    || format!("appended {message:?}"),
                )?;
                Ok(Done::changes(
                    Changes::none()
                        .add("messages", 1)
                        .modify("conversations", conversation),
                    Box::new(move |_, after| {
                        stored("message", &after.messages, &message, |m| m.id).map(drop)
                    }),
                ))
            })
        }
        Call::Close { conversation } | Call::Archive { conversation } => {
            let archive = matches!(call, Call::Archive { .. });
            let allowed: &[ConversationStatus] = if archive {
                &[ConversationStatus::Active, ConversationStatus::Closed]
            } else {
                &[ConversationStatus::Active]
            };
            let want = match conversation_of(me, conversation) {
                None => Err(Refusal::NotFound("conversation", conversation)),
                Some(c) if !allowed.contains(&c.status) => Err(Refusal::InvalidState {
                    entity: "conversation",
                    id: conversation,
                    state: c.status.as_str(),
                    action: if archive { "archive" } else { "close" },
                }),
                Some(c) => Ok(c.clone()),
            };
            let got = if archive {
                r.conversations.archive(ctx, conversation).await
            } else {
                r.conversations.close(ctx, conversation).await
            };
            settle(want, got, |before, returned| {
                let status = if archive {
                    ConversationStatus::Archived
                } else {
                    ConversationStatus::Closed
                };
                ensure(
                    returned.tenant_id == tenant
                        && returned.status == status
                        && returned.closed_at.is_some()
                        && (before.closed_at.is_none() || returned.closed_at == before.closed_at),
                    || format!("{before:?} became {returned:?}"),
                )?;
                Ok(Done::changes(
                    Changes::none().modify("conversations", conversation),
                    Box::new(move |_, after| {
                        stored("conversation", &after.conversations, &returned, |c| c.id).map(drop)
                    }),
                ))
            })
        }
        Call::ReadConversation { conversation } => {
            let found = r
                .conversations
                .find_by_id(ctx, conversation)
                .await
                .map_err(|e| format!("find_by_id: {e:?}"))?;
            same(
                "find conversation by id",
                &found,
                &conversation_of(me, conversation).cloned(),
            )?;
            let messages = r
                .conversations
                .list_messages(ctx, conversation, &first())
                .await
                .map_err(|e| format!("list_messages: {e:?}"))?;
            same(
                "the conversation's messages",
                &messages.items,
                &messages_of(me, conversation),
            )?;
            let tasks = r
                .conversations
                .list_tasks(ctx, conversation, &first())
                .await
                .map_err(|e| format!("list_tasks: {e:?}"))?;
            same(
                "the conversation's tasks",
                &tasks.items,
                &conversation_tasks(me, conversation),
            )?;
            Ok(Done::reads(3))
        }
        Call::FindByKey { key } => {
            let email = format!("user{key}@example.com");
            let got = r
                .users
                .find_by_email(ctx, &email)
                .await
                .map_err(|e| format!("find_by_email: {e:?}"))?;
            same(
                "find user by email",
                &got,
                &me.users.iter().find(|u| u.email == email).cloned(),
            )?;
            let slug = format!("group-{}", key % 4);
            let got = r
                .groups
                .find_by_slug(ctx, &slug)
                .await
                .map_err(|e| format!("find_by_slug: {e:?}"))?;
            same(
                "find group by slug",
                &got,
                &me.groups.iter().find(|g| g.slug == slug).cloned(),
            )?;
            let external = format!("ext-{}", key % 3);
            let got = r
                .conversations
                .find_by_external_id(ctx, CHANNEL, &external)
                .await
                .map_err(|e| format!("find_by_external_id: {e:?}"))?;
            same(
                "find conversation by external id",
                &got,
                &by_external(me, &external).cloned(),
            )?;
            Ok(Done::reads(3))
        }
        Call::RecordAudit { events } => {
            let traced = ctx
                .clone()
                .with_trace("trace-isolation", Some("span-1"))
                .map_err(|e| format!("{e:?}"))?;
            let event = |n: usize| {
                NewAuditEvent::new("task", "viewed", "task", format!("t-{n}"))
                    .with_details(json!({"n": n}))
            };
            if events == 1 {
                let got = r.audit.record(&traced, event(0)).await;
                settle(Ok(()), got, |(), recorded| {
                    ensure(
                        recorded.tenant_id == tenant
                            && recorded.trace_id.as_deref() == Some("trace-isolation"),
                        || format!("recorded {recorded:?}"),
                    )?;
                    Ok(Done::changes(
                        Changes::none().add("audit", 1),
                        Box::new(move |_, after| {
                            stored("audit event", &after.audit, &recorded, |a| a.id).map(drop)
                        }),
                    ))
                })
            } else {
                let got = r
                    .audit
                    .record_many(&traced, (0..events).map(event).collect())
                    .await;
                settle(Ok(()), got, |(), written| {
                    same("events written", &written, &(events as u64))?;
                    Ok(Done::changes(
                        Changes::none().add("audit", events),
                        Box::new(move |before, after| {
                            let old: BTreeSet<Uuid> = before.audit.iter().map(|a| a.id).collect();
                            ensure(
                                after
                                    .audit
                                    .iter()
                                    .filter(|a| !old.contains(&a.id))
                                    .all(|a| {
                                        a.tenant_id == tenant
                                            && a.trace_id.as_deref() == Some("trace-isolation")
                                    }),
                                || "a recorded event lacks its tenant or trace".to_owned(),
                            )
                        }),
                    ))
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What every read of a tenant must return, from the owner's view of its rows.

fn by_external<'a>(s: &'a Snapshot, external: &str) -> Option<&'a conversations::Model> {
    s.conversations.iter().find(|c| {
        c.channel.as_deref() == Some(CHANNEL) && c.external_id.as_deref() == Some(external)
    })
}

/// The user's inbox: pending tasks assigned to the user, or to an active group the user is in (an
/// archived group's tasks reach its members no more, unless assigned to them directly too).
fn inbox_of(s: &Snapshot, user: Uuid) -> Vec<tasks::Model> {
    let groups: BTreeSet<Uuid> = s
        .memberships
        .iter()
        .filter(|m| m.user_id == user && is_active_group(s, m.group_id))
        .map(|m| m.group_id)
        .collect();
    let mut inbox: Vec<tasks::Model> = s
        .tasks
        .iter()
        .filter(|t| {
            PENDING.contains(&t.status)
                && (t.assigned_user_id == Some(user)
                    || t.assigned_group_id.is_some_and(|g| groups.contains(&g)))
        })
        .cloned()
        .collect();
    inbox.sort_by_key(|t| (t.sla_deadline.is_none(), t.sla_deadline, t.created_at, t.id));
    inbox
}

/// The open tasks assigned to an archived group, in id order: what is left to hand on.
fn in_archived_groups(s: &Snapshot) -> Vec<tasks::Model> {
    let mut tasks: Vec<tasks::Model> = s
        .tasks
        .iter()
        .filter(|t| {
            t.status.is_open()
                && t.assigned_group_id.is_some_and(|g| {
                    group_of(s, g).is_some_and(|g| g.status == GroupStatus::Archived)
                })
        })
        .cloned()
        .collect();
    tasks.sort_by_key(|t| t.id);
    tasks
}

fn user_groups(s: &Snapshot, user: Uuid) -> Vec<groups::Model> {
    s.groups
        .iter()
        .filter(|g| is_member(s, g.id, user))
        .cloned()
        .collect()
}

fn members_of(s: &Snapshot, group: Uuid) -> Vec<users::Model> {
    s.users
        .iter()
        .filter(|u| is_member(s, group, u.id))
        .cloned()
        .collect()
}

fn workloads_of(s: &Snapshot, group: Uuid) -> Vec<MemberWorkload> {
    let mut loads: Vec<MemberWorkload> = s
        .memberships
        .iter()
        .filter(|m| m.group_id == group)
        .map(|m| MemberWorkload {
            user_id: m.user_id,
            open_tasks: s
                .tasks
                .iter()
                .filter(|t| {
                    t.status.is_open() && t.claimed_by.or(t.assigned_user_id) == Some(m.user_id)
                })
                .count() as i64,
        })
        .collect();
    loads.sort_by_key(|w| (w.open_tasks, w.user_id));
    loads
}

fn history_of(s: &Snapshot, task: Uuid) -> Vec<task_history::Model> {
    let mut history: Vec<task_history::Model> = s
        .history
        .iter()
        .filter(|h| h.task_id == task)
        .cloned()
        .collect();
    history.sort_by_key(|h| (h.created_at, h.id));
    history
}

fn messages_of(s: &Snapshot, conversation: Uuid) -> Vec<messages::Model> {
    let mut messages: Vec<messages::Model> = s
        .messages
        .iter()
        .filter(|m| m.conversation_id == conversation)
        .cloned()
        .collect();
    messages.sort_by_key(|m| (m.created_at, m.id));
    messages
}

fn conversation_tasks(s: &Snapshot, conversation: Uuid) -> Vec<tasks::Model> {
    s.tasks
        .iter()
        .filter(|t| t.conversation_id == Some(conversation))
        .cloned()
        .collect()
}

fn overdue_of(s: &Snapshot, now: DateTime<FixedOffset>) -> Vec<tasks::Model> {
    let mut overdue: Vec<tasks::Model> = s
        .tasks
        .iter()
        .filter(|t| t.status.is_open() && t.sla_deadline.is_some_and(|d| d < now))
        .cloned()
        .collect();
    overdue.sort_by_key(|t| (t.sla_deadline, t.id));
    overdue
}

fn audit_of(s: &Snapshot) -> Vec<audit_events::Model> {
    let mut audit = s.audit.clone();
    audit.sort_by_key(|a| std::cmp::Reverse((a.created_at, a.id)));
    audit
}

/// Rows that carry a tenant.
trait Owned {
    fn tenant(&self) -> Uuid;
}

macro_rules! owned {
    ($($module:ident),*) => {$(
        impl Owned for $module::Model {
            fn tenant(&self) -> Uuid {
                self.tenant_id
            }
        }
    )*};
}
owned!(
    users,
    groups,
    group_members,
    tasks,
    task_history,
    conversations,
    messages,
    audit_events
);

/// Fails unless a read of tenant `tenant` returned only its rows, and exactly `want`.
fn rows<M: Owned + PartialEq + Debug>(
    what: &str,
    tenant: Uuid,
    got: &[M],
    want: &[M],
) -> Result<(), String> {
    if let Some(row) = got.iter().find(|r| r.tenant() != tenant) {
        return Err(format!(
            "{what} returned a row of tenant {}, not of {tenant}: {row:?}",
            row.tenant()
        ));
    }
    same(what, &got, &want)
}

/// One read and its comparison with the owner's view.
type Check<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;

/// A page read must hold exactly `want`, all of tenant `tenant`, and have no next page.
fn page_ok<M: Owned + PartialEq + Debug, C: Debug>(
    what: &str,
    tenant: Uuid,
    got: orkestra_repository::Result<Page<M, C>>,
    want: Vec<M>,
) -> Result<(), String> {
    let page = got.map_err(|e| format!("{what} failed: {e:?}"))?;
    ensure(page.next.is_none(), || {
        format!("{what} has a second page after {:?}", page.next)
    })?;
    rows(what, tenant, &page.items, &want)
}

/// A list read must hold exactly `want`, all of tenant `tenant`.
fn list_ok<M: Owned + PartialEq + Debug>(
    what: &str,
    tenant: Uuid,
    got: orkestra_repository::Result<Vec<M>>,
    want: Vec<M>,
) -> Result<(), String> {
    let got = got.map_err(|e| format!("{what} failed: {e:?}"))?;
    rows(what, tenant, &got, &want)
}

/// A read of a value must return `want`.
fn value_ok<T: PartialEq + Debug>(
    what: &str,
    _tenant: Uuid,
    got: orkestra_repository::Result<T>,
    want: T,
) -> Result<(), String> {
    let got = got.map_err(|e| format!("{what} failed: {e:?}"))?;
    same(what, &got, &want)
}

/// Every read of check 1 for the tenant of `ctx`, whose rows the owner sees as `s`: its users,
/// groups and tasks in every status, its open tasks in archived groups, each user's inbox, each
/// task's history, each conversation's messages, its audit log. `deep` adds the tasks of each
/// workflow run, the overdue tasks, each user's groups, each group's members and workloads, each
/// conversation's tasks and the audit count (read after the last step of a case; steps read them
/// for the ids they name).
fn reads_of<'a>(
    r: &'a Repos<'a>,
    ctx: &'a RequestContext,
    s: &'a Snapshot,
    label: &str,
    deep: bool,
) -> Vec<Check<'a>> {
    let tenant = ctx.tenant_id();
    let mut checks: Vec<Check<'a>> = Vec::new();
    macro_rules! check {
        ($ok:ident, $what:expr, $read:expr, $want:expr) => {{
            let what = format!("{} under {label}", $what);
            let want = $want;
            checks.push(Box::pin(
                async move { $ok(&what, tenant, $read.await, want) },
            ));
        }};
    }
    check!(
        page_ok,
        "list users",
        r.users.list(ctx, &UserFilter::default(), &first()),
        s.users.clone()
    );
    check!(
        page_ok,
        "list groups",
        r.groups.list(ctx, &first()),
        s.groups.clone()
    );
    for status in STATUSES {
        let want: Vec<tasks::Model> = s
            .tasks
            .iter()
            .filter(|t| t.status == status)
            .cloned()
            .collect();
        check!(
            page_ok,
            format!("list tasks {status}"),
            r.tasks.list_by_status(ctx, status, &first()),
            want
        );
    }
    check!(
        page_ok,
        "tasks in archived groups",
        r.tasks.list_in_archived_groups(ctx, &first()),
        in_archived_groups(s)
    );
    for user in s.users.iter().map(|u| u.id) {
        check!(
            page_ok,
            format!("inbox of user {user}"),
            r.tasks.find_pending_for_user(ctx, user, &first()),
            inbox_of(s, user)
        );
    }
    for task in s.tasks.iter().map(|t| t.id) {
        check!(
            list_ok,
            format!("history of task {task}"),
            r.tasks.history(ctx, task),
            history_of(s, task)
        );
    }
    for conversation in s.conversations.iter().map(|c| c.id) {
        check!(
            page_ok,
            format!("messages of conversation {conversation}"),
            r.conversations.list_messages(ctx, conversation, &first()),
            messages_of(s, conversation)
        );
    }
    check!(
        page_ok,
        "audit query",
        r.audit.query(ctx, &AuditQuery::all(), &first()),
        audit_of(s)
    );
    if !deep {
        return checks;
    }
    for run in RUNS {
        let want: Vec<tasks::Model> = s
            .tasks
            .iter()
            .filter(|t| t.workflow_id == WORKFLOW && t.workflow_run_id == run)
            .cloned()
            .collect();
        check!(
            page_ok,
            format!("list tasks of {WORKFLOW}/{run}"),
            r.tasks.list_by_workflow_run(ctx, WORKFLOW, run, &first()),
            want
        );
    }
    let now = Utc::now().fixed_offset();
    check!(
        page_ok,
        "overdue tasks",
        r.tasks.overdue(ctx, now, &first()),
        overdue_of(s, now)
    );
    for user in s.users.iter().map(|u| u.id) {
        check!(
            list_ok,
            format!("groups of user {user}"),
            r.groups.list_user_groups(ctx, user),
            user_groups(s, user)
        );
    }
    for group in s.groups.iter().map(|g| g.id) {
        check!(
            page_ok,
            format!("members of group {group}"),
            r.groups.list_members(ctx, group, &first()),
            members_of(s, group)
        );
        check!(
            value_ok,
            format!("workloads of group {group}"),
            r.groups.member_workloads(ctx, group),
            workloads_of(s, group)
        );
    }
    for conversation in s.conversations.iter().map(|c| c.id) {
        check!(
            page_ok,
            format!("tasks of conversation {conversation}"),
            r.conversations.list_tasks(ctx, conversation, &first()),
            conversation_tasks(s, conversation)
        );
    }
    check!(
        value_ok,
        "audit count",
        r.audit.count(ctx, &AuditQuery::all()),
        s.audit.len() as u64
    );
    checks
}

/// Runs the checks concurrently (on PostgreSQL they share the application pool's connections, so
/// transactions of different tenants interleave); the first failure, or how many ran.
async fn run_checks(checks: Vec<Check<'_>>) -> Result<u64, String> {
    let count = checks.len() as u64;
    let mut pending: Vec<Option<Check<'_>>> = checks.into_iter().map(Some).collect();
    let mut failure = None;
    std::future::poll_fn(|cx| {
        let mut busy = false;
        for slot in &mut pending {
            if let Some(check) = slot {
                match check.as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        *slot = None;
                        if let Err(error) = result {
                            failure.get_or_insert(error);
                        }
                    }
                    Poll::Pending => busy = true,
                }
            }
        }
        if busy { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    failure.map_or(Ok(count), Err)
}

// ---------------------------------------------------------------------------------------------
// One case.

/// What the run did, for the summary line.
#[derive(Debug, Default)]
struct Stats {
    cases: u64,
    operations: u64,
    refused: u64,
    cross: u64,
    skipped: u64,
    reads: u64,
    /// Per operation: (performed, refused, naming another tenant's rows, skipped).
    by_call: BTreeMap<&'static str, (u64, u64, u64, u64)>,
    /// Where the time went: databases and tenants, operations, owner snapshots, checked reads.
    setup: std::time::Duration,
    calls: std::time::Duration,
    snapshots: std::time::Duration,
    checks: std::time::Duration,
    /// Waiting for the last databases to drop.
    teardown: std::time::Duration,
}

/// Every row of every table as the owner sees it: the queries of `Snapshot::all`, in its order,
/// run concurrently on the owner's pool (nothing else writes to the case's database meanwhile).
async fn owner_view(db: &DatabaseConnection) -> Result<Snapshot, DbErr> {
    let (tenants, users, groups, memberships, tasks, history, conversations, messages, audit) = tokio::try_join!(
        tenants::Entity::find()
            .order_by_asc(tenants::Column::Id)
            .all(db),
        users::Entity::find()
            .order_by_asc(users::Column::TenantId)
            .order_by_asc(users::Column::Id)
            .all(db),
        groups::Entity::find()
            .order_by_asc(groups::Column::TenantId)
            .order_by_asc(groups::Column::Id)
            .all(db),
        group_members::Entity::find()
            .order_by_asc(group_members::Column::TenantId)
            .order_by_asc(group_members::Column::GroupId)
            .order_by_asc(group_members::Column::UserId)
            .all(db),
        tasks::Entity::find()
            .order_by_asc(tasks::Column::TenantId)
            .order_by_asc(tasks::Column::Id)
            .all(db),
        task_history::Entity::find()
            .order_by_asc(task_history::Column::TenantId)
            .order_by_asc(task_history::Column::Id)
            .all(db),
        conversations::Entity::find()
            .order_by_asc(conversations::Column::TenantId)
            .order_by_asc(conversations::Column::Id)
            .all(db),
        messages::Entity::find()
            .order_by_asc(messages::Column::TenantId)
            .order_by_asc(messages::Column::Id)
            .all(db),
        audit_events::Entity::find()
            .order_by_asc(audit_events::Column::TenantId)
            .order_by_asc(audit_events::Column::Id)
            .all(db),
    )?;
    Ok(Snapshot {
        tenants,
        users,
        groups,
        memberships,
        tasks,
        history,
        conversations,
        messages,
        audit,
    })
}

/// The owner's view of each tenant's rows: one snapshot of the whole database, split by tenant
/// (each part is exactly what `Snapshot::of_tenant` reads for its tenant, in the same order),
/// after checking that no row belongs to any other tenant.
async fn snapshots(db: &TestDb, tenants: &[Uuid; TENANTS]) -> Result<[Snapshot; TENANTS], String> {
    let all = owner_view(db.conn())
        .await
        .map_err(|e| format!("snapshot: {e}"))?;
    let index = |tenant: Uuid| tenants.iter().position(|t| *t == tenant);
    let stray = all
        .tenants
        .iter()
        .map(|t| t.id)
        .chain(all.users.iter().map(Owned::tenant))
        .chain(all.groups.iter().map(Owned::tenant))
        .chain(all.memberships.iter().map(Owned::tenant))
        .chain(all.tasks.iter().map(Owned::tenant))
        .chain(all.history.iter().map(Owned::tenant))
        .chain(all.conversations.iter().map(Owned::tenant))
        .chain(all.messages.iter().map(Owned::tenant))
        .chain(all.audit.iter().map(Owned::tenant))
        .find(|t| index(*t).is_none());
    if let Some(stray) = stray {
        return Err(format!(
            "a row of tenant {stray}, which is none of the case's tenants"
        ));
    }
    fn part<M: Clone>(rows: &[M], tenant: Uuid, of: impl Fn(&M) -> Uuid) -> Vec<M> {
        rows.iter().filter(|r| of(r) == tenant).cloned().collect()
    }
    Ok(tenants.map(|t| Snapshot {
        tenants: part(&all.tenants, t, |r| r.id),
        users: part(&all.users, t, Owned::tenant),
        groups: part(&all.groups, t, Owned::tenant),
        memberships: part(&all.memberships, t, Owned::tenant),
        tasks: part(&all.tasks, t, Owned::tenant),
        history: part(&all.history, t, Owned::tenant),
        conversations: part(&all.conversations, t, Owned::tenant),
        messages: part(&all.messages, t, Owned::tenant),
        audit: part(&all.audit, t, Owned::tenant),
    }))
}

/// Check 1 for every tenant, all reads concurrently; how many reads it made.
async fn check_all_reads(
    db: &TestDb,
    tenants: &[Uuid; TENANTS],
    snaps: &[Snapshot; TENANTS],
    deep: bool,
) -> Result<u64, String> {
    let repos = Repos::new(db.app_conn());
    let contexts = tenants.map(ctx);
    let labels: Vec<String> = (0..TENANTS)
        .map(|i| format!("tenant {i} ({})", tenants[i]))
        .collect();
    let checks = (0..TENANTS)
        .flat_map(|i| reads_of(&repos, &contexts[i], &snaps[i], &labels[i], deep))
        .collect();
    run_checks(checks).await
}

/// The databases of the cases. Making one (a `CREATE DATABASE` on PostgreSQL) and dropping one
/// take longer than many steps, so the next case's database is made while a case runs, and a
/// finished case's database is dropped on a thread of its own.
struct Databases {
    runtime: tokio::runtime::Runtime,
    /// The next case's database, being made.
    next: RefCell<Option<tokio::task::JoinHandle<anyhow::Result<TestDb>>>>,
    /// How many more cases will surely ask for one (shrinking may ask for more).
    ahead: std::cell::Cell<u32>,
    /// The threads dropping finished databases.
    dropping: RefCell<Vec<std::thread::JoinHandle<()>>>,
}

impl Databases {
    fn new(cases: u32) -> std::io::Result<Databases> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        Ok(Databases {
            runtime,
            next: RefCell::new(None),
            ahead: std::cell::Cell::new(cases),
            dropping: RefCell::new(Vec::new()),
        })
    }

    /// A migrated database for a case; starts making the next one if another case will follow.
    async fn take(&self) -> anyhow::Result<TestDb> {
        let pending = self.next.borrow_mut().take();
        let db = match pending {
            Some(pending) => pending.await??,
            None => TestDb::migrated().await?,
        };
        let ahead = self.ahead.get().saturating_sub(1);
        self.ahead.set(ahead);
        if ahead > 0 {
            *self.next.borrow_mut() = Some(self.runtime.spawn(TestDb::migrated()));
        }
        Ok(db)
    }

    /// Closes the database's pools (so the drop need not end their sessions), then drops it on a
    /// thread of its own.
    async fn give_back(&self, db: TestDb) {
        for pool in [db.app_conn(), db.system_conn(), db.conn()] {
            let _ = pool.clone().close().await;
        }
        self.dropping
            .borrow_mut()
            .push(std::thread::spawn(move || drop(db)));
    }

    /// Drops what is left, waiting for every drop.
    fn finish(self) {
        let pending = self.next.borrow_mut().take();
        if let Some(pending) = pending
            && let Ok(Ok(db)) = self.runtime.block_on(pending)
        {
            self.runtime.block_on(self.give_back(db));
        }
        for thread in self.dropping.into_inner() {
            let _ = thread.join();
        }
    }
}

async fn run_case(db: &TestDb, steps: &[Step], stats: &RefCell<Stats>) -> Result<(), String> {
    let clock = Instant::now();
    let system = TenantRepository::new(db.system_conn());
    let mut tenants = [Uuid::nil(); TENANTS];
    for (i, tenant) in tenants.iter_mut().enumerate() {
        *tenant = system
            .create(NewTenant::new(format!("Tenant {i}"), format!("tenant-{i}")))
            .await
            .map_err(|e| format!("creating tenant {i}: {e:?}"))?
            .id;
    }
    let mut created: [Created; TENANTS] = Default::default();
    stats.borrow_mut().setup += clock.elapsed();
    let mut snaps = snapshots(db, &tenants).await?;
    let mut reads = check_all_reads(db, &tenants, &snaps, true).await?;
    let repos = Repos::new(db.app_conn());
    let mut done_ops = Vec::new();

    for (n, step) in steps.iter().enumerate() {
        let actor = step.tenant;
        let mut resolver = Resolver {
            actor,
            created: &created,
            snaps: &snaps,
            cross: false,
        };
        let Some(call) = resolver.resolve(&step.op) else {
            done_ops.push((step.op.name(), None));
            continue;
        };
        let cross = resolver.cross;
        let context = |e: String| {
            format!(
                "step {n} (tenant {actor}, {:?}) resolved to {call:?}: {e}",
                step.op
            )
        };
        let clock = Instant::now();
        let done = perform(&repos, &ctx(tenants[actor]), &snaps[actor], &call)
            .await
            .map_err(context)?;
        stats.borrow_mut().calls += clock.elapsed();
        let clock = Instant::now();
        let after = snapshots(db, &tenants).await?;
        stats.borrow_mut().snapshots += clock.elapsed();
        for other in (0..TENANTS).filter(|&t| t != actor) {
            if after[other] != snaps[other] {
                return Err(context(format!(
                    "ISOLATION: tenant {other}'s rows changed under tenant {actor}: {}",
                    describe(&snapshot_diff(&snaps[other], &after[other]))
                )));
            }
        }
        check_changes(&snaps[actor], &after[actor], &done.changes).map_err(context)?;
        if let Some(verify) = done.verify {
            verify(&snaps[actor], &after[actor]).map_err(context)?;
        }
        if let Some((kind, id)) = done.created {
            created[actor].list_mut(kind).push(id);
        }
        if let Some((kind, id)) = done.deleted {
            created[actor].list_mut(kind).retain(|x| *x != id);
        }
        for (t, model) in created.iter().enumerate() {
            model
                .matches(&after[t])
                .map_err(|e| context(format!("tenant {t}: {e}")))?;
        }
        snaps = after;
        reads += done.reads;
        let clock = Instant::now();
        reads += check_all_reads(db, &tenants, &snaps, false)
            .await
            .map_err(context)?;
        stats.borrow_mut().checks += clock.elapsed();
        done_ops.push((step.op.name(), Some((done.refused, cross))));
    }
    reads += check_all_reads(db, &tenants, &snaps, true)
        .await
        .map_err(|e| format!("after the last step: {e}"))?;

    let mut stats = stats.borrow_mut();
    stats.cases += 1;
    stats.reads += reads;
    for (name, outcome) in done_ops {
        let entry = stats.by_call.entry(name).or_default();
        let Some((refused, cross)) = outcome else {
            entry.3 += 1;
            stats.skipped += 1;
            continue;
        };
        entry.0 += 1;
        entry.1 += u64::from(refused);
        entry.2 += u64::from(cross);
        stats.operations += 1;
        stats.refused += u64::from(refused);
        stats.cross += u64::from(cross);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The runner: fixed cases, a printed and replayable seed, no persistence files.

fn seed() -> u64 {
    orkestra_tests::seed_from_env("ORKESTRA_PROPTEST_SEED")
}

fn cases() -> u32 {
    match std::env::var("ORKESTRA_PROPTEST_CASES") {
        Ok(text) if !text.trim().is_empty() => text.trim().parse().unwrap_or_else(|_| {
            panic!("ORKESTRA_PROPTEST_CASES={text:?} is not a number of cases")
        }),
        _ => DEFAULT_CASES,
    }
}

/// The 32 bytes ChaCha takes, spread from the 64-bit seed (SplitMix64).
fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut state = seed;
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_exact_mut(8) {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes
}

#[test]
fn tenants_stay_isolated_under_random_operation_sequences() {
    let seed = seed();
    let cases = cases();
    let backend = match Backend::from_env() {
        Backend::Sqlite => "SQLite",
        Backend::Postgres { .. } => "PostgreSQL",
        Backend::Citus { .. } => "Citus",
    };
    println!(
        "isolation property on {backend}: {cases} cases over {TENANTS} tenants, each {}..={} \
         opening steps per tenant then {}..={} steps, seed 0x{seed:016x} (replay: \
         ORKESTRA_PROPTEST_SEED=0x{seed:016x})",
        // The five fixed ones, and the first group's archiving in some tenants.
        OPENING_STEPS.start() + 5,
        OPENING_STEPS.end() + 6,
        STEPS.start(),
        STEPS.end()
    );
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 64,
        // A case takes seconds on PostgreSQL: shrinking stops after two minutes whatever it reached.
        max_shrink_time: 120_000,
        rng_algorithm: RngAlgorithm::ChaCha,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes(seed)),
    );
    let stats = RefCell::new(Stats::default());
    let databases = Databases::new(cases).expect("a tokio runtime");
    let started = Instant::now();
    let result = runner.run(&steps(), |steps| {
        databases.runtime.block_on(async {
            let clock = Instant::now();
            let db = databases
                .take()
                .await
                .map_err(|e| TestCaseError::fail(format!("a test database: {e:#}")))?;
            stats.borrow_mut().setup += clock.elapsed();
            let outcome = run_case(&db, &steps, &stats).await;
            databases.give_back(db).await;
            outcome.map_err(|e| TestCaseError::fail(format!("seed 0x{seed:016x}: {e}")))
        })
    });
    let clock = Instant::now();
    databases.finish();
    stats.borrow_mut().teardown += clock.elapsed();
    if let Err(error) = result {
        let detail = match error {
            TestError::Fail(reason, steps) => {
                let steps: Vec<String> = steps
                    .iter()
                    .enumerate()
                    .map(|(n, step)| {
                        format!("  step {n:>2}: tenant {}: {:?}", step.tenant, step.op)
                    })
                    .collect();
                format!("{reason}\nminimal failing case:\n{}", steps.join("\n"))
            }
            TestError::Abort(reason) => format!("aborted: {reason}"),
        };
        panic!(
            "isolation property failed on {backend} (seed 0x{seed:016x}; replay with \
             ORKESTRA_PROPTEST_SEED=0x{seed:016x} ORKESTRA_PROPTEST_CASES={cases}): {detail}"
        );
    }
    let stats = stats.into_inner();
    println!(
        "isolation property: {} cases, {} operations ({} refused, {} naming another tenant's \
         rows, {} steps skipped for want of ids), {} reads checked, seed 0x{seed:016x}, {:.1} s on \
         {backend}",
        stats.cases,
        thousands(stats.operations),
        thousands(stats.refused),
        thousands(stats.cross),
        thousands(stats.skipped),
        thousands(stats.reads),
        started.elapsed().as_secs_f64(),
    );
    let by_call: Vec<String> = stats
        .by_call
        .iter()
        .map(|(name, (n, refused, cross, skipped))| {
            format!("{name} {n}/{refused}/{cross}/{skipped}")
        })
        .collect();
    println!(
        "operations (performed/refused/cross-tenant/skipped): {}",
        by_call.join(", ")
    );
    println!(
        "time: {:.1} s waiting for databases and creating tenants, {:.1} s in operations, {:.1} s \
         in owner snapshots, {:.1} s in checked reads, {:.1} s waiting for the last drops",
        stats.setup.as_secs_f64(),
        stats.calls.as_secs_f64(),
        stats.snapshots.as_secs_f64(),
        stats.checks.as_secs_f64(),
        stats.teardown.as_secs_f64(),
    );
}
