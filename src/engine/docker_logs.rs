//! Following a starting container's output straight from Docker, decoded here piece by
//! piece: memory per follower is one chunk of the HTTP body, and every byte is looked at once.
//!
//! Why not bollard's log stream: for a terminal (`Tty`, the tasks' default) its decoder
//! buffers the output up to the next newline and scans the whole buffer again on every read.
//! A task that printed one 64 MiB line (a progress bar redrawn with `\r`) made the executor
//! hold that line and take about 97 s to reach the ready mark that Docker's own stream
//! delivered after 1.3 s.
//!
//! Why a container is followed by attaching to it (before it starts), not through its log
//! endpoint: Docker 20.10's followed json-file log ends or stalls when the file rotates under
//! the reader. A task that printed 64 MiB before its ready mark on a pipe was reported as
//! "output ended" with `log_max_size` 100k (6 tries of 6), the task still running; with the
//! default 10m, one start in ten stalled until its start timeout. The attached stream is the
//! container's stdio itself and no rotation touches it. A swarm service's tasks run on other
//! nodes and are followed through the service's log endpoint.
//!
//! Owns one HTTP/1.1 connection per follower (to `DOCKER_HOST`, unix or tcp, as bollard
//! reads it); the connection is closed when the follower is dropped, which detaches. Knows
//! nothing of ready lines: [`super::ready`] scans what this yields.
//!
//! Also [`get_json`]: one plain GET whose JSON body is returned whole, for the fields
//! bollard's models drop (a swarm task's network addresses).

use std::path::PathBuf;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::task::AbortHandle;

use super::ready::Stream;
use super::EngineError;

/// Where the Docker daemon listens (`DOCKER_HOST`, default the local socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    /// A daemon address as `DOCKER_HOST` names one (read as bollard reads it): `unix://PATH`,
    /// `tcp://` or `http://HOST:PORT`; empty: the default socket.
    pub(super) fn parse(host: &str) -> Result<Endpoint, EngineError> {
        if host.is_empty() {
            return Ok(Endpoint::Unix("/var/run/docker.sock".into()));
        }
        if let Some(path) = host.strip_prefix("unix://") {
            return Ok(Endpoint::Unix(path.into()));
        }
        if let Some(addr) = host
            .strip_prefix("tcp://")
            .or_else(|| host.strip_prefix("http://"))
        {
            return Ok(Endpoint::Tcp(addr.trim_end_matches('/').to_string()));
        }
        Err(EngineError::Unreachable(format!(
            "DOCKER_HOST={host}: only unix:// and tcp:// (http://) daemons are supported"
        )))
    }
}

/// GETs `path` (with the API version prefix) and returns its JSON body; an answer other than
/// 2xx is an error with the daemon's message.
pub(super) async fn get_json(
    endpoint: &Endpoint,
    api_version: &str,
    path: &str,
) -> Result<serde_json::Value, EngineError> {
    let unreachable = |e: std::io::Error| {
        EngineError::Unreachable(format!("cannot connect to the Docker daemon: {e}"))
    };
    let (mut sender, connection) = match endpoint {
        Endpoint::Unix(socket) => {
            handshake(
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(unreachable)?,
            )
            .await?
        }
        Endpoint::Tcp(addr) => {
            handshake(
                tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(unreachable)?,
            )
            .await?
        }
    };
    let answer = async {
        let request = hyper::Request::get(format!("/v{api_version}{path}"))
            .header(hyper::header::HOST, "docker")
            .body(Empty::<Bytes>::new())
            .map_err(|e| EngineError::Api(format!("request {path}: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| EngineError::Unreachable(format!("GET {path}: {e}")))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| EngineError::Unreachable(format!("GET {path}: {e}")))?
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| EngineError::Api(format!("GET {path}: not JSON: {e}")))?;
        if !status.is_success() {
            let message = value["message"]
                .as_str()
                .unwrap_or("no message")
                .to_string();
            return Err(if status.as_u16() == 404 {
                EngineError::NoSuchContainer(message)
            } else {
                EngineError::Api(message)
            });
        }
        Ok(value)
    }
    .await;
    connection.abort();
    answer
}

/// A container's output as it arrives, split into pieces of stdout and stderr.
pub(super) struct LogFollower {
    body: Incoming,
    chunk: Bytes,
    demux: Demux,
    connection: AbortHandle,
}

impl Drop for LogFollower {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl LogFollower {
    /// Attaches to the stdout and stderr of container `id`, which has not started yet, so
    /// that its whole output from its start is followed (`tty`: the container has a terminal,
    /// so its output is one raw stream). The stream ends when the container stops; dropping
    /// the follower detaches, and the container's output goes on to its log as before.
    pub(super) async fn attach(
        endpoint: &Endpoint,
        api_version: &str,
        id: &str,
        tty: bool,
    ) -> Result<LogFollower, EngineError> {
        let path = format!("/v{api_version}/containers/{id}/attach?stream=1&stdout=1&stderr=1");
        Self::open_request(endpoint, hyper::Method::POST, &path, tty).await
    }

    /// Follows the output of swarm service `id`'s tasks (on any node) from their start.
    pub(super) async fn open_service(
        endpoint: &Endpoint,
        api_version: &str,
        id: &str,
        tty: bool,
    ) -> Result<LogFollower, EngineError> {
        let path = format!("/v{api_version}/services/{id}/logs?follow=1&stdout=1&stderr=1");
        Self::open_request(endpoint, hyper::Method::GET, &path, tty).await
    }

    /// Sends `method path` and follows its streamed answer.
    async fn open_request(
        endpoint: &Endpoint,
        method: hyper::Method,
        path: &str,
        tty: bool,
    ) -> Result<LogFollower, EngineError> {
        let unreachable = |e: std::io::Error| {
            EngineError::Unreachable(format!("cannot connect to the Docker daemon: {e}"))
        };
        let (mut sender, connection) = match endpoint {
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(unreachable)?;
                handshake(stream).await?
            }
            Endpoint::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(unreachable)?;
                handshake(stream).await?
            }
        };
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "docker")
            .body(Empty::<Bytes>::new())
            .map_err(|e| EngineError::Api(format!("output request: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| EngineError::Unreachable(format!("reading a container's output: {e}")));
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                connection.abort();
                return Err(e);
            }
        };
        let status = response.status();
        let mut follower = LogFollower {
            body: response.into_body(),
            chunk: Bytes::new(),
            demux: Demux::new(tty),
            connection,
        };
        if !status.is_success() {
            return Err(EngineError::Api(follower.error_message(status).await));
        }
        Ok(follower)
    }

    /// The next piece of output; `None` when the output ended (the container stopped).
    pub(super) async fn next(&mut self) -> Option<Result<(Stream, Bytes), EngineError>> {
        loop {
            if let Some(piece) = self.demux.next_piece(&mut self.chunk) {
                return Some(Ok(piece));
            }
            match self.body.frame().await? {
                Err(e) => {
                    return Some(Err(EngineError::Unreachable(format!(
                        "reading a container's output: {e}"
                    ))))
                }
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        self.chunk = data;
                    }
                }
            }
        }
    }

    /// Docker's error message of a refused request (at most a few KB of it are read).
    async fn error_message(&mut self, status: hyper::StatusCode) -> String {
        let mut text = Vec::new();
        while text.len() < 4096 {
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        text.extend_from_slice(&data);
                    }
                }
                _ => break,
            }
        }
        let message = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message")?.as_str().map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&text).trim().to_string());
        format!("reading a container's output: {status}: {message}")
    }
}

async fn handshake<S>(
    stream: S,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        AbortHandle,
    ),
    EngineError,
>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| EngineError::Unreachable(format!("talking to the Docker daemon: {e}")))?;
    let task = tokio::spawn(async move {
        // Ends when the daemon closes the stream or the follower is dropped (aborted).
        let _ = connection.await;
    });
    Ok((sender, task.abort_handle()))
}

/// Splits Docker's log body into pieces of one stream. Without a terminal, the body is a
/// sequence of frames: an 8-byte header (stream type, 3 zero bytes, big-endian length) and
/// that many bytes of output; a frame's bytes are handed out as they arrive, never
/// gathered. With a terminal, the body is the output itself.
struct Demux {
    tty: bool,
    header: [u8; 8],
    have: usize,
    /// Bytes of the current frame still to come, and whose they are (`None`: stdin, skipped).
    left: usize,
    stream: Option<Stream>,
}

impl Demux {
    fn new(tty: bool) -> Demux {
        Demux {
            tty,
            header: [0; 8],
            have: 0,
            left: 0,
            stream: None,
        }
    }

    /// The next piece of output in `chunk` (consumed from its front), or `None` when
    /// `chunk` holds no more.
    fn next_piece(&mut self, chunk: &mut Bytes) -> Option<(Stream, Bytes)> {
        if self.tty {
            return (!chunk.is_empty()).then(|| (Stream::Stdout, chunk.split_to(chunk.len())));
        }
        while !chunk.is_empty() {
            if self.left > 0 {
                let piece = chunk.split_to(self.left.min(chunk.len()));
                self.left -= piece.len();
                match self.stream {
                    Some(stream) => return Some((stream, piece)),
                    None => continue,
                }
            }
            let n = (8 - self.have).min(chunk.len());
            self.header[self.have..self.have + n].copy_from_slice(&chunk[..n]);
            chunk.advance(n);
            self.have += n;
            if self.have == 8 {
                self.have = 0;
                self.stream = match self.header[0] {
                    1 => Some(Stream::Stdout),
                    2 => Some(Stream::Stderr),
                    _ => None,
                };
                let len = &self.header[4..8];
                self.left = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: u8, text: &[u8]) -> Vec<u8> {
        let mut f = vec![stream, 0, 0, 0];
        f.extend_from_slice(&(text.len() as u32).to_be_bytes());
        f.extend_from_slice(text);
        f
    }

    /// Feeds `body` cut into chunks of `size` bytes; returns what each stream got.
    fn demux(tty: bool, body: &[u8], size: usize) -> (Vec<u8>, Vec<u8>) {
        let mut d = Demux::new(tty);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for piece in body.chunks(size) {
            let mut chunk = Bytes::copy_from_slice(piece);
            while let Some((stream, bytes)) = d.next_piece(&mut chunk) {
                assert!(!bytes.is_empty());
                match stream {
                    Stream::Stdout => out.extend_from_slice(&bytes),
                    Stream::Stderr => err.extend_from_slice(&bytes),
                }
            }
            assert!(chunk.is_empty());
        }
        (out, err)
    }

    #[test]
    fn frames_are_split_by_stream_however_the_body_is_cut() {
        let mut body = frame(1, b"hello ");
        body.extend(frame(2, b"warning\n"));
        body.extend(frame(0, b"stdin is skipped"));
        body.extend(frame(1, b"world\n"));
        body.extend(frame(1, b""));
        for size in [1, 3, 7, 8, 9, 64, body.len()] {
            let (out, err) = demux(false, &body, size);
            assert_eq!(out, b"hello world\n", "chunks of {size}");
            assert_eq!(err, b"warning\n", "chunks of {size}");
        }
    }

    #[test]
    fn a_terminal_is_one_raw_stream() {
        let (out, err) = demux(true, b"\x01 not a header\r\nmeca-init-done\r\n", 5);
        assert_eq!(out, b"\x01 not a header\r\nmeca-init-done\r\n");
        assert!(err.is_empty());
    }

    #[test]
    fn docker_host_is_read_as_bollard_reads_it() {
        assert_eq!(
            Endpoint::parse("").unwrap(),
            Endpoint::Unix("/var/run/docker.sock".into())
        );
        assert_eq!(
            Endpoint::parse("unix:///run/user/1000/docker.sock").unwrap(),
            Endpoint::Unix("/run/user/1000/docker.sock".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://127.0.0.1:2375").unwrap(),
            Endpoint::Tcp("127.0.0.1:2375".into())
        );
        assert_eq!(
            Endpoint::parse("http://localhost:2375/").unwrap(),
            Endpoint::Tcp("localhost:2375".into())
        );
        assert!(Endpoint::parse("ssh://host").is_err());
    }
}
