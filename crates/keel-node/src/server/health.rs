//! Diagnostics: this node's checks, or every member's.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::node::Node;

#[derive(Deserialize)]
pub struct DiagnosticsQuery {
    /// Only this node (what a node asks of its peers).
    #[serde(default)]
    local: bool,
}

pub async fn diagnostics(
    State(node): State<Node>,
    Query(query): Query<DiagnosticsQuery>,
) -> Response {
    if query.local {
        Json(node.diagnostics()).into_response()
    } else {
        Json(node.cluster_diagnostics().await).into_response()
    }
}
