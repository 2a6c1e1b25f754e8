//! `keel bench kv`: a load generator for a running cluster.
//!
//! `--clients` tasks each keep one request in flight, spread round-robin
//! over `--endpoints`. By default they share one connection per node
//! (`--connections node`); with `--connections client` each has its own.
//! Each picks a read (probability `--read-ratio`) or a write of a key
//! drawn uniformly from `--keys`, until the deadline. Latency is measured per
//! operation, from before the request is sent until its whole answer has
//! been read, and kept in HDR histograms (microseconds, 3 significant
//! digits); operations that start during `--warmup` are not recorded.
//! Failed operations are counted by message, never dropped.
//!
//! `--etcd URL,...` runs the same workload (same key and value generator,
//! same seed, same client count and spread) against etcd after Keel, in the
//! same run: writes are `put`, reads are `get` (linearizable; serializable
//! with `--stale`). The etcd client needs `protoc` to build, so it exists only
//! with the cargo feature `etcd`; building Keel itself never needs it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel_node::client::{path_escape, Client};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::super::{block_on, DEFAULT_ENDPOINT};
use crate::output::{table, CliError, Output};

/// Concurrent clients, at most.
pub const CLIENTS_MAX: usize = 4096;
/// Key size in bytes, at most (the number after `bench/` is one path segment).
pub const KEY_SIZE_BYTES_MAX: usize = 256;
/// Value size in bytes, at most (etcd refuses requests above 1.5 MiB).
pub const VALUE_SIZE_BYTES_MAX: usize = 1024 * 1024;
/// Distinct values the generator cycles through.
const VALUE_POOL_SIZE: usize = 256;
/// Every key starts with this (a directory of its own in Keel).
const KEY_PREFIX: &str = "bench/";
/// One operation that takes longer than this fails (and is counted).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// The preload gives up after this many failed writes.
pub const PRELOAD_ERRORS_MAX: u64 = 1000;
/// Distinct error messages kept per system; further ones are counted together.
const ERROR_KINDS_MAX: usize = 16;
/// Where error messages beyond the first [`ERROR_KINDS_MAX`] are counted.
const OTHER_ERRORS: &str = "(other errors)";
/// Latencies above this are recorded as this (microseconds).
const LATENCY_US_MAX: u64 = 120_000_000;
/// How often the preload reports progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

const _: () = assert!(KEY_SIZE_BYTES_MAX > KEY_PREFIX.len() + 1);
const _: () = assert!(OPERATION_TIMEOUT.as_micros() < LATENCY_US_MAX as u128);

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 10s, 1m, 500ms)"))
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    let ratio: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=1.0).contains(&ratio) {
        return Err(format!(
            "{ratio} is not between 0.0 (writes only) and 1.0 (reads only)"
        ));
    }
    Ok(ratio)
}

#[derive(Args, Debug, Clone)]
pub struct KvBenchArgs {
    /// Keel nodes; clients are spread round-robin over them.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',', default_value = DEFAULT_ENDPOINT)]
    pub endpoints: Vec<String>,
    /// Concurrent clients (each keeps one request in flight).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Size of the key space: keys are drawn uniformly from this many.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Key size in bytes (`bench/` and a zero-padded number).
    #[arg(long, value_name = "B", default_value_t = 16)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, value_name = "B", default_value_t = 256)]
    pub value_size: usize,
    /// Fraction of reads: 0.0 = writes only, 1.0 = reads only.
    #[arg(long, value_name = "F", default_value = "0.0", value_parser = parse_ratio)]
    pub read_ratio: f64,
    /// Read without a read-index round (Keel `stale`, etcd serializable).
    #[arg(long)]
    pub stale: bool,
    /// How long to measure, after the warm-up.
    #[arg(long, value_name = "D", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long to run before measuring (not recorded).
    #[arg(long, value_name = "D", default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Write every key once before measuring, so that reads find their key.
    #[arg(long)]
    pub preload: bool,
    /// `node`: the clients of a node share one connection to it (HTTP/2 to
    /// Keel, gRPC to etcd). `client`: each client opens its own (HTTP/1.1
    /// to Keel, gRPC to etcd).
    #[arg(long, value_enum, default_value_t = Connections::Node)]
    pub connections: Connections,
    /// Also run the same workload against these etcd endpoints, after Keel
    /// (needs a keel built with `--features etcd`).
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Seed of the key and operation choices (default: random, printed).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// How clients reach the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Connections {
    /// One connection per node, shared by the clients of that node.
    Node,
    /// One connection per client.
    Client,
}

impl Connections {
    /// The endpoint of each connection to open for `clients` clients.
    /// Client `c` uses connection `c % len`, which goes to
    /// `endpoints[c % endpoints.len()]` either way.
    pub fn endpoints(self, endpoints: &[String], clients: usize) -> Vec<&String> {
        let count = match self {
            Connections::Node => endpoints.len(),
            Connections::Client => clients,
        };
        endpoints.iter().cycle().take(count).collect()
    }
}

/// One client's connection to one system.
pub trait KvHandle: Clone + Send + Sync + 'static {
    /// Writes `value` at `key`; done once acknowledged (durable).
    fn put(&self, key: &str, value: Bytes) -> impl Future<Output = Result<(), String>> + Send;
    /// Reads `key`; `Ok(false)` when it does not exist.
    fn get(&self, key: &str, stale: bool) -> impl Future<Output = Result<bool, String>> + Send;
}

/// A Keel node through its HTTP API, over hyper's bare client, as etcd's
/// side is its bare generated gRPC client: the general client
/// (`keel_node::client`, reqwest) cost about twice the CPU per request, on
/// the same two CPUs as the servers.
#[derive(Clone)]
struct KeelHandle {
    sender: Sender,
    /// `http://host:port/v1/kv/`
    kv_url: Arc<str>,
}

#[derive(Clone)]
enum Sender {
    /// Requests multiplexed on one HTTP/2 connection (h2c, prior
    /// knowledge), shared by the clients of a node, as etcd's clients share
    /// one gRPC connection per endpoint.
    Shared(http2::SendRequest<Full<Bytes>>),
    /// One client's own HTTP/1.1 connection (the lock is never contended).
    Own(Arc<tokio::sync::Mutex<http1::SendRequest<Full<Bytes>>>>),
}

impl KeelHandle {
    async fn connect(endpoint: &str, connections: Connections) -> anyhow::Result<KeelHandle> {
        let (_, address) = keel_node::client::http_address(endpoint).map_err(CliError::usage)?;
        let stream = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|e| CliError::failed(format!("cannot connect to {endpoint}: {e}")))?;
        stream.set_nodelay(true)?;
        let handshake_failed =
            |e: hyper::Error| CliError::failed(format!("HTTP handshake with {endpoint}: {e}"));
        let sender = match connections {
            Connections::Node => {
                let (send, connection) =
                    http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                        .await
                        .map_err(handshake_failed)?;
                tokio::spawn(connection);
                Sender::Shared(send)
            }
            Connections::Client => {
                let (send, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(handshake_failed)?;
                tokio::spawn(connection);
                Sender::Own(Arc::new(tokio::sync::Mutex::new(send)))
            }
        };
        Ok(KeelHandle {
            sender,
            kv_url: format!("{}/v1/kv/", endpoint.trim_end_matches('/')).into(),
        })
    }

    /// Sends one request; the status and the body once complete.
    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.kv_url))
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = match &self.sender {
            Sender::Shared(send) => {
                let mut send = send.clone();
                send.ready().await.map_err(|e| e.to_string())?;
                send.send_request(request).await
            }
            Sender::Own(send) => {
                let mut send = send.lock().await;
                send.ready().await.map_err(|e| e.to_string())?;
                send.send_request(request).await
            }
        }
        .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}

fn failure(status: http::StatusCode, body: &[u8]) -> String {
    format!("{status}: {}", String::from_utf8_lossy(body).trim())
}

impl KvHandle for KeelHandle {
    async fn put(&self, key: &str, value: Bytes) -> Result<(), String> {
        let (status, body) = self
            .call(http::Method::PUT, &path_escape(key), value)
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(failure(status, &body))
        }
    }

    async fn get(&self, key: &str, stale: bool) -> Result<bool, String> {
        let mut path = path_escape(key);
        if stale {
            path.push_str("?stale=true");
        }
        let (status, body) = self.call(http::Method::GET, &path, Bytes::new()).await?;
        match status {
            http::StatusCode::OK => Ok(true),
            http::StatusCode::NOT_FOUND => Ok(false),
            _ => Err(failure(status, &body)),
        }
    }
}

/// What every system is asked to do.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    pub clients: usize,
    pub keys: u64,
    pub key_size: usize,
    pub value_size: usize,
    pub read_ratio: f64,
    pub stale: bool,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    pub preload: bool,
    pub connections: Connections,
    pub seed: u64,
}

impl Workload {
    fn from_args(args: &KvBenchArgs) -> anyhow::Result<Workload> {
        if args.clients == 0 || args.clients > CLIENTS_MAX {
            return Err(CliError::usage(format!(
                "--clients must be 1 to {CLIENTS_MAX}, not {}",
                args.clients
            )));
        }
        if args.keys == 0 {
            return Err(CliError::usage("--keys must be at least 1"));
        }
        let digits = (args.keys - 1).to_string().len();
        let key_size_min = KEY_PREFIX.len() + digits;
        if args.key_size < key_size_min || args.key_size > KEY_SIZE_BYTES_MAX {
            return Err(CliError::usage(format!(
                "--key-size must be {key_size_min} to {KEY_SIZE_BYTES_MAX} bytes for {} keys \
                 (`{KEY_PREFIX}` and {digits} digits), not {}",
                args.keys, args.key_size
            )));
        }
        if args.value_size > VALUE_SIZE_BYTES_MAX {
            return Err(CliError::usage(format!(
                "--value-size must be at most {VALUE_SIZE_BYTES_MAX} bytes, not {}",
                args.value_size
            )));
        }
        if args.duration.is_zero() && !args.preload {
            return Err(CliError::usage(
                "--duration 0s measures nothing; give a duration (or --preload to only load)",
            ));
        }
        if args.endpoints.is_empty() {
            return Err(CliError::usage(
                "give at least one Keel node in --endpoints",
            ));
        }
        Ok(Workload {
            clients: args.clients,
            keys: args.keys,
            key_size: args.key_size,
            value_size: args.value_size,
            read_ratio: args.read_ratio,
            stale: args.stale,
            duration_secs: args.duration.as_secs_f64(),
            warmup_secs: args.warmup.as_secs_f64(),
            preload: args.preload,
            connections: args.connections,
            seed: args.seed.unwrap_or_else(rand::random),
        })
    }

    /// Key number `n`: `bench/` and `n` zero-padded to the key size.
    fn key(&self, n: u64) -> String {
        let width = self.key_size - KEY_PREFIX.len();
        format!("{KEY_PREFIX}{n:0width$}")
    }

    /// The values written, the same for every system (from the seed).
    fn values(&self) -> Arc<Vec<Bytes>> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x7661_6c75_6573);
        let pool = (0..VALUE_POOL_SIZE)
            .map(|_| {
                let bytes: Vec<u8> = (0..self.value_size)
                    .map(|_| rng.sample(rand::distributions::Alphanumeric))
                    .collect();
                Bytes::from(bytes)
            })
            .collect();
        Arc::new(pool)
    }

    fn describe(&self) -> String {
        let reads = if self.stale { "stale" } else { "linearizable" };
        let mix = if self.read_ratio == 0.0 {
            "writes only".to_string()
        } else if self.read_ratio == 1.0 {
            format!("{reads} reads only")
        } else {
            format!("{:.0}% {reads} reads", self.read_ratio * 100.0)
        };
        format!(
            "{} clients ({}), {} keys of {} bytes, {}-byte values, {mix}{}, {} measured after {} warm-up (seed {})",
            self.clients,
            match self.connections {
                Connections::Node => "a connection per node",
                Connections::Client => "a connection each",
            },
            self.keys,
            self.key_size,
            self.value_size,
            if self.preload { ", preloaded" } else { "" },
            humantime::format_duration(Duration::from_secs_f64(self.duration_secs)),
            humantime::format_duration(Duration::from_secs_f64(self.warmup_secs)),
            self.seed
        )
    }
}

/// Latency and throughput of one kind of operation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OpStats {
    pub ops: u64,
    pub ops_per_sec: f64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl OpStats {
    fn from(histogram: &Histogram<u64>, seconds: f64) -> OpStats {
        if histogram.is_empty() {
            return OpStats::default();
        }
        OpStats {
            ops: histogram.len(),
            ops_per_sec: histogram.len() as f64 / seconds,
            mean_us: histogram.mean(),
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// A failure message and how often it happened.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorCount {
    pub message: String,
    pub count: u64,
}

/// The preload of every key.
#[derive(Clone, Debug, Serialize)]
pub struct PreloadReport {
    pub keys: u64,
    pub seconds: f64,
    pub keys_per_sec: f64,
    pub errors: u64,
}

/// One system's results.
#[derive(Clone, Debug, Serialize)]
pub struct SystemReport {
    /// `keel` or `etcd`.
    pub system: String,
    pub version: String,
    pub endpoints: Vec<String>,
    pub preload: Option<PreloadReport>,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub writes: OpStats,
    pub reads: OpStats,
    /// Reads that found no value (no preload).
    pub read_misses: u64,
    /// Failed operations (not in the latencies).
    pub errors: u64,
    pub error_kinds: Vec<ErrorCount>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub workload: Workload,
    pub systems: Vec<SystemReport>,
}

/// What one client saw.
struct Tally {
    writes: Histogram<u64>,
    reads: Histogram<u64>,
    read_misses: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Tally {
        let histogram =
            || Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds");
        Tally {
            writes: histogram(),
            reads: histogram(),
            read_misses: 0,
            errors: BTreeMap::new(),
        }
    }

    fn error(&mut self, message: String) {
        self.errors_counted(message, 1);
    }

    fn errors_counted(&mut self, message: String, count: u64) {
        let key = if self.errors.len() < ERROR_KINDS_MAX || self.errors.contains_key(&message) {
            message
        } else {
            OTHER_ERRORS.to_string()
        };
        *self.errors.entry(key).or_default() += count;
    }

    fn merge(&mut self, other: Tally) {
        self.writes.add(&other.writes).expect("same bounds");
        self.reads.add(&other.reads).expect("same bounds");
        self.read_misses += other.read_misses;
        for (message, count) in other.errors {
            self.errors_counted(message, count);
        }
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

async fn bounded<T>(operation: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {OPERATION_TIMEOUT:?}")),
    }
}

/// Writes every key once, spread over the clients.
async fn preload<H: KvHandle>(
    system: &str,
    handles: &[H],
    workload: &Workload,
    values: &Arc<Vec<Bytes>>,
) -> anyhow::Result<PreloadReport> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let give_up = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..workload.clients {
        let handle = handles[client % handles.len()].clone();
        let (workload, values) = (workload.clone(), values.clone());
        let (done, failed, give_up) = (done.clone(), failed.clone(), give_up.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let mut n = client as u64;
            while n < workload.keys && !give_up.load(Ordering::Relaxed) {
                let value = values[(n as usize) % values.len()].clone();
                match bounded(handle.put(&workload.key(n), value)).await {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(message) => {
                        tally.error(message);
                        if failed.fetch_add(1, Ordering::Relaxed) + 1 >= PRELOAD_ERRORS_MAX {
                            give_up.store(true, Ordering::Relaxed);
                        }
                        continue; // the same key again
                    }
                }
                n += workload.clients as u64;
            }
            tally
        }));
    }
    let progress = {
        let (done, system, keys) = (done.clone(), system.to_string(), workload.keys);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!(
                    "bench: {system}: preloaded {} of {keys} keys",
                    done.load(Ordering::Relaxed)
                );
            }
        })
    };
    let mut tally = Tally::new();
    for task in tasks {
        tally.merge(task.await?);
    }
    progress.abort();
    let seconds = started.elapsed().as_secs_f64();
    let errors = tally.error_count();
    if give_up.load(Ordering::Relaxed) {
        let first = tally.errors.keys().next().cloned().unwrap_or_default();
        return Err(CliError::failed(format!(
            "{system}: the preload gave up after {errors} failed writes ({} of {} keys written); first error: {first}",
            done.load(Ordering::Relaxed),
            workload.keys
        )));
    }
    Ok(PreloadReport {
        keys: workload.keys,
        seconds,
        keys_per_sec: workload.keys as f64 / seconds,
        errors,
    })
}

/// Runs the measured mix on every client until the deadline.
async fn measure<H: KvHandle>(
    handles: &[H],
    workload: &Workload,
    values: &Arc<Vec<Bytes>>,
) -> anyhow::Result<Tally> {
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(workload.warmup_secs);
    let deadline = measure_from + Duration::from_secs_f64(workload.duration_secs);
    let mut tasks = Vec::new();
    for client in 0..workload.clients {
        let handle = handles[client % handles.len()].clone();
        let (workload, values) = (workload.clone(), values.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(workload.seed.wrapping_add(client as u64));
            let mut tally = Tally::new();
            loop {
                let begin = Instant::now();
                if begin >= deadline {
                    break;
                }
                let key = workload.key(rng.gen_range(0..workload.keys));
                let read = workload.read_ratio > 0.0 && rng.gen_bool(workload.read_ratio);
                let result = if read {
                    bounded(handle.get(&key, workload.stale)).await
                } else {
                    let value = values[rng.gen_range(0..values.len())].clone();
                    bounded(handle.put(&key, value)).await.map(|()| true)
                };
                if begin < measure_from {
                    continue;
                }
                let micros = (begin.elapsed().as_micros() as u64).clamp(1, LATENCY_US_MAX);
                match result {
                    Ok(found) if read => {
                        tally.reads.saturating_record(micros);
                        tally.read_misses += u64::from(!found);
                    }
                    Ok(_) => tally.writes.saturating_record(micros),
                    Err(message) => tally.error(message),
                }
            }
            tally
        }));
    }
    let mut tally = Tally::new();
    for task in tasks {
        tally.merge(task.await?);
    }
    Ok(tally)
}

/// Preloads (if asked) and measures one system.
async fn run_system<H: KvHandle>(
    system: &str,
    version: String,
    endpoints: &[String],
    handles: Vec<H>,
    workload: &Workload,
) -> anyhow::Result<SystemReport> {
    let values = workload.values();
    let preload = if workload.preload {
        eprintln!("bench: {system}: preloading {} keys", workload.keys);
        Some(preload(system, &handles, workload, &values).await?)
    } else {
        None
    };
    let seconds = workload.duration_secs;
    let tally = if seconds > 0.0 {
        eprintln!("bench: {system}: {}", workload.describe());
        measure(&handles, workload, &values).await?
    } else {
        Tally::new()
    };
    let errors = tally.error_count();
    let writes = OpStats::from(&tally.writes, seconds);
    let reads = OpStats::from(&tally.reads, seconds);
    Ok(SystemReport {
        system: system.to_string(),
        version,
        endpoints: endpoints.to_vec(),
        preload,
        seconds,
        ops_per_sec: writes.ops_per_sec + reads.ops_per_sec,
        writes,
        reads,
        read_misses: tally.read_misses,
        errors,
        error_kinds: tally
            .errors
            .into_iter()
            .map(|(message, count)| ErrorCount { message, count })
            .collect(),
    })
}

async fn keel(args: &KvBenchArgs, workload: &Workload) -> anyhow::Result<SystemReport> {
    for endpoint in &args.endpoints {
        let client = Client::new(endpoint);
        let ready = client.ready().await.map_err(|e| {
            CliError::failed(format!("{e}; is the node running? (keel serve, keel demo)"))
        })?;
        if !ready {
            return Err(CliError::failed(format!(
                "{endpoint} is not ready; see `keel status --endpoint {endpoint}`"
            )));
        }
    }
    let mut handles = Vec::new();
    for endpoint in workload
        .connections
        .endpoints(&args.endpoints, workload.clients)
    {
        handles.push(KeelHandle::connect(endpoint, workload.connections).await?);
    }
    run_system(
        "keel",
        env!("CARGO_PKG_VERSION").to_string(),
        &args.endpoints,
        handles,
        workload,
    )
    .await
}

pub fn run(args: &KvBenchArgs, out: Output) -> anyhow::Result<()> {
    let workload = Workload::from_args(args)?;
    #[cfg(not(feature = "etcd"))]
    if !args.etcd.is_empty() {
        return Err(CliError::usage(
            "this keel was built without the etcd client; build it with \
             `cargo build --release -p keel-cli --features etcd` (needs protoc: \
             apt-get install protobuf-compiler) or run scripts/bench-cluster",
        ));
    }
    let report = block_on(async {
        #[cfg(feature = "etcd")]
        let etcd = if args.etcd.is_empty() {
            None
        } else {
            // Connect first, so a wrong etcd address fails before Keel's run.
            Some(super::etcd::Etcd::connect(&args.etcd, &workload).await?)
        };
        let keel = keel(args, &workload).await?;
        #[cfg(feature = "etcd")]
        let etcd = match etcd {
            Some(etcd) => {
                let version = etcd.version.clone();
                Some(run_system("etcd", version, &args.etcd, etcd.handles, &workload).await?)
            }
            None => None,
        };
        #[cfg(not(feature = "etcd"))]
        let etcd: Option<SystemReport> = None;
        let systems = std::iter::once(keel).chain(etcd).collect();
        Ok::<_, anyhow::Error>(Report {
            workload: workload.clone(),
            systems,
        })
    })?;
    out.emit(&report, || render(&report))?;
    if let Some(system) = report
        .systems
        .iter()
        .find(|s| s.seconds > 0.0 && s.writes.ops + s.reads.ops == 0)
    {
        return Err(CliError::failed(format!(
            "{}: no operation succeeded ({} errors)",
            system.system, system.errors
        )));
    }
    Ok(())
}

fn millis(micros: u64) -> String {
    format!("{:.2}", micros as f64 / 1000.0)
}

fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The human form of a report.
pub fn render(report: &Report) -> String {
    let mut rows = Vec::new();
    for system in &report.systems {
        for (op, stats) in [("write", &system.writes), ("read", &system.reads)] {
            if stats.ops == 0 {
                continue;
            }
            rows.push(vec![
                system.system.clone(),
                op.to_string(),
                thousands(stats.ops_per_sec),
                millis(stats.p50_us),
                millis(stats.p90_us),
                millis(stats.p99_us),
                millis(stats.p999_us),
                millis(stats.max_us),
            ]);
        }
    }
    let mut text = format!("keel bench kv: {}\n\n", report.workload.describe());
    if !rows.is_empty() {
        text.push_str(&table(
            &[
                "SYSTEM", "OP", "OPS/S", "P50 MS", "P90 MS", "P99 MS", "P99.9 MS", "MAX MS",
            ],
            &rows,
        ));
        text.push_str("\n\n");
    }
    for system in &report.systems {
        text.push_str(&format!(
            "{} {} ({} endpoints): {} errors",
            system.system,
            system.version,
            system.endpoints.len(),
            system.errors
        ));
        if system.read_misses > 0 {
            text.push_str(&format!(", {} reads found no key", system.read_misses));
        }
        if let Some(preload) = &system.preload {
            text.push_str(&format!(
                "; preloaded {} keys in {:.1} s ({}/s, {} errors)",
                preload.keys,
                preload.seconds,
                thousands(preload.keys_per_sec),
                preload.errors
            ));
        }
        text.push('\n');
        for kind in &system.error_kinds {
            text.push_str(&format!("  {} × {}\n", kind.count, kind.message));
        }
    }
    if let [keel, etcd] = &report.systems[..] {
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}×", a / b)
            } else {
                "-".to_string()
            }
        };
        if keel.writes.ops > 0 && etcd.writes.ops > 0 {
            text.push_str(&format!(
                "keel/etcd writes: throughput {}, p99 latency {}\n",
                ratio(keel.writes.ops_per_sec, etcd.writes.ops_per_sec),
                ratio(keel.writes.p99_us as f64, etcd.writes.p99_us as f64)
            ));
        }
        if keel.reads.ops > 0 && etcd.reads.ops > 0 {
            text.push_str(&format!(
                "keel/etcd reads: throughput {}, p99 latency {}\n",
                ratio(keel.reads.ops_per_sec, etcd.reads.ops_per_sec),
                ratio(keel.reads.p99_us as f64, etcd.reads.p99_us as f64)
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        Workload {
            clients: 2,
            keys: 1000,
            key_size: 16,
            value_size: 32,
            read_ratio: 0.5,
            stale: false,
            duration_secs: 1.0,
            warmup_secs: 0.0,
            preload: false,
            connections: Connections::Node,
            seed: 7,
        }
    }

    #[test]
    fn clients_reach_the_same_node_with_either_kind_of_connection() {
        let endpoints: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        for connections in [Connections::Node, Connections::Client] {
            let opened = connections.endpoints(&endpoints, 8);
            let expected = match connections {
                Connections::Node => 3,
                Connections::Client => 8,
            };
            assert_eq!(opened.len(), expected, "{connections:?}");
            for client in 0..8 {
                assert_eq!(
                    opened[client % opened.len()],
                    &endpoints[client % 3],
                    "{connections:?}, client {client}"
                );
            }
        }
    }

    #[test]
    fn keys_have_the_requested_size() {
        let workload = workload();
        assert_eq!(workload.key(0), "bench/0000000000");
        assert_eq!(workload.key(999).len(), 16);
    }

    #[test]
    fn values_are_the_same_for_a_seed() {
        let (a, b) = (workload().values(), workload().values());
        assert_eq!(a, b);
        assert!(a.iter().all(|v| v.len() == 32));
    }

    #[test]
    fn errors_are_counted_not_dropped() {
        let mut total = Tally::new();
        for _ in 0..3 {
            let mut tally = Tally::new();
            for kind in 0..ERROR_KINDS_MAX + 4 {
                tally.error(format!("error {kind}"));
                tally.error(format!("error {kind}"));
            }
            total.merge(tally);
        }
        assert_eq!(total.error_count(), 3 * 2 * (ERROR_KINDS_MAX as u64 + 4));
        assert!(total.errors.len() <= ERROR_KINDS_MAX + 1);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
