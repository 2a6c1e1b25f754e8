//! `keel kv`: read and write keys.

use std::io::Write;
use std::path::PathBuf;

use base64::Engine;
use clap::{Args, Subcommand};
use keel_store::{ItemKind, ListItem, Snapshot, Store, Txn, TxnOutcome};

use super::{block_on, refuse_offline_write_to_member, DataDirArg, Place, Target};
use crate::output::{table, CliError, Output};

/// Values larger than this are not inlined into JSON output.
const JSON_VALUE_BYTES_MAX: u64 = 16 * 1024 * 1024;

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Set a key's value (from the argument, a file, or stdin with `-`).
    Put(PutArgs),
    /// Print a key's value (raw bytes to stdout).
    Get(GetArgs),
    /// Delete a key, or with --prefix a whole directory.
    Del(DelArgs),
    /// List a directory.
    Ls(LsArgs),
    /// Stream changes (online), one line per change.
    Watch(WatchArgs),
}

#[derive(Args, Debug)]
pub struct PutArgs {
    #[command(flatten)]
    pub target: Target,
    /// Key: a `/`-separated path such as `apps/web/config`.
    #[arg(value_parser = key_arg)]
    pub key: String,
    /// The value; `-` reads it from stdin.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub value: Option<String>,
    /// Read the value from this file (streamed; any size).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Only if the key was last changed at this revision (0: only if it does
    /// not exist); exit 1 otherwise. A compare-and-set.
    #[arg(long, value_name = "REV")]
    pub if_revision: Option<u64>,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(value_parser = key_arg)]
    pub key: String,
    /// Read from a retained checkpoint instead of the current state.
    #[arg(long, value_name = "SEQ")]
    pub checkpoint: Option<u64>,
    /// Online: read this node's state without a linearizable read-index round.
    #[arg(long)]
    pub stale: bool,
}

#[derive(Args, Debug)]
pub struct DelArgs {
    #[command(flatten)]
    pub target: Target,
    /// A key, or with --prefix a directory.
    #[arg(value_parser = dir_arg)]
    pub key: String,
    /// Delete the key and everything below `KEY/`.
    #[arg(long)]
    pub prefix: bool,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub target: Target,
    /// Directory to list (default: the root).
    #[arg(default_value = "", value_parser = dir_arg)]
    pub prefix: String,
    /// List every value below the directory, with full keys.
    #[arg(long, short = 'r')]
    pub recursive: bool,
    /// Show kind, size and revision.
    #[arg(long, short = 'l')]
    pub long: bool,
    /// List a retained checkpoint instead of the current state.
    #[arg(long, value_name = "SEQ")]
    pub checkpoint: Option<u64>,
    /// Online: list this node's state without a linearizable read-index round.
    #[arg(long)]
    pub stale: bool,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// A node's URL (default: the local node).
    #[arg(long, env = "KEEL_ENDPOINT", value_name = "URL", default_value = super::DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Only changes to this key or below it.
    #[arg(default_value = "", value_parser = dir_arg)]
    pub prefix: String,
    /// Start at this revision (default: the next change).
    #[arg(long, value_name = "REV")]
    pub from_revision: Option<u64>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

/// A key argument, checked before anything runs, so that a malformed key
/// is a usage error (exit 2) on- and offline alike.
fn key_arg(key: &str) -> Result<String, String> {
    keel_store::key::split_key(key)
        .map(|_| key.to_string())
        .map_err(|e| e.to_string())
}

/// A directory (or key prefix) argument: as a key, but empty, `/` and a
/// trailing `/` are allowed.
fn dir_arg(path: &str) -> Result<String, String> {
    keel_store::key::split_dir(path)
        .map(|_| path.to_string())
        .map_err(|e| e.to_string())
}

pub fn run(command: &KvCommand, out: Output) -> anyhow::Result<()> {
    match command {
        KvCommand::Put(args) => match args.target.place() {
            Place::Offline(dir) => put(args, &dir, out),
            Place::Online(client) => put_online(args, &client, out),
        },
        KvCommand::Get(args) => match args.target.place() {
            Place::Offline(dir) => get(args, &dir, out),
            Place::Online(client) => get_online(args, &client, out),
        },
        KvCommand::Del(args) => {
            // A directory only with --prefix: `a/` alone is a malformed key.
            if !args.prefix {
                key_arg(&args.key).map_err(CliError::usage)?;
            }
            match args.target.place() {
                Place::Offline(dir) => del(args, &dir, out),
                Place::Online(client) => del_online(args, &client, out),
            }
        }
        KvCommand::Ls(args) => match args.target.place() {
            Place::Offline(dir) => ls(args, &dir, out),
            Place::Online(client) => ls_online(args, &client, out),
        },
        KvCommand::Watch(args) => watch(args, out),
    }
}

#[derive(serde::Serialize)]
struct WriteResult {
    key: String,
    revision: u64,
    changed: bool,
    deleted: u64,
}

/// Commits one transaction, checkpoints it, and turns its outcome into a result.
fn commit_one(store: &Store, txn: Txn, key: &str) -> anyhow::Result<WriteResult> {
    let outcome = store.commit(&[txn])?.remove(0);
    store.checkpoint()?;
    match outcome {
        TxnOutcome::Applied {
            revision,
            changed,
            deleted,
        } => Ok(WriteResult {
            key: key.to_string(),
            revision,
            changed,
            deleted,
        }),
        TxnOutcome::Rejected { reason } => Err(CliError::failed(reason)),
        TxnOutcome::CompareFailed {
            key,
            expected,
            actual,
        } => Err(CliError::failed(format!(
            "{key}: expected revision {expected}, found {actual}"
        ))),
    }
}

fn put(args: &PutArgs, target: &DataDirArg, out: Output) -> anyhow::Result<()> {
    refuse_offline_write_to_member(&target.data_dir)?;
    let store = target.open()?;
    let op = match (&args.value, &args.file) {
        (Some(value), None) if value == "-" => {
            let (value, _hold) = store.upload(&mut std::io::stdin().lock())?;
            value.into_op(args.key.clone())
        }
        (Some(value), None) => keel_store::Op::Put {
            key: args.key.clone(),
            value: value.clone().into_bytes().into(),
        },
        (None, Some(path)) => {
            let mut file = std::fs::File::open(path)
                .map_err(|e| CliError::failed(format!("cannot read {}: {e}", path.display())))?;
            let (value, _hold) = store.upload(&mut file)?;
            value.into_op(args.key.clone())
        }
        _ => {
            return Err(CliError::usage(
                "give exactly one of VALUE, `-` (stdin) or --file PATH",
            ))
        }
    };
    let txn = Txn {
        compare: args
            .if_revision
            .map(|mod_revision| keel_store::Compare {
                key: args.key.clone(),
                mod_revision,
            })
            .into_iter()
            .collect(),
        ops: vec![op],
    };
    let result = commit_one(&store, txn, &args.key)?;
    store.close()?;
    out.emit(&result, || {
        format!("{} set at revision {}", result.key, result.revision)
    })
}

fn view(store: &Store, checkpoint: Option<u64>) -> anyhow::Result<Snapshot> {
    Ok(match checkpoint {
        Some(sequence) => store.at_checkpoint(sequence)?,
        None => store.snapshot(),
    })
}

fn not_found(key: &str, view: &Snapshot) -> anyhow::Error {
    let place = match view.checkpoint() {
        Some(sequence) => format!(" at checkpoint {sequence}"),
        None => String::new(),
    };
    CliError::failed(format!("key not found: {key}{place}"))
}

fn get(args: &GetArgs, target: &DataDirArg, out: Output) -> anyhow::Result<()> {
    let store = target.open_read_only()?;
    let view = view(&store, args.checkpoint)?;
    let entry = view
        .get(&args.key)?
        .ok_or_else(|| not_found(&args.key, &view))?;
    if entry.value.is_dir() {
        return Err(CliError::failed(format!(
            "{} is a directory; list it with `keel kv ls {}`",
            args.key, args.key
        )));
    }
    if !out.json {
        let mut stdout = std::io::stdout().lock();
        view.write_to(&entry.value, &mut stdout)?;
        stdout.flush()?;
        return Ok(());
    }
    let size = entry.value.size().unwrap_or(0);
    if size > JSON_VALUE_BYTES_MAX {
        return Err(CliError::failed(format!(
            "value of {size} bytes is too large for JSON output; read it without --json"
        )));
    }
    let bytes = view.read(&entry.value)?;
    let mut body = serde_json::json!({
        "key": args.key,
        "revision": entry.revision,
        "size": size,
    });
    match std::str::from_utf8(&bytes) {
        Ok(text) => body["value"] = text.into(),
        Err(_) => {
            body["value_base64"] = base64::engine::general_purpose::STANDARD
                .encode(&bytes)
                .into()
        }
    }
    out.emit(&body, String::new)
}

fn del(args: &DelArgs, target: &DataDirArg, out: Output) -> anyhow::Result<()> {
    refuse_offline_write_to_member(&target.data_dir)?;
    let store = target.open()?;
    let txn = if args.prefix {
        Txn::delete_prefix(args.key.clone())
    } else {
        Txn::delete(args.key.clone())
    };
    let result = match commit_one(&store, txn, &args.key) {
        Err(error)
            if !args.prefix
                && store
                    .get(&args.key)
                    .ok()
                    .flatten()
                    .is_some_and(|e| e.value.is_dir()) =>
        {
            return Err(CliError::failed(format!(
                "{error}; delete a directory with `keel kv del --prefix {}`",
                args.key
            )))
        }
        other => other?,
    };
    store.close()?;
    if !result.changed {
        let what = if args.prefix {
            "nothing found under"
        } else {
            "key not found:"
        };
        return Err(CliError::failed(format!("{what} {}", args.key)));
    }
    out.emit(&result, || {
        format!(
            "deleted {} key(s) at revision {}",
            result.deleted, result.revision
        )
    })
}

fn ls(args: &LsArgs, target: &DataDirArg, out: Output) -> anyhow::Result<()> {
    let store = target.open_read_only()?;
    let view = view(&store, args.checkpoint)?;
    let items: Vec<ListItem> = if view.is_dir(&args.prefix)? {
        view.list(&args.prefix, args.recursive)?
    } else {
        // A value lists as itself, like `ls FILE`.
        match view.get(&args.prefix)? {
            Some(entry) => vec![ListItem {
                key: args.prefix.trim_start_matches('/').to_string(),
                kind: ItemKind::Value,
                size: entry.value.size().unwrap_or(0),
                revision: entry.revision,
            }],
            None => {
                return Err(CliError::failed(format!(
                    "no such key or directory: {}",
                    args.prefix
                )))
            }
        }
    };
    print_listing(&items, args.long, out)
}

// ---------------------------------------------------------------- online

/// Reads a value argument, file or stdin into memory (the API takes one body).
fn value_bytes(args: &PutArgs) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    match (&args.value, &args.file) {
        (Some(value), None) if value == "-" => {
            let mut bytes = Vec::new();
            std::io::stdin().lock().read_to_end(&mut bytes)?;
            Ok(bytes)
        }
        (Some(value), None) => Ok(value.clone().into_bytes()),
        (None, Some(path)) => std::fs::read(path)
            .map_err(|e| CliError::failed(format!("cannot read {}: {e}", path.display()))),
        _ => Err(CliError::usage(
            "give exactly one of VALUE, `-` (stdin) or --file PATH",
        )),
    }
}

fn online_error(error: keel_node::client::ClientError) -> anyhow::Error {
    use keel_node::client::ClientError;
    match error {
        ClientError::Unreachable { .. } => {
            CliError::usage(format!("{error} (is the node running?)"))
        }
        ClientError::Api { .. } => CliError::failed(error.to_string()),
    }
}

fn put_online(
    args: &PutArgs,
    client: &keel_node::client::Client,
    out: Output,
) -> anyhow::Result<()> {
    let value = value_bytes(args)?;
    let result = block_on(client.put(&args.key, value, args.if_revision)).map_err(online_error)?;
    out.emit(&result, || {
        format!("{} set at revision {}", args.key, result.revision)
    })
}

fn get_online(
    args: &GetArgs,
    client: &keel_node::client::Client,
    out: Output,
) -> anyhow::Result<()> {
    if args.checkpoint.is_some() {
        return Err(CliError::usage(
            "--checkpoint reads a data directory: use --data-dir on a stopped node",
        ));
    }
    if out.json {
        let value = block_on(client.get_json(&args.key, args.stale)).map_err(online_error)?;
        return out.emit(&value, String::new);
    }
    let value = block_on(client.get(&args.key, args.stale)).map_err(online_error)?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&value.bytes)?;
    stdout.flush()?;
    Ok(())
}

fn del_online(
    args: &DelArgs,
    client: &keel_node::client::Client,
    out: Output,
) -> anyhow::Result<()> {
    let result = block_on(client.delete(&args.key, args.prefix)).map_err(online_error)?;
    out.emit(&result, || {
        format!(
            "deleted {} key(s) at revision {}",
            result.deleted, result.revision
        )
    })
}

fn ls_online(args: &LsArgs, client: &keel_node::client::Client, out: Output) -> anyhow::Result<()> {
    if args.checkpoint.is_some() {
        return Err(CliError::usage(
            "--checkpoint reads a data directory: use --data-dir on a stopped node",
        ));
    }
    let entries =
        block_on(client.list(&args.prefix, args.recursive, args.stale)).map_err(online_error)?;
    let items: Vec<ListItem> = entries
        .into_iter()
        .map(|e| ListItem {
            key: e.key,
            kind: e.kind,
            size: e.size,
            revision: e.revision,
        })
        .collect();
    print_listing(&items, args.long, out)
}

fn watch(args: &WatchArgs, out: Output) -> anyhow::Result<()> {
    let client = keel_node::client::Client::new(&args.endpoint);
    let mut seen = 0u64;
    block_on(client.watch(&args.prefix, args.from_revision, |event| {
        if out.json {
            println!("{event}");
        } else {
            let value = event["value"]
                .as_str()
                .map(|v| format!(" = {v:?}"))
                .unwrap_or_default();
            println!(
                "{} {} {}{}",
                event["revision"],
                event["kind"].as_str().unwrap_or("?"),
                event["key"].as_str().unwrap_or(""),
                value
            );
        }
        seen += 1;
        args.count.is_none_or(|count| seen < count)
    }))
    .map_err(online_error)
}

fn print_listing(items: &[ListItem], long: bool, out: Output) -> anyhow::Result<()> {
    out.emit(&items, || {
        if long {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|i| {
                    let (kind, size) = match i.kind {
                        ItemKind::Dir => ("dir", format!("{} entries", i.size)),
                        ItemKind::Value => ("value", format!("{} bytes", i.size)),
                    };
                    vec![
                        display_key(i),
                        kind.to_string(),
                        size,
                        i.revision.to_string(),
                    ]
                })
                .collect();
            table(&["KEY", "KIND", "SIZE", "REVISION"], &rows)
        } else {
            items.iter().map(display_key).collect::<Vec<_>>().join("\n")
        }
    })
}

fn display_key(item: &ListItem) -> String {
    match item.kind {
        ItemKind::Dir => format!("{}/", item.key),
        ItemKind::Value => item.key.clone(),
    }
}
