//! API tokens: who may use the user API, and how that is taken away.

use axum::http::{Method, StatusCode};
use base64::Engine as _;
use serde_json::json;

use crate::{TestCloud, send, strings};

#[tokio::test]
async fn the_user_api_refuses_missing_wrong_and_revoked_tokens() {
    for cloud in TestCloud::all().await {
        let none = cloud.send(Method::GET, "/api/v1/fleets", None, None).await;
        assert_eq!(none.status, StatusCode::UNAUTHORIZED);
        assert!(
            none.body["error"].as_str().unwrap().contains("Bearer"),
            "{}",
            none.body
        );

        let wrong = cloud.get("/api/v1/fleets", "not-a-token").await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(wrong.body["error"].is_string());

        // The admin token from admin.token is an API token.
        let saved = std::fs::read_to_string(cloud.dir.path().join("admin.token")).unwrap();
        assert_eq!(
            cloud.get("/api/v1/fleets", saved.trim()).await.status,
            StatusCode::OK
        );

        let created = cloud
            .post("/api/v1/tokens", &cloud.admin, json!({ "name": "ci" }))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        let token = created.body["token"].as_str().unwrap().to_owned();
        let id = created.body["id"].as_str().unwrap().to_owned();
        assert_eq!(
            cloud.get("/api/v1/fleets", &token).await.status,
            StatusCode::OK
        );

        // The list names tokens but never shows one.
        let list = cloud.get("/api/v1/tokens", &token).await;
        let text = list.body.to_string();
        assert!(text.contains("\"ci\"") && !text.contains(&token) && !text.contains(&cloud.admin));

        let revoked = cloud
            .delete(&format!("/api/v1/tokens/{id}"), &cloud.admin)
            .await;
        assert_eq!(revoked.status, StatusCode::NO_CONTENT);
        let after = cloud.get("/api/v1/fleets", &token).await;
        assert_eq!(after.status, StatusCode::UNAUTHORIZED);
        assert!(after.body["error"].as_str().unwrap().contains("revoked"));
    }
}

#[tokio::test]
async fn the_last_token_cannot_be_revoked_and_a_revoked_admin_token_stays_revoked() {
    for cloud in TestCloud::all().await {
        let list = cloud.get("/api/v1/tokens", &cloud.admin).await;
        let admin_id = list.body[0]["id"].as_str().unwrap().to_owned();
        let last = cloud
            .delete(&format!("/api/v1/tokens/{admin_id}"), &cloud.admin)
            .await;
        assert_eq!(last.status, StatusCode::CONFLICT, "{}", last.body);
        assert_eq!(
            cloud.get("/api/v1/fleets", &cloud.admin).await.status,
            StatusCode::OK
        );

        let other = cloud
            .post("/api/v1/tokens", &cloud.admin, json!({ "name": "ops" }))
            .await;
        let other = other.body["token"].as_str().unwrap().to_owned();
        let registry = cloud
            .send(Method::GET, "/v2/", Some(&cloud.admin), None)
            .await;
        assert_eq!(
            registry.status,
            StatusCode::OK,
            "the registry takes the admin token"
        );
        let gone = cloud
            .delete(&format!("/api/v1/tokens/{admin_id}"), &other)
            .await;
        assert_eq!(gone.status, StatusCode::NO_CONTENT);
        // The registry refuses it from the next request on, as bearer or
        // as a basic-auth password.
        let registry = cloud
            .send(Method::GET, "/v2/", Some(&cloud.admin), None)
            .await;
        assert_eq!(registry.status, StatusCode::UNAUTHORIZED);
        assert_eq!(registry.body["errors"][0]["code"], "UNAUTHORIZED");
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("me:{}", cloud.admin));
        let registry = send(
            &cloud.app,
            Method::GET,
            "/v2/kelp/web/tags/list",
            None,
            None,
            &[(axum::http::header::AUTHORIZATION, &format!("Basic {basic}"))],
        )
        .await;
        assert_eq!(registry.status, StatusCode::UNAUTHORIZED);

        // A restart reads admin.token again and must not bring it back.
        let app = cloud.restart().await;
        let r = send(
            &app,
            Method::GET,
            "/api/v1/fleets",
            Some(&cloud.admin),
            None,
            &[],
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = send(&app, Method::GET, "/api/v1/fleets", Some(&other), None, &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        // A token made through the API is a registry token too.
        let r = send(&app, Method::GET, "/v2/", Some(&other), None, &[]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn unknown_api_paths_and_bad_token_names_get_json_errors() {
    for cloud in TestCloud::all().await {
        let r = cloud.get("/api/v1/nothing-here", &cloud.admin).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert!(r.body["error"].is_string());

        for id in ["%00", "not-an-id", "..%2F..%2Fetc"] {
            let r = cloud
                .delete(&format!("/api/v1/tokens/{id}"), &cloud.admin)
                .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{id}: {}", r.body);
            assert_eq!(r.field(), "id");
        }

        let r = cloud
            .post("/api/v1/tokens", &cloud.admin, json!({ "name": "" }))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.field(), "name");
        let r = cloud
            .post("/api/v1/tokens", &cloud.admin, json!({ "nmae": "x" }))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.field(), "nmae", "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tokens_revoking_each_other_at_once_leave_one() {
    for cloud in TestCloud::all().await {
        let mut survivor = cloud.admin.clone();
        for round in 0..10 {
            let made = cloud
                .post(
                    "/api/v1/tokens",
                    &survivor,
                    json!({ "name": format!("r{round}") }),
                )
                .await;
            let fresh = made.body["token"].as_str().unwrap().to_owned();
            let fresh_id = made.body["id"].as_str().unwrap().to_owned();
            let list = cloud.get("/api/v1/tokens", &survivor).await;
            let ids = strings(&list.body, "id");
            assert_eq!(ids.len(), 2, "{}", list.body);
            let old_id = ids
                .into_iter()
                .find(|id| *id != fresh_id)
                .unwrap()
                .to_owned();

            let revoke = |token: String, id: String| {
                let app = cloud.app.clone();
                async move {
                    let uri = format!("/api/v1/tokens/{id}");
                    send(&app, Method::DELETE, &uri, Some(&token), None, &[]).await
                }
            };
            let (a, b) = tokio::join!(
                tokio::spawn(revoke(survivor.clone(), fresh_id)),
                tokio::spawn(revoke(fresh.clone(), old_id)),
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            let done = [&a, &b]
                .iter()
                .filter(|r| r.status == StatusCode::NO_CONTENT)
                .count();
            assert_eq!(done, 1, "{} {} / {} {}", a.status, a.body, b.status, b.body);
            for r in [&a, &b] {
                assert!(!r.status.is_server_error(), "{} {}", r.status, r.body);
            }
            survivor = if a.status == StatusCode::NO_CONTENT {
                survivor
            } else {
                fresh
            };
            assert_eq!(
                cloud.get("/api/v1/fleets", &survivor).await.status,
                StatusCode::OK
            );
        }
    }
}

#[tokio::test]
async fn a_device_key_pulls_from_the_registry_but_never_pushes() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("orchard").await;
        let key = cloud.device(&pk, "picker").await;
        let r = cloud
            .send(Method::GET, "/v2/kelp/web/tags/list", Some(&key), None)
            .await;
        // Let in, and told the repository is not there.
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
        let r = cloud
            .send(
                Method::POST,
                "/v2/kelp/web/blobs/uploads/",
                Some(&key),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
        assert_eq!(r.body["errors"][0]["code"], "DENIED");
        // Registering again replaces the key: the old one pulls no more.
        let again = cloud.device(&pk, "picker").await;
        let r = cloud
            .send(Method::GET, "/v2/kelp/web/tags/list", Some(&key), None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
        let r = cloud
            .send(Method::GET, "/v2/kelp/web/tags/list", Some(&again), None)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
        // A provisioning key is no registry credential.
        let r = cloud
            .send(Method::GET, "/v2/kelp/web/tags/list", Some(&pk), None)
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
}
