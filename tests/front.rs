//! The HTTP front against the real binary: slow or idle clients cannot hold connections,
//! connections and requests in flight are capped, and the executor listens where its config
//! says, warning when it is exposed without a token.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn connect(ex: &Executor) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", ex.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Waits until the server closes `stream` (a read returns end of file or a reset); returns
/// how long that took, or `None` if it stayed open for `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return None,
            Err(_) => return Some(started.elapsed()),
        }
    }
}

/// Sends a keep-alive `GET path` on `stream` and reads one answer; returns its status line.
fn get_keep_alive(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // The answers here are small: read until the headers and the announced body are in.
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before answering");
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
                return head.lines().next().unwrap().to_string();
            }
        }
    }
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let ex = Executor::start("slowloris", "header_read_timeout: \"1s\"");
    let mut stream = connect(&ex);
    stream.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let closed = closed_within(&mut stream, Duration::from_secs(10));
    assert!(
        closed.is_some(),
        "a connection with unfinished headers was still open after 10 s"
    );
    // A byte now and then does not keep it open either.
    let mut stream = connect(&ex);
    let started = Instant::now();
    let mut open = true;
    for byte in b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaa" {
        if stream.write_all(&[*byte]).is_err() {
            open = false;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    assert!(
        !open || closed_within(&mut stream, Duration::from_secs(5)).is_some(),
        "a client trickling its headers kept the connection open"
    );
    // The executor still serves others.
    assert_eq!(ex.get("/health").body, json!({"status": "ok"}));
}

#[test]
fn an_idle_keep_alive_connection_is_closed_and_an_active_one_is_not() {
    let ex = Executor::start(
        "idle-conn",
        "idle_connection_timeout: \"2s\"\nheader_read_timeout: \"10s\"",
    );
    let mut stream = connect(&ex);
    // Requests 500 ms apart keep it open past the idle timeout.
    for _ in 0..6 {
        assert!(get_keep_alive(&mut stream, "/health").contains("200"));
        std::thread::sleep(Duration::from_millis(500));
    }
    let closed = closed_within(&mut stream, Duration::from_secs(10));
    assert!(closed.is_some(), "an idle connection stayed open 10 s");

    // The header timeout does not close a connection merely idle between requests.
    let ex = Executor::start(
        "idle-vs-header",
        "idle_connection_timeout: \"20s\"\nheader_read_timeout: \"1s\"",
    );
    let mut stream = connect(&ex);
    assert!(get_keep_alive(&mut stream, "/health").contains("200"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(get_keep_alive(&mut stream, "/health").contains("200"));
}

#[test]
fn connections_beyond_the_cap_wait_until_one_closes() {
    let ex = Executor::start("max-conns", "max_connections: 2");
    let mut first = connect(&ex);
    let mut second = connect(&ex);
    assert!(get_keep_alive(&mut first, "/health").contains("200"));
    assert!(get_keep_alive(&mut second, "/health").contains("200"));
    // The third is accepted by the kernel, but not served while two are open.
    let mut third = connect(&ex);
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 512];
    let early = third.read(&mut buf);
    assert!(
        early.is_err(),
        "a third connection was served beyond max_connections 2: {early:?}"
    );
    drop(first);
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = third.read(&mut buf).expect("served once a slot freed");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
}

#[test]
fn requests_beyond_the_in_flight_cap_get_503_with_the_usual_json() {
    let ex = Executor::start("in-flight", "max_requests_in_flight: 1");
    let slow = {
        let url = ex.url("/");
        std::thread::spawn(move || {
            Client::new().request(
                "POST",
                &url,
                Some(
                    json!({"id": "meca-test-slow-answer:latest", "input": "slow"})
                        .to_string()
                        .into_bytes(),
                ),
            )
        })
    };
    // While the slow task (a cold start, then 2 s) is served, another task run is turned
    // away at once.
    std::thread::sleep(Duration::from_secs(1));
    let busy = ex.execute(&json!({"id": ECHO, "input": "me too"}));
    assert_eq!(busy.status, 503, "{busy:?}");
    assert_eq!(busy.body["success"], json!(false));
    assert!(busy.msg().contains("max_requests_in_flight"), "{busy:?}");
    // The control endpoints are not counted: an operator can always look, pause or stop.
    assert_eq!(ex.get("/stats").status, 200);
    assert_eq!(ex.get("/health").status, 200);
    let answered = slow.join().unwrap().unwrap();
    assert!(answered.success(), "{answered:?}");
    assert!(ex.execute(&json!({"id": ECHO, "input": "now"})).success());
}

#[test]
fn the_listen_address_comes_from_the_config_and_exposure_without_a_token_is_warned_about() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.yaml");
    let name = unique_name("listen");
    std::fs::write(&config, format!("name: {name}\nlisten: 0.0.0.0:{port}\n")).unwrap();
    let proc = Proc::spawn(&["--config", config.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Client::new()
        .request("GET", &format!("http://127.0.0.1:{port}/health"), None)
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "not listening on {port}: {}",
            proc.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = proc.output();
    assert!(
        log.contains("without auth_token") && log.contains(&format!("0.0.0.0:{port}")),
        "no warning about listening beyond this host without a token:\n{log}"
    );
    drop(proc);
    remove_containers_of(&name);
}

#[test]
fn a_client_that_trickles_its_body_is_answered_408_and_disconnected() {
    let ex = Executor::start("slow-body", "body_read_timeout: \"1s\"");
    let mut stream = connect(&ex);
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    let started = Instant::now();
    let mut answer = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the connection stayed open"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_read_timeout"), "{answer}");
    // Nobody's task runs were held up meanwhile.
    assert!(ex.execute(&json!({"id": ECHO, "input": "ok"})).success());
}
