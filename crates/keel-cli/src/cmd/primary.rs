//! `keel primary` (who holds a group's role, its term and candidates),
//! `keel primary watch`, `keel primary history`, and `keel group`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use keel_node::client::Client;
use keel_node::primary::rules::{GroupConfig, DEFAULT_GROUP};
use keel_node::primary::PrimaryStatus;

use super::block_on;
use super::cluster::EndpointArg;
use crate::output::{table, CliError, Output};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PrimaryArgs {
    #[command(subcommand)]
    pub command: Option<PrimaryCommand>,
    /// The group (default: `default`).
    #[arg(value_name = "GROUP")]
    pub group: Option<String>,
    #[command(flatten)]
    pub target: EndpointArg,
}

#[derive(Subcommand, Debug)]
pub enum PrimaryCommand {
    /// Print a line per change of the group's primary (Ctrl-C to stop).
    Watch(GroupArg),
    /// The group's decisions, oldest first.
    History(GroupArg),
}

#[derive(Args, Debug)]
pub struct GroupArg {
    /// The group (default: `default`).
    #[arg(value_name = "GROUP", default_value = DEFAULT_GROUP)]
    pub group: String,
    #[command(flatten)]
    pub target: EndpointArg,
}

pub fn primary(args: &PrimaryArgs, out: Output) -> anyhow::Result<()> {
    match &args.command {
        None => {
            let group = args.group.as_deref().unwrap_or(DEFAULT_GROUP);
            let status = block_on(Client::new(&args.target.endpoint).primary(group))?;
            out.emit(&status, || render_primary(&status))
        }
        Some(PrimaryCommand::History(arg)) => {
            let history = block_on(Client::new(&arg.target.endpoint).primary_history(&arg.group))?;
            out.emit(&history, || {
                let rows: Vec<Vec<String>> = history
                    .iter()
                    .map(|d| {
                        vec![
                            d.term.to_string(),
                            node_name(d.primary),
                            wall_time(d.at_ms),
                            d.reason.clone(),
                        ]
                    })
                    .collect();
                table(&["TERM", "PRIMARY", "SINCE", "REASON"], &rows)
            })
        }
        Some(PrimaryCommand::Watch(arg)) => watch(arg, out),
    }
}

/// Prints a line per change; reconnects (and says so on stderr) when the
/// node restarts, printing only what is newer than the last line.
fn watch(arg: &GroupArg, out: Output) -> anyhow::Result<()> {
    const RECONNECT: Duration = Duration::from_secs(1);
    let client = Client::new(&arg.target.endpoint);
    let mut last_term = None;
    let mut connected_once = false;
    block_on(async {
        loop {
            let mut stdout_closed = false;
            let result = client
                .primary_watch(&arg.group, |change| {
                    connected_once = true;
                    if last_term.is_some_and(|t| change.term <= t) {
                        return true;
                    }
                    last_term = Some(change.term);
                    // One line per change, JSON lines with --json.
                    let line = if out.json {
                        serde_json::to_string(&change).unwrap_or_default()
                    } else {
                        format!(
                            "{}  group {}  primary {}  term {}  ({})",
                            wall_time(change.since_ms),
                            change.group,
                            node_name(change.primary),
                            change.term,
                            change.reason.as_deref().unwrap_or("no decision yet")
                        )
                    };
                    let mut stdout = std::io::stdout().lock();
                    stdout_closed = writeln!(stdout, "{line}")
                        .and_then(|()| stdout.flush())
                        .is_err();
                    !stdout_closed
                })
                .await;
            if stdout_closed {
                return Ok(());
            }
            match result {
                Err(error) if !connected_once => return Err(error.into()),
                Err(keel_node::client::ClientError::Api { message, .. }) => {
                    return Err(CliError::failed(message))
                }
                Err(error) => eprintln!("keel: watch interrupted ({error}); reconnecting"),
                Ok(()) => eprintln!("keel: the node closed the watch; reconnecting"),
            }
            tokio::time::sleep(RECONNECT).await;
        }
    })
}

fn node_name(node: Option<u64>) -> String {
    node.map_or("none".into(), |n| format!("node {n}"))
}

/// A wall-clock instant (ms since the epoch) as RFC 3339, to the second.
fn wall_time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn ago(ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let secs = now.saturating_sub(ms) / 1000;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn render_primary(status: &PrimaryStatus) -> String {
    let since = if status.term == 0 {
        "never elected".to_string()
    } else {
        format!(
            "since {} ({} ago)",
            wall_time(status.since_ms),
            ago(status.since_ms)
        )
    };
    let rows: Vec<Vec<String>> = status
        .candidates
        .iter()
        .map(|c| {
            vec![
                c.node_id.to_string(),
                c.priority.to_string(),
                if c.live { "live" } else { "dead" }.to_string(),
                if c.live {
                    humantime::format_duration(Duration::from_secs(c.live_for_ms / 1000))
                        .to_string()
                } else {
                    "-".into()
                },
                c.last_heard_ms
                    .map_or("never".into(), |ms| format!("{ms}ms ago")),
                c.cooldown_remaining_ms.map_or("-".into(), |ms| {
                    humantime::format_duration(Duration::from_secs(ms.div_ceil(1000))).to_string()
                }),
            ]
        })
        .collect();
    format!(
        "group {}: primary {}, term {}, {}\ncooldown {} (as seen by node {})\n{}",
        status.group,
        node_name(status.primary),
        status.term,
        since,
        humantime::format_duration(Duration::from_millis(status.cooldown_ms)),
        status.reported_by,
        table(
            &[
                "NODE",
                "PRIORITY",
                "LIVENESS",
                "LIVE FOR",
                "LAST HEARD",
                "COOLDOWN LEFT"
            ],
            &rows
        )
    )
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Show a group's configuration.
    Show(GroupArg),
    /// Change a group's configuration (only the options given change).
    Set(GroupSetArgs),
}

#[derive(Args, Debug)]
pub struct GroupSetArgs {
    /// The group (created if new).
    #[arg(value_name = "GROUP")]
    pub group: String,
    /// How long a better candidate must be continuously live before it
    /// displaces a live primary (e.g. `2m`, `30s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub cooldown: Option<Duration>,
    /// The most time a workload gets to stop once its node lost the role;
    /// a new primary starts its workload this long (plus the lease) after it
    /// was elected.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub handover: Option<Duration>,
    /// The nodes that may be primary, by id (e.g. `1,2,3`).
    #[arg(long, value_delimiter = ',', conflicts_with = "all_voters")]
    pub candidates: Option<Vec<u64>>,
    /// Every voter may be primary (the default).
    #[arg(long)]
    pub all_voters: bool,
    /// A node's priority, lower wins (`NODE=PRIORITY`, repeatable; a node
    /// without one ranks by its id).
    #[arg(long, value_parser = parse_priority, value_name = "NODE=PRIORITY")]
    pub priority: Vec<(u64, i64)>,
    /// Forget every priority first.
    #[arg(long)]
    pub clear_priorities: bool,
    #[command(flatten)]
    pub target: EndpointArg,
}

fn parse_priority(text: &str) -> Result<(u64, i64), String> {
    let (node, priority) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NODE=PRIORITY, e.g. 1=10"))?;
    let node = node
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {node:?} is not a node id"))?;
    let priority = priority
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {priority:?} is not an integer priority"))?;
    Ok((node, priority))
}

impl GroupSetArgs {
    fn apply(&self, mut config: GroupConfig) -> GroupConfig {
        if let Some(cooldown) = self.cooldown {
            config.cooldown_ms = Some(cooldown.as_millis() as u64);
        }
        if let Some(handover) = self.handover {
            config.handover_ms = Some(handover.as_millis() as u64);
        }
        if let Some(candidates) = &self.candidates {
            config.candidates = Some(candidates.clone());
        }
        if self.all_voters {
            config.candidates = None;
        }
        if self.clear_priorities {
            config.priorities = BTreeMap::new();
        }
        config.priorities.extend(self.priority.iter().copied());
        config
    }
}

pub fn group(command: &GroupCommand, out: Output) -> anyhow::Result<()> {
    let (group, config) = match command {
        GroupCommand::Show(arg) => {
            let config = block_on(Client::new(&arg.target.endpoint).group_config(&arg.group))?;
            (arg.group.clone(), config)
        }
        GroupCommand::Set(args) => {
            if args.candidates.as_ref().is_some_and(|c| c.is_empty()) {
                return Err(CliError::usage("--candidates needs at least one node id"));
            }
            let client = Client::new(&args.target.endpoint);
            let config = block_on(async {
                let config = args.apply(client.group_config(&args.group).await?);
                client.set_group_config(&args.group, &config).await?;
                Ok::<_, keel_node::client::ClientError>(config)
            })?;
            (args.group.clone(), config)
        }
    };
    let answer = serde_json::json!({ "group": group, "config": config });
    out.emit(&answer, || render_group(&group, &config))
}

fn render_group(group: &str, config: &GroupConfig) -> String {
    let candidates = config
        .candidates
        .as_ref()
        .map_or("every voter".into(), |c| {
            c.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        });
    let priorities = if config.priorities.is_empty() {
        "by node id".to_string()
    } else {
        config
            .priorities
            .iter()
            .map(|(node, p)| format!("{node}={p}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "group {group}\ncandidates  {candidates}\npriorities  {priorities} (lower wins)\ncooldown    {}\nhandover    {}",
        humantime::format_duration(config.cooldown()),
        humantime::format_duration(config.handover()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_parse_or_explain() {
        assert_eq!(parse_priority("1=10"), Ok((1, 10)));
        assert_eq!(parse_priority("3=-2"), Ok((3, -2)));
        assert!(parse_priority("1").unwrap_err().contains("NODE=PRIORITY"));
        assert!(parse_priority("x=1").unwrap_err().contains("not a node id"));
    }
}
