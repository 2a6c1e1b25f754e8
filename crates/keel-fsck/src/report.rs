//! The fsck report: one JSON document per run with findings, written
//! atomically as `D/reports/fsck-<UTC time>.json` (and printed by `--json`).
//!
//! It records the damage found, the action taken, the checkpoint verified
//! and written, the keys moved to lost+found and the entries lost, so an
//! operator can tell afterwards what a repair, rollback or start-up check did.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::FsckError;
use crate::finding::Finding;
use crate::repair::RepairOutcome;
use crate::rollback::{RollbackOutcome, RollbackPlan};
use crate::verify::{Depth, Target, VerifyStats};

/// Name of the reports directory inside a data directory.
pub const REPORTS_DIR: &str = "reports";
/// Format name and version of the report document.
pub const REPORT_FORMAT: &str = "keel-fsck-report";
pub const REPORT_VERSION: u32 = 1;

/// What was done about the damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionTaken {
    /// Nothing to do, or only a report was asked for.
    None,
    Repaired,
    RolledBack,
    /// The operator chose to quit without saving.
    Declined,
    /// A repair or rollback was refused before anything was written
    /// (critical prefix, too much damage, unreadable root).
    Refused,
    /// A repair or rollback failed; nothing visible changed.
    Aborted,
}

/// One fsck run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub format: &'static str,
    pub version: u32,
    pub started_at: String,
    pub finished_at: String,
    pub data_dir: PathBuf,
    pub store_id: Option<String>,
    /// How the run came about: "fsck" or "start-up check".
    pub trigger: String,
    /// The tree verified (the checkpoint used).
    pub target: Option<Target>,
    pub depth: Depth,
    pub stats: Option<VerifyStats>,
    pub errors: usize,
    pub warnings: usize,
    /// Damaged keys (values to move plus directory entries lost).
    pub damaged_keys: u64,
    pub findings: Vec<Finding>,
    /// Damaged paths under a critical prefix.
    pub critical_paths: Vec<String>,
    pub identity_restored: bool,
    pub action: ActionTaken,
    /// Why an action was refused or aborted, or a note about it.
    pub action_detail: Option<String>,
    pub repair: Option<RepairOutcome>,
    pub rollback: Option<RollbackOutcome>,
    /// The rollback that was offered (interactive runs).
    pub rollback_offered: Option<RollbackPlan>,
    /// Where this report was written.
    pub report_file: Option<PathBuf>,
}

impl Report {
    pub fn new(data_dir: &Path, trigger: &str, depth: Depth) -> Report {
        let now = now_rfc3339();
        Report {
            format: REPORT_FORMAT,
            version: REPORT_VERSION,
            started_at: now.clone(),
            finished_at: now,
            data_dir: data_dir.to_path_buf(),
            store_id: None,
            trigger: trigger.to_string(),
            target: None,
            depth,
            stats: None,
            errors: 0,
            warnings: 0,
            damaged_keys: 0,
            findings: Vec::new(),
            critical_paths: Vec::new(),
            identity_restored: false,
            action: ActionTaken::None,
            action_detail: None,
            repair: None,
            rollback: None,
            rollback_offered: None,
            report_file: None,
        }
    }

    /// Sets the findings and their counts.
    pub fn set_findings(&mut self, findings: Vec<Finding>) {
        self.errors = findings.iter().filter(|f| f.is_error()).count();
        self.warnings = findings.len() - self.errors;
        self.findings = findings;
    }

    /// 0 when no error was found, 1 otherwise (even when repaired).
    pub fn exit_code(&self) -> u8 {
        u8::from(self.errors > 0)
    }

    /// The checkpoint the run wrote, if it changed the store.
    pub fn checkpoint_written(&self) -> Option<u64> {
        self.repair
            .as_ref()
            .map(|r| r.checkpoint.sequence)
            .or(self.rollback.as_ref().map(|r| r.checkpoint.sequence))
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Writes `report` into `D/reports/` atomically (temporary file, fsync,
/// rename, fsync of the directory); records and returns the path.
pub fn write(data_dir: &Path, report: &mut Report) -> Result<PathBuf, FsckError> {
    let dir = data_dir.join(REPORTS_DIR);
    std::fs::create_dir_all(&dir)
        .map_err(|e| FsckError::io("create reports directory", &dir, e))?;
    let stamp = report.finished_at.replace(':', "-");
    let mut path = dir.join(format!("fsck-{stamp}.json"));
    let mut n = 1;
    while path.exists() {
        path = dir.join(format!("fsck-{stamp}-{n}.json"));
        n += 1;
    }
    report.report_file = Some(path.clone());
    let body = serde_json::to_vec_pretty(report).expect("a report serializes");
    let temp = dir.join(format!(".fsck-{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(&body)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if let Err(error) = result {
        let _ = std::fs::remove_file(&temp);
        report.report_file = None;
        return Err(FsckError::io("write fsck report", &path, error));
    }
    Ok(path)
}
