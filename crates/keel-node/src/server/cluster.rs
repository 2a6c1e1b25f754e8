//! Health, status and membership administration.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::ApiError;
use crate::api::{ClusterStatus, JoinRequest, JoinResponse, NodeStatus};
use crate::node::Node;
use crate::types::NodeId;

/// `/up`: the process is alive and answering.
pub async fn up() -> &'static str {
    "up\n"
}

/// `/ready`: caught up and serving (503 with the reason otherwise).
pub async fn ready(State(node): State<Node>) -> Response {
    match node.readiness() {
        Ok(()) => Json(serde_json::json!({ "ready": true })).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

pub async fn status(State(node): State<Node>) -> Json<NodeStatus> {
    Json(node.status())
}

/// `/v1/disk`: free space, the reserve, low-space mode and reclaim.
pub async fn disk(State(node): State<Node>) -> Json<crate::disk::DiskStatus> {
    Json(node.disk_status())
}

/// Answered by the leader when one is known (it alone sees replication
/// progress and contact times), else by this node.
pub async fn cluster_status(State(node): State<Node>) -> Response {
    if !node.is_leader() && node.routing().remote_leader().is_some() {
        if let Ok(response) = forward(&node, reqwest::Method::GET, "/v1/cluster/status", None).await
        {
            if response.status().is_success() {
                return response;
            }
        }
    }
    Json::<ClusterStatus>(node.cluster_status().await).into_response()
}

/// Membership changes run on the leader; any node forwards them there.
pub(super) async fn forward(
    node: &Node,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Response, ApiError> {
    if node.faults().isolated() {
        return Err(ApiError::unavailable(
            "cut off from the cluster by fault injection",
        ));
    }
    let (_, leader) = node
        .routing()
        .remote_leader()
        .ok_or_else(|| ApiError::unavailable("no leader is known; retry shortly"))?;
    let mut request = node.routing().http.request(
        method,
        format!("{}{path}", leader.addr.trim_end_matches('/')),
    );
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| {
        ApiError::unavailable(format!(
            "forwarding to the leader at {}: {}",
            leader.addr,
            crate::client::http_failure(e)
        ))
    })?;
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let bytes = response
        .bytes()
        .await
        .map_err(|e| ApiError::unavailable(crate::client::http_failure(e)))?;
    Ok((status, [("content-type", "application/json")], bytes).into_response())
}

pub async fn join(
    State(node): State<Node>,
    Json(request): Json<JoinRequest>,
) -> Result<Response, ApiError> {
    if !node.is_leader() {
        return forward(
            &node,
            reqwest::Method::POST,
            "/v1/cluster/join",
            Some(serde_json::to_value(&request).unwrap_or_default()),
        )
        .await;
    }
    let answer: JoinResponse = node.admit(request).await.map_err(|reason| {
        let code = if reason.contains("token") {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        ApiError::new(code, "join_refused", reason)
    })?;
    Ok(Json(answer).into_response())
}

pub async fn remove_member(
    State(node): State<Node>,
    Path(id): Path<NodeId>,
) -> Result<Response, ApiError> {
    if !node.is_leader() {
        return forward(
            &node,
            reqwest::Method::DELETE,
            &format!("/v1/cluster/members/{id}"),
            None,
        )
        .await;
    }
    node.remove_member(id)
        .await
        .map_err(ApiError::bad_request)?;
    Ok(Json(serde_json::json!({ "removed": id })).into_response())
}
