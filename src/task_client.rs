//! HTTP calls from the executor to one task container.
//!
//! Owns the keep-alive connections to a container (one [`TaskClient`] per container, so
//! connections never outlive it: a later container reusing its IP address never receives a
//! stale connection), the per-request deadline and the cap on answer size. It knows nothing
//! of Docker or of the pool: a failed call is reported as a [`CallError`] and the executor
//! decides what to do with the container.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::task::Call;

/// The executor's side of one task container: where it answers and how to call it.
/// [`TaskClient`] speaks HTTP to a real container; the in-memory engine has its own.
#[async_trait::async_trait]
pub trait TaskCall: Send + Sync + std::fmt::Debug {
    /// Where the task answers (for logs).
    fn addr(&self) -> SocketAddr;
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
    client: std::sync::RwLock<Option<Client<HttpConnector, Full<Bytes>>>>,
    addr: SocketAddr,
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
    pub fn new(addr: SocketAddr, max_answer_bytes: usize) -> TaskClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1024)
            .build(connector);
        let uri = |call: Call| -> Uri {
            let path = call.method_and_path().1;
            format!("http://{addr}{path}")
                .parse()
                .expect("a socket address and a fixed path make a valid URI")
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
    fn addr(&self) -> SocketAddr {
        self.addr
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
