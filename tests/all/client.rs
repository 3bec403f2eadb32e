//! `kelp-client` against a real `kelp-cloud serve`: the crate's example as
//! a user runs it, then the calls a tool makes most, and the errors it gets.

use std::time::Duration;

use kelp_client::api::{NewRelease, ServiceSpec};
use kelp_client::{Client, LogQuery, Pinned, Scope, StatusCode};
use serde_json::json;

use crate::fleet_cli::{post_logs, register};
use crate::registry::TestCloud;

#[path = "../../client/examples/fleet.rs"]
#[expect(
    dead_code,
    reason = "the example's `main` reads its environment; the test calls `tour`"
)]
mod example;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs the example's tour of `fleet`; what it printed.
fn tour(rt: &tokio::runtime::Runtime, client: &Client, fleet: &str) -> String {
    let mut out = Vec::new();
    rt.block_on(example::tour(client, fleet, &mut out)).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn the_example_tours_a_fleet_and_the_client_reads_what_it_did() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = TestCloud::start(&dir.path().join("cloud"), &[]);
    let rt = runtime();
    let client = Client::new(&cloud.url(""), cloud.token.clone()).unwrap();

    // A new fleet: created, empty, with the variable set.
    let first = tour(&rt, &client, "garden");
    let lines: Vec<&str> = first.lines().collect();
    assert!(lines[0].starts_with("created fleet garden"), "{first}");
    assert_eq!(
        &lines[1..],
        [
            "0 devices",
            "set GREETING=hello from kelp-client",
            "0 releases"
        ],
        "{first}"
    );
    let vars = rt
        .block_on(client.env(Scope::Fleet("garden"), None))
        .unwrap();
    assert_eq!(vars.len(), 1);
    assert_eq!(
        (vars[0].name.as_str(), vars[0].value.as_str()),
        ("GREETING", "hello from kelp-client")
    );

    // A device and a release later, the tour finds the fleet and shows them.
    let key = rt
        .block_on(client.rotate_provisioning_key("garden"))
        .unwrap()
        .provisioning_key;
    let device_key = register(&cloud, &key, "pump-1");
    let image = format!("{}/kelp/web@sha256:{}", cloud.addr, "ab".repeat(32));
    let spec: ServiceSpec = serde_json::from_value(json!({ "image": image })).unwrap();
    let release = NewRelease {
        version: "1.0".to_owned(),
        services: [("web".to_owned(), spec)].into(),
    };
    let created = rt
        .block_on(client.create_release("garden", &release))
        .unwrap();
    assert_eq!(
        (created.fleet.as_str(), created.version.as_str()),
        ("garden", "1.0")
    );
    let second = tour(&rt, &client, "garden");
    assert_eq!(
        second.lines().collect::<Vec<_>>(),
        [
            "fleet garden exists",
            "1 devices",
            "  pump-1 pump-1 (online)",
            "set GREETING=hello from kelp-client",
            "1 releases",
            "  1.0 [web]",
        ],
        "{second}"
    );

    // Devices: rename, tag, pin, as the cloud answers them.
    let renamed = rt
        .block_on(client.rename_device("pump-1", "Pump by the shed"))
        .unwrap();
    assert_eq!(renamed.name, "Pump by the shed");
    let tagged = rt
        .block_on(client.set_tag("pump-1", "site", "north"))
        .unwrap();
    assert_eq!(tagged.tags["site"], "north");
    let Pinned::Device(pinned) = rt
        .block_on(client.pin(Scope::Device("pump-1"), Some("1.0")))
        .unwrap()
    else {
        panic!("a device's pin answered with a fleet");
    };
    assert_eq!(pinned.pinned_release.as_deref(), Some("1.0"));
    rt.block_on(client.delete_tag("pump-1", "site")).unwrap();
    assert!(
        rt.block_on(client.device("pump-1"))
            .unwrap()
            .tags
            .is_empty()
    );

    // Hardware maps: set, read back, removed.
    let map = "[gpio.led]\nchip = \"gpiochip0\"\nline = 17\nmodes = [\"output\"]\n";
    rt.block_on(client.set_hardware_map(Scope::Fleet("garden"), map))
        .unwrap();
    assert_eq!(
        rt.block_on(client.hardware_map(Scope::Fleet("garden")))
            .unwrap()
            .as_deref(),
        Some(map)
    );
    rt.block_on(client.delete_hardware_map(Scope::Fleet("garden")))
        .unwrap();
    assert_eq!(
        rt.block_on(client.hardware_map(Scope::Fleet("garden")))
            .unwrap(),
        None
    );

    // Logs: read, then followed as new lines arrive.
    post_logs(
        &cloud,
        &device_key,
        json!([{ "time": 1_000, "service": "web", "line": "first" }]),
    );
    let logs = rt
        .block_on(client.logs("pump-1", &LogQuery::default()))
        .unwrap();
    assert_eq!(
        logs.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
        ["first"]
    );
    let mut follower = client
        .follow_logs("pump-1", None, logs[0].id)
        .interval(Duration::from_millis(50));
    let later = std::thread::scope(|s| {
        // The line comes while the follower waits.
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            post_logs(
                &cloud,
                &device_key,
                json!([{ "time": 2_000, "service": "web", "stream": "stderr", "line": "second" }]),
            );
        });
        rt.block_on(follower.next()).unwrap()
    });
    assert_eq!(
        later.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
        ["second"]
    );
    assert!(later[0].id > logs[0].id);

    // Tokens: a second one is made, listed and revoked; the last one left
    // cannot be.
    let made = rt.block_on(client.create_token("ci")).unwrap();
    let names: Vec<String> = rt
        .block_on(client.tokens())
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert!(names.contains(&"ci".to_owned()), "{names:?}");
    let ci = Client::new(&cloud.url(""), made.token).unwrap();
    assert_eq!(rt.block_on(ci.fleets()).unwrap().len(), 1);
    rt.block_on(client.revoke_token(&made.id)).unwrap();

    // Refusals carry the status and the cloud's own words.
    let err = rt.block_on(client.fleet("nope")).unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
    assert_eq!(err.message(), Some("no fleet named `nope`"));
    assert!(err.is_not_found());
    let err = rt.block_on(client.create_fleet("Bad_Name")).unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST));
    assert!(
        err.to_string().contains("(field `name`; 400 Bad Request)"),
        "{err}"
    );
    let err = rt.block_on(ci.fleets()).unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert!(err.to_string().contains("refused the API token"), "{err}");

    // The OpenAPI document is served to the client too.
    let doc = rt.block_on(client.openapi()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/fleets/{name}/releases"]["post"].is_object());
}
