//! A local WebSub subscriber: answers the hub's verification-of-intent GETs (echoing the
//! challenge, echoing a wrong one, or refusing), and records the content deliveries (POSTs) it
//! accepts, optionally failing a number of them first. One server can stand behind many callback
//! URLs (any path works), so many subscriptions can share it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Query, State};
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::task::JoinHandle;

use crate::{PATIENCE, eventually};

/// How the subscriber answers verification-of-intent requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// 200 with exactly the `hub.challenge` value as the body: confirms the intent.
    Echo,
    /// 200 with a body other than the challenge: must not confirm anything.
    WrongChallenge,
    /// 404: the subscriber denies the intent.
    Refuse404,
}

/// One accepted (2xx-answered) content delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The request body as received.
    pub body: Vec<u8>,
    /// The request headers, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The request path with its query string, e.g. `/cb` or `/s/7?x=1`.
    pub path_and_query: String,
}

impl Delivery {
    /// The first value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The request path without the query string.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Debug)]
struct Inner {
    verify: Verify,
    fail_remaining: u32,
    verifications: Vec<BTreeMap<String, String>>,
    deliveries: Vec<Delivery>,
    attempts: u32,
}

type Shared = Arc<Mutex<Inner>>;

fn lock(s: &Shared) -> MutexGuard<'_, Inner> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// A WebSub subscriber server on 127.0.0.1, stopped when dropped.
pub struct Subscriber {
    addr: SocketAddr,
    state: Shared,
    task: JoinHandle<()>,
}

/// Largest delivery body the subscriber reads (more than the hub accepts from publishers).
const MAX_BODY: usize = 8 * 1024 * 1024;

async fn handle(
    State(state): State<Shared>,
    Query(params): Query<Vec<(String, String)>>,
    req: Request<Body>,
) -> Response {
    if req.method() == Method::GET {
        return verification(&state, params);
    }
    if req.method() != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b.to_vec(),
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let mut s = lock(&state);
    s.attempts += 1;
    if s.fail_remaining > 0 {
        s.fail_remaining -= 1;
        return (StatusCode::INTERNAL_SERVER_ERROR, "failing on purpose").into_response();
    }
    s.deliveries.push(Delivery {
        body,
        headers,
        path_and_query,
    });
    StatusCode::OK.into_response()
}

fn verification(state: &Shared, params: Vec<(String, String)>) -> Response {
    let params: BTreeMap<String, String> = params.into_iter().collect();
    let challenge = params.get("hub.challenge").cloned().unwrap_or_default();
    let mut s = lock(state);
    s.verifications.push(params);
    match s.verify {
        Verify::Echo => {
            (StatusCode::OK, [("content-type", "text/plain")], challenge).into_response()
        }
        Verify::WrongChallenge => (
            StatusCode::OK,
            [("content-type", "text/plain")],
            format!("not-{challenge}-at-all"),
        )
            .into_response(),
        Verify::Refuse404 => (StatusCode::NOT_FOUND, "no such subscription").into_response(),
    }
}

impl Subscriber {
    /// Starts the server on a free loopback port, answering verifications with [`Verify::Echo`]
    /// and accepting every delivery.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state: Shared = Arc::new(Mutex::new(Inner {
            verify: Verify::Echo,
            fail_remaining: 0,
            verifications: Vec::new(),
            deliveries: Vec::new(),
            attempts: 0,
        }));
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, state, task })
    }

    /// The default callback URL: `http://127.0.0.1:<port>/cb`.
    pub fn callback(&self) -> String {
        self.callback_at("/cb")
    }

    /// Another callback URL on the same server (`path` starts with `/`), so several
    /// subscriptions can share one server and be told apart by [`Delivery::path`].
    pub fn callback_at(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How later verification requests are answered.
    pub fn set_verify(&self, v: Verify) {
        lock(&self.state).verify = v;
    }

    /// Answers the next `n` delivery POSTs with 500 (they are counted as attempts but not
    /// recorded as deliveries). Replaces any remaining count: `0` accepts from now on.
    pub fn fail_next_deliveries(&self, n: u32) {
        lock(&self.state).fail_remaining = n;
    }

    /// The query parameters of every verification GET so far, in arrival order.
    pub fn verifications(&self) -> Vec<BTreeMap<String, String>> {
        lock(&self.state).verifications.clone()
    }

    /// The accepted deliveries so far, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.state).deliveries.clone()
    }

    /// Every delivery POST so far, failed ones included.
    pub fn delivery_attempts(&self) -> u32 {
        lock(&self.state).attempts
    }

    /// Waits (up to [`PATIENCE`]) until at least `n` deliveries were accepted; returns them all.
    pub async fn wait_deliveries(&self, n: usize) -> anyhow::Result<Vec<Delivery>> {
        eventually(PATIENCE, &format!("{n} deliveries"), || async move {
            let d = self.deliveries();
            (d.len() >= n).then_some(d)
        })
        .await
    }

    /// Waits (up to [`PATIENCE`]) until at least `n` verification requests arrived; returns
    /// them all.
    pub async fn wait_verifications(
        &self,
        n: usize,
    ) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
        eventually(PATIENCE, &format!("{n} verifications"), || async move {
            let v = self.verifications();
            (v.len() >= n).then_some(v)
        })
        .await
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
