//! Linearizability under faults, on three nodes and on five: clients write
//! and read a few keys through every node while the leader is cut off from
//! its peers or paused (SIGSTOP), and a minority of the nodes or all of them
//! are killed (SIGKILL); the history they record is checked against a
//! register's meaning in real time (`harness::linear`), and revisions,
//! watches and compare-and-sets against the writes. A stale read from a deposed leader, a lost
//! acknowledged write or a write seen before it was made fails the test.
//! Bounded in time; the seed is printed.

mod harness;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::linear::{self, Kind, Op, UNKNOWN};
use harness::{serial, Cluster, READY_TIMEOUT};
use keel_node::client::Client;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const KEYS: usize = 3;
const CLIENTS: usize = 6;
/// How long the clients run; faults happen in the middle, healthy time
/// at both ends.
const RUN: Duration = Duration::from_secs(24);
const FAULTS_FROM: Duration = Duration::from_secs(2);
const FAULTS_UNTIL: Duration = Duration::from_secs(19);
/// An operation that takes longer is abandoned: a write's outcome is then
/// unknown, a read is dropped.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Written once the clients are done: a watcher that has seen it has seen
/// everything before it.
const END_KEY: &str = "lin/end";

/// What the clients did.
type History = Arc<Mutex<Vec<Record>>>;

struct Record {
    key: usize,
    op: Op,
    /// A write: the revision it was given (if acknowledged). A read: the
    /// revision of the value it got.
    revision: Option<u64>,
    /// A compare-and-set: the revision the key had to be at.
    expected: Option<u64>,
}

fn since(start: Instant) -> u64 {
    // 0 is the initial value's instant.
    start.elapsed().as_nanos() as u64 + 1
}

/// One client: random writes of unique values (some of them
/// compare-and-set on the revision the client last saw of the key) and
/// linearizable reads of random keys through one node, until the run ends.
async fn client(id: usize, node: Client, seed: u64, start: Instant, history: History) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut writes = 0u64;
    let mut seen: [Option<u64>; KEYS] = [None; KEYS];
    while start.elapsed() < RUN {
        let key = rng.gen_range(0..KEYS);
        let path = format!("lin/k{key}");
        let invoke = since(start);
        let roll = rng.gen_range(0..10);
        let record = if roll < 5 {
            writes += 1;
            let value = format!("c{id}-w{writes}");
            let expected = if roll < 2 { seen[key] } else { None };
            let put = node.put(&path, value.clone(), expected);
            let revision = match tokio::time::timeout(OP_TIMEOUT, put).await {
                Ok(Ok(written)) => Some(written.revision),
                // The compare did not hold: nothing was written.
                Ok(Err(keel_node::client::ClientError::Api { status: 412, .. })) => continue,
                _ => None,
            };
            if revision.is_some() {
                seen[key] = revision;
            }
            let op = Op {
                client: id,
                kind: Kind::Write,
                value: Some(value),
                invoke,
                complete: if revision.is_some() {
                    since(start)
                } else {
                    UNKNOWN
                },
            };
            Some(Record {
                key,
                op,
                revision,
                expected,
            })
        } else {
            let read = match tokio::time::timeout(OP_TIMEOUT, node.get(&path, false)).await {
                Ok(Ok(value)) => {
                    seen[key] = Some(value.revision);
                    let text = String::from_utf8(value.bytes.to_vec()).unwrap();
                    Some((Some(text), Some(value.revision)))
                }
                Ok(Err(error)) if error.is_not_found() => Some((None, None)),
                _ => None, // failed or abandoned: it tells nothing
            };
            read.map(|(value, revision)| Record {
                key,
                op: Op {
                    client: id,
                    kind: Kind::Read,
                    value,
                    invoke,
                    complete: since(start),
                },
                revision,
                expected: None,
            })
        };
        match record {
            Some(record) => history.lock().unwrap().push(record),
            // A node that is down answers at once: do not spin on it.
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// What one node's watch of `lin/` delivered, across reconnections.
#[derive(Default)]
struct Watched {
    /// Revision, key and value, in the order they arrived.
    events: Vec<(u64, String, String)>,
    /// Times the node could no longer go back to where the watcher left off
    /// (its history starts at its restart): events were missed then.
    compacted: u32,
    reconnects: u32,
}

/// Watches `lin/` on one node from `from` on, resuming after the last event
/// it got whenever the stream ends (the node restarted, say).
async fn watcher(node: Client, from: u64, watched: Arc<Mutex<Watched>>) {
    let mut next = Some(from);
    loop {
        let result = node
            .watch("lin", next, |line| {
                let event = (
                    line["revision"].as_u64(),
                    line["key"].as_str(),
                    line["value"].as_str(),
                );
                if let (Some(revision), Some(key), Some(value)) = event {
                    let event = (revision, key.to_string(), value.to_string());
                    watched.lock().unwrap().events.push(event);
                }
                true
            })
            .await;
        {
            let mut watched = watched.lock().unwrap();
            next = watched.events.last().map(|e| e.0 + 1).or(next);
            if let Err(keel_node::client::ClientError::Api { status: 410, .. }) = result {
                watched.compacted += 1;
                next = None;
            }
            watched.reconnects += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks what the clients were told and what the watchers saw: unique
/// revisions in real-time order, watches in revision order that agree with
/// each other and with the writes, and complete where nothing was compacted.
fn check_revisions_and_watches(history: &[Record], watched: &[Watched]) -> Result<(), String> {
    let writes = history.iter().filter(|r| r.op.kind == Kind::Write);
    let mut acked: Vec<(&Op, u64, usize)> = writes
        .filter_map(|r| r.revision.map(|revision| (&r.op, revision, r.key)))
        .collect();
    acked.sort_by_key(|(_, revision, _)| *revision);
    let mut latest_invoke: Option<&Op> = None;
    for pair in acked.windows(2) {
        if pair[0].1 == pair[1].1 {
            return Err(format!("{} and {} got one revision", pair[0].0, pair[1].0));
        }
    }
    for (op, revision, _) in &acked {
        if let Some(earlier) = latest_invoke.filter(|e| op.complete < e.invoke) {
            return Err(format!(
                "{op} got revision {revision}, after {earlier}, which began after it completed"
            ));
        }
        if latest_invoke.is_none_or(|e| op.invoke > e.invoke) {
            latest_invoke = Some(op);
        }
    }
    let written: std::collections::HashMap<&str, (Option<u64>, usize)> = history
        .iter()
        .filter(|r| r.op.kind == Kind::Write)
        .map(|r| (r.op.value.as_deref().unwrap(), (r.revision, r.key)))
        .collect();
    let mut by_revision: std::collections::HashMap<u64, (&str, &str)> = Default::default();
    let mut by_value: std::collections::HashMap<&str, u64> = Default::default();
    for (node, watched) in watched.iter().enumerate() {
        for pair in watched.events.windows(2) {
            if pair[1].0 <= pair[0].0 {
                return Err(format!(
                    "node {}'s watch went from {:?} to {:?}",
                    node + 1,
                    pair[0],
                    pair[1]
                ));
            }
        }
        for (revision, key, value) in &watched.events {
            if key == END_KEY {
                continue;
            }
            let Some(&(put_revision, put_key)) = written.get(value.as_str()) else {
                return Err(format!(
                    "node {}'s watch saw {value:?}, which no client wrote",
                    node + 1
                ));
            };
            let agrees =
                *key == format!("lin/k{put_key}") && put_revision.is_none_or(|r| r == *revision);
            let first = *by_revision.entry(*revision).or_insert((key, value));
            let once = *by_value.entry(value).or_insert(*revision) == *revision;
            if !agrees || first != (key.as_str(), value.as_str()) || !once {
                return Err(format!(
                    "node {}'s watch saw {value:?} at {key} revision {revision}; the write was told \
                     revision {put_revision:?} of lin/k{put_key}; revision {revision} elsewhere: {first:?}",
                    node + 1
                ));
            }
        }
        if watched.compacted == 0 {
            check_compare_and_set(history, watched)?;
            let seen: std::collections::HashSet<&str> =
                watched.events.iter().map(|e| e.2.as_str()).collect();
            if let Some((op, revision, _)) = acked
                .iter()
                .find(|(op, _, _)| !seen.contains(op.value.as_deref().unwrap()))
            {
                return Err(format!(
                    "node {}'s watch, never cut short, missed {op} (revision {revision})",
                    node + 1
                ));
            }
        }
    }
    // A read's revision is that of the write of the value it got.
    for read in history.iter().filter(|r| r.op.kind == Kind::Read) {
        let (Some(value), Some(revision)) = (read.op.value.as_deref(), read.revision) else {
            continue;
        };
        if by_value.get(value).is_some_and(|r| r != &revision) {
            return Err(format!(
                "{} was told revision {revision}; that value was written at {:?}",
                read.op,
                by_value.get(value)
            ));
        }
    }
    Ok(())
}

/// Every acknowledged compare-and-set followed, on its key, exactly the
/// write it expected, in the order of a complete watch.
fn check_compare_and_set(history: &[Record], watched: &Watched) -> Result<(), String> {
    let mut previous: std::collections::HashMap<u64, Option<u64>> = Default::default();
    for key in 0..KEYS {
        let path = format!("lin/k{key}");
        let mut last = None;
        for (revision, _, _) in watched.events.iter().filter(|e| e.1 == path) {
            previous.insert(*revision, last);
            last = Some(*revision);
        }
    }
    for record in history {
        let (Some(expected), Some(revision)) = (record.expected, record.revision) else {
            continue;
        };
        let before = previous.get(&revision).copied().flatten();
        if before != Some(expected) {
            return Err(format!(
                "{} at revision {revision} required lin/k{} at revision {expected}, but followed {before:?}",
                record.op, record.key
            ));
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The leader keeps answering clients but hears no peer.
    IsolateLeader,
    /// The leader stops (a stalled VM) and resumes, still believing it leads.
    PauseLeader,
    /// As many random nodes as may fail (one of three, two of five) crash
    /// and restart.
    KillMinority,
    /// Every node crashes at once (a power loss) and all restart together.
    KillAll,
}

impl Fault {
    const ALL: [Fault; 4] = [
        Fault::IsolateLeader,
        Fault::PauseLeader,
        Fault::KillMinority,
        Fault::KillAll,
    ];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_stay_linearizable_through_partitions_pauses_and_crashes() {
    linearizable_under_faults(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_stay_linearizable_through_partitions_pauses_and_crashes() {
    linearizable_under_faults(5).await;
}

async fn linearizable_under_faults(nodes: usize) {
    let _serial = serial().await;
    let seed = harness::seed(&format!("linearizability of {nodes} nodes"));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cluster = Cluster::three().await;
    while cluster.members.len() < nodes {
        cluster.add_member().await;
    }
    let all: Vec<usize> = (0..nodes).collect();
    cluster.wait_ready(&all, READY_TIMEOUT).await;

    // A watcher on every node, from before the first write.
    let from = cluster.members[0].client().status().await.unwrap().revision + 1;
    let watched: Vec<Arc<Mutex<Watched>>> = (0..nodes).map(|_| Arc::default()).collect();
    let watchers: Vec<_> = (0..nodes)
        .map(|i| {
            let node = cluster.members[i].client();
            tokio::spawn(watcher(node, from, watched[i].clone()))
        })
        .collect();

    let history: History = Arc::default();
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let node = cluster.members[id % nodes].client();
            let seed = seed.wrapping_add(id as u64 + 1);
            tokio::spawn(client(id, node, seed, start, history.clone()))
        })
        .collect();

    // Every kind of fault at least once, in a seeded order, then more.
    let mut faults = Fault::ALL;
    faults.shuffle(&mut rng);
    tokio::time::sleep(FAULTS_FROM).await;
    let mut done = Vec::new();
    while start.elapsed() < FAULTS_UNTIL {
        let fault = (faults.get(done.len()).copied())
            .unwrap_or_else(|| *Fault::ALL.choose(&mut rng).unwrap());
        let victims: Vec<usize> = match fault {
            Fault::IsolateLeader | Fault::PauseLeader => {
                vec![(cluster.leader().await).unwrap_or(rng.gen_range(0..nodes))]
            }
            Fault::KillMinority => all
                .choose_multiple(&mut rng, (nodes - 1) / 2)
                .copied()
                .collect(),
            Fault::KillAll => all.clone(),
        };
        let lasts = Duration::from_millis(rng.gen_range(1_500..3_000));
        let whom: Vec<usize> = victims.iter().map(|v| v + 1).collect();
        let at = start.elapsed().as_millis();
        println!("{at:>6} ms: {fault:?}, nodes {whom:?}, for {lasts:?}");
        for &victim in &victims {
            let member = &mut cluster.members[victim];
            match fault {
                Fault::IsolateLeader => member.client().isolate(true).await.unwrap(),
                Fault::PauseLeader => member.pause(),
                Fault::KillMinority | Fault::KillAll => member.kill(),
            }
        }
        tokio::time::sleep(lasts).await;
        for &victim in &victims {
            let member = &mut cluster.members[victim];
            match fault {
                Fault::IsolateLeader => member.client().isolate(false).await.unwrap(),
                Fault::PauseLeader => member.resume(),
                Fault::KillMinority | Fault::KillAll => member.start(),
            }
        }
        done.push(fault);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1_000..1_500))).await;
    }
    for client in clients {
        client.await.unwrap();
    }
    assert!(
        done.len() >= Fault::ALL.len(),
        "every kind of fault happened: {done:?}"
    );
    // The end mark, then every watcher up to it.
    let writer = cluster.members[0].client();
    harness::eventually("the end mark written", READY_TIMEOUT, || {
        let writer = writer.clone();
        async move { writer.put(END_KEY, "end", None).await.is_ok() }
    })
    .await;
    harness::eventually("every watch at the end mark", READY_TIMEOUT, || {
        let all = watched.iter().all(|w| {
            let w = w.lock().unwrap();
            w.events.iter().any(|(_, key, _)| key == END_KEY)
        });
        async move { all }
    })
    .await;
    for watcher in watchers {
        watcher.abort();
    }
    let watched: Vec<Watched> = watched
        .into_iter()
        .map(|w| std::mem::take(&mut *w.lock().unwrap()))
        .collect();
    for (node, w) in watched.iter().enumerate() {
        println!(
            "node {}'s watch: {} events, {} reconnections, {} cut short",
            node + 1,
            w.events.len(),
            w.reconnects,
            w.compacted
        );
    }

    let history = std::mem::take(&mut *history.lock().unwrap());
    for key in 0..KEYS {
        let ops: Vec<Op> = history
            .iter()
            .filter(|record| record.key == key)
            .map(|record| record.op.clone())
            .collect();
        let count = |kind: Kind, known: bool| {
            ops.iter()
                .filter(|op| op.kind == kind && (op.complete != UNKNOWN) == known)
                .count()
        };
        let (writes, unknown, reads) = (
            count(Kind::Write, true),
            count(Kind::Write, false),
            count(Kind::Read, true),
        );
        let swaps = history
            .iter()
            .filter(|r| r.key == key && r.expected.is_some() && r.revision.is_some())
            .count();
        println!(
            "key lin/k{key}: {writes} writes acknowledged ({swaps} compare-and-set), {unknown} with unknown outcome, {reads} linearizable reads"
        );
        assert!(
            writes >= 20 && reads >= 20,
            "too little happened to check anything (seed {seed})"
        );
        if let Err(violation) = linear::check(&ops) {
            panic!("lin/k{key} is not linearizable (seed {seed}): {violation}");
        }
    }
    if let Err(violation) = check_revisions_and_watches(&history, &watched) {
        panic!("seed {seed}: {violation}");
    }
}

// The checker itself, on small histories whose answer is known.

fn op(kind: Kind, value: Option<&str>, invoke: u64, complete: u64) -> Op {
    Op {
        client: 0,
        kind,
        value: value.map(String::from),
        invoke,
        complete,
    }
}

fn write(value: &str, invoke: u64, complete: u64) -> Op {
    op(Kind::Write, Some(value), invoke, complete)
}

fn read(value: Option<&str>, invoke: u64, complete: u64) -> Op {
    op(Kind::Read, value, invoke, complete)
}

#[test]
fn the_checker_accepts_sequential_and_concurrent_histories() {
    let good: [(&str, Vec<Op>); 3] = [
        (
            "one op after another",
            vec![
                read(None, 1, 2),
                write("a", 3, 4),
                read(Some("a"), 5, 6),
                write("b", 7, 8),
                read(Some("b"), 9, 10),
            ],
        ),
        (
            // A read concurrent with two writes may see either, and a later
            // read the other, if the writes overlap.
            "overlapping writes",
            vec![
                write("a", 10, 40),
                write("b", 20, 50),
                read(Some("b"), 25, 30),
                read(Some("a"), 45, 60),
            ],
        ),
        (
            "a write with an unknown outcome lands late, another never",
            vec![
                write("a", 1, 2),
                write("b", 3, UNKNOWN),
                read(Some("a"), 4, 5),
                read(Some("b"), 20, 21),
                write("c", 30, UNKNOWN),
                read(Some("b"), 40, 41),
            ],
        ),
    ];
    for (what, history) in good {
        let checked = linear::check(&history);
        assert!(checked.is_ok(), "{what}: {checked:?}");
    }
}

#[test]
fn the_checker_rejects_stale_lost_and_premature_reads() {
    let bad: [(&str, Vec<Op>); 6] = [
        (
            "a read after b completed saw a",
            vec![
                write("a", 0, 10),
                write("b", 20, 30),
                read(Some("a"), 40, 50),
            ],
        ),
        (
            "a completed write was lost",
            vec![write("a", 1, 2), read(None, 3, 4)],
        ),
        (
            "read before written",
            vec![read(Some("a"), 1, 2), write("a", 3, 4)],
        ),
        (
            "b, then a again",
            vec![
                write("a", 0, 10),
                write("b", 20, 30),
                read(Some("b"), 40, 50),
                read(Some("a"), 60, 70),
            ],
        ),
        ("a value nobody wrote", vec![read(Some("z"), 1, 2)]),
        (
            "b held over 20..50, a read inside",
            vec![
                write("a", 0, 100),
                write("b", 10, 20),
                read(Some("a"), 30, 40),
                read(Some("b"), 50, 60),
            ],
        ),
    ];
    for (what, history) in bad {
        assert!(linear::check(&history).is_err(), "{what}");
    }
}

#[test]
fn the_revision_and_watch_checks_reject_what_they_should() {
    let acked = |value: &str, invoke: u64, complete: u64, revision: u64| Record {
        key: 0,
        op: write(value, invoke, complete),
        revision: Some(revision),
        expected: None,
    };
    let event = |revision: u64, value: &str| (revision, "lin/k0".to_string(), value.to_string());
    let watch = |events: Vec<(u64, String, String)>| Watched {
        events,
        ..Watched::default()
    };
    let history = [acked("a", 1, 2, 10), acked("b", 3, 4, 11)];
    let good = || watch(vec![event(10, "a"), event(11, "b")]);
    assert!(check_revisions_and_watches(&history, &[good(), good()]).is_ok());

    let reordered = [acked("a", 1, 2, 11), acked("b", 3, 4, 10)];
    assert!(
        check_revisions_and_watches(&reordered, &[]).is_err(),
        "b began after a completed"
    );
    let missed = watch(vec![event(11, "b")]);
    assert!(check_revisions_and_watches(&history, &[good(), missed]).is_err());
    let mut cut_short = watch(vec![event(11, "b")]);
    cut_short.compacted = 1;
    assert!(check_revisions_and_watches(&history, &[good(), cut_short]).is_ok());
    let backwards = watch(vec![event(11, "b"), event(10, "a")]);
    assert!(check_revisions_and_watches(&history, &[backwards]).is_err());
    let elsewhere = watch(vec![event(10, "a"), event(12, "b")]);
    assert!(
        check_revisions_and_watches(&history, &[elsewhere]).is_err(),
        "b was told 11"
    );
    let invented = watch(vec![event(10, "a"), event(11, "b"), event(12, "z")]);
    assert!(check_revisions_and_watches(&history, &[invented]).is_err());

    // A compare-and-set must follow the write it expected.
    let mut cas = acked("c", 5, 6, 12);
    cas.expected = Some(11);
    let with_cas = |cas| [acked("a", 1, 2, 10), acked("b", 3, 4, 11), cas];
    let three = || watch(vec![event(10, "a"), event(11, "b"), event(12, "c")]);
    assert!(check_revisions_and_watches(&with_cas(cas), &[three()]).is_ok());
    let mut lost_update = acked("c", 5, 6, 12);
    lost_update.expected = Some(10);
    assert!(check_revisions_and_watches(&with_cas(lost_update), &[three()]).is_err());
    // A read's revision is its value's.
    let read_at = |revision| Record {
        key: 0,
        op: read(Some("a"), 5, 6),
        revision: Some(revision),
        expected: None,
    };
    let reads = |r| [acked("a", 1, 2, 10), acked("b", 3, 4, 11), read_at(r)];
    assert!(check_revisions_and_watches(&reads(10), &[good()]).is_ok());
    assert!(check_revisions_and_watches(&reads(11), &[good()]).is_err());
}
