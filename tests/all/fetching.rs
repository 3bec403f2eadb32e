//! A device's downloads, against a real `kelp-cloud` and a registry that
//! crawls: a slow download never keeps a device from its newest target,
//! and the device's image store keeps only what it may still run.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kelp_tests::artifacts::{HELLO, IDLE};
use serde_json::json;

use crate::agent::{GREETING, create_fleet, release, wait_for_cloud};
use crate::images::{Publisher, push};
use crate::kelpd::Device;
use crate::registry::{TestCloud, sha256, wasm_manifest};

/// How the test registry sends a blob.
#[derive(Clone, Copy)]
enum Blob {
    /// One byte a second: the slow-retrieval attack.
    Crawl,
    /// This many bytes, then the connection closes (every time).
    CutAfter(usize),
}

/// A registry that answers manifests at once and sends blobs as [`Blob`]
/// says. It serves one image, `kelp/slow`.
struct CrawlingRegistry {
    addr: String,
    /// Blob requests it has begun to answer.
    blob_requests: Arc<AtomicUsize>,
}

impl CrawlingRegistry {
    fn serve(manifest: Vec<u8>, blob: Vec<u8>, how: Blob) -> CrawlingRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let blob_requests = Arc::new(AtomicUsize::new(0));
        let counter = blob_requests.clone();
        let (manifest, blob) = (Arc::new(manifest), Arc::new(blob));
        std::thread::spawn(move || {
            // Bounded: the test is over long before.
            let until = Instant::now() + Duration::from_secs(180);
            for stream in listener.incoming() {
                if Instant::now() > until {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (manifest, blob, counter) = (manifest.clone(), blob.clone(), counter.clone());
                std::thread::spawn(move || answer(stream, &manifest, &blob, how, &counter, until));
            }
        });
        CrawlingRegistry {
            addr,
            blob_requests,
        }
    }

    fn image(&self, manifest: &[u8]) -> String {
        format!("{}/kelp/slow@{}", self.addr, sha256(manifest))
    }
}

fn answer(
    stream: TcpStream,
    manifest: &[u8],
    blob: &[u8],
    how: Blob,
    blob_requests: &AtomicUsize,
    until: Instant,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        // Headers, up to the blank line; no request here has a body.
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
        if path.contains("/manifests/") {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\n\
                 docker-content-digest: {}\r\ncontent-length: {}\r\n\r\n",
                sha256(manifest),
                manifest.len()
            );
            if out.write_all(head.as_bytes()).is_err() || out.write_all(manifest).is_err() {
                return;
            }
        } else if path.contains("/blobs/") {
            blob_requests.fetch_add(1, Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
                blob.len()
            );
            if out.write_all(head.as_bytes()).is_err() {
                return;
            }
            match how {
                Blob::Crawl => {
                    for byte in blob {
                        if Instant::now() > until || out.write_all(&[*byte]).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
                Blob::CutAfter(n) => {
                    let _ = out.write_all(&blob[..n.min(blob.len())]);
                }
            }
            return;
        } else {
            let body = b"{}";
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            if out.write_all(head.as_bytes()).is_err() || out.write_all(body).is_err() {
                return;
            }
        }
    }
}

/// The files of the device's image store, by name.
fn store(device: &Device) -> Vec<String> {
    let dir: PathBuf = device.var().join("blobs/sha256");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A cloud with fleet `garden`, a publisher the devices trust, and the
/// `idle` sample pushed and released as 1.0: what every test here starts
/// from.
struct Garden {
    _dir: tempfile::TempDir,
    cloud: TestCloud,
    publisher: Publisher,
    provisioning_key: String,
    signed_idle: PathBuf,
    idle: String,
}

impl Garden {
    fn new() -> Garden {
        let dir = tempfile::tempdir().unwrap();
        let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
        let publisher = Publisher::new();
        let signed_idle = publisher.sign(Path::new(IDLE), "idle.wasm");
        let idle = push(&cloud, &signed_idle, "kelp/idle");
        let provisioning_key = create_fleet(&cloud, "garden");
        release(&cloud, "1.0", json!({ "idle": { "image": idle } }));
        Garden {
            _dir: dir,
            cloud,
            publisher,
            provisioning_key,
            signed_idle,
            idle,
        }
    }

    /// A device of the fleet pulling from `registries` (the cloud's own
    /// when empty), and its uuid, once the cloud shows it healthy on 1.0.
    fn device(&self, registries: &[&str]) -> (Device, String) {
        let mut config = format!(
            "cloud = \"http://{}\"\nprovisioning-key = {:?}\nfleet = \"garden\"\n\
             trusted-keys = [{:?}]\nhardware = \"sim\"\nhealth-window = \"1s\"\n",
            self.cloud.addr,
            self.provisioning_key,
            self.publisher.public()
        );
        if !registries.is_empty() {
            config.push_str(&format!("registries = {registries:?}\n"));
        }
        let device = Device::start_in_fleet(&config);
        let deadline = Instant::now() + Duration::from_secs(30);
        let uuid = loop {
            if let Ok(uuid) = std::fs::read_to_string(device.var().join("device/uuid")) {
                break uuid.trim().to_owned();
            }
            assert!(Instant::now() < deadline, "no uuid:\n{}", device.stderr());
            std::thread::sleep(Duration::from_millis(50));
        };
        wait_for_cloud(&self.cloud, &uuid, "release 1.0 healthy", |d| {
            d["update"]["release"] == "1.0" && d["update"]["state"] == "healthy"
        });
        (device, uuid)
    }
}

/// The modules whose compiled code is in the device's compile cache.
fn compiled(device: &Device) -> Vec<String> {
    let mut hexes = Vec::new();
    for dir in std::fs::read_dir(device.var().join("cache")).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if let Some(hex) = name.strip_suffix(".cwasm") {
                hexes.push(hex.to_owned());
            }
        }
    }
    hexes.sort();
    hexes
}

/// Waits until the device's image store holds exactly `want` (and, if
/// given, its compile cache exactly `compiled_only`); `after` says when, for
/// the failure message.
fn wait_for_store(device: &Device, want: &[String], compiled_only: Option<&str>, after: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let have = store(device);
        let cache = compiled(device);
        if have == want && compiled_only.is_none_or(|m| cache == [m]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{after}, the image store holds {have:?}, not just {want:?}; compile cache: {cache:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The store's file names for an image pushed to the cloud from `file`:
/// its manifest and its module (the file itself is the image's one layer).
fn blobs_of(image: &str, file: &Path) -> Vec<String> {
    let (_, manifest) = image.split_once('@').unwrap();
    let module = sha256(&std::fs::read(file).unwrap());
    let mut blobs = vec![
        manifest.trim_start_matches("sha256:").to_owned(),
        module.trim_start_matches("sha256:").to_owned(),
    ];
    blobs.sort();
    blobs
}

#[test]
fn a_crawling_download_gives_way_to_a_newer_target_and_leaves_nothing_behind() {
    let garden = Garden::new();
    let Garden {
        cloud,
        publisher,
        signed_idle,
        idle,
        ..
    } = &garden;
    let signed_hello = publisher.sign(Path::new(HELLO), "hello.wasm");
    let hello = push(cloud, &signed_hello, "kelp/hello");
    // A registry that sends modules a byte a second: 2.0's would take days.
    let module = std::fs::read(&signed_hello).unwrap();
    let manifest = wasm_manifest(&module);
    let crawling = CrawlingRegistry::serve(manifest.clone(), module, Blob::Crawl);
    let (device, uuid) = garden.device(&[&cloud.addr, &crawling.addr]);

    release(
        cloud,
        "2.0",
        json!({
            "idle": { "image": idle },
            "hello": { "image": crawling.image(&manifest), "restart": "never" },
        }),
    );
    let asked = Instant::now();
    while crawling.blob_requests.load(Ordering::SeqCst) == 0 {
        assert!(
            asked.elapsed() < Duration::from_secs(60),
            "the device never began to fetch 2.0's module:\n{}",
            device.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Give the crawl a few bytes' start.
    std::thread::sleep(Duration::from_secs(2));

    // 3.0 comes while 2.0's download crawls: the device takes it, now.
    let asked = Instant::now();
    release(
        cloud,
        "3.0",
        json!({
            "idle": { "image": idle },
            "hello": { "image": hello, "restart": "never" },
        }),
    );
    device.wait_until("release 3.0 to run", |d| d.lines_of("hello", GREETING) == 1);
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "release 3.0 took {:?} behind a crawling download",
        asked.elapsed()
    );
    wait_for_cloud(cloud, &uuid, "release 3.0 healthy", |d| {
        d["current_release"] == "3.0"
            && d["update"]["release"] == "3.0"
            && d["update"]["state"] == "healthy"
    });
    // What idle kept running through it all.
    assert_eq!(device.lines_of("idle", "idle: ready"), 1);

    // The store holds 3.0's images and nothing else: not 1.0's leftovers
    // (there are none: idle is in 3.0), not the half download of 2.0.
    let mut want = [blobs_of(idle, signed_idle), blobs_of(&hello, &signed_hello)].concat();
    want.sort();
    wait_for_store(&device, &want, None, "after 3.0");
}

/// Each release a new module: the store does not grow with the releases.
#[test]
fn the_image_store_holds_what_the_device_may_still_run() {
    let garden = Garden::new();
    let Garden {
        cloud, publisher, ..
    } = &garden;
    // The same program signed with different env defaults is a different
    // file, hence a different image.
    let mut images = Vec::new();
    for n in 0..4 {
        let manifest = publisher.dir().join(format!("kelp-{n}.toml"));
        std::fs::write(
            &manifest,
            format!(
                "name = \"idle\"\nversion = \"1.0.{n}\"\nkind = \"component\"\n[env]\nN = \"{n}\"\n"
            ),
        )
        .unwrap();
        let signed = publisher.sign_with(Path::new(IDLE), &manifest, &format!("idle-{n}.wasm"));
        images.push((push(cloud, &signed, "kelp/idle"), signed));
    }
    let (device, uuid) = garden.device(&[]);
    for (n, (image, file)) in images.iter().enumerate() {
        let version = (n + 1).to_string();
        release(cloud, &version, json!({ "idle": { "image": image } }));
        wait_for_cloud(cloud, &uuid, &format!("release {version} healthy"), |d| {
            d["update"]["release"] == version.as_str() && d["update"]["state"] == "healthy"
        });
        let want = blobs_of(image, file);
        let module = sha256(&std::fs::read(file).unwrap())
            .trim_start_matches("sha256:")
            .to_owned();
        wait_for_store(
            &device,
            &want,
            Some(&module),
            &format!("after release {version}"),
        );
    }
}

/// A download that never completes fails its release, and what it left is
/// not kept: the device will not try that release again.
#[test]
fn what_a_failed_release_fetched_is_removed_when_it_is_given_up() {
    let garden = Garden::new();
    let Garden {
        cloud,
        publisher,
        signed_idle,
        idle,
        ..
    } = &garden;
    // Half the module, and the connection closes: every time.
    let module = std::fs::read(publisher.sign(Path::new(HELLO), "hello.wasm")).unwrap();
    let manifest = wasm_manifest(&module);
    let cut = CrawlingRegistry::serve(
        manifest.clone(),
        module.clone(),
        Blob::CutAfter(module.len() / 2),
    );
    let (device, uuid) = garden.device(&[&cloud.addr, &cut.addr]);

    release(
        cloud,
        "2.0",
        json!({
            "idle": { "image": idle },
            "hello": { "image": cut.image(&manifest), "restart": "never" },
        }),
    );
    wait_for_cloud(cloud, &uuid, "2.0 rolled back", |d| {
        d["update"]["release"] == "2.0"
            && d["update"]["state"] == "rolled-back"
            && d["current_release"] == "1.0"
    });
    assert!(cut.blob_requests.load(Ordering::SeqCst) > 0);
    let want = blobs_of(idle, signed_idle);
    wait_for_store(&device, &want, None, "after 2.0 was given up on");
}

/// A device pulls only from the registries its config names (its cloud's
/// unless it says): a release naming another is refused before anything is
/// fetched, and the device stays on the release it runs.
#[test]
fn a_release_on_a_registry_the_device_does_not_pull_from_is_refused_untouched() {
    let garden = Garden::new();
    let Garden { cloud, idle, .. } = &garden;
    let (device, uuid) = garden.device(&[]);

    let elsewhere = crate::support::Watch::on("127.0.0.1:0");
    let host = format!("127.0.0.1:{}", elsewhere.port());
    let (_, digest) = idle.split_once('@').unwrap();
    release(
        cloud,
        "2.0",
        json!({ "idle": { "image": format!("{host}/kelp/idle@{digest}") } }),
    );
    wait_for_cloud(cloud, &uuid, "2.0 refused", |d| {
        d["update"]["release"] == "2.0"
            && d["update"]["state"] == "rolled-back"
            && d["current_release"] == "1.0"
            && d["update"]["reason"].as_str().is_some_and(|r| {
                r.contains(&format!("does not pull from registry `{host}`"))
                    && r.contains(&cloud.addr)
            })
    });
    assert_eq!(elsewhere.connections(), 0, "the device contacted {host}");
    assert_eq!(device.service_state("idle").as_deref(), Some("running"));
}
