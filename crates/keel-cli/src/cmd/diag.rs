//! `keel diag`: every node's checks with a verdict and the evidence, and
//! where each node stands on the escalation ladder.

use std::time::Duration;

use keel_node::health::diag::{ClusterDiagnostics, NodeDiagnostics, Verdict};

use super::block_on;
use super::cluster::EndpointArg;
use crate::output::{table, CliError, Output};

/// Prints the diagnostics; exits 1 when any check is not ok.
pub fn run(args: &EndpointArg, out: Output) -> anyhow::Result<()> {
    let client = keel_node::client::Client::new(&args.endpoint);
    let report = block_on(client.diagnostics())?;
    out.emit(&report, || render(&report))?;
    match report.verdict {
        Verdict::Ok => Ok(()),
        verdict => Err(CliError::failed(format!(
            "the cluster's health is {}",
            verdict_name(verdict)
        ))),
    }
}

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Ok => "ok",
        Verdict::Warning => "warning",
        Verdict::Critical => "critical",
    }
}

fn render(report: &ClusterDiagnostics) -> String {
    let mut text = format!(
        "cluster health: {} (asked node {})",
        verdict_name(report.verdict).to_uppercase(),
        report.reported_by
    );
    for member in &report.members {
        text.push_str("\n\n");
        match (&member.diagnostics, &member.error) {
            (Some(node), _) => text.push_str(&render_node(node)),
            (None, error) => text.push_str(&format!(
                "node {} {}: CRITICAL, did not answer: {}",
                member.node_id,
                member.addr,
                error.as_deref().unwrap_or("no answer")
            )),
        }
    }
    text
}

fn render_node(node: &NodeDiagnostics) -> String {
    let rows: Vec<Vec<String>> = node
        .checks
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                verdict_name(c.verdict).to_string(),
                c.summary.clone(),
            ]
        })
        .collect();
    let mut text = format!(
        "node {} {}: {}\n{}",
        node.node_id,
        node.addr,
        verdict_name(node.verdict).to_uppercase(),
        table(&["CHECK", "VERDICT", "SUMMARY"], &rows)
    );
    let escalation = &node.escalation;
    if escalation.problem.is_some() || !escalation.events.is_empty() {
        text.push_str(&format!(
            "\nladder: {}{}{}",
            escalation.step,
            escalation
                .problem_for_ms
                .map_or(String::new(), |ms| format!(
                    " for {}",
                    humantime::format_duration(Duration::from_secs(ms / 1000))
                )),
            if escalation.fenced { ", fenced" } else { "" }
        ));
        for event in escalation.events.iter().rev().take(5).rev() {
            text.push_str(&format!(
                "\n  {}  {:<9} {}",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_millis(event.at_ms)
                ),
                event.step,
                event.message
            ));
        }
    }
    text
}
