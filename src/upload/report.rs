//! `status.upload` of the ImageImport: how far the upload is, written by this service under its
//! own field manager (at most every second while it moves, and once more when it ends).

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::api::Api;
use serde_json::json;

use super::session::Session;
use crate::api::ImageImport;

pub const MANAGER: &str = "imageimport-upload-server";

pub fn spawn(client: Client, session: Arc<Session>) {
    let weak = Arc::downgrade(&session);
    let mut changes = session.subscribe();
    drop(session);
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let Some(s) = weak.upgrade() else { return };
            let (offset, length, ended) = s.read(|st| (st.consumed, st.length, st.ended.is_some()));
            let expires = s
                .expires_at()
                .and_then(|t| k8s_openapi::jiff::Timestamp::try_from(t).ok())
                .map(|t| t.to_string());
            let now = (offset, length, expires.clone());
            if last.as_ref() != Some(&now) {
                let api: Api<ImageImport> = Api::namespaced(client.clone(), &s.id.namespace);
                let mut up = json!({"generation": s.id.generation, "offset": offset});
                if let Some(l) = length {
                    up["length"] = l.into();
                }
                if let Some(e) = &expires {
                    up["expiresAt"] = e.clone().into();
                }
                match crate::controller::status::apply_status(
                    &api,
                    &s.id.name,
                    MANAGER,
                    json!({ "upload": up }),
                )
                .await
                {
                    Ok(()) => last = Some(now),
                    Err(e) => {
                        tracing::warn!(upload = ?s.id, error = %e, "could not report the upload's offset")
                    }
                }
            }
            if ended && last.as_ref().is_some_and(|l| l.0 == offset) {
                return;
            }
            drop(s);
            tokio::time::sleep(Duration::from_secs(1)).await;
            // Then wait for the next change (or look again now and then: the expiry moves).
            let _ = tokio::time::timeout(Duration::from_secs(30), changes.changed()).await;
        }
    });
}
