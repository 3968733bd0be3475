//! A local upstream that echoes each request back as JSON: method, path (with query), headers.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

/// An echo server on 127.0.0.1, stopped when dropped.
pub struct EchoUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

async fn echo(req: Request<Body>) -> Response {
    let mut headers = Map::new();
    for (k, v) in req.headers() {
        headers.insert(
            k.as_str().to_string(),
            Value::String(v.to_str().unwrap_or("").to_string()),
        );
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let body = json!({"method": req.method().as_str(), "path": path, "headers": headers});
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

impl EchoUpstream {
    /// Starts the server on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new().fallback(echo);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, task })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
