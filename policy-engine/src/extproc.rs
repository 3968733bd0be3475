//! The Envoy `ext_proc` service: one gRPC stream per HTTP request, request headers only. Allowed
//! requests continue with the API key removed and rate-limit figures as dynamic metadata (the
//! route turns them into response headers); refused ones get the contract's 401/429/503 bodies.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpHeaders, ImmediateResponse,
    ProcessingRequest, ProcessingResponse, TrailersResponse,
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    processing_request::Request as Req,
    processing_response::Response as Resp,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::chain::{RateReport, RequestView, Verdict};
use crate::engine::{Engine, Outcome, now_ns};

/// Dynamic-metadata namespace carrying rate-limit figures to the route's response headers.
pub const METADATA_NAMESPACE: &str = "gateway";
/// The attribute Envoy sends with the route's name.
pub const ROUTE_ATTRIBUTE: &str = "xds.route_name";

/// Body of a refusal for a missing or invalid API key.
pub const UNAUTHORIZED: &str = r#"{"error":"Unauthorized","message":"Valid API key required"}"#;
/// Body of a refusal over a rate limit.
pub const TOO_MANY: &str =
    r#"{"error":"Too Many Requests","message":"Rate limit exceeded. Please try again later."}"#;
const UNCONFIGURED: &str =
    r#"{"error":"Service Unavailable","message":"Policies for this route are not loaded yet"}"#;

/// The tonic service.
pub fn service(engine: Arc<Engine>) -> ExternalProcessorServer<ExtProc> {
    ExternalProcessorServer::new(ExtProc { engine })
}

/// `ext_proc` handler backed by an [`Engine`].
pub struct ExtProc {
    engine: Arc<Engine>,
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            raw_value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn string(s: String) -> Value {
    Value {
        kind: Some(Kind::StringValue(s)),
    }
}

/// The rate-limit headers of the contract, by name.
pub fn rate_headers(r: &RateReport, now_secs: u64) -> Vec<(&'static str, String)> {
    vec![
        ("x-ratelimit-limit", r.limit.to_string()),
        ("x-ratelimit-remaining", r.remaining.to_string()),
        ("x-ratelimit-reset", (now_secs + r.reset_secs).to_string()),
        (
            "ratelimit-policy",
            format!("\"default\";q={};w={}", r.limit, r.window_secs),
        ),
        (
            "ratelimit",
            format!("\"default\";r={};t={}", r.remaining, r.reset_secs),
        ),
    ]
}

fn immediate(code: i32, body: &str, extra: Vec<(&'static str, String)>) -> ProcessingResponse {
    let mut set_headers = vec![header("content-type", "application/json")];
    set_headers.extend(extra.iter().map(|(k, v)| header(k, v)));
    ProcessingResponse {
        response: Some(Resp::ImmediateResponse(ImmediateResponse {
            status: Some(HttpStatus { code }),
            headers: Some(HeaderMutation {
                set_headers,
                ..Default::default()
            }),
            body: body.as_bytes().to_vec(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn route_name(req: &ProcessingRequest) -> Option<String> {
    req.attributes.values().find_map(|s| {
        match s.fields.get(ROUTE_ATTRIBUTE).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(name)) => Some(name.clone()),
            _ => None,
        }
    })
}

/// Decides one request-headers message.
pub fn handle_headers(
    engine: &Engine,
    route: Option<&str>,
    h: &HttpHeaders,
    now: u128,
) -> ProcessingResponse {
    let mut headers = Vec::new();
    let mut path = String::new();
    for hv in h.headers.iter().flat_map(|m| m.headers.iter()) {
        let value = if hv.raw_value.is_empty() {
            hv.value.clone()
        } else {
            String::from_utf8_lossy(&hv.raw_value).into_owned()
        };
        if hv.key == ":path" {
            path = value.clone();
        }
        headers.push((hv.key.to_ascii_lowercase(), value));
    }
    let now_secs = (now / 1_000_000_000) as u64;
    let outcome = match route {
        Some(r) => engine.decide(
            r,
            RequestView {
                headers: &headers,
                path: &path,
            },
            now,
        ),
        None => Outcome::Unconfigured,
    };
    match outcome {
        Outcome::Unconfigured => immediate(503, UNCONFIGURED, Vec::new()),
        Outcome::Decided(Verdict::Unauthorized) => immediate(401, UNAUTHORIZED, Vec::new()),
        Outcome::Decided(Verdict::TooManyRequests(r)) => {
            let mut extra = vec![("retry-after", r.retry_after_secs.to_string())];
            extra.extend(rate_headers(&r, now_secs));
            immediate(429, TOO_MANY, extra)
        }
        Outcome::Decided(Verdict::Allow {
            remove_header,
            new_path,
            rate,
        }) => {
            let mutation = HeaderMutation {
                set_headers: new_path
                    .map(|p| vec![header(":path", &p)])
                    .unwrap_or_default(),
                remove_headers: remove_header.into_iter().collect(),
            };
            let dynamic_metadata = rate.map(|r| {
                let fields: HashMap<String, Value> = rate_headers(&r, now_secs)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), string(v)))
                    .collect();
                Struct {
                    fields: HashMap::from([(
                        METADATA_NAMESPACE.to_string(),
                        Value {
                            kind: Some(Kind::StructValue(Struct { fields })),
                        },
                    )]),
                }
            });
            ProcessingResponse {
                response: Some(Resp::RequestHeaders(HeadersResponse {
                    response: Some(CommonResponse {
                        header_mutation: Some(mutation),
                        ..Default::default()
                    }),
                })),
                dynamic_metadata,
                ..Default::default()
            }
        }
    }
}

fn passthrough(req: Req) -> ProcessingResponse {
    let response = match req {
        Req::ResponseHeaders(_) => Resp::ResponseHeaders(HeadersResponse::default()),
        Req::RequestBody(_) => Resp::RequestBody(BodyResponse::default()),
        Req::ResponseBody(_) => Resp::ResponseBody(BodyResponse::default()),
        Req::RequestTrailers(_) => Resp::RequestTrailers(TrailersResponse::default()),
        Req::ResponseTrailers(_) => Resp::ResponseTrailers(TrailersResponse::default()),
        Req::RequestHeaders(_) => Resp::RequestHeaders(HeadersResponse::default()),
    };
    ProcessingResponse {
        response: Some(response),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl ExternalProcessor for ExtProc {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let engine = self.engine.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                let route = route_name(&msg);
                let resp = match msg.request {
                    Some(Req::RequestHeaders(h)) => {
                        handle_headers(&engine, route.as_deref(), &h, now_ns())
                    }
                    Some(other) => passthrough(other),
                    None => continue,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
