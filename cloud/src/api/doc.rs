//! The fleet API's OpenAPI document: what the handlers' `#[utoipa::path]`
//! annotations say, with what every route shares (who may call, and the
//! refusals every handler can answer with) added from the routes
//! themselves, so no route can leave one out.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{ResponseBuilder, Responses};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Required, Type,
};

use crate::ops::ApiError;
use kelp_core::api::{ErrorBody, ServiceReport, ServiceSpec, TargetService};
use kelp_core::{GpioGrant, GpioMode, I2cGrant, NetworkGrant};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Kelp fleet API",
        description = "The fleet control plane of `kelp-cloud`.\n\n\
            * `/api/v1/…` is for people and tools; it needs an API token \
            (`Authorization: Bearer <token>`; the first one is the admin token, written \
            to `admin.token` in the data directory when the cloud first starts).\n\
            * `/device/v1/…` is for devices: `register` takes a fleet's provisioning key, \
            everything else the device key that registering hands out.\n\
            * `/v2/…` (not described here) is the OCI distribution API of the cloud's \
            registry: API tokens push and pull, device keys pull.\n\n\
            Every refusal has a JSON body `{\"error\": \"…\", \"field\": \"…\"}`, \
            `field` naming the part of the request at fault when one is. Request bodies \
            are JSON and refuse unknown fields. Times are Unix seconds unless a name says \
            otherwise.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&Security),
    components(schemas(
        ErrorBody,
        ServiceSpec,
        ServiceReport,
        TargetService,
        GpioGrant,
        GpioMode,
        I2cGrant,
        NetworkGrant
    )),
    tags(
        (name = "tokens", description = "API tokens."),
        (name = "fleets", description = "Fleets and their provisioning keys."),
        (name = "releases", description = "Releases, and pinning a fleet or a device to one."),
        (name = "devices", description = "Devices, their names and tags."),
        (name = "variables", description = "Environment variables of a fleet or a device, for all services or one."),
        (name = "hardware maps", description = "The hardware maps the cloud gives devices."),
        (name = "logs", description = "Devices' service logs."),
        (name = "device", description = "What devices call."),
        (name = "meta", description = "This document."),
    )
)]
pub(super) struct ApiDoc;

/// The three credentials, all sent as `Authorization: Bearer …`.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        for (name, what) in [
            ("api_token", "An API token."),
            ("device_key", "A device key, as registering handed it out."),
            ("provisioning_key", "A fleet's provisioning key."),
        ] {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(what.to_owned());
            components.add_security_scheme(name, SecurityScheme::Http(http));
        }
    }
}

/// `doc` with the answers every operation shares added to each operation
/// that can give them: 400 where it takes parameters or a body, 401 where
/// it needs a credential, 413 where it takes a body, 408 and 500 for all.
pub(super) fn finish(mut doc: OpenApi) -> OpenApi {
    let error = || {
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build()
    };
    let components = doc.components.get_or_insert_with(Default::default);
    components.responses.insert(
        "BadRequest".to_owned(),
        ResponseBuilder::new()
            .description(
                "A parameter or the body is not what this operation takes; `field` names it.",
            )
            .content("application/json", error())
            .build()
            .into(),
    );
    components.responses.insert(
        "Unauthorized".to_owned(),
        ResponseBuilder::new()
            .description("No credential, or one that is not valid (any more).")
            .content("application/json", error())
            .header(
                "WWW-Authenticate",
                HeaderBuilder::new()
                    .schema(ObjectBuilder::new().schema_type(Type::String))
                    .build(),
            )
            .build()
            .into(),
    );
    components.responses.insert(
        "PayloadTooLarge".to_owned(),
        ResponseBuilder::new()
            .description(format!(
                "The body is larger than {} bytes.",
                super::MAX_JSON_BODY
            ))
            .content("application/json", error())
            .build()
            .into(),
    );
    components.responses.insert(
        "Timeout".to_owned(),
        ResponseBuilder::new()
            .description(format!(
                "The request took longer than {} seconds.",
                crate::REQUEST_TIMEOUT.as_secs()
            ))
            .build()
            .into(),
    );
    components.responses.insert(
        "InternalError".to_owned(),
        ResponseBuilder::new()
            .description("A fault of the server, logged there; the body says little.")
            .content("application/json", error())
            .build()
            .into(),
    );
    for item in doc.paths.paths.values_mut() {
        for op in operations(item) {
            let takes_input = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
            let takes_body = op.request_body.is_some();
            let needs_key = op.security.as_ref().is_some_and(|s| !s.is_empty());
            let r = &mut op.responses;
            if takes_input || takes_body {
                shared(r, "400", "BadRequest");
            }
            if needs_key {
                shared(r, "401", "Unauthorized");
            }
            if takes_body {
                shared(r, "413", "PayloadTooLarge");
                if let Some(body) = &mut op.request_body {
                    body.required = Some(Required::True);
                }
            }
            shared(r, "408", "Timeout");
            shared(r, "500", "InternalError");
        }
    }
    doc
}

fn shared(responses: &mut Responses, status: &str, name: &str) {
    responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(name)));
}

/// Every operation of one path.
pub(super) fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// The document as served, made once.
fn served() -> Result<&'static str, ApiError> {
    static DOC: OnceLock<Result<String, String>> = OnceLock::new();
    DOC.get_or_init(|| serde_json::to_string(&super::openapi()).map_err(|e| e.to_string()))
        .as_deref()
        .map_err(|e| ApiError::Internal(format!("cannot encode the OpenAPI document: {e}")))
}

/// `GET /api/v1/openapi.json`: this document. It holds no secret, so it
/// needs no credential.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "This document (OpenAPI 3.1).", content_type = "application/json", body = Object))
)]
pub(super) async fn serve_openapi() -> Result<Response, ApiError> {
    let doc = served()?;
    Ok(([(header::CONTENT_TYPE, "application/json")], doc).into_response())
}
