//! The soak's HTTP client of the executor: a pooled keep-alive client (one idle connection
//! kept per client), and the wait for the executor to come to rest.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[derive(Clone)]
pub struct Api {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Api {
    /// A client of the executor at `addr`, keeping up to `clients` idle connections.
    pub fn new(addr: SocketAddr, clients: usize) -> Api {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(clients)
            .build(connector);
        Api {
            client,
            base: format!("http://{addr}"),
        }
    }

    /// One JSON request: the status and the body, or what went wrong on the way.
    pub async fn call(
        &self,
        method: &'static str,
        path: &str,
        body: String,
    ) -> Result<(u16, Bytes), String> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}

/// At rest: once idle containers are reaped, nothing may stay reserved. Waits (up to 60 s)
/// for `/stats` to show no container and no budget used; the last `task_used_cpu` and
/// `task_used_mem` seen with no container, if any.
pub async fn wait_at_rest(api: &Api) -> Option<(Value, Value)> {
    let mut at_rest = None;
    let rest_deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < rest_deadline {
        if let Ok((200, body)) = api.call("GET", "/stats", String::new()).await {
            let stats: Value = serde_json::from_slice(&body).unwrap_or_default();
            if stats["containers"] == 0 {
                at_rest = Some((
                    stats["task_used_cpu"].clone(),
                    stats["task_used_mem"].clone(),
                ));
                if stats["task_used_cpu"].as_f64() == Some(0.0)
                    && stats["task_used_mem"].as_f64() == Some(0.0)
                {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    at_rest
}
