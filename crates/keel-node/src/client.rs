//! An HTTP client for a Keel node's API (used by the CLI, tests and bench).

use std::time::Duration;

use bytes::Bytes;
use keel_store::TxnOutcome;
use reqwest::StatusCode;

use crate::api::{
    ClusterStatus, ErrorBody, JoinRequest, JoinResponse, KeyValue, ListEntry, NodeStatus,
    TxnRequest, WriteResult,
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

fn path_escape(key: &str) -> String {
    key.trim_start_matches('/')
        .split('/')
        .map(|segment| {
            segment
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
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

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request.timeout(REQUEST_TIMEOUT).send().await.map_err(|e| {
            ClientError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: e.to_string(),
            }
        })?;
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
        response.json().await.map_err(|e| ClientError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason: format!("undecodable answer: {e}"),
        })
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
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: e.to_string(),
            })?;
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
            .map_err(|e| ClientError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: e.to_string(),
            })?;
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
        mut each: impl FnMut(serde_json::Value) -> bool,
    ) -> Result<(), ClientError> {
        let mut request = self
            .http
            .get(self.url("/v1/watch"))
            .query(&[("prefix", prefix)]);
        if let Some(revision) = from_revision {
            request = request.query(&[("from_revision", revision)]);
        }
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason: e.to_string(),
        })?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body = response.bytes().await.unwrap_or_default();
            let error: Option<ErrorBody> = serde_json::from_slice(&body).ok();
            return Err(ClientError::Api {
                status,
                code: error
                    .as_ref()
                    .map_or("http".into(), |e| e.error.code.clone()),
                message: error.map_or_else(
                    || String::from_utf8_lossy(&body).into_owned(),
                    |e| e.error.message,
                ),
                actual_revision: None,
            });
        }
        let mut pending = Vec::new();
        let mut stream = response.bytes_stream();
        use futures::StreamExt;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ClientError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: e.to_string(),
            })?;
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(event) = serde_json::from_slice(&line) {
                    if !each(event) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}
