//! The `keel` command: outputs, exit codes and refusals.

use std::process::{Command, Output};

fn keel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .unwrap()
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A temporary directory with a store initialised in `store/` under it,
/// and that store's path.
fn initialised_store() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store").to_str().unwrap().to_string();
    assert_eq!(code(&keel(&["init", "--data-dir", &store])), 0);
    (dir, store)
}

#[test]
fn store_commands_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let d = data.to_str().unwrap();
    assert_eq!(
        code(&keel(&["kv", "get", "--data-dir", d, "k"])),
        2,
        "missing data dir"
    );
    assert_eq!(code(&keel(&["init", "--data-dir", d])), 0);
    assert_eq!(
        code(&keel(&["init", "--data-dir", d])),
        2,
        "already initialised"
    );
    assert_eq!(
        code(&keel(&[
            "kv",
            "put",
            "--data-dir",
            d,
            "apps/web/cfg",
            "port=80"
        ])),
        0
    );

    let got = keel(&["kv", "get", "--data-dir", d, "apps/web/cfg"]);
    assert_eq!(got.stdout, b"port=80", "raw value, nothing added");
    let missing = keel(&["kv", "get", "--data-dir", d, "apps/none"]);
    assert_eq!(code(&missing), 1);
    assert!(stderr(&missing).contains("key not found: apps/none"));

    let json = keel(&["--json", "kv", "get", "--data-dir", d, "apps/web/cfg"]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["value"], "port=80");
    assert_eq!(value["revision"], 1);

    let ls = keel(&["--json", "kv", "ls", "--data-dir", d, "-r"]);
    let items: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(items[0]["key"], "apps/web/cfg");

    let list = keel(&["--json", "checkpoint", "list", "--data-dir", d]);
    let checkpoints: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let newest = checkpoints[0]["sequence"].as_u64().unwrap();
    let oldest = checkpoints.as_array().unwrap().last().unwrap()["sequence"]
        .as_u64()
        .unwrap();
    assert!(newest > oldest, "newest first");
    let old = keel(&[
        "kv",
        "get",
        "--data-dir",
        d,
        "apps/web/cfg",
        "--checkpoint",
        &oldest.to_string(),
    ]);
    assert_eq!(
        code(&old),
        1,
        "the key did not exist at the first checkpoint"
    );

    let del_dir = keel(&["kv", "del", "--data-dir", d, "apps"]);
    assert_eq!(code(&del_dir), 1);
    assert!(
        stderr(&del_dir).contains("--prefix"),
        "{}",
        stderr(&del_dir)
    );
    assert_eq!(
        code(&keel(&["kv", "del", "--data-dir", d, "apps", "--prefix"])),
        0
    );
    assert_eq!(
        code(&keel(&["kv", "del", "--data-dir", d, "apps", "--prefix"])),
        1
    );

    // A malformed key is a usage error, whatever the command.
    for args in [
        &["kv", "put", "--data-dir", d, "a//b", "x"][..],
        &["kv", "get", "--data-dir", d, "a/"],
        &["kv", "del", "--data-dir", d, "a//b", "--prefix"],
        &["kv", "del", "--data-dir", d, "a/"],
        &["kv", "ls", "--data-dir", d, "a/../b"],
    ] {
        let bad = keel(args);
        assert_eq!(code(&bad), 2, "{args:?}: {}", stderr(&bad));
        assert!(stderr(&bad).contains("invalid key"), "{}", stderr(&bad));
    }
    // With --json, a usage error is a JSON error as any other.
    let bad = keel(&["--json", "kv", "put", "--data-dir", d, "a//b", "x"]);
    assert_eq!(code(&bad), 2);
    let error: serde_json::Value = serde_json::from_str(stderr(&bad).trim()).unwrap();
    assert_eq!(error["error"]["exit_code"], 2);
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("invalid value 'a//b'"), "{message}");
    assert_eq!(
        code(&keel(&["kv", "put", "--data-dir", d])),
        2,
        "usage error"
    );
}

#[test]
fn a_second_writer_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert_eq!(code(&keel(&["init", "--data-dir", d])), 0);
    let held = keel_store::Store::open(dir.path(), keel_store::StoreOptions::default()).unwrap();
    let refused = keel(&["kv", "put", "--data-dir", d, "k", "v"]);
    assert_eq!(code(&refused), 2);
    assert!(
        stderr(&refused).contains("in use by another process"),
        "{}",
        stderr(&refused)
    );
    // Reads work while the store is held: they open a consistent read-only view.
    assert_eq!(code(&keel(&["kv", "ls", "--data-dir", d])), 0);
    drop(held);
    let after = keel(&["kv", "put", "--data-dir", d, "k", "v"]);
    assert_eq!(code(&after), 0, "{}", stderr(&after));
}

#[test]
fn foreign_and_empty_directories_are_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let d = dir.path().to_str().unwrap();
    let refused = keel(&["init", "--data-dir", d]);
    assert_eq!(code(&refused), 2);
    assert!(stderr(&refused).contains("not a Keel store"));
    assert_eq!(code(&keel(&["kv", "put", "--data-dir", d, "k", "v"])), 2);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("notes.txt")]);

    let empty = tempfile::tempdir().unwrap();
    let refused = keel(&["kv", "ls", "--data-dir", empty.path().to_str().unwrap()]);
    assert_eq!(code(&refused), 2);
    assert!(
        stderr(&refused).contains("not initialised"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn put_if_revision_is_a_compare_and_set() {
    let (_dir, d) = initialised_store();
    let d = d.as_str();
    let create = |value: &str, rev: &str| {
        keel(&[
            "kv",
            "put",
            "--data-dir",
            d,
            "fence",
            value,
            "--if-revision",
            rev,
        ])
    };
    assert_eq!(code(&create("1", "0")), 0, "0: only if absent");
    let again = create("2", "0");
    assert_eq!(code(&again), 1, "the key exists now");
    assert!(
        stderr(&again).contains("expected revision 0, found 1"),
        "{}",
        stderr(&again)
    );
    assert_eq!(code(&create("2", "1")), 0, "at the revision it was read at");
    assert_eq!(keel(&["kv", "get", "--data-dir", d, "fence"]).stdout, b"2");
}

#[test]
fn serve_with_a_malformed_or_missing_config_cannot_start() {
    let (dir, d) = initialised_store();
    let d = d.as_str();
    let config = dir.path().join("keel.toml");
    std::fs::write(&config, "listen = 5\n").unwrap();
    let config = config.to_str().unwrap();
    let malformed = keel(&["serve", "--data-dir", d, "--config", config]);
    assert_eq!(code(&malformed), 2, "{}", stderr(&malformed));
    assert!(
        stderr(&malformed).contains("invalid config") && stderr(&malformed).contains(config),
        "{}",
        stderr(&malformed)
    );
    let absent = dir.path().join("absent.toml");
    let missing = keel(&[
        "serve",
        "--data-dir",
        d,
        "--config",
        absent.to_str().unwrap(),
    ]);
    assert_eq!(code(&missing), 2, "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("cannot read config"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn an_unreachable_or_malformed_endpoint_says_why() {
    // A port just freed on loopback: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let refused = keel(&["kv", "get", "--endpoint", &endpoint, "k"]);
    assert_eq!(code(&refused), 2, "{}", stderr(&refused));
    let text = stderr(&refused);
    assert!(
        text.contains(&format!("cannot reach {endpoint}"))
            && text.to_lowercase().contains("connection refused")
            && text.contains("is the node running?"),
        "the cause, not only the URL: {text}"
    );

    // Every online command: the node could not be reached, so the command
    // could not start (exit 2), as offline with a missing data directory.
    for command in [
        &["status"][..],
        &["leave"],
        &["diag"],
        &["checkpoint", "list"],
    ] {
        let args = [command, &["--endpoint", &endpoint]].concat();
        let output = keel(&args);
        assert_eq!(code(&output), 2, "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).contains("cannot reach"), "{args:?}");
    }

    let malformed = keel(&["kv", "put", "--endpoint", "notaurl", "k", "v"]);
    assert_eq!(code(&malformed), 2, "{}", stderr(&malformed));
    assert!(
        stderr(&malformed).contains("not a valid endpoint (expected http://HOST:PORT)"),
        "{}",
        stderr(&malformed)
    );
}

#[test]
fn a_reader_that_stops_reading_ends_the_command_quietly() {
    let (_dir, store) = initialised_store();
    assert_eq!(
        code(&keel(&["kv", "put", "--data-dir", &store, "k", "v"])),
        0
    );
    for args in [
        vec!["kv", "get", "--data-dir", &store, "k"],
        vec!["--json", "kv", "ls", "--data-dir", &store, "-r"],
    ] {
        // The read end is closed before the command writes a byte: every
        // write to stdout fails with EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(&args)
            .stdout(writer)
            .output()
            .unwrap();
        assert_eq!(code(&output), 0, "{args:?}: {}", stderr(&output));
        assert_eq!(stderr(&output), "", "{args:?}");
    }
}

#[test]
fn a_file_error_names_its_cause_once() {
    let (dir, store) = initialised_store();
    let missing = dir.path().join("missing.tar");
    let output = keel(&["restore", "--data-dir", &store, missing.to_str().unwrap()]);
    assert_eq!(code(&output), 1);
    let text = stderr(&output);
    assert_eq!(
        text.matches("No such file or directory").count(),
        1,
        "the cause once, not again from the error's source: {text}"
    );
}
