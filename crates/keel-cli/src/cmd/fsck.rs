//! `keel fsck`: verify every object of a store; repair or roll back.
//!
//! Parsing and printing only: what fsck decides lives in `keel_fsck::check`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::Args;
use keel_fsck::check::{self, Choice, FsckOptions, Prompt, Requested, TargetChoice, Ui};
use keel_fsck::repair::MAX_DAMAGE_KEYS_DEFAULT;
use keel_fsck::report::{ActionTaken, Report};
use keel_fsck::verify::{Observer, VerifyStats};
use keel_store::Hash;

use super::DataDirArg;
use crate::output::{CliError, Output};

/// Show a progress bar once verification has run this long (on a terminal).
const PROGRESS_DELAY: Duration = Duration::from_secs(2);

#[derive(Args, Debug)]
#[command(
    after_help = "Exit codes: 0 clean; 1 problems found (even if repaired); 2 could not run \
(bad arguments, store in use for --repair/--rollback, not a Keel store).\n\
On a terminal, fsck lists the damage and asks: save (repair), rollback or quit; \
--yes answers with the default (save). Without a terminal and without --repair or \
--rollback, it only reports."
)]
pub struct FsckArgs {
    #[command(flatten)]
    pub target: DataDirArg,
    /// Verify this retained checkpoint instead of the current state.
    #[arg(long, value_name = "SEQ", conflicts_with = "root")]
    pub checkpoint: Option<u64>,
    /// Verify the tree with this root hash (blake3-…).
    #[arg(long, value_name = "HASH")]
    pub root: Option<String>,
    /// Move damaged values to lost+found/, unlink unreadable directories and
    /// write the result as a new checkpoint.
    #[arg(long, conflicts_with = "rollback")]
    pub repair: bool,
    /// Make the newest checkpoint that verifies clean current again (as a new checkpoint).
    #[arg(long)]
    pub rollback: bool,
    /// Do not ask: answer with the default (save, i.e. repair).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print every path visited.
    #[arg(long, short = 'v', conflicts_with = "quiet")]
    pub verbose: bool,
    /// Hide warnings (never errors).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Refuse to repair more damaged keys than this (nothing changes).
    #[arg(long, value_name = "N", default_value_t = MAX_DAMAGE_KEYS_DEFAULT)]
    pub max_damage: u64,
    /// Never move damage under this key prefix to lost+found (repeatable;
    /// adds to `critical_prefixes` in the store's config.toml).
    #[arg(long, value_name = "PREFIX")]
    pub critical: Vec<String>,
}

pub fn run(args: &FsckArgs, out: Output) -> anyhow::Result<()> {
    let target = match (&args.checkpoint, &args.root) {
        (Some(sequence), _) => TargetChoice::Checkpoint(*sequence),
        (None, Some(root)) => TargetChoice::Root(
            root.parse::<Hash>()
                .map_err(|e| CliError::usage(format!("--root: {e}")))?,
        ),
        (None, None) => TargetChoice::Head,
    };
    let interactive =
        std::io::stdin().is_terminal() && std::io::stdout().is_terminal() && !out.json;
    let requested = if args.repair {
        Requested::Repair
    } else if args.rollback {
        Requested::Rollback
    } else if args.yes {
        Requested::Repair
    } else if interactive {
        Requested::Ask
    } else {
        Requested::ReportOnly
    };
    let options = FsckOptions {
        data_dir: args.target.data_dir.clone(),
        target,
        requested,
        max_damage: args.max_damage,
        critical: args.critical.clone(),
        verbose: args.verbose,
    };
    let mut ui = CliUi::new(args, out);
    let report = check::run(&options, &mut ui)?;
    ui.finish_progress();
    out.emit(&report, || human(&report, args, ui.printed_findings))?;
    if report.exit_code() == 0 {
        return Ok(());
    }
    Err(CliError::failed(failure_summary(&report)))
}

/// The line behind exit code 1.
fn failure_summary(report: &Report) -> String {
    let dir = report.data_dir.display();
    let what = format!("{} error(s) found in {dir}", report.errors);
    match report.action {
        ActionTaken::Repaired | ActionTaken::RolledBack => {
            format!(
                "{what}; {} as checkpoint {}",
                if report.action == ActionTaken::Repaired {
                    "repaired"
                } else {
                    "rolled back"
                },
                report.checkpoint_written().unwrap_or(0)
            )
        }
        ActionTaken::Refused | ActionTaken::Aborted => format!(
            "{what}; not fixed: {}",
            report.action_detail.as_deref().unwrap_or("")
        ),
        ActionTaken::Declined => format!("{what}; quit without saving, nothing changed"),
        ActionTaken::None if !report.critical_paths.is_empty() => format!(
            "{what}, under critical prefixes ({}); a repair will not move them to lost+found/: roll back with `keel fsck --data-dir {dir} --rollback`, or restore a dump with `keel restore --data-dir {dir} FILE`",
            report.critical_paths.join(", ")
        ),
        ActionTaken::None => format!(
            "{what}; fix with `keel fsck --data-dir {dir} --repair` (damaged keys move to lost+found/) or `keel fsck --data-dir {dir} --rollback`"
        ),
    }
}

fn human(report: &Report, args: &FsckArgs, findings_printed: bool) -> String {
    let mut lines = Vec::new();
    if !findings_printed {
        lines.extend(finding_lines(report, args.quiet));
    }
    if let Some(repair) = &report.repair {
        for moved in &repair.moved {
            lines.push(format!(
                "moved {} -> {} ({} of {} bytes kept)",
                moved.from, moved.to, moved.kept_bytes, moved.original_bytes
            ));
        }
        for (dir, lost) in &repair.unlinked_directories {
            lines.push(format!("unlinked directory {dir} ({lost} entries lost)"));
        }
        for (dir, lost) in &repair.partly_lost_directories {
            lines.push(format!("rebuilt directory {dir} ({lost} entries lost)"));
        }
        lines.push(format!(
            "repair written as checkpoint {} at revision {}",
            repair.checkpoint.sequence, repair.checkpoint.revision
        ));
        if !repair.dropped_checkpoints.is_empty() {
            lines.push(format!(
                "dropped damaged checkpoints {:?} (garbage collection could not walk them)",
                repair.dropped_checkpoints
            ));
        }
    }
    if let Some(rollback) = &report.rollback {
        lines.push(rollback.plan.summary());
        lines.push(format!(
            "rolled back: checkpoint {} at revision {} holds checkpoint {}'s state",
            rollback.checkpoint.sequence,
            rollback.checkpoint.revision,
            rollback.plan.checkpoint.sequence
        ));
    }
    if let Some(detail) = &report.action_detail {
        lines.push(format!("not fixed: {detail}"));
    }
    let stats = report.stats.clone().unwrap_or_default();
    lines.push(format!(
        "verified {} values and {} directories ({} objects, {} bytes) in {} ms",
        stats.values, stats.directories, stats.objects, stats.bytes, stats.elapsed_ms
    ));
    if report.warnings > 0 {
        lines.push(format!("Total warnings: {}", report.warnings));
    }
    lines.push(format!("Total errors: {}", report.errors));
    if let Some(path) = &report.report_file {
        lines.push(format!("report: {}", path.display()));
    }
    lines.join("\n")
}

fn finding_lines(report: &Report, quiet: bool) -> Vec<String> {
    report
        .findings
        .iter()
        .filter(|f| f.is_error() || !quiet)
        .map(|f| f.line())
        .collect()
}

/// Terminal side of fsck: `-v` paths, the progress bar, the question.
struct CliUi {
    verbose: bool,
    quiet: bool,
    json: bool,
    started: Instant,
    show_progress: bool,
    total_bytes: u64,
    bar: Option<indicatif::ProgressBar>,
    printed_findings: bool,
}

impl CliUi {
    fn new(args: &FsckArgs, out: Output) -> CliUi {
        let pack = args.target.data_dir.join(keel_store::datadir::PACK_DIR);
        CliUi {
            verbose: args.verbose && !out.json,
            quiet: args.quiet,
            json: out.json,
            started: Instant::now(),
            show_progress: std::io::stderr().is_terminal(),
            total_bytes: keel_store::fsutil::dir_size(&pack),
            bar: None,
            printed_findings: false,
        }
    }

    fn finish_progress(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Observer for CliUi {
    fn visit(&mut self, path: &str) {
        if self.verbose {
            let line = path.to_string();
            match &self.bar {
                Some(bar) => bar.println(line),
                None => println!("{line}"),
            }
        }
    }

    fn progress(&mut self, stats: &VerifyStats) {
        if !self.show_progress || self.started.elapsed() < PROGRESS_DELAY {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new(self.total_bytes.max(1));
            let style = indicatif::ProgressStyle::with_template(
                "verifying [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            bar
        });
        bar.set_position(stats.bytes.min(self.total_bytes));
        bar.set_message(format!("{} objects", stats.objects));
    }
}

impl Ui for CliUi {
    fn choose(&mut self, prompt: &Prompt<'_>) -> Choice {
        self.finish_progress();
        for finding in prompt
            .findings
            .iter()
            .filter(|f| f.is_error() || !self.quiet)
        {
            println!("{}", finding.line());
        }
        self.printed_findings = !self.json;
        let stdin = std::io::stdin();
        check::ask_until_answered(&mut stdin.lock(), &mut std::io::stdout(), prompt)
    }

    fn notice(&mut self, text: &str) {
        eprintln!("keel: {text}");
    }
}
