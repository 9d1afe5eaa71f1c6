//! Chaos: concurrent writers (sequential overwrites of their own keys, racing overwrites
//! of shared keys, create-only races) on every block format that survives a restart
//! (local `prefect3`, local `split` with its documents under the reserved prefix and under
//! a `metadata_url`, and the same on the S3 test server s3s-fs), with the server SIGKILLed
//! in the middle of the writes several times and restarted. Afterwards:
//! - every acknowledged write resolves by its reference to exactly its value and
//!   serializer, or fails (it was overwritten); never to another write's value;
//! - every key a writer owned holds its last acknowledged write, or one sent after it
//!   whose reply the kill cut off: nothing acknowledged is lost;
//! - a create-only key holds the one write acknowledged for it;
//! - every key List shows reads whole (no half record is listed).
//!
//! Bounded in time (a few seconds of writes per phase) so CI runs it on every change.

mod common;

use common::serve;

#[allow(dead_code)]
#[path = "../../tests/src/servers.rs"]
mod servers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use resultstore_client::{Client, Put, ReadOptions, Reference, Target, Want};
use tonic::Code;

/// Kill-and-restart phases.
const PHASES: u64 = 5;
const WRITERS_PER_BLOCK: u64 = 3;
const BLOCKS: [&str; 5] = [
    "local-file-system/p3",
    "local-file-system/split",
    "local-file-system/splitmeta",
    "s3-bucket/p3",
    "s3-bucket/split",
];

/// A write's identity, carried in its value: `{"w": writer, "n": serial, ...}`.
type WriteId = (String, u64);

#[derive(Default)]
struct Log {
    /// Every write sent: its block and key, value and serializer.
    sent: HashMap<WriteId, (String, String, String, &'static str)>,
    /// Acknowledged writes and their references.
    acked: Vec<(WriteId, Reference)>,
    /// For each owned key: the writes it may hold (the last acknowledged one, and those
    /// sent after it).
    possible: HashMap<(String, String), Vec<WriteId>>,
    /// Create-only keys: the writes acknowledged for each.
    created: HashMap<(String, String), Vec<WriteId>>,
}

/// A small deterministic generator (no `rand` dependency for one test).
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn writer(client: Client, block: &'static str, w: u64, phase: u64, log: Arc<Mutex<Log>>) {
    let name = format!("{block}#{w}");
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (w << 32) ^ phase.wrapping_mul(0x1000_0001) ^ block.len() as u64);
    for n in (phase << 32).. {
        let r = rng.next();
        let serializer: &'static str = if r & 1 == 0 { "json" } else { "pickle" };
        let pad = "x".repeat((r >> 8) as usize % (48 << 10));
        let value = format!(r#"{{"w": "{name}", "n": {n}, "pad": "{pad}"}}"#);
        let (key, create_only) = match (r >> 4) % 8 {
            0..=3 => (format!("own/{w}/{}", (r >> 12) % 4), false),
            4..=6 => (format!("shared/{}", (r >> 12) % 3), false),
            // Every writer of the block races for the same create-only key of the phase.
            _ => (format!("create/{phase}/{}", (r >> 12) % 4), true),
        };
        let id = (name.clone(), n);
        {
            let mut log = log.lock().unwrap();
            log.sent.insert(id.clone(), (block.to_owned(), key.clone(), value.clone(), serializer));
            if key.starts_with("own/") {
                log.possible.entry((block.to_owned(), key.clone())).or_default().push(id.clone());
            }
        }
        let mut put = Put::json(&value).serializer(serializer).storage(block).key(&key);
        if create_only {
            put = put.create_only();
        }
        match client.put(put).await {
            Ok(stored) => {
                let reference = stored.reference().expect("a reference").clone();
                let mut log = log.lock().unwrap();
                log.acked.push((id.clone(), reference));
                if key.starts_with("own/") {
                    log.possible.insert((block.to_owned(), key.clone()), vec![id]);
                } else if create_only {
                    log.created.entry((block.to_owned(), key)).or_default().push(id);
                }
            }
            Err(e) if e.code() == Some(Code::AlreadyExists) => {}
            // The server was killed: this write's outcome is unknown.
            Err(_) => return,
        }
    }
}

fn id_of(json: &str) -> WriteId {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json:.80}"));
    (v["w"].as_str().unwrap().to_owned(), v["n"].as_u64().unwrap())
}

fn serializer_of(r: &Reference) -> String {
    r.0.serializer.as_ref().map(|s| s.r#type.clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_survive_sigkill_whole_on_every_block_format() {
    let (s3, _s3_root) = servers::s3s_fs("results");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let s3_options = servers::s3_options(s3.port);
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            r#"
default_block = "local-file-system/p3"
[blocks."local-file-system/p3"]
url = "file://{d}/p3"
[blocks."local-file-system/split"]
url = "file://{d}/split"
format = "split"
[blocks."local-file-system/splitmeta"]
url = "file://{d}/splitmeta"
format = "split"
metadata_url = "file://{d}/splitmeta-docs"
[blocks."s3-bucket/p3"]
url = "s3://results/p3"
options = {s3_options}
[blocks."s3-bucket/split"]
url = "s3://results/split"
format = "split"
metadata_url = "s3://results/split-docs"
options = {s3_options}
"#
        ),
    )
    .unwrap();

    let log = Arc::new(Mutex::new(Log::default()));
    let mut timing = XorShift(0x2545_f491_4f6c_dd1d);
    for phase in 0..PHASES {
        let (mut child, url) = serve(dir.path());
        let client = Client::connect(url).await.unwrap();
        let mut writers = Vec::new();
        for block in BLOCKS {
            for w in 0..WRITERS_PER_BLOCK {
                writers.push(tokio::spawn(writer(client.clone(), block, w, phase, log.clone())));
            }
        }
        // Chaos timing, not readiness: the kill lands anywhere in the writes.
        tokio::time::sleep(Duration::from_millis(800 + timing.next() % 1200)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for w in writers {
            w.await.unwrap();
        }
    }

    let (mut child, url) = serve(dir.path());
    let client = Client::connect(url).await.unwrap();
    let bypass = ReadOptions { bypass_cache: true, ..Default::default() };
    // Every writer has ended: the log is the test's alone now.
    let log = std::mem::take(&mut *log.lock().unwrap());
    assert!(log.acked.len() > 100, "only {} writes were acknowledged", log.acked.len());
    let read = |block: &str, key: &str| {
        let target = Target::Location { block: block.to_owned(), key: key.to_owned() };
        client.resolve(target, Want::Json, bypass.clone())
    };

    // Every acknowledged write: its own value and serializer, or an error.
    for (id, reference) in &log.acked {
        let (block, key, value, serializer) = &log.sent[id];
        match client.resolve(reference, Want::Json, bypass.clone()).await {
            Ok(got) => {
                assert_eq!(got.json.as_deref(), Some(value.as_str()), "{block} {key}: another write's value");
                assert_eq!(serializer_of(got.reference.as_ref().unwrap()), *serializer, "{block} {key}");
            }
            Err(e) => assert!(
                matches!(e.code(), Some(Code::DataLoss | Code::NotFound)) && e.to_string().contains("overwritten"),
                "{block} {key}: an acknowledged reference fails for another reason than an overwrite: {e}"
            ),
        }
    }
    // Owned keys: the last acknowledged write, or one sent after it.
    let acked: std::collections::HashSet<&WriteId> = log.acked.iter().map(|(id, _)| id).collect();
    for ((block, key), possible) in &log.possible {
        let held = match read(block, key).await {
            Ok(held) => held,
            // Never written: every write sent to it was cut off by a kill.
            Err(e) if e.code() == Some(Code::NotFound) && !possible.iter().any(|id| acked.contains(id)) => continue,
            Err(e) => panic!("{block} {key}: {e}"),
        };
        let id = id_of(held.json.as_deref().unwrap());
        assert!(possible.contains(&id), "{block} {key} holds {id:?}, not one of {possible:?}: a write was lost");
        assert_eq!(serializer_of(held.reference.as_ref().unwrap()), log.sent[&id].3, "{block} {key}");
    }
    // Create-only keys: at most one write acknowledged, and it is what the key holds.
    for ((block, key), created) in &log.created {
        assert_eq!(created.len(), 1, "{block} {key}: several create-only writes acknowledged: {created:?}");
        let held = read(block, key).await.unwrap_or_else(|e| panic!("{block} {key}: {e}"));
        assert_eq!(id_of(held.json.as_deref().unwrap()), created[0], "{block} {key}");
    }
    // Everything listed reads whole, with the serializer its write used.
    for block in BLOCKS {
        let listed = client.list_all(block, "").await.unwrap();
        assert!(!listed.is_empty(), "{block} lists nothing");
        for entry in listed {
            let held = read(block, &entry.key).await.unwrap_or_else(|e| panic!("{block} {}: {e}", entry.key));
            let id = id_of(held.json.as_deref().unwrap());
            let (_, key, _, serializer) = &log.sent[&id];
            assert_eq!(*key, entry.key, "{block}: a key holds another key's write");
            assert_eq!(serializer_of(held.reference.as_ref().unwrap()), *serializer, "{block} {key}");
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
