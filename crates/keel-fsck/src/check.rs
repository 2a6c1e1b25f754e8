//! `keel fsck` as a library: verify, then report, repair or roll back.
//!
//! The command line only parses arguments and prints; everything fsck
//! decides happens here, so the start-up check and tests use the same code.
//!
//! - A report-only run opens the store read-only: it works while another
//!   process holds the store, on a consistent snapshot.
//! - `Repair`, `Rollback` and `Ask` take the single-writer lock first, so a
//!   store in use is refused (exit 2) before anything is verified. `Ask`
//!   falls back to reporting only when the store is in use.
//! - A damaged `IDENTITY` next to an intact `pack/IDENTITY.backup` is
//!   restored only by a run that may write.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use keel_store::datadir::{read_identity, read_identity_backup, restore_identity};
use keel_store::{Hash, Store, StoreError, StoreOptions};

use crate::error::FsckError;
use crate::finding::{Finding, FindingKind, ObjectRole, Severity, STORE_PATH};
use crate::repair::{self, RepairPlan, LOST_FOUND};
use crate::report::{self, ActionTaken, Report};
use crate::rollback::{self, RollbackPlan};
use crate::verify::{recovery_findings, Depth, Observer, Target, Verification, Verifier};

/// Which tree to verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetChoice {
    /// The current state (the newest commit; the CLI checkpoints every write).
    Head,
    Checkpoint(u64),
    Root(Hash),
}

/// What to do about damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requested {
    ReportOnly,
    Repair,
    Rollback,
    /// Show the damage and let the operator choose (a terminal).
    Ask,
}

/// An answer to the interactive question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Repair,
    Rollback,
    Quit,
}

#[derive(Clone, Debug)]
pub struct FsckOptions {
    pub data_dir: PathBuf,
    pub target: TargetChoice,
    pub requested: Requested,
    pub max_damage: u64,
    /// Critical prefixes given on the command line (the store's config adds more).
    pub critical: Vec<String>,
    /// Visit (and so report through the observer) every path, even in
    /// subtrees already verified.
    pub verbose: bool,
}

/// What the interactive question shows.
pub struct Prompt<'a> {
    pub findings: &'a [Finding],
    pub plan: &'a RepairPlan,
    /// Why a repair would be refused, if it would.
    pub repair_refusal: Option<String>,
    pub rollback: Result<&'a RollbackPlan, String>,
}

/// The operator side of fsck: progress, `-v` paths and the question.
pub trait Ui: Observer {
    fn choose(&mut self, prompt: &Prompt<'_>) -> Choice;
    /// A remark for the operator (e.g. "store in use: reporting only").
    fn notice(&mut self, _text: &str) {}
}

/// Runs fsck. `Err` means it could not run (or an action failed before a
/// report could be made); damage is reported in the `Ok` report.
pub fn run(options: &FsckOptions, ui: &mut dyn Ui) -> Result<Report, FsckError> {
    let mut report = Report::new(&options.data_dir, "fsck", Depth::Full);
    let mut extra = Vec::new();
    let writes = options.requested != Requested::ReportOnly;
    if let Some(finding) = check_identity(options, writes, &mut report)? {
        let fatal = !report.identity_restored;
        extra.push(finding);
        if fatal {
            report.set_findings(extra);
            return finish(&options.data_dir, report, ui);
        }
    }
    let (store, requested) = open(options, ui)?;
    report.store_id = Some(store.identity().store_id.clone());
    let target = resolve_target(&store, &options.target)?;
    let mut verifier = Verifier::new(store.objects(), Depth::Full, options.verbose);
    let verification = verifier.verify(&target, ui);
    extra.extend(recovery_findings(store.recovery()));
    extra.extend(verification.findings.iter().cloned());
    report.target = Some(target.clone());
    report.stats = Some(verification.stats.clone());
    let mut critical = options.critical.clone();
    critical.extend(store.config().critical_prefixes.iter().cloned());
    let plan = RepairPlan::from_verification(&verification);
    report.damaged_keys = plan.damaged_keys();
    report.critical_paths = plan.critical_paths(&critical);
    report.set_findings(extra);
    let choice = match requested {
        _ if verification.is_clean() && requested != Requested::Repair => None,
        Requested::Repair if plan.is_empty() => None,
        Requested::ReportOnly => None,
        Requested::Repair => Some(Choice::Repair),
        Requested::Rollback => Some(Choice::Rollback),
        Requested::Ask => Some(ask(
            &store,
            &mut verifier,
            &verification,
            &plan,
            &critical,
            &mut report,
            ui,
        )),
    };
    if let Some(choice) = choice {
        act(
            &store,
            &mut verifier,
            &verification,
            choice,
            options,
            &critical,
            &mut report,
            ui,
        );
    }
    // Record a clean close only when no known damage is left: otherwise the
    // `DIRTY` marker stays, so the next writer's start-up check looks again.
    let fixed = matches!(
        report.action,
        ActionTaken::Repaired | ActionTaken::RolledBack
    );
    if !store.is_read_only() && (report.errors == 0 || fixed) {
        store.close()?;
    }
    finish(&options.data_dir, report, ui)
}

/// Writes the report when there is something to report.
fn finish(
    data_dir: &std::path::Path,
    mut report: Report,
    ui: &mut dyn Ui,
) -> Result<Report, FsckError> {
    report.finished_at = report::now_rfc3339();
    if !report.findings.is_empty() || report.action != ActionTaken::None {
        if let Err(error) = report::write(data_dir, &mut report) {
            ui.notice(&format!("could not write the fsck report: {error}"));
        }
    }
    Ok(report)
}

/// Checks `IDENTITY`; restores it from its backup when allowed to write.
fn check_identity(
    options: &FsckOptions,
    writes: bool,
    report: &mut Report,
) -> Result<Option<Finding>, FsckError> {
    let dir = &options.data_dir;
    let error = match read_identity(dir) {
        Ok(_) => return Ok(None),
        Err(error @ StoreError::NotAStore { .. }) => error,
        Err(error) => return Err(error.into()),
    };
    if read_identity_backup(dir).is_err() {
        return Err(error.into());
    }
    let detail = if writes {
        restore_identity(dir)?;
        report.identity_restored = true;
        "IDENTITY was damaged; restored from pack/IDENTITY.backup (store id kept)".to_string()
    } else {
        format!(
            "IDENTITY is damaged ({error}); an intact copy is in pack/IDENTITY.backup: run `keel fsck --data-dir {} --repair` to restore it",
            dir.display()
        )
    };
    Ok(Some(Finding {
        path: STORE_PATH.to_string(),
        kind: FindingKind::StoreFile,
        severity: Severity::Error,
        role: ObjectRole::StoreFile,
        blob: None,
        detail,
        lost_entries: None,
    }))
}

/// Opens the store as the request needs.
fn open(options: &FsckOptions, ui: &mut dyn Ui) -> Result<(Store, Requested), FsckError> {
    let dir = &options.data_dir;
    match options.requested {
        Requested::ReportOnly => Ok((Store::open_read_only(dir)?, Requested::ReportOnly)),
        Requested::Ask => {
            match Store::open(dir, StoreOptions::default()) {
                Ok(store) => Ok((store, Requested::Ask)),
                Err(StoreError::Locked { .. }) => {
                    ui.notice("the store is in use by another process: reporting only (stop it to repair)");
                    Ok((Store::open_read_only(dir)?, Requested::ReportOnly))
                }
                Err(error) => Err(error.into()),
            }
        }
        requested => Ok((Store::open(dir, StoreOptions::default())?, requested)),
    }
}

/// The tree a choice names.
pub fn resolve_target(store: &Store, choice: &TargetChoice) -> Result<Target, FsckError> {
    let checkpoints = store.checkpoints();
    match choice {
        TargetChoice::Head => {
            let snapshot = store.snapshot();
            let root = snapshot
                .root_hash()
                .unwrap_or_else(keel_store::tree::empty_dir_hash);
            let checkpoint = checkpoints
                .iter()
                .rev()
                .find(|c| c.root == root && c.revision == snapshot.revision())
                .map(|c| c.sequence);
            Ok(Target {
                root,
                revision: snapshot.revision(),
                checkpoint,
                timestamp_ms: store.last_commit().map(|c| c.timestamp_ms),
            })
        }
        TargetChoice::Checkpoint(sequence) => {
            let c = checkpoints.iter().find(|c| c.sequence == *sequence).ok_or(
                StoreError::CheckpointNotFound {
                    sequence: *sequence,
                },
            )?;
            Ok(Target {
                root: c.root,
                revision: c.revision,
                checkpoint: Some(c.sequence),
                timestamp_ms: Some(c.timestamp_ms),
            })
        }
        TargetChoice::Root(root) => Ok(Target {
            root: *root,
            revision: checkpoints
                .iter()
                .find(|c| c.root == *root)
                .map_or(0, |c| c.revision),
            checkpoint: checkpoints
                .iter()
                .find(|c| c.root == *root)
                .map(|c| c.sequence),
            timestamp_ms: None,
        }),
    }
}

/// Shows the damage and the options; returns the operator's choice.
fn ask(
    store: &Store,
    verifier: &mut Verifier<'_>,
    verification: &Verification,
    plan: &RepairPlan,
    critical: &[String],
    report: &mut Report,
    ui: &mut dyn Ui,
) -> Choice {
    let rollback = rollback::plan(
        store,
        verifier,
        &verification.target,
        &mut crate::verify::Quiet,
    )
    .map_err(|e| e.to_string());
    let repair_refusal = plan
        .check_allowed(u64::MAX, critical, store.dir())
        .err()
        .map(|e| e.to_string());
    let choice = ui.choose(&Prompt {
        findings: &report.findings,
        plan,
        repair_refusal,
        rollback: rollback.as_ref().map_err(|e| e.clone()),
    });
    report.rollback_offered = rollback.ok();
    choice
}

/// Carries out the choice and records what happened in the report.
#[allow(clippy::too_many_arguments)]
fn act(
    store: &Store,
    verifier: &mut Verifier<'_>,
    verification: &Verification,
    choice: Choice,
    options: &FsckOptions,
    critical: &[String],
    report: &mut Report,
    ui: &mut dyn Ui,
) {
    let result = match choice {
        Choice::Quit => {
            report.action = ActionTaken::Declined;
            return;
        }
        Choice::Repair => {
            repair::repair(store, verification, options.max_damage, critical).map(|outcome| {
                report.action = ActionTaken::Repaired;
                report.repair = Some(outcome);
            })
        }
        Choice::Rollback => {
            let plan = match report.rollback_offered.take() {
                Some(plan) => Ok(plan),
                None => rollback::plan(store, verifier, &verification.target, ui),
            };
            plan.and_then(|plan| rollback::apply(store, plan, options.max_damage, critical))
                .map(|outcome| {
                    report.action = ActionTaken::RolledBack;
                    report.rollback = Some(outcome);
                })
        }
    };
    if let Err(error) = result {
        report.action = match error {
            FsckError::RootUnreadable { .. }
            | FsckError::CriticalDamage { .. }
            | FsckError::TooMuchDamage { .. }
            | FsckError::NoUsableCheckpoint { .. }
            | FsckError::NoLostFoundName { .. } => ActionTaken::Refused,
            _ => ActionTaken::Aborted,
        };
        report.action_detail = Some(error.to_string());
    }
}

// ---------------------------------------------------------------- the question

/// The text shown before the question, in the spirit of flux-core's sketch.
pub fn prompt_text(prompt: &Prompt<'_>) -> String {
    let plan = prompt.plan;
    let mut lines = Vec::new();
    if plan.root_unreadable {
        lines.push(
            "fsck: the root directory is unreadable: a repair would keep nothing".to_string(),
        );
    }
    lines.push(format!(
        "fsck: save would move {} damaged key(s) to {LOST_FOUND}/, unlink {} directory(ies) and rebuild {} ({} damaged keys in all)",
        plan.damaged_values.len(),
        plan.unlinked_directories.len(),
        plan.partly_lost_directories.len() + plan.rebuilt_directories.len(),
        plan.damaged_keys()
    ));
    if let Some(refusal) = &prompt.repair_refusal {
        lines.push(format!("fsck: save is not possible: {refusal}"));
    }
    match &prompt.rollback {
        Ok(rollback) => lines.push(format!("fsck: {}", rollback.summary())),
        Err(reason) => lines.push(format!("fsck: rollback is not possible: {reason}")),
    }
    lines.push(QUESTION.to_string());
    lines.join("\n")
}

/// The question itself; the default (Enter) is save.
pub const QUESTION: &str =
    "fsck: what would you like to do? s=save (repair), r=rollback, q=quit without saving [S/r/q]?";

/// Reads an answer: empty or `s` saves, `r` rolls back, `q` quits; `None` asks again.
pub fn parse_choice(line: &str) -> Option<Choice> {
    match line.trim().to_ascii_lowercase().as_str() {
        "" | "s" | "save" | "repair" => Some(Choice::Repair),
        "r" | "rollback" => Some(Choice::Rollback),
        "q" | "quit" => Some(Choice::Quit),
        _ => None,
    }
}

/// Asks on `output` until `input` gives a valid answer; end of input quits.
pub fn ask_until_answered(
    input: &mut dyn BufRead,
    output: &mut dyn Write,
    prompt: &Prompt<'_>,
) -> Choice {
    let _ = writeln!(output, "{}", prompt_text(prompt));
    loop {
        let _ = output.flush();
        let mut line = String::new();
        match input.read_line(&mut line) {
            Ok(0) | Err(_) => return Choice::Quit,
            Ok(_) => {}
        }
        if let Some(choice) = parse_choice(&line) {
            return choice;
        }
        let _ = writeln!(output, "fsck: please answer s, r or q [S/r/q]?");
    }
}
