//! `GET /console/v1/namespaces/{namespace}/repositories`: the registry repositories the cluster
//! policy lets a namespace push to, so the console can offer them in its Target repository
//! field. The policy file lives with the chart (a ConfigMap in the release namespace) where
//! namespace users cannot read it; this answers only a caller who may create ImageImports in
//! that namespace, and only with that namespace's patterns (what the controller would tell
//! them when refusing an import anyway).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Service;
use super::auth::bearer;
use super::error::UploadError;

#[derive(Debug, Serialize, PartialEq)]
pub struct Repositories {
    /// False: no policy, any repository is allowed (`patterns` is empty).
    pub restricted: bool,
    /// Repository patterns: `*` within one path component, `**` across them.
    pub patterns: Vec<String>,
}

pub async fn list(
    State(svc): State<Arc<Service>>,
    Path(namespace): Path<String>,
    headers: HeaderMap,
) -> Result<Response, UploadError> {
    let token = bearer(&headers)?;
    svc.auth.importer(&token, &namespace).await?;
    let answer = match svc.config.policy.grant(&namespace) {
        None => Repositories {
            restricted: false,
            patterns: Vec::new(),
        },
        Some(g) => Repositories {
            restricted: true,
            patterns: g.repositories,
        },
    };
    let mut r = Json(answer).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    super::console::harden(r.headers_mut());
    Ok(r)
}
