//! Keyset pagination: each page names where the next one starts, so pages stay fast however deep a
//! caller reads and stay stable while rows are added.

use chrono::{DateTime, FixedOffset};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Select};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Result;
use crate::validate;

/// How many rows a page holds when the caller does not say.
pub const DEFAULT_LIMIT: u64 = 50;

/// Which page to read: the first, or the one after a cursor from a previous page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageRequest<C> {
    /// Where the previous page ended (`None`: start at the beginning).
    pub after: Option<C>,
    /// How many rows at most (1 to [`validate::PAGE_MAX`]).
    pub limit: u64,
}

impl<C> PageRequest<C> {
    /// The first page of `limit` rows.
    pub fn first(limit: u64) -> Self {
        PageRequest { after: None, limit }
    }

    /// The page of `limit` rows after `cursor`.
    pub fn after(cursor: C, limit: u64) -> Self {
        PageRequest {
            after: Some(cursor),
            limit,
        }
    }

    /// The validated limit, plus one: the extra row tells whether another page follows.
    pub(crate) fn fetch(&self) -> Result<u64> {
        Ok(validate::limit(self.limit)? + 1)
    }
}

impl<C> Default for PageRequest<C> {
    fn default() -> Self {
        PageRequest::first(DEFAULT_LIMIT)
    }
}

/// A page of rows and where the next page starts (`None` when this is the last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T, C> {
    /// The rows, in the list's order.
    pub items: Vec<T>,
    /// The cursor of the next page, if there is one.
    pub next: Option<C>,
}

impl<T, C> Page<T, C> {
    /// Builds a page from up to `limit + 1` fetched rows; `cursor` makes the next page's cursor
    /// from the last row kept.
    pub(crate) fn from_rows(mut rows: Vec<T>, limit: u64, cursor: impl Fn(&T) -> C) -> Self {
        let more = rows.len() as u64 > limit;
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next = if more { rows.last().map(cursor) } else { None };
        Page { items: rows, next }
    }
}

/// The page of `query` that `page` asks for, in `id` order: the keyset of every list ordered by
/// creation, since ids are UUIDv7. Fetches one row more than the page holds, so that
/// [`Page::from_rows`] can tell whether another page follows.
///
/// # Errors
/// [`Error::Validation`](crate::Error::Validation) for a limit outside 1..=500, before anything
/// is sent.
pub(crate) fn by_id<E: EntityTrait>(
    mut query: Select<E>,
    id: E::Column,
    page: &PageRequest<Uuid>,
) -> Result<Select<E>> {
    if let Some(after) = page.after {
        query = query.filter(id.gt(after));
    }
    Ok(query.order_by_asc(id).limit(page.fetch()?))
}

/// The position of a row in a list ordered by `(created_at, id)` (messages; audit events, newest
/// first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeCursor {
    /// The row's `created_at`.
    pub created_at: DateTime<FixedOffset>,
    /// The row's id, which breaks ties.
    pub id: Uuid,
}

impl TimeCursor {
    /// Refuses a cursor no stored row could have given (field `after`).
    pub(crate) fn check(&self) -> Result<()> {
        validate::instant("after", self.created_at)
    }
}
