//! tus 1.0.0: core (HEAD, PATCH), creation (POST), termination (DELETE), expiration
//! (`Upload-Expires`). Checksums are not offered: a chunk is streamed on before its end, so it
//! could not be discarded on a mismatch; the archive's own digests (and `source.sha256`)
//! verify the bytes instead.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::Service;
use super::error::UploadError;
use super::session::{Ended, Session, ended_error};

const EXTENSIONS: &str = "creation,termination,expiration";

fn tus_headers(r: &mut Response) {
    let h = r.headers_mut();
    h.insert("Tus-Resumable", HeaderValue::from_static("1.0.0"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn check_version(headers: &HeaderMap) -> Result<(), UploadError> {
    match headers.get("Tus-Resumable").map(|v| v.as_bytes()) {
        Some(b"1.0.0") => Ok(()),
        _ => Err(UploadError::VersionMismatch),
    }
}

fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, UploadError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| UploadError::BadRequest(format!("{name} is not a number")))
        })
        .transpose()
}

fn http_date(t: SystemTime) -> Option<HeaderValue> {
    let ts = k8s_openapi::jiff::Timestamp::try_from(t).ok()?;
    let s = ts.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string();
    HeaderValue::from_str(&s).ok()
}

fn offset_response(status: StatusCode, session: &Session) -> Response {
    let (offset, length) = session.read(|s| (s.consumed, s.length));
    let mut r = status.into_response();
    tus_headers(&mut r);
    let h = r.headers_mut();
    h.insert("Upload-Offset", HeaderValue::from(offset));
    if let Some(l) = length {
        h.insert("Upload-Length", HeaderValue::from(l));
    }
    if let Some(e) = session.expires_at().and_then(http_date) {
        h.insert("Upload-Expires", e);
    }
    r
}

/// `OPTIONS`: what this server speaks.
pub async fn discovery() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    tus_headers(&mut r);
    let h = r.headers_mut();
    h.insert("Tus-Version", HeaderValue::from_static("1.0.0"));
    h.insert("Tus-Extension", HeaderValue::from_static(EXTENSIONS));
    r
}

/// The user asking, and the session of the import's current upload.
async fn authorized(
    svc: &Service,
    headers: &HeaderMap,
    namespace: &str,
    name: &str,
) -> Result<(Arc<Session>, crate::api::ImageImport), UploadError> {
    check_version(headers)?;
    let token = super::auth::bearer(headers)?;
    svc.auth.uploader(&token, namespace, name).await?;
    let (obj, id) = svc.waiting_import(namespace, name).await?;
    Ok((svc.session(&obj, &id), obj))
}

fn same_upload(session: &Session, upload: &str) -> Result<(), UploadError> {
    if session.id.resource() == upload {
        Ok(())
    } else {
        Err(UploadError::NotFound(format!(
            "no upload {upload} here: this import's current upload is {} (its spec changed?)",
            session.id.resource()
        )))
    }
}

/// `POST /uploads/{ns}/{name}`: create (or find again) the import's upload.
pub async fn create(
    State(svc): State<Arc<Service>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, UploadError> {
    let (session, obj) = authorized(&svc, &headers, &namespace, &name).await?;
    let length = number(&headers, "Upload-Length")?.ok_or_else(|| {
        UploadError::BadRequest(
            "Upload-Length is required (deferred lengths are not supported)".into(),
        )
    })?;
    if let Some(max) = obj.spec.source.upload.as_ref().and_then(|u| u.max_bytes)
        && length > max
    {
        return Err(UploadError::TooLarge(format!(
            "{length} bytes is more than this import's source.upload.maxBytes ({max})"
        )));
    }
    session.with(|s| -> Result<(), UploadError> {
        if let Some(e) = &s.ended {
            return Err(match e {
                Ended::Terminated => UploadError::Conflict(
                    "this upload was terminated; the import's next attempt takes a new one in a few seconds".into(),
                ),
                other => ended_error(other),
            });
        }
        match s.length {
            Some(l) if l != length => Err(UploadError::Conflict(format!(
                "an upload of {l} bytes into this import is under way (at {}); resume it, or change the spec to start over",
                s.consumed
            ))),
            _ => {
                s.length = Some(length);
                Ok(())
            }
        }
    })?;
    let mut r = offset_response(StatusCode::CREATED, &session);
    let location = format!("/uploads/{namespace}/{name}/{}", session.id.resource());
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).map_err(|e| UploadError::BadRequest(e.to_string()))?,
    );
    Ok(r)
}

/// `HEAD`: the offset the import has taken in.
pub async fn head(
    State(svc): State<Arc<Service>>,
    Path((namespace, name, upload)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, UploadError> {
    let (session, _) = authorized(&svc, &headers, &namespace, &name).await?;
    same_upload(&session, &upload)?;
    if let Some(e) = session.read(|s| s.ended.clone())
        && e != Ended::Imported
    {
        return Err(ended_error(&e));
    }
    if session.read(|s| s.length.is_none()) {
        return Err(UploadError::NotFound(
            "this upload's length is unknown (not created here): create it again with POST".into(),
        ));
    }
    Ok(offset_response(StatusCode::OK, &session))
}

/// `PATCH`: bytes from `Upload-Offset` on, streamed to the worker as they come.
pub async fn patch(
    State(svc): State<Arc<Service>>,
    Path((namespace, name, upload)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, UploadError> {
    let (session, _) = authorized(&svc, &headers, &namespace, &name).await?;
    same_upload(&session, &upload)?;
    if headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes())
        != Some(b"application/offset+octet-stream")
    {
        return Err(UploadError::UnsupportedMediaType);
    }
    let offset = number(&headers, "Upload-Offset")?
        .ok_or_else(|| UploadError::BadRequest("Upload-Offset is required".into()))?;
    let (consumed, forwarded, length, ended) =
        session.read(|s| (s.consumed, s.forwarded, s.length, s.ended.clone()));
    if let Some(e) = ended {
        return Err(ended_error(&e));
    }
    if length.is_none() {
        return Err(UploadError::NotFound(
            "this upload's length is unknown: create it again with POST".into(),
        ));
    }
    // Bytes in flight (handed on, not yet taken in) are skipped if sent again.
    if offset < consumed || offset > forwarded {
        return Err(UploadError::Conflict(format!(
            "Upload-Offset {offset}, but the import has taken in {consumed} bytes: resume from there (HEAD)"
        )));
    }
    let writer = session.take_writer();
    let mut pos = offset;
    let mut frames = body.into_data_stream();
    // A worker that stops pulling (lost, or stuck on its registry) ends the request after a
    // while with the offset it reached; the client asks again.
    const STALL: Duration = Duration::from_secs(300);
    loop {
        let frame = match frames.next().await {
            None => break,
            // The client went away: what was handed on stays handed on.
            Some(Err(_)) => return Ok(offset_response(StatusCode::NO_CONTENT, &session)),
            Some(Ok(f)) => f,
        };
        let n = frame.len() as u64;
        match tokio::time::timeout(STALL, session.forward(writer, pos, frame)).await {
            Ok(Ok(true)) => pos += n,
            // Another writer took over, or the worker started over (a new worker: a new
            // session, at 0 or its checkpoint): the client resumes from that offset.
            Ok(Ok(false)) => {
                let now = svc.current_session(&session.id).unwrap_or(session);
                if let Some(e) = now.read(|s| s.ended.clone())
                    && e != Ended::Imported
                {
                    return Err(ended_error(&e));
                }
                return Ok(offset_response(StatusCode::NO_CONTENT, &now));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(offset_response(StatusCode::NO_CONTENT, &session)),
        }
    }
    // Answer what the import has taken in, so wait (a little) for it to take in this request.
    session.wait_consumed(pos, Duration::from_secs(30)).await;
    let session = svc.current_session(&session.id).unwrap_or(session);
    if let Some(e) = session.read(|s| s.ended.clone())
        && e != Ended::Imported
    {
        return Err(ended_error(&e));
    }
    Ok(offset_response(StatusCode::NO_CONTENT, &session))
}

/// `DELETE`: the client gives the upload up; the import's next attempt waits for a new one.
pub async fn terminate(
    State(svc): State<Arc<Service>>,
    Path((namespace, name, upload)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, UploadError> {
    let (session, _) = authorized(&svc, &headers, &namespace, &name).await?;
    same_upload(&session, &upload)?;
    session.with(|s| {
        s.writer += 1;
        s.ended.get_or_insert(Ended::Terminated);
    });
    svc.forget_checkpoint(&session.id);
    let mut r = StatusCode::NO_CONTENT.into_response();
    tus_headers(&mut r);
    Ok(r)
}
