//! `status.upload` of the ImageImport: how far the upload is, written by this service under its
//! own field manager (at most every second while it moves, and once more when it ends). The
//! controller writes `status.upload.url` only (docs/architecture.md, "Who writes the status").

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::api::Api;
use serde_json::json;

use super::session::{Reported, Session};
use crate::api::ImageImport;

pub const MANAGER: &str = "imageimport-upload-server";

/// Reports `session` until it ends (or another session of the same import replaces it).
pub fn spawn(client: Client, session: Arc<Session>) {
    let weak = Arc::downgrade(&session);
    let mut changes = session.subscribe();
    drop(session);
    tokio::spawn(async move {
        loop {
            let Some(s) = weak.upgrade() else { return };
            match write(&client, &s).await {
                Ok(Written::Final) => return,
                Ok(Written::Moving) => {}
                Err(e) => {
                    tracing::warn!(upload = ?s.id, error = %e, "could not report the upload's offset")
                }
            }
            drop(s);
            tokio::time::sleep(Duration::from_secs(1)).await;
            // Then wait for the next change (or look again now and then: the expiry moves).
            let _ = tokio::time::timeout(Duration::from_secs(30), changes.changed()).await;
        }
    });
}

pub enum Written {
    /// The session may still move.
    Moving,
    /// Its last state is in the status (or it was replaced): nothing more to write.
    Final,
}

/// Writes the session's state if it changed since its last write. Writes of one session go one
/// at a time, each with the state read when it starts, so an earlier write never lands after a
/// later one; a replaced session writes nothing more (its successor owns the fields now).
pub async fn write(client: &Client, s: &Session) -> kube::Result<Written> {
    let mut last = s.reported.lock().await;
    let (offset, length, ended, superseded) =
        s.read(|st| (st.consumed, st.length, st.ended.is_some(), st.superseded));
    if superseded {
        return Ok(Written::Final);
    }
    let expires = s
        .expires_at()
        .and_then(|t| k8s_openapi::jiff::Timestamp::try_from(t).ok())
        .map(|t| t.to_string());
    let now: Reported = (offset, length, expires);
    if last.as_ref() != Some(&now) {
        let api: Api<ImageImport> = Api::namespaced(client.clone(), &s.id.namespace);
        let mut up = json!({"generation": s.id.generation, "offset": offset});
        if let Some(l) = length {
            up["length"] = l.into();
        }
        if let Some(e) = &now.2 {
            up["expiresAt"] = e.clone().into();
        }
        crate::controller::status::apply_status(&api, &s.id.name, MANAGER, json!({ "upload": up }))
            .await?;
        *last = Some(now);
    }
    Ok(if ended {
        Written::Final
    } else {
        Written::Moving
    })
}

/// The last state of an upload that ended, in the status before the worker hears back (it
/// exits after, so the import is never Ready with a stale `status.upload`). A few tries: the
/// worker waits at most 10 s for the answer.
pub async fn flush(client: &Client, s: &Session) {
    for _ in 0..3 {
        match write(client, s).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(upload = ?s.id, error = %e, "could not report the upload's end");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
