//! The start-up check: what a writer runs before it serves a store.
//!
//! ## Policy
//! 1. If `D/dump/RESTORE` names a dump, the store is restored from it first
//!    (a new checkpoint above every revision), and the marker is renamed to
//!    `RESTORE.done-<time>` so it happens once. A restore that fails stops the
//!    start: nothing is served from a store the operator asked to replace.
//! 2. If the store was closed cleanly and recovery found no damage, it is
//!    served at once: no verification.
//! 3. Otherwise the current state gets a **fast** verification (every
//!    directory node and chunk list read and hashed; data chunks only
//!    checked for presence):
//!    - clean: serve;
//!    - damage of at most `auto_repair_keys_max` keys (default
//!      [`AUTO_REPAIR_KEYS_MAX_DEFAULT`]), none under a critical prefix, root
//!      directory readable: repair it as `keel fsck --repair` would (damaged
//!      values to `lost+found/`), write a report in `D/reports/`, serve;
//!    - anything else: refuse to start, leave the store untouched, write a
//!      report, and name the exact `keel fsck` command to run.
//!
//! Bit rot in data chunks is not looked for at start-up (it would mean
//! reading every value); `keel fsck` finds it, and every read verifies it.

use std::path::{Path, PathBuf};

use keel_store::{Store, StoreOptions};
use serde::Serialize;

use crate::check::{resolve_target, TargetChoice};
use crate::dump;
use crate::error::FsckError;
use crate::repair::{self, RepairPlan};
use crate::report::{self, ActionTaken, Report};
use crate::verify::{recovery_findings, Depth, Quiet, Verifier};

/// Damaged keys the start-up check repairs without an operator.
pub const AUTO_REPAIR_KEYS_MAX_DEFAULT: u64 = 10;

/// How a writer opens its store.
#[derive(Clone, Debug)]
pub struct StartupPolicy {
    pub options: StoreOptions,
    /// Largest damage (in keys) repaired automatically.
    pub auto_repair_keys_max: u64,
    /// Critical prefixes besides the store config's `critical_prefixes`.
    pub critical: Vec<String>,
}

impl Default for StartupPolicy {
    fn default() -> StartupPolicy {
        StartupPolicy {
            options: StoreOptions::default(),
            auto_repair_keys_max: AUTO_REPAIR_KEYS_MAX_DEFAULT,
            critical: Vec::new(),
        }
    }
}

/// What the start-up check did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StartupReport {
    /// The dump restored because of `D/dump/RESTORE`.
    pub restored_from: Option<PathBuf>,
    /// Whether the current state was verified (unclean shutdown or damage).
    pub checked: bool,
    pub errors: usize,
    /// Damaged keys repaired automatically.
    pub repaired_keys: u64,
    pub report_file: Option<PathBuf>,
}

/// Opens `dir` for writing after the start-up check (see the module docs).
pub fn open_for_writing(
    dir: &Path,
    policy: &StartupPolicy,
) -> Result<(Store, StartupReport), FsckError> {
    let mut startup = StartupReport::default();
    let store = Store::open(dir, policy.options.clone())?;
    if let Some(dump_file) = dump::pending_restore(dir)? {
        dump::restore(&store, &dump_file)?;
        dump::mark_restore_done(dir)?;
        startup.restored_from = Some(dump_file);
        return Ok((store, startup));
    }
    let recovery = store.recovery();
    if !recovery.unclean_shutdown && !recovery.found_damage() {
        return Ok((store, startup));
    }
    startup.checked = true;
    let target = resolve_target(&store, &TargetChoice::Head)?;
    let verification =
        Verifier::new(store.objects(), Depth::Fast, false).verify(&target, &mut Quiet);
    startup.errors = verification.errors();
    if verification.is_clean() {
        return Ok((store, startup));
    }
    let mut report = Report::new(dir, "start-up check", Depth::Fast);
    report.store_id = Some(store.identity().store_id.clone());
    report.target = Some(target);
    report.stats = Some(verification.stats.clone());
    let mut findings = recovery_findings(store.recovery());
    findings.extend(verification.findings.iter().cloned());
    report.set_findings(findings);
    let mut critical = policy.critical.clone();
    critical.extend(store.config().critical_prefixes.iter().cloned());
    let plan = RepairPlan::from_verification(&verification);
    report.damaged_keys = plan.damaged_keys();
    report.critical_paths = plan.critical_paths(&critical);
    let allowed = plan.check_allowed(policy.auto_repair_keys_max, &critical, dir);
    let result = allowed.and_then(|()| {
        repair::repair(
            &store,
            &verification,
            policy.auto_repair_keys_max,
            &critical,
        )
    });
    match result {
        Ok(outcome) => {
            startup.repaired_keys = plan.damaged_keys();
            report.action = ActionTaken::Repaired;
            report.repair = Some(outcome);
            startup.report_file = write_report(dir, &mut report);
            tracing::info!(dir = %dir.display(), keys = startup.repaired_keys, report = ?startup.report_file, "start-up check repaired damage");
            Ok((store, startup))
        }
        Err(error) => {
            report.action = ActionTaken::Refused;
            report.action_detail = Some(error.to_string());
            let file = write_report(dir, &mut report);
            Err(FsckError::StartRefused {
                message: refusal(dir, &plan, &error, file.as_deref()),
            })
        }
    }
}

fn write_report(dir: &Path, report: &mut Report) -> Option<PathBuf> {
    report.finished_at = report::now_rfc3339();
    match report::write(dir, report) {
        Ok(path) => Some(path),
        Err(error) => {
            tracing::warn!(%error, "could not write the start-up check's report");
            None
        }
    }
}

/// The refusal message: what was found and the exact command to run.
fn refusal(dir: &Path, plan: &RepairPlan, error: &FsckError, report: Option<&Path>) -> String {
    let d = dir.display();
    let command = match error {
        FsckError::CriticalDamage { .. } | FsckError::RootUnreadable { .. } => {
            format!("`keel fsck --data-dir {d} --rollback` (or restore a dump with `keel restore --data-dir {d} FILE`)")
        }
        _ => format!("`keel fsck --data-dir {d} --repair` (damaged keys move to lost+found/), or `keel fsck --data-dir {d} --rollback`"),
    };
    let report = report.map_or(String::new(), |p| format!("; report: {}", p.display()));
    format!(
        "the store in {d} was not closed cleanly and its start-up check found {} damaged key(s), more than it repairs by itself ({error}); the store was not opened. Inspect with `keel fsck --data-dir {d}`, then run {command}{report}",
        plan.damaged_keys()
    )
}
