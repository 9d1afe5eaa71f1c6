//! The `resultstore` binary as a person uses it: `serve` with no config file in a fresh
//! working directory, then `put` and `resolve` through the CLI, then SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_resultstore");

struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Starts `resultstore serve` on port 0 in `cwd` and waits for its "listening" line.
fn serve(cwd: &Path) -> Served {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(cwd)
        .env_remove("RESULTSTORE_CONFIG")
        .env_remove("RESULTSTORE_LISTEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start resultstore serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("read the listening line");
    let addr = line
        .trim()
        .strip_prefix("resultstore listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    Served { url: format!("http://{addr}"), child }
}

fn cli(url: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RESULTSTORE_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn put_then_resolve_on_the_embedded_default_writes_a_prefect_3_record() {
    let cwd = tempfile::tempdir().unwrap();
    let mut served = serve(cwd.path());

    let (ok, reference, err) = cli(&served.url, &["put", "--json", r#"{"a": 1}"#, "--serializer", "json"], None);
    assert!(ok, "{err}");
    let doc: serde_json::Value = serde_json::from_str(reference.trim()).unwrap();
    assert_eq!(doc["type"], "reference");
    assert_eq!(doc["block"], "local-file-system/default");
    assert_eq!(doc["persisted"], true);

    let (ok, value, err) = cli(&served.url, &["resolve", "--json", reference.trim()], None);
    assert!(ok, "{err}");
    assert_eq!(value.trim(), r#"{"a": 1}"#);
    // The reference on stdin works too.
    let (ok, value, _) = cli(&served.url, &["resolve", "--json"], Some(&reference));
    assert!(ok);
    assert_eq!(value.trim(), r#"{"a": 1}"#);

    // The file under .prefect-results is a Prefect 3 record.
    let key = doc["key"].as_str().unwrap();
    let record = std::fs::read_to_string(cwd.path().join(".prefect-results").join(key)).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(parsed["metadata"]["storage_key"], key);
    assert_eq!(parsed["metadata"]["serializer"]["type"], "json");
    assert_eq!(parsed["metadata"]["prefect_version"], "3.9.1");
    assert_eq!(parsed["result"], r#"{"a": 1}"#);
    assert!(record.starts_with(r#"{"metadata":{"storage_key":""#), "{record}");

    // Errors print their status code and exit non-zero.
    let (ok, _, err) = cli(&served.url, &["resolve", "--block", "memory/nope", "--key", "x"], None);
    assert!(!ok);
    assert!(err.contains("NOT_FOUND") && err.contains("memory/nope"), "{err}");
    let (ok, _, err) = cli(&served.url, &["get", "--key", "../etc/passwd"], None);
    assert!(!ok);
    assert!(err.contains("INVALID_ARGUMENT"), "{err}");

    // Other commands.
    let (ok, out, _) = cli(&served.url, &["put", "--literal", "true"], None);
    assert!(ok);
    assert_eq!(out.trim(), r#"{"type":"literal","value":true}"#);
    let (ok, out, _) = cli(&served.url, &["ls"], None);
    assert!(ok && out.starts_with(key), "{out}");
    let (ok, out, _) = cli(&served.url, &["exists", key], None);
    assert!(ok && out.trim() == "true");
    let (ok, out, _) = cli(&served.url, &["get", reference.trim()], None);
    assert!(ok);
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["data"], r#"{"a": 1}"#);
    let (ok, out, _) = cli(&served.url, &["blocks"], None);
    assert!(ok && out.contains("local-file-system/default") && out.contains("memory/default"), "{out}");
    let (ok, _, _) = cli(&served.url, &["delete", key], None);
    assert!(ok);
    let (ok, out, _) = cli(&served.url, &["exists", key], None);
    assert!(!ok && out.trim() == "false");

    // SIGTERM drains and exits 0.
    let status = Command::new("kill").args(["-TERM", &served.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = served.child.wait().unwrap();
    assert!(exit.success(), "serve exited with {exit:?}");
}

#[test]
fn serve_refuses_a_bad_config_naming_the_field() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(cwd.path().join("bad.toml"), "[cache]\ncapacty = \"1MiB\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", "bad.toml", "--listen", "127.0.0.1:0"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("capacty"), "{err}");
}

/// A record as Prefect 3.9.1 writes it, with `expiration` (RFC 3339) or none.
fn prefect_record(key: &str, expiration: Option<&str>) -> String {
    let expiration = expiration.map_or("null".to_owned(), |e| format!("\"{e}\""));
    format!(
        r#"{{"metadata":{{"storage_key":"{key}","expiration":{expiration},"serializer":{{"type":"json","jsonlib":"json","object_encoder":"prefect.serializers.prefect_json_object_encoder","object_decoder":"prefect.serializers.prefect_json_object_decoder","dumps_kwargs":{{}},"loads_kwargs":{{}}}},"prefect_version":"3.9.1","storage_block_id":null}},"result":"1"}}"#
    )
}

#[test]
fn gc_sweeps_expired_records_and_delete_takes_prefixes() {
    let cwd = tempfile::tempdir().unwrap();
    let served = serve(cwd.path());
    let root = cwd.path().join(".prefect-results");
    std::fs::create_dir_all(root.join("gc")).unwrap();
    let future = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    for (key, expiration) in
        [("gc/old", Some("2020-01-01T00:00:00Z")), ("gc/new", Some(future.as_str())), ("gc/plain", None)]
    {
        std::fs::write(root.join(key), prefect_record(key, expiration)).unwrap();
    }
    let block = ["--block", "local-file-system/default"];
    let gc = |extra: &[&str]| {
        let args: Vec<&str> = ["gc"].iter().chain(block.iter()).chain(extra).copied().collect();
        let (ok, out, err) = cli(&served.url, &args, None);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()
    };

    // A dry run counts; nothing changes.
    let dry = gc(&["--dry-run"]);
    assert_eq!(
        (dry["scanned"].as_u64(), dry["expired"].as_u64(), dry["deleted"].as_u64()),
        (Some(3), Some(1), Some(0))
    );
    assert!(root.join("gc/old").exists());
    // The sweep deletes exactly the expired record.
    let swept = gc(&[]);
    assert_eq!((swept["expired"].as_u64(), swept["deleted"].as_u64()), (Some(1), Some(1)), "{swept}");
    assert!(!root.join("gc/old").exists());
    assert!(root.join("gc/new").exists() && root.join("gc/plain").exists());
    // An age of zero would mean everything: refused.
    let (ok, _, err) = cli(&served.url, &["gc", "--block", "local-file-system/default", "--older-than", "0s"], None);
    assert!(!ok && err.contains("INVALID_ARGUMENT"), "{err}");

    // Bulk delete: a prefix, or the whole block by name only.
    let (ok, _, err) = cli(&served.url, &["delete", "--block", "local-file-system/default", "--prefix", ""], None);
    assert!(!ok && err.contains("INVALID_ARGUMENT") && err.contains("all"), "{err}");
    let (ok, out, err) = cli(&served.url, &["delete", "--block", "local-file-system/default", "--prefix", "gc/"], None);
    assert!(ok, "{err}");
    let bulk: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let bytes = prefect_record("gc/new", Some(&future)).len() + prefect_record("gc/plain", None).len();
    assert_eq!((bulk["deleted"].as_u64(), bulk["bytes"].as_u64()), (Some(2), Some(bytes as u64)), "{bulk}");
    assert!(!root.join("gc/new").exists() && !root.join("gc/plain").exists());
    let (ok, _, err) = cli(&served.url, &["delete", "--block", "local-file-system/default"], None);
    assert!(!ok && err.contains("<KEY>"), "a delete names what it deletes: {err}");
}
