//! HTTP calls from the executor to one task container.
//!
//! Owns the keep-alive connections to a container (one [`TaskClient`] per container, so
//! connections never outlive it: a later container reusing its sandbox never receives a
//! stale connection), where a task is reached ([`TaskAddr`]), how a connection is made ([`connect`]: through the sandbox's relay
//! socket, which greets once it reached the task, or over TCP), the per-request deadline and
//! the cap on answer size. It knows nothing of Docker or of the pool: a failed call is
//! reported as a [`CallError`] and the executor decides what to do with the container.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::task::Call;

/// How long making one connection to a task may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the executor reaches a task.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TaskAddr {
    /// The Unix socket of the task's sandbox holder, which relays each connection to the
    /// task's port 8080 inside the sandbox (see `holder/program.rs`).
    Relay(PathBuf),
    /// The Unix socket of a sandbox holder that forwards each connection to `to`: the task
    /// on another machine of a cluster, on a network only the holder shares with it.
    Forward {
        relay: PathBuf,
        to: std::net::SocketAddrV4,
    },
    /// A TCP address of the task's port.
    Tcp(SocketAddr),
}

impl std::fmt::Display for TaskAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskAddr::Relay(path) => write!(f, "unix:{}", path.display()),
            TaskAddr::Forward { relay, to } => write!(f, "unix:{} to {to}", relay.display()),
            TaskAddr::Tcp(addr) => addr.fmt(f),
        }
    }
}

/// The byte a sandbox holder's relay writes on a new connection once it reached the task
/// (the holder program's `GREETING`: the two sides of one protocol).
pub const GREETING: u8 = b'+';

/// A connection to a task.
pub enum TaskStream {
    /// Through the sandbox's relay: the greeting was read, the bytes are the task's.
    Relay(TokioIo<UnixStream>),
    Tcp(TokioIo<TcpStream>),
}

/// Opens a connection to the task at `addr`. Through a relay, the connection stands only
/// once the relay greeted (it reached the task's port); a relay that closes without a
/// greeting means the task does not listen (yet): [`io::ErrorKind::ConnectionRefused`].
pub async fn connect(addr: &TaskAddr) -> io::Result<TaskStream> {
    match addr {
        TaskAddr::Relay(path) => greeted(UnixStream::connect(path).await?).await,
        TaskAddr::Forward { relay, to } => {
            let mut stream = UnixStream::connect(relay).await?;
            let mut named = [0u8; 6];
            named[..4].copy_from_slice(&to.ip().octets());
            named[4..].copy_from_slice(&to.port().to_be_bytes());
            stream.write_all(&named).await?;
            greeted(stream).await
        }
        TaskAddr::Tcp(addr) => {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(TaskStream::Tcp(TokioIo::new(stream)))
        }
    }
}

/// A relay's connection once the relay greeted it (it reached the task).
async fn greeted(mut stream: UnixStream) -> io::Result<TaskStream> {
    let mut greeting = [0u8; 1];
    match stream.read(&mut greeting).await? {
        1 if greeting[0] == GREETING => Ok(TaskStream::Relay(TokioIo::new(stream))),
        1 => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the sandbox relay answered with an unknown greeting",
        )),
        _ => Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "nothing listens on the task's port 8080",
        )),
    }
}

impl Connection for TaskStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for TaskStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TaskStream::Relay(s) => Pin::new(s).poll_read(cx, buf),
            TaskStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for TaskStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TaskStream::Relay(s) => Pin::new(s).poll_write(cx, buf),
            TaskStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TaskStream::Relay(s) => Pin::new(s).poll_flush(cx),
            TaskStream::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TaskStream::Relay(s) => Pin::new(s).poll_shutdown(cx),
            TaskStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The connector of one task's client: every URI leads to the task's address.
#[derive(Clone)]
struct Connector {
    addr: std::sync::Arc<TaskAddr>,
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TaskStream>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = TaskStream;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Connecting {
        let addr = std::sync::Arc::clone(&self.addr);
        Box::pin(async move {
            tokio::time::timeout(CONNECT_TIMEOUT, connect(&addr))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting timed out"))?
        })
    }
}

/// The executor's side of one task container: where it answers and how to call it.
/// [`TaskClient`] speaks HTTP to a real container; the in-memory engine has its own.
#[async_trait::async_trait]
pub trait TaskCall: Send + Sync + std::fmt::Debug {
    /// Where the task answers (for logs).
    fn addr(&self) -> &TaskAddr;
    /// Calls the task and reads its whole answer, within `timeout`.
    async fn call(&self, call: Call, input: Bytes, timeout: Duration) -> Result<Answer, CallError>;
    /// Closes the idle connections to the task, from the executor's side; later calls fail.
    fn close(&self) {}
}

/// What a task answered.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Why a call to a task failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("task timed out after {} without answering", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("task answer is larger than the limit of {0} bytes (max_answer_bytes)")]
    TooLarge(usize),
    #[error("could not reach the task: {0}")]
    Transport(String),
    #[error("task answered something that is not valid HTTP: {0}")]
    NotHttp(String),
}

/// Sorts a client error: a malformed answer, or a transport failure.
fn classify(e: &(dyn std::error::Error + 'static)) -> CallError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_parse)
        {
            return CallError::NotHttp(crate::error_text::chain(e));
        }
        source = s.source();
    }
    CallError::Transport(crate::error_text::chain(e))
}

/// HTTP client of one task container.
pub struct TaskClient {
    /// `None` once closed.
    client: std::sync::RwLock<Option<Client<Connector, Full<Bytes>>>>,
    addr: TaskAddr,
    /// The task's URIs, by [`Call`], parsed once (cloning a `Uri` shares its bytes).
    uris: [Uri; 3],
    max_answer_bytes: usize,
}

fn call_index(call: Call) -> usize {
    match call {
        Call::Run => 0,
        Call::SgxAttest => 1,
        Call::SgxRun => 2,
    }
}

impl std::fmt::Debug for TaskClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskClient")
            .field("addr", &self.addr)
            .finish()
    }
}

impl TaskClient {
    /// A client for the task at `addr`. Makes no connection yet.
    pub fn new(addr: TaskAddr, max_answer_bytes: usize) -> TaskClient {
        let connector = Connector {
            addr: std::sync::Arc::new(addr.clone()),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1024)
            .build(connector);
        let uri = |call: Call| -> Uri {
            let path = call.method_and_path().1;
            // The connector ignores the host: every connection goes to `addr`.
            format!("http://task{path}")
                .parse()
                .expect("a fixed host and path make a valid URI")
        };
        TaskClient {
            client: std::sync::RwLock::new(Some(client)),
            addr,
            uris: [uri(Call::Run), uri(Call::SgxAttest), uri(Call::SgxRun)],
            max_answer_bytes,
        }
    }
}

#[async_trait::async_trait]
impl TaskCall for TaskClient {
    fn addr(&self) -> &TaskAddr {
        &self.addr
    }

    async fn call(&self, call: Call, input: Bytes, timeout: Duration) -> Result<Answer, CallError> {
        let method = if call.method_and_path().0 == "GET" {
            Method::GET
        } else {
            Method::POST
        };
        let body = if method == Method::GET {
            Bytes::new()
        } else {
            input
        };
        let mut request = Request::builder()
            .method(method)
            .uri(self.uris[call_index(call)].clone())
            .body(Full::new(body))
            .map_err(|e| CallError::Transport(e.to_string()))?;
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        // A clone shares the connection pool; the lock is held only to take it.
        let client = self
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                CallError::Transport("the connection to the task was closed for its removal".into())
            })?;
        let exchange = async {
            let response = client.request(request).await.map_err(|e| classify(&e))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), self.max_answer_bytes)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        CallError::TooLarge(self.max_answer_bytes)
                    } else {
                        CallError::Transport(crate::error_text::chain(&*e))
                    }
                })?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout(timeout))?
    }

    fn close(&self) {
        // Dropping the last clone of the client drops its pool: each idle connection's
        // task ends and closes its socket (the executor's side sends the first FIN).
        let client = self
            .client
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(client);
    }
}
