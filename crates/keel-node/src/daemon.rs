//! Running a node as a daemon (`keel serve`): the node and its HTTP server,
//! a graceful stop, and the restarts its health monitor asks for.
//!
//! A restart is a re-exec of the same command line, in the same process
//! (same pid, so service managers and tests keep track of it): every thread,
//! connection and file of the old incarnation is gone, exactly as after a
//! crash, which Keel is built to survive; unlike a crash, the store was
//! closed cleanly first. Two things cross the exec in the environment: the
//! listening socket (so clients queue instead of being refused) and the
//! health monitor's ladder (a restart is a step of an episode, not its end).
//! A rebuild also sets the Raft log aside before the exec.

use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Duration;

use crate::config::NodeConfig;
use crate::health::{wall_ms, HealthCarry, Restart};
use crate::node::Node;

/// The inherited listening socket's file descriptor.
pub const LISTEN_FD_ENV: &str = "KEEL_LISTEN_FD";
/// The health monitor's carried state.
pub const HEALTH_STATE_ENV: &str = "KEEL_HEALTH_STATE";
/// How long the server may take to finish its requests at a stop.
const SERVER_DRAIN: Duration = Duration::from_secs(5);

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    Stopped,
    /// Re-exec now, passing [`restart_env`].
    Restart(Restart),
}

/// The socket to serve on: inherited across a restart, or bound now.
pub fn listener(config: &NodeConfig) -> anyhow::Result<std::net::TcpListener> {
    if let Some(fd) = std::env::var(LISTEN_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        // SAFETY: the previous incarnation passed this descriptor, open and
        // listening, for exactly this use; nothing else owns it.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        if listener.local_addr().is_ok() {
            return Ok(listener);
        }
    }
    std::net::TcpListener::bind(config.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))
}

/// The health state an earlier incarnation passed on (empty otherwise).
pub fn carried_health() -> HealthCarry {
    std::env::var(HEALTH_STATE_ENV)
        .map(|text| HealthCarry::import(&text))
        .unwrap_or_default()
}

/// What the next incarnation needs in its environment; `listener` is made
/// inheritable.
pub fn restart_env(
    listener: &std::net::TcpListener,
    carry: &HealthCarry,
) -> anyhow::Result<Vec<(String, String)>> {
    let fd = listener.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own; clears close-on-exec only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    anyhow::ensure!(
        flags >= 0 && unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } == 0,
        "cannot pass the listening socket on: {}",
        std::io::Error::last_os_error()
    );
    Ok(vec![
        (LISTEN_FD_ENV.to_string(), fd.to_string()),
        (HEALTH_STATE_ENV.to_string(), carry.export()),
    ])
}

/// Runs the node until `stop` resolves or its health monitor asks for a
/// restart; `announce` is called once the node has started.
pub async fn run(
    config: NodeConfig,
    listener: &std::net::TcpListener,
    carry: HealthCarry,
    stop: impl Future<Output = ()>,
    announce: impl FnOnce(&Node),
) -> anyhow::Result<Outcome> {
    listener.set_nonblocking(true)?;
    let node = Node::start_with(config.clone(), carry.clone()).await?;
    announce(&node);
    let socket = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
    let mut server = tokio::spawn(crate::server::serve_on(node.clone(), socket));
    let mut restart = node.restart_requested();
    tokio::pin!(stop);
    let outcome = tokio::select! {
        _ = &mut stop => Outcome::Stopped,
        asked = restart.wait_for(|r| r.is_some()) => match asked.ok().and_then(|r| *r) {
            Some(kind) => Outcome::Restart(kind),
            None => Outcome::Stopped,
        },
        ended = &mut server => {
            let _ = node.shutdown().await;
            return match ended {
                Ok(Ok(())) => Ok(Outcome::Stopped),
                Ok(Err(error)) => Err(error),
                Err(error) => Err(error.into()),
            };
        }
    };
    node.shutdown().await?;
    // Streams (watches) never end by themselves: cut them after a while.
    if tokio::time::timeout(SERVER_DRAIN, &mut server)
        .await
        .is_err()
    {
        server.abort();
    }
    if let Outcome::Restart(Restart::Rebuild) = outcome {
        let raft = config.data_dir.join("raft");
        let aside =
            config
                .data_dir
                .join(format!("{}{}", crate::log_store::ASIDE_PREFIX, wall_ms()));
        let moved = crate::log_store::set_aside(&raft, &aside)?;
        carry.note(
            "rebuild",
            format!(
                "set {moved} log segment(s) aside in {} (kept until the node is ready again); restarting",
                aside.display()
            ),
        );
    }
    Ok(outcome)
}
