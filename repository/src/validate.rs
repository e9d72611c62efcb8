//! Checks applied to every argument before anything is written, and the limits they enforce.
//!
//! Text is refused when it is empty or blank (where a value is required), longer than its limit (in
//! characters), or holds a NUL byte (PostgreSQL cannot store one in `text`).
//!
//! Control and invisible characters:
//! - Single-line text (names, titles, slugs, emails, ids, labels, trace ids) refuses every control
//!   character (Unicode `Cc`: C0, DEL and C1, so tabs and line breaks too). A name holding an
//!   escape sequence or a bell would reach terminals, logs and CSV exports as one.
//! - Multi-line text (task and group descriptions, reasons, message contents) allows tab, line
//!   feed and carriage return and refuses every other control character.
//! - Zero-width and other invisible format characters (U+200B to U+200D, U+2060, U+FEFF, U+200E
//!   and U+200F, the bidirectional embeddings and isolates) are stored as given: joiners are part of
//!   emoji sequences and of the spelling of Persian and Indic scripts, and direction marks of
//!   right-to-left text. But they are not content: a text made only of them and whitespace counts
//!   as blank and is refused where a value is required.
//! - JSON documents are the caller's data and keep every character but NUL.
//!
//! JSON is refused when its arrays and objects nest deeper than [`JSON_DEPTH_MAX`], it serialises
//! to more than [`JSON_BYTES_MAX`] bytes, or it holds a NUL character in a key or string
//! (PostgreSQL's `jsonb` cannot store `\u0000`).

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use serde_json::Value;

use crate::error::{Error, Result};

/// Names: tenants, users, groups, actors.
pub const NAME_MAX: usize = 200;
/// Slugs of tenants and groups: lower-case letters, digits and single hyphens.
pub const SLUG_MAX: usize = 63;
/// Emails (RFC 5321's limit on a path).
pub const EMAIL_MAX: usize = 254;
/// Task titles.
pub const TITLE_MAX: usize = 500;
/// Task and group descriptions.
pub const DESCRIPTION_MAX: usize = 10_000;
/// External ids: workflow and run ids, actor and resource ids, conversation external ids.
pub const ID_MAX: usize = 255;
/// Short labels: channels, message roles, history actions, event and resource types.
pub const LABEL_MAX: usize = 100;
/// Trace and span ids.
pub const TRACE_MAX: usize = 128;
/// Message contents.
pub const CONTENT_MAX: usize = 100_000;
/// How deeply the arrays and objects of a JSON document may nest (the document itself is level 1;
/// numbers, strings, booleans and nulls add no level).
pub const JSON_DEPTH_MAX: usize = 32;
/// How large a JSON document may be, serialised.
pub const JSON_BYTES_MAX: usize = 256 * 1024;
/// The largest page a list method returns.
pub const PAGE_MAX: u64 = 500;
/// The earliest instant a caller may pass (a deadline, a sweeper's `now`, a cursor, a time
/// filter): 0001-01-01T00:00:00Z.
///
/// Instants must fall in years 1 to 9999: RFC 3339 writes those with four digits, so SQLite, which
/// stores and compares times as text, orders them correctly, and PostgreSQL's `timestamptz` holds
/// them all (it refuses chrono's earliest).
pub const INSTANT_MIN: DateTime<Utc> = DateTime::from_naive_utc_and_offset(
    NaiveDate::from_ymd_opt(1, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap(),
    Utc,
);
/// The latest instant a caller may pass: 9999-12-31T23:59:59Z (a whole second, so that a range
/// bound rounded up to the microsecond stays in year 9999). See [`INSTANT_MIN`].
pub const INSTANT_MAX: DateTime<Utc> = DateTime::from_naive_utc_and_offset(
    NaiveDate::from_ymd_opt(9999, 12, 31)
        .unwrap()
        .and_hms_opt(23, 59, 59)
        .unwrap(),
    Utc,
);

/// A required single-line text: trimmed, not blank, at most `max` characters, no NUL byte or other
/// control character.
pub(crate) fn text(field: &'static str, value: &str, max: usize) -> Result<String> {
    trimmed(field, value, max, Lines::One)
}

/// A required multi-line text (descriptions, reasons): as [`text`], but tabs and line breaks are
/// kept.
pub(crate) fn prose(field: &'static str, value: &str, max: usize) -> Result<String> {
    trimmed(field, value, max, Lines::Many)
}

/// An optional multi-line text: `None` stays `None`; a value is checked as [`prose`].
pub(crate) fn optional_prose(
    field: &'static str,
    value: Option<&str>,
    max: usize,
) -> Result<Option<String>> {
    value.map(|value| prose(field, value, max)).transpose()
}

/// Which control characters a text may hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lines {
    /// None.
    One,
    /// Tab, line feed and carriage return.
    Many,
}

fn trimmed(field: &'static str, value: &str, max: usize, lines: Lines) -> Result<String> {
    let value = value.trim();
    if is_blank(value) {
        return Err(Error::validation(field, "must not be empty"));
    }
    bounded(field, value, max, lines)
}

/// Whether `value` holds nothing but whitespace and invisible format characters.
fn is_blank(value: &str) -> bool {
    value.chars().all(|c| c.is_whitespace() || is_invisible(c))
}

/// Format characters that draw nothing: zero-width space, non-joiner and joiner, word joiner, the
/// byte order mark, direction marks, and bidirectional embeddings, overrides and isolates.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
    )
}

/// An optional text: `None` stays `None`; a value is checked as [`text`].
pub(crate) fn optional_text(
    field: &'static str,
    value: Option<&str>,
    max: usize,
) -> Result<Option<String>> {
    value.map(|value| text(field, value, max)).transpose()
}

/// Multi-line text stored exactly as given (message contents): not blank, at most `max` characters,
/// no NUL byte or control character other than tab, line feed and carriage return.
pub(crate) fn verbatim(field: &'static str, value: &str, max: usize) -> Result<String> {
    if is_blank(value) {
        return Err(Error::validation(field, "must not be empty"));
    }
    bounded(field, value, max, Lines::Many)
}

fn bounded(field: &'static str, value: &str, max: usize, lines: Lines) -> Result<String> {
    if value.contains('\0') {
        return Err(Error::validation(field, "must not contain a NUL byte"));
    }
    let allowed = |c: char| lines == Lines::Many && matches!(c, '\t' | '\n' | '\r');
    if let Some(c) = value.chars().find(|&c| c.is_control() && !allowed(c)) {
        let what = match lines {
            Lines::One => "must be one line without control characters",
            Lines::Many => "must not contain control characters other than tab and line breaks",
        };
        return Err(Error::validation(
            field,
            format!("{what} (found U+{:04X})", u32::from(c)),
        ));
    }
    let length = value.chars().count();
    if length > max {
        return Err(Error::validation(
            field,
            format!("is {length} characters long; the limit is {max}"),
        ));
    }
    Ok(value.to_owned())
}

/// A slug: 1 to 63 of `a-z`, `0-9` and `-`, not starting or ending with `-`, no `--`.
pub(crate) fn slug(field: &'static str, value: &str) -> Result<String> {
    let value = text(field, value, SLUG_MAX)?;
    let well_formed = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
        && !value.contains("--");
    if !well_formed {
        return Err(Error::validation(
            field,
            "must be lower-case letters, digits and single hyphens, not starting or ending with one",
        ));
    }
    Ok(value)
}

/// An email address, trimmed and lower-cased: one `@` with text on both sides, a dot in the domain,
/// no whitespace or control characters, at most [`EMAIL_MAX`] characters once lower-cased (as
/// stored: lower-casing lengthens some characters, `İ` to `i̇`).
pub(crate) fn email(value: &str) -> Result<String> {
    let value = text("email", value, EMAIL_MAX)?.to_lowercase();
    let value = bounded("email", &value, EMAIL_MAX, Lines::One)?;
    let shaped = match value.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        }
        None => false,
    };
    if !shaped || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::validation(
            "email",
            "must look like name@example.com",
        ));
    }
    Ok(value)
}

/// Any JSON value within the depth, size and NUL limits.
pub(crate) fn json(field: &'static str, value: &Value) -> Result<()> {
    check_json(field, value, 1)?;
    let size = serde_json::to_vec(value)
        .map_err(|e| Error::validation(field, format!("cannot be serialised: {e}")))?
        .len();
    if size > JSON_BYTES_MAX {
        return Err(Error::validation(
            field,
            format!("is {size} bytes; the limit is {JSON_BYTES_MAX}"),
        ));
    }
    Ok(())
}

/// A JSON object (form schemas, form data, configs, preferences) within the JSON limits.
pub(crate) fn json_object(field: &'static str, value: &Value) -> Result<()> {
    if !value.is_object() {
        return Err(Error::validation(field, "must be a JSON object"));
    }
    json(field, value)
}

/// Checks `value`, whose enclosing arrays and objects (itself included, if it is one) number
/// `depth`: only arrays and objects count as levels, so 32 nested objects holding a number are 32
/// levels deep, as are 32 nested empty ones.
fn check_json(field: &'static str, value: &Value, depth: usize) -> Result<()> {
    if depth > JSON_DEPTH_MAX && (value.is_array() || value.is_object()) {
        return Err(Error::validation(
            field,
            format!("nests deeper than {JSON_DEPTH_MAX} levels"),
        ));
    }
    let nul = || Error::validation(field, "must not contain a NUL character (\\u0000)");
    match value {
        Value::String(s) if s.contains('\0') => Err(nul()),
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| check_json(field, item, depth + 1)),
        Value::Object(map) => map.iter().try_for_each(|(key, item)| {
            if key.contains('\0') {
                return Err(nul());
            }
            check_json(field, item, depth + 1)
        }),
        _ => Ok(()),
    }
}

/// An instant from a caller: [`INSTANT_MIN`] to [`INSTANT_MAX`], whatever its offset.
pub(crate) fn instant(field: &'static str, value: DateTime<FixedOffset>) -> Result<()> {
    if value < INSTANT_MIN || value > INSTANT_MAX {
        return Err(Error::validation(
            field,
            format!("must be between {INSTANT_MIN:?} and {INSTANT_MAX:?}"),
        ));
    }
    Ok(())
}

/// A page size: 1 to [`PAGE_MAX`].
pub(crate) fn limit(limit: u64) -> Result<u64> {
    if limit == 0 || limit > PAGE_MAX {
        return Err(Error::validation(
            "limit",
            format!("must be between 1 and {PAGE_MAX}"),
        ));
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(text("name", "  Ada  ", 10).ok().as_deref(), Some("Ada"));
        assert!(text("name", "   ", 10).is_err());
        assert!(text("name", "a\0b", 10).is_err());
        assert!(text("name", &"é".repeat(10), 10).is_ok());
        assert!(text("name", &"é".repeat(11), 10).is_err());
    }

    #[test]
    fn single_line_text_refuses_every_control_character() {
        for bad in [
            "a\tb",
            "a\nb",
            "a\rb",
            "bell\u{7}",
            "esc\u{1b}[31m",
            "del\u{7f}",
            "csi\u{9b}",
        ] {
            let error = text("name", bad, 100).expect_err(bad);
            assert!(
                error.to_string().contains("control characters"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn multi_line_text_keeps_tabs_and_line_breaks_only() {
        let kept = "line one\nline two\r\n\ttabbed";
        assert_eq!(prose("description", kept, 100).ok().as_deref(), Some(kept));
        assert_eq!(verbatim("content", kept, 100).ok().as_deref(), Some(kept));
        for bad in [
            "bell\u{7}",
            "esc\u{1b}[31m",
            "del\u{7f}",
            "csi\u{9b}",
            "vt\u{b}x",
        ] {
            assert!(prose("description", bad, 100).is_err(), "{bad}");
            assert!(verbatim("content", bad, 100).is_err(), "{bad}");
        }
    }

    #[test]
    fn invisible_characters_are_kept_but_are_not_content() {
        let joined = "zero\u{200b}width\u{200d}joiner\u{feff}bom\u{2060} \u{202e}txet\u{202c}";
        assert_eq!(text("name", joined, 100).ok().as_deref(), Some(joined));
        for blank in [
            "\u{200b}\u{200c}\u{200d}",
            " \u{feff} ",
            "\u{2060}\u{200e}\u{200f}\u{2066}",
        ] {
            let error = text("name", blank, 100).expect_err(blank);
            assert!(error.to_string().contains("must not be empty"), "{error}");
            assert!(verbatim("content", blank, 100).is_err());
            assert!(prose("description", blank, 100).is_err());
        }
    }

    #[test]
    fn slugs_are_lower_kebab_case() {
        for good in ["acme", "acme-2", "a", "0-9"] {
            assert!(slug("slug", good).is_ok(), "{good}");
        }
        for bad in [
            "Acme", "-acme", "acme-", "ac--me", "ac me", "acmé", "a_b", "",
        ] {
            assert!(slug("slug", bad).is_err(), "{bad}");
        }
        assert!(slug("slug", &"a".repeat(64)).is_err());
    }

    #[test]
    fn emails_are_lower_cased_and_shaped() {
        assert_eq!(
            email("  Ada@Example.COM ").ok().as_deref(),
            Some("ada@example.com")
        );
        for bad in [
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "a b@example.com",
            "a@b@c.com",
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
        // The limit holds for the address as stored, lower-cased.
        let domain = "@example.com";
        let longest = format!(
            "\u{130}{}{domain}",
            "a".repeat(EMAIL_MAX - 2 - domain.len())
        );
        assert_eq!(
            email(&longest).map(|e| e.chars().count()).ok(),
            Some(EMAIL_MAX)
        );
        let grows = format!(
            "\u{130}{}{domain}",
            "a".repeat(EMAIL_MAX - 1 - domain.len())
        );
        assert_eq!(grows.chars().count(), EMAIL_MAX);
        assert!(
            email(&grows).is_err(),
            "{} characters once lower-cased",
            EMAIL_MAX + 1
        );
    }

    #[test]
    fn instants_stay_in_years_1_to_9999() {
        let utc = |t: DateTime<Utc>| t.fixed_offset();
        let micro = chrono::TimeDelta::microseconds(1);
        for good in [INSTANT_MIN, INSTANT_MAX, Utc::now()] {
            assert!(instant("at", utc(good)).is_ok(), "{good}");
        }
        for bad in [
            INSTANT_MIN - micro,
            INSTANT_MAX + micro,
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
        ] {
            assert!(instant("at", utc(bad)).is_err(), "{bad}");
        }
        // The offset does not matter, the instant does: year 1 at +14:00 is year 0 in UTC.
        let east = FixedOffset::east_opt(14 * 3600).expect("an offset");
        let local = NaiveDate::from_ymd_opt(1, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .and_then(|t| t.and_local_timezone(east).single())
            .expect("an instant");
        assert!(instant("at", local).is_err());
        assert_eq!(INSTANT_MIN.to_rfc3339(), "0001-01-01T00:00:00+00:00");
        assert_eq!(INSTANT_MAX.to_rfc3339(), "9999-12-31T23:59:59+00:00");
    }

    #[test]
    fn json_limits_hold() {
        assert!(json_object("form", &json!({"a": [1, 2]})).is_ok());
        assert!(json_object("form", &json!([1])).is_err());
        assert!(json_object("form", &json!({"a": "x\u{0}y"})).is_err());
        assert!(json_object("form", &json!({"a\u{0}": 1})).is_err());
        // Arrays and objects count as levels, whatever they hold.
        let mut deep = json!(1);
        let mut empty = json!([]);
        for _ in 1..JSON_DEPTH_MAX {
            deep = json!({ "k": deep });
            empty = json!([empty]);
        }
        assert!(json("deep", &deep).is_ok(), "31 objects holding a number");
        assert!(json("deep", &empty).is_ok(), "32 arrays");
        deep = json!([deep]);
        assert!(json("deep", &deep).is_ok(), "32 levels holding a number");
        assert!(json("deep", &json!([deep])).is_err(), "33 levels");
        assert!(json("deep", &json!([empty])).is_err(), "33 arrays");
        let big = json!({"a": "x".repeat(JSON_BYTES_MAX)});
        assert!(json("big", &big).is_err());
    }
}
