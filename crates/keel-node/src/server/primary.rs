//! Primary election: status (the decider's view), history, the supervisor's
//! self-check, a watch stream, and group configuration.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::cluster::forward;
use super::ApiError;
use crate::api::{GroupPrimary, PrimaryChange};
use crate::node::Node;
use crate::primary::rules::GroupConfig;
use crate::primary::validate_group;

/// How often a primary watch looks for a change.
const WATCH_POLL: Duration = Duration::from_millis(200);

/// How long a node waits for the leader's view before answering with its own.
const LEADER_VIEW_TIMEOUT: Duration = Duration::from_secs(1);

/// The decider (the leader) sees liveness; others ask it, and answer with
/// their own view when it does not answer promptly (it may be paused).
async fn from_leader(node: &Node, path: &str) -> Option<Response> {
    if node.is_leader() || node.routing().remote_leader().is_none() {
        return None;
    }
    tokio::time::timeout(
        LEADER_VIEW_TIMEOUT,
        forward(node, reqwest::Method::GET, path, None),
    )
    .await
    .ok()?
    .ok()
    .filter(|r| r.status().is_success())
}

pub async fn status(
    State(node): State<Node>,
    Path(group): Path<String>,
) -> Result<Response, ApiError> {
    validate_group(&group).map_err(ApiError::bad_request)?;
    if let Some(answer) = from_leader(&node, &format!("/v1/primary/{group}")).await {
        return Ok(answer);
    }
    Ok(Json(node.primary_status(&group)).into_response())
}

pub async fn history(
    State(node): State<Node>,
    Path(group): Path<String>,
) -> Result<Response, ApiError> {
    validate_group(&group).map_err(ApiError::bad_request)?;
    Ok(Json(node.primary_history(&group)).into_response())
}

/// Always answered locally: only this node can vouch for its own lease.
pub async fn own(
    State(node): State<Node>,
    Path(group): Path<String>,
) -> Result<Response, ApiError> {
    validate_group(&group).map_err(ApiError::bad_request)?;
    Ok(Json(node.primary_self(&group).await).into_response())
}

/// A line per change of the group's primary (as this node has applied it).
pub async fn watch(
    State(node): State<Node>,
    Path(group): Path<String>,
) -> Result<Response, ApiError> {
    validate_group(&group).map_err(ApiError::bad_request)?;
    let stream = futures::stream::unfold((node, group, None), |(node, group, last)| async move {
        loop {
            let (_, state) = node.state_machine().group(&group);
            let current = (state.primary, state.term);
            if last != Some(current) {
                let change = PrimaryChange {
                    group: group.clone(),
                    primary: state.primary,
                    term: state.term,
                    since_ms: state.since_ms,
                    reason: state.history.last().map(|d| d.reason.clone()),
                };
                let line = serde_json::to_string(&change).unwrap_or_default();
                let bytes = Bytes::from(format!("{line}\n"));
                return Some((Ok::<_, std::io::Error>(bytes), (node, group, Some(current))));
            }
            tokio::time::sleep(WATCH_POLL).await;
        }
    });
    Ok((
        [("content-type", "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

pub async fn list(State(node): State<Node>) -> Json<Vec<GroupPrimary>> {
    Json(
        node.primaries()
            .into_iter()
            .map(|(group, (primary, term))| GroupPrimary {
                group,
                primary,
                term,
            })
            .collect(),
    )
}

pub async fn set_group(
    State(node): State<Node>,
    Path(group): Path<String>,
    Json(config): Json<GroupConfig>,
) -> Result<Response, ApiError> {
    validate_group(&group).map_err(ApiError::bad_request)?;
    if !node.is_leader() {
        let body = serde_json::to_value(&config).unwrap_or_default();
        return forward(
            &node,
            reqwest::Method::PUT,
            &format!("/v1/groups/{group}"),
            Some(body),
        )
        .await;
    }
    node.set_group_config(&group, config.clone())
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(serde_json::json!({ "group": group, "config": config })).into_response())
}

pub async fn get_group(
    State(node): State<Node>,
    Path(group): Path<String>,
) -> Result<Json<GroupConfig>, ApiError> {
    validate_group(&group).map_err(ApiError::bad_request)?;
    Ok(Json(node.state_machine().group(&group).0))
}
