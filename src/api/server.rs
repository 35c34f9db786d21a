//! The HTTP front: accepts client connections and serves the API router on each, with the
//! limits a daemon lent to strangers needs.
//!
//! - **At most `max_connections` connections.** Beyond it, new connections wait in the
//!   kernel's backlog until one closes; an open connection costs a file descriptor. The
//!   listen backlog ([`bind`]) holds as many (at least 1024, at most `net.core.somaxconn`).
//! - **At most `max_connections_per_peer` of them from one address** (nginx's `limit_conn`):
//!   a further connection from that address is answered 503 at once and closed, without
//!   taking a slot, so one peer cannot hold the door shut for the others.
//! - **`header_read_timeout`**: once the first byte of a request arrived, its headers must be
//!   complete within it, or the connection is closed (the slowloris attack sends headers a
//!   byte at a time, never finishing).
//! - **`idle_connection_timeout`**: a keep-alive connection with no request in progress is
//!   closed after it.
//!
//! Requests in flight are capped by the router (`api::router`), which answers 503 beyond.
//! This module owns connections only: it knows nothing of what the requests mean.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The limits of the front, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections open at once from one peer address (at most `max_connections`).
    pub max_connections_per_peer: usize,
    pub header_read_timeout: Duration,
    pub idle_connection_timeout: Duration,
}

/// The listen backlog for `max_connections`: room for as many connections waiting to be
/// accepted, at least 1024 (tokio's default), at most `net.core.somaxconn` (the kernel
/// would silently cut a larger one to it).
pub fn backlog(max_connections: usize) -> u32 {
    let wanted = u32::try_from(max_connections.max(1024)).unwrap_or(u32::MAX);
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|&n| n > 0);
    somaxconn.map_or(wanted, |max| wanted.min(max))
}

/// The listener for `serve`: bound to `addr` (IPv4 or IPv6, as given) with `SO_REUSEADDR`,
/// as `TcpListener::bind` does, and a [`backlog`] that matches `max_connections`.
pub fn bind(addr: SocketAddr, limits: Limits) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A restart can bind while the previous process's connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog(limits.max_connections))
}

/// The address a connection counts against: IPv4 clients of an IPv6 listener
/// (`::ffff:a.b.c.d`) count as `a.b.c.d`.
fn peer_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

type OpenPerPeer = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Connections open per peer address, each at most `cap`. An address is in the map only
/// while it has a connection open, so the map never holds more than the open connections.
struct PeerCounts {
    cap: usize,
    open: OpenPerPeer,
}

/// One open connection of a peer: counted while it lives.
struct PeerSlot {
    open: OpenPerPeer,
    peer: IpAddr,
}

impl PeerCounts {
    fn new(cap: usize) -> PeerCounts {
        PeerCounts {
            cap,
            open: Arc::default(),
        }
    }

    /// Counts a new connection from `ip`, or `None` when its address already has `cap` open.
    fn open(&self, ip: IpAddr) -> Option<PeerSlot> {
        let peer = peer_address(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(peer).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            open: Arc::clone(&self.open),
            peer,
        })
    }

    /// Connections open from `ip`'s address.
    #[cfg(test)]
    fn count(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&peer_address(ip)).copied().unwrap_or(0)
    }

    /// Addresses with a connection open.
    #[cfg(test)]
    fn peers(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// How often, at most, the refusals of one peer are logged.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Peers remembered for [`RefusalLog`]; beyond, the oldest are forgotten.
const WARNED_PEERS: usize = 4096;

/// Rate-limits the warning that a peer hit `max_connections_per_peer`: once per peer per
/// [`WARN_EVERY`], telling how many refusals were not logged since.
#[derive(Default)]
struct RefusalLog {
    /// Per peer: when it was last logged, and the refusals since.
    peers: HashMap<IpAddr, (Instant, u64)>,
}

impl RefusalLog {
    /// Records a refusal of `peer` at `now`; `Some(refusals not logged before it)` when this
    /// one is to be logged.
    fn refused(&mut self, peer: IpAddr, now: Instant) -> Option<u64> {
        if let Some((last, silent)) = self.peers.get_mut(&peer) {
            if now.duration_since(*last) < WARN_EVERY {
                *silent += 1;
                return None;
            }
            let silent = std::mem::take(silent);
            *last = now;
            return Some(silent);
        }
        if self.peers.len() >= WARNED_PEERS {
            self.peers
                .retain(|_, (last, _)| now.duration_since(*last) < WARN_EVERY);
            if self.peers.len() >= WARNED_PEERS {
                self.peers.clear();
            }
        }
        self.peers.insert(peer, (now, 0));
        Some(0)
    }
}

/// Refused connections being answered at once; beyond, a refused connection is just closed.
const REFUSALS_AT_ONCE: usize = 64;
/// How long answering a refused connection may take (writing and the lingering close).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// The whole HTTP answer to a connection refused for `max_connections_per_peer`.
fn refusal_answer(max_connections_per_peer: usize) -> bytes::Bytes {
    let body = format!(
        "{{\"success\":false,\"msg\":\"too many connections from this address \
         (max_connections_per_peer {max_connections_per_peer})\"}}"
    );
    bytes::Bytes::from(format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    ))
}

/// Answers a refused connection with `answer` and closes it, within [`REFUSAL_TIMEOUT`].
async fn refuse(mut stream: TcpStream, answer: &[u8]) {
    let answered = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes: closing with unread bytes would send a
        // reset, which can destroy the answer before the client reads it.
        let mut buf = [0u8; 2048];
        let mut drained = 0;
        while drained < 64 * 1024 {
            match stream.read(&mut buf).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    if let Ok(Err(e)) = answered {
        tracing::trace!(error = %e, "answering a refused connection failed");
    }
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
/// `refused_per_peer` counts the connections refused for `max_connections_per_peer`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: CancellationToken,
    drain: Duration,
    refused_per_peer: Counter,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let peers = PeerCounts::new(limits.max_connections_per_peer);
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let refusal = refusal_answer(limits.max_connections_per_peer);
    let mut refusal_log = RefusalLog::default();
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
        let Some(peer_slot) = peers.open(peer.ip()) else {
            // Its address is at its cap: answer 503 and close, off the slots and the loop.
            drop(slot);
            refused_per_peer.inc();
            if let Some(silent) = refusal_log.refused(peer_address(peer.ip()), Instant::now()) {
                tracing::warn!(
                    peer = %peer_address(peer.ip()),
                    max_connections_per_peer = limits.max_connections_per_peer,
                    refused_unlogged = silent,
                    "a client address has max_connections_per_peer connections open: its \
                     further connections are refused (503) until some close"
                );
            }
            match Arc::clone(&refusals).try_acquire_owned() {
                Ok(permit) => {
                    let answer = refusal.clone();
                    tokio::spawn(async move {
                        refuse(stream, &answer).await;
                        drop(permit);
                    });
                }
                // Many being answered already: just close this one.
                Err(_) => drop(stream),
            }
            continue;
        };
        // Small request/answer exchanges: never hold a segment back (Nagle).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let app = app.clone();
        let stop = stop.clone();
        connections.spawn(async move {
            let _slot = slot;
            let _peer_slot = peer_slot;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn a_peer_is_capped_its_count_drops_with_its_connections_and_the_map_empties() {
        let peers = PeerCounts::new(2);
        let first = peers.open(A).expect("under the cap");
        let second = peers.open(A).expect("under the cap");
        assert!(
            peers.open(A).is_none(),
            "a third connection beyond the cap of 2"
        );
        assert_eq!(peers.count(A), 2);
        // Another address has its own count.
        let other = peers.open(B).expect("another address");
        assert_eq!((peers.count(B), peers.peers()), (1, 2));
        drop(first);
        assert_eq!(peers.count(A), 1);
        let again = peers.open(A).expect("a slot freed by a closed connection");
        assert!(peers.open(A).is_none());
        drop((second, again, other));
        assert_eq!((peers.count(A), peers.count(B), peers.peers()), (0, 0, 0));
    }

    #[test]
    fn ipv4_clients_of_an_ipv6_listener_count_as_their_ipv4_address() {
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(peer_address(mapped), A);
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert_eq!(peer_address(v6), v6);
        assert_eq!(
            peer_address(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            Ipv6Addr::LOCALHOST
        );
        let peers = PeerCounts::new(1);
        let _held = peers.open(A).unwrap();
        assert!(
            peers.open(mapped).is_none(),
            "the mapped form escaped the cap"
        );
    }

    #[test]
    fn refusals_are_logged_once_per_peer_per_ten_seconds() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(log.refused(A, t0), Some(0));
        assert_eq!(log.refused(A, t0 + Duration::from_secs(1)), None);
        assert_eq!(log.refused(A, t0 + Duration::from_secs(9)), None);
        assert_eq!(log.refused(B, t0 + Duration::from_secs(9)), Some(0));
        assert_eq!(log.refused(A, t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(log.refused(A, t0 + Duration::from_secs(11)), None);
        // Bounded: past WARNED_PEERS addresses, those not logged recently are forgotten.
        let later = t0 + Duration::from_secs(60);
        for i in 0..WARNED_PEERS as u32 + 10 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(log.refused(ip, later), Some(0));
        }
        assert!(log.peers.len() <= WARNED_PEERS, "{}", log.peers.len());
    }

    #[test]
    fn the_backlog_holds_max_connections_within_what_the_kernel_allows() {
        let somaxconn: Option<u32> = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let cap = somaxconn.unwrap_or(u32::MAX);
        assert_eq!(backlog(1), 1024.min(cap));
        assert_eq!(backlog(2000), 2000.min(cap));
        assert_eq!(backlog(1_000_000), 1_000_000.min(cap));
    }

    #[test]
    fn the_refusal_is_a_complete_503_with_the_usual_json() {
        let answer = refusal_answer(16);
        let text = std::str::from_utf8(&answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "success": false,
                "msg": "too many connections from this address (max_connections_per_peer 16)"
            })
        );
    }

    /// Sends a keep-alive `GET /health` on `stream`; returns the whole answer (small).
    async fn get(stream: &mut TcpStream) -> String {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&answer).ends_with("ok") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&answer).to_string()
    }

    async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        socket.connect(to).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_beyond_its_cap_gets_503_without_taking_a_slot() {
        let limits = Limits {
            max_connections: 4,
            max_connections_per_peer: 2,
            header_read_timeout: Duration::from_secs(60),
            idle_connection_timeout: Duration::from_secs(60),
        };
        let listener = bind("127.0.0.1:0".parse().unwrap(), limits).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        let stop = CancellationToken::new();
        let refused = Counter::default();
        let server = tokio::spawn(serve(
            listener,
            app,
            limits,
            stop.clone(),
            Duration::from_secs(1),
            refused.clone(),
        ));
        let local = Ipv4Addr::LOCALHOST;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = connect_from(local, addr).await;
            assert!(get(&mut stream).await.starts_with("HTTP/1.1 200"));
            held.push(stream);
        }
        // Many more from the same address: each answered 503 and closed, none holding a slot.
        for _ in 0..10 {
            let mut stream = connect_from(local, addr).await;
            let mut answer = String::new();
            tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut answer))
                .await
                .expect("answered and closed at once")
                .unwrap();
            assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
            assert!(answer.contains("max_connections_per_peer 2"), "{answer}");
        }
        assert_eq!(refused.get(), 10);
        // The two other slots are still free for other addresses.
        let other = Ipv4Addr::new(127, 0, 0, 2);
        for _ in 0..2 {
            let mut stream = connect_from(other, addr).await;
            assert!(get(&mut stream).await.starts_with("HTTP/1.1 200"));
            held.push(stream);
        }
        // A closed connection gives its address a connection back.
        held.remove(0);
        let served = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let mut stream = connect_from(local, addr).await;
                let mut buf = [0u8; 12];
                stream
                    .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                if stream.read_exact(&mut buf).await.is_ok() && buf.starts_with(b"HTTP/1.1 200") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(served.is_ok(), "the closed connection was not uncounted");
        stop.cancel();
        drop(held);
        server.await.unwrap();
    }
}
