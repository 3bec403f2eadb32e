//! Registering devices, and what a device key may read.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::{TestCloud, strings};

#[tokio::test]
async fn a_device_registers_once_per_uuid_and_a_new_registration_replaces_its_key() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("garden").await;
        let first = cloud
            .register(
                &pk,
                json!({ "uuid": "dev-1", "name": "shed", "arch": "aarch64", "agent_version": "0.1.0" }),
            )
            .await;
        assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
        assert_eq!(first.body["fleet"], "garden");
        let old_key = first.body["device_key"].as_str().unwrap().to_owned();

        let again = cloud
            .register(
                &pk,
                json!({ "uuid": "dev-1", "arch": "aarch64", "agent_version": "0.2.0" }),
            )
            .await;
        assert_eq!(again.status, StatusCode::OK, "{}", again.body);
        let new_key = again.body["device_key"].as_str().unwrap().to_owned();
        assert_ne!(old_key, new_key);

        assert_eq!(
            cloud.get("/device/v1/state", &old_key).await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            cloud.get("/device/v1/state", &new_key).await.status,
            StatusCode::OK
        );

        let list = cloud.get("/api/v1/devices", &cloud.admin).await;
        let devices = list.body.as_array().unwrap();
        assert_eq!(devices.len(), 1, "{}", list.body);
        let shown = cloud.get("/api/v1/devices/dev-1", &cloud.admin).await;
        assert_eq!(
            shown.body["name"], "shed",
            "a name is kept when not sent again"
        );
        assert_eq!(shown.body["agent_version"], "0.2.0");
        assert_eq!(shown.body["online"], true);
        assert!(!shown.body.to_string().contains(&new_key));
    }
}

#[tokio::test]
async fn a_provisioning_key_registers_only_into_its_own_fleet() {
    for cloud in TestCloud::all().await {
        let key_a = cloud.fleet("fleet-a").await;
        let key_b = cloud.fleet("fleet-b").await;
        cloud.device(&key_b, "b-1").await;

        // Fleet A's key cannot take over fleet B's device…
        let r = cloud
            .register(
                &key_a,
                json!({ "uuid": "b-1", "arch": "x86_64", "agent_version": "0.1.0" }),
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
        let b1 = cloud.get("/api/v1/devices/b-1", &cloud.admin).await;
        assert_eq!(b1.body["fleet"], "fleet-b");
        assert_eq!(
            b1.body["arch"], "aarch64",
            "the refused request changed nothing"
        );

        // …and a device it registers lands in fleet A.
        cloud.device(&key_a, "a-1").await;
        let list = cloud
            .get("/api/v1/devices?fleet=fleet-a", &cloud.admin)
            .await;
        assert_eq!(strings(&list.body, "uuid"), ["a-1"]);
        let bad = cloud
            .get("/api/v1/devices?fleet=No%20Such", &cloud.admin)
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.field(), "fleet");
        let none = cloud
            .get("/api/v1/devices?fleet=nowhere", &cloud.admin)
            .await;
        assert_eq!(none.status, StatusCode::NOT_FOUND);

        // A provisioning key is not an API token, and a rotated one is dead.
        assert_eq!(
            cloud.get("/api/v1/fleets", &key_a).await.status,
            StatusCode::UNAUTHORIZED
        );
        let rotated = cloud
            .send(
                Method::POST,
                "/api/v1/fleets/fleet-a/provisioning-key",
                Some(&cloud.admin),
                None,
            )
            .await;
        assert_eq!(rotated.status, StatusCode::CREATED);
        let new_key = rotated.body["provisioning_key"].as_str().unwrap();
        let r = cloud
            .register(
                &key_a,
                json!({ "uuid": "a-2", "arch": "x86_64", "agent_version": "0.1.0" }),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        cloud.device(new_key, "a-2").await;
    }
}

#[tokio::test]
async fn a_device_key_reads_only_its_own_target_and_nothing_of_the_user_api() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("shop").await;
        let one = cloud.device(&pk, "one").await;
        let two = cloud.device(&pk, "two").await;
        cloud.release("shop", "1.0", json!({})).await;
        cloud.release("shop", "2.0", json!({})).await;
        let pin = cloud
            .put(
                "/api/v1/devices/two/pin",
                &cloud.admin,
                json!({ "release": "1.0" }),
            )
            .await;
        assert_eq!(pin.status, StatusCode::OK, "{}", pin.body);

        let s1 = cloud.get("/device/v1/state", &one).await;
        let s2 = cloud.get("/device/v1/state", &two).await;
        assert_eq!(s1.body["release"]["version"], "2.0");
        assert_eq!(s2.body["release"]["version"], "1.0");

        for uri in [
            "/api/v1/devices/two",
            "/api/v1/devices",
            "/api/v1/fleets/shop",
        ] {
            assert_eq!(
                cloud.get(uri, &one).await.status,
                StatusCode::UNAUTHORIZED,
                "{uri}"
            );
        }
    }
}

#[tokio::test]
async fn registration_names_the_field_at_fault() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("lab").await;
        let cases = [
            (json!({ "arch": "x86_64", "agent_version": "1" }), "uuid"),
            (
                json!({ "uuid": "../etc", "arch": "x86_64", "agent_version": "1" }),
                "uuid",
            ),
            (
                json!({ "uuid": "d", "arch": 64, "agent_version": "1" }),
                "arch",
            ),
            (
                json!({ "uuid": "d", "arch": "x86_64", "agent_version": "1", "name": "a\nb" }),
                "name",
            ),
            (
                json!({ "uuid": "d", "arch": "x86_64", "agent_version": "1", "fleet": "other" }),
                "fleet",
            ),
        ];
        for (body, field) in cases {
            let r = cloud.register(&pk, body.clone()).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
            assert_eq!(r.field(), field, "{body}: {}", r.body);
        }
        let r = crate::send_raw(&cloud.app, "/device/v1/register", &pk, "{\"uuid\": ").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.body["error"].is_string());
        let none = cloud.get("/api/v1/devices", &cloud.admin).await;
        assert_eq!(
            none.body,
            json!([]),
            "no refused request registered a device"
        );
    }
}

#[tokio::test]
async fn a_device_reports_only_what_changed_and_the_user_sees_it() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("dock").await;
        let other_pk = cloud.fleet("yard").await;
        let key = cloud.device(&pk, "crane").await;
        let release = cloud.release("dock", "1.0", json!({})).await;
        let foreign = cloud.release("yard", "9.0", json!({})).await;
        drop(other_pk);

        let patch = |body: serde_json::Value| {
            let (cloud, key) = (&cloud, &key);
            async move {
                cloud
                    .send(Method::PATCH, "/device/v1/state", Some(key), Some(body))
                    .await
            }
        };
        let r = patch(json!({
            "release": release["id"],
            "services": { "web": { "state": "running", "memory": 1234 } }
        }))
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
        let r = patch(json!({ "services": { "cron": { "state": "crash-looping" } } })).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);

        let d = cloud.get("/api/v1/devices/crane", &cloud.admin).await.body;
        assert_eq!(d["current_release"], "1.0");
        assert_eq!(d["services"]["web"]["state"], "running");
        assert_eq!(d["services"]["web"]["memory"], 1234);
        assert_eq!(d["services"]["cron"]["state"], "crash-looping");

        let r = patch(json!({ "services": { "web": null } })).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let d = cloud.get("/api/v1/devices/crane", &cloud.admin).await.body;
        assert!(d["services"].get("web").is_none(), "{d}");
        assert_eq!(
            d["current_release"], "1.0",
            "an absent release keeps its value"
        );

        for (body, field) in [
            (json!({ "release": foreign["id"] }), "release"),
            (
                json!({ "services": { "web": { "state": "dancing" } } }),
                "services.web.state",
            ),
            (
                json!({ "services": { "Web": { "state": "running" } } }),
                "services.Web",
            ),
            (json!({ "uptime": 5 }), "uptime"),
            (json!({ "release": "x\0" }), "release"),
        ] {
            let r = patch(body.clone()).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.body);
            assert_eq!(r.field(), field, "{body}: {}", r.body);
        }
        let d = cloud.get("/api/v1/devices/crane", &cloud.admin).await.body;
        assert_eq!(d["current_release"], "1.0");
    }
}

#[tokio::test]
async fn a_rollback_and_its_reason_reach_the_user() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("pier").await;
        cloud.fleet("quay").await;
        let key = cloud.device(&pk, "winch").await;
        let good = cloud.release("pier", "2.0", json!({})).await;
        let bad = cloud.release("pier", "3.0", json!({})).await;
        let foreign = cloud.release("quay", "1.0", json!({})).await;
        let d = cloud.get("/api/v1/devices/winch", &cloud.admin).await.body;
        assert!(d["update"].is_null(), "nothing said yet: {d}");

        let patch = |body: serde_json::Value| {
            let (cloud, key) = (&cloud, &key);
            async move {
                cloud
                    .send(Method::PATCH, "/device/v1/state", Some(key), Some(body))
                    .await
            }
        };
        let r = patch(json!({
            "release": good["id"],
            "update": { "state": "rolled-back", "release": bad["id"],
                        "reason": "service `web` is crash-looping" }
        }))
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
        let d = cloud.get("/api/v1/devices/winch", &cloud.admin).await.body;
        assert_eq!(d["current_release"], "2.0");
        assert_eq!(d["target_release"], "3.0");
        assert_eq!(d["update"]["state"], "rolled-back", "{d}");
        assert_eq!(d["update"]["release"], "3.0");
        assert_eq!(d["update"]["reason"], "service `web` is crash-looping");

        for (body, field) in [
            (
                json!({ "update": { "state": "healthy", "release": foreign["id"] } }),
                "update.release",
            ),
            (
                json!({ "update": { "state": "fine", "release": good["id"] } }),
                "update.state",
            ),
            (
                json!({ "update": { "state": "failed", "release": good["id"],
                                    "reason": "x".repeat(5000) } }),
                "update.reason",
            ),
        ] {
            let r = patch(body.clone()).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
            assert_eq!(r.field(), field, "{}", r.body);
        }
        let d = cloud.get("/api/v1/devices/winch", &cloud.admin).await.body;
        assert_eq!(
            d["update"]["state"], "rolled-back",
            "a refused report changes nothing"
        );
    }
}

#[tokio::test]
async fn log_lines_arrive_in_batches_and_only_the_newest_are_kept() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("noisy").await;
        let key = cloud.device(&pk, "talker").await;
        let batch = |from: usize, n: usize| {
            let lines: Vec<_> = (from..from + n)
                .map(|i| json!({ "time": i, "service": "web", "line": format!("line {i}") }))
                .collect();
            json!({ "lines": lines })
        };
        let r = cloud.post("/device/v1/logs", &key, batch(0, 3)).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
        let logs = cloud
            .get("/api/v1/devices/talker/logs", &cloud.admin)
            .await
            .body;
        assert_eq!(strings(&logs, "line"), ["line 0", "line 1", "line 2"]);
        assert_eq!(logs[0]["stream"], "stdout");

        // A NUL, which PostgreSQL text cannot hold, arrives as U+FFFD.
        let r = cloud
            .post(
                "/device/v1/logs",
                &key,
                json!({ "lines": [{ "time": 3, "service": "web", "stream": "stderr", "line": "a\0b" }] }),
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
        let last = cloud
            .get("/api/v1/devices/talker/logs?limit=1", &cloud.admin)
            .await
            .body;
        assert_eq!(last[0]["line"], "a\u{fffd}b");
        assert_eq!(last[0]["stream"], "stderr");

        let long = "x".repeat(kelp_cloud::MAX_LOG_LINE + 1);
        let r = cloud
            .post(
                "/device/v1/logs",
                &key,
                json!({ "lines": [
                    { "time": 1, "service": "web", "line": "fine" },
                    { "time": 2, "service": "web", "line": long }
                ] }),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.field(), "lines[1].line");
        let too_many = batch(0, kelp_cloud::MAX_LOG_BATCH + 1);
        let r = cloud.post("/device/v1/logs", &key, too_many).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);

        // Past the bound, the oldest lines go.
        let kept = usize::try_from(kelp_cloud::KEPT_LOG_LINES).unwrap();
        let mut sent = 4;
        while sent <= kept {
            let r = cloud
                .post(
                    "/device/v1/logs",
                    &key,
                    batch(sent, kelp_cloud::MAX_LOG_BATCH),
                )
                .await;
            assert_eq!(r.status, StatusCode::NO_CONTENT);
            sent += kelp_cloud::MAX_LOG_BATCH;
        }
        let newest = cloud
            .get("/api/v1/devices/talker/logs?limit=2", &cloud.admin)
            .await
            .body;
        assert_eq!(newest[1]["line"], format!("line {}", sent - 1));
        let oldest = cloud
            .get("/api/v1/devices/talker/logs?limit=1000", &cloud.admin)
            .await;
        assert_eq!(oldest.body.as_array().unwrap().len(), 1000);
        // The API shows at most 1000 lines; the database shows what is kept.
        use sqlx::Row as _;
        let pool = sqlx::AnyPool::connect(&cloud.url).await.unwrap();
        let row = sqlx::query("SELECT COUNT(*) AS n, MIN(time_ms) AS first FROM device_logs")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(row.get::<i64, _>("n"), kelp_cloud::KEPT_LOG_LINES);
        assert_eq!(
            row.get::<i64, _>("first"),
            i64::try_from(sent - kept).unwrap()
        );
        pool.close().await;
        let r = cloud
            .get("/api/v1/devices/talker/logs?limit=0", &cloud.admin)
            .await;
        assert_eq!(r.field(), "limit");
        // A device key reads no logs.
        let r = cloud.get("/api/v1/devices/talker/logs", &key).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_devices_registering_at_once_all_get_keys() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("crowd").await;
        let key_b = cloud.fleet("other").await;
        let mut tasks = Vec::new();
        for i in 0..40 {
            let (app, pk) = (
                cloud.app.clone(),
                if i % 2 == 0 {
                    pk.clone()
                } else {
                    key_b.clone()
                },
            );
            tasks.push(tokio::spawn(async move {
                let body =
                    json!({ "uuid": format!("d{i}"), "arch": "x86_64", "agent_version": "1" });
                crate::send(
                    &app,
                    Method::POST,
                    "/device/v1/register",
                    Some(&pk),
                    Some(body),
                    &[],
                )
                .await
            }));
        }
        // Releases made meanwhile must not fail either.
        for v in 0..5 {
            cloud.release("crowd", &format!("{v}"), json!({})).await;
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        }
        let list = cloud.get("/api/v1/devices", &cloud.admin).await;
        assert_eq!(list.body.as_array().unwrap().len(), 40);
    }
}

#[tokio::test]
async fn the_device_list_comes_in_pages() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("paged").await;
        for i in 0..5 {
            cloud.device(&pk, &format!("dev-{i}")).await;
        }
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let uri = if after.is_empty() {
                "/api/v1/devices?limit=2".to_owned()
            } else {
                format!("/api/v1/devices?limit=2&after={after}")
            };
            let page = cloud.get(&uri, &cloud.admin).await.body;
            let page = page.as_array().unwrap();
            assert!(page.len() <= 2);
            let Some(last) = page.last() else { break };
            after = last["uuid"].as_str().unwrap().to_owned();
            seen.extend(page.iter().map(|d| d["uuid"].as_str().unwrap().to_owned()));
        }
        assert_eq!(seen, ["dev-0", "dev-1", "dev-2", "dev-3", "dev-4"]);
        let r = cloud
            .get("/api/v1/devices?limit=100000", &cloud.admin)
            .await;
        assert_eq!(r.field(), "limit");
    }
}

#[tokio::test]
async fn a_device_is_renamed_and_a_bad_name_is_refused_naming_the_field() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("renames").await;
        let key = cloud.device(&pk, "pump-1").await;
        let uri = "/api/v1/devices/pump-1";
        let r = cloud
            .send(
                Method::PATCH,
                uri,
                Some(&cloud.admin),
                Some(json!({ "name": "Pump by the shed ☂" })),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["name"], "Pump by the shed ☂");
        assert_eq!(r.body["uuid"], "pump-1");
        assert_eq!(
            cloud.get(uri, &cloud.admin).await.body["name"],
            "Pump by the shed ☂"
        );

        for bad in [json!(""), json!("a\nb"), json!("x".repeat(65)), json!(7)] {
            let r = cloud
                .send(
                    Method::PATCH,
                    uri,
                    Some(&cloud.admin),
                    Some(json!({ "name": bad })),
                )
                .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.body);
            assert_eq!(r.field(), "name", "{bad}");
        }
        let r = cloud
            .send(
                Method::PATCH,
                uri,
                Some(&cloud.admin),
                Some(json!({ "fleet": "other" })),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.field(), "fleet");
        // 64 characters is the most; the name is what was set last.
        let longest = "é".repeat(64);
        let r = cloud
            .send(
                Method::PATCH,
                uri,
                Some(&cloud.admin),
                Some(json!({ "name": longest })),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(cloud.get(uri, &cloud.admin).await.body["name"], longest);

        let r = cloud
            .send(
                Method::PATCH,
                "/api/v1/devices/nobody",
                Some(&cloud.admin),
                Some(json!({ "name": "x" })),
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        // The device's own key renames nothing.
        let r = cloud
            .send(Method::PATCH, uri, Some(&key), Some(json!({ "name": "x" })))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(cloud.get(uri, &cloud.admin).await.body["name"], longest);
    }
}

#[tokio::test]
async fn a_log_reader_asks_for_the_lines_after_the_last_it_saw() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("cursor").await;
        let key = cloud.device(&pk, "talker").await;
        let other = cloud.device(&pk, "quiet").await;
        let send = |key: String, lines: Vec<(&'static str, &'static str)>| {
            let lines: Vec<_> = lines
                .into_iter()
                .map(|(service, line)| json!({ "time": 1, "service": service, "line": line }))
                .collect();
            let cloud = &cloud;
            async move {
                let r = cloud
                    .post("/device/v1/logs", &key, json!({ "lines": lines }))
                    .await;
                assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
            }
        };
        let logs = |q: &'static str| {
            let cloud = &cloud;
            async move {
                let r = cloud
                    .get(&format!("/api/v1/devices/talker/logs{q}"), &cloud.admin)
                    .await;
                assert_eq!(r.status, StatusCode::OK, "{q}: {}", r.body);
                r.body
            }
        };
        send(key.clone(), vec![("web", "a"), ("db", "b"), ("web", "c")]).await;
        // Another device's lines take none of this one's numbers.
        send(other.clone(), vec![("web", "elsewhere")]).await;
        let all = logs("").await;
        assert_eq!(strings(&all, "line"), ["a", "b", "c"]);
        let ids: Vec<i64> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].as_i64().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let last = ids[2];

        // Nothing new yet: an empty page, not an error.
        let q = format!("?after={last}").leak();
        assert_eq!(logs(q).await, json!([]));
        send(key.clone(), vec![("web", "d"), ("web", "e")]).await;
        let new = logs(q).await;
        assert_eq!(strings(&new, "line"), ["d", "e"]);
        assert!(new[0]["id"].as_i64().unwrap() > last);

        // `after` pages forwards, oldest first, `limit` at a time.
        let first = format!("?after={}&limit=2", ids[0]).leak();
        assert_eq!(strings(&logs(first).await, "line"), ["b", "c"]);
        // `service` picks one service's lines, with and without a cursor.
        assert_eq!(strings(&logs("?service=db").await, "line"), ["b"]);
        assert_eq!(
            strings(&logs("?service=web&limit=2").await, "line"),
            ["d", "e"]
        );
        let web_after = format!("?service=web&after={}", ids[0]).leak();
        assert_eq!(strings(&logs(web_after).await, "line"), ["c", "d", "e"]);

        for (q, field) in [
            ("?after=-1", "after"),
            ("?after=x", "query"),
            ("?service=No!", "service"),
        ] {
            let r = cloud
                .get(&format!("/api/v1/devices/talker/logs{q}"), &cloud.admin)
                .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
            assert_eq!(r.field(), field, "{q}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_sent_at_once_get_distinct_increasing_ids() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("busy").await;
        let key = cloud.device(&pk, "talker").await;
        let mut tasks = Vec::new();
        for batch in 0..8 {
            let (app, key) = (cloud.app.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let lines: Vec<_> = (0..10)
                    .map(|i| json!({ "time": i, "service": "web", "line": format!("{batch}.{i}") }))
                    .collect();
                crate::send(
                    &app,
                    Method::POST,
                    "/device/v1/logs",
                    Some(&key),
                    Some(json!({ "lines": lines })),
                    &[],
                )
                .await
                .status
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), StatusCode::NO_CONTENT);
        }
        let all = cloud
            .get("/api/v1/devices/talker/logs?limit=1000", &cloud.admin)
            .await
            .body;
        let lines = all.as_array().unwrap();
        let ids: Vec<i64> = lines.iter().map(|l| l["id"].as_i64().unwrap()).collect();
        assert_eq!(ids, (1..=80).collect::<Vec<_>>());
        // Each batch's lines are together and in their order.
        for chunk in lines.chunks(10) {
            let batch = chunk[0]["line"]
                .as_str()
                .unwrap()
                .split('.')
                .next()
                .unwrap();
            let texts: Vec<_> = chunk.iter().map(|l| l["line"].as_str().unwrap()).collect();
            let want: Vec<_> = (0..10).map(|i| format!("{batch}.{i}")).collect();
            assert_eq!(texts, want);
        }
    }
}

#[tokio::test]
async fn polling_moves_last_seen_within_a_flush() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("clock").await;
        let key = cloud.device(&pk, "tick").await;
        let registered = cloud.get("/api/v1/devices/tick", &cloud.admin).await.body["last_seen"]
            .as_i64()
            .unwrap();
        // Times are whole seconds: let one pass.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let polled = cloud.get("/device/v1/state", &key).await;
        assert_eq!(polled.status, StatusCode::OK);
        tokio::time::sleep(kelp_cloud::SEEN_FLUSH + Duration::from_secs(1)).await;
        let shown = cloud.get("/api/v1/devices/tick", &cloud.admin).await.body;
        assert!(
            shown["last_seen"].as_i64().unwrap() > registered,
            "last_seen stayed at registration: {shown}"
        );
        assert_eq!(shown["online"], true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_devices_polling_at_once_each_get_their_own_target() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("choir").await;
        cloud.release("choir", "1.0", json!({})).await;
        let mut keys = Vec::new();
        for i in 0..60 {
            let uuid = format!("voice-{i}");
            keys.push(cloud.device(&pk, &uuid).await);
            let r = cloud
                .put(
                    &format!("/api/v1/devices/{uuid}/env/NAME"),
                    &cloud.admin,
                    json!({ "value": uuid }),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        }
        // Lookups that arrive together go to the database together; each
        // answer must still be its own device's.
        for _ in 0..3 {
            let polls: Vec<_> = keys
                .iter()
                .map(|key| {
                    let (app, key) = (cloud.app.clone(), key.clone());
                    tokio::spawn(async move { crate::poll_state(&app, &key, "\"x\"", None).await })
                })
                .collect();
            for (i, poll) in polls.into_iter().enumerate() {
                let r = poll.await.unwrap();
                assert_eq!(r.status, StatusCode::OK, "{}", r.body);
                assert_eq!(
                    r.body["services"]["web"]["env"]["NAME"],
                    format!("voice-{i}")
                );
            }
        }
        let wrong = crate::poll_state(&cloud.app, "kelp_dk_0000", "\"x\"", None).await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn tags_are_set_replaced_and_removed_and_bad_ones_refused() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("labels").await;
        cloud.device(&pk, "kiosk-1").await;
        let uri = "/api/v1/devices/kiosk-1/tags";
        let r = cloud
            .put(
                &format!("{uri}/site"),
                &cloud.admin,
                json!({ "value": "Lobby, 2nd floor" }),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.body["tags"]["site"], "Lobby, 2nd floor");
        cloud
            .put(&format!("{uri}/rev"), &cloud.admin, json!({ "value": "b" }))
            .await;
        let r = cloud
            .put(&format!("{uri}/rev"), &cloud.admin, json!({ "value": "c" }))
            .await;
        assert_eq!(
            r.body["tags"],
            json!({ "rev": "c", "site": "Lobby, 2nd floor" })
        );

        let r = cloud.delete(&format!("{uri}/rev"), &cloud.admin).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        let r = cloud.delete(&format!("{uri}/rev"), &cloud.admin).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let d = cloud
            .get("/api/v1/devices/kiosk-1", &cloud.admin)
            .await
            .body;
        assert_eq!(d["tags"], json!({ "site": "Lobby, 2nd floor" }));

        for (tag, value, field) in [
            ("bad%20tag", json!({ "value": "x" }), "tag"),
            ("ok", json!({ "value": "a\u{7}b" }), "value"),
            ("ok", json!({ "value": "x".repeat(1025) }), "value"),
            ("ok", json!({ "value": 5 }), "value"),
        ] {
            let r = cloud
                .put(&format!("{uri}/{tag}"), &cloud.admin, value)
                .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{tag}: {}", r.body);
            assert_eq!(r.field(), field, "{tag}: {}", r.body);
        }
        let r = cloud
            .put(
                "/api/v1/devices/nobody/tags/site",
                &cloud.admin,
                json!({ "value": "x" }),
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let r = cloud
            .put(&format!("{uri}/site"), "wrong", json!({ "value": "x" }))
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn a_device_gets_its_own_hardware_map_else_its_fleets() {
    const FLEET_MAP: &str = "[gpio.led]\nchip = \"gpiochip0\"\nline = 17\n";
    const OWN_MAP: &str = "[gpio.led]\nchip = \"gpiochip1\"\nline = 4\n";
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("boards").await;
        let key = cloud.device(&pk, "rev-a").await;
        let other = cloud.device(&pk, "rev-b").await;
        let target = |key: &str| {
            let (cloud, key) = (&cloud, key.to_owned());
            async move { cloud.get("/device/v1/state", &key).await.body }
        };
        assert!(target(&key).await.get("hardware_map").is_none());

        let r = cloud
            .put(
                "/api/v1/fleets/boards/hardware-map",
                &cloud.admin,
                json!({ "map": FLEET_MAP }),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(target(&key).await["hardware_map"], FLEET_MAP);
        let r = cloud
            .put(
                "/api/v1/devices/rev-a/hardware-map",
                &cloud.admin,
                json!({ "map": OWN_MAP }),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(target(&key).await["hardware_map"], OWN_MAP);
        assert_eq!(target(&other).await["hardware_map"], FLEET_MAP);
        let r = cloud
            .get("/api/v1/devices/rev-a/hardware-map", &cloud.admin)
            .await;
        assert_eq!(r.body["map"], OWN_MAP);

        // A map a device would refuse is refused here, naming what is wrong.
        for (map, needle) in [
            ("[gpio.led]\nchip = \"gpiochip0\"\n", "line"),
            (
                "[gpio.led]\nchip = \"../../etc/passwd\"\nline = 1\n",
                "chip",
            ),
            ("[pwm.fan]\n", "pwm"),
        ] {
            let r = cloud
                .put(
                    "/api/v1/fleets/boards/hardware-map",
                    &cloud.admin,
                    json!({ "map": map }),
                )
                .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{map}: {}", r.body);
            assert_eq!(r.field(), "map");
            let why = r.body["error"].as_str().unwrap();
            assert!(why.contains(needle), "{map}: {why}");
        }
        assert_eq!(target(&other).await["hardware_map"], FLEET_MAP);

        let r = cloud
            .delete("/api/v1/devices/rev-a/hardware-map", &cloud.admin)
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert_eq!(target(&key).await["hardware_map"], FLEET_MAP);
        cloud
            .delete("/api/v1/fleets/boards/hardware-map", &cloud.admin)
            .await;
        assert!(target(&key).await.get("hardware_map").is_none());
    }
}

#[tokio::test]
async fn restarts_and_exits_are_kept_with_their_history_and_a_restart_reaches_the_target() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("line").await;
        let key = cloud.device(&pk, "press").await;
        let other = cloud.device(&pk, "lathe").await;
        let patch = |body: serde_json::Value| {
            let (cloud, key) = (&cloud, &key);
            async move {
                cloud
                    .send(Method::PATCH, "/device/v1/state", Some(key), Some(body))
                    .await
            }
        };
        let r = patch(json!({ "services": { "web": {
            "state": "running", "memory": 1000, "restarts": 0
        } } }))
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
        let r = patch(json!({ "services": { "web": {
            "state": "running", "memory": 2000, "restarts": 1,
            "last_exit": "trapped: unreachable"
        } } }))
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);

        let d = cloud.get("/api/v1/devices/press", &cloud.admin).await.body;
        assert_eq!(d["services"]["web"]["restarts"], 1);
        assert_eq!(d["services"]["web"]["last_exit"], "trapped: unreachable");
        // Both reports are in the history: the second changed the restarts.
        let h = cloud
            .get("/api/v1/devices/press/samples", &cloud.admin)
            .await;
        assert_eq!(h.status, StatusCode::OK, "{}", h.body);
        let web = h.body["web"].as_array().unwrap();
        let points: Vec<(i64, i64)> = web
            .iter()
            .map(|s| {
                (
                    s["memory"].as_i64().unwrap(),
                    s["restarts"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(points, [(1000, 0), (2000, 1)]);
        // The same again moments later adds no point; new memory does.
        for (memory, points) in [(2000, 2), (3000, 3)] {
            patch(json!({ "services": { "web": {
                "state": "running", "memory": memory, "restarts": 1,
                "last_exit": "trapped: unreachable"
            } } }))
            .await;
            let h = cloud
                .get("/api/v1/devices/press/samples", &cloud.admin)
                .await;
            assert_eq!(
                h.body["web"].as_array().unwrap().len(),
                points,
                "{}",
                h.body
            );
        }
        let future = cloud
            .get(
                "/api/v1/devices/press/samples?since=99999999999",
                &cloud.admin,
            )
            .await;
        assert_eq!(future.body, json!({}));

        let r = patch(json!({ "services": { "web": {
            "state": "running", "last_exit": "x".repeat(2000)
        } } }))
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        assert_eq!(r.field(), "services.web.last_exit");

        // A restart: counted, and in this device's target only.
        let target = |key: &str| {
            let (cloud, key) = (&cloud, key.to_owned());
            async move { cloud.get("/device/v1/state", &key).await.body }
        };
        assert!(target(&key).await.get("restarts").is_none());
        for want in [1, 2] {
            let r = cloud
                .post(
                    "/api/v1/devices/press/services/web/restart",
                    &cloud.admin,
                    json!(null),
                )
                .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
            assert_eq!(r.body, json!({ "service": "web", "count": want }));
            assert_eq!(target(&key).await["restarts"], json!({ "web": want }));
        }
        assert!(target(&other).await.get("restarts").is_none());
        for (uri, status) in [
            (
                "/api/v1/devices/press/services/db/restart",
                StatusCode::NOT_FOUND,
            ),
            (
                "/api/v1/devices/nobody/services/web/restart",
                StatusCode::NOT_FOUND,
            ),
            (
                "/api/v1/devices/press/services/Web!/restart",
                StatusCode::BAD_REQUEST,
            ),
        ] {
            let r = cloud.post(uri, &cloud.admin, json!(null)).await;
            assert_eq!(r.status, status, "{uri}: {}", r.body);
        }
    }
}
