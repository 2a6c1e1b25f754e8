//! openraft's own storage conformance suite, run against Keel's Raft log
//! and state machine (on disk, a fresh pair per case).

use keel_node::fence::Fence;
use keel_node::log_store::LogStore;
use keel_node::state_machine::StateMachine;
use keel_node::types::{NodeId, TypeConfig};
use keel_store::{Store, StoreOptions};
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct DiskBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for DiskBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            deterministic_revisions: true,
            ..StoreOptions::default()
        };
        let store = Store::init(dir.path(), options).unwrap();
        let (log, _) = LogStore::open(
            &dir.path().join("raft"),
            &dir.path().join("staging"),
            Fence::disabled(),
            keel_node::faults::Faults::default(),
        )
        .unwrap();
        let sm = StateMachine::new(store).unwrap();
        Ok((dir, log, sm))
    }
}

/// A plain test: the suite runs its own runtime per case.
#[test]
fn openraft_storage_conformance_suite() {
    if let Err(error) = Suite::test_all(DiskBuilder) {
        panic!("storage conformance suite failed: {error}");
    }
}
