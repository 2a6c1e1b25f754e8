//! The client API: keys, listings, transactions, watches, checkpoints.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use keel_store::object::INLINE_VALUE_BYTES_MAX;
use keel_store::{
    ChangeEvent, ChangeKind, Compare, Entry, Op, Snapshot, StoreError, Txn, TxnOutcome,
};
use serde::Deserialize;

use super::ApiError;
use crate::api::{JsonValue, KeyValue, ListEntry, TxnRequest, WriteResult};
use crate::node::Node;
use crate::scrub::{ReadError, ScrubStatus};
use crate::state_machine::RESERVED_PREFIX;

/// Header: revision of the last change to the key read.
pub const HEADER_MOD_REVISION: &str = "keel-mod-revision";
/// Header: the store's revision when a read was served.
pub const HEADER_REVISION: &str = "keel-revision";

fn check_user_key(key: &str) -> Result<(), ApiError> {
    let key = key.trim_start_matches('/');
    if key == RESERVED_PREFIX || key.starts_with(&format!("{RESERVED_PREFIX}/")) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "reserved",
            format!("keys under {RESERVED_PREFIX}/ belong to the cluster itself"),
        ));
    }
    Ok(())
}

/// A prefix delete must name a prefix: with none (or only slashes) it would
/// empty the whole store, the cluster's own keys under `.keel/` included
/// (its join token, the next node id, the primaries' state).
fn check_delete_prefix(prefix: &str) -> Result<(), ApiError> {
    check_user_key(prefix)?;
    if prefix.trim_matches('/').is_empty() {
        return Err(ApiError::bad_request(
            "a prefix delete needs a prefix: deleting everything would also delete the \
             cluster's own keys under .keel/; delete each top-level prefix instead",
        ));
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
pub struct ReadQuery {
    /// Serve from this node's state without a read-index round.
    #[serde(default)]
    stale: bool,
    /// Answer JSON instead of the raw value.
    #[serde(default)]
    json: bool,
    /// Read a retained checkpoint (local) instead of the current state.
    checkpoint: Option<u64>,
    #[serde(default)]
    recursive: bool,
}

async fn view(node: &Node, query: &ReadQuery) -> Result<Snapshot, ApiError> {
    if let Some(sequence) = query.checkpoint {
        return Ok(node.store().at_checkpoint(sequence)?);
    }
    if !query.stale {
        node.read_barrier().await?;
    }
    Ok(node.store().snapshot())
}

/// Runs a read of this node's store, repairing from peers any damaged blob
/// it meets (see `scrub`); damage that cannot be repaired is
/// `500 data_damaged`, naming the key and the blob.
async fn read_repairing<T, F>(node: &Node, key: &str, read: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: Fn() -> Result<T, StoreError> + Send + Sync + 'static,
{
    let peers = node.peer_urls();
    match node.scrubber().read_repairing(&peers, key, read).await {
        Ok(value) => Ok(value),
        Err(ReadError::Store(error)) => Err(error.into()),
        Err(ReadError::Failed(reason)) => Err(ApiError::internal(reason)),
        Err(ReadError::Damaged {
            blob,
            damage,
            reason,
        }) => Err(ApiError::data_damaged(format!(
            "{}: cannot be read on node {}: blob {blob} is {} here, and {reason}. No damaged bytes are \
             served. GET /v1/scrub lists every affected key; on the stopped node, \
             `keel fsck --data-dir DIR --repair` moves it to lost+found/",
            if key.is_empty() { "/" } else { key },
            node.id(),
            damage.describe(),
        ))),
    }
}

pub async fn get(
    State(node): State<Node>,
    Path(key): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    check_user_key(&key)?;
    let view = view(&node, &query).await?;
    let (reader, read_key) = (view.clone(), key.clone());
    let read = move || -> Result<Option<(Entry, Bytes)>, StoreError> {
        let Some(entry) = reader.get(&read_key)? else {
            return Ok(None);
        };
        let value = if entry.value.is_dir() {
            Bytes::new()
        } else {
            reader.read(&entry.value)?
        };
        Ok(Some((entry, value)))
    };
    let (entry, value) = read_repairing(&node, &key, read)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("key not found: {key}")))?;
    if entry.value.is_dir() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "is_a_directory",
            format!("{key} is a directory; list it with GET /v1/ls/{key}"),
        ));
    }
    if query.json {
        return Ok(Json(KeyValue {
            key,
            revision: entry.revision,
            size: value.len() as u64,
            value: JsonValue::from_bytes(&value),
            store_revision: view.revision(),
        })
        .into_response());
    }
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_MOD_REVISION, HeaderValue::from(entry.revision));
    headers.insert(HEADER_REVISION, HeaderValue::from(view.revision()));
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok((headers, Body::from(value)).into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct WriteQuery {
    /// Compare-and-set: apply only if the key's revision is this (0: absent).
    if_revision: Option<u64>,
    /// Delete the key and everything below it.
    #[serde(default)]
    prefix: bool,
}

fn guarded(key: &str, query: &WriteQuery, op: Op) -> Txn {
    Txn {
        compare: query
            .if_revision
            .map(|revision| Compare {
                key: key.to_string(),
                mod_revision: revision,
            })
            .into_iter()
            .collect(),
        ops: vec![op],
    }
}

fn write_answer(outcome: TxnOutcome, key: &str) -> Result<Json<WriteResult>, ApiError> {
    match outcome {
        TxnOutcome::Applied {
            revision,
            changed,
            deleted,
        } => Ok(Json(WriteResult {
            revision,
            changed,
            deleted,
        })),
        TxnOutcome::CompareFailed {
            key,
            expected,
            actual,
        } => {
            let mut error = ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "compare_failed",
                format!("{key}: expected revision {expected}, found {actual}"),
            );
            error.detail.actual_revision = Some(actual);
            Err(error)
        }
        TxnOutcome::Rejected { reason } => Err(ApiError::bad_request(format!("{key}: {reason}"))),
    }
}

pub async fn put(
    State(node): State<Node>,
    Path(key): Path<String>,
    Query(query): Query<WriteQuery>,
    body: Bytes,
) -> Result<Json<WriteResult>, ApiError> {
    check_user_key(&key)?;
    // A small body is a slice of the connection's read buffer; the store and
    // the watch history keep the value for a long time, and holding the
    // slice would keep that whole buffer alive with it (in the cluster
    // benchmark, the leader's memory doubled). Such values get their own copy.
    let value = if body.len() <= INLINE_VALUE_BYTES_MAX {
        Bytes::copy_from_slice(&body)
    } else {
        body
    };
    let txn = guarded(
        &key,
        &query,
        Op::Put {
            key: key.clone(),
            value,
        },
    );
    write_answer(node.proposer().propose(txn).await?, &key)
}

pub async fn delete(
    State(node): State<Node>,
    Path(key): Path<String>,
    Query(query): Query<WriteQuery>,
) -> Result<Json<WriteResult>, ApiError> {
    check_user_key(&key)?;
    let op = if query.prefix {
        check_delete_prefix(&key)?;
        Op::DeletePrefix {
            prefix: key.clone(),
        }
    } else {
        Op::Delete { key: key.clone() }
    };
    let answer = write_answer(
        node.proposer().propose(guarded(&key, &query, op)).await?,
        &key,
    )?;
    if !answer.changed {
        return Err(ApiError::not_found(format!("nothing to delete at {key}")));
    }
    Ok(answer)
}

pub async fn list_root(
    State(node): State<Node>,
    Query(query): Query<ReadQuery>,
) -> Result<Json<Vec<ListEntry>>, ApiError> {
    list_at(node, String::new(), query).await
}

pub async fn list(
    State(node): State<Node>,
    Path(prefix): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<Json<Vec<ListEntry>>, ApiError> {
    check_user_key(&prefix)?;
    list_at(node, prefix, query).await
}

async fn list_at(
    node: Node,
    prefix: String,
    query: ReadQuery,
) -> Result<Json<Vec<ListEntry>>, ApiError> {
    let view = view(&node, &query).await?;
    let recursive = query.recursive;
    let listed = prefix.clone();
    let read = move || -> Result<Option<Vec<keel_store::ListItem>>, StoreError> {
        if view.is_dir(&listed)? {
            return Ok(Some(view.list(&listed, recursive)?));
        }
        Ok(view.get(&listed)?.map(|entry| {
            vec![keel_store::ListItem {
                key: listed.trim_start_matches('/').to_string(),
                kind: keel_store::ItemKind::Value,
                size: entry.value.size().unwrap_or(0),
                revision: entry.revision,
            }]
        }))
    };
    let items = read_repairing(&node, &prefix, read)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no such key or directory: {prefix}")))?;
    let reserved = format!("{RESERVED_PREFIX}/");
    Ok(Json(
        items
            .into_iter()
            .filter(|i| i.key != RESERVED_PREFIX && !i.key.starts_with(&reserved))
            .map(|i| ListEntry {
                key: i.key,
                kind: i.kind,
                size: i.size,
                revision: i.revision,
            })
            .collect(),
    ))
}

pub async fn txn(
    State(node): State<Node>,
    Json(request): Json<TxnRequest>,
) -> Result<Json<TxnOutcome>, ApiError> {
    let txn = request.into_txn().map_err(ApiError::bad_request)?;
    for op in &txn.ops {
        if let Op::DeletePrefix { prefix } = op {
            check_delete_prefix(prefix)?;
        }
    }
    for key in txn
        .compare
        .iter()
        .map(|c| c.key.as_str())
        .chain(txn.ops.iter().map(|op| match op {
            Op::Put { key, .. } | Op::PutStored { key, .. } | Op::Delete { key } => key.as_str(),
            Op::DeletePrefix { prefix } => prefix.as_str(),
        }))
    {
        check_user_key(key)?;
    }
    Ok(Json(node.proposer().propose(txn).await?))
}

#[derive(Debug, Default, Deserialize)]
pub struct WatchQuery {
    /// Only events for this key or below it (default: everything).
    #[serde(default)]
    prefix: String,
    /// First revision to report (default: the next one).
    from_revision: Option<u64>,
}

fn concerns(event: &ChangeEvent, prefix: &str) -> bool {
    if prefix.is_empty() {
        return !event.key.starts_with(RESERVED_PREFIX);
    }
    let under = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
    match event.kind {
        ChangeKind::DeletePrefix => {
            under(prefix, &event.key) || under(&event.key, prefix) || event.key.is_empty()
        }
        _ => under(&event.key, prefix),
    }
}

/// Streams change events as JSON lines (NDJSON), backlog first.
pub async fn watch(
    State(node): State<Node>,
    Query(query): Query<WatchQuery>,
) -> Result<Response, ApiError> {
    let prefix = query
        .prefix
        .trim_start_matches('/')
        .trim_end_matches('/')
        .to_string();
    check_user_key(&prefix)?;
    let from = query
        .from_revision
        .unwrap_or_else(|| node.store().revision() + 1);
    let (backlog, live) = node
        .state_machine()
        .events()
        .subscribe(from)
        .map_err(|e| ApiError::new(StatusCode::GONE, "compacted", e.to_string()))?;
    let line = |event: &ChangeEvent| {
        let mut json = serde_json::to_value(event).unwrap_or_default();
        if let (Some(object), Some(value)) = (json.as_object_mut(), &event.value) {
            object.remove("value");
            let value = JsonValue::from_bytes(value);
            if let Some(text) = value.value {
                object.insert("value".into(), text.into());
            }
            if let Some(encoded) = value.value_base64 {
                object.insert("value_base64".into(), encoded.into());
            }
        }
        Bytes::from(format!("{json}\n"))
    };
    let first: Vec<Result<Bytes, std::io::Error>> = backlog
        .iter()
        .filter(|e| concerns(e, &prefix))
        .map(|e| Ok(line(e)))
        .collect();
    let live_prefix = prefix.clone();
    let stream = tokio_stream::wrappers::BroadcastStream::new(live)
        .map(move |batch| match batch {
            Ok(events) => Ok(events
                .iter()
                .filter(|e| e.revision >= from && concerns(e, &live_prefix))
                .map(&line)
                .fold(Vec::new(), |mut out, l| {
                    out.extend_from_slice(&l);
                    out
                })),
            Err(_) => Err(std::io::Error::other(
                "watcher fell too far behind; watch again from the last revision seen",
            )),
        })
        .map(|chunk| chunk.map(Bytes::from));
    let body = Body::from_stream(futures::stream::iter(first).chain(stream));
    Ok(([("content-type", "application/x-ndjson")], body).into_response())
}

/// `GET /v1/scrub`: the background scrub's progress, repairs and critical blobs.
pub async fn scrub(State(node): State<Node>) -> Json<ScrubStatus> {
    Json(node.scrub_status())
}

pub async fn checkpoints(State(node): State<Node>) -> Json<Vec<keel_store::Checkpoint>> {
    let mut checkpoints = node.store().checkpoints();
    checkpoints.reverse();
    Json(checkpoints)
}
