//! The client against Kelp's own server on a real socket.

use std::sync::{Arc, Mutex};

use kelp_core::Digest;

use super::blobs::partial_path;
use super::{Client, ClientError, Progress};
use crate::names::{ManifestRef, RepoName, Tag};
use crate::oci::{Descriptor, WasmArtifact, digest_of};
use crate::{Auth, PullPolicy, Registry, Store, TokenHash, router};

/// A registry on a real socket, recording the Range headers it receives.
async fn serve() -> (String, Arc<Mutex<Vec<String>>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let auth = Auth {
        pull: PullPolicy::Token,
        tokens: std::sync::Arc::new(vec![TokenHash::of("t")]),
    };
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    let app = router(Registry::new(store, auth)).layer(axum::middleware::map_request(
        move |req: axum::http::Request<axum::body::Body>| {
            let seen = seen.clone();
            async move {
                if let Some(r) = req.headers().get("range") {
                    seen.lock().unwrap().push(r.to_str().unwrap().to_owned());
                }
                req
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), ranges, dir)
}

fn module() -> Vec<u8> {
    (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn pushes_then_pulls_by_tag_and_digest() {
    let (base, _, dir) = serve().await;
    let client = Client::new(&base, Some("t".into())).unwrap();
    let repo = RepoName::parse("kelp/hello").unwrap();
    let wasm = module();
    let digest = client
        .push_wasm(&repo, &Tag::parse("v1").unwrap(), wasm.clone().into())
        .await
        .unwrap();
    for reference in [
        ManifestRef::Tag(Tag::parse("v1").unwrap()),
        ManifestRef::Digest(digest),
    ] {
        let dest = dir.path().join("out.wasm");
        let pulled = client.pull_wasm(&repo, &reference, &dest).await.unwrap();
        assert_eq!(pulled.manifest_digest, digest);
        assert_eq!(std::fs::read(&dest).unwrap(), wasm);
        assert!(!partial_path(&dest).exists());
    }
    let anonymous = Client::new(&base, None).unwrap();
    let err = anonymous
        .pull_wasm(&repo, &ManifestRef::Digest(digest), &dir.path().join("x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UNAUTHORIZED"), "{err}");
}

#[tokio::test]
async fn an_interrupted_pull_resumes_with_a_range_and_checks_the_digest() {
    let (base, ranges, dir) = serve().await;
    let client = Client::new(&base, Some("t".into())).unwrap();
    let repo = RepoName::parse("x").unwrap();
    let wasm = module();
    client
        .push_wasm(&repo, &Tag::parse("v1").unwrap(), wasm.clone().into())
        .await
        .unwrap();
    let desc = WasmArtifact::new(&wasm).unwrap().layer;
    let dest = dir.path().join("m.wasm");
    std::fs::write(partial_path(&dest), &wasm[..123_456]).unwrap();
    client.pull_blob(&repo, &desc, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), wasm);
    assert_eq!(*ranges.lock().unwrap(), vec!["bytes=123456-".to_owned()]);

    // A partial file with wrong bytes: the digest check catches it and
    // the next pull starts clean.
    let dest = dir.path().join("n.wasm");
    let mut wrong = wasm[..1000].to_vec();
    wrong[10] ^= 1;
    std::fs::write(partial_path(&dest), &wrong).unwrap();
    let err = client.pull_blob(&repo, &desc, &dest).await.unwrap_err();
    assert!(matches!(err, ClientError::Digest { .. }), "{err}");
    assert!(!dest.exists() && !partial_path(&dest).exists());
    client.pull_blob(&repo, &desc, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), wasm);
}

#[tokio::test]
async fn a_blob_longer_than_declared_is_refused() {
    let (base, _, dir) = serve().await;
    let client = Client::new(&base, Some("t".into())).unwrap();
    let repo = RepoName::parse("x").unwrap();
    let wasm = module();
    client.push_blob(&repo, wasm.clone().into()).await.unwrap();
    let desc = Descriptor {
        size: 1000,
        ..WasmArtifact::new(&wasm).unwrap().layer
    };
    let dest = dir.path().join("m.wasm");
    let err = client.pull_blob(&repo, &desc, &dest).await.unwrap_err();
    assert!(
        matches!(err, ClientError::TooLong { size: 1000, .. }),
        "{err}"
    );
    assert!(!dest.exists());
    assert!(std::fs::metadata(partial_path(&dest)).unwrap().len() <= 1000);
}

/// Records what a client reports.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Progress for Recorder {
    fn start(&self, digest: &Digest, total: u64, done: u64) {
        let short = &digest.hex()[..8];
        self.0
            .lock()
            .unwrap()
            .push(format!("start {short} {total} {done}"));
    }
    fn advance(&self, bytes: u64) {
        let mut events = self.0.lock().unwrap();
        match events.last_mut() {
            Some(last) if last.starts_with("moved ") => {
                let n: u64 = last["moved ".len()..].parse().unwrap();
                *last = format!("moved {}", n + bytes);
            }
            _ => events.push(format!("moved {bytes}")),
        }
    }
    fn finish(&self) {
        self.0.lock().unwrap().push("finish".to_owned());
    }
}

#[tokio::test]
async fn a_file_is_pushed_from_disk_and_every_transfer_reports_progress() {
    let (base, ranges, dir) = serve().await;
    let recorder = Arc::new(Recorder::default());
    let client = Client::new(&base, Some("t".into()))
        .unwrap()
        .with_progress(recorder.clone());
    let repo = RepoName::parse("kelp/big").unwrap();
    let wasm: Vec<u8> = (0..1_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let file = dir.path().join("big.wasm");
    std::fs::write(&file, &wasm).unwrap();
    let (manifest_digest, size) = client
        .push_wasm_file(&repo, &Tag::parse("v1").unwrap(), &file)
        .await
        .unwrap();
    assert_eq!(size, wasm.len() as u64);
    // The same manifest as pushing the bytes from memory.
    assert_eq!(
        manifest_digest,
        WasmArtifact::new(&wasm).unwrap().manifest_digest
    );
    let layer = &digest_of(&wasm).hex()[..8];
    let events = std::mem::take(&mut *recorder.0.lock().unwrap());
    assert_eq!(
        events[..3],
        [
            format!("start {layer} 1000000 0"),
            "moved 1000000".to_owned(),
            "finish".to_owned(),
        ]
    );

    // A resumed pull starts from what the partial file holds.
    let desc = WasmArtifact::new(&wasm).unwrap().layer;
    let dest = dir.path().join("pulled.wasm");
    std::fs::write(partial_path(&dest), &wasm[..400_000]).unwrap();
    client.pull_blob(&repo, &desc, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), wasm);
    assert_eq!(*ranges.lock().unwrap(), ["bytes=400000-"]);
    let events = std::mem::take(&mut *recorder.0.lock().unwrap());
    assert_eq!(
        events,
        [
            format!("start {layer} 1000000 400000"),
            "moved 600000".to_owned(),
            "finish".to_owned(),
        ]
    );
}
