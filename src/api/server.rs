//! The HTTP front: accepts client connections and serves the API router on each, with the
//! limits a daemon lent to strangers needs.
//!
//! - **At most `max_connections` connections.** Beyond it, new connections wait in the
//!   kernel's backlog until one closes; an open connection costs a file descriptor.
//! - **`header_read_timeout`**: once the first byte of a request arrived, its headers must be
//!   complete within it, or the connection is closed (the slowloris attack sends headers a
//!   byte at a time, never finishing).
//! - **`idle_connection_timeout`**: a keep-alive connection with no request in progress is
//!   closed after it.
//!
//! Requests in flight are capped by the router (`api::router`), which answers 503 beyond.
//! This module owns connections only: it knows nothing of what the requests mean.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The limits of the front, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_connection_timeout: Duration,
}

/// What a connection is doing, for its watchdog.
const IDLE: u8 = 0;
/// Bytes of a request arrived; its headers are not complete yet.
const READING_HEAD: u8 = 1;
/// A request is being served.
const SERVING: u8 = 2;

/// One connection's state, shared by its I/O, its service and its watchdog.
struct Phase {
    phase: AtomicU8,
    /// Milliseconds since `epoch` when the phase last changed.
    since_ms: AtomicU64,
    epoch: Instant,
    /// Requests of this connection being served (HTTP/1 serves one at a time).
    serving: AtomicUsize,
    changed: Notify,
}

impl Phase {
    fn new() -> Phase {
        Phase {
            phase: AtomicU8::new(IDLE),
            since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            serving: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    fn set(&self, phase: u8) {
        self.since_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
        self.phase.store(phase, Ordering::Release);
        self.changed.notify_one();
    }

    /// Bytes arrived: an idle connection starts reading a request head.
    fn bytes_read(&self) {
        if self
            .phase
            .compare_exchange(IDLE, READING_HEAD, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.set(READING_HEAD);
        }
    }

    fn since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.since_ms.load(Ordering::Acquire))
    }
}

/// The client's stream, telling its [`Phase`] when bytes arrive.
struct Watched {
    stream: TcpStream,
    phase: Arc<Phase>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.phase.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Marks a request of a connection served while it lives.
struct Serving(Arc<Phase>);

impl Serving {
    fn begin(phase: &Arc<Phase>) -> Serving {
        phase.serving.fetch_add(1, Ordering::AcqRel);
        phase.set(SERVING);
        Serving(Arc::clone(phase))
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if self.0.serving.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.set(IDLE);
        }
    }
}

/// Why the watchdog ended a connection.
enum Expired {
    HeaderTimeout,
    Idle,
}

/// Waits until the connection overstays a limit of its current phase.
async fn watchdog(phase: &Phase, limits: Limits) -> Expired {
    loop {
        let changed = phase.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let (limit, expired) = match phase.phase.load(Ordering::Acquire) {
            IDLE => (limits.idle_connection_timeout, Expired::Idle),
            READING_HEAD => (limits.header_read_timeout, Expired::HeaderTimeout),
            _ => {
                changed.await;
                continue;
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(phase.since() + limit) => {
                // The phase may have changed just now: look again before ending it.
                let still = matches!(
                    (&expired, phase.phase.load(Ordering::Acquire)),
                    (Expired::Idle, IDLE) | (Expired::HeaderTimeout, READING_HEAD)
                );
                if still && Instant::now() >= phase.since() + limit {
                    return expired;
                }
            }
            () = &mut changed => {}
        }
    }
}

/// Serves `app` on `listener` until `stop` is cancelled; then stops accepting, lets every
/// connection finish its request in progress (at most `drain`), and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
    drain: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        // A free slot first: beyond the cap, clients wait in the backlog.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("never closed"),
            () = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        // Small request/answer exchanges: never hold a segment back (Nagle).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let app = app.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            serve_connection(stream, app, limits, stop).await;
            tracing::trace!(%peer, "connection closed");
        });
    }
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not close within {drain:?}");
    }
}

async fn serve_connection(stream: TcpStream, app: Router, limits: Limits, stop: CancellationToken) {
    let phase = Arc::new(Phase::new());
    let io = TokioIo::new(Watched {
        stream,
        phase: Arc::clone(&phase),
    });
    let service_phase = Arc::clone(&phase);
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let serving = Serving::begin(&service_phase);
            let mut app = app.clone();
            async move {
                let response = tower_service::Service::call(&mut app, request).await;
                drop(serving);
                response
            }
        });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
                return;
            }
            expired = watchdog(&phase, limits), if !stopping => match expired {
                Expired::Idle => {
                    tracing::debug!("closing an idle client connection");
                    connection.as_mut().graceful_shutdown();
                    stopping = true;
                }
                Expired::HeaderTimeout => {
                    tracing::debug!("client did not finish its request headers in time; closing");
                    return;
                }
            },
            () = stop.cancelled(), if !stopping => {
                connection.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    }
}
