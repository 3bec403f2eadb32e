//! The `kelp` fleet commands as a user runs them: `kelp login` against a real
//! `kelp-cloud serve`, then fleets, releases made by `kelp push --fleet`,
//! variables, devices (registered through the device API) and their logs,
//! with a config directory of the test's own.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kelp_tests::artifacts::HELLO;
use kelp_tests::binary;
use serde_json::{Value, json};

use crate::images::Publisher;
use crate::registry::{TestCloud, text};

/// The `hello` sample's kelp.toml: its service name, restart policy and
/// memory go into the release `kelp push --fleet` makes.
const HELLO_MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../sample-modules/hello/kelp.toml"
);

/// A user of `kelp`: a home and config directory of their own, and the
/// secrets that must never appear in what `kelp` prints.
pub(crate) struct User {
    home: tempfile::TempDir,
    secrets: Vec<String>,
}

impl User {
    pub(crate) fn new(cloud: &TestCloud) -> User {
        User {
            home: tempfile::tempdir().unwrap(),
            secrets: vec![cloud.token.clone()],
        }
    }

    fn config_dir(&self) -> PathBuf {
        self.home.path().join("config")
    }

    fn config_file(&self) -> PathBuf {
        self.config_dir().join("kelp").join("config.toml")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary("kelp"));
        cmd.args(args)
            .env("HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.config_dir())
            .env_remove("KELP_URL")
            .env_remove("KELP_TOKEN")
            .env_remove("KELP_KEY")
            .env_remove("KELP_LOG");
        cmd
    }

    /// Runs `kelp args`, checking that it printed no secret.
    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        for secret in &self.secrets {
            assert!(
                !text(&out.stdout).contains(secret.as_str())
                    && !text(&out.stderr).contains(secret.as_str()),
                "`kelp {}` printed a secret:\n{}{}",
                args.join(" "),
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        out
    }

    /// `kelp args`, which must succeed; its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run_with(args, &[]);
        assert!(
            out.status.success(),
            "`kelp {}` failed: {}",
            args.join(" "),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `kelp args --output json`, parsed.
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// `kelp args`, which must fail as the CLI fails: exit code 1 and one
    /// line `error: …` that contains `needle`. The error line.
    fn fails(&self, args: &[&str], needle: &str) -> String {
        self.fails_with(args, &[], needle)
    }

    fn fails_with(&self, args: &[&str], env: &[(&str, &str)], needle: &str) -> String {
        let out = self.run_with(args, env);
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "`kelp {}`: {stderr}",
            args.join(" ")
        );
        assert!(
            stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1,
            "not one `error:` line: {stderr:?}"
        );
        assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
        stderr
    }

    fn login(&self, cloud: &TestCloud) {
        let out = self.ok(&["login", &cloud.url(""), "--token", &cloud.token]);
        assert!(out.contains("logged in"), "{out}");
    }
}

/// One request to the cloud with `token` (an API token, a provisioning key
/// or a device key); the status and the JSON answer.
pub(crate) fn api(
    cloud: &TestCloud,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new()
            .request(method, cloud.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let bytes = res.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    })
}

/// Creates fleet `name` with `kelp fleet create`; its provisioning key.
fn create_fleet(user: &User, name: &str) -> String {
    let out = user.ok(&["fleet", "create", name]);
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("provisioning key: "))
        .unwrap_or_else(|| panic!("no provisioning key in {out}"))
        .to_owned();
    assert!(key.starts_with("kelp_pk_"), "{out}");
    key
}

/// Registers device `uuid` with a provisioning key; its device key.
pub(crate) fn register(cloud: &TestCloud, provisioning_key: &str, uuid: &str) -> String {
    let (status, answer) = api(
        cloud,
        provisioning_key,
        reqwest::Method::POST,
        "/device/v1/register",
        Some(json!({ "uuid": uuid, "arch": "aarch64", "agent_version": "0.1.0" })),
    );
    assert_eq!(status, 201, "{answer}");
    answer["device_key"].as_str().unwrap().to_owned()
}

/// Creates a release of fleet `fleet` through the API, with one service
/// whose image is a made-up digest.
fn api_release(cloud: &TestCloud, fleet: &str, version: &str) {
    let image = format!("{}/kelp/web@sha256:{}", cloud.addr, "ab".repeat(32));
    let (status, answer) = api(
        cloud,
        &cloud.token,
        reqwest::Method::POST,
        &format!("/api/v1/fleets/{fleet}/releases"),
        Some(json!({ "version": version, "services": { "web": { "image": image } } })),
    );
    assert_eq!(status, 201, "{answer}");
}

pub(crate) fn post_logs(cloud: &TestCloud, device_key: &str, lines: Value) {
    let (status, answer) = api(
        cloud,
        device_key,
        reqwest::Method::POST,
        "/device/v1/logs",
        Some(json!({ "lines": lines })),
    );
    assert_eq!(status, 204, "{answer}");
}

fn names(list: &Value, field: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| v[field].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn login_keeps_a_token_the_cloud_accepted_readable_by_its_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let user = User::new(&cloud);

    // Before a login, every fleet command says how to log in.
    for args in [
        &["fleet", "list"][..],
        &["device", "list"],
        &["logs", "pump-1"],
        &["env", "list", "--fleet", "garden"],
    ] {
        user.fails(args, "run `kelp login");
    }

    // A token the cloud refuses is not stored.
    let wrong = "0".repeat(64);
    let refused = user.fails(
        &["login", &cloud.url(""), "--token", &wrong],
        "refused the API token",
    );
    assert!(!refused.contains(&wrong), "{refused}");
    user.fails(
        &["login", "not a url", "--token", &cloud.token],
        "`not a url` is not a URL",
    );
    user.fails(
        &["login", "ftp://127.0.0.1/", "--token", &cloud.token],
        "not an http:// or https:// URL",
    );
    // Nothing listens on port 1.
    user.fails(
        &["login", "http://127.0.0.1:1", "--token", &cloud.token],
        "cannot reach the Kelp cloud at http://127.0.0.1:1/",
    );
    assert!(!user.config_file().exists());

    user.login(&cloud);
    let mode = std::fs::metadata(user.config_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let stored = std::fs::read_to_string(user.config_file()).unwrap();
    assert!(
        stored.contains(&format!("url = \"{}\"", cloud.url("")))
            && stored.contains(&format!("token = \"{}\"", cloud.token)),
        "{stored}"
    );
    // No temporary file is left beside it.
    let files = std::fs::read_dir(user.config_file().parent().unwrap())
        .unwrap()
        .count();
    assert_eq!(files, 1);
    assert_eq!(user.json(&["fleet", "list"]), json!([]));

    // KELP_URL and KELP_TOKEN win over the stored login.
    user.fails_with(
        &["fleet", "list"],
        &[("KELP_TOKEN", &wrong)],
        "refused the API token",
    );
    user.fails_with(
        &["fleet", "list"],
        &[("KELP_URL", "http://127.0.0.1:1")],
        "cannot reach",
    );

    // A token revoked after the login is refused, with what to do.
    let (status, made) = api(
        &cloud,
        &cloud.token,
        reqwest::Method::POST,
        "/api/v1/tokens",
        Some(json!({ "name": "laptop" })),
    );
    assert_eq!(status, 201, "{made}");
    let laptop = made["token"].as_str().unwrap().to_owned();
    let mut user = user;
    user.secrets.push(laptop.clone());
    user.ok(&["login", &cloud.url(""), "--token", &laptop]);
    user.ok(&["fleet", "list"]);
    let (status, _) = api(
        &cloud,
        &cloud.token,
        reqwest::Method::DELETE,
        &format!("/api/v1/tokens/{}", made["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(status, 204);
    user.fails(&["fleet", "list"], "refused the API token");

    let out = user.ok(&["logout"]);
    assert!(out.contains("logged out"), "{out}");
    assert!(!user.config_file().exists());
    user.fails(&["fleet", "list"], "run `kelp login");
    assert!(user.ok(&["logout"]).contains("not logged in"));
}

#[test]
fn fleets_are_created_once_listed_shown_and_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let mut user = User::new(&cloud);
    user.login(&cloud);

    let out = user.ok(&["fleet", "create", "garden"]);
    assert!(out.contains("shown this once"), "{out}");
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("provisioning key: "))
        .unwrap()
        .to_owned();
    // The key it printed registers devices into that fleet.
    user.secrets.push(key.clone());
    register(&cloud, &key, "pump-1");
    create_fleet(&user, "orchard");

    let table = user.ok(&["fleet", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("NAME "), "{table}");
    assert!(lines[1].starts_with("garden "), "{table}");
    assert!(lines[2].starts_with("orchard "), "{table}");
    // Columns line up: every row's second column starts where its header's does.
    let at = lines[0].find("LATEST").unwrap();
    assert!(lines.iter().all(|l| l[at - 2..at] == *"  "), "{table}");

    let fleets = user.json(&["fleet", "list"]);
    assert_eq!(names(&fleets, "name"), ["garden", "orchard"]);
    assert_eq!(fleets[0]["pinned_release"], Value::Null);
    // The key is shown once: no listing shows it again.
    assert!(!fleets.to_string().contains("kelp_pk_"));

    user.fails(&["fleet", "create", "garden"], "already exists");
    user.fails(&["fleet", "create", "Bad_Name"], "field `name`");
    user.fails(&["fleet", "show", "nope"], "no fleet named `nope`");
    user.fails(&["release", "list", "nope"], "no fleet named `nope`");

    api_release(&cloud, "garden", "1.0");
    api_release(&cloud, "garden", "1.1");
    let shown = user.ok(&["fleet", "show", "garden"]);
    assert!(shown.contains("latest release: 1.1"), "{shown}");
    assert!(
        user.ok(&["fleet", "pin", "garden", "1.0"])
            .contains("pinned to release 1.0")
    );
    let garden = user.json(&["fleet", "show", "garden"]);
    assert_eq!(garden["pinned_release"], "1.0");
    assert_eq!(garden["latest_release"], "1.1");
    user.fails(&["fleet", "pin", "garden", "9.9"], "no release `9.9`");
    assert!(
        user.ok(&["fleet", "pin", "garden", "--latest"])
            .contains("tracks its latest")
    );
    assert_eq!(
        user.json(&["fleet", "show", "garden"])["pinned_release"],
        Value::Null
    );
}

#[test]
fn push_to_a_fleet_makes_a_release_of_the_signed_service() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let user = User::new(&cloud);
    user.fails(
        &[
            "push",
            HELLO,
            "--manifest",
            HELLO_MANIFEST,
            "--to",
            &format!("{}/kelp/hello:v1", cloud.addr),
            "--fleet",
            "garden",
        ],
        "run `kelp login",
    );
    user.login(&cloud);
    create_fleet(&user, "garden");
    let publisher = Publisher::new();
    let key = publisher.secret();
    let key = key.to_str().unwrap();

    // No --token: the login's token opens the cloud's own registry.
    let to = format!("{}/kelp/hello:v1", cloud.addr);
    let out = user.ok(&[
        "push",
        HELLO,
        "--manifest",
        HELLO_MANIFEST,
        "--to",
        &to,
        "--key",
        key,
        "--fleet",
        "garden",
    ]);
    let digest = out
        .lines()
        .find_map(|l| l.strip_prefix("pushed ").and_then(|l| l.rsplit_once('@')))
        .map(|(_, d)| d.to_owned())
        .unwrap_or_else(|| panic!("no digest in {out}"));
    let image = format!("{}/kelp/hello@{digest}", cloud.addr);
    assert!(
        out.contains(&format!(
            "created release v1 of fleet garden: service hello runs {image}"
        )),
        "{out}"
    );

    let releases = user.json(&["release", "list", "garden"]);
    assert_eq!(names(&releases, "version"), ["v1"]);
    let hello = &releases[0]["services"]["hello"];
    assert_eq!(hello["image"], image.as_str());
    // From kelp.toml: restart = "never", memory = "16MiB".
    assert_eq!(hello["restart"], "never");
    assert_eq!(hello["memory"], 16 << 20);
    assert_eq!(hello["signer"], publisher.key_id.as_str());
    let table = user.ok(&["release", "list", "garden"]);
    assert!(table.lines().nth(1).unwrap().starts_with("v1 "), "{table}");
    let shown = user.ok(&["release", "show", "garden", "v1"]);
    assert!(shown.contains(&image), "{shown}");
    assert!(shown.contains(&publisher.key_id), "{shown}");
    assert_eq!(
        user.json(&["release", "show", "garden", "v1"])["services"]["hello"]["image"],
        image.as_str()
    );

    // What the release names is what was pushed.
    let pulled = dir.path().join("pulled.wasm");
    let out = user.run_with(
        &["pull", &image, "-o", pulled.to_str().unwrap()],
        &[("KELP_TOKEN", &cloud.token)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let signed = std::fs::read(&pulled).unwrap();
    assert!(kelp_core::extract(&signed).unwrap().unwrap().name == "hello");

    // --version names the release; the same version twice is refused.
    let v2 = format!("{}/kelp/hello:v2", cloud.addr);
    let push = |to: &str, extra: &[&str]| {
        let mut args = vec![
            "push",
            HELLO,
            "--manifest",
            HELLO_MANIFEST,
            "--to",
            to,
            "--key",
            key,
        ];
        args.extend(extra);
        args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()
    };
    let args = push(&v2, &["--fleet", "garden", "--version", "1.0.1"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(user.ok(&args).contains("created release 1.0.1"));
    user.fails(
        &args,
        "already has a release `1.0.1`; name another with --version",
    );
    assert_eq!(
        names(&user.json(&["release", "list", "garden"]), "version"),
        ["v1", "1.0.1"]
    );
    let args = push(&v2, &["--fleet", "nope"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    user.fails(&args, "no fleet named `nope`");
    // A file that carries no manifest names no service.
    user.fails(
        &["push", HELLO, "--to", &v2, "--fleet", "garden"],
        "carries no manifest",
    );
}

#[test]
fn variables_are_set_listed_and_unset_at_every_scope() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let user = User::new(&cloud);
    user.login(&cloud);
    let key = create_fleet(&user, "garden");
    register(&cloud, &key, "pump-1");

    let scopes: [&[&str]; 4] = [
        &["--fleet", "garden"],
        &["--fleet", "garden", "--service", "web"],
        &["--device", "pump-1"],
        &["--device", "pump-1", "--service", "web"],
    ];
    for (i, scope) in scopes.iter().enumerate() {
        let value = format!("LEVEL=scope {i}");
        let mut args = vec!["env", "set", &value, "ONLY=x"];
        args.extend(*scope);
        user.ok(&args);
    }
    for (i, scope) in scopes.iter().enumerate() {
        let mut args = vec!["env", "list"];
        args.extend(*scope);
        assert_eq!(
            user.json(&args),
            json!([{ "name": "LEVEL", "value": format!("scope {i}") }, { "name": "ONLY", "value": "x" }]),
            "{scope:?}"
        );
    }
    let table = user.ok(&["env", "list", "--device", "pump-1", "--service", "web"]);
    assert_eq!(
        table.lines().collect::<Vec<_>>(),
        ["NAME   VALUE", "LEVEL  scope 3", "ONLY   x"]
    );

    // Unsetting at one scope leaves the others.
    user.ok(&[
        "env",
        "unset",
        "ONLY",
        "LEVEL",
        "--fleet",
        "garden",
        "--service",
        "web",
    ]);
    assert_eq!(
        user.json(&["env", "list", "--fleet", "garden", "--service", "web"]),
        json!([])
    );
    assert_eq!(
        names(&user.json(&["env", "list", "--fleet", "garden"]), "name"),
        ["LEVEL", "ONLY"]
    );
    user.fails(
        &[
            "env",
            "unset",
            "ONLY",
            "--fleet",
            "garden",
            "--service",
            "web",
        ],
        "no variable `ONLY`",
    );
    user.fails(
        &["env", "set", "NOEQUALS", "--fleet", "garden"],
        "not KEY=VALUE",
    );
    user.fails(&["env", "set", "1X=y", "--fleet", "garden"], "field `key`");
    user.fails(&["env", "list", "--fleet", "nope"], "no fleet named `nope`");
    user.fails(
        &["env", "list", "--device", "nobody"],
        "no device with uuid `nobody`",
    );
}

#[test]
fn devices_are_listed_across_pages_shown_pinned_and_renamed() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let user = User::new(&cloud);
    user.login(&cloud);
    let garden = create_fleet(&user, "garden");
    let orchard = create_fleet(&user, "orchard");
    for uuid in ["pump-1", "pump-2", "pump-3"] {
        register(&cloud, &garden, uuid);
    }
    register(&cloud, &orchard, "apple-1");

    // Pages of two: the list follows them to the end.
    let all = user.json(&["device", "list", "--page-size", "2"]);
    assert_eq!(
        names(&all, "uuid"),
        ["apple-1", "pump-1", "pump-2", "pump-3"]
    );
    let garden_devices = user.json(&["device", "list", "--fleet", "garden", "--page-size", "1"]);
    assert_eq!(
        names(&garden_devices, "uuid"),
        ["pump-1", "pump-2", "pump-3"]
    );
    let table = user.ok(&["device", "list", "--fleet", "orchard"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("UUID "), "{table}");
    assert!(
        lines[1].starts_with("apple-1  apple-1  orchard  online"),
        "{table}"
    );
    assert_eq!(lines.len(), 2, "{table}");
    user.fails(
        &["device", "list", "--fleet", "nope"],
        "no fleet named `nope`",
    );

    let shown = user.ok(&["device", "show", "pump-2"]);
    assert!(shown.contains("fleet:           garden"), "{shown}");
    assert_eq!(user.json(&["device", "show", "pump-2"])["arch"], "aarch64");
    user.fails(
        &["device", "show", "nobody"],
        "no device with uuid `nobody`",
    );

    let out = user.ok(&["device", "rename", "pump-2", "Pump by the shed"]);
    assert!(out.contains("now named Pump by the shed"), "{out}");
    assert_eq!(
        user.json(&["device", "show", "pump-2"])["name"],
        "Pump by the shed"
    );
    user.fails(&["device", "rename", "pump-2", "tab\there"], "field `name`");
    user.fails(
        &["device", "rename", "pump-2", &"x".repeat(65)],
        "field `name`",
    );
    assert_eq!(
        user.json(&["device", "show", "pump-2"])["name"],
        "Pump by the shed"
    );

    api_release(&cloud, "garden", "1.0");
    api_release(&cloud, "garden", "2.0");
    assert!(
        user.ok(&["device", "pin", "pump-2", "1.0"])
            .contains("pinned to release 1.0")
    );
    let pinned = user.json(&["device", "show", "pump-2"]);
    assert_eq!(pinned["pinned_release"], "1.0");
    assert_eq!(pinned["target_release"], "1.0");
    assert_eq!(
        user.json(&["device", "show", "pump-1"])["target_release"],
        "2.0"
    );
    // A release of another fleet is not one to pin to.
    api_release(&cloud, "orchard", "3.0");
    user.fails(&["device", "pin", "pump-2", "3.0"], "no release `3.0`");
    let out = user.ok(&["device", "pin", "pump-2", "--fleet"]);
    assert!(out.contains("follows fleet garden (release 2.0)"), "{out}");
    let following = user.json(&["device", "show", "pump-2"]);
    assert_eq!(following["pinned_release"], Value::Null);
    assert_eq!(following["target_release"], "2.0");

    // Tags: several at once, shown, removed; a bad one sends none.
    user.ok(&["device", "tag", "pump-1", "site=North field", "rev=b"]);
    let shown = user.ok(&["device", "show", "pump-1"]);
    assert!(shown.contains("rev=b, site=North field"), "{shown}");
    user.fails(
        &["device", "tag", "pump-1", "rev=c", "nokey"],
        "`nokey` is not KEY=VALUE",
    );
    user.fails(&["device", "tag", "pump-1", "bad key=1"], "field `tag`");
    user.ok(&["device", "untag", "pump-1", "site"]);
    assert_eq!(
        user.json(&["device", "show", "pump-1"])["tags"],
        serde_json::json!({ "rev": "b" })
    );
    user.fails(&["device", "untag", "pump-1", "site"], "has no tag `site`");
}

#[test]
fn logs_print_the_newest_lines_and_follow_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let mut user = User::new(&cloud);
    user.login(&cloud);
    let key = create_fleet(&user, "garden");
    let device_key = register(&cloud, &key, "pump-1");
    user.secrets.push(device_key.clone());
    // 2025-11-26T04:06:40Z and a few milliseconds.
    post_logs(
        &cloud,
        &device_key,
        json!([
            { "time": 1_764_130_000_000_i64, "service": "web", "line": "starting" },
            { "time": 1_764_130_000_001_i64, "service": "db", "stream": "stderr", "line": "disk is slow" },
            { "time": 1_764_130_000_002_i64, "service": "web", "line": "listening" },
        ]),
    );

    let out = user.ok(&["logs", "pump-1"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "2025-11-26T04:06:40.000Z web starting",
            "2025-11-26T04:06:40.001Z db [stderr] disk is slow",
            "2025-11-26T04:06:40.002Z web listening",
        ]
    );
    let web = user.ok(&["logs", "pump-1", "--service", "web", "--lines", "1"]);
    assert_eq!(web, "2025-11-26T04:06:40.002Z web listening\n");
    let lines = user.json(&["logs", "pump-1", "--service", "db"]);
    assert_eq!(names(&lines, "line"), ["disk is slow"]);
    assert_eq!(lines[0]["stream"], "stderr");
    user.fails(&["logs", "nobody"], "no device with uuid `nobody`");
    user.fails(&["logs", "pump-1", "--lines", "5000"], "at most 1000");

    // --follow prints the newest line, then each new one as it arrives.
    let mut follower = user
        .command(&["logs", "pump-1", "--follow", "--lines", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no line from `kelp logs --follow`"))
    };
    assert_eq!(next(), "2025-11-26T04:06:40.002Z web listening");
    post_logs(
        &cloud,
        &device_key,
        json!([{ "time": 1_764_130_001_000_i64, "service": "web", "stream": "stderr", "line": "late news" }]),
    );
    assert_eq!(next(), "2025-11-26T04:06:41.000Z web [stderr] late news");
    post_logs(
        &cloud,
        &device_key,
        json!([{ "time": 1_764_130_002_000_i64, "service": "web", "line": "later still" }]),
    );
    assert_eq!(next(), "2025-11-26T04:06:42.000Z web later still");
    // Nothing is printed twice.
    assert!(rx.recv_timeout(Duration::from_millis(2500)).is_err());
    follower.kill().unwrap();
    follower.wait().unwrap();
    reader.join().unwrap();
}
