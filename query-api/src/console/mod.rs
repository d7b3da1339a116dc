//! The operator console: `GET /console`, one HTML page with a small script
//! and a style sheet, all compiled into the binary (`include_str!`: no CDN,
//! no front-end build; it works offline), and `GET /console/events`, the
//! live feed it follows.
//!
//! The page and its assets are open: they hold no data. The page asks for an
//! operator token (or takes one from the URL's fragment, which no server
//! sees), keeps it in the tab's session storage, and reads everything it
//! shows from the operator-only endpoints of both APIs through the same
//! origin (the gateway sends its `GET`s here and its `POST`s to the Command
//! API).
//!
//! `/console/events` is a stream of server-sent events, operators only: the
//! projections that moved, as the process's one LISTEN connection hears
//! them ([`crate::Progress::changes`]), a few per second at most. A console
//! re-reads what it shows of those projections; no browser makes the
//! server poll the database.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio_util::sync::CancellationToken;

use crate::progress::Change;
use crate::state::AppState;

const PAGE: &str = include_str!("console.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// What the page may load and connect to: itself only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; \
     frame-ancestors 'none'; base-uri 'none'";

/// Changes that arrive this close together go out as one event.
const COALESCE: Duration = Duration::from_millis(150);

/// A comment line this often keeps proxies from closing an idle stream (the
/// gateway's read timeout is 30 s).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The console's page.
#[utoipa::path(
    get, path = "/console", tag = "console",
    responses((status = 200, description = "The operator console: an HTML page (its script and style sheet are `/console/console.js` and `/console/console.css`). Open: it holds no data, and asks for an operator token", body = String, content_type = "text/html; charset=utf-8"))
)]
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// The console's script.
#[utoipa::path(
    get, path = "/console/console.js", tag = "console",
    responses((status = 200, description = "The console's script", body = String, content_type = "text/javascript; charset=utf-8"))
)]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// The console's style sheet.
#[utoipa::path(
    get, path = "/console/console.css", tag = "console",
    responses((status = 200, description = "The console's style sheet", body = String, content_type = "text/css; charset=utf-8"))
)]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

/// The projections that move, as server-sent events, until the client
/// leaves or the server stops: first `ready`, then `change` events whose
/// data is `{"projections": ["accounts", ...]}` (every projection after
/// notifications may have been missed), and a comment every 15 s. A
/// console re-reads what it shows of those projections.
#[utoipa::path(
    get, path = "/console/events", tag = "console",
    responses((status = 200, description = "An endless stream of server-sent events (`ready`, then `change` with the projections that moved)", body = String, content_type = "text/event-stream")),
    extensions(("x-purser-roles" = json!(["operator"])))
)]
pub async fn events(State(state): State<AppState>) -> Response {
    let changes = state.progress.changes();
    let stream = feed(changes, state.closing.clone());
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // nginx passes each event on at once rather than buffering the stream.
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}

/// `ready`, then one `change` per burst of changes, until `closing`.
fn feed(
    changes: Receiver<Change>,
    closing: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let ready = stream::once(async { Ok(Event::default().event("ready").data("{}")) });
    let rest = stream::unfold((changes, closing), |(mut changes, closing)| async move {
        let names = tokio::select! {
            () = closing.cancelled() => return None,
            names = burst(&mut changes) => names?,
        };
        let data = serde_json::json!({ "projections": names }).to_string();
        Some((
            Ok(Event::default().event("change").data(data)),
            (changes, closing),
        ))
    });
    ready.chain(rest)
}

/// The projections of the next burst of changes (every one when some were
/// missed); `None` once the channel is closed.
async fn burst(changes: &mut Receiver<Change>) -> Option<Vec<&'static str>> {
    let mut moved = BTreeSet::new();
    let mut all = false;
    let mut take = |received: Result<Change, RecvError>| match received {
        Ok(Change::Projection(name)) => {
            moved.insert(name);
            true
        }
        Ok(Change::Any) | Err(RecvError::Lagged(_)) => {
            all = true;
            true
        }
        Err(RecvError::Closed) => false,
    };
    if !take(changes.recv().await) {
        return None;
    }
    let until = tokio::time::Instant::now() + COALESCE;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until) => break,
            received = changes.recv() => {
                if !take(received) {
                    break;
                }
            }
        }
    }
    Some(if all {
        projections::names()
    } else {
        moved.into_iter().collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_changes_is_one_event_and_the_feed_ends_when_closing() {
        let (sender, receiver) = tokio::sync::broadcast::channel(16);
        let closing = CancellationToken::new();
        let mut feed = Box::pin(feed(receiver, closing.clone()));
        assert!(feed.next().await.is_some(), "ready");
        sender.send(Change::Projection("sagas")).unwrap();
        sender.send(Change::Projection("accounts")).unwrap();
        sender.send(Change::Projection("sagas")).unwrap();
        let event = feed.next().await.expect("an event").unwrap();
        let text = format!("{event:?}");
        assert!(
            text.contains("accounts") && text.contains("sagas"),
            "{text}"
        );
        closing.cancel();
        assert!(feed.next().await.is_none());
    }

    #[tokio::test]
    async fn missed_changes_name_every_projection() {
        let (sender, mut receiver) = tokio::sync::broadcast::channel(16);
        sender.send(Change::Any).unwrap();
        assert_eq!(burst(&mut receiver).await, Some(projections::names()));
        drop(sender);
        assert_eq!(burst(&mut receiver).await, None);
    }

    #[test]
    fn the_page_loads_its_own_assets_only() {
        assert!(PAGE.contains("/console/console.js"));
        assert!(PAGE.contains("/console/console.css"));
        for text in [PAGE, SCRIPT, STYLE] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
    }
}
