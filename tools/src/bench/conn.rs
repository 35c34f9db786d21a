//! HTTP: one keep-alive HTTP/1.1 connection per [`Conn`], so "each client its own connection"
//! holds by construction; the bodies of `POST /` and the answers expected.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::error::err;
use crate::fixture::IMAGE;

pub struct Conn {
    pub addr: SocketAddr,
    host: HeaderValue,
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Conn, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(err(format!("connect to {addr}")))?;
        stream.set_nodelay(true).map_err(err("TCP_NODELAY"))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(err(format!("HTTP handshake with {addr}")))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn {
            addr,
            host: HeaderValue::from_str(&addr.to_string()).map_err(err("host header"))?,
            sender,
        })
    }

    /// One request on this connection; no retry (measured calls and non-idempotent ones).
    pub async fn send(
        &mut self,
        method: Method,
        path: &'static str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        self.sender
            .ready()
            .await
            .map_err(err(format!("connection to {}", self.addr)))?;
        let request = Request::builder()
            .method(method)
            .uri(Uri::from_static(path))
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))
            .map_err(err("request"))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(err(format!("{path} on {}", self.addr)))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(err(format!("answer of {path} on {}", self.addr)))?
            .to_bytes();
        Ok((status, body))
    }

    /// An idempotent control request: reconnects once when the connection went away.
    pub async fn control(&mut self, method: Method, path: &'static str) -> Result<Bytes, String> {
        if self.sender.is_closed() {
            *self = Conn::open(self.addr).await?;
        }
        let result = match self.send(method.clone(), path, Bytes::new()).await {
            Ok(r) => Ok(r),
            Err(_) => {
                *self = Conn::open(self.addr).await?;
                self.send(method, path, Bytes::new()).await
            }
        };
        let (status, body) = result?;
        if !status.is_success() {
            return Err(format!(
                "{path}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(body)
    }
}

pub async fn open_conns(addr: SocketAddr, n: usize) -> Result<Vec<Conn>, String> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::open(addr).await?);
    }
    Ok(conns)
}

/// `POST /` of [`IMAGE`]: with `resource` when both `cpu` and `mem` are given.
pub fn execute_body(cpu: Option<f64>, mem: Option<u64>, input: &str) -> Bytes {
    execute_body_of(IMAGE, cpu, mem, input)
}

/// [`execute_body`] of `image`.
pub fn execute_body_of(image: &str, cpu: Option<f64>, mem: Option<u64>, input: &str) -> Bytes {
    let mut v = json!({"id": image, "input": input});
    if let (Some(cpu), Some(mem)) = (cpu, mem) {
        v["resource"] = json!({"cpu": cpu, "mem": mem});
    }
    Bytes::from(v.to_string())
}

/// The executor's answer when the echo task answers `input`, byte for byte.
pub fn execute_answer(input: &str) -> Bytes {
    // The executor's field order (serde_json's map would sort the keys).
    Bytes::from(format!(
        "{{\"success\":true,\"msg\":{}}}",
        Value::from(input)
    ))
}

/// Sends `n` requests and records each latency in nanoseconds; every answer is checked.
pub async fn timed_calls(
    conn: &mut Conn,
    body: &Bytes,
    expect: &Bytes,
    n: usize,
    out: &mut Vec<u64>,
) -> Result<(), String> {
    for _ in 0..n {
        let started = Instant::now();
        let (status, answer) = conn.send(Method::POST, "/", body.clone()).await?;
        let elapsed = started.elapsed().as_nanos() as u64;
        if status != StatusCode::OK || answer != *expect {
            return Err(format!(
                "unexpected answer from {}: HTTP {status}: {}",
                conn.addr,
                String::from_utf8_lossy(&answer)
            ));
        }
        out.push(elapsed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_answers() {
        assert_eq!(
            execute_body(None, None, "x"),
            Bytes::from_static(b"{\"id\":\"meca-echo:latest\",\"input\":\"x\"}")
        );
        let with: Value = serde_json::from_slice(&execute_body(Some(0.1), Some(40), "x")).unwrap();
        assert_eq!(with["resource"], json!({"cpu": 0.1, "mem": 40}));
        assert_eq!(
            execute_answer("{\"name\":\"sbip\"}"),
            Bytes::from_static(b"{\"success\":true,\"msg\":\"{\\\"name\\\":\\\"sbip\\\"}\"}")
        );
    }
}
