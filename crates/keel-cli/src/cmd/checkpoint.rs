//! `keel checkpoint`: list and create checkpoints.

use clap::{Args, Subcommand};

use super::{block_on, DataDirArg, Place, Target};
use crate::output::{table, Output};

#[derive(Subcommand, Debug)]
pub enum CheckpointCommand {
    /// List retained checkpoints, newest first.
    List(ListArgs),
    /// Record the current state as a new checkpoint.
    Create(CreateArgs),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub target: DataDirArg,
}

pub fn run(command: &CheckpointCommand, out: Output) -> anyhow::Result<()> {
    match command {
        CheckpointCommand::List(args) => {
            let checkpoints = match args.target.place() {
                Place::Offline(dir) => {
                    let mut checkpoints = dir.open_read_only()?.checkpoints();
                    checkpoints.reverse();
                    checkpoints
                }
                Place::Online(client) => block_on(client.checkpoints())?,
            };
            out.emit(&checkpoints, || {
                let rows: Vec<Vec<String>> = checkpoints
                    .iter()
                    .map(|c| {
                        vec![
                            c.sequence.to_string(),
                            c.time(),
                            c.revision.to_string(),
                            c.root.to_string(),
                        ]
                    })
                    .collect();
                table(&["SEQUENCE", "TIME", "REVISION", "ROOT"], &rows)
            })
        }
        CheckpointCommand::Create(args) => {
            let store = args.target.open()?;
            let checkpoint = store.checkpoint()?;
            store.close()?;
            out.emit(&checkpoint, || {
                format!(
                    "checkpoint {} at revision {} (root {})",
                    checkpoint.sequence, checkpoint.revision, checkpoint.root
                )
            })
        }
    }
}
