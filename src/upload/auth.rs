//! Who is asking: the caller's bearer token checked with TokenReview, and a
//! SubjectAccessReview for `create` on the virtual subresource `imageimports/upload` of the
//! ImageImport. Decisions are cached briefly (keyed by the token's hash, never the token), so
//! a client sending many small PATCH requests does not cost two API requests each.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use sha2::{Digest as _, Sha256};

use super::error::UploadError;

/// How long a decision is reused. Short: a revoked RoleBinding or token stops uploads soon.
const CACHE_FOR: Duration = Duration::from_secs(10);

/// Values remembered for a fixed time, by key (a hash: never a token itself). Expired entries
/// are dropped on every look-up, so the map holds only what the last `ttl` asked.
pub struct Ttl<V> {
    ttl: Duration,
    map: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> Ttl<V> {
    pub fn new(ttl: Duration) -> Self {
        Ttl {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, k: &str) -> Option<V> {
        let mut m = self.map.lock().expect("ttl cache");
        m.retain(|_, (at, _)| at.elapsed() < self.ttl);
        m.get(k).map(|(_, v)| v.clone())
    }

    pub fn insert(&self, k: String, v: V) {
        self.map
            .lock()
            .expect("ttl cache")
            .insert(k, (Instant::now(), v));
    }
}

/// Reviewed callers.
pub struct Authenticator {
    client: Client,
    /// A review's outcome, by token hash.
    cache: Ttl<Result<UserInfo, UploadError>>,
}

/// The bearer token of a request's `Authorization` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Result<String, UploadError> {
    let value =
        headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or(UploadError::Unauthenticated(
                "no Authorization header: send a Kubernetes bearer token (Authorization: Bearer …)",
            ))?;
    let value = value.to_str().map_err(|_| {
        UploadError::Unauthenticated("the Authorization header is not a bearer token")
    })?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(UploadError::Unauthenticated(
            "the Authorization header is not a bearer token",
        ))?;
    Ok(token.to_string())
}

/// A cache key for `parts` (a token among them): their hash.
pub fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

impl Authenticator {
    pub fn new(client: Client) -> Self {
        Authenticator {
            client,
            cache: Ttl::new(CACHE_FOR),
        }
    }

    fn cached(&self, k: &str) -> Option<Result<UserInfo, UploadError>> {
        self.cache.get(k)
    }

    fn remember(&self, k: String, r: &Result<UserInfo, UploadError>) {
        // API errors are not remembered: the next request asks again.
        if matches!(
            r,
            Ok(_) | Err(UploadError::Unauthenticated(_) | UploadError::Forbidden(_))
        ) {
            self.cache.insert(k, r.clone());
        }
    }

    /// The user behind `token` (for `audience`, or the API server's own when None).
    pub async fn review(
        &self,
        token: &str,
        audience: Option<&str>,
    ) -> Result<UserInfo, UploadError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: audience.map(|a| vec![a.to_string()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| UploadError::Kube(format!("TokenReview: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(UploadError::Unauthenticated(
                "the bearer token is not valid (forged, expired, or for another audience)",
            ));
        }
        if let Some(a) = audience
            && !status.audiences.unwrap_or_default().iter().any(|x| x == a)
        {
            return Err(UploadError::Unauthenticated(
                "the bearer token is not valid for the upload service's audience",
            ));
        }
        status.user.ok_or(UploadError::Unauthenticated(
            "the token review named no user",
        ))
    }

    /// A user who may upload into ImageImport `namespace/name`.
    pub async fn uploader(
        &self,
        token: &str,
        namespace: &str,
        name: &str,
    ) -> Result<UserInfo, UploadError> {
        let k = key(&["user", token, namespace, name]);
        if let Some(r) = self.cached(&k) {
            return r;
        }
        let r = self.check_uploader(token, namespace, name).await;
        self.remember(k, &r);
        r
    }

    async fn check_uploader(
        &self,
        token: &str,
        namespace: &str,
        name: &str,
    ) -> Result<UserInfo, UploadError> {
        let user = self.review(token, None).await?;
        let may = ResourceAttributes {
            group: Some(crate::api::GROUP.into()),
            resource: Some("imageimports".into()),
            subresource: Some("upload".into()),
            verb: Some("create".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..Default::default()
        };
        if self.allowed(&user, may).await? {
            Ok(user)
        } else {
            Err(UploadError::Forbidden(format!(
                "{} may not create imageimports/upload of {namespace}/{name} (grant verb create on \
                 imageimports/upload in group {}: the chart adds it to the admin and edit roles)",
                user.username.unwrap_or_default(),
                crate::api::GROUP
            )))
        }
    }

    /// A user who may create ImageImports in `namespace` (what the console asks before it
    /// shows which repositories the cluster policy lets that namespace push to).
    pub async fn importer(&self, token: &str, namespace: &str) -> Result<UserInfo, UploadError> {
        let k = key(&["importer", token, namespace]);
        if let Some(r) = self.cached(&k) {
            return r;
        }
        let r = async {
            let user = self.review(token, None).await?;
            let may = ResourceAttributes {
                group: Some(crate::api::GROUP.into()),
                resource: Some("imageimports".into()),
                verb: Some("create".into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            };
            if self.allowed(&user, may).await? {
                Ok(user)
            } else {
                Err(UploadError::Forbidden(format!(
                    "{} may not create imageimports in namespace {namespace}",
                    user.username.unwrap_or_default()
                )))
            }
        }
        .await;
        self.remember(k, &r);
        r
    }

    /// Whether the API server's authorizer lets `user` do `attributes` (a SubjectAccessReview).
    async fn allowed(
        &self,
        user: &UserInfo,
        attributes: ResourceAttributes,
    ) -> Result<bool, UploadError> {
        let sar = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(attributes),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &sar)
            .await
            .map_err(|e| UploadError::Kube(format!("SubjectAccessReview: {e}")))?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }

    /// The worker of `namespace`: a token for the upload audience of its ServiceAccount and,
    /// when the token is bound to a Pod (kubelet-projected tokens are), that Pod's name.
    pub async fn worker(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<(UserInfo, Option<(String, String)>), UploadError> {
        let k = key(&["worker", token, namespace]);
        let user = match self.cached(&k) {
            Some(r) => r?,
            None => {
                let r = self
                    .review(token, Some(crate::controller::upload::TOKEN_AUDIENCE))
                    .await;
                self.remember(k, &r);
                r?
            }
        };
        let expected = format!("system:serviceaccount:{namespace}:{service_account}");
        if user.username.as_deref() != Some(expected.as_str()) {
            return Err(UploadError::Forbidden(format!(
                "only {expected} pulls uploads of namespace {namespace}"
            )));
        }
        let extra = user.extra.clone().unwrap_or_default();
        let claim = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        let pod = claim("authentication.kubernetes.io/pod-name")
            .zip(claim("authentication.kubernetes.io/pod-uid"));
        Ok((user, pod))
    }
}
