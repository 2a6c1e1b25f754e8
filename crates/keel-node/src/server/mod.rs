//! The HTTP endpoint of a node (axum): the client API (JSON, see
//! docs/API.md), health, cluster administration, and the internal Raft and
//! blob endpoints (postcard binary).

mod client;
mod cluster;
mod health;
mod internal;
mod primary;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use crate::api::{ErrorBody, ErrorDetail};
use crate::node::Node;
use crate::proposer::ProposeError;

/// Largest request body (a value written through the API, or a Raft batch).
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The router of a node.
pub fn router(node: Node) -> Router {
    Router::new()
        .route("/up", get(cluster::up))
        .route("/ready", get(cluster::ready))
        .route("/v1/status", get(cluster::status))
        .route("/v1/disk", get(cluster::disk))
        .route("/v1/cluster/status", get(cluster::cluster_status))
        .route("/v1/cluster/join", post(cluster::join))
        .route("/v1/cluster/members/{id}", delete(cluster::remove_member))
        .route(
            "/v1/kv/{*key}",
            get(client::get).put(client::put).delete(client::delete),
        )
        .route("/v1/ls", get(client::list_root))
        .route("/v1/ls/{*prefix}", get(client::list))
        .route("/v1/txn", post(client::txn))
        .route("/v1/watch", get(client::watch))
        .route("/v1/checkpoints", get(client::checkpoints))
        .route("/v1/diagnostics", get(health::diagnostics))
        .route("/v1/scrub", get(client::scrub))
        .route("/v1/primary", get(primary::list))
        .route("/v1/primary/{group}", get(primary::status))
        .route("/v1/primary/{group}/history", get(primary::history))
        .route("/v1/primary/{group}/self", get(primary::own))
        .route("/v1/primary/{group}/watch", get(primary::watch))
        .route(
            "/v1/groups/{group}",
            get(primary::get_group).put(primary::set_group),
        )
        .fallback(unknown_endpoint)
        .layer(axum::middleware::map_response(json_errors))
        .route(crate::primary::PATH_HEARTBEAT, post(internal::heartbeat))
        .route("/internal/debug/isolate", post(internal::isolate))
        .route("/internal/debug/disk-limit", post(internal::disk_limit))
        .route("/internal/debug/fail-log", post(internal::fail_log))
        .route(crate::link::PATH_LINK, get(internal::link))
        .route(crate::network::PATH_APPEND, post(internal::append))
        .route(crate::network::PATH_VOTE, post(internal::vote))
        .route(crate::election::PATH_PREVOTE, post(internal::prevote))
        .route(crate::network::PATH_SNAPSHOT, post(internal::snapshot))
        .route(crate::fetch::PATH_BLOBS, post(internal::blobs))
        .route(crate::proposer::PATH_PROPOSE, post(internal::propose))
        .route(crate::proposer::PATH_READ_INDEX, post(internal::read_index))
        .layer(DefaultBodyLimit::max(REQUEST_BODY_BYTES_MAX))
        .with_state(node)
}

/// A path no endpoint serves.
async fn unknown_endpoint(uri: axum::http::Uri) -> ApiError {
    let message = format!("no endpoint at {} (see docs/API.md)", uri.path());
    ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
}

/// axum answers some bad requests itself, in plain text: a key that is not
/// UTF-8, a body over the limit, a wrong method. The client API answers
/// every error in its JSON shape (docs/API.md), so those are rewritten.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response; // every answer passes here: look no further
    }
    let json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        text => text.to_string(),
    };
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            status,
            "too_large",
            format!(
                "the request body is over {} MiB, the most a value or a request may hold",
                REQUEST_BODY_BYTES_MAX >> 20
            ),
        ),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            "method_not_allowed",
            "this endpoint does not take that method (see docs/API.md)",
        ),
        s if s.is_client_error() => ApiError::new(status, "bad_request", text),
        _ => ApiError::new(status, "internal", text),
    };
    let mut rewritten = error.into_response();
    // Keep what else the answer said (`Allow` on a 405, say).
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    rewritten
}

/// Serves `node` on its configured address until the node shuts down.
pub async fn serve(node: Node) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(node.config().listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", node.config().listen))?;
    serve_on(node, listener).await
}

/// Serves `node` on an already bound listener.
pub async fn serve_on(node: Node, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    use axum::serve::ListenerExt;
    let mut shutdown = node.shutdown_signal();
    // Answers are small and written in pieces (headers, body; HTTP/2
    // frames): with Nagle's algorithm a piece could wait for the peer's
    // delayed ACK, 40 ms on Linux, which showed as the p99 of writes.
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a client connection");
        }
    });
    axum::serve(listener, router(node))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stopped| *stopped).await;
        })
        .await?;
    Ok(())
}

/// An error answer of the client API.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: ErrorDetail,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            detail: ErrorDetail {
                code: code.to_string(),
                message: message.into(),
                actual_revision: None,
            },
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// Data this node holds is damaged and could not be repaired from a
    /// peer: the request cannot be served without serving bad bytes.
    pub fn data_damaged(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "data_damaged", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.detail })).into_response()
    }
}

impl From<ProposeError> for ApiError {
    fn from(error: ProposeError) -> ApiError {
        match error {
            ProposeError::DiskFull(message) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "disk_full", message)
            }
            other => ApiError::unavailable(other.to_string()),
        }
    }
}

impl From<keel_store::StoreError> for ApiError {
    fn from(error: keel_store::StoreError) -> ApiError {
        use keel_store::StoreError as E;
        match &error {
            E::InvalidKey { .. }
            | E::NotADirectory { .. }
            | E::IsADirectory { .. }
            | E::TooLarge { .. } => ApiError::bad_request(error.to_string()),
            E::CheckpointNotFound { .. } => ApiError::not_found(error.to_string()),
            E::DiskFull { .. } => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "disk_full",
                error.to_string(),
            ),
            _ if error.is_damage() => ApiError::data_damaged(error.to_string()),
            _ => ApiError::internal(error.to_string()),
        }
    }
}
