//! An HTTP client for a Keel node's API (used by the CLI, tests and bench).

use std::time::Duration;

use bytes::Bytes;
use keel_store::TxnOutcome;
use reqwest::StatusCode;

use crate::health::diag::{ClusterDiagnostics, NodeDiagnostics};
use crate::primary::rules::{Decision, GroupConfig};
use crate::primary::{PrimaryStatus, SelfStatus};

use crate::api::{
    ClusterStatus, ErrorBody, GroupPrimary, JoinRequest, JoinResponse, KeyValue, ListEntry,
    NodeStatus, PrimaryChange, TxnRequest, WriteResult,
};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached at all.
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// The node answered with an error.
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        actual_revision: Option<u64>,
    },
}

impl ClientError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Api { status: 404, .. })
    }
}

/// A client of one node.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
}

/// A value read raw, with its revisions.
#[derive(Clone, Debug)]
pub struct Value {
    pub bytes: Bytes,
    pub revision: u64,
    pub store_revision: u64,
}

/// The authority of an `http://HOST:PORT` endpoint, and the address to
/// dial (port 80 when it names none).
pub fn http_address(endpoint: &str) -> Result<(http::uri::Authority, String), String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("bad endpoint {endpoint:?}: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(authority)) => {
            let port = authority.port_u16().unwrap_or(80);
            let address = format!("{}:{port}", authority.host());
            Ok((authority.clone(), address))
        }
        _ => Err(format!(
            "bad endpoint {endpoint:?}: expected http://HOST:PORT"
        )),
    }
}

/// The URL path of `key` under `/v1/kv/`: each byte outside the unreserved
/// set percent-escaped, segments still separated by `/`.
pub fn path_escape(key: &str) -> String {
    use std::fmt::Write;
    let key = key.trim_start_matches('/');
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(char::from(b))
            }
            _ => write!(out, "%{b:02X}").expect("writing to a String cannot fail"),
        }
    }
    out
}

/// Why an HTTP call failed, in words an operator can act on. reqwest's own
/// message says only that sending failed and names the URL; the cause that
/// tells what to do (refused, timed out, reset, a bad URL) is at the end of
/// its chain of sources.
pub fn http_failure(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut deepest = None;
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        deepest = Some(cause.to_string());
        source = cause.source();
    }
    let what = if error.is_builder() {
        "not a valid endpoint (expected http://HOST:PORT)".to_string()
    } else {
        error.to_string()
    };
    match deepest {
        Some(cause) => format!("{what}: {cause}"),
        None => what,
    }
}

impl Client {
    pub fn new(endpoint: &str) -> Client {
        Client::with_http(crate::node::http_client(), endpoint)
    }

    pub fn with_http(http: reqwest::Client, endpoint: &str) -> Client {
        Client {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn unreachable(&self, error: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason: http_failure(error),
        }
    }

    fn undecodable(&self, error: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason: format!("undecodable answer: {}", http_failure(error)),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        self.send_streaming(request.timeout(REQUEST_TIMEOUT)).await
    }

    /// Sends without the default timeout (a stream lasts as long as it lasts).
    async fn send_streaming(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap_or_default();
        Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(error) => ClientError::Api {
                status,
                code: error.error.code,
                message: error.error.message,
                actual_revision: error.error.actual_revision,
            },
            Err(_) => ClientError::Api {
                status,
                code: "http".into(),
                message: format!(
                    "{} answered {status}: {}",
                    self.endpoint,
                    String::from_utf8_lossy(&body)
                ),
                actual_revision: None,
            },
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.send(request).await?;
        response.json().await.map_err(|e| self.undecodable(e))
    }

    /// Reads a value (linearizable unless `stale`).
    pub async fn get(&self, key: &str, stale: bool) -> Result<Value, ClientError> {
        let request = self
            .http
            .get(self.url(&format!("/v1/kv/{}", path_escape(key))))
            .query(&[("stale", stale)]);
        let response = self.send(request).await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let (revision, store_revision) = (header("keel-mod-revision"), header("keel-revision"));
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        Ok(Value {
            bytes,
            revision,
            store_revision,
        })
    }

    /// Reads a value as JSON (with its metadata).
    pub async fn get_json(&self, key: &str, stale: bool) -> Result<KeyValue, ClientError> {
        self.json(
            self.http
                .get(self.url(&format!("/v1/kv/{}", path_escape(key))))
                .query(&[("stale", stale), ("json", true)]),
        )
        .await
    }

    /// Writes a value; with `if_revision`, only if the key is at that revision.
    pub async fn put(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        if_revision: Option<u64>,
    ) -> Result<WriteResult, ClientError> {
        let mut request = self
            .http
            .put(self.url(&format!("/v1/kv/{}", path_escape(key))))
            .body(value.into());
        if let Some(revision) = if_revision {
            request = request.query(&[("if_revision", revision)]);
        }
        self.json(request).await
    }

    pub async fn delete(&self, key: &str, prefix: bool) -> Result<WriteResult, ClientError> {
        self.json(
            self.http
                .delete(self.url(&format!("/v1/kv/{}", path_escape(key))))
                .query(&[("prefix", prefix)]),
        )
        .await
    }

    pub async fn list(
        &self,
        prefix: &str,
        recursive: bool,
        stale: bool,
    ) -> Result<Vec<ListEntry>, ClientError> {
        let path = if prefix.trim_matches('/').is_empty() {
            "/v1/ls".to_string()
        } else {
            format!("/v1/ls/{}", path_escape(prefix))
        };
        self.json(
            self.http
                .get(self.url(&path))
                .query(&[("recursive", recursive), ("stale", stale)]),
        )
        .await
    }

    pub async fn txn(&self, request: &TxnRequest) -> Result<TxnOutcome, ClientError> {
        self.json(self.http.post(self.url("/v1/txn")).json(request))
            .await
    }

    pub async fn checkpoints(&self) -> Result<Vec<keel_store::Checkpoint>, ClientError> {
        self.json(self.http.get(self.url("/v1/checkpoints"))).await
    }

    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        self.json(self.http.get(self.url("/v1/status"))).await
    }

    /// The node's background scrub: progress, repairs, critical blobs.
    pub async fn scrub_status(&self) -> Result<crate::scrub::ScrubStatus, ClientError> {
        self.json(self.http.get(self.url("/v1/scrub"))).await
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        self.json(self.http.get(self.url("/v1/cluster/status")))
            .await
    }

    pub async fn ready(&self) -> Result<bool, ClientError> {
        let response = self
            .http
            .get(self.url("/ready"))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok(response.status() == StatusCode::OK)
    }

    pub async fn join(&self, request: &JoinRequest) -> Result<JoinResponse, ClientError> {
        self.json(self.http.post(self.url("/v1/cluster/join")).json(request))
            .await
    }

    pub async fn remove_member(&self, id: u64) -> Result<serde_json::Value, ClientError> {
        self.json(
            self.http
                .delete(self.url(&format!("/v1/cluster/members/{id}"))),
        )
        .await
    }

    /// Streams change events (one JSON object per line) to `each` until it
    /// returns false or the stream ends.
    pub async fn watch(
        &self,
        prefix: &str,
        from_revision: Option<u64>,
        each: impl FnMut(serde_json::Value) -> bool,
    ) -> Result<(), ClientError> {
        let mut request = self
            .http
            .get(self.url("/v1/watch"))
            .query(&[("prefix", prefix)]);
        if let Some(revision) = from_revision {
            request = request.query(&[("from_revision", revision)]);
        }
        self.lines(request, each).await
    }

    /// Feeds each line of an NDJSON answer to `each` until it returns false
    /// or the stream ends.
    async fn lines<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        mut each: impl FnMut(T) -> bool,
    ) -> Result<(), ClientError> {
        use futures::StreamExt;
        let response = self.send_streaming(request).await?;
        let mut pending = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.unreachable(e))?;
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(item) = serde_json::from_slice(&line) {
                    if !each(item) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ primary

    /// Every group with its primary and term.
    pub async fn primaries(&self) -> Result<Vec<GroupPrimary>, ClientError> {
        self.json(self.http.get(self.url("/v1/primary"))).await
    }

    /// A group's primary, term and candidates (the decider's view).
    pub async fn primary(&self, group: &str) -> Result<PrimaryStatus, ClientError> {
        self.json(
            self.http
                .get(self.url(&format!("/v1/primary/{}", path_escape(group)))),
        )
        .await
    }

    /// A group's decisions, oldest first.
    pub async fn primary_history(&self, group: &str) -> Result<Vec<Decision>, ClientError> {
        self.json(
            self.http
                .get(self.url(&format!("/v1/primary/{}/history", path_escape(group)))),
        )
        .await
    }

    /// Whether this node holds the group's primary role, with its lease.
    pub async fn primary_self(
        &self,
        group: &str,
        timeout: Duration,
    ) -> Result<SelfStatus, ClientError> {
        let request = self
            .http
            .get(self.url(&format!("/v1/primary/{}/self", path_escape(group))))
            .timeout(timeout);
        let response = self.send_streaming(request).await?;
        response.json().await.map_err(|e| self.undecodable(e))
    }

    /// Streams a line per change of the group's primary.
    pub async fn primary_watch(
        &self,
        group: &str,
        each: impl FnMut(PrimaryChange) -> bool,
    ) -> Result<(), ClientError> {
        let request = self
            .http
            .get(self.url(&format!("/v1/primary/{}/watch", path_escape(group))));
        self.lines(request, each).await
    }

    pub async fn group_config(&self, group: &str) -> Result<GroupConfig, ClientError> {
        self.json(
            self.http
                .get(self.url(&format!("/v1/groups/{}", path_escape(group)))),
        )
        .await
    }

    pub async fn set_group_config(
        &self,
        group: &str,
        config: &GroupConfig,
    ) -> Result<serde_json::Value, ClientError> {
        self.json(
            self.http
                .put(self.url(&format!("/v1/groups/{}", path_escape(group))))
                .json(config),
        )
        .await
    }

    /// The node's disk: free space, reserve, low-space mode, reclaim.
    pub async fn disk_status(&self) -> Result<crate::disk::DiskStatus, ClientError> {
        self.json(self.http.get(self.url("/v1/disk"))).await
    }

    /// Makes the node see its data directory on a file system of `limit`
    /// bytes, or (with `None`) on the real one (fault injection: only on a
    /// node started with `KEEL_FAULT_INJECTION=1`).
    pub async fn set_disk_limit(&self, limit: Option<u64>) -> Result<(), ClientError> {
        self.send(
            self.http
                .post(self.url("/internal/debug/disk-limit"))
                .json(&limit),
        )
        .await
        .map(|_| ())
    }

    /// Every member's diagnostics (asked of this node).
    pub async fn diagnostics(&self) -> Result<ClusterDiagnostics, ClientError> {
        self.json(self.http.get(self.url("/v1/diagnostics"))).await
    }

    /// This node's diagnostics only.
    pub async fn node_diagnostics(&self) -> Result<NodeDiagnostics, ClientError> {
        self.json(self.http.get(self.url("/v1/diagnostics?local=true")))
            .await
    }

    /// Makes the node's current Raft log segment fail every append (fault
    /// injection, like [`Client::isolate`]).
    pub async fn fail_log(&self) -> Result<(), ClientError> {
        self.send(self.http.post(self.url("/internal/debug/fail-log")))
            .await
            .map(|_| ())
    }

    /// Cuts the node off from its peers, or restores it (fault injection:
    /// only on a node started with `KEEL_FAULT_INJECTION=1`).
    pub async fn isolate(&self, on: bool) -> Result<(), ClientError> {
        self.send(
            self.http
                .post(self.url("/internal/debug/isolate"))
                .json(&on),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::path_escape;

    #[test]
    fn key_paths_keep_slashes_and_escape_everything_else_outside_the_unreserved_set() {
        assert_eq!(path_escape("bench/0000012345"), "bench/0000012345");
        assert_eq!(path_escape("/a b/c%d/é"), "a%20b/c%25d/%C3%A9");
        assert_eq!(path_escape("x?y#z"), "x%3Fy%23z");
    }
}
