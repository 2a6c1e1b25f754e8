//! Node-to-node endpoints, postcard-encoded: Raft RPCs, blob fetches,
//! forwarded proposals and read-index requests.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use keel_store::{Hash, Txn, TxnOutcome};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};

use crate::network::{CLUSTER_HEADER, NODE_HEADER};
use crate::node::Node;
use crate::types::{decode, encode, NodeId, SnapshotManifest, TypeConfig};

/// How long a snapshot request waits for its blobs before answering "not ready".
const SNAPSHOT_FETCH_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

fn binary(bytes: Vec<u8>) -> Response {
    ([("content-type", "application/octet-stream")], bytes).into_response()
}

fn refuse(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

/// Checks that a request comes from a peer of this cluster (and that this
/// node is not cut off by fault injection).
fn check_peer(node: &Node, headers: &HeaderMap) -> Result<(), Response> {
    if node.faults().isolated() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "cut off by fault injection".into(),
        ));
    }
    let cluster = headers
        .get(CLUSTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if cluster != node.cluster_id() {
        return Err(refuse(
            StatusCode::CONFLICT,
            format!(
                "this node belongs to cluster {}, not {cluster:?}",
                node.cluster_id()
            ),
        ));
    }
    if let Some(sender) = headers
        .get(NODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        node.heard_from(sender, None);
    }
    Ok(())
}

/// Decodes a request from a peer of this cluster.
fn accept<T: serde::de::DeserializeOwned>(
    node: &Node,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, Response> {
    check_peer(node, headers)?;
    decode(body).map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("undecodable request: {e}")))
}

/// Opens a link (see [`crate::link`]): the connection switches from HTTP to
/// framed requests, each served by this node's router.
pub async fn link(State(node): State<Node>, mut request: axum::extract::Request) -> Response {
    if let Err(response) = check_peer(&node, request.headers()) {
        return response;
    }
    let upgrade = request.headers().get(axum::http::header::UPGRADE);
    if upgrade.and_then(|v| v.to_str().ok()) != Some(crate::link::PROTOCOL) {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            format!("a link needs Upgrade: {}", crate::link::PROTOCOL),
        );
    }
    let mut headers = HeaderMap::new();
    for name in [CLUSTER_HEADER, NODE_HEADER] {
        if let Some(value) = request.headers().get(name) {
            headers.insert(name, value.clone());
        }
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    let router = super::router(node.clone());
    let stop = node.shutdown_signal();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let stream = hyper_util::rt::TokioIo::new(upgraded);
                crate::link::serve(stream, router, headers, stop).await;
            }
            Err(error) => tracing::debug!(%error, "a peer's link upgrade failed"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (axum::http::header::CONNECTION, "upgrade"),
            (axum::http::header::UPGRADE, crate::link::PROTOCOL),
        ],
    )
        .into_response()
}

pub async fn heartbeat(State(node): State<Node>, headers: HeaderMap, body: Bytes) -> Response {
    let beat: crate::primary::Heartbeat = match accept(&node, &headers, &body) {
        Ok(beat) => beat,
        Err(response) => return response,
    };
    binary(encode(&node.on_heartbeat(beat)))
}

/// Test-only: cut this node off from its peers, or reconnect it.
pub async fn isolate(State(node): State<Node>, axum::Json(on): axum::Json<bool>) -> Response {
    match node.faults().set_isolated(on) {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(message) => refuse(StatusCode::FORBIDDEN, message),
    }
}

/// Test-only: the size of the file system the data directory is on, in
/// bytes (`null`: the real one). See `faults` and `disk`.
pub async fn disk_limit(
    State(node): State<Node>,
    axum::Json(limit): axum::Json<Option<u64>>,
) -> Response {
    match node.faults().set_disk_limit(limit) {
        Ok(()) => {
            node.disk().wake();
            (StatusCode::OK, "ok").into_response()
        }
        Err(message) => refuse(StatusCode::FORBIDDEN, message),
    }
}

/// Test-only: the current Raft log segment goes bad (appends to it fail).
pub async fn fail_log(State(node): State<Node>) -> Response {
    match node.inject_bad_log_segment() {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(error) => refuse(StatusCode::FORBIDDEN, format!("{error:#}")),
    }
}

/// How long a node low on disk space holds its answer to entries it did
/// not store: the leader resends at once, so this paces the retries.
const DISK_FULL_APPEND_HOLD: std::time::Duration = std::time::Duration::from_millis(300);

/// While this node is low on disk space it stores no entries. It still
/// handles the rest of the message as a heartbeat (the leader's vote, and
/// its commit index up to what this node holds) and answers that it matches
/// the leader up to `prev_log_id`, which is exactly what it just checked
/// (openraft's `PartialSuccess`). So it keeps following instead of calling
/// elections, and its answer still confirms the leader for linearizable
/// reads; the entries wait until space is freed.
pub async fn append(State(node): State<Node>, headers: HeaderMap, body: Bytes) -> Response {
    let request: AppendEntriesRequest<TypeConfig> = match accept(&node, &headers, &body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    node.leader_contact();
    if !request.entries.is_empty() && node.disk().admit(2 * body.len() as u64).is_err() {
        // Take the entries that fit (a follower far behind gets large
        // requests), so that it makes progress whenever anything fits.
        let room = node.disk().admissible_bytes();
        let mut taken = 0u64;
        let fitting = request
            .entries
            .iter()
            .take_while(|entry| {
                taken += 2 * encode(*entry).len() as u64;
                taken <= room
            })
            .count();
        if fitting > 0 {
            let mut request = request;
            request.entries.truncate(fitting);
            let last = request.entries.last().map(|entry| entry.log_id);
            let answer = match node.raft().append_entries(request).await {
                Ok(AppendEntriesResponse::Success) => {
                    Ok(AppendEntriesResponse::PartialSuccess(last))
                }
                other => other,
            };
            return binary(encode(&answer));
        }
        let matching = request.prev_log_id;
        let heartbeat = AppendEntriesRequest {
            entries: Vec::new(),
            ..request
        };
        let answer = match node.raft().append_entries(heartbeat).await {
            Ok(AppendEntriesResponse::Success) => {
                tokio::time::sleep(DISK_FULL_APPEND_HOLD).await;
                Ok(AppendEntriesResponse::PartialSuccess(matching))
            }
            // A conflict or a higher vote: the leader must see it as such.
            other => other,
        };
        return binary(encode(&answer));
    }
    binary(encode(&node.raft().append_entries(request).await))
}

pub async fn vote(State(node): State<Node>, headers: HeaderMap, body: Bytes) -> Response {
    let request: VoteRequest<NodeId> = match accept(&node, &headers, &body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    if node.abstains_from_votes() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node cut damage from its Raft log and abstains from elections until caught up"
                .into(),
        );
    }
    binary(encode(&node.raft().vote(request).await))
}

pub async fn prevote(State(node): State<Node>, headers: HeaderMap, body: Bytes) -> Response {
    let request: crate::election::PreVote = match accept(&node, &headers, &body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    binary(encode(&crate::election::grant(&node, &request)))
}

/// A snapshot is installed only once every blob under its root is here:
/// until then the answer is "not ready" (the leader retries) while the
/// blobs are fetched in the background.
pub async fn snapshot(State(node): State<Node>, headers: HeaderMap, body: Bytes) -> Response {
    let request: InstallSnapshotRequest<TypeConfig> = match accept(&node, &headers, &body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    node.leader_contact();
    // Fetching a snapshot's blobs needs space this node does not have.
    if let Err(message) = node.disk().admit(0) {
        return refuse(StatusCode::INSUFFICIENT_STORAGE, message);
    }
    if request.offset == 0 && request.done {
        let manifest: SnapshotManifest = match decode(&request.data) {
            Ok(manifest) => manifest,
            Err(e) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("undecodable snapshot manifest: {e}"),
                )
            }
        };
        // A new member knows no peers yet; the manifest names them all.
        let mut peers: Vec<String> = manifest
            .membership
            .membership()
            .nodes()
            .filter(|(id, _)| **id != node.id())
            .map(|(_, info)| info.addr.clone())
            .collect();
        peers.extend(node.peer_urls());
        peers.sort();
        peers.dedup();
        let progress = node
            .fetcher()
            .ensure(manifest.root, peers, SNAPSHOT_FETCH_WAIT)
            .await;
        if !progress.complete {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "fetching snapshot {}: {} blobs fetched, {} missing",
                    progress.root, progress.blobs_fetched, progress.missing
                ),
            );
        }
        let result = node.raft().install_snapshot(request).await;
        node.fetcher().finish(&manifest.root);
        return binary(encode(&result));
    }
    binary(encode(&node.raft().install_snapshot(request).await))
}

pub async fn blobs(State(node): State<Node>, headers: HeaderMap, body: Bytes) -> Response {
    let hashes: Vec<Hash> = match accept(&node, &headers, &body) {
        Ok(hashes) => hashes,
        Err(response) => return response,
    };
    let store = node.store().clone();
    match tokio::task::spawn_blocking(move || crate::fetch::serve_blobs(&store, &hashes)).await {
        Ok(bytes) => binary(bytes),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A batch forwarded by a follower: committed here, with this node's own
/// writes, only if this node leads (never forwarded again, so a stale view
/// cannot make a loop).
pub async fn propose(State(node): State<Node>, headers: HeaderMap, body: Bytes) -> Response {
    let txns: Vec<Txn> = match accept(&node, &headers, &body) {
        Ok(txns) => txns,
        Err(response) => return response,
    };
    let answer: Result<Vec<TxnOutcome>, crate::proposer::ProposeError> =
        node.proposer().propose_forwarded(txns).await;
    binary(encode(&answer))
}

/// The leader's read index, for a follower serving a linearizable read
/// (from the leader's shared read-index rounds; only if this node leads).
pub async fn read_index(State(node): State<Node>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(response) = accept::<()>(&node, &headers, &body) {
        return response;
    }
    let answer: Result<Option<u64>, String> = node
        .read_index_for_follower()
        .await
        .map_err(|e| e.to_string());
    binary(encode(&answer))
}
