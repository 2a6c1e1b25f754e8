//! `keel run --group G -- CMD ARGS...`: runs a command only while the local
//! node is the group's primary.
//!
//! The supervisor asks its node every [`POLL`] whether it holds the role
//! (`GET /v1/primary/{group}/self`). An answer is valid for `valid_for_ms`
//! counted from when the question was *sent*, so the supervisor's deadline
//! is never later than the node's own lease. It starts the command when the
//! node is primary and `start_in_ms` is 0 (a new primary waits for the
//! previous one's workload to have surely stopped), and stops it when the
//! node says it is not primary, when the term changes, or when the deadline
//! passes without a fresh answer (the node is dead, paused or cut off).
//!
//! Stopping sends SIGTERM to the command's whole process group, then
//! SIGKILL after `--grace`, and never later than the deadline plus the
//! group's handover: the bound the next primary relies on. The supervisor is
//! a child subreaper, so a shell's orphaned children stay in reach and are
//! reaped.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Args;
use keel_node::client::{Client, ClientError};
use keel_node::primary::rules::DEFAULT_GROUP;
use keel_node::primary::SelfStatus;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::output::{CliError, Output};

/// How often the supervisor asks its node.
const POLL: Duration = Duration::from_millis(200);
/// The longest a question may take (shorter when the deadline is nearer).
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// First restart delay after the command exits while still primary.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run this long resets the backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The group whose primary runs the command.
    #[arg(long, default_value = DEFAULT_GROUP)]
    pub group: String,
    /// Time between SIGTERM and SIGKILL when the role is lost (capped by the
    /// group's handover, see `keel group set --handover`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// The local node's URL.
    #[arg(long, env = "KEEL_ENDPOINT", value_name = "URL", default_value = super::DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// The command and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

/// The running command: the leader of its own process group.
struct Workload {
    pgid: libc::pid_t,
    term: u64,
    started: Instant,
    /// The leader's exit status, once reaped.
    exited: Option<i32>,
}

/// What the supervisor knows of its node's role.
#[derive(Clone, Copy)]
struct Lease {
    term: u64,
    /// The role is certain until then.
    until: Instant,
    handover: Duration,
}

struct Supervisor<'a> {
    args: &'a RunArgs,
    out: Output,
    client: Client,
    node_id: u64,
    lease: Option<Lease>,
    /// The handover of the last answer (kept after the lease is gone).
    handover: Duration,
    workload: Option<Workload>,
    backoff: Duration,
    restart_at: Option<Instant>,
    /// The last thing reported, so a steady state is reported once.
    last_note: String,
}

pub fn run(args: &RunArgs, out: Output) -> anyhow::Result<()> {
    keel_node::primary::validate_group(&args.group).map_err(CliError::usage)?;
    // Current-thread: the command is spawned from the main thread, which
    // outlives it, so its parent-death signal fires only when we die.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(supervise(args, out))
}

async fn supervise(args: &RunArgs, out: Output) -> anyhow::Result<()> {
    let client = Client::new(&args.endpoint);
    let first = client
        .primary_self(&args.group, Duration::from_secs(10))
        .await
        .map_err(|error| match error {
            ClientError::Unreachable { .. } => CliError::usage(format!(
                "cannot reach the local node: {error}; is `keel serve` running there? (--endpoint URL names another node)"
            )),
            other => CliError::usage(format!("the node at {} refused: {other}", args.endpoint)),
        })?;
    // SAFETY: prctl with constant arguments; affects only this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mut supervisor = Supervisor {
        args,
        out,
        client,
        node_id: first.node_id,
        lease: None,
        handover: Duration::from_millis(first.handover_ms),
        workload: None,
        backoff: BACKOFF_MIN,
        restart_at: None,
        last_note: String::new(),
    };
    supervisor.note(
        "supervising",
        &format!(
            "node {} supervises {:?} for group {}",
            first.node_id, args.command, args.group
        ),
    );
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    loop {
        supervisor.step().await;
        tokio::select! {
            _ = tokio::time::sleep(supervisor.pause()) => {}
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => break,
        }
    }
    supervisor.stop("keel run is stopping").await;
    Ok(())
}

impl Supervisor<'_> {
    /// Time to the next round: a poll, or sooner if the lease of a running
    /// command runs out before then.
    fn pause(&self) -> Duration {
        match self.lease {
            Some(lease) if self.workload.is_some() => {
                POLL.min(lease.until.saturating_duration_since(Instant::now()))
            }
            _ => POLL,
        }
    }

    /// One round: reap, check the lease, ask the node, act.
    async fn step(&mut self) {
        self.reap();
        if let Some(status) = self.workload.as_ref().and_then(|w| w.exited) {
            self.after_exit(status).await;
        }
        if self
            .lease
            .is_some_and(|lease| Instant::now() >= lease.until)
        {
            self.stop(
                "lease expired: the node could not confirm its role (dead, paused or cut off?)",
            )
            .await;
            self.lease = None;
        }
        let sent = Instant::now();
        let timeout = match self.lease {
            Some(lease) if self.workload.is_some() => {
                ASK_TIMEOUT.min(lease.until.saturating_duration_since(sent))
            }
            _ => ASK_TIMEOUT,
        };
        match self.client.primary_self(&self.args.group, timeout).await {
            Ok(answer) => self.on_answer(sent, answer).await,
            Err(error) => self.note(
                "unreachable",
                &format!("cannot ask the local node ({error}); a running command keeps running only until the lease runs out"),
            ),
        }
    }

    async fn on_answer(&mut self, sent: Instant, answer: SelfStatus) {
        self.handover = Duration::from_millis(answer.handover_ms);
        if !answer.primary {
            let reason = answer.reason.unwrap_or_else(|| "not the primary".into());
            if self.workload.is_some() {
                self.stop(&format!(
                    "no longer primary (term {}): {reason}",
                    answer.term
                ))
                .await;
            } else {
                self.note("standby", &format!("standing by: {reason}"));
            }
            self.lease = None;
            self.restart_at = None;
            return;
        }
        if self
            .workload
            .as_ref()
            .is_some_and(|w| w.term != answer.term)
        {
            // Stopped under the old term's lease, before the new one replaces it.
            self.stop(&format!("the term changed to {}", answer.term))
                .await;
        }
        self.lease = Some(Lease {
            term: answer.term,
            until: sent + Duration::from_millis(answer.valid_for_ms),
            handover: self.handover,
        });
        if self.workload.is_some() {
            return;
        }
        if answer.start_in_ms > 0 {
            let wait = Duration::from_secs(answer.start_in_ms.div_ceil(1000));
            self.note(
                "handover",
                &format!(
                    "primary for term {}; starting in {} (the previous primary's command must have stopped)",
                    answer.term,
                    humantime::format_duration(wait)
                ),
            );
            return;
        }
        if self.restart_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        self.start(answer.term);
    }

    fn start(&mut self, term: u64) {
        let (program, rest) = self
            .args
            .command
            .split_first()
            .expect("clap requires a command");
        let mut command = Command::new(program);
        command
            .args(rest)
            .env("KEEL_GROUP", &self.args.group)
            .env("KEEL_TERM", term.to_string())
            .env("KEEL_NODE_ID", self.node_id.to_string())
            .env("KEEL_ENDPOINT", &self.args.endpoint)
            .stdin(Stdio::null())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it only asks for SIGKILL if
        // the supervisor dies (the command must not outlive its fencing).
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        match command.spawn() {
            Ok(child) => {
                let pgid = child.id() as libc::pid_t;
                // The child is reaped by `reap` (waitpid on its group), not by std.
                drop(child);
                self.workload = Some(Workload {
                    pgid,
                    term,
                    started: Instant::now(),
                    exited: None,
                });
                self.note(
                    "started",
                    &format!(
                        "primary for term {term}: started {:?} (pid {pgid})",
                        program
                    ),
                );
            }
            Err(error) => {
                self.note(
                    "spawn-failed",
                    &format!("cannot start {:?}: {error}", program),
                );
                self.schedule_restart();
            }
        }
    }

    /// Reaps every exited process of the command's group (ours as the
    /// parent, or as the subreaper of its orphans).
    fn reap(&mut self) {
        let Some(workload) = &mut self.workload else {
            return;
        };
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own children, non-blocking.
            let pid = unsafe { libc::waitpid(-workload.pgid, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == workload.pgid {
                workload.exited = Some(status);
            }
        }
    }

    /// Whether any process of the command's group is left.
    fn group_alive(pgid: libc::pid_t) -> bool {
        // SAFETY: signal 0 only checks for existence.
        unsafe { libc::kill(-pgid, 0) == 0 }
    }

    /// The command exited by itself while the node may still be primary.
    async fn after_exit(&mut self, status: i32) {
        // Whatever it left behind in its group goes too.
        self.kill_group_now().await;
        let ran = self
            .workload
            .take()
            .map_or(Duration::ZERO, |w| w.started.elapsed());
        if ran >= BACKOFF_RESET_AFTER {
            self.backoff = BACKOFF_MIN;
        }
        self.note(
            "exited",
            &format!(
                "the command {} after {}; restarting in {} if still primary",
                describe_status(status),
                humantime::format_duration(Duration::from_secs(ran.as_secs())),
                humantime::format_duration(self.backoff)
            ),
        );
        self.schedule_restart();
    }

    fn schedule_restart(&mut self) {
        self.restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// SIGKILLs what is left of the group and waits until it is gone.
    async fn kill_group_now(&mut self) {
        let Some(workload) = &self.workload else {
            return;
        };
        let pgid = workload.pgid;
        // SAFETY: signalling the process group we created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let give_up = Instant::now() + Duration::from_secs(10);
        while Self::group_alive(pgid) && Instant::now() < give_up {
            self.reap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.reap();
    }

    /// Stops the command: SIGTERM to its group, SIGKILL after the grace or
    /// at the lease deadline plus the handover, whichever comes first.
    async fn stop(&mut self, reason: &str) {
        let Some(workload) = &self.workload else {
            return;
        };
        let pgid = workload.pgid;
        let now = Instant::now();
        // The next primary starts no sooner than our lease plus the handover.
        let bound = match self.lease.filter(|l| l.term == workload.term) {
            Some(lease) => lease.until + lease.handover,
            None => now + self.handover,
        };
        let kill_at = bound.min(now + self.args.grace);
        self.note(
            "stopping",
            &format!("stopping the command (term {}): {reason}", workload.term),
        );
        // SAFETY: signalling the process group we created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        while Self::group_alive(pgid) && Instant::now() < kill_at {
            self.reap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let killed = Self::group_alive(pgid);
        self.kill_group_now().await;
        self.workload = None;
        self.restart_at = None;
        self.note(
            "stopped",
            if killed {
                "the command did not stop in time: killed (SIGKILL)"
            } else {
                "the command stopped"
            },
        );
    }

    /// Reports an event (once per distinct message).
    fn note(&mut self, event: &str, message: &str) {
        if self.last_note == message {
            return;
        }
        self.last_note = message.to_string();
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        if self.out.json {
            let line = serde_json::json!({
                "time": now.to_string(),
                "event": event,
                "group": self.args.group,
                "node_id": self.node_id,
                "message": message,
            });
            println!("{line}");
        } else {
            eprintln!("{now} keel run: {message}");
        }
    }
}

fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended (wait status {status})")
    }
}
