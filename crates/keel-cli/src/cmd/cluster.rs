//! `keel serve`, `keel join`, `keel leave`, `keel member`, `keel status`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use keel_node::api::ClusterStatus;
use keel_node::client::Client;
use keel_node::config::NodeConfig;
use keel_node::node::Node;

use super::{block_on, DEFAULT_ENDPOINT};
use crate::output::{table, CliError, Output};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Data directory of this node (created by `keel init` or `keel join`).
    #[arg(long, env = "KEEL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML configuration file (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:7001).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// URL peers and clients use to reach this node (default: http://<listen>).
    #[arg(long, value_name = "URL")]
    pub advertise: Option<String>,
    /// Seconds a learner must be caught up before it becomes a voter.
    #[arg(long, value_name = "SECS")]
    pub promote_after_secs: Option<u64>,
    /// How often nodes heartbeat each other for primary election (default 1s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub primary_heartbeat: Option<std::time::Duration>,
    /// A node not heard from this long is dead for primary election (default 4s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub primary_dead_after: Option<std::time::Duration>,
    /// Bytes per second the background scrub re-hashes, at most (0 disables it; default 8 MiB/s).
    #[arg(long, value_name = "BYTES_PER_SEC")]
    pub scrub_rate: Option<u64>,
    /// Rest between two scrub passes (default 60s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub scrub_pause: Option<std::time::Duration>,
    /// Memory for decoded directory nodes, e.g. 256MiB (the default). A key
    /// space whose nodes fit is served without reading the pack.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub cache: Option<u64>,
    /// Refuse client writes with less than this free on the data directory's
    /// file system, e.g. 128MiB (the default).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub disk_low_watermark: Option<u64>,
    /// Size of the reserve file kept for writes that cannot be refused, e.g.
    /// 64MiB (the default); 0 for none.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub disk_reserve: Option<u64>,
    /// Collect the store's garbage in the background once its pack has grown
    /// by this much and doubled since the last collection, e.g. 64MiB (the
    /// default); 0 to collect only when space is low.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub disk_collect_after: Option<u64>,
}

/// A size in bytes: `4096`, `64MiB`, `1.5GB`.
fn parse_size(text: &str) -> Result<u64, String> {
    byte_unit::Byte::parse_str(text, true)
        .map(|size| size.as_u64())
        .map_err(|e| format!("{text:?} is not a size: {e}"))
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<NodeConfig> {
        let mut config = match &self.config {
            // An unreadable or malformed file: the node cannot start (exit 2).
            Some(path) => NodeConfig::load(path).map_err(|e| CliError::usage(format!("{e:#}")))?,
            None => NodeConfig::default(),
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        } else if self.config.is_none() {
            return Err(CliError::usage(
                "give --data-dir DIR (or a --config file that names data_dir)",
            ));
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(advertise) = &self.advertise {
            config.advertise = Some(advertise.clone());
        }
        if let Some(secs) = self.promote_after_secs {
            config.membership.promote_after_healthy_secs = secs;
        }
        if let Some(every) = self.primary_heartbeat {
            config.primary.heartbeat_ms = every.as_millis() as u64;
        }
        if let Some(after) = self.primary_dead_after {
            config.primary.dead_after_ms = after.as_millis() as u64;
        }
        if let Some(bytes) = self.cache {
            config.store.cache_bytes = bytes;
        }
        if let Some(bytes) = self.disk_low_watermark {
            config.disk.low_watermark_bytes = bytes;
        }
        if let Some(bytes) = self.disk_reserve {
            config.disk.reserve_bytes = bytes;
        }
        if let Some(bytes) = self.disk_collect_after {
            config.disk.collect_after_bytes = bytes;
        }
        if let Some(rate) = self.scrub_rate {
            config.scrub.rate_bytes_per_sec = rate;
        }
        if let Some(pause) = self.scrub_pause {
            config.scrub.pause_between_passes_ms = pause.as_millis() as u64;
        }
        Ok(config)
    }
}

/// Runs a node until SIGTERM or SIGINT, then shuts down gracefully. When
/// the node's health monitor asks for a restart (a nudge or a rebuild), the
/// process re-executes itself (see `keel_node::daemon`).
pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    use keel_node::daemon;
    let config = args.config()?;
    let listener = daemon::listener(&config).map_err(|e| CliError::usage(format!("{e:#}")))?;
    let carry = daemon::carried_health();
    let restarted = std::env::var_os(daemon::HEALTH_STATE_ENV).is_some();
    let outcome = block_on(async {
        let stop = async {
            let terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            match terminate {
                Ok(mut terminate) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = terminate.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        let announce = |node: &Node| {
            tracing::info!(node = node.id(), listen = %config.listen, advertise = %config.advertise_url(), restarted, "serving");
            if !restarted {
                eprintln!(
                    "keel: node {} of cluster {} serving at {}",
                    node.id(),
                    node.cluster_id(),
                    config.advertise_url()
                );
            }
        };
        daemon::run(config.clone(), &listener, carry.clone(), stop, announce)
            .await
            .map_err(|e| CliError::usage(format!("{e:#}")))
    })?;
    match outcome {
        daemon::Outcome::Stopped => {
            eprintln!("keel: node stopped");
            Ok(())
        }
        daemon::Outcome::Restart(kind) => {
            use std::os::unix::process::CommandExt;
            tracing::warn!(?kind, "restarting this node (re-exec)");
            let env = daemon::restart_env(&listener, &carry)?;
            // The running image, even if its file was replaced since (an upgrade).
            let error = std::process::Command::new("/proc/self/exe")
                .args(std::env::args_os().skip(1))
                .envs(env)
                .exec();
            Err(CliError::failed(format!(
                "cannot restart the node (re-exec of /proc/self/exe): {error}; start it again"
            )))
        }
    }
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// Data directory of the new node (missing or empty).
    #[arg(long, env = "KEEL_DATA_DIR", value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Any member of the cluster to join.
    #[arg(long, value_name = "URL")]
    pub endpoint: String,
    /// The cluster's join token (printed by `keel init`).
    #[arg(long, env = "KEEL_JOIN_TOKEN")]
    pub token: String,
    /// Address the new node will listen on (default 127.0.0.1:7001).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7001")]
    pub listen: SocketAddr,
    /// URL the new node will be reached at (default: http://<listen>).
    #[arg(long, value_name = "URL")]
    pub advertise: Option<String>,
}

pub fn join(args: &JoinArgs, out: Output) -> anyhow::Result<()> {
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.listen));
    let answer = block_on(keel_node::admin::join_cluster(
        &args.data_dir,
        &args.endpoint,
        &args.token,
        &advertise,
    ))?;
    out.emit(&answer, || {
        let mut text = format!(
            "joined cluster {} as node {} (a learner until it has caught up)\nstart it with: keel serve --data-dir {} --listen {}",
            answer.cluster_id,
            answer.node_id,
            args.data_dir.display(),
            args.listen
        );
        if !answer.replaced.is_empty() {
            text.push_str(&format!("\nreplaced members at the same address: {:?}", answer.replaced));
        }
        text
    })
}

#[derive(Args, Debug)]
pub struct EndpointArg {
    /// A node's URL (default: the local node).
    #[arg(long, env = "KEEL_ENDPOINT", value_name = "URL", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
}

/// Removes the node at `--endpoint` from its cluster.
pub fn leave(args: &EndpointArg, out: Output) -> anyhow::Result<()> {
    let client = Client::new(&args.endpoint);
    let answer = block_on(async {
        let id = client.status().await?.node_id;
        client.remove_member(id).await.map(|_| id)
    })?;
    out.emit(&serde_json::json!({ "left": answer }), || {
        format!("node {answer} left the cluster; stop it now (it no longer takes part)")
    })
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Remove a member by id (e.g. a node that is gone for good).
    Remove {
        id: u64,
        #[command(flatten)]
        target: EndpointArg,
    },
}

pub fn member(command: &MemberCommand, out: Output) -> anyhow::Result<()> {
    match command {
        MemberCommand::Remove { id, target } => {
            let answer = block_on(Client::new(&target.endpoint).remove_member(*id))?;
            out.emit(&answer, || format!("removed node {id}"))
        }
    }
}

pub fn status(args: &EndpointArg, out: Output) -> anyhow::Result<()> {
    let status = block_on(Client::new(&args.endpoint).cluster_status())?;
    out.emit(&status, || render_status(&status))
}

/// The cluster status as a table.
pub fn render_status(status: &ClusterStatus) -> String {
    let rows: Vec<Vec<String>> = status
        .members
        .iter()
        .map(|m| {
            let s = m.status.as_ref();
            let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
            vec![
                m.node_id.to_string(),
                m.addr.clone(),
                s.map_or_else(|| "down".to_string(), |s| s.role.clone()),
                m.membership.clone(),
                s.map_or("-".into(), |s| s.term.to_string()),
                opt(s.and_then(|s| s.last_log_index)),
                opt(s.and_then(|s| s.committed_index)),
                opt(s.and_then(|s| s.applied_index)),
                opt(m.lag),
                m.last_contact_ms.map_or("-".into(), |ms| format!("{ms}ms")),
                s.map_or("no".into(), |s| {
                    if s.ready {
                        "yes".into()
                    } else {
                        "no".into()
                    }
                }),
                s.map_or("-".into(), |s| s.root_revision.to_string()),
                s.and_then(|s| s.root.as_ref())
                    .map_or("-".into(), |r| r.chars().take(19).collect()),
            ]
        })
        .collect();
    // Why a member is down goes under the table, where a long message does
    // not stretch every row.
    let down: String = status
        .members
        .iter()
        .filter(|m| m.status.is_none())
        .map(|m| {
            let why = m.error.as_deref().unwrap_or("no answer");
            format!("\nnode {} did not answer: {why}", m.node_id)
        })
        .collect();
    format!(
        "cluster {}  leader {}\n{}{down}",
        status.cluster_id,
        status.leader.map_or("none".into(), |l| l.to_string()),
        table(
            &[
                "ID",
                "ADDRESS",
                "ROLE",
                "MEMBER",
                "TERM",
                "LAST LOG",
                "COMMITTED",
                "APPLIED",
                "LAG",
                "CONTACT",
                "READY",
                "ROOT REV",
                "ROOT"
            ],
            &rows
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_node::api::MemberStatus;

    #[test]
    fn a_down_member_is_down_in_the_table_and_why_is_below_it() {
        let why = "error sending request: Connection refused (os error 111)";
        let status = ClusterStatus {
            cluster_id: "c".into(),
            leader: None,
            reported_by: 2,
            members: vec![MemberStatus {
                node_id: 1,
                addr: "http://127.0.0.1:7001".into(),
                membership: "voter".into(),
                matched_index: None,
                lag: None,
                last_contact_ms: None,
                status: None,
                error: Some(why.into()),
            }],
        };
        let text = render_status(&status);
        let row = text.lines().nth(2).unwrap();
        assert!(row.contains(" down ") && !row.contains(why), "{text}");
        assert_eq!(
            text.lines().last().unwrap(),
            format!("node 1 did not answer: {why}")
        );
    }
}
