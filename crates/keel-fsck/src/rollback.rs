//! Rollback: make the newest checkpoint that verifies clean the current
//! state again, as a new checkpoint whose revision is above every revision
//! ever used (revisions never go backwards, even when content does).
//!
//! The plan says how far back it goes (time and revisions) and which keys
//! differ from what the current state can still list: keys the rollback
//! drops, keys it brings back, keys whose value changes.
//!
//! When no retained checkpoint verifies clean, the newest one whose root
//! directory is readable is chosen and repaired (as flux-core's sketch has
//! it: "the check repeats starting with the checkpoint"), so a rollback
//! always ends in a working store unless no checkpoint is readable at all.

use std::collections::BTreeMap;

use keel_store::object::Link;
use keel_store::{Checkpoint, Hash, Store};
use serde::Serialize;

use crate::error::FsckError;
use crate::repair::{self, RepairOutcome};
use crate::salvage::{readable_values, ValueId};
use crate::verify::{Observer, Target, Verification, Verifier};

/// Largest number of keys listed per category in a plan (counts are exact).
pub const DIFF_KEYS_LISTED_MAX: usize = 10_000;

/// Which keys a rollback changes, compared with the current readable state.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KeyDiff {
    /// Keys the current state lists that the checkpoint does not have.
    pub dropped: Vec<String>,
    /// Keys the checkpoint has that the current state cannot list.
    pub restored: Vec<String>,
    /// Keys present in both with different values.
    pub changed: Vec<String>,
    pub dropped_count: usize,
    pub restored_count: usize,
    pub changed_count: usize,
}

/// The chosen checkpoint and what going back to it means.
#[derive(Clone, Debug, Serialize)]
pub struct RollbackPlan {
    pub checkpoint: Checkpoint,
    /// It verified clean; otherwise it is repaired as part of the rollback.
    pub clean: bool,
    /// Milliseconds between the checkpoint and the current state's commit.
    pub back_ms: u64,
    /// Revisions between the checkpoint and the current state.
    pub back_revisions: u64,
    pub diff: KeyDiff,
    /// Checkpoints verified and rejected, newest first (sequence, errors).
    pub rejected: Vec<(u64, usize)>,
    #[serde(skip)]
    verification: Option<Verification>,
}

impl RollbackPlan {
    /// A human summary: "rolls back 33 minutes (41 revisions) to checkpoint 12".
    pub fn summary(&self) -> String {
        let back = humantime::format_duration(std::time::Duration::from_secs(self.back_ms / 1000));
        let mut text = format!(
            "rollback to checkpoint {} ({}) goes back {} and {} revisions: {} keys dropped, {} restored, {} changed",
            self.checkpoint.sequence,
            self.checkpoint.time(),
            if self.back_ms < 1000 { "under a second".to_string() } else { back.to_string() },
            self.back_revisions,
            self.diff.dropped_count,
            self.diff.restored_count,
            self.diff.changed_count,
        );
        if !self.clean {
            text.push_str(" (no checkpoint verifies clean: this one is repaired too)");
        }
        text
    }
}

/// What a rollback did.
#[derive(Clone, Debug, Serialize)]
pub struct RollbackOutcome {
    pub plan: RollbackPlan,
    /// The new checkpoint holding the rolled-back state.
    pub checkpoint: Checkpoint,
    /// The repair of the chosen checkpoint, when it was not clean.
    pub repair: Option<RepairOutcome>,
    /// Older checkpoints dropped because their trees cannot be walked.
    pub dropped_checkpoints: Vec<u64>,
}

/// Finds the checkpoint to roll back to. `current` is the root that is
/// damaged (skipped as a candidate).
pub fn plan(
    store: &Store,
    verifier: &mut Verifier<'_>,
    current: &Target,
    observer: &mut dyn Observer,
) -> Result<RollbackPlan, FsckError> {
    let mut rejected = Vec::new();
    let mut fallback: Option<(Checkpoint, Verification)> = None;
    let mut checkpoints = store.checkpoints();
    checkpoints.reverse();
    for checkpoint in checkpoints.into_iter().filter(|c| c.root != current.root) {
        let target = Target {
            root: checkpoint.root,
            revision: checkpoint.revision,
            checkpoint: Some(checkpoint.sequence),
            timestamp_ms: Some(checkpoint.timestamp_ms),
        };
        let verification = verifier.verify(&target, observer);
        if verification.is_clean() {
            return Ok(finish(
                store,
                current,
                checkpoint,
                verification,
                true,
                rejected,
            ));
        }
        rejected.push((checkpoint.sequence, verification.errors()));
        if fallback.is_none() && !verification.root_unreadable() {
            fallback = Some((checkpoint, verification));
        }
    }
    match fallback {
        Some((checkpoint, verification)) => Ok(finish(
            store,
            current,
            checkpoint,
            verification,
            false,
            rejected,
        )),
        None => Err(FsckError::NoUsableCheckpoint {
            data_dir: store.dir().display().to_string(),
        }),
    }
}

fn finish(
    store: &Store,
    current: &Target,
    checkpoint: Checkpoint,
    verification: Verification,
    clean: bool,
    rejected: Vec<(u64, usize)>,
) -> RollbackPlan {
    let now_ms = current
        .timestamp_ms
        .or_else(|| store.last_commit().map(|c| c.timestamp_ms))
        .unwrap_or(checkpoint.timestamp_ms);
    RollbackPlan {
        back_ms: now_ms.saturating_sub(checkpoint.timestamp_ms),
        back_revisions: current.revision.saturating_sub(checkpoint.revision),
        diff: diff(store, current.root, checkpoint.root),
        checkpoint,
        clean,
        rejected,
        verification: Some(verification),
    }
}

/// Compares the values two trees can list.
fn diff(store: &Store, current: Hash, target: Hash) -> KeyDiff {
    let objects = store.objects();
    let now: BTreeMap<String, ValueId> = readable_values(objects, &Link::Stored(current))
        .into_iter()
        .map(|(k, (_, id))| (k, id))
        .collect();
    let then = readable_values(objects, &Link::Stored(target));
    let mut diff = KeyDiff::default();
    for (key, id) in &now {
        match then.get(key) {
            None => diff.dropped.push(key.clone()),
            Some((_, old)) if old != id => diff.changed.push(key.clone()),
            Some(_) => {}
        }
    }
    diff.restored = then
        .keys()
        .filter(|k| !now.contains_key(*k))
        .cloned()
        .collect();
    diff.dropped_count = diff.dropped.len();
    diff.restored_count = diff.restored.len();
    diff.changed_count = diff.changed.len();
    for list in [&mut diff.dropped, &mut diff.restored, &mut diff.changed] {
        list.truncate(DIFF_KEYS_LISTED_MAX);
    }
    diff
}

/// Carries out a plan: the checkpoint's root becomes current (repaired
/// first when it was not clean), as a new checkpoint.
pub fn apply(
    store: &Store,
    plan: RollbackPlan,
    max_damage: u64,
    critical: &[String],
) -> Result<RollbackOutcome, FsckError> {
    let (checkpoint, repair, dropped_checkpoints) = if plan.clean {
        let checkpoint = store.reset_to_root(plan.checkpoint.root, None)?;
        (
            checkpoint,
            None,
            repair::drop_unwalkable_checkpoints(store)?,
        )
    } else {
        let verification = plan
            .verification
            .as_ref()
            .expect("a plan carries its checkpoint's verification");
        let outcome = repair::repair(store, verification, max_damage, critical)?;
        let dropped = outcome.dropped_checkpoints.clone();
        (outcome.checkpoint.clone(), Some(outcome), dropped)
    };
    Ok(RollbackOutcome {
        plan,
        checkpoint,
        repair,
        dropped_checkpoints,
    })
}
