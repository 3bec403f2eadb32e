//! The dashboard in a real browser: headless Chromium (Debian's package)
//! driven through `chromedriver`'s WebDriver API, against a real
//! `kelp-cloud` and a real `kelpd`. A person signs in, makes a fleet, sees
//! its device online, watches a log line arrive live, sets a variable and
//! sees the service restart with it, and pins a release. Screenshots of the
//! main pages, at desktop and at phone width, are saved to
//! `target/screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use kelp_tests::artifacts::{HELLO, IDLE};
use serde_json::{Value, json};

use crate::agent::{api, release, wait_for_cloud};
use crate::images::{Publisher, push};
use crate::kelpd::Device;
use crate::registry::TestCloud;
use crate::support::PATIENCE;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// WebDriver's key for an element reference in its answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// A phone's width in CSS pixels (an iPhone 12 to 15).
const PHONE_WIDTH: u32 = 390;
const DESKTOP_WIDTH: u32 = 1280;

fn greeting(name: &str) -> String {
    format!("Hello, {name}! Greetings from a WebAssembly component.")
}

/// Where screenshots go: `target/screenshots/`, under `CARGO_TARGET_DIR`
/// when it is set.
fn screenshot_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // target/<profile>/deps/<test binary>
            let exe = std::env::current_exe().unwrap();
            exe.ancestors().nth(3).unwrap().to_owned()
        }
    };
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One headless Chromium, driven by its own `chromedriver`.
struct Browser {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        for (path, what) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")] {
            assert!(
                Path::new(path).exists(),
                "{what} is missing at {path}: the dashboard's browser tests need Debian's \
                 Chromium and its WebDriver; install them with \
                 `apt-get install -y chromium chromium-driver` (.ci/run does)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        loop {
            let ready = rt.block_on(async {
                let res = http.get(format!("{base}/status")).send().await.ok()?;
                let body: Value = serde_json::from_slice(&res.bytes().await.ok()?).ok()?;
                body["value"]["ready"].as_bool()
            });
            if ready == Some(true) {
                break;
            }
            assert!(start.elapsed() < PATIENCE, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let answer: Value = rt.block_on(async {
            let res = http
                .post(format!("{base}/session"))
                .header("content-type", "application/json")
                .body(caps.to_string())
                .send()
                .await
                .unwrap();
            serde_json::from_slice(&res.bytes().await.unwrap()).unwrap()
        });
        let id = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver started no browser: {answer}"))
            .to_owned();
        Browser {
            rt,
            http,
            session: format!("{base}/session/{id}"),
            driver,
            _profile: profile,
        }
    }

    /// One WebDriver command; its `value`.
    fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.rt.block_on(async {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.session));
            if let Some(body) = &body {
                req = req
                    .header("content-type", "application/json")
                    .body(body.to_string());
            }
            let res = req.send().await.unwrap();
            let status = res.status();
            let answer: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
            assert!(
                status.is_success(),
                "WebDriver {method} {path} {body:?}: {status} {answer}"
            );
            answer["value"].clone()
        })
    }

    fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
    }

    fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn script(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    fn element(&self, css: &str) -> String {
        let found = self.cmd(
            reqwest::Method::POST,
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "no element `{css}` ({found}) on {}:\n{}",
                    self.url(),
                    self.text("body")
                )
            })
            .to_owned()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        );
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        );
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// The text of the first element `css` matches, or "" if none does
    /// (read in one step, as parts of a page are replaced while it is
    /// open).
    fn text(&self, css: &str) -> String {
        let text = self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({
                "script": "const e = document.querySelector(arguments[0]); \
                           return e ? e.innerText.trim() : ''",
                "args": [css],
            })),
        );
        text.as_str().unwrap_or_default().to_owned()
    }

    fn title(&self) -> String {
        self.cmd(reqwest::Method::GET, "/title", None)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until `ok` holds, reloading the page first each time when
    /// `reload`.
    fn wait_for(&self, what: &str, reload: bool, mut ok: impl FnMut(&Browser) -> bool) {
        let start = Instant::now();
        loop {
            if reload {
                self.cmd(reqwest::Method::POST, "/refresh", Some(json!({})));
            }
            if ok(self) {
                return;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "timed out waiting for {what}; the page at {} reads:\n{}",
                self.url(),
                self.text("main")
            );
            std::thread::sleep(Duration::from_millis(if reload { 500 } else { 100 }));
        }
    }

    /// Lays the page out `width` CSS pixels wide (a phone's, or a
    /// desktop's), as tall as it is, so a screenshot holds all of it.
    fn emulate(&self, width: u32, mobile: bool) {
        let metrics = |height: u64| {
            json!({ "cmd": "Emulation.setDeviceMetricsOverride", "params": {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile,
            }})
        };
        self.cmd(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(metrics(900)),
        );
        let height = self
            .script("return document.documentElement.scrollHeight")
            .as_u64()
            .unwrap()
            .max(600);
        self.cmd(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(metrics(height)),
        );
    }

    fn screenshot(&self, name: &str) {
        let png = self.cmd(reqwest::Method::GET, "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(screenshot_dir().join(format!("{name}.png")), bytes).unwrap();
    }

    /// Screenshots of the page as it is, at desktop and at phone width;
    /// at phone width nothing may stick out sideways (wide tables scroll
    /// inside their own box).
    fn screenshots(&self, name: &str) {
        self.emulate(DESKTOP_WIDTH, false);
        self.screenshot(name);
        self.emulate(PHONE_WIDTH, true);
        let wide = self
            .script("return document.documentElement.scrollWidth")
            .as_u64()
            .unwrap();
        assert!(
            wide <= u64::from(PHONE_WIDTH),
            "the {name} page is {wide} px wide on a {PHONE_WIDTH} px phone"
        );
        self.screenshot(&format!("{name}-phone"));
        self.emulate(DESKTOP_WIDTH, false);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.http.delete(&self.session).send());
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[test]
fn a_person_runs_a_fleet_from_the_dashboard() {
    let browser = Browser::start();
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let publisher = Publisher::new();
    let hello = push(
        &cloud,
        &publisher.sign(Path::new(HELLO), "hello.wasm"),
        "kelp/hello",
    );
    let idle = push(
        &cloud,
        &publisher.sign(Path::new(IDLE), "idle.wasm"),
        "kelp/idle",
    );

    // Signing in: a page asked for without a session goes to the form.
    browser.goto(&cloud.url("/"));
    assert!(browser.url().ends_with("/login"), "{}", browser.url());
    browser.type_into("#token", &cloud.token);
    browser.click("#sign-in");
    browser.wait_for("the fleets page", false, |b| {
        b.title().starts_with("Fleets")
    });

    // A fleet made on the page, with its provisioning key shown once.
    browser.type_into("#fleet-name", "garden");
    browser.click("#create-fleet");
    browser.wait_for("the new fleet's key", false, |b| {
        b.text("#new-key").starts_with("kelp_pk_")
    });
    let provisioning_key = browser.text("#new-key");

    // The fleet's page, open before it has a device.
    browser.goto(&cloud.url("/fleets/garden"));
    assert!(browser.text("#rollout").contains("No devices yet"));

    // A device joins with it and runs release 1.0.
    let config = format!(
        "cloud = \"http://{}\"\nprovisioning-key = {provisioning_key:?}\nfleet = \"garden\"\n\
         device-name = \"pump-1\"\ntrusted-keys = [{:?}]\nhardware = \"sim\"\n\
         health-window = \"2s\"\n",
        cloud.addr,
        publisher.public()
    );
    let device = Device::start_in_fleet(&config);
    let services = |name: &str| {
        json!({
            "hello": {
                "image": hello, "restart": "never", "env": { "NAME": name },
                "signer": publisher.key_id,
            },
            "idle": { "image": idle },
        })
    };
    release(&cloud, "1.0", services("v1"));
    device.wait_until("v1 to run", |d| d.lines_of("hello", &greeting("v1")) == 1);

    // The open page shows it online, on its target, without a reload: its
    // status parts refresh by themselves.
    browser.wait_for("the device online on 1.0", false, |b| {
        let row = b.text("#devices tbody tr");
        row.contains("pump-1") && row.contains("online") && b.text("#devices td.current") == "1.0"
    });
    let uuid = browser
        .script("return document.querySelector('#devices tbody tr').dataset.uuid")
        .as_str()
        .unwrap()
        .to_owned();
    browser.goto(&cloud.url("/"));
    browser.wait_for("the fleet listed", false, |b| {
        b.text("#fleets").contains("garden")
    });
    browser.screenshots("fleets");
    browser.goto(&cloud.url("/fleets/garden"));
    browser.screenshots("fleet");

    // The device page streams a line printed after it opened: the page
    // is not reloaded (the mark set on it stays).
    browser.click(&format!("a[href='/devices/{uuid}']"));
    browser.wait_for("the device page", false, |b| {
        b.text("h1").contains("pump-1")
    });
    browser.wait_for("the live log to connect", false, |b| {
        b.text("#log-status") == "live"
    });
    browser.script("window.kelpNotReloaded = true; return null");
    let (status, answer) = api(
        &cloud,
        reqwest::Method::PUT,
        "/api/v1/fleets/garden/env/NAME?service=hello",
        Some(json!({ "value": "live" })),
    );
    assert_eq!(status, 200, "{answer}");
    browser.wait_for("the line to arrive live", false, |b| {
        b.text("#log-lines").contains(&greeting("live"))
    });
    assert_eq!(
        browser.script("return window.kelpNotReloaded === true"),
        true,
        "the page was reloaded"
    );

    // Paused, new lines wait; filtered, other services' lines hide.
    browser.click("#log-pause");
    assert_eq!(browser.text("#log-pause"), "Resume");
    let shown_lines = |b: &Browser| {
        b.script(
            "return [...document.querySelectorAll('#log-lines li')]\
             .filter(li => !li.hidden).map(li => li.dataset.service)",
        )
    };
    browser.click("#log-filter option[value='idle']");
    let idle_only = shown_lines(&browser);
    assert!(
        idle_only.as_array().unwrap().iter().all(|s| s == "idle"),
        "{idle_only}"
    );
    browser.click("#log-filter option[value='']");
    browser.click("#log-pause");

    // A variable set on the page restarts the service with it.
    browser.type_into("#var-name", "NAME");
    browser.type_into("#var-value", "garden");
    browser.click("#var-service option[value='hello']");
    browser.click("#set-var");
    browser.wait_for("the variable listed", false, |b| {
        b.text("#variables table").contains("garden")
    });
    device.wait_until("hello to restart with it", |d| {
        d.lines_of("hello", &greeting("garden")) == 1
    });
    browser.wait_for("its greeting in the page's log", false, |b| {
        b.text("#log-lines").contains(&greeting("garden"))
    });

    // A service restarted from the page starts again on the device, and
    // says so in the page's log.
    let ready_lines = |b: &Browser| {
        b.script(
            "return [...document.querySelectorAll('#log-lines li .text')]\
             .filter(t => t.textContent === 'idle: ready').length",
        )
        .as_u64()
        .unwrap()
    };
    assert_eq!(ready_lines(&browser), 1);
    browser.click("#restart-idle");
    device.wait_until("idle to restart", |d| {
        d.lines_of("idle", "idle: ready") == 2
    });
    browser.wait_for("the restart in the page's log", false, |b| {
        ready_lines(b) == 2
    });
    browser.screenshots("device");

    // Release 2.0 reaches the device; pinning the fleet to 1.0 on its page
    // takes it back.
    release(&cloud, "2.0", services("v2"));
    wait_for_cloud(&cloud, &uuid, "2.0 to run", |d| {
        d["current_release"] == "2.0"
    });
    browser.goto(&cloud.url("/fleets/garden"));
    browser.click("#fleet-pin option[value='1.0']");
    browser.click("#pin-fleet-button");
    browser.wait_for("the pin shown", false, |b| {
        b.text("main").contains("(pinned to 1.0)")
    });
    browser.wait_for("the device back on 1.0", false, |b| {
        b.text("#devices td.current") == "1.0"
    });
    wait_for_cloud(&cloud, &uuid, "1.0 to run", |d| {
        d["current_release"] == "1.0"
    });

    // The release page names what it runs and who signed it.
    browser.click("a[href='/fleets/garden/releases/1.0']");
    browser.wait_for("the release page", false, |b| {
        b.text("h1").starts_with("Release 1.0")
    });
    let digest = hello.split_once('@').unwrap().1;
    let page = browser.text("main");
    assert!(page.contains(digest), "{page}");
    assert!(page.contains(&publisher.key_id), "{page}");
    browser.screenshots("release");

    // Signing out ends the session: pages ask to sign in again.
    browser.click("#sign-out");
    browser.wait_for("the sign-in page", false, |b| b.url().ends_with("/login"));
    browser.goto(&cloud.url("/fleets/garden"));
    assert!(browser.url().ends_with("/login"), "{}", browser.url());
}
