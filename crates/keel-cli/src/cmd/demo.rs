//! `keel demo`: a local 3-node cluster on loopback, for trying Keel.
//!
//! Three `keel serve` processes with data under `./keel-demo/` (replaced on
//! every run), formed into one cluster; the demo waits until all three are
//! voters and ready, prints the endpoints, the status and commands to try,
//! and stops the nodes on Ctrl-C or SIGTERM (and they stop if it dies).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use keel_node::client::Client;

use super::block_on;
use crate::output::{CliError, Output};

const NODES: usize = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Marks a directory as made by the demo, so it is safe to replace.
const MARKER: &str = "KEEL-DEMO";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the demo keeps its data (replaced on every run).
    #[arg(long, default_value = "keel-demo")]
    pub dir: PathBuf,
    /// First port; the nodes use this one and the next two.
    #[arg(long, default_value_t = 7001)]
    pub port: u16,
    /// Start, print the status, and stop again (for scripts and tests).
    #[arg(long)]
    pub once: bool,
}

/// The node processes; stopped (SIGTERM, then waited for) when dropped.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &self.0 {
            // SAFETY: sending a signal to a child process id we own.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

fn prepare(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            return Err(CliError::usage(format!(
                "{} exists and was not made by `keel demo`; refusing to replace it (use --dir)",
                dir.display()
            )));
        }
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(MARKER),
        "made by keel demo; replaced on every run\n",
    )?;
    Ok(())
}

fn spawn_node(keel: &Path, data: &Path, port: u16, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    let mut command = Command::new(keel);
    command
        .args(["serve", "--data-dir"])
        .arg(data)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--promote-after-secs",
            "2",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: prctl in the child before exec; it only sets a signal to be
    // delivered when the parent (the demo) dies, so nodes never outlive it.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    Ok(command.spawn()?)
}

async fn wait_ready(client: &Client, what: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    while !client.ready().await.unwrap_or(false) {
        if started.elapsed() > READY_TIMEOUT {
            return Err(CliError::failed(format!(
                "{what} did not become ready within {READY_TIMEOUT:?}; see its log"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

pub fn run(args: &DemoArgs, out: Output) -> anyhow::Result<()> {
    let keel = std::env::current_exe()?;
    prepare(&args.dir)?;
    let urls: Vec<String> = (0..NODES)
        .map(|i| format!("http://127.0.0.1:{}", args.port + i as u16))
        .collect();
    let data = |i: usize| args.dir.join(format!("n{}", i + 1));
    let log = |i: usize| args.dir.join(format!("n{}.log", i + 1));
    let founded = keel_node::admin::init_cluster(&data(0))?;
    let mut nodes = Nodes(vec![spawn_node(&keel, &data(0), args.port, &log(0))?]);
    let status = block_on(async {
        wait_ready(&Client::new(&urls[0]), "node 1").await?;
        for i in 1..NODES {
            keel_node::admin::join_cluster(&data(i), &urls[0], &founded.join_token, &urls[i])
                .await?;
            nodes
                .0
                .push(spawn_node(&keel, &data(i), args.port + i as u16, &log(i))?);
        }
        let first = Client::new(&urls[0]);
        let started = Instant::now();
        loop {
            let status = first.cluster_status().await?;
            let all_ready = status.members.len() == NODES
                && status
                    .members
                    .iter()
                    .all(|m| m.membership == "voter" && m.status.as_ref().is_some_and(|s| s.ready));
            if all_ready {
                return Ok::<_, anyhow::Error>(status);
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(CliError::failed(
                    "the cluster did not become ready; see the node logs in the demo directory",
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })?;
    let keel = keel.display();
    out.emit(&serde_json::json!({ "endpoints": urls, "status": status, "join_token": founded.join_token }), || {
        format!(
            "Keel demo: a 3-node cluster on loopback (data and logs in {dir})\n\n\
             endpoints:\n  {endpoints}\n\n{status}\n\nTry, in another terminal:\n  \
             {keel} kv put --endpoint {u1} apps/web/config 'port=8080'\n  \
             {keel} kv get --endpoint {u2} apps/web/config\n  \
             {keel} kv ls --endpoint {u3} -r -l\n  \
             {keel} kv watch --endpoint {u2} apps\n  \
             {keel} status --endpoint {u1}\n  \
             {keel} primary --endpoint {u3}\n  \
             {keel} run --endpoint {u1} --grace 2s -- sh -c 'echo primary in term $KEEL_TERM; sleep 3600'\n  \
             curl {u1}/ready\n\n\
             Press Ctrl-C to stop the cluster.",
            dir = args.dir.display(),
            endpoints = urls.join("\n  "),
            status = super::cluster::render_status(&status),
            u1 = urls[0],
            u2 = urls[1],
            u3 = urls[2],
        )
    })?;
    if args.once {
        return Ok(());
    }
    block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("keel demo: stopping the cluster");
        Ok::<_, anyhow::Error>(())
    })?;
    drop(nodes);
    Ok(())
}
