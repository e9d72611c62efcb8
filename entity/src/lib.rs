//! SeaORM entities of the Orkestra schema.
//!
//! Everything under `src/generated/` is written by `sea-orm-cli generate entity` from the
//! PostgreSQL schema that `orkestra-migration` builds (`just entities`), and is never edited by
//! hand: CI regenerates it and fails on any difference (`just check-entities`). This file re-exports
//! it, and the sibling modules add what the generator cannot know:
//! - [`links`]: named relations for a task's several user references (assignee, claimer,
//!   completer), which the generator can only number;
//! - [`status`]: behaviour of the status enums (which task states are open, which are final) and
//!   their parsing from the exact database labels ([`status::UnknownVariant`] refuses the rest).
//!
//! Every tenant-owned entity has the primary key `(id, tenant_id)` in column order, so
//! `tasks::Entity::find_by_id((id, tenant_id))` always names the tenant.

// Generated code carries no doc comments; what each table holds is documented in the seed and
// in `orkestra-migration`.
#[rustfmt::skip]
#[allow(missing_docs)]
#[path = "generated/lib.rs"]
mod generated;

pub use generated::*;

pub mod links;
pub mod status;
