//! The OpenAPI document the cloud serves: valid OpenAPI 3.1, needing no
//! token, and describing exactly the routes the router serves.

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};

use crate::{TestCloud, send};

/// The methods a route could answer.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

#[tokio::test]
async fn the_served_document_is_openapi_3_1_and_needs_no_token() {
    let cloud = TestCloud::all().await.remove(0);
    let reply = send(
        &cloud.app,
        Method::GET,
        "/api/v1/openapi.json",
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers["content-type"], "application/json",
        "{:?}",
        reply.headers
    );
    let spec = oas3::from_json(reply.body.to_string()).expect("not an OpenAPI 3.1 document");
    // Every reference names something the document holds.
    let mut refs = Vec::new();
    collect_refs(&reply.body, &mut refs);
    assert!(refs.len() > 50, "{refs:?}");
    for r in refs {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{r} is not local"));
        assert!(reply.body.pointer(pointer).is_some(), "{r} names nothing");
    }
    assert_eq!(spec.validate_version().unwrap().minor, 1);
    let schemes = &spec.components.as_ref().unwrap().security_schemes;
    for scheme in ["api_token", "device_key", "provisioning_key"] {
        assert!(schemes.contains_key(scheme), "no security scheme {scheme}");
    }

    // Every operation answers what every one can: a server fault, and a
    // refused credential where it needs one, each with the error body.
    for (path, method, op) in spec.operations() {
        let statuses: BTreeSet<&str> = op
            .responses
            .as_ref()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(statuses.contains("500"), "{method} {path}: {statuses:?}");
        let needs_key = op.security.iter().any(|s| !s.0.is_empty());
        assert_eq!(
            statuses.contains("401"),
            needs_key,
            "{method} {path}: {statuses:?}"
        );
        if op.request_body.is_some() {
            assert!(
                statuses.contains("400") && statuses.contains("413"),
                "{method} {path}"
            );
        }
    }
    // The document's own endpoint, the ones a fleet is run with, and the
    // device's are all there.
    let ops: BTreeSet<(String, String)> = spec
        .operations()
        .map(|(path, method, _)| (method.to_string(), path))
        .collect();
    for (method, path) in [
        ("GET", "/api/v1/openapi.json"),
        ("POST", "/api/v1/fleets/{name}/releases"),
        ("PUT", "/api/v1/devices/{uuid}/env/{key}"),
        ("GET", "/api/v1/devices/{uuid}/logs"),
        ("POST", "/device/v1/register"),
        ("PATCH", "/device/v1/state"),
    ] {
        assert!(
            ops.contains(&(method.to_owned(), path.to_owned())),
            "{method} {path} is not in the document"
        );
    }
}

/// Every `$ref` in `v`.
fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(fields) => {
            for (k, v) in fields {
                match (k.as_str(), v.as_str()) {
                    ("$ref", Some(r)) => out.push(r.to_owned()),
                    _ => collect_refs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// `path` with each `{param}` filled in with a value of the right shape.
fn filled(path: &str) -> String {
    path.replace("{name}", "garden")
        .replace("{uuid}", "pump-1")
        .replace("{version}", "1.0")
        .replace("{key}", "GREETING")
        .replace("{tag}", "site")
        .replace("{id}", "00000000-0000-0000-0000-000000000000")
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_every_routed_method_is_documented() {
    let cloud = TestCloud::all().await.remove(0);
    let doc = kelp_cloud::openapi();
    assert!(doc.paths.paths.len() > 20, "{:?}", doc.paths.paths.keys());
    for (path, item) in &doc.paths.paths {
        let documented: BTreeSet<Method> = [
            (Method::GET, item.get.is_some()),
            (Method::POST, item.post.is_some()),
            (Method::PUT, item.put.is_some()),
            (Method::PATCH, item.patch.is_some()),
            (Method::DELETE, item.delete.is_some()),
        ]
        .into_iter()
        .filter_map(|(m, there)| there.then_some(m))
        .collect();
        assert!(!documented.is_empty(), "{path} has no operation");
        let uri = filled(path);
        for method in METHODS {
            // Without a credential: a routed operation refuses it (or, for
            // the document itself, answers); an unrouted one is a 405, and
            // an unknown path the API's JSON 404.
            let reply = send(&cloud.app, method.clone(), &uri, None, None, &[]).await;
            if documented.contains(&method) {
                assert!(
                    matches!(reply.status, StatusCode::OK | StatusCode::UNAUTHORIZED),
                    "{method} {uri}: {} {}",
                    reply.status,
                    reply.body
                );
            } else {
                assert_eq!(
                    reply.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {uri} is routed but not documented: {}",
                    reply.body
                );
            }
        }
    }
}

/// The router and the document are built from one table of `routes!`; a
/// route added beside it with a bare `.route(…)`, in `api.rs` or in any
/// handler file, would be served without documentation. Only the two
/// catch-alls that answer unknown paths with a JSON 404 may be.
#[test]
fn no_route_is_added_outside_the_documented_table() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.join("api.rs")];
    for entry in std::fs::read_dir(src.join("api")).unwrap() {
        files.push(entry.unwrap().path());
    }
    let source: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let bare: Vec<&str> = source
        .lines()
        .filter(|l| l.contains(".route(") || l.contains(".nest(") || l.contains(".merge("))
        .map(str::trim)
        .collect();
    assert_eq!(
        bare,
        [
            r#".route("/api/{*rest}", axum::routing::any(no_route))"#,
            r#".route("/device/{*rest}", axum::routing::any(no_route))"#,
        ],
        "routes outside `routes()`: give the handler a #[utoipa::path] and add it there"
    );
}

/// What the fuzzer found, kept fixed: a negative wait is refused rather
/// than read as a huge one, and a body that is an array of a request's
/// fields in order is not taken as that request.
#[tokio::test]
async fn requests_the_document_calls_invalid_are_refused() {
    for cloud in TestCloud::all().await {
        let pk = cloud.fleet("garden").await;
        let key = cloud.device(&pk, "pump-1").await;
        let r = send(
            &cloud.app,
            Method::GET,
            "/device/v1/state?wait=-1",
            Some(&key),
            None,
            &[],
        )
        .await;
        assert_eq!(
            (r.status, r.field()),
            (StatusCode::BAD_REQUEST, "wait"),
            "{}",
            r.body
        );

        let r = send(
            &cloud.app,
            Method::PATCH,
            "/api/v1/devices/pump-1",
            Some(&cloud.admin),
            Some(serde_json::json!(["renamed"])),
            &[],
        )
        .await;
        assert_eq!(
            (r.status, r.field()),
            (StatusCode::BAD_REQUEST, "body"),
            "{}",
            r.body
        );
        let d = cloud.get("/api/v1/devices/pump-1", &cloud.admin).await;
        assert_eq!(d.body["name"], "pump-1");
    }
}
