//! The upload service (`imageimport upload-server`): tus 1.0 endpoints where users upload an
//! archive into an ImageImport with `spec.source.upload`, and the internal endpoint from which
//! that import's worker pulls the bytes as they arrive. It stores nothing: the bytes go from
//! the client's request through a bounded channel into the worker's pull, so a client sends
//! only as fast as the import takes in, and it reads no Secret (the worker, in the import's
//! namespace, has the registry credentials).
//!
//! HTTP layout (one origin, so a web console can be served from `/` without CORS):
//! - `/uploads/` — tus discovery (`OPTIONS`);
//! - `/uploads/{namespace}/{name}` — tus creation (`POST`), the URL `status.upload.url` gives;
//! - `/uploads/{namespace}/{name}/g{generation}-{uid}` — the upload (`HEAD`, `PATCH`, `DELETE`);
//! - `/console/v1/namespaces/{namespace}/repositories` — what the cluster policy lets that
//!   namespace push to, for the console (`repositories`);
//! - `/internal/v1/pull/…`, `/internal/v1/done/…` — workers only (their projected token);
//! - `/healthz`, `/readyz`.

pub mod auth;
pub mod console;
pub mod error;
pub mod kube_proxy;
mod relay;
pub mod report;
pub mod repositories;
pub mod session;
mod tus;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use kube::Client;
use kube::api::Api;

use crate::api::{ImageImport, reason};
use error::UploadError;
use session::{Session, UploadId};

/// `imageimport upload-server` settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    /// The ServiceAccount workers run as (the controller's `--worker-service-account`).
    pub worker_service_account: String,
    /// Accept worker tokens that are not bound to a Pod (then any Pod of the worker's
    /// ServiceAccount in that namespace may pull). Kubelet-projected tokens are bound.
    pub allow_unbound_worker_tokens: bool,
    /// The controller's cluster policy (`--policy-file`), read on every request.
    pub policy: crate::controller::policy::PolicySource,
}

pub struct Service {
    client: Client,
    auth: auth::Authenticator,
    /// Workers' checked requests (see [`relay::WORKER_VERDICT_FOR`]).
    worker_verdicts: auth::Ttl<relay::Verdict>,
    config: ServerConfig,
    sessions: Mutex<HashMap<(String, String), Arc<Session>>>,
    /// The last checkpoint of each import's upload: its offset and the worker's document
    /// (in memory only: a restarted service has none, and the next worker starts from 0).
    checkpoints: Mutex<HashMap<(String, String), Kept>>,
}

/// Memory all checkpoints may take (a real one is kilobytes: the archive's member list and
/// small JSON documents), so the service's memory stays bounded whatever the archives hold.
const CHECKPOINTS_TOTAL: usize = 32 << 20;

struct Kept {
    id: UploadId,
    offset: u64,
    body: bytes::Bytes,
}

/// Run the upload service until `shutdown` resolves.
pub async fn serve(
    client: Client,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let bind = config.bind;
    let service = Arc::new(Service {
        auth: auth::Authenticator::new(client.clone()),
        worker_verdicts: auth::Ttl::new(relay::WORKER_VERDICT_FOR),
        client,
        config,
        sessions: Mutex::new(HashMap::new()),
        checkpoints: Mutex::new(HashMap::new()),
    });
    let app = router(service);
    let listener = tokio::net::TcpListener::bind(bind).await?;
    tracing::info!(addr = %listener.local_addr()?, "upload service listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/uploads/", axum::routing::options(tus::discovery))
        .route("/uploads", axum::routing::options(tus::discovery))
        .route(
            "/uploads/{namespace}/{name}",
            post(tus::create).options(tus::discovery),
        )
        .route(
            "/uploads/{namespace}/{name}/{upload}",
            axum::routing::head(tus::head)
                .patch(tus::patch)
                .delete(tus::terminate)
                .options(tus::discovery),
        )
        .route(
            "/console/v1/namespaces/{namespace}/repositories",
            get(repositories::list),
        )
        .route("/internal/v1/pull/{namespace}/{name}", get(relay::pull))
        .route("/internal/v1/done/{namespace}/{name}", post(relay::done))
        .route(
            "/internal/v1/checkpoint/{namespace}/{name}",
            get(relay::get_checkpoint).post(relay::put_checkpoint),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .merge(console::router())
        .layer(DefaultBodyLimit::disable())
        .with_state(service)
}

impl Service {
    /// The ImageImport `namespace/name`, if it takes an upload now: its generation's upload.
    async fn waiting_import(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(ImageImport, UploadId), UploadError> {
        let api: Api<ImageImport> = Api::namespaced(self.client.clone(), namespace);
        let obj = api
            .get_opt(name)
            .await
            .map_err(|e| UploadError::Kube(e.to_string()))?
            .ok_or_else(|| {
                UploadError::NotFound(format!("ImageImport {namespace}/{name} not found"))
            })?;
        if obj.spec.source.upload.is_none() {
            return Err(UploadError::NotFound(format!(
                "ImageImport {namespace}/{name} does not take uploads (spec.source.upload is not set)"
            )));
        }
        let generation = obj.metadata.generation.unwrap_or(0);
        let st = obj.status.clone().unwrap_or_default();
        // Finished for this generation: the controller set completionTime and Ready.
        let ready = st.conditions.iter().find(|c| c.type_ == crate::api::READY);
        let finished = (st.observed_generation == Some(generation) && st.completion_time.is_some())
            .then_some(ready)
            .flatten();
        if let Some(r) = finished {
            return Err(if r.status == "True" {
                UploadError::Gone(format!(
                    "ImageImport {namespace}/{name} is imported; a spec change starts a new upload"
                ))
            } else {
                UploadError::ImportFailed {
                    reason: if r.reason.is_empty() {
                        reason::WORKER_FAILED.into()
                    } else {
                        r.reason.clone()
                    },
                    message: r.message.clone(),
                }
            });
        }
        let id = UploadId {
            namespace: namespace.into(),
            name: name.into(),
            uid: obj.metadata.uid.clone().unwrap_or_default(),
            generation,
        };
        Ok((obj, id))
    }

    /// The session of upload `id` (created, or replacing one of an earlier generation).
    fn session(&self, obj: &ImageImport, id: &UploadId) -> Arc<Session> {
        let key = (id.namespace.clone(), id.name.clone());
        let mut sessions = self.sessions.lock().expect("sessions");
        if let Some(s) = sessions.get(&key)
            && &s.id == id
        {
            return s.clone();
        }
        // After a restart of this service the status still says how far the import is; the
        // worker's next pull confirms it (or rewinds).
        let up = obj
            .status
            .as_ref()
            .and_then(|s| s.upload.clone())
            .filter(|u| u.generation == Some(id.generation))
            .unwrap_or_default();
        let max = obj.spec.source.upload.as_ref().and_then(|u| u.max_bytes);
        let s = Arc::new(Session::new(
            id.clone(),
            up.offset.unwrap_or(0),
            up.length,
            max,
        ));
        if let Some(old) = sessions.insert(key, s.clone()) {
            old.with(|st| {
                st.ended = Some(session::Ended::Terminated);
                st.superseded = true;
            });
        }
        report::spawn(self.client.clone(), s.clone());
        s
    }

    /// Replace the session of `id` with a new one starting at `offset` (a new worker: 0, or
    /// its checkpoint). The same upload goes on: its length is kept.
    fn restart_session(&self, obj: &ImageImport, id: &UploadId, offset: u64) -> Arc<Session> {
        let key = (id.namespace.clone(), id.name.clone());
        let max = obj.spec.source.upload.as_ref().and_then(|u| u.max_bytes);
        let mut sessions = self.sessions.lock().expect("sessions");
        let length = sessions
            .get(&key)
            .filter(|old| &old.id == id)
            .and_then(|old| old.read(|st| st.length));
        let s = Arc::new(Session::new(id.clone(), offset, length, max));
        let old = sessions.insert(key, s.clone());
        drop(sessions);
        if let Some(old) = old {
            // Its writer stops and answers this new session's offset (`tus::patch`): the client
            // sends from there.
            old.with(|st| {
                st.writer += 1;
                st.epoch += 1;
                if &old.id != id && st.ended.is_none() {
                    st.ended = Some(session::Ended::Terminated);
                }
                st.superseded = true;
            });
        }
        report::spawn(self.client.clone(), s.clone());
        s
    }

    /// The session of upload `id` now, if there is one.
    fn current_session(&self, id: &UploadId) -> Option<Arc<Session>> {
        let key = (id.namespace.clone(), id.name.clone());
        let sessions = self.sessions.lock().expect("sessions");
        sessions.get(&key).filter(|s| &s.id == id).cloned()
    }

    /// Keep upload `id`'s checkpoint, replacing its last one, within [`CHECKPOINTS_TOTAL`].
    fn keep_checkpoint(
        &self,
        id: UploadId,
        offset: u64,
        body: bytes::Bytes,
    ) -> Result<(), UploadError> {
        let key = (id.namespace.clone(), id.name.clone());
        let mut kept = self.checkpoints.lock().expect("checkpoints");
        let others: usize = kept
            .iter()
            .filter(|(k, _)| **k != key)
            .map(|(_, k)| k.body.len())
            .sum();
        if others + body.len() > CHECKPOINTS_TOTAL {
            return Err(UploadError::TooLarge(format!(
                "this service holds {others} bytes of checkpoints (at most {CHECKPOINTS_TOTAL})"
            )));
        }
        tracing::info!(upload = ?id, offset, bytes = body.len(), "checkpoint kept");
        kept.insert(key, Kept { id, offset, body });
        Ok(())
    }

    /// The last checkpoint of upload `id` (none of another uid or generation).
    fn checkpoint(&self, id: &UploadId) -> Option<(u64, bytes::Bytes)> {
        let key = (id.namespace.clone(), id.name.clone());
        let mut kept = self.checkpoints.lock().expect("checkpoints");
        match kept.get(&key) {
            Some(k) if &k.id == id => Some((k.offset, k.body.clone())),
            Some(_) => {
                kept.remove(&key);
                None
            }
            None => None,
        }
    }

    /// The client gave the upload up (its next bytes may be another archive), or it is imported.
    fn forget_checkpoint(&self, id: &UploadId) {
        let key = (id.namespace.clone(), id.name.clone());
        self.checkpoints.lock().expect("checkpoints").remove(&key);
    }
}
