//! The service killed (SIGKILL) in the middle of a stream of Puts: after a restart every
//! acknowledged result reads back with its digest, and every key a reader can see holds a
//! whole record (local writes are staged and renamed into place).

mod common;

use common::serve;

use resultstore_client::{Client, Put, ReadOptions, Target, Want};

#[tokio::test]
async fn a_killed_service_leaves_no_partial_record_and_loses_no_acknowledged_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[limits]\nmax_message_size = \"64MiB\"\nmax_result_size = \"64MiB\"\n[blocks.\"local-file-system/default\"]\nurl = \"file://results\"\n",
    )
    .unwrap();
    let (mut child, url) = serve(dir.path());
    let client = Client::connect_with_limit(url.clone(), 64 << 20).await.unwrap();

    // Concurrent writers of 4 MiB results; the server is killed once a few are acknowledged.
    let payload = format!("\"{}\"", "x".repeat(4 << 20));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, payload, tx) = (client.clone(), payload.clone(), tx.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..50 {
                let put = Put::json(payload.clone()).serializer("json").key(format!("w{w}/{i}"));
                match client.put(put).await {
                    Ok(stored) => {
                        let _ = tx.send(stored.reference().unwrap().clone());
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    drop(tx);
    let mut acknowledged = Vec::new();
    while let Some(r) = rx.recv().await {
        acknowledged.push(r);
        if acknowledged.len() == 6 {
            child.kill().unwrap(); // SIGKILL, mid-stream
            child.wait().unwrap();
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(acknowledged.len() >= 6 && acknowledged.len() < 200, "{} acknowledged", acknowledged.len());

    let (mut child, url) = serve(dir.path());
    let client = Client::connect_with_limit(url, 64 << 20).await.unwrap();
    for r in &acknowledged {
        let v =
            client.resolve(r, Want::Raw, ReadOptions::default()).await.unwrap_or_else(|e| panic!("{}: {e}", r.key()));
        assert_eq!(v.data.unwrap().len(), payload.len());
    }
    // Whatever a reader can list is a whole record.
    let listed = client.list_all("", "").await.unwrap();
    assert!(listed.len() >= acknowledged.len());
    for entry in &listed {
        let target = Target::Location { block: String::new(), key: entry.key.clone() };
        let v = client
            .resolve(target, Want::Raw, ReadOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", entry.key));
        assert_eq!(v.data.unwrap().len(), payload.len(), "{}", entry.key);
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
