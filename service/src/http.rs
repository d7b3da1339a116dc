//! Serving an axum router on a socket with the limits every Purser listener
//! needs, which `axum::serve` does not set:
//!
//! - a header-read timeout: a client that sends its request head slowly (or
//!   holds a keep-alive connection open without sending the next request)
//!   is cut off after [`HttpConfig::header_timeout`];
//! - an idle timeout: a connection on which nothing is read or written for
//!   [`HttpConfig::idle_timeout`] is closed once no request is in flight;
//! - graceful shutdown: on cancellation the listener closes, connections
//!   finish their in-flight requests and close; whatever is still open after
//!   the drain period is dropped.
//!
//! HTTP/1.1 only, as before (no HTTP/2 to clients: the gateway speaks
//! HTTP/1.1 to the services).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

/// The default header-read timeout: 10 s.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// The default idle timeout: 60 s.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;

/// The listener's limits, shared by both HTTP APIs.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct HttpConfig {
    /// Longest time a client may take to send a request's head (request
    /// line and headers), in milliseconds; also how long a keep-alive
    /// connection may wait for its next request. The connection is closed
    /// after it.
    #[arg(
        long = "http-header-timeout-ms",
        env = "PURSER_HTTP_HEADER_TIMEOUT_MS",
        default_value_t = DEFAULT_HEADER_TIMEOUT_MS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub header_timeout_ms: u64,
    /// A connection on which nothing is read or written for this long, in
    /// milliseconds, is closed (after its request in flight, if any).
    #[arg(
        long = "http-idle-timeout-ms",
        env = "PURSER_HTTP_IDLE_TIMEOUT_MS",
        default_value_t = DEFAULT_IDLE_TIMEOUT_MS,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub idle_timeout_ms: u64,
    /// Requests a service handles at once (health checks aside); beyond it,
    /// 503 `overloaded` with `Retry-After`. Default: four per connection of
    /// the service's database pool.
    #[arg(
        long = "max-concurrent-requests",
        env = "PURSER_MAX_CONCURRENT_REQUESTS"
    )]
    pub max_concurrent_requests: Option<usize>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout_ms: DEFAULT_HEADER_TIMEOUT_MS,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            max_concurrent_requests: None,
        }
    }
}

impl HttpConfig {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The concurrency cap: the configured one, else four requests per
    /// connection of a pool of `pool_size`.
    pub fn max_concurrent_requests_for(&self, pool_size: u32) -> usize {
        self.max_concurrent_requests
            .unwrap_or(4 * pool_size.max(1) as usize)
            .max(1)
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops
/// accepting, lets every connection finish its request in flight and close,
/// and returns once they have, or after `drain` (dropping the stragglers).
/// Each request carries [`ConnectInfo<SocketAddr>`] with the peer's address.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &HttpConfig,
    shutdown: CancellationToken,
    drain: Duration,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout())
        .keep_alive(true);
    let idle = config.idle_timeout();
    let connections = TaskTracker::new();
    let force = CancellationToken::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait a little
                    // rather than spin, and keep serving.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = serve_connection(
            builder.clone(),
            stream,
            peer,
            router.clone(),
            idle,
            shutdown.clone(),
            force.clone(),
        );
        connections.spawn(connection);
    }
    drop(listener);
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "connections still open after the drain period; stopping anyway"
        );
        force.cancel();
    }
    Ok(())
}

/// One connection: served until it closes, asked to close gracefully when
/// idle for `idle` or on `shutdown`, dropped on `force`.
async fn serve_connection(
    builder: hyper::server::conn::http1::Builder,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    idle: Duration,
    shutdown: CancellationToken,
    force: CancellationToken,
) {
    let started = Instant::now();
    let last_active = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Tracked {
        inner: stream,
        started,
        last_active: Arc::clone(&last_active),
    });
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut router = router.clone();
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        async move { router.call(request).await }
    });
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        let idle_until =
            started + Duration::from_millis(last_active.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(idle_until), if !closing => {
                let last = started + Duration::from_millis(last_active.load(Ordering::Relaxed));
                if Instant::now() >= last + idle {
                    tracing::debug!(%peer, ?idle, "closing an idle connection");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            () = shutdown.cancelled(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = force.cancelled() => return,
        }
    }
}

/// A stream that records when it last read or wrote (milliseconds since the
/// connection started), for the idle timeout.
struct Tracked {
    inner: TcpStream,
    started: Instant,
    last_active: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        let millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active.store(millis, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
