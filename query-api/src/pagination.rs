//! Keyset pagination: `limit` 1..=500 (default 50) and an opaque `after`
//! cursor, the hex encoding of the last key of the previous page.

use crate::error::ApiError;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

/// The page size asked for, checked.
pub fn limit(requested: Option<i64>) -> Result<i64, ApiError> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::InvalidQuery(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {n}"
        ))),
    }
}

/// The cursor that resumes after `key`.
pub fn encode_cursor(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The key a cursor of [`encode_cursor`] holds, parsed by `parse`.
pub fn decode_cursor<T>(
    cursor: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, ApiError> {
    let invalid = || ApiError::InvalidCursor(format!("{cursor:?} is not a cursor of this list"));
    // Lowercase hex only, as [`encode_cursor`] writes it (and each list's
    // pattern in the document says).
    let lowercase_hex = cursor
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if cursor.is_empty() || cursor.len() % 2 != 0 || cursor.len() > 512 || !lowercase_hex {
        return Err(invalid());
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| {
            cursor
                .get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(invalid)?;
    let key = String::from_utf8(bytes).map_err(|_| invalid())?;
    parse(&key).ok_or_else(invalid)
}

/// Splits `limit + 1` fetched rows into a page and its `next` cursor.
pub fn page<T>(
    mut rows: Vec<T>,
    limit: i64,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(|last| encode_cursor(&key(last)));
        (rows, next)
    } else {
        (rows, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        for key in ["0", "LAPTOP-15", "0191d0c2-7a3e-7cc1-9a41-3f1f0d5b2a10"] {
            let cursor = encode_cursor(key);
            assert_eq!(decode_cursor(&cursor, |k| Some(k.to_owned())).unwrap(), key);
        }
    }

    #[test]
    fn bad_cursors_are_refused() {
        let upper = encode_cursor("LAPTOP-15").to_ascii_uppercase();
        for cursor in ["", "abc", "zz", "ff", &"00".repeat(300), &upper] {
            let decoded = decode_cursor(cursor, |k| Some(k.to_owned()));
            assert!(
                matches!(decoded, Err(ApiError::InvalidCursor(_))),
                "{cursor:?}"
            );
        }
        let not_a_number = encode_cursor("x");
        assert!(decode_cursor(&not_a_number, |k| k.parse::<i64>().ok()).is_err());
    }

    #[test]
    fn limit_bounds() {
        assert_eq!(limit(None).unwrap(), 50);
        assert_eq!(limit(Some(1)).unwrap(), 1);
        assert_eq!(limit(Some(500)).unwrap(), 500);
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(501)).is_err());
        assert!(limit(Some(-3)).is_err());
    }

    #[test]
    fn page_sets_next_only_when_more_rows_exist() {
        let (items, next) = page(vec![1, 2, 3], 2, |n| n.to_string());
        assert_eq!(items, vec![1, 2]);
        assert_eq!(next, Some(encode_cursor("2")));
        let (items, next) = page(vec![1, 2], 2, |n| n.to_string());
        assert_eq!(items, vec![1, 2]);
        assert_eq!(next, None);
    }
}
