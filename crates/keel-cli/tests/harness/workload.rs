//! A primary-only workload for tests: `keel run` supervising a shell script
//! that records its start, a tick every 100 ms and its stop (node, term,
//! pid, time) in one shared file, so a test can check from the record that
//! no two copies ever ran at once.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::keel;

/// A process may live this long after its last record (a tick is 100 ms).
pub const RECORD_SLACK_NS: u64 = 200_000_000;

/// The script: records `kind node term pid time_ns` lines; on SIGTERM it
/// records, lingers (ticking) for as many tenths of a second as the
/// `linger` file says, and exits. A background child checks that the whole
/// process group is stopped.
const SCRIPT: &str = r#"#!/bin/sh
dir="$(dirname "$0")"
rec() { echo "$1 $KEEL_NODE_ID $KEEL_TERM $$ $(date +%s%N)" >> "$dir/record"; }
on_term() {
  rec term
  n=$(cat "$dir/linger" 2>/dev/null || echo 0)
  i=0
  while [ "$i" -lt "$n" ]; do rec tick; sleep 0.1; i=$((i+1)); done
  rec stop
  exit 0
}
trap on_term TERM
rec start
sleep 1000 &
echo $! >> "$dir/children"
while true; do rec tick; sleep 0.1; done
"#;

/// The shared directory of a workload: its script and its record.
pub struct Workload {
    dir: PathBuf,
}

/// One run of the script, from its records.
#[derive(Debug)]
pub struct Instance {
    pub node: u64,
    pub term: u64,
    #[allow(dead_code)] // shown in failure messages
    pub pid: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub started: bool,
    pub stopped: bool,
}

impl Workload {
    pub fn new(dir: &Path) -> Workload {
        std::fs::create_dir_all(dir).unwrap();
        let script = dir.join("workload.sh");
        std::fs::write(&script, SCRIPT).unwrap();
        let status = std::process::Command::new("chmod")
            .arg("+x")
            .arg(&script)
            .status()
            .unwrap();
        assert!(status.success());
        Workload {
            dir: dir.to_path_buf(),
        }
    }

    /// Starts `keel run` for the node at `endpoint`.
    pub fn supervise(&self, endpoint: &str, grace: &str, log: &Path) -> Supervisor {
        let log = std::fs::File::create(log).unwrap();
        let child = keel()
            .args(["run", "--endpoint", endpoint, "--grace", grace, "--"])
            .arg(self.dir.join("workload.sh"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Supervisor { child }
    }

    /// How long (in tenths of a second) the script lingers after SIGTERM.
    pub fn set_linger(&self, tenths: u32) {
        std::fs::write(self.dir.join("linger"), tenths.to_string()).unwrap();
    }

    /// Every run so far, by first record.
    pub fn instances(&self) -> Vec<Instance> {
        let mut by_pid: BTreeMap<u64, Instance> = BTreeMap::new();
        let Ok(file) = std::fs::File::open(self.dir.join("record")) else {
            return Vec::new();
        };
        for line in BufReader::new(file).lines() {
            let line = line.unwrap();
            let fields: Vec<&str> = line.split_whitespace().collect();
            // A line torn by a kill mid-write is not a record.
            let [kind, node, term, pid, ns] = fields[..] else {
                continue;
            };
            let (Ok(node), Ok(term), Ok(pid), Ok(ns)) = (
                node.parse::<u64>(),
                term.parse::<u64>(),
                pid.parse::<u64>(),
                ns.parse::<u64>(),
            ) else {
                continue;
            };
            let instance = by_pid.entry(pid).or_insert(Instance {
                node,
                term,
                pid,
                first_ns: ns,
                last_ns: ns,
                started: false,
                stopped: false,
            });
            instance.first_ns = instance.first_ns.min(ns);
            instance.last_ns = instance.last_ns.max(ns);
            instance.started |= kind == "start";
            instance.stopped |= kind == "stop";
        }
        let mut instances: Vec<Instance> = by_pid.into_values().collect();
        instances.sort_by_key(|i| i.first_ns);
        instances
    }

    /// Whether `node` runs the workload now (a run without a stop record
    /// that ticked within the last second).
    pub fn running_on(&self, node: u64) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        self.instances()
            .iter()
            .any(|i| i.node == node && !i.stopped && now.saturating_sub(i.last_ns) < 1_000_000_000)
    }

    /// At no instant did two copies run; terms only grow; a term has one node.
    pub fn check_record(&self) -> Vec<Instance> {
        let instances = self.instances();
        let mut term_node: BTreeMap<u64, u64> = BTreeMap::new();
        for pair in instances.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            // A run killed on another node may have lived a little past its
            // last tick. On the same node there is one supervisor, which
            // starts a run only once the previous run's whole process group
            // is gone (`keel run` waits for it after its SIGKILL), so a
            // record that ends before the next one starts is enough.
            let slack = if a.node == b.node { 0 } else { RECORD_SLACK_NS };
            assert!(
                b.first_ns > a.last_ns + slack,
                "two copies ran at once: {a:?} and {b:?} ({} ms apart)",
                (b.first_ns as i128 - a.last_ns as i128) / 1_000_000
            );
            assert!(b.term >= a.term, "terms went backwards: {a:?} then {b:?}");
        }
        for instance in &instances {
            assert!(
                instance.started,
                "an instance without a start: {instance:?}"
            );
            let node = *term_node.entry(instance.term).or_insert(instance.node);
            assert_eq!(
                node, instance.node,
                "term {} ran on two nodes",
                instance.term
            );
        }
        instances
    }

    /// Background children of the scripts that are still alive (they must
    /// die with their process group).
    pub fn leftover_children(&self) -> Vec<i32> {
        let children = std::fs::read_to_string(self.dir.join("children")).unwrap_or_default();
        children
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter(|pid| {
                // SAFETY: signal 0 only checks for existence.
                let alive = unsafe { libc::kill(*pid, 0) } == 0;
                let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.contains(") Z "))
                    .unwrap_or(true);
                alive && !zombie
            })
            .collect()
    }
}

/// One `keel run`.
pub struct Supervisor {
    child: Child,
}

impl Supervisor {
    /// SIGTERM: it stops its command, then exits.
    pub fn stop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("keel run did not stop within 10 s of SIGTERM");
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
