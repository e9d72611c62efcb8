//! Times as the repositories store and compare them.
//!
//! Every stored time is UTC with whole microseconds (what PostgreSQL's `timestamptz` keeps). SQLite
//! stores times as RFC 3339 text and compares them as text, which orders instants correctly only
//! when they share one offset, so every time a repository writes or compares goes through here.

use chrono::{DateTime, FixedOffset, SubsecRound, TimeDelta, Utc};

/// The current time, in UTC, truncated to microseconds: a value written and read back compares
/// equal on both backends.
pub(crate) fn now() -> DateTime<FixedOffset> {
    Utc::now().trunc_subsecs(6).fixed_offset()
}

/// The same instant in UTC, to store or to compare with stored times.
pub(crate) fn utc(instant: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
    instant.with_timezone(&Utc).fixed_offset()
}

/// A range bound in UTC, rounded up to the microsecond. Stored times are whole microseconds, so
/// `t >= x` and `t < x` select the same rows as with the rounded bound, on both backends (the
/// PostgreSQL driver would otherwise truncate it, and SQLite compare its text as is).
pub(crate) fn bound(instant: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
    let instant = utc(instant);
    let truncated = instant.trunc_subsecs(6);
    if truncated < instant {
        truncated + TimeDelta::microseconds(1)
    } else {
        truncated
    }
}
