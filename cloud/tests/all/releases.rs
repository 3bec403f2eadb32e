//! Releases, pins and variables as a device sees them in its target state.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode, header};
use serde_json::json;

use crate::{TestCloud, image, poll_state, send, spawn_poll};

#[tokio::test]
async fn a_device_sees_a_new_release_at_once_and_an_unchanged_target_as_304() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("garden").await;
        let key = cloud.device(&pk, "pump-1").await;

        // No release yet: an empty target.
        let empty = cloud.get("/device/v1/state", &key).await;
        assert_eq!(empty.status, StatusCode::OK);
        assert_eq!(empty.body, json!({ "release": null, "services": {} }));

        let release = cloud
            .release("garden", "1.0", json!({ "GREETING": "hi" }))
            .await;
        let state = cloud.get("/device/v1/state", &key).await;
        assert_eq!(state.status, StatusCode::OK);
        assert_eq!(state.body["release"]["version"], "1.0");
        assert_eq!(state.body["release"]["id"], release["id"]);
        let web = &state.body["services"]["web"];
        assert_eq!(web["image"], image("1.0"));
        assert_eq!(web["env"], json!({ "GREETING": "hi" }));
        assert_eq!(web["restart"], "always");
        assert_eq!(
            web["memory"],
            64 << 20,
            "the default memory limit, in bytes"
        );
        let etag = state.headers[header::ETAG].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.len() == 66, "{etag}");

        let same = poll_state(&cloud.app, &key, &etag, None).await;
        assert_eq!(same.status, StatusCode::NOT_MODIFIED);
        assert_eq!(same.headers[header::ETAG], etag.as_str());

        // A long poll waits while nothing changes…
        let started = Instant::now();
        let poll = spawn_poll(&cloud.app, &key, &etag, 30);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !poll.is_finished(),
            "the long poll answered before any change"
        );

        // …and wakes as soon as a release is created.
        cloud.release("garden", "2.0", json!({})).await;
        let woke = tokio::time::timeout(Duration::from_secs(10), poll)
            .await
            .expect("the long poll did not wake")
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(woke.status, StatusCode::OK);
        assert_eq!(woke.body["release"]["version"], "2.0");
        assert_ne!(woke.headers[header::ETAG], etag.as_str());
    }
}

#[tokio::test]
async fn a_long_poll_with_nothing_changing_ends_in_304_after_its_wait() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("quiet").await;
        let key = cloud.device(&pk, "d").await;
        let etag = cloud.etag(&key).await;
        let started = Instant::now();
        let r = poll_state(&cloud.app, &key, &etag, Some(1)).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        assert!(started.elapsed() >= Duration::from_millis(900));
        let bad = cloud.get("/device/v1/state?wait=soon", &key).await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.field(), "query");
    }
}

#[tokio::test]
async fn a_release_with_a_tag_or_a_bad_field_is_refused_naming_the_field() {
    for cloud in TestCloud::all().await {
        cloud.fleet("lab").await;
        let digest = image("x");
        let cases = [
            (
                json!({ "version": "1", "services": { "web": { "image": "registry.example.com/kelp/web:latest" } } }),
                "services.web.image",
            ),
            (
                json!({ "version": "1", "services": { "web": { "image": "not a reference" } } }),
                "services.web.image",
            ),
            (
                json!({ "version": "1", "services": { "Web!": { "image": digest } } }),
                "services.Web!",
            ),
            (
                json!({ "version": "1", "services": { "web": { "image": digest, "restart": "sometimes" } } }),
                "services.web.restart",
            ),
            (
                json!({ "version": "1", "services": { "web": { "image": digest, "env": { "1BAD": "x" } } } }),
                "services.web.env.1BAD",
            ),
            (
                json!({ "version": "1", "services": { "web": { "image": digest, "memory": "0B" } } }),
                "services.web.memory",
            ),
            (
                json!({ "version": "1", "services": { "web": { "image": digest, "update_strategy": "yolo" } } }),
                "services.web.update_strategy",
            ),
            (
                json!({ "version": "1", "services": { "web": { "image": digest, "grants": { "gpio": { "led": { "modes": [] } } } } } }),
                "services.web.grants.gpio.led.modes",
            ),
            (json!({ "version": "a b", "services": {} }), "version"),
            (json!({ "services": {} }), "version"),
        ];
        for (body, field) in cases {
            let r = cloud
                .post("/api/v1/fleets/lab/releases", &cloud.admin, body.clone())
                .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
            assert_eq!(r.field(), field, "{body}: {}", r.body);
        }
        let list = cloud.get("/api/v1/fleets/lab/releases", &cloud.admin).await;
        assert_eq!(list.body, json!([]), "no refused release was stored");

        // A version is taken once per fleet.
        cloud.release("lab", "1.0", json!({})).await;
        let again = cloud
            .post(
                "/api/v1/fleets/lab/releases",
                &cloud.admin,
                json!({ "version": "1.0", "services": {} }),
            )
            .await;
        assert_eq!(again.status, StatusCode::CONFLICT);
        let missing = cloud
            .post(
                "/api/v1/fleets/nowhere/releases",
                &cloud.admin,
                json!({ "version": "1.0", "services": {} }),
            )
            .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn a_pinned_fleet_stays_on_its_release_until_unpinned() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("farm").await;
        let key = cloud.device(&pk, "tractor").await;
        cloud.release("farm", "1.0", json!({})).await;
        let pin = cloud
            .put(
                "/api/v1/fleets/farm/pin",
                &cloud.admin,
                json!({ "release": "1.0" }),
            )
            .await;
        assert_eq!(pin.status, StatusCode::OK);
        assert_eq!(pin.body["pinned_release"], "1.0");
        cloud.release("farm", "2.0", json!({})).await;
        let state = cloud.get("/device/v1/state", &key).await;
        assert_eq!(state.body["release"]["version"], "1.0");
        let device = cloud.get("/api/v1/devices/tractor", &cloud.admin).await;
        assert_eq!(device.body["target_release"], "1.0");

        let unknown = cloud
            .put(
                "/api/v1/fleets/farm/pin",
                &cloud.admin,
                json!({ "release": "9.9" }),
            )
            .await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);

        cloud
            .put(
                "/api/v1/fleets/farm/pin",
                &cloud.admin,
                json!({ "release": null }),
            )
            .await;
        let state = cloud.get("/device/v1/state", &key).await;
        assert_eq!(state.body["release"]["version"], "2.0");
        let fleet = cloud.get("/api/v1/fleets/farm", &cloud.admin).await;
        assert_eq!(fleet.body["latest_release"], "2.0");
        assert_eq!(fleet.body["pinned_release"], json!(null));
    }
}

#[tokio::test]
async fn variables_apply_from_fleet_to_device_and_service() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("city").await;
        let key = cloud.device(&pk, "lamp").await;
        let other = cloud.device(&pk, "post").await;
        let r = cloud
            .post(
                "/api/v1/fleets/city/releases",
                &cloud.admin,
                json!({
                    "version": "1",
                    "services": {
                        "web": { "image": image("w"), "env": { "LEVEL": "release", "KEEP": "1" } },
                        "cron": { "image": image("c") }
                    }
                }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

        let set = |uri: &'static str, value: &'static str| {
            let cloud = &cloud;
            async move {
                let r = cloud
                    .put(uri, &cloud.admin, json!({ "value": value }))
                    .await;
                assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
            }
        };
        set("/api/v1/fleets/city/env/LEVEL", "fleet").await;
        set("/api/v1/fleets/city/env/LEVEL?service=web", "fleet+web").await;
        let env =
            |state: &serde_json::Value, service: &str| state["services"][service]["env"].clone();

        let s = cloud.get("/device/v1/state", &key).await.body;
        assert_eq!(env(&s, "web"), json!({ "LEVEL": "fleet+web", "KEEP": "1" }));
        assert_eq!(env(&s, "cron"), json!({ "LEVEL": "fleet" }));

        set("/api/v1/devices/lamp/env/LEVEL", "device").await;
        let s = cloud.get("/device/v1/state", &key).await.body;
        assert_eq!(env(&s, "web")["LEVEL"], "device");
        assert_eq!(env(&s, "cron")["LEVEL"], "device");

        set("/api/v1/devices/lamp/env/LEVEL?service=cron", "device+cron").await;
        let s = cloud.get("/device/v1/state", &key).await.body;
        assert_eq!(env(&s, "web")["LEVEL"], "device");
        assert_eq!(env(&s, "cron")["LEVEL"], "device+cron");

        // The other device sees only the fleet's variables.
        let s = cloud.get("/device/v1/state", &other).await.body;
        assert_eq!(env(&s, "web")["LEVEL"], "fleet+web");
        assert_eq!(env(&s, "cron")["LEVEL"], "fleet");

        let gone = cloud
            .delete("/api/v1/devices/lamp/env/LEVEL", &cloud.admin)
            .await;
        assert_eq!(gone.status, StatusCode::NO_CONTENT);
        let s = cloud.get("/device/v1/state", &key).await.body;
        assert_eq!(env(&s, "web")["LEVEL"], "fleet+web");

        let bad = cloud
            .put(
                "/api/v1/fleets/city/env/NOT-OK",
                &cloud.admin,
                json!({ "value": "x" }),
            )
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.field(), "key");
        let listed = cloud.get("/api/v1/fleets/city/env", &cloud.admin).await;
        assert_eq!(listed.body, json!([{ "name": "LEVEL", "value": "fleet" }]));
    }
}

#[tokio::test]
async fn a_second_server_on_the_same_database_serves_the_same_fleet() {
    for cloud in TestCloud::all().await {
        let other = cloud.restart().await;
        let pk = cloud.fleet("shared").await;
        let r = send(
            &other,
            Method::POST,
            "/device/v1/register",
            Some(&pk),
            Some(json!({ "uuid": "roamer", "arch": "x86_64", "agent_version": "1" })),
            &[],
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let key = r.body["device_key"].as_str().unwrap().to_owned();
        let etag = cloud.etag(&key).await;

        // Held by one server, woken by a release made through the other.
        let poll = spawn_poll(&other, &key, &etag, 60);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!poll.is_finished());
        let made = Instant::now();
        cloud.release("shared", "1.0", json!({})).await;
        let woke = tokio::time::timeout(kelp_cloud::RECHECK + Duration::from_secs(5), poll)
            .await
            .expect("the other server never saw the release")
            .unwrap();
        if cloud.postgres.is_some() {
            // PostgreSQL tells the other server at once (LISTEN/NOTIFY)
            // rather than leaving it to look again.
            assert!(
                made.elapsed() < kelp_cloud::RECHECK / 2,
                "woke after {:?}",
                made.elapsed()
            );
        }
        assert_eq!(woke.status, StatusCode::OK);
        assert_eq!(woke.body["release"]["version"], "1.0");
    }
}

#[tokio::test]
async fn a_server_shutting_down_answers_held_requests_at_once() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("night").await;
        let key = cloud.device(&pk, "owl").await;
        let etag = cloud.etag(&key).await;
        let poll = spawn_poll(&cloud.app, &key, &etag, 60);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!poll.is_finished());
        cloud.cp.stop();
        let answer = tokio::time::timeout(Duration::from_secs(3), poll)
            .await
            .expect("a held request kept the stopping server waiting")
            .unwrap();
        assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
    }
}

#[tokio::test]
async fn a_change_made_through_one_server_shows_at_once_on_another_that_answered_before() {
    for cloud in TestCloud::all().await {
        let other = cloud.restart().await;
        let pk = cloud.fleet("twins").await;
        let key = cloud.device(&pk, "left").await;
        let first = cloud.release("twins", "1.0", json!({})).await;
        cloud.release("twins", "2.0", json!({})).await;
        let state = |app: &axum::Router| {
            let (app, key) = (app.clone(), key.clone());
            async move { poll_state(&app, &key, "\"none\"", None).await.body }
        };
        // The other server works the target out, and keeps it.
        assert_eq!(state(&other).await["release"]["version"], "2.0");
        assert_eq!(state(&other).await["release"]["version"], "2.0");

        // Each change through this server shows on the other's next
        // answer, with no wait and no word between the two.
        let r = cloud
            .put(
                "/api/v1/fleets/twins/pin",
                &cloud.admin,
                json!({ "release": "1.0" }),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(state(&other).await["release"]["id"], first["id"]);
        let r = cloud
            .put(
                "/api/v1/devices/left/env/MODE?service=web",
                &cloud.admin,
                json!({ "value": "left" }),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let s = state(&other).await;
        assert_eq!(s["release"]["version"], "1.0");
        assert_eq!(s["services"]["web"]["env"]["MODE"], "left");
        let r = cloud
            .put(
                "/api/v1/devices/left/pin",
                &cloud.admin,
                json!({ "release": "2.0" }),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let s = state(&other).await;
        assert_eq!(s["release"]["version"], "2.0");
        assert_eq!(s["services"]["web"]["env"]["MODE"], "left");
    }
}
