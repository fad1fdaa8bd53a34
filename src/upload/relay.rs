//! The worker's side: `GET /internal/v1/pull/{ns}/{name}?job=J&offset=N&expiry=S` answers the
//! bytes that follow offset N (the worker has taken in N), and `POST …/done/…` says how the
//! import ended. Only the worker of that namespace, with its projected token for the upload
//! audience, and only the Job of the import's current attempt, may pull.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

use super::Service;
use super::error::UploadError;
use super::session::{Ended, Pulled};

/// Most bytes in one pull answer.
const PULL_MAX: usize = 4 << 20;
/// How long a pull waits for the client's next bytes before answering "nothing yet".
const PULL_WAIT: Duration = Duration::from_secs(20);

/// How long a worker's verdict (its token, its Pod a Pod of the import's current Job, the
/// import waiting for this upload) is reused, and only while that Job holds the upload's
/// session: a worker pulls ~40 times a second, and three API round trips in series with each
/// pull held the bytes up. So a Pod that is gone, an import that changed or ended, a Job that
/// is no longer the current attempt is refused at most this long after the API server says
/// so; a Job that does not hold the session (another attempt) is always checked afresh.
pub const WORKER_VERDICT_FOR: Duration = Duration::from_secs(1);

/// A worker's checked request: the import and its upload.
pub type Verdict = (crate::api::ImageImport, super::session::UploadId);

/// Check the caller is the worker Pod of the current attempt of `namespace/name`: the import
/// and its upload (reused for [`WORKER_VERDICT_FOR`] while that Job holds the session).
async fn worker_import(
    svc: &Service,
    headers: &HeaderMap,
    namespace: &str,
    name: &str,
    job: &str,
) -> Result<Verdict, UploadError> {
    let token = super::auth::bearer(headers)?;
    let k = super::auth::key(&["worker verdict", &token, namespace, name, job]);
    if let Some((obj, id)) = svc.worker_verdicts.get(&k)
        && svc.current_session(&id).is_some_and(|s| {
            s.read(|st| st.job.as_deref() == Some(job) && !st.superseded && st.ended.is_none())
        })
    {
        return Ok((obj, id));
    }
    let verdict = check_worker(svc, &token, namespace, name, job).await?;
    svc.worker_verdicts.insert(k, verdict.clone());
    Ok(verdict)
}

/// [`worker_import`] asking the API server: TokenReview (cached by the authenticator), the
/// token's Pod and the ImageImport.
async fn check_worker(
    svc: &Service,
    token: &str,
    namespace: &str,
    name: &str,
    job: &str,
) -> Result<Verdict, UploadError> {
    let (_, pod) = svc
        .auth
        .worker(token, namespace, &svc.config.worker_service_account)
        .await?;
    match pod {
        Some((pod_name, pod_uid)) => {
            let pods: Api<Pod> = Api::namespaced(svc.client.clone(), namespace);
            let p = pods
                .get_opt(&pod_name)
                .await
                .map_err(|e| UploadError::Kube(e.to_string()))?
                .ok_or_else(|| UploadError::Forbidden(format!("Pod {pod_name} is gone")))?;
            let labels = p.metadata.labels.unwrap_or_default();
            let of_job = labels
                .get("batch.kubernetes.io/job-name")
                .or(labels.get("job-name"));
            if p.metadata.uid.as_deref() != Some(pod_uid.as_str())
                || of_job.map(String::as_str) != Some(job)
            {
                return Err(UploadError::Forbidden(format!(
                    "the token's Pod {pod_name} is not a Pod of Job {job}"
                )));
            }
        }
        None if svc.config.allow_unbound_worker_tokens => {}
        None => {
            return Err(UploadError::Forbidden(
                "the worker's token is not bound to a Pod (use the kubelet-projected token)".into(),
            ));
        }
    }
    // A worker still sending after its import ended is told it is over.
    let (obj, id) = svc.waiting_import(namespace, name).await?;
    let current = obj.status.as_ref().and_then(|s| s.job_name.as_deref());
    if current != Some(job) {
        return Err(UploadError::NotFound(format!(
            "Job {job} is not the current attempt of {namespace}/{name}"
        )));
    }
    Ok((obj, id))
}

/// [`worker_import`], and the session it pulls from (a new worker starts it over at `offset`).
async fn worker_session(
    svc: &Service,
    headers: &HeaderMap,
    namespace: &str,
    name: &str,
    job: &str,
    offset: u64,
) -> Result<Arc<super::session::Session>, UploadError> {
    let (obj, id) = worker_import(svc, headers, namespace, name, job).await?;
    let session = svc.session(&obj, &id);
    let other = session.read(|s| s.job.clone().is_some_and(|j| j != job));
    let session = if other {
        tracing::info!(
            namespace,
            name,
            job,
            offset,
            "a new worker: the upload starts over from its offset"
        );
        svc.restart_session(&obj, &id, offset)
    } else {
        session
    };
    session.with(|s| s.job = Some(job.to_string()));
    Ok(session)
}

pub async fn pull(
    State(svc): State<Arc<Service>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, UploadError> {
    let job = required(&q, "job")?;
    let offset: u64 = required(&q, "offset")?
        .parse()
        .map_err(|_| UploadError::BadRequest("offset is required".into()))?;
    let expiry = q
        .get("expiry")
        .and_then(|e| e.parse().ok())
        .map(Duration::from_secs);
    let session = worker_session(&svc, &headers, &namespace, &name, job, offset).await?;
    session.with(|s| {
        if expiry.is_some() {
            s.expiry = expiry;
        }
    });
    // Answer "nothing yet" well within the expiry, so the worker sees it pass.
    let wait = expiry.map_or(PULL_WAIT, |e| {
        PULL_WAIT.min(e / 2).max(Duration::from_millis(500))
    });
    let answer = match session.pull(offset, PULL_MAX, wait).await {
        Pulled::Data(frames) => {
            // The bench counts these (bench/upload.sh: pulls and their mean size).
            tracing::debug!(
                bytes = frames.iter().map(bytes::Bytes::len).sum::<usize>(),
                frames = frames.len(),
                "pull answered"
            );
            let body = Body::from_stream(futures::stream::iter(
                frames.into_iter().map(Ok::<_, std::convert::Infallible>),
            ));
            (StatusCode::OK, body).into_response()
        }
        Pulled::Nothing => StatusCode::NO_CONTENT.into_response(),
        Pulled::Complete => {
            let mut r = StatusCode::OK.into_response();
            r.headers_mut()
                .insert("Upload-Complete", HeaderValue::from_static("?1"));
            r
        }
        Pulled::Ended(Ended::Terminated) => {
            return Err(UploadError::Gone(
                "the upload was terminated by its client; the next attempt waits for a new one"
                    .into(),
            ));
        }
        Pulled::Ended(_) => return Err(UploadError::Gone("the import ended".into())),
    };
    Ok(answer)
}

/// `POST /internal/v1/checkpoint/{ns}/{name}?job=J&offset=N`: the worker committed everything
/// before archive offset N; the body (opaque here, at most `checkpoint::MAX_BYTES`) is what
/// the next worker of this upload needs to go on from there. Kept for this import's uid and
/// generation only, from the worker of its current attempt, and only for an offset the worker
/// has taken in.
pub async fn put_checkpoint(
    State(svc): State<Arc<Service>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, UploadError> {
    let job = required(&q, "job")?;
    let offset: u64 = required(&q, "offset")?
        .parse()
        .map_err(|_| UploadError::BadRequest("offset is required".into()))?;
    if body.len() > crate::pipeline::CHECKPOINT_MAX_BYTES {
        return Err(UploadError::TooLarge(format!(
            "a checkpoint is at most {} bytes",
            crate::pipeline::CHECKPOINT_MAX_BYTES
        )));
    }
    let (_, id) = worker_import(&svc, &headers, &namespace, &name, job).await?;
    let consumed = svc
        .current_session(&id)
        .map(|s| s.read(|st| (st.job.clone(), st.handed)));
    match consumed {
        // The worker read its bytes from pull answers: it cannot be past what it was handed.
        Some((Some(j), handed)) if &j == job && offset <= handed => {}
        _ => {
            return Err(UploadError::Conflict(format!(
                "Job {job} has not taken in {offset} bytes of this upload"
            )));
        }
    }
    svc.keep_checkpoint(id, offset, body)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /internal/v1/checkpoint/{ns}/{name}?job=J`: the last checkpoint of this upload (204:
/// none), for the worker of the current attempt.
pub async fn get_checkpoint(
    State(svc): State<Arc<Service>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, UploadError> {
    let job = required(&q, "job")?;
    let (_, id) = worker_import(&svc, &headers, &namespace, &name, job).await?;
    Ok(match svc.checkpoint(&id) {
        Some((offset, body)) => {
            let mut r = (StatusCode::OK, body).into_response();
            let h = r.headers_mut();
            h.insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert("Checkpoint-Offset", HeaderValue::from(offset));
            r
        }
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

#[derive(serde::Deserialize)]
pub struct Done {
    succeeded: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

pub async fn done(
    State(svc): State<Arc<Service>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    axum::Json(d): axum::Json<Done>,
) -> Result<Response, UploadError> {
    let job = required(&q, "job")?;
    let offset = 0;
    let session = worker_session(&svc, &headers, &namespace, &name, job, offset).await?;
    session.with(|s| {
        s.ended = Some(if d.succeeded {
            Ended::Imported
        } else {
            Ended::Failed {
                reason: d.reason.unwrap_or_default(),
                message: d.message.unwrap_or_default(),
            }
        });
    });
    // A failed import's next attempt may still take the upload up; an imported one will not.
    if d.succeeded {
        svc.forget_checkpoint(&session.id);
    }
    // Before the worker exits and the controller marks the import Ready.
    super::report::flush(&svc.client, &session).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A query parameter every worker request names (`job`, `offset`).
fn required<'q>(q: &'q HashMap<String, String>, key: &str) -> Result<&'q String, UploadError> {
    q.get(key)
        .ok_or_else(|| UploadError::BadRequest(format!("{key} is required")))
}
