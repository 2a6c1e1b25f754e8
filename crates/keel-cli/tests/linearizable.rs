//! Linearizability under faults: clients write and read a few keys through
//! every node while the leader is cut off from its peers, paused (SIGSTOP),
//! a node or all of them are killed (SIGKILL), and the history they record is checked against a
//! register's meaning in real time (`harness::linear`). A stale read from a
//! deposed leader, a lost acknowledged write or a write seen before it was
//! made fails the test. Bounded in time; the seed is printed.

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

type History = Arc<Mutex<Vec<(usize, Op)>>>;

fn since(start: Instant) -> u64 {
    // 0 is the initial value's instant.
    start.elapsed().as_nanos() as u64 + 1
}

/// One client: random writes of unique values and linearizable reads of
/// random keys through one node, until the run ends.
async fn client(id: usize, node: Client, seed: u64, start: Instant, history: History) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut writes = 0u64;
    while start.elapsed() < RUN {
        let key = rng.gen_range(0..KEYS);
        let path = format!("lin/k{key}");
        let invoke = since(start);
        let op = if rng.gen_bool(0.5) {
            writes += 1;
            let value = format!("c{id}-w{writes}");
            let put = node.put(&path, value.clone(), None);
            let done = matches!(tokio::time::timeout(OP_TIMEOUT, put).await, Ok(Ok(_)));
            Some(Op {
                client: id,
                kind: Kind::Write,
                value: Some(value),
                invoke,
                complete: if done { since(start) } else { UNKNOWN },
            })
        } else {
            let value = match tokio::time::timeout(OP_TIMEOUT, node.get(&path, false)).await {
                Ok(Ok(value)) => Some(Some(String::from_utf8(value.bytes.to_vec()).unwrap())),
                Ok(Err(error)) if error.is_not_found() => Some(None),
                _ => None, // failed or abandoned: it tells nothing
            };
            value.map(|value| Op {
                client: id,
                kind: Kind::Read,
                value,
                invoke,
                complete: since(start),
            })
        };
        match op {
            Some(op) => history.lock().unwrap().push((key, op)),
            // A node that is down answers at once: do not spin on it.
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The leader keeps answering clients but hears no peer.
    IsolateLeader,
    /// The leader stops (a stalled VM) and resumes, still believing it leads.
    PauseLeader,
    /// A random node crashes and restarts.
    KillNode,
    /// Every node crashes at once (a power loss) and all restart together.
    KillAll,
}

impl Fault {
    const ALL: [Fault; 4] = [
        Fault::IsolateLeader,
        Fault::PauseLeader,
        Fault::KillNode,
        Fault::KillAll,
    ];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_and_writes_stay_linearizable_through_partitions_pauses_and_crashes() {
    let _serial = serial().await;
    let seed = harness::seed("linearizability");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cluster = Cluster::three().await;
    cluster.wait_ready(&[0, 1, 2], READY_TIMEOUT).await;

    let history: History = Arc::default();
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let node = cluster.members[id % 3].client();
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
        let victim = match fault {
            Fault::KillNode | Fault::KillAll => rng.gen_range(0..3),
            _ => cluster.leader().await.unwrap_or(rng.gen_range(0..3)),
        };
        let lasts = Duration::from_millis(rng.gen_range(1_500..3_000));
        let whom = match fault {
            Fault::KillAll => "every node".to_string(),
            _ => format!("node {}", victim + 1),
        };
        let at = start.elapsed().as_millis();
        println!("{at:>6} ms: {fault:?}, {whom}, for {lasts:?}");
        let member = &mut cluster.members[victim];
        match fault {
            Fault::IsolateLeader => member.client().isolate(true).await.unwrap(),
            Fault::PauseLeader => member.pause(),
            Fault::KillNode => member.kill(),
            Fault::KillAll => cluster.members.iter_mut().for_each(|m| m.kill()),
        }
        tokio::time::sleep(lasts).await;
        let member = &mut cluster.members[victim];
        match fault {
            Fault::IsolateLeader => member.client().isolate(false).await.unwrap(),
            Fault::PauseLeader => member.resume(),
            Fault::KillNode => member.start(),
            Fault::KillAll => cluster.members.iter_mut().for_each(|m| m.start()),
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

    let history = std::mem::take(&mut *history.lock().unwrap());
    for key in 0..KEYS {
        let ops: Vec<Op> = history
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, op)| op.clone())
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
        println!(
            "key lin/k{key}: {writes} writes acknowledged, {unknown} with unknown outcome, {reads} linearizable reads"
        );
        assert!(
            writes >= 20 && reads >= 20,
            "too little happened to check anything (seed {seed})"
        );
        if let Err(violation) = linear::check(&ops) {
            panic!("lin/k{key} is not linearizable (seed {seed}): {violation}");
        }
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
    let sequential = [
        read(None, 1, 2),
        write("a", 3, 4),
        read(Some("a"), 5, 6),
        write("b", 7, 8),
        read(Some("b"), 9, 10),
    ];
    assert!(linear::check(&sequential).is_ok());
    // A read concurrent with two writes may see either, and a later read
    // the other, if the writes overlap.
    let concurrent = [
        write("a", 10, 40),
        write("b", 20, 50),
        read(Some("b"), 25, 30),
        read(Some("a"), 45, 60),
    ];
    assert!(
        linear::check(&concurrent).is_ok(),
        "{:?}",
        linear::check(&concurrent)
    );
    // A write with an unknown outcome may land late, or never.
    let unknown = [
        write("a", 1, 2),
        write("b", 3, UNKNOWN),
        read(Some("a"), 4, 5),
        read(Some("b"), 20, 21),
        write("c", 30, UNKNOWN),
        read(Some("b"), 40, 41),
    ];
    assert!(
        linear::check(&unknown).is_ok(),
        "{:?}",
        linear::check(&unknown)
    );
}

#[test]
fn the_checker_rejects_stale_lost_and_premature_reads() {
    let stale = [
        write("a", 0, 10),
        write("b", 20, 30),
        read(Some("a"), 40, 50),
    ];
    assert!(
        linear::check(&stale).is_err(),
        "a read after b completed saw a"
    );
    let absent = [write("a", 1, 2), read(None, 3, 4)];
    assert!(
        linear::check(&absent).is_err(),
        "a completed write was lost"
    );
    let premature = [read(Some("a"), 1, 2), write("a", 3, 4)];
    assert!(linear::check(&premature).is_err(), "read before written");
    let flip_flop = [
        write("a", 0, 10),
        write("b", 20, 30),
        read(Some("b"), 40, 50),
        read(Some("a"), 60, 70),
    ];
    assert!(linear::check(&flip_flop).is_err(), "b, then a again");
    let invented = [read(Some("z"), 1, 2)];
    assert!(linear::check(&invented).is_err(), "a value nobody wrote");
    let held_apart = [
        write("a", 0, 100),
        write("b", 10, 20),
        read(Some("a"), 30, 40),
        read(Some("b"), 50, 60),
    ];
    assert!(
        linear::check(&held_apart).is_err(),
        "b held over 20..50, a read inside"
    );
}
