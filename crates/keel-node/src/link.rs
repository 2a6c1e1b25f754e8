//! Links: one long-lived TCP connection to each peer that carries the
//! node-to-node requests (Raft entries and votes, forwarded writes, read
//! indexes, pre-votes) as framed messages.
//!
//! These requests are small and frequent: several per Raft entry. Sent as
//! HTTP/1.1 requests, each paid for a client request object, a connection
//! pool checkout and a hop to hyper's connection task on one side, and
//! request parsing and a per-connection task on the other; on the two CPUs
//! the three benchmark nodes share, that was about a fifth of their CPU in a
//! profile under writes; links cut the CPU per write by about a tenth.
//!
//! A link opens as an HTTP upgrade on the node's one port
//! (`GET /internal/link`, `Upgrade: keel-link/1`, checked like every
//! internal request: same cluster, not cut off by fault injection), so it
//! needs no port or address of its own. From then on both sides write
//! frames. The receiving node hands each request to its own router, as if it
//! had arrived over HTTP, so every endpoint keeps one implementation and
//! one set of checks; only the bytes on the wire differ.
//!
//! A frame is `len: u32 LE | crc32c(payload): u32 LE | payload`, where the
//! payload is `id: u64 LE` and then `path_len: u16 LE | path | body` (a
//! request) or `status: u16 LE | body` (its answer, with the same id).
//! Answers may come in any order. A frame whose checksum fails, or whose
//! length exceeds [`FRAME_PAYLOAD_BYTES_MAX`], ends the link: every request
//! waiting on it fails as a network error and the next call dials again.
//!
//! Each side has one writer task per link, fed by a channel: a caller that
//! gives up (a timeout, a dropped future) can never leave half a frame on
//! the wire, and frames that queue up meanwhile go out in one write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

use crate::network::{CLUSTER_HEADER, NODE_HEADER};
use crate::types::NodeId;

/// The path a link opens on.
pub const PATH_LINK: &str = "/internal/link";
/// The `Upgrade` protocol token of this framing.
pub const PROTOCOL: &str = "keel-link/1";
/// Largest frame payload: the largest request body and its header.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = crate::server::REQUEST_BODY_BYTES_MAX + 64 * 1024;
/// How long dialling a peer and upgrading the connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Frames a writer task may have queued before senders wait.
const WRITE_QUEUE_FRAMES_MAX: usize = 1024;
/// A writer task gathers queued frames into one write up to this size.
const WRITE_GATHER_BYTES_MAX: usize = 256 * 1024;
const FRAME_HEADER_BYTES: usize = 8;

/// How a call over a link failed before the peer answered it.
#[derive(Debug)]
pub enum LinkError {
    /// The peer could not be reached or refused the link (down, cut off):
    /// callers back off.
    Unreachable(String),
    /// The link broke or timed out: callers may retry at once.
    Network(String),
}

/// A request or an answer on a link.
struct Frame {
    id: u64,
    head: Head,
    body: Bytes,
}

/// What follows a frame's id: a request's path, or an answer's status.
enum Head {
    Path(String),
    Status(u16),
}

impl Frame {
    fn encode(&self) -> Bytes {
        let head_len = match &self.head {
            Head::Path(path) => 2 + path.len(),
            Head::Status(_) => 2,
        };
        let payload_len = 8 + head_len + self.body.len();
        let mut out = BytesMut::with_capacity(FRAME_HEADER_BYTES + payload_len);
        out.put_u32_le(payload_len as u32);
        out.put_u32_le(0); // the checksum, filled in below
        out.put_u64_le(self.id);
        match &self.head {
            Head::Path(path) => {
                // Paths are this crate's own constants, far below 64 KiB.
                out.put_u16_le(path.len() as u16);
                out.put_slice(path.as_bytes());
            }
            Head::Status(status) => out.put_u16_le(*status),
        }
        out.put_slice(&self.body);
        let crc = crc32c::crc32c(&out[FRAME_HEADER_BYTES..]);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out.freeze()
    }

    /// Reads one frame's id and the rest of its payload, checksum verified;
    /// `None` at a clean end of stream between frames.
    async fn read_payload<R: AsyncRead + Unpin>(
        reader: &mut R,
    ) -> std::io::Result<Option<(u64, Bytes)>> {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        match reader.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        // An id and a path length or status, at least.
        if !(10..=FRAME_PAYLOAD_BYTES_MAX).contains(&len) {
            return Err(invalid(format!(
                "a frame of {len} bytes (10 to {FRAME_PAYLOAD_BYTES_MAX})"
            )));
        }
        let mut payload = BytesMut::zeroed(len);
        reader.read_exact(&mut payload).await?;
        if crc32c::crc32c(&payload) != crc {
            return Err(invalid("a frame failed its checksum".into()));
        }
        let mut payload = payload.freeze();
        let id = payload.get_u64_le();
        Ok(Some((id, payload)))
    }

    /// Reads a request.
    async fn read_request<R: AsyncRead + Unpin>(
        reader: &mut R,
    ) -> std::io::Result<Option<(u64, String, Bytes)>> {
        let Some((id, mut payload)) = Frame::read_payload(reader).await? else {
            return Ok(None);
        };
        let path_len = payload.get_u16_le() as usize;
        if path_len > payload.len() {
            return Err(invalid("a request's path overruns its frame".into()));
        }
        let path = payload.split_to(path_len);
        let path = std::str::from_utf8(&path)
            .map_err(|_| invalid("a request's path is not UTF-8".into()))?;
        Ok(Some((id, path.to_string(), payload)))
    }

    /// Reads an answer.
    async fn read_answer<R: AsyncRead + Unpin>(
        reader: &mut R,
    ) -> std::io::Result<Option<(u64, u16, Bytes)>> {
        let Some((id, mut payload)) = Frame::read_payload(reader).await? else {
            return Ok(None);
        };
        let status = payload.get_u16_le();
        Ok(Some((id, status, payload)))
    }
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Writes every frame sent to `frames` until all senders are gone, then
/// closes the stream (the peer reads the end and closes its side).
fn spawn_writer<W: AsyncWrite + Unpin + Send + 'static>(
    mut writer: W,
    mut frames: mpsc::Receiver<Bytes>,
    on_error: impl FnOnce(std::io::Error) + Send + 'static,
) {
    tokio::spawn(async move {
        let mut gathered = BytesMut::new();
        while let Some(frame) = frames.recv().await {
            let mut result = if frames.is_empty() {
                writer.write_all(&frame).await
            } else {
                gathered.clear();
                gathered.extend_from_slice(&frame);
                while gathered.len() < WRITE_GATHER_BYTES_MAX {
                    match frames.try_recv() {
                        Ok(frame) => gathered.extend_from_slice(&frame),
                        Err(_) => break,
                    }
                }
                writer.write_all(&gathered).await
            };
            if result.is_ok() && frames.is_empty() {
                result = writer.flush().await;
            }
            if let Err(error) = result {
                on_error(error);
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
}

/// Calls waiting for their answers on one link.
type Waiting = HashMap<u64, oneshot::Sender<Result<(u16, Bytes), String>>>;

/// One open link to a peer.
struct Link {
    frames: mpsc::Sender<Bytes>,
    waiting: Mutex<Waiting>,
    next_id: AtomicU64,
    /// Set (under the `waiting` lock) once the link broke; it is never used again.
    broken: AtomicBool,
    opened: Instant,
    /// When the last answer arrived, in microseconds since `opened`.
    last_answer_us: AtomicU64,
}

impl Link {
    /// Fails every waiting call; the link is not used again.
    fn break_with(&self, reason: &str) {
        let waiting = {
            let mut waiting = self.waiting.lock();
            self.broken.store(true, Ordering::Release);
            std::mem::take(&mut *waiting)
        };
        for (_, reply) in waiting {
            let _ = reply.send(Err(reason.to_string()));
        }
    }

    fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    fn since_opened_us(&self) -> u64 {
        self.opened.elapsed().as_micros() as u64
    }

    async fn call(
        &self,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(u16, Bytes), LinkError> {
        let sent_us = self.since_opened_us();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        {
            let mut waiting = self.waiting.lock();
            if self.is_broken() {
                return Err(LinkError::Network("the link broke".into()));
            }
            waiting.insert(id, reply);
        }
        let frame = Frame {
            id,
            head: Head::Path(path.to_string()),
            body,
        }
        .encode();
        let exchange = async {
            self.frames
                .send(frame)
                .await
                .map_err(|_| "the link closed".to_string())?;
            answer.await.map_err(|_| "the link closed".to_string())?
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(reason)) => Err(LinkError::Network(reason)),
            Err(_) => {
                self.waiting.lock().remove(&id);
                // Nothing at all came back since this request went out: the
                // peer (or the path to it) is gone without closing the
                // connection; dial again next time. A peer that answers
                // other requests meanwhile is only slow with this one.
                if self.last_answer_us.load(Ordering::Relaxed) <= sent_us {
                    self.break_with("no answer within the timeout");
                }
                Err(LinkError::Network(format!("no answer within {timeout:?}")))
            }
        }
    }
}

/// Reads answers off a link until it ends. Holds the link only while
/// delivering an answer, so a link nobody uses any more is dropped, which
/// closes its writer and then the connection.
async fn read_answers<R: AsyncRead + Unpin>(mut reader: R, link: Weak<Link>) {
    let reason = loop {
        match Frame::read_answer(&mut reader).await {
            Ok(Some((id, status, body))) => {
                let Some(open) = link.upgrade() else { return };
                open.last_answer_us
                    .store(open.since_opened_us(), Ordering::Relaxed);
                let reply = open.waiting.lock().remove(&id);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok((status, body)));
                }
            }
            Ok(None) => break "the peer closed the link".to_string(),
            Err(error) => break format!("reading from the link: {error}"),
        }
    };
    if let Some(link) = link.upgrade() {
        link.break_with(&reason);
    }
}

/// The links of one node to its peers, by base URL. Cheap to clone.
#[derive(Clone)]
pub struct Links {
    inner: Arc<LinksInner>,
}

struct LinksInner {
    cluster_id: Arc<String>,
    node_id: NodeId,
    open: Mutex<HashMap<String, Arc<Link>>>,
    /// One dial at a time per peer; the others wait for its link.
    dialling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Links {
    pub fn new(cluster_id: Arc<String>, node_id: NodeId) -> Links {
        Links {
            inner: Arc::new(LinksInner {
                cluster_id,
                node_id,
                open: Mutex::new(HashMap::new()),
                dialling: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sends `body` to `path` on the peer at `base` (`http://host:port`)
    /// and waits up to `timeout` for its status and body (dialling the
    /// peer first, if need be, within the same time).
    pub async fn call(
        &self,
        base: &str,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(u16, Bytes), LinkError> {
        let started = Instant::now();
        let dial_timeout = timeout.min(CONNECT_TIMEOUT);
        let link = tokio::time::timeout(dial_timeout, self.link_to(base))
            .await
            .map_err(|_| {
                LinkError::Unreachable(format!("{base}: no link within {dial_timeout:?}"))
            })??;
        link.call(path, body, timeout.saturating_sub(started.elapsed()))
            .await
    }

    fn open_link(&self, base: &str) -> Option<Arc<Link>> {
        self.inner
            .open
            .lock()
            .get(base)
            .filter(|link| !link.is_broken())
            .cloned()
    }

    async fn link_to(&self, base: &str) -> Result<Arc<Link>, LinkError> {
        if let Some(link) = self.open_link(base) {
            return Ok(link);
        }
        let dial = self
            .inner
            .dialling
            .lock()
            .entry(base.to_string())
            .or_default()
            .clone();
        let _dialling = dial.lock().await;
        if let Some(link) = self.open_link(base) {
            return Ok(link);
        }
        let link = self.dial(base).await?;
        self.inner
            .open
            .lock()
            .insert(base.to_string(), link.clone());
        Ok(link)
    }

    async fn dial(&self, base: &str) -> Result<Arc<Link>, LinkError> {
        use http_body_util::{BodyExt, Empty};
        use hyper_util::rt::TokioIo;

        let unreachable = |what: &str, e: &dyn std::fmt::Display| {
            LinkError::Unreachable(format!("{base}: {what}: {e}"))
        };
        let (authority, address) =
            crate::client::http_address(base).map_err(LinkError::Unreachable)?;
        let stream = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|e| unreachable("cannot connect", &e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| unreachable("TCP_NODELAY", &e))?;
        let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable("HTTP handshake", &e))?;
        tokio::spawn(connection.with_upgrades());
        let request = http::Request::get(PATH_LINK)
            .header(http::header::HOST, authority.as_str())
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, PROTOCOL)
            .header(CLUSTER_HEADER, self.inner.cluster_id.as_str())
            .header(NODE_HEADER, self.inner.node_id)
            .body(Empty::<Bytes>::new())
            .map_err(|e| unreachable("building the upgrade request", &e))?;
        let mut response = send
            .send_request(request)
            .await
            .map_err(|e| unreachable("upgrade request", &e))?;
        let status = response.status();
        if status != http::StatusCode::SWITCHING_PROTOCOLS {
            let body = response
                .body_mut()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(LinkError::Unreachable(format!(
                "{base} refused a link ({status}): {}",
                String::from_utf8_lossy(&body)
            )));
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|e| unreachable("upgrade", &e))?;
        tracing::debug!(peer = base, "link open");
        Ok(Link::start(TokioIo::new(upgraded)))
    }
}

impl Link {
    /// Starts the writer and reader tasks of a link over `stream`.
    fn start<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Arc<Link> {
        let (reader, writer) = tokio::io::split(stream);
        let (frames, queued) = mpsc::channel(WRITE_QUEUE_FRAMES_MAX);
        let link = Arc::new(Link {
            frames,
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            broken: AtomicBool::new(false),
            opened: Instant::now(),
            last_answer_us: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&link);
        spawn_writer(writer, queued, move |error| {
            if let Some(link) = weak.upgrade() {
                link.break_with(&format!("writing to the link: {error}"));
            }
        });
        tokio::spawn(read_answers(BufReader::new(reader), Arc::downgrade(&link)));
        link
    }
}

/// Serves the requests of one accepted link with `router` until the peer
/// closes it or `stop` turns true. `headers` (the peer's cluster and node)
/// go with every request, so the endpoints check them as for HTTP.
pub async fn serve<S>(
    stream: S,
    router: axum::Router,
    headers: http::HeaderMap,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    use tower::ServiceExt;

    let (reader, writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(reader);
    let (frames, queued) = mpsc::channel::<Bytes>(WRITE_QUEUE_FRAMES_MAX);
    spawn_writer(writer, queued, |error| {
        tracing::debug!(%error, "writing to a peer's link failed");
    });
    loop {
        let frame = tokio::select! {
            frame = Frame::read_request(&mut reader) => frame,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        let (id, path, body) = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "a peer's link sent a bad frame; closing it");
                return;
            }
        };
        let mut request = http::Request::post(path)
            .body(axum::body::Body::from(body))
            .map_err(|e| e.to_string());
        if let Ok(request) = &mut request {
            request.headers_mut().extend(headers.clone());
        }
        let router = router.clone();
        let frames = frames.clone();
        tokio::spawn(async move {
            let (status, body) = match request {
                Ok(request) => {
                    let response = router.oneshot(request).await.expect("infallible");
                    let status = response.status().as_u16();
                    match axum::body::to_bytes(response.into_body(), FRAME_PAYLOAD_BYTES_MAX).await
                    {
                        Ok(body) => (status, body),
                        Err(error) => (500, Bytes::from(format!("answer body: {error}"))),
                    }
                }
                Err(error) => (400, Bytes::from(format!("bad request path: {error}"))),
            };
            let answer = Frame {
                id,
                head: Head::Status(status),
                body,
            };
            let _ = frames.send(answer.encode()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;

    fn router() -> axum::Router {
        async fn echo(headers: http::HeaderMap, body: Bytes) -> (http::StatusCode, Bytes) {
            let from = headers
                .get(NODE_HEADER)
                .map(|v| v.to_str().unwrap_or("").to_string())
                .unwrap_or_default();
            let mut answer = BytesMut::from(from.as_bytes());
            answer.put_slice(b":");
            answer.put_slice(&body);
            (http::StatusCode::OK, answer.freeze())
        }
        async fn slow() -> &'static str {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "slow"
        }
        async fn busy() -> (http::StatusCode, &'static str) {
            (http::StatusCode::SERVICE_UNAVAILABLE, "busy")
        }
        axum::Router::new()
            .route("/echo", post(echo))
            .route("/slow", post(slow))
            .route("/busy", post(busy))
    }

    /// A link whose other end is served by [`router`] over an in-memory
    /// stream; the sender to stop the serving side.
    fn pair() -> (Arc<Link>, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let (stop, stopped) = watch::channel(false);
        let mut headers = http::HeaderMap::new();
        headers.insert(NODE_HEADER, http::HeaderValue::from_static("7"));
        let served = tokio::spawn(serve(far, router(), headers, stopped));
        (Link::start(near), stop, served)
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn concurrent_calls_get_their_own_answers_in_any_order() {
        let (link, _stop, _served) = pair();
        let slow = {
            let link = link.clone();
            tokio::spawn(async move { link.call("/slow", Bytes::new(), WAIT).await })
        };
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let link = link.clone();
                tokio::spawn(async move {
                    let body = Bytes::from(vec![b'x'; i * 97]);
                    let (status, answer) = link.call("/echo", body.clone(), WAIT).await.unwrap();
                    assert_eq!(status, 200);
                    assert_eq!(
                        &answer[..2],
                        b"7:",
                        "the peer's headers go with each request"
                    );
                    assert_eq!(answer.slice(2..), body);
                })
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        assert!(
            !slow.is_finished(),
            "the fast answers overtook the slow one"
        );
        let (status, answer) = slow.await.unwrap().unwrap();
        assert_eq!((status, &answer[..]), (200, &b"slow"[..]));
        let (status, answer) = link.call("/busy", Bytes::new(), WAIT).await.unwrap();
        assert_eq!((status, &answer[..]), (503, &b"busy"[..]));
        let (status, _) = link.call("/nowhere", Bytes::new(), WAIT).await.unwrap();
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn a_timeout_breaks_a_silent_link_but_not_a_busy_one() {
        let (link, _stop, _served) = pair();
        // Other answers arrive while the slow one is late: only slow.
        let slow = {
            let link = link.clone();
            tokio::spawn(async move {
                link.call("/slow", Bytes::new(), Duration::from_millis(100))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        link.call("/echo", Bytes::from_static(b"a"), WAIT)
            .await
            .unwrap();
        assert!(matches!(slow.await.unwrap(), Err(LinkError::Network(_))));
        assert!(!link.is_broken());
        link.call("/echo", Bytes::from_static(b"b"), WAIT)
            .await
            .unwrap();
        // Nothing at all arrives while it waits: the link is given up.
        let silent = link
            .call("/slow", Bytes::new(), Duration::from_millis(100))
            .await;
        assert!(matches!(silent, Err(LinkError::Network(_))));
        assert!(link.is_broken());
        assert!(matches!(
            link.call("/echo", Bytes::new(), WAIT).await,
            Err(LinkError::Network(_))
        ));
    }

    #[tokio::test]
    async fn a_closed_link_fails_its_waiting_calls_at_once() {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let link = Link::start(near);
        let waiting = {
            let link = link.clone();
            tokio::spawn(async move { link.call("/echo", Bytes::new(), WAIT).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        drop(far);
        let result = waiting.await.unwrap();
        assert!(matches!(result, Err(LinkError::Network(_))));
        assert!(started.elapsed() < WAIT / 2, "failed only by its timeout");
        assert!(link.is_broken());
    }

    #[tokio::test]
    async fn a_stopping_peer_answers_what_it_took_then_closes_the_link() {
        let (link, stop, served) = pair();
        let waiting = {
            let link = link.clone();
            tokio::spawn(async move { link.call("/slow", Bytes::new(), WAIT).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(true).unwrap();
        served.await.unwrap();
        let (status, answer) = waiting.await.unwrap().unwrap();
        assert_eq!((status, &answer[..]), (200, &b"slow"[..]));
        tokio::time::timeout(WAIT, async {
            while !link.is_broken() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the link breaks when the peer closes it");
    }

    #[tokio::test]
    async fn a_link_nobody_holds_closes_its_connection() {
        let (link, _stop, served) = pair();
        link.call("/echo", Bytes::new(), WAIT).await.unwrap();
        drop(link);
        tokio::time::timeout(WAIT, served)
            .await
            .expect("the serving side sees the end of the stream")
            .unwrap();
    }

    #[tokio::test]
    async fn damaged_or_oversized_frames_are_refused() {
        let frame = Frame {
            id: 9,
            head: Head::Path("/echo".into()),
            body: Bytes::from_static(b"payload"),
        }
        .encode();
        let (id, path, body) = Frame::read_request(&mut &frame[..]).await.unwrap().unwrap();
        assert_eq!(
            (id, path.as_str(), &body[..]),
            (9, "/echo", &b"payload"[..])
        );

        let mut damaged = frame.to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        let error = Frame::read_request(&mut &damaged[..]).await.unwrap_err();
        assert!(error.to_string().contains("checksum"), "{error}");

        let mut oversized = frame.to_vec();
        oversized[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let error = Frame::read_request(&mut &oversized[..]).await.unwrap_err();
        assert!(error.to_string().contains("bytes"), "{error}");

        // A stream cut inside a frame is an error; between frames, the end.
        let error = Frame::read_request(&mut &frame[..frame.len() - 1])
            .await
            .unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(Frame::read_request(&mut &b""[..]).await.unwrap().is_none());

        // A path length beyond the frame.
        let mut overrun = BytesMut::new();
        overrun.put_u64_le(1);
        overrun.put_u16_le(500);
        overrun.put_slice(b"/x");
        let mut framed = BytesMut::new();
        framed.put_u32_le(overrun.len() as u32);
        framed.put_u32_le(crc32c::crc32c(&overrun));
        framed.put_slice(&overrun);
        let error = Frame::read_request(&mut &framed[..]).await.unwrap_err();
        assert!(error.to_string().contains("overruns"), "{error}");
    }
}
