//! The payload of a projection's notification (channel
//! [`crate::NOTIFY_CHANNEL`], sent in every live batch's transaction): the
//! projection's name, then the ids of the streams the batch moved, one a
//! line, when they all fit (PostgreSQL takes at most 8000 bytes); otherwise
//! the name alone, which means "any stream". The Query API wakes only the
//! `min_version` waits of the streams named.

/// Most bytes of a payload (PostgreSQL's limit is 8000).
const MAX_PAYLOAD: usize = 7_900;

/// The payload for a batch of `projection` that moved `streams`.
pub fn payload<'a>(projection: &str, streams: impl IntoIterator<Item = &'a str>) -> String {
    let mut payload = projection.to_owned();
    for stream in streams {
        if payload.len() + 1 + stream.len() > MAX_PAYLOAD {
            return projection.to_owned();
        }
        payload.push('\n');
        payload.push_str(stream);
    }
    payload
}

/// The projection and the streams a payload names (none: any stream).
pub fn parse(payload: &str) -> (&str, Vec<&str>) {
    let mut lines = payload.split('\n');
    let projection = lines.next().unwrap_or_default();
    (projection, lines.filter(|s| !s.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_streams_when_they_fit_else_only_the_projection() {
        let payload = payload("accounts", ["account-1", "account-2"]);
        assert_eq!(payload, "accounts\naccount-1\naccount-2");
        assert_eq!(
            parse(&payload),
            ("accounts", vec!["account-1", "account-2"])
        );
        assert_eq!(parse("accounts"), ("accounts", vec![]));
        let many: Vec<String> = (0..1_000).map(|i| format!("account-{i:040}")).collect();
        let too_long = super::payload("accounts", many.iter().map(String::as_str));
        assert_eq!(too_long, "accounts");
    }
}
