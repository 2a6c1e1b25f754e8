//! A linearizability checker for one register (a key) whose writes each
//! put a value no other write puts, as the tests' clients make sure.
//!
//! With unique values every read names the write it read from, and the
//! general problem (NP-complete) becomes the zone test of Gibbons and
//! Korach ("Testing shared memories", SIAM J. Comput. 26(4), 1997), in
//! O(n²) here for clarity. The ops that put or read one value form a
//! cluster; its zone runs from the earliest completion among them to the
//! latest invocation. If the first comes before the second, the zone is a
//! *forward* zone: the value must be the register's value throughout it.
//! Otherwise it is a *backward* zone: the whole cluster fits at one instant
//! inside it. A history is linearizable if and only if every read completes
//! after its write was invoked, no two forward zones overlap, and no
//! backward zone lies inside a forward zone.
//!
//! A write whose outcome is unknown (an error, a timeout) may take effect at
//! any time after its invocation, or never: its completion is [`UNKNOWN`],
//! and a value it put that nobody read is left out.

use std::collections::BTreeMap;
use std::fmt;

/// The completion time of a write whose outcome is unknown.
pub const UNKNOWN: u64 = u64::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Write,
    Read,
}

/// One operation on the register, with its times (nanoseconds since the
/// history began; 0 is reserved for the initial value).
#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub kind: Kind,
    /// What was written, or what was read (`None`: the key was absent).
    pub value: Option<String>,
    pub invoke: u64,
    pub complete: u64,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let complete = if self.complete == UNKNOWN {
            "?".to_string()
        } else {
            format!("{:.3}", self.complete as f64 / 1e6)
        };
        write!(
            f,
            "client {} {:?} {:?} from {:.3} to {complete} ms",
            self.client,
            self.kind,
            self.value,
            self.invoke as f64 / 1e6
        )
    }
}

/// The ops that put or read one value, and their zone.
struct Zone<'a> {
    value: Option<&'a str>,
    /// The earliest completion and the latest invocation.
    first_complete: u64,
    last_invoke: u64,
    ops: Vec<&'a Op>,
}

impl Zone<'_> {
    fn forward(&self) -> bool {
        self.first_complete < self.last_invoke
    }

    fn describe(&self) -> String {
        let ops: Vec<String> = self.ops.iter().map(|op| format!("  {op}")).collect();
        format!("value {:?}:\n{}", self.value, ops.join("\n"))
    }
}

/// Checks one register's history; the error names the ops that cannot be
/// put in any order that respects real time and a register's meaning.
pub fn check(history: &[Op]) -> Result<(), String> {
    let initial = Op {
        client: usize::MAX,
        kind: Kind::Write,
        value: None,
        invoke: 0,
        complete: 0,
    };
    let mut writes: BTreeMap<Option<&str>, &Op> = BTreeMap::new();
    writes.insert(None, &initial);
    let mut reads: BTreeMap<Option<&str>, Vec<&Op>> = BTreeMap::new();
    for op in history {
        let value = op.value.as_deref();
        match op.kind {
            Kind::Write => {
                if let Some(other) = writes.insert(value, op) {
                    return Err(format!("the value was written twice: {other} and {op}"));
                }
            }
            Kind::Read => reads.entry(value).or_default().push(op),
        }
    }
    let mut zones = Vec::new();
    for (&value, &write) in &writes {
        let read = reads.remove(&value).unwrap_or_default();
        if read.is_empty() && write.complete == UNKNOWN {
            continue; // it may never have taken effect
        }
        if let Some(early) = read.iter().find(|r| r.complete < write.invoke) {
            return Err(format!("{early} read a value before {write} began"));
        }
        let ops: Vec<&Op> = std::iter::once(write).chain(read).collect();
        zones.push(Zone {
            value,
            first_complete: ops.iter().map(|op| op.complete).min().unwrap(),
            last_invoke: ops.iter().map(|op| op.invoke).max().unwrap(),
            ops,
        });
    }
    if let Some((value, read)) = reads.into_iter().next() {
        return Err(format!("{} read {value:?}, which no write put", read[0]));
    }
    let (mut forward, backward): (Vec<&Zone>, Vec<&Zone>) =
        zones.iter().partition(|zone| zone.forward());
    forward.sort_by_key(|zone| zone.first_complete);
    for pair in forward.windows(2) {
        if pair[1].first_complete < pair[0].last_invoke {
            return Err(format!(
                "two values must each hold the register over overlapping times:\n{}\n{}",
                pair[0].describe(),
                pair[1].describe()
            ));
        }
    }
    for inner in &backward {
        let outer = forward.iter().find(|outer| {
            outer.first_complete < inner.last_invoke && inner.first_complete < outer.last_invoke
        });
        if let Some(outer) = outer {
            return Err(format!(
                "a value was written and read while another must have held the register:\n{}\nwhile\n{}",
                inner.describe(),
                outer.describe()
            ));
        }
    }
    Ok(())
}
