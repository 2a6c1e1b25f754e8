//! Diagnostics: every signal of a node as a check with a verdict (ok,
//! warning, critical) and the evidence behind it (`GET /v1/diagnostics`,
//! `keel diag`).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{wall_ms, Event};
use crate::node::Node;

/// Apply or replication lag beyond this many entries is a warning.
const LAG_WARN: u64 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warning,
    Critical,
}

/// One check of one node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub summary: String,
    pub evidence: serde_json::Value,
}

fn check(name: &str, verdict: Verdict, summary: String, evidence: serde_json::Value) -> Check {
    Check {
        name: name.to_string(),
        verdict,
        summary,
        evidence,
    }
}

/// The escalation ladder, as diagnostics show it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Escalation {
    /// normal, warned, nudging, waiting or rebuilding.
    pub step: String,
    pub problem: Option<String>,
    pub problem_for_ms: Option<u64>,
    pub fenced: bool,
    pub nudges: u32,
    pub rebuilds: u32,
    pub withheld: Option<String>,
    /// Old logs a rebuild set aside, kept until the node is ready again.
    pub kept_logs: Vec<String>,
    /// The ladder's recent steps, oldest first.
    pub events: Vec<Event>,
}

/// One node's diagnostics.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeDiagnostics {
    pub node_id: u64,
    pub addr: String,
    /// The worst verdict of its checks.
    pub verdict: Verdict,
    pub checks: Vec<Check>,
    pub escalation: Escalation,
    pub at_ms: u64,
}

/// One member in the cluster-wide answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberDiagnostics {
    pub node_id: u64,
    pub addr: String,
    pub diagnostics: Option<NodeDiagnostics>,
    /// Why the member did not answer.
    pub error: Option<String>,
}

/// `GET /v1/diagnostics`: every member, asked by one node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterDiagnostics {
    pub reported_by: u64,
    /// The worst verdict of all (a member that does not answer is critical).
    pub verdict: Verdict,
    pub members: Vec<MemberDiagnostics>,
}

/// Damaged ranges start-up found in the store's pack, whose blobs are gone
/// until repaired from a peer.
fn damaged_ranges(store: &keel_store::RecoveryReport) -> usize {
    store.padded_gaps + store.decayed_ranges + store.sealed_damage
}

/// What opening the store and the Raft log cut or repaired, in words;
/// `None` when both opened with nothing to fix.
pub fn startup_findings(
    store: &keel_store::RecoveryReport,
    log: &crate::log_store::LogRecovery,
) -> Option<String> {
    use crate::disk::human;
    let mut found = Vec::new();
    if store.truncated_bytes > 0 {
        found.push(match &store.quarantined {
            Some(kept) => format!(
                "cut {} of damage from the store's pack (kept in {})",
                human(store.truncated_bytes),
                kept.display()
            ),
            None => format!(
                "cut a torn tail of {} from the store's pack",
                human(store.truncated_bytes)
            ),
        });
    }
    let ranges = damaged_ranges(store);
    if ranges > 0 {
        found.push(format!(
            "found {ranges} damaged range(s) in the store's pack"
        ));
    }
    if !store.checkpoints_missing_root.is_empty() {
        found.push(format!(
            "found {} checkpoint(s) whose root is missing",
            store.checkpoints_missing_root.len()
        ));
    }
    if let Some(damage) = &store.checkpoint_history_damage {
        found.push(format!("found the checkpoint history damaged: {damage}"));
    }
    if log.truncated_bytes > 0 {
        found.push(format!(
            "cut {} from the Raft log's tail",
            human(log.truncated_bytes)
        ));
    }
    if log.committed_clamped {
        found.push("clamped a committed index that pointed past the Raft log".to_string());
    }
    if log.state_file_damaged {
        found.push("found one of the two Raft state files damaged (used the other)".to_string());
    }
    (!found.is_empty()).then(|| format!("start-up {}", found.join("; ")))
}

impl Node {
    /// This node's checks, computed from its current signals.
    pub fn diagnostics(&self) -> NodeDiagnostics {
        let now = Instant::now();
        let checks = vec![
            self.check_data_dir(),
            self.check_startup(),
            self.check_raft(),
            self.check_peers(now),
            self.check_replication(),
            self.check_catch_up(),
            self.check_fsync(),
            self.check_disk(),
            self.check_scrub(),
            self.check_escalation(now),
        ];
        let verdict = checks
            .iter()
            .map(|c| c.verdict)
            .max()
            .unwrap_or(Verdict::Ok);
        NodeDiagnostics {
            node_id: self.id(),
            addr: self.config().advertise_url(),
            verdict,
            checks,
            escalation: self.escalation(now),
            at_ms: wall_ms(),
        }
    }

    fn check_data_dir(&self) -> Check {
        let dir = self.config().data_dir.display().to_string();
        match self.inner.fence.check() {
            Ok(()) => check(
                "data_dir",
                Verdict::Ok,
                format!("{dir} is the directory this node started with"),
                json!({ "path": dir }),
            ),
            Err(reason) => check(
                "data_dir",
                Verdict::Critical,
                format!("{reason}; this node no longer acknowledges anything"),
                json!({ "path": dir, "reason": reason }),
            ),
        }
    }

    /// What opening the store and the Raft log cut or repaired, and
    /// whether the node has healed since: a warning only while it has not.
    fn check_startup(&self) -> Check {
        let store = self.inner.store.recovery();
        let log = &self.inner.log_recovery;
        let evidence = json!({ "store": store, "raft_log": log });
        let Some(found) = startup_findings(store, log) else {
            let after = if store.unclean_shutdown {
                " after an unclean shutdown"
            } else {
                ""
            };
            let summary = format!("opened{after} with nothing to cut or repair");
            return check("startup", Verdict::Ok, summary, evidence);
        };
        let status = self.status();
        let scrub = self.scrubber().status();
        let blobs_missing = damaged_ranges(store) > 0 || !store.checkpoints_missing_root.is_empty();
        let waiting = if !status.ready {
            Some(format!(
                "not ready yet: {}",
                status.not_ready_reason.as_deref().unwrap_or("catching up")
            ))
        } else if blobs_missing
            && scrub.enabled
            && (scrub.passes_completed == 0 || !scrub.critical.is_empty())
        {
            Some("waiting for a clean scrub pass to repair missing blobs from peers".to_string())
        } else {
            None
        };
        match waiting {
            Some(waiting) => check(
                "startup",
                Verdict::Warning,
                format!("{found}; healing, {waiting}"),
                evidence,
            ),
            None => check(
                "startup",
                Verdict::Ok,
                format!("{found}; healed: caught up and serving"),
                evidence,
            ),
        }
    }

    fn check_raft(&self) -> Check {
        let metrics = self.raft().metrics().borrow().clone();
        let status = self.status();
        let evidence = json!({
            "role": status.role,
            "term": status.term,
            "leader": status.leader,
            "last_leader_contact_ms": status.last_leader_contact_ms,
        });
        if let Err(error) = &metrics.running_state {
            return check(
                "raft",
                Verdict::Critical,
                format!("Raft stopped: {error}"),
                evidence,
            );
        }
        match (status.leader, status.ready) {
            (Some(leader), true) if leader == self.id() => check(
                "raft",
                Verdict::Ok,
                format!("leader in term {}", status.term),
                evidence,
            ),
            (Some(leader), true) => check(
                "raft",
                Verdict::Ok,
                format!("{} of leader {leader} in term {}", status.role, status.term),
                evidence,
            ),
            _ => check(
                "raft",
                Verdict::Warning,
                status
                    .not_ready_reason
                    .unwrap_or_else(|| "not ready".into()),
                evidence,
            ),
        }
    }

    fn check_peers(&self, now: Instant) -> Check {
        let dead_after = Duration::from_millis(self.config().primary.dead_after_ms);
        let metrics = self.raft().metrics().borrow().clone();
        let peers: Vec<(u64, Option<u64>)> = metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id())
            .map(|(id, _)| (*id, self.inner.primary.liveness.last_heard_ms(*id, now)))
            .collect();
        let unreachable: Vec<u64> = peers
            .iter()
            .filter(|(_, ago)| ago.is_none_or(|ms| ms > dead_after.as_millis() as u64))
            .map(|(id, _)| *id)
            .collect();
        let evidence = json!({
            "last_heard_ms": peers.iter().map(|(id, ago)| (id.to_string(), json!(ago))).collect::<serde_json::Map<_, _>>(),
            "dead_after_ms": dead_after.as_millis() as u64,
        });
        let (verdict, summary) = if peers.is_empty() {
            (Verdict::Ok, "a single-node cluster".to_string())
        } else if unreachable.is_empty() {
            (Verdict::Ok, format!("all {} peers heard", peers.len()))
        } else if unreachable.len() == peers.len() {
            (
                Verdict::Critical,
                "isolated: no peer heard within dead_after".into(),
            )
        } else {
            (Verdict::Warning, format!("not heard from: {unreachable:?}"))
        };
        check("peers", verdict, summary, evidence)
    }

    fn check_replication(&self) -> Check {
        let metrics = self.raft().metrics().borrow().clone();
        let status = self.status();
        let last_log = status.last_log_index.unwrap_or(0);
        let applied = status.applied_index.unwrap_or(0);
        let apply_lag = last_log.saturating_sub(applied);
        // On the leader: how far each follower trails its log.
        let followers: serde_json::Map<String, serde_json::Value> = metrics
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != self.id())
            .map(|(id, matched)| {
                let lag = last_log.saturating_sub(matched.map_or(0, |l| l.index));
                (id.to_string(), json!(lag))
            })
            .collect();
        let worst_follower = followers.values().filter_map(|v| v.as_u64()).max();
        let evidence = json!({
            "last_log": last_log,
            "committed": status.committed_index,
            "applied": applied,
            "apply_lag": apply_lag,
            "follower_lag": followers,
        });
        let (verdict, summary) = if apply_lag > LAG_WARN {
            (
                Verdict::Warning,
                format!("applying: {apply_lag} entries behind its log"),
            )
        } else if worst_follower.is_some_and(|lag| lag > LAG_WARN) {
            (
                Verdict::Warning,
                format!(
                    "a follower trails by {} entries",
                    worst_follower.unwrap_or(0)
                ),
            )
        } else {
            (
                Verdict::Ok,
                format!("applied {applied} of {last_log} (apply lag {apply_lag})"),
            )
        };
        check("replication", verdict, summary, evidence)
    }

    fn check_catch_up(&self) -> Check {
        let fetches = self.fetcher().in_progress();
        let snapshot = self.raft().metrics().borrow().snapshot.map(|l| l.index);
        let last = self.fetcher().last_complete();
        let evidence = json!({
            "fetches": fetches,
            "last_clean_pass": last.map(|(root, at_ms)| json!({"root": root.to_string(), "at_ms": at_ms})),
            "snapshot_index": snapshot,
        });
        match fetches.first() {
            Some(fetch) => check(
                "catch_up",
                Verdict::Warning,
                format!(
                    "fetching snapshot {}: {} blobs missing after {} passes",
                    fetch.root, fetch.missing, fetch.passes
                ),
                evidence,
            ),
            None => check(
                "catch_up",
                Verdict::Ok,
                match last {
                    Some((root, at_ms)) => format!(
                        "nothing to fetch; last clean pass {} ago ({root})",
                        humantime::format_duration(Duration::from_secs(
                            wall_ms().saturating_sub(at_ms) / 1000
                        ))
                    ),
                    None => "nothing to fetch".into(),
                },
                evidence,
            ),
        }
    }

    fn check_disk(&self) -> Check {
        let status = self.disk_status();
        let evidence = serde_json::to_value(&status).unwrap_or_default();
        let free = crate::disk::human(status.free_bytes);
        let staging = crate::disk::human(status.staging_bytes);
        let (verdict, summary) = if status.low_space {
            (
                Verdict::Critical,
                format!(
                    "disk full: {free} free (writes resume at {}); client writes and new entries refused, reclaiming space",
                    crate::disk::human(status.resume_at_free_bytes)
                ),
            )
        } else if !status.reserve_present && status.reserve_bytes > 0 {
            (
                Verdict::Warning,
                format!(
                    "{free} free, but the {} reserve is not in place yet",
                    crate::disk::human(status.reserve_bytes)
                ),
            )
        } else if status.free_bytes < 2 * status.low_watermark_bytes {
            (
                Verdict::Warning,
                format!(
                    "{free} free: writes stop below {}",
                    crate::disk::human(status.low_watermark_bytes)
                ),
            )
        } else {
            (
                Verdict::Ok,
                format!(
                    "{free} free of {}; staging {staging}",
                    crate::disk::human(status.total_bytes)
                ),
            )
        };
        check("disk", verdict, summary, evidence)
    }

    fn check_scrub(&self) -> Check {
        let status = self.scrubber().status();
        let evidence = serde_json::to_value(&status).unwrap_or_default();
        let (verdict, summary) = if let Some(first) = status.critical.first() {
            let keys = first.keys.join(", ");
            (
                Verdict::Critical,
                format!(
                    "{} blob(s) damaged on every replica, reads of their keys fail; first: {} (keys: {keys})",
                    status.critical.len(),
                    first.blob
                ),
            )
        } else if let Some(error) = &status.last_error {
            (
                Verdict::Warning,
                format!("the latest scrub pass failed (it is retried): {error}"),
            )
        } else if !status.enabled {
            (
                Verdict::Ok,
                "background scrub disabled; reads still repair what they meet".to_string(),
            )
        } else {
            (
                Verdict::Ok,
                format!(
                    "{} pass(es) completed; {} blob(s) repaired from peers since start",
                    status.passes_completed, status.repaired_total
                ),
            )
        };
        check("scrub", verdict, summary, evidence)
    }

    fn check_fsync(&self) -> Check {
        let stats = self.inner.log.fsync_stats();
        let settings = &self.config().health;
        let evidence = serde_json::to_value(&stats).unwrap_or_default();
        let slowest = stats.max_recent_ms;
        let (verdict, summary) = if stats.count == 0 {
            (Verdict::Ok, "no log fsync yet".to_string())
        } else if stats.last_failure.is_some() && stats.failures > 0 {
            (
                Verdict::Critical,
                format!(
                    "a log fsync failed: {}",
                    stats.last_failure.clone().unwrap_or_default()
                ),
            )
        } else if slowest >= settings.fsync_critical_ms as f64 {
            (
                Verdict::Critical,
                format!("log fsyncs are very slow: up to {slowest:.0} ms in the last minute"),
            )
        } else if slowest >= settings.fsync_warn_ms as f64 {
            (
                Verdict::Warning,
                format!("log fsyncs are slow: up to {slowest:.0} ms in the last minute"),
            )
        } else {
            (
                Verdict::Ok,
                format!(
                    "log fsync {:.1} ms on average, {slowest:.1} ms at most in the last minute",
                    stats.mean_ms
                ),
            )
        };
        check("fsync", verdict, summary, evidence)
    }

    fn escalation(&self, now: Instant) -> Escalation {
        let carry = self.health_carry();
        let ladder = carry.ladder();
        Escalation {
            step: ladder.as_ref().map_or("normal", |l| l.step).to_string(),
            problem: ladder.as_ref().and_then(|l| l.problem.clone()),
            problem_for_ms: ladder
                .as_ref()
                .and_then(|l| l.problem_since)
                .map(|since| now.saturating_duration_since(since).as_millis() as u64),
            fenced: ladder.as_ref().is_some_and(|l| l.fenced),
            nudges: ladder.as_ref().map_or(0, |l| l.nudges),
            rebuilds: ladder.as_ref().map_or(0, |l| l.rebuilds),
            withheld: ladder.as_ref().and_then(|l| l.withheld.clone()),
            kept_logs: self
                .rebuilt_logs()
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            events: carry.events(),
        }
    }

    fn check_escalation(&self, now: Instant) -> Check {
        let escalation = self.escalation(now);
        let evidence = serde_json::to_value(&escalation).unwrap_or_default();
        let verdict = if escalation.fenced || escalation.withheld.is_some() {
            Verdict::Critical
        } else if escalation.problem.is_some() && escalation.step != "normal" {
            Verdict::Warning
        } else {
            Verdict::Ok
        };
        let summary = match &escalation.problem {
            None => "no lasting problem".to_string(),
            Some(problem) => {
                let mut summary = format!("{}: {problem}", escalation.step);
                if escalation.fenced {
                    summary.push_str("; fenced (no primary role, no linearizable reads)");
                }
                if let Some(withheld) = &escalation.withheld {
                    summary.push_str(&format!("; {withheld}"));
                }
                summary
            }
        };
        check("escalation", verdict, summary, evidence)
    }

    /// Every member's diagnostics, asking each (a member that does not
    /// answer within a couple of seconds is reported critical).
    pub async fn cluster_diagnostics(&self) -> ClusterDiagnostics {
        let metrics = self.raft().metrics().borrow().clone();
        let queries = metrics
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| {
                let (id, addr) = (*id, node.addr.clone());
                let me = self.clone();
                async move {
                    let answer = if id == me.id() {
                        Ok(me.diagnostics())
                    } else {
                        me.fetch_diagnostics(&addr).await
                    };
                    match answer {
                        Ok(diagnostics) => MemberDiagnostics {
                            node_id: id,
                            addr,
                            diagnostics: Some(diagnostics),
                            error: None,
                        },
                        Err(error) => MemberDiagnostics {
                            node_id: id,
                            addr,
                            diagnostics: None,
                            error: Some(error),
                        },
                    }
                }
            })
            .collect::<Vec<_>>();
        let members = futures::future::join_all(queries).await;
        let verdict = members
            .iter()
            .map(|m| {
                m.diagnostics
                    .as_ref()
                    .map_or(Verdict::Critical, |d| d.verdict)
            })
            .max()
            .unwrap_or(Verdict::Ok);
        ClusterDiagnostics {
            reported_by: self.id(),
            verdict,
            members,
        }
    }
}
