//! Human and JSON output, and how errors become exit codes.
//!
//! Every command prints human-readable text by default and one JSON document
//! with `--json`. Errors go to stderr (as `{"error": ...}` with `--json`).
//! Exit codes: 0 success; 1 the operation failed or found problems; 2 usage
//! error or the command could not start. A reader that stops reading (`keel
//! ... | head`) ends the command quietly, with 0.

use std::io::Write;
use std::process::ExitCode;

use keel_store::StoreError;

/// The operation failed, or a check found problems.
pub const EXIT_FAILED: u8 = 1;
/// Usage error, or the command could not start.
pub const EXIT_CANNOT_START: u8 = 2;

/// A failure with an explicit exit code and message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    /// The operation ran and failed (exit 1).
    pub fn failed(message: impl Into<String>) -> anyhow::Error {
        CliError {
            code: EXIT_FAILED,
            message: message.into(),
        }
        .into()
    }

    /// Bad arguments or nothing to run against (exit 2).
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        CliError {
            code: EXIT_CANNOT_START,
            message: message.into(),
        }
        .into()
    }
}

/// The exit code an error maps to.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if let Some(cli) = error.downcast_ref::<CliError>() {
        return cli.code;
    }
    // An online command whose node cannot be reached could not start, as
    // with a locked or missing data directory offline.
    if let Some(keel_node::client::ClientError::Unreachable { .. }) = error.downcast_ref() {
        return EXIT_CANNOT_START;
    }
    if let Some(fsck) = error.downcast_ref::<keel_fsck::FsckError>() {
        return match fsck {
            other if other.is_cannot_start() => EXIT_CANNOT_START,
            keel_fsck::FsckError::Store(store) => store_exit_code(store),
            _ => EXIT_FAILED,
        };
    }
    match error.downcast_ref::<StoreError>() {
        Some(store) => store_exit_code(store),
        None => EXIT_FAILED,
    }
}

fn store_exit_code(error: &StoreError) -> u8 {
    match error {
        StoreError::NoDataDir { .. }
        | StoreError::NotInitialised { .. }
        | StoreError::NotAStore { .. }
        | StoreError::AlreadyInitialised { .. }
        | StoreError::UnsupportedFormat { .. }
        | StoreError::Locked { .. } => EXIT_CANNOT_START,
        _ => EXIT_FAILED,
    }
}

/// Prints an error the way the command's output mode asks for.
pub fn report_error(error: &anyhow::Error, json: bool) -> ExitCode {
    if stdout_closed(error) {
        return ExitCode::SUCCESS;
    }
    let code = exit_code(error);
    let message = format!("{error:#}");
    if json {
        let body = serde_json::json!({ "error": { "message": message, "exit_code": code } });
        let _ = writeln!(std::io::stderr(), "{body}");
    } else {
        let _ = writeln!(std::io::stderr(), "keel: error: {message}");
    }
    ExitCode::from(code)
}

/// Whether the error is our reader going away (`keel ... | head`): the
/// output it wanted has been written, so, as other Unix tools do, the
/// command ends quietly. Only writes to stdout can fail this way: node
/// calls carry their causes as text, and files never answer EPIPE.
fn stdout_closed(error: &anyhow::Error) -> bool {
    let broken_pipe = Some(std::io::ErrorKind::BrokenPipe);
    error.chain().any(|cause| {
        // serde_json keeps the io::Error inside, not as its source.
        let json = cause.downcast_ref::<serde_json::Error>();
        cause.downcast_ref::<std::io::Error>().map(|e| e.kind()) == broken_pipe
            || json.and_then(|e| e.io_error_kind()) == broken_pipe
    })
}

/// Reports bad arguments (exit 2) as clap words them, or as a JSON error
/// when `--json` was given, as every other error is; help and version
/// requests print as usual.
pub fn report_usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let json = std::env::args_os().any(|arg| arg == "--json");
    let help = matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !json || help {
        error.exit();
    }
    // clap's own words, without its `error: ` prefix and `--help` advice.
    let rendered = error.render().to_string();
    let message = rendered
        .lines()
        .take_while(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    report_error(&CliError::usage(message), true)
}

/// Where a command's results go.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints `value` as JSON in JSON mode, or `human()` otherwise.
    pub fn emit<T: serde::Serialize>(
        &self,
        value: &T,
        human: impl FnOnce() -> String,
    ) -> anyhow::Result<()> {
        let mut stdout = std::io::stdout().lock();
        if self.json {
            serde_json::to_writer_pretty(&mut stdout, value)?;
            writeln!(stdout)?;
        } else {
            let text = human();
            if !text.is_empty() {
                writeln!(stdout, "{}", text.trim_end_matches('\n'))?;
            }
        }
        Ok(())
    }
}

/// Formats rows as left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = String>| -> String {
        let padded: Vec<String> = cells
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = widths[i]))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = line(&mut header.iter().map(|h| h.to_string()));
    for row in rows {
        out.push('\n');
        out.push_str(&line(&mut row.iter().cloned()));
    }
    out
}
