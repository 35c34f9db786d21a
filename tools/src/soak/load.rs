//! The load: clients sending requests over 4 task keys (one at a time each, every answer
//! checked), and the killer, which `docker kill`s a random task container at an interval.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mecanywhere_tools::docker;
use tokio::task::JoinHandle;

use crate::client::Api;
use mecanywhere_executor::engine::LABEL_EXECUTOR;

/// The task the clients call.
pub const IMAGE: &str = "meca-echo:latest";

#[derive(Default)]
pub struct Counts {
    pub sent: AtomicU64,
    pub ok: AtomicU64,
    pub clear_error: AtomicU64,
    pub other_failure: AtomicU64,
    pub kills: AtomicU64,
    /// Failures by kind (their message with the digits left out), counted.
    pub errors: Mutex<HashMap<String, u64>>,
}

impl Counts {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A small xorshift generator: no dependency, good enough to spread load.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What one request came to: its answer checked, or the failure, clear (the executor's
/// `success: false` with a message) or not, and its message.
fn verdict(
    outcome: &Result<(u16, bytes::Bytes), String>,
    input: &str,
) -> Result<(), (bool, String)> {
    match outcome {
        Ok((200, body)) => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) if v["success"] == true && v["msg"] == input => Ok(()),
            Ok(v) if v["success"] == false && v["msg"].as_str().is_some_and(|m| !m.is_empty()) => {
                Err((true, v["msg"].as_str().unwrap_or("").to_string()))
            }
            _ => Err((
                false,
                format!("unexpected answer {}", String::from_utf8_lossy(body)),
            )),
        },
        Ok((status, body)) => Err((
            false,
            format!("HTTP {status}: {}", String::from_utf8_lossy(body)),
        )),
        Err(e) => Err((false, format!("transport: {e}"))),
    }
}

/// The kind a failure is counted under: its message with the digits left out (ids and sizes
/// vary), at most 110 characters, `OTHER ` in front of one that is not clear.
fn kind(clear: bool, message: &str) -> String {
    let kind: String = message
        .chars()
        .filter(|c| !c.is_ascii_digit())
        .take(110)
        .collect();
    format!("{}{kind}", if clear { "" } else { "OTHER " })
}

/// `clients` clients until `deadline`, each on keys of 1 core and 64 to 160 MB.
pub fn spawn_clients(
    api: &Api,
    clients: usize,
    deadline: Instant,
    counts: &Arc<Counts>,
) -> Vec<JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let counts = Arc::clone(counts);
            let api = api.clone();
            tokio::spawn(async move {
                let mut rng =
                    Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
                let mut n = 0u64;
                while Instant::now() < deadline {
                    n += 1;
                    let mem = 64 + 32 * (rng.next() % 4);
                    let input = format!("client {c} request {n}");
                    let body = serde_json::json!({
                        "id": IMAGE,
                        "resource": {"cpu": 1, "mem": mem},
                        "input": input,
                    })
                    .to_string();
                    counts.sent.fetch_add(1, Ordering::Relaxed);
                    let outcome = api.call("POST", "/", body).await;
                    match verdict(&outcome, &input) {
                        Ok(()) => counts.ok.fetch_add(1, Ordering::Relaxed),
                        Err((clear, message)) => {
                            *counts
                                .errors
                                .lock()
                                .unwrap()
                                .entry(kind(clear, &message))
                                .or_default() += 1;
                            if clear {
                                counts.clear_error.fetch_add(1, Ordering::Relaxed)
                            } else {
                                counts.other_failure.fetch_add(1, Ordering::Relaxed)
                            }
                        }
                    };
                }
            })
        })
        .collect()
}

/// Every `every` until `deadline`, `docker kill`s one of the executor's (`name`) containers,
/// picked at random.
pub fn spawn_killer(
    name: String,
    every: Duration,
    deadline: Instant,
    counts: &Arc<Counts>,
) -> JoinHandle<()> {
    let counts = Arc::clone(counts);
    tokio::spawn(async move {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        while Instant::now() < deadline {
            tokio::time::sleep(every).await;
            let name = name.clone();
            let pick = rng.next();
            let killed = tokio::task::spawn_blocking(move || {
                let ids = docker::labelled(LABEL_EXECUTOR, &name);
                if ids.is_empty() {
                    return false;
                }
                let id = &ids[(pick % ids.len() as u64) as usize];
                !docker::cli(&["kill", id]).is_empty()
            })
            .await
            .unwrap_or(false);
            if killed {
                counts.kills.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_and_failures_grouped() {
        let ok = Ok((
            200,
            bytes::Bytes::from_static(b"{\"success\":true,\"msg\":\"hi\"}"),
        ));
        assert_eq!(verdict(&ok, "hi"), Ok(()));
        assert_eq!(
            verdict(&ok, "other"),
            Err((
                false,
                "unexpected answer {\"success\":true,\"msg\":\"hi\"}".into()
            ))
        );
        let clear = Ok((
            200,
            bytes::Bytes::from_static(b"{\"success\":false,\"msg\":\"queue full\"}"),
        ));
        assert_eq!(verdict(&clear, "hi"), Err((true, "queue full".into())));
        let status = Ok((503, bytes::Bytes::from_static(b"busy")));
        assert_eq!(
            verdict(&status, "hi"),
            Err((false, "HTTP 503: busy".into()))
        );
        assert_eq!(
            verdict(&Err("reset".into()), "hi"),
            Err((false, "transport: reset".into()))
        );
        assert_eq!(
            kind(true, "container 12ab3 ran out"),
            "container ab ran out"
        );
        assert_eq!(kind(false, "HTTP 503: x"), "OTHER HTTP : x");
        assert_eq!(kind(true, &"x".repeat(200)).len(), 110);
    }
}
