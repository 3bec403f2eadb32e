//! The dashboard's routes in-process, through the same app `kelp-cloud
//! serve` runs: on SQLite, and on PostgreSQL too when `KELP_TEST_POSTGRES`
//! names a server.
//!
//! Longer than the crate's other files: each test walks one page from
//! signing in to what a device then sees, and all share the helpers here.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use futures_util::StreamExt as _;
use tower::ServiceExt as _;

use crate::db::{LogRow, NewDevice};
use crate::{ControlPlane, DataDir};

struct Cloud {
    _dir: tempfile::TempDir,
    app: Router,
    cp: ControlPlane,
    admin: String,
    /// The PostgreSQL server and schema to drop afterwards.
    schema: Option<crate::ScratchSchema>,
}

impl Cloud {
    async fn open(url: Option<String>, schema: Option<crate::ScratchSchema>) -> Cloud {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let url = url.unwrap_or_else(|| crate::sqlite_url(dir.path()).unwrap());
        let cp = ControlPlane::open(&data, &url).await.unwrap();
        let app =
            crate::app_with_fleet(&data, kelp_registry::PullPolicy::Token, cp.clone()).unwrap();
        Cloud {
            admin: data.new_admin_token.clone().unwrap(),
            _dir: dir,
            app,
            cp,
            schema,
        }
    }

    /// A cloud on every database the tests can reach.
    async fn all() -> Vec<Cloud> {
        let mut clouds = vec![Cloud::open(None, None).await];
        if let Ok(base) = std::env::var("KELP_TEST_POSTGRES") {
            let schema = crate::ScratchSchema::create(&base, "kelp_dash")
                .await
                .unwrap();
            clouds.push(Cloud::open(Some(schema.url()), Some(schema)).await);
        }
        clouds
    }

    async fn close(self) {
        self.cp.close().await;
        if let Some(schema) = self.schema {
            schema.remove().await.unwrap();
        }
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
        let res = self.app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn get(
        &self,
        uri: &str,
        cookie: Option<&str>,
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let mut req = Request::get(uri).header(header::HOST, "cloud.test");
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        self.send(req.body(Body::empty()).unwrap()).await
    }

    async fn post(
        &self,
        uri: &str,
        cookie: Option<&str>,
        origin: Option<&str>,
        form: &[(&str, &str)],
    ) -> (StatusCode, axum::http::HeaderMap, String) {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::HOST, "cloud.test")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        let body = serde_urlencoded::to_string(form).unwrap();
        self.send(req.body(Body::from(body)).unwrap()).await
    }

    /// Signs in with the admin token: the cookie to send, and the CSRF
    /// token its pages carry.
    async fn sign_in(&self) -> (String, String) {
        let (status, headers, _) = self
            .post(
                "/login",
                None,
                Some("http://cloud.test"),
                &[("token", &self.admin)],
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers[header::LOCATION], "/");
        let set = headers[header::SET_COOKIE].to_str().unwrap().to_owned();
        for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(set.contains(part), "{set}");
        }
        assert!(!set.contains("Secure"), "plain HTTP: {set}");
        let cookie = set.split(';').next().unwrap().to_owned();
        let (status, _, page) = self.get("/", Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        (cookie, csrf_of(&page))
    }

    /// Signs in and makes fleet `name` from the fleets page.
    async fn sign_in_with_fleet(&self, name: &str) -> (String, String) {
        let (cookie, csrf) = self.sign_in().await;
        let (status, _, page) = self
            .post(
                "/fleets",
                Some(&cookie),
                Some("http://cloud.test"),
                &[("name", name), ("csrf", &csrf)],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        (cookie, csrf)
    }
}

fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
    page[at..at + 64].to_owned()
}

#[tokio::test]
async fn pages_need_a_session_and_a_bad_token_is_told() {
    for cloud in Cloud::all().await {
        for page in [
            "/",
            "/fleets/garden",
            "/devices/d1",
            "/devices/d1/logs/stream",
        ] {
            let (status, headers, _) = cloud.get(page, None).await;
            assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
            assert_eq!(headers[header::LOCATION], "/login", "{page}");
        }
        let (status, _, _) = cloud.get("/", Some("kelp_session=0123")).await;
        assert_eq!(status, StatusCode::SEE_OTHER);

        let (status, _, page) = cloud.get("/login", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("API token"), "{page}");
        let (status, headers, page) = cloud
            .post("/login", None, None, &[("token", "not-a-token")])
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(!headers.contains_key(header::SET_COOKIE));
        assert!(page.contains("not a live API token"), "{page}");

        // Behind an HTTPS proxy the cookie is only ever sent over HTTPS.
        let req = Request::post("/login")
            .header(header::HOST, "cloud.test")
            .header("x-forwarded-proto", "https")
            .body(Body::from(format!("token={}", cloud.admin)))
            .unwrap();
        let (status, headers, _) = cloud.send(req).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert!(
            headers[header::SET_COOKIE]
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
        cloud.close().await;
    }
}

#[tokio::test]
async fn forms_without_this_sessions_csrf_token_or_from_another_site_change_nothing() {
    for cloud in Cloud::all().await {
        let (cookie, csrf) = cloud.sign_in().await;
        let origin = Some("http://cloud.test");
        let zeros = "0".repeat(64);
        let refusals = [
            (None, vec![("name", "garden")]),
            (origin, vec![("name", "garden")]),
            (origin, vec![("name", "garden"), ("csrf", zeros.as_str())]),
            (
                Some("http://evil.example"),
                vec![("name", "garden"), ("csrf", csrf.as_str())],
            ),
        ];
        for (origin, form) in refusals {
            let (status, _, page) = cloud.post("/fleets", Some(&cookie), origin, &form).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{origin:?} {form:?}: {page}");
            assert!(cloud.cp.db.fleet("garden").await.unwrap().is_none());
        }
        // Without a session a post goes to the sign-in page, and changes
        // nothing either.
        let (status, _, _) = cloud
            .post(
                "/fleets",
                None,
                origin,
                &[("name", "garden"), ("csrf", &csrf)],
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert!(cloud.cp.db.fleet("garden").await.unwrap().is_none());

        // With it, the fleet is made and its key shown once.
        let (status, _, page) = cloud
            .post(
                "/fleets",
                Some(&cookie),
                origin,
                &[("name", "garden"), ("csrf", &csrf)],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page.contains("kelp_pk_"), "{page}");
        assert!(cloud.cp.db.fleet("garden").await.unwrap().is_some());
        let (_, _, list) = cloud.get("/", Some(&cookie)).await;
        assert!(list.contains("href=\"/fleets/garden\""), "{list}");
        let (status, _, page) = cloud
            .post(
                "/fleets",
                Some(&cookie),
                origin,
                &[("name", "garden"), ("csrf", &csrf)],
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(page.contains("already exists"), "{page}");
        cloud.close().await;
    }
}

#[tokio::test]
async fn what_users_and_devices_typed_is_shown_escaped() {
    for cloud in Cloud::all().await {
        let (cookie, csrf) = cloud.sign_in_with_fleet("garden").await;
        let origin = Some("http://cloud.test");
        let evil = "<script>alert(1)</script>";
        let (status, headers, _) = cloud
            .post(
                "/fleets/garden/env",
                Some(&cookie),
                origin,
                &[
                    ("name", "GREETING"),
                    ("value", evil),
                    ("service", ""),
                    ("csrf", &csrf),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers[header::LOCATION], "/fleets/garden#variables");
        let (status, headers, page) = cloud.get("/fleets/garden", Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!page.contains(evil), "{page}");
        assert!(
            page.contains("&#60;script&#62;") || page.contains("&lt;script&gt;"),
            "{page}"
        );
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        // A bad name is refused with the reason, and nothing stored.
        let (status, _, page) = cloud
            .post(
                "/fleets/garden/env",
                Some(&cookie),
                origin,
                &[("name", "1BAD"), ("value", "x"), ("csrf", &csrf)],
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(page.contains("variable name `1BAD`"), "{page}");
        assert_eq!(cloud.cp.db.fleet_env("garden").await.unwrap().len(), 1);

        // A device whose log line is markup.
        register(&cloud, "d1").await;
        logs(&cloud, "d1", &["<b>bold</b>"]).await;
        let (status, _, page) = cloud.get("/devices/d1", Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(!page.contains("<b>bold</b>"), "{page}");
        cloud.close().await;
    }
}

async fn register(cloud: &Cloud, uuid: &str) {
    cloud
        .cp
        .db
        .register_device(&NewDevice {
            uuid,
            fleet: "garden",
            name: None,
            arch: "x86_64",
            agent_version: "1",
            key_hash: &format!("sha256:{uuid}"),
        })
        .await
        .unwrap();
}

async fn logs(cloud: &Cloud, uuid: &str, lines: &[&str]) {
    let rows: Vec<LogRow> = lines
        .iter()
        .map(|l| LogRow {
            seq: 0,
            time_ms: 0,
            service: "hello".to_owned(),
            stream: "stdout".to_owned(),
            line: (*l).to_owned(),
        })
        .collect();
    cloud.cp.db.add_logs(uuid, &rows).await.unwrap();
    cloud.cp.logs.notify(uuid);
}

/// The next event's text from a stream of Server-Sent Events.
async fn next_event(body: &mut axum::body::BodyDataStream, buffer: &mut String) -> String {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event = buffer[..end].to_owned();
            buffer.drain(..end + 2);
            if event.starts_with(':') {
                continue; // a keep-alive comment
            }
            return event;
        }
        let chunk = body.next().await.unwrap().unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn live_logs_stream_stored_lines_then_new_ones_and_resume_after_the_last_seen() {
    for cloud in Cloud::all().await {
        let (cookie, _) = cloud.sign_in_with_fleet("garden").await;
        register(&cloud, "d1").await;
        logs(&cloud, "d1", &["one", "two"]).await;

        let open = |after: &str, last: Option<&str>| {
            let mut req = Request::get(format!("/devices/d1/logs/stream?{after}"))
                .header(header::HOST, "cloud.test")
                .header(header::COOKIE, &cookie);
            if let Some(id) = last {
                req = req.header("last-event-id", id);
            }
            cloud.app.clone().oneshot(req.body(Body::empty()).unwrap())
        };
        let res = open("after=0", None).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
        let mut body = res.into_body().into_data_stream();
        let mut buffer = String::new();
        let first = next_event(&mut body, &mut buffer).await;
        assert!(
            first.contains("id: 1") && first.contains("\"line\":\"one\""),
            "{first}"
        );
        let second = next_event(&mut body, &mut buffer).await;
        assert!(second.contains("id: 2"), "{second}");
        // A line stored now arrives on the open stream.
        logs(&cloud, "d1", &["three"]).await;
        let third = next_event(&mut body, &mut buffer).await;
        assert!(
            third.contains("id: 3") && third.contains("three"),
            "{third}"
        );

        // A browser reconnecting says the last line it got.
        let res = open("after=0", Some("2")).await.unwrap();
        let mut body = res.into_body().into_data_stream();
        let mut buffer = String::new();
        let resumed = next_event(&mut body, &mut buffer).await;
        assert!(resumed.contains("id: 3"), "{resumed}");

        // Filtered by service: another service's line is skipped.
        let other = LogRow {
            seq: 0,
            time_ms: 0,
            service: "web".to_owned(),
            stream: "stderr".to_owned(),
            line: "web line".to_owned(),
        };
        cloud.cp.db.add_logs("d1", &[other]).await.unwrap();
        logs(&cloud, "d1", &["four"]).await;
        let res = open("after=3&service=hello", None).await.unwrap();
        let mut body = res.into_body().into_data_stream();
        let mut buffer = String::new();
        let only = next_event(&mut body, &mut buffer).await;
        assert!(only.contains("id: 5") && only.contains("four"), "{only}");
        cloud.close().await;
    }
}

#[tokio::test]
async fn signing_out_ends_the_session() {
    for cloud in Cloud::all().await {
        let (cookie, csrf) = cloud.sign_in().await;
        // Signed in, the sign-in page sends the browser on to the fleets.
        let (status, headers, _) = cloud.get("/login", Some(&cookie)).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers[header::LOCATION], "/");
        let (status, headers, _) = cloud
            .post(
                "/logout",
                Some(&cookie),
                Some("http://cloud.test"),
                &[("csrf", &csrf)],
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers[header::LOCATION], "/login");
        assert!(
            headers[header::SET_COOKIE]
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
        // The old cookie no longer opens a page.
        let (status, headers, _) = cloud.get("/", Some(&cookie)).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers[header::LOCATION], "/login");

        // Revoking the token a browser signed in with ends its session too.
        let (cookie, _) = cloud.sign_in().await;
        let admin = cloud.cp.db.tokens().await.unwrap()[0].id.clone();
        cloud
            .cp
            .db
            .create_token(&crate::secret::new_id(), "other", "sha256:other")
            .await
            .unwrap();
        assert!(matches!(
            cloud.cp.db.revoke_token(&admin).await.unwrap(),
            crate::db::Revoke::Revoked
        ));
        let (status, _, _) = cloud.get("/", Some(&cookie)).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        cloud.close().await;
    }
}

#[tokio::test]
async fn pinning_from_a_page_changes_the_target_devices_see() {
    for cloud in Cloud::all().await {
        let (cookie, csrf) = cloud.sign_in_with_fleet("garden").await;
        let origin = Some("http://cloud.test");
        let image = format!("127.0.0.1:1/kelp/hello@sha256:{}", "a".repeat(64));
        let services = serde_json::json!({ "hello": {
            "image": image,
            "signer": "0123456789abcdef01234567",
            "grants": {
                "gpio": { "led": { "modes": ["output"] }, "fan": { "modes": ["output"] } },
                "network": { "connect": ["broker.local:1883"] },
            },
        } })
        .to_string();
        for (id, v) in [
            ("11111111-1111-1111-1111-111111111111", "1.0"),
            ("22222222-2222-2222-2222-222222222222", "2.0"),
        ] {
            cloud
                .cp
                .db
                .create_release("garden", id, v, &services)
                .await
                .unwrap();
        }
        let before = cloud
            .cp
            .db
            .fleet("garden")
            .await
            .unwrap()
            .unwrap()
            .generation;
        let (status, _, _) = cloud
            .post(
                "/fleets/garden/pin",
                Some(&cookie),
                origin,
                &[("release", "1.0"), ("csrf", &csrf)],
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let fleet = cloud.cp.db.fleet("garden").await.unwrap().unwrap();
        assert_eq!(
            fleet.pinned_release.as_deref(),
            Some("11111111-1111-1111-1111-111111111111")
        );
        assert!(fleet.generation > before, "devices were not told");
        let (_, _, page) = cloud.get("/fleets/garden", Some(&cookie)).await;
        assert!(page.contains("(pinned to 1.0)"), "{page}");

        // A device shows what the fleet's hardware map grants of what the
        // release asks for.
        register(&cloud, "d1").await;
        let map = "[gpio.led]\nchip = \"gpiochip0\"\nline = 17\nmodes = [\"output\"]\n";
        cloud
            .cp
            .db
            .set_hardware_map("garden", None, Some(map))
            .await
            .unwrap();
        let (status, _, page) = cloud.get("/devices/d1", Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(page.contains("gpiochip0 line 17 (output)"), "{page}");
        assert!(page.contains("refused: not in the hardware map"), "{page}");

        // One device pinned on its own page, then following its fleet again.
        let (status, _, _) = cloud
            .post(
                "/devices/d1/pin",
                Some(&cookie),
                origin,
                &[("release", "2.0"), ("csrf", &csrf)],
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let device = cloud.cp.db.device("d1").await.unwrap().unwrap();
        assert_eq!(
            device.pinned_release.as_deref(),
            Some("22222222-2222-2222-2222-222222222222")
        );
        let (_, _, page) = cloud.get("/devices/d1", Some(&cookie)).await;
        assert!(page.contains("(pinned to 2.0)"), "{page}");
        let (status, _, _) = cloud
            .post(
                "/devices/d1/pin",
                Some(&cookie),
                origin,
                &[("release", ""), ("csrf", &csrf)],
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let device = cloud.cp.db.device("d1").await.unwrap().unwrap();
        assert_eq!(device.pinned_release, None);

        let (status, _, page) = cloud
            .post(
                "/fleets/garden/pin",
                Some(&cookie),
                origin,
                &[("release", "9.9"), ("csrf", &csrf)],
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(page.contains("no release `9.9`"), "{page}");

        // The release page names its services, digests and signers.
        let (status, _, page) = cloud
            .get("/fleets/garden/releases/2.0", Some(&cookie))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(
            page.contains(&format!("sha256:{}", "a".repeat(64))),
            "{page}"
        );
        assert!(page.contains("0123456789abcdef01234567"), "{page}");
        assert!(page.contains("GPIO `led`: output"), "{page}");
        assert!(page.contains("connect to broker.local:1883"), "{page}");
        let (status, _, _) = cloud
            .get("/fleets/garden/releases/3.0", Some(&cookie))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        cloud.close().await;
    }
}

#[tokio::test]
async fn a_service_restarts_from_its_device_page_and_its_history_is_plotted() {
    for cloud in Cloud::all().await {
        let (cookie, csrf) = cloud.sign_in_with_fleet("garden").await;
        let origin = Some("http://cloud.test");
        register(&cloud, "d1").await;
        let report = |memory: i64, restarts: i64| crate::db::ReportedService {
            service: "web".to_owned(),
            status: Some(crate::db::ServiceReportRow {
                state: "running".to_owned(),
                memory: Some(memory),
                restarts,
                last_exit: (restarts > 0).then(|| "trapped: <unreachable>".to_owned()),
            }),
        };
        cloud
            .cp
            .db
            .report_state("d1", None, &[report(1 << 20, 0)], None)
            .await
            .unwrap();
        cloud
            .cp
            .db
            .report_state("d1", None, &[report(2 << 20, 1)], None)
            .await
            .unwrap();
        let (status, _, page) = cloud.get("/devices/d1", Some(&cookie)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(
            page.contains("trapped: &#60;unreachable&#62;")
                || page.contains("trapped: &lt;unreachable&gt;"),
            "{page}"
        );
        assert!(page.contains("<td class=\"restarts\">1</td>"), "{page}");
        // Two charts, each with web's line.
        assert!(page.contains("aria-label=\"Memory\""), "{page}");
        assert!(page.contains("aria-label=\"Restarts\""), "{page}");
        assert_eq!(page.matches("<polyline").count(), 2, "{page}");

        // Restart asked for from the page: counted for the device's target.
        let (status, headers, _) = cloud
            .post(
                "/devices/d1/services/web/restart",
                Some(&cookie),
                origin,
                &[("csrf", &csrf)],
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(headers[header::LOCATION], "/devices/d1#services");
        let counts = cloud.cp.db.fleet_restart_requests("garden").await.unwrap();
        assert_eq!(counts["d1"]["web"], 1);
        let (status, _, page) = cloud
            .post(
                "/devices/d1/services/nope/restart",
                Some(&cookie),
                origin,
                &[("csrf", &csrf)],
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(page.contains("reports no service `nope`"), "{page}");
        // Without the CSRF token, nothing is asked.
        let (status, _, _) = cloud
            .post(
                "/devices/d1/services/web/restart",
                Some(&cookie),
                origin,
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let counts = cloud.cp.db.fleet_restart_requests("garden").await.unwrap();
        assert_eq!(counts["d1"]["web"], 1);
        cloud.close().await;
    }
}
