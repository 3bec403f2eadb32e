//! The registry's figures, each beside a baseline measured in the same run:
//!
//! - push of a 20 MiB blob from a file, and pull of it back to a file, beside
//!   copying the same bytes on the same disk (`std::fs::copy` + fsync);
//! - 100 concurrent pulls of a 1 MiB artifact, beside 100 copies of 1 MiB;
//! - signing and verifying a 5 MiB module, beside its sha256.
//!
//! The registry is `kelp-cloud`'s own HTTP stack (body limit, timeout,
//! tracing layers, the store on disk) served in this process on loopback,
//! with a data directory in a temporary directory on the same disk as the
//! baselines. `cargo bench -p kelp-benches --bench registry` prints one
//! table.

use std::path::Path;
use std::time::{Duration, Instant};

use kelp_registry::oci::WasmArtifact;
use kelp_registry::{Client, ManifestRef, RepoName, Tag};
use sha2::Digest as _;

mod common;
use common::percentile;

const MIB: usize = 1 << 20;
/// Runs of each single transfer; the median is reported.
const RUNS: usize = 7;
/// Rounds of the concurrent pull.
const ROUNDS: usize = 3;
const CONCURRENT: usize = 100;
const SIGN_RUNS: usize = 21;

struct Row {
    what: String,
    kelp: String,
    baseline: String,
    ratio: String,
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let executor = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (base, token) = executor.block_on(serve(&dir.path().join("cloud")));
    let client = Client::new(&base, Some(token)).unwrap();
    let mut rows = Vec::new();
    executor.block_on(async {
        push_and_pull(&client, dir.path(), &mut rows).await;
        concurrent_pulls(&client, dir.path(), &mut rows).await;
    });
    sign_and_verify(&mut rows);
    print_table(&rows);
}

/// `kelp-cloud`'s app on a free loopback port; returns its URL and token.
async fn serve(data: &Path) -> (String, String) {
    let data = kelp_cloud::DataDir::open(data).unwrap();
    let token = data.new_admin_token.clone().unwrap();
    let app = kelp_cloud::app(&data, kelp_registry::PullPolicy::Token).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), token)
}

/// Distinct bytes for each `seed`, so every push is a new blob.
fn bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_millis(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    }
}

/// MB/s (10^6 bytes a second) of `len` bytes moved in `d`.
fn rate(len: usize, d: Duration) -> f64 {
    len as f64 / d.as_secs_f64() / 1e6
}

fn ratio(kelp: Duration, baseline: Duration) -> String {
    format!(
        "{:.2}× the baseline's time",
        kelp.as_secs_f64() / baseline.as_secs_f64()
    )
}

/// `std::fs::copy` of `src` to `dest`, then fsync of `dest`: what storing
/// the bytes costs with no registry in the way.
fn copy_synced(src: &Path, dest: &Path) -> Duration {
    let _ = std::fs::remove_file(dest);
    let start = Instant::now();
    std::fs::copy(src, dest).unwrap();
    std::fs::File::open(dest).unwrap().sync_all().unwrap();
    start.elapsed()
}

async fn push_and_pull(client: &Client, dir: &Path, rows: &mut Vec<Row>) {
    let len = 20 * MIB;
    let repo = RepoName::parse("bench/big").unwrap();
    let src = dir.join("big-src");
    let mut push = Vec::new();
    let mut pushed = None;
    for run in 0..RUNS {
        std::fs::write(&src, bytes(len, run as u32)).unwrap();
        let start = Instant::now();
        let (digest, size) = client.push_blob_file(&repo, &src).await.unwrap();
        push.push(start.elapsed());
        pushed = Some(WasmArtifact::of_layer(digest, size).unwrap().layer);
    }
    let desc = pushed.unwrap();
    let mut copy: Vec<Duration> = (0..RUNS)
        .map(|_| copy_synced(&src, &dir.join("big-copy")))
        .collect();

    let dest = dir.join("big-pulled");
    let mut pull = Vec::new();
    for _ in 0..RUNS {
        let _ = std::fs::remove_file(&dest);
        let start = Instant::now();
        client.pull_blob(&repo, &desc, &dest).await.unwrap();
        pull.push(start.elapsed());
    }
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&src).unwrap());

    let (push, pull, copy) = (median(&mut push), median(&mut pull), median(&mut copy));
    let baseline = format!("copy + fsync: {} ({:.0} MB/s)", ms(copy), rate(len, copy));
    rows.push(Row {
        what: format!("push 20 MiB blob from a file (median of {RUNS})"),
        kelp: format!("{} ({:.0} MB/s)", ms(push), rate(len, push)),
        baseline: baseline.clone(),
        ratio: ratio(push, copy),
    });
    rows.push(Row {
        what: format!("pull 20 MiB blob to a file (median of {RUNS})"),
        kelp: format!("{} ({:.0} MB/s)", ms(pull), rate(len, pull)),
        baseline,
        ratio: ratio(pull, copy),
    });
}

async fn concurrent_pulls(client: &Client, dir: &Path, rows: &mut Vec<Row>) {
    let len = MIB;
    let wasm = bytes(len, 1_000);
    let repo = RepoName::parse("bench/small").unwrap();
    let manifest = client
        .push_wasm(&repo, &Tag::parse("v1").unwrap(), wasm.clone().into())
        .await
        .unwrap();
    let out = dir.join("pulls");
    std::fs::create_dir_all(&out).unwrap();

    let mut totals = Vec::new();
    let mut each = Vec::new();
    for round in 0..ROUNDS {
        let start = Instant::now();
        let tasks: Vec<_> = (0..CONCURRENT)
            .map(|i| {
                let (client, repo) = (client.clone(), repo.clone());
                let dest = out.join(format!("{round}-{i}.wasm"));
                tokio::spawn(async move {
                    let start = Instant::now();
                    client
                        .pull_wasm(&repo, &ManifestRef::Digest(manifest), &dest)
                        .await
                        .unwrap();
                    start.elapsed()
                })
            })
            .collect();
        for task in tasks {
            each.push(task.await.unwrap());
        }
        totals.push(start.elapsed());
    }
    each.sort();
    let total = median(&mut totals);
    let pulled = out.join(format!("0-{}.wasm", CONCURRENT - 1));
    assert_eq!(std::fs::read(&pulled).unwrap(), wasm);

    let src = dir.join("small-src");
    std::fs::write(&src, &wasm).unwrap();
    let mut copy_totals = Vec::new();
    let mut copies = Vec::new();
    for round in 0..ROUNDS {
        let start = Instant::now();
        for i in 0..CONCURRENT {
            copies.push(copy_synced(&src, &out.join(format!("copy-{round}-{i}"))));
        }
        copy_totals.push(start.elapsed());
    }
    copies.sort();
    let copy_total = median(&mut copy_totals);

    let all = len * CONCURRENT;
    // Total; median / p99 of each transfer; aggregate rate.
    let summary = |total: Duration, each: &[Duration]| {
        format!(
            "{}; {} / {}; {:.0} MB/s",
            ms(total),
            ms(percentile(each, 0.5)),
            ms(percentile(each, 0.99)),
            rate(all, total)
        )
    };
    rows.push(Row {
        what: format!(
            "{CONCURRENT} concurrent pulls of a 1 MiB artifact (median of {ROUNDS} rounds): total, per pull median / p99, aggregate"
        ),
        kelp: summary(total, &each),
        baseline: format!(
            "{CONCURRENT} copies + fsync, one after another: {}",
            summary(copy_total, &copies)
        ),
        ratio: ratio(total, copy_total),
    });
}

/// A valid core module of about `len` bytes: the header and one custom
/// section holding the rest.
fn module(len: usize) -> Vec<u8> {
    let name = b"bench";
    let payload = bytes(len - 16, 7);
    let mut content = vec![name.len() as u8];
    content.extend_from_slice(name);
    content.extend_from_slice(&payload);
    let mut out = b"\0asm\x01\0\0\0".to_vec();
    out.push(0);
    let mut n = content.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&content);
    out
}

fn sign_and_verify(rows: &mut Vec<Row>) {
    let len = 5 * MIB;
    let wasm = module(len);
    let key = kelp_core::SecretKey::generate().unwrap();
    let public = [key.public_key()];
    let timed = |f: &dyn Fn()| -> Duration {
        let mut times: Vec<Duration> = (0..SIGN_RUNS)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect();
        median(&mut times)
    };
    let signed = kelp_core::sign(&wasm, &key).unwrap();
    let sign = timed(&|| {
        std::hint::black_box(kelp_core::sign(&wasm, &key).unwrap());
    });
    let verify = timed(&|| {
        std::hint::black_box(kelp_core::verify(&signed, &public).unwrap());
    });
    let hash = timed(&|| {
        std::hint::black_box(sha2::Sha256::digest(&wasm));
    });
    let baseline = format!(
        "sha256 of 5 MiB: {} ({:.0} MB/s)",
        ms(hash),
        rate(len, hash)
    );
    rows.push(Row {
        what: format!("sign a 5 MiB module (median of {SIGN_RUNS})"),
        kelp: ms(sign),
        baseline: baseline.clone(),
        ratio: ratio(sign, hash),
    });
    rows.push(Row {
        what: format!("verify a 5 MiB module (median of {SIGN_RUNS})"),
        kelp: ms(verify),
        baseline,
        ratio: ratio(verify, hash),
    });
}

fn print_table(rows: &[Row]) {
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                r.what.clone(),
                r.kelp.clone(),
                r.baseline.clone(),
                r.ratio.clone(),
            ]
        })
        .collect();
    common::print_table(
        ["measurement", "kelp", "baseline (same run)", "ratio"],
        &cells,
    );
}
