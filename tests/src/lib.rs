//! End-to-end test harness: a real resultstore server on `127.0.0.1:0`, real blocks
//! (local files in a temp dir, memory), and a real client over HTTP/2.
//!
//! Every test starts its own server, so tests run in parallel (`cargo nextest`) without
//! sharing state. The server runs in the test's process, which lets tests read its
//! storage and cache counters directly: those counts are the server's own, not a mock's.

pub mod pki;
pub mod servers;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use resultstore::wire::server::{ServerHandle, start};
use resultstore::{Config, ResultStore};
use resultstore_client::Client;
use tokio::net::TcpListener;

/// A running server and a client connected to it.
pub struct TestServer {
    pub client: Client,
    pub url: String,
    pub dir: tempfile::TempDir,
    config_text: String,
    handle: Option<ServerHandle>,
}

/// The blocks every test server has, rooted in its temp dir:
/// - `local-file-system/default` (prefect3, the default block) at `results/`;
/// - `local-file-system/other` (prefect3) at `other/`;
/// - `local-file-system/split` (split) at `split/`, metadata at `split-meta/`;
/// - `memory/default`;
/// - `memory/split` (split, metadata under the block's reserved prefix).
pub fn base_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"
default_block = "local-file-system/default"
default_serializer = "pickle"
[blocks."local-file-system/default"]
url = "file://{d}/results"
[blocks."local-file-system/other"]
url = "file://{d}/other"
[blocks."local-file-system/split"]
url = "file://{d}/split"
format = "split"
metadata_url = "file://{d}/split-meta"
[blocks."memory/default"]
url = "memory://"
[blocks."memory/split"]
url = "memory://"
format = "split"
"#
    )
}

/// [`base_config`] plus a `{block_type}/p3` block at `{url}/p3` and a split
/// `{block_type}/split` block at `{url}/split` with metadata at `{url}/split-meta`, both with
/// `options` (a TOML inline table).
pub fn config_with_pair(dir: &Path, block_type: &str, url: &str, options: &str) -> String {
    format!(
        "{}\n[blocks.\"{block_type}/p3\"]\nurl = \"{url}/p3\"\noptions = {options}\n\
         [blocks.\"{block_type}/split\"]\nurl = \"{url}/split\"\nformat = \"split\"\nmetadata_url = \"{url}/split-meta\"\noptions = {options}\n",
        base_config(dir)
    )
}

/// Serializer configs as clients name them: every type, every compression library.
pub const SERIALIZERS: &[&str] = &[
    "json",
    "pickle",
    "compressed/json",
    "compressed/pickle",
    r#"{"type":"compressed","serializer":"json","compressionlib":"bz2"}"#,
    r#"{"type":"compressed","serializer":{"type":"pickle","picklelib":"cloudpickle","picklelib_version":null},"compressionlib":"zlib"}"#,
    r#"{"type":"compressed","serializer":"json","compressionlib":"gzip"}"#,
    r#"{"type":"compressed","serializer":"pickle","compressionlib":"lzma"}"#,
];

/// Keys as Prefect's `result_storage_key` templates make them from flow parameters:
/// letters of several scripts, spaces, and punctuation that URLs and object_store's
/// `Path::from` would escape. Every block stores each under exactly this name. The table
/// is `tests/key-table.json`, which the Python tests read too.
pub fn key_table() -> Vec<String> {
    let table: serde_json::Value =
        serde_json::from_str(include_str!("../key-table.json")).expect("tests/key-table.json");
    table["keys"].as_array().expect("a `keys` list").iter().map(|k| k.as_str().expect("a key").to_owned()).collect()
}

impl TestServer {
    /// A server with [`base_config`].
    pub async fn start() -> Self {
        Self::start_with(base_config).await
    }

    /// A server with the config `make` writes for the temp dir.
    pub async fn start_with(make: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_text = make(dir.path());
        let (handle, url, client) = launch(&config_text).await;
        TestServer { client, url, dir, config_text, handle: Some(handle) }
    }

    /// The server's domain, for its storage and cache counters.
    pub fn store(&self) -> Arc<ResultStore> {
        self.handle.as_ref().expect("server running").store()
    }

    /// Takes the running server out, to shut it down by hand; [`TestServer::restart`]
    /// starts a new one.
    pub fn take_handle(&mut self) -> ServerHandle {
        self.handle.take().expect("server running")
    }

    /// The running server.
    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("server running")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Stops the server (graceful) and starts a new one on the same config and folders:
    /// whatever was only in memory is gone.
    pub async fn restart(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await.expect("clean shutdown");
        }
        let (handle, url, client) = launch(&self.config_text).await;
        self.handle = Some(handle);
        self.url = url;
        self.client = client;
    }

    /// Storage GETs made by `block` so far.
    pub fn storage_gets(&self, block: &str) -> u64 {
        self.store().blocks().get(block).expect("block").counters.snapshot().get
    }
}

async fn launch(config_text: &str) -> (ServerHandle, String, Client) {
    let config = Config::from_toml(config_text).expect("test config is valid");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let handle = start(&config, listener, std::future::pending()).await.expect("server starts");
    let url = format!("http://{}", handle.local_addr);
    let client = Client::connect_with_limit(url.clone(), 64 << 20).await.expect("client connects");
    (handle, url, client)
}

/// `../shared/prefect-samples` beside the repository (or `RESULTSTORE_PREFECT_SAMPLES`).
/// Panics with a clear message when it is missing: these tests never pass without it.
pub fn prefect_samples() -> PathBuf {
    let dir = std::env::var_os("RESULTSTORE_PREFECT_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/prefect-samples"));
    assert!(
        dir.join("v3.9.1").is_dir(),
        "the Prefect samples are missing at {} (expected ../shared/prefect-samples beside the repository, \
         or RESULTSTORE_PREFECT_SAMPLES)",
        dir.display()
    );
    dir
}

/// Copies a directory tree (the samples are read-only; tests work on copies).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
            let mut perms = std::fs::metadata(&target).expect("meta").permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&target, perms).expect("chmod");
        }
    }
}

/// The gRPC code of a failed call, panicking with the value when the call succeeded.
pub fn code_of<T: std::fmt::Debug>(r: Result<T, resultstore_client::ClientError>) -> tonic::Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.code().unwrap_or_else(|| panic!("not a status: {e}")),
    }
}

/// Runs `python3 -c CODE ARGS...`, panicking with its output when it fails. Python is
/// the reader these tests hold the server's output to.
pub fn python(code: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("python3 is needed by these tests (it is on every machine image of this project)");
    assert!(
        out.status.success(),
        "python3 failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 1 MiB tmpfs mounted for one test (a disk that fills up), unmounted when dropped. The
/// tests run as root, as CI does; without root this fails, naming why.
pub struct SmallDisk {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount() -> SmallDisk {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("small");
        std::fs::create_dir(&path).expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount(8) runs (the tests run as root, as CI does)");
        assert!(status.success(), "mounting a 1 MiB tmpfs failed: this test needs root, as CI has");
        SmallDisk { path, _dir: dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.path).status();
    }
}
