//! The HTTP front against the real binary under a flood from one address: the connections
//! per peer address are capped (`max_connections_per_peer`), so one address holding
//! connections open cannot lock the others out (the desktop app, the pymeca host) nor use
//! up `max_connections`.
//!
//! Traffic stays on 127.0.0.0/8: the flood comes from 127.0.0.2, the other clients from
//! 127.0.0.1 and 127.0.1.x (every 127/8 address is loopback on Linux).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use mecanywhere_executor::metrics_text::Scrape;

const FLOODER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Opens TCP connections from a chosen source address (std cannot bind before connecting;
/// tokio's `TcpSocket` can).
struct Dialer {
    runtime: tokio::runtime::Runtime,
}

impl Dialer {
    fn new() -> Dialer {
        Dialer {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// A blocking connection from `source` to the executor, connected within 2 s.
    fn connect(&self, source: Ipv4Addr, ex: &Executor) -> std::io::Result<TcpStream> {
        let to = SocketAddr::from((LOCAL, ex.port));
        self.runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((source, 0)))?;
            let stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(to))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect"))??;
            let stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            stream.set_read_timeout(Some(Duration::from_secs(2)))?;
            stream.set_write_timeout(Some(Duration::from_secs(2)))?;
            Ok(stream)
        })
    }
}

/// Sends `GET path` on `stream` (keep-alive unless `close`) and reads one answer within the
/// stream's timeouts; returns it whole (head and body), or the error.
fn get(stream: &mut TcpStream, path: &str, close: bool) -> Result<String, String> {
    let connection = if close { "close" } else { "keep-alive" };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: {connection}\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("read: {e}; so far {:?}", String::from_utf8_lossy(&answer)))?;
        if n == 0 {
            return Err(format!(
                "closed before a whole answer: {:?}",
                String::from_utf8_lossy(&answer)
            ));
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return Ok(text);
            }
        }
    }
}

/// `GET /health` from `source` on a new connection; returns how long connecting and the
/// answer took, panicking unless it is a 200.
fn timed_health(dialer: &Dialer, source: Ipv4Addr, ex: &Executor) -> Duration {
    let started = Instant::now();
    let mut stream = dialer
        .connect(source, ex)
        .unwrap_or_else(|e| panic!("connect from {source}: {e}"));
    let answer = get(&mut stream, "/health", true)
        .unwrap_or_else(|e| panic!("GET /health from {source}: {e}; log:\n{}", ex.log()));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    started.elapsed()
}

/// `meca_connections_refused_total{reason="per_peer"}` now.
fn refused_per_peer(ex: &Executor) -> u64 {
    Scrape::parse(&ex.get("/metrics").raw)
        .get("meca_connections_refused_total{reason=\"per_peer\"}")
        .unwrap_or_else(|| panic!("no per_peer refusal counter in /metrics")) as u64
}

#[test]
fn one_address_flooding_the_port_locks_out_neither_others_nor_the_slots() {
    let ex = Executor::start(
        "per-peer",
        "max_connections: 64\nmax_connections_per_peer: 16\n\
         header_read_timeout: \"60s\"\nidle_connection_timeout: \"60s\"",
    );
    let dialer = Dialer::new();
    assert_eq!(refused_per_peer(&ex), 0);

    // 200 connections from one address, each starting a request line and never finishing
    // it. The kernel completes every handshake; the executor serves 16, refuses the rest.
    let flood_started = Instant::now();
    let mut flood = Vec::new();
    for i in 0..200 {
        let mut stream = dialer
            .connect(FLOODER, &ex)
            .unwrap_or_else(|e| panic!("flood connection {i}: {e}"));
        // A refused one may be closed already: its write may fail.
        let _ = stream.write_all(b"GET /health HT");
        flood.push(stream);
    }
    eprintln!(
        "200 flood connections opened in {:?}",
        flood_started.elapsed()
    );

    // Right away, and after the executor refused the excess, loopback is served at once.
    let mut times = vec![timed_health(&dialer, LOCAL, &ex)];
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused_per_peer(&ex) < 184 {
        assert!(
            Instant::now() < deadline,
            "the flood's excess was not refused within 10 s: {} refused; log:\n{}",
            refused_per_peer(&ex),
            ex.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused_at = Instant::now();
    assert_eq!(
        refused_per_peer(&ex),
        184,
        "200 from one address, 16 allowed"
    );
    for _ in 0..5 {
        times.push(timed_health(&dialer, LOCAL, &ex));
    }
    eprintln!("GET /health from 127.0.0.1 under the flood: {times:?}");
    for t in &times {
        assert!(
            *t < Duration::from_secs(2),
            "a loopback client waited {t:?} under the flood: {times:?}"
        );
    }

    // The flood holds 16 of the 64 slots: 40 more connections held at once from other
    // addresses (10 from each of 127.0.1.1-4) are all served, and 127.0.0.1 still is.
    let mut held = Vec::new();
    for i in 0..40u8 {
        let source = Ipv4Addr::new(127, 0, 1, 1 + i / 10);
        let stream = dialer
            .connect(source, &ex)
            .unwrap_or_else(|e| panic!("held connection {i} from {source}: {e}"));
        held.push(stream);
    }
    let started = Instant::now();
    for (i, stream) in held.iter_mut().enumerate() {
        let answer = get(stream, "/health", false).unwrap_or_else(|e| {
            panic!(
                "held connection {i} was not served (the flood used up the slots?): {e}; log:\n{}",
                ex.log()
            )
        });
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    eprintln!(
        "40 held connections from 127.0.1.1-4 served in {:?}",
        started.elapsed()
    );
    let t = timed_health(&dialer, LOCAL, &ex);
    assert!(t < Duration::from_secs(2), "{t:?} with 56 of 64 slots held");

    // One more from the flooding address: 503 with the usual JSON, and closed, at once.
    // (The refusals of the flood are done answering by now: this one is answered too.)
    std::thread::sleep(Duration::from_millis(1200).saturating_sub(refused_at.elapsed()));
    let started = Instant::now();
    let mut extra = dialer
        .connect(FLOODER, &ex)
        .expect("connect from the flooder");
    let answer = get(&mut extra, "/health", false)
        .unwrap_or_else(|e| panic!("the flooder's extra connection: {e}; log:\n{}", ex.log()));
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nconnection: close"),
        "{head}"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(body).unwrap(),
        serde_json::json!({
            "success": false,
            "msg": "too many connections from this address (max_connections_per_peer 16)"
        })
    );
    let mut rest = [0u8; 64];
    assert!(
        matches!(extra.read(&mut rest), Ok(0) | Err(_)),
        "the refused connection stayed open"
    );
    let refused_in = started.elapsed();
    eprintln!("the flooder's extra connection refused in {refused_in:?}");
    assert!(refused_in < Duration::from_secs(2), "{refused_in:?}");
    assert_eq!(refused_per_peer(&ex), 185);

    // The warning is rate-limited: 185 refusals, one line per 10 s.
    let log = ex.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("max_connections_per_peer"))
        .count();
    assert!(
        (1..=3).contains(&warnings),
        "{warnings} warnings for one flooding address; log:\n{log}"
    );

    // Once the flood closes, its address is served again (its count went back down).
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let served = dialer
            .connect(FLOODER, &ex)
            .ok()
            .and_then(|mut s| get(&mut s, "/health", true).ok())
            .is_some_and(|a| a.starts_with("HTTP/1.1 200"));
        if served {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "127.0.0.2 still refused 10 s after closing its connections; log:\n{}",
            ex.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
    drop(extra);
}

#[test]
fn a_per_peer_cap_above_max_connections_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("executor.yaml");
    std::fs::write(&config, "max_connections: 8\nmax_connections_per_peer: 9\n").unwrap();
    let mut proc = Proc::spawn(&["--config", config.to_str().unwrap()]);
    let status = proc
        .wait(Duration::from_secs(30))
        .expect("exits at once on a config error");
    assert_eq!(status.code(), Some(2), "{}", proc.output());
    assert!(
        proc.output().contains("max_connections_per_peer"),
        "the error does not name the key: {}",
        proc.output()
    );
}
