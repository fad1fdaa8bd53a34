//! Status writes: server-side apply on the status subresource, each writer with its own
//! field manager, so the controller and the worker never clobber each other's fields.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::api::{ImageImport, ImageImportStatus};

pub const CONTROLLER_MANAGER: &str = "imageimport-controller";
/// The worker's progress reports: an apply owns exactly the fields it sends, so the worker and
/// the controller never remove each other's fields, in whatever order their writes land.
pub const WORKER_PROGRESS_MANAGER: &str = "imageimport-worker-progress";

pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// A condition with `lastTransitionTime` kept when its status did not change (`None`:
/// Unknown).
pub fn condition(
    existing: &[Condition],
    type_: &str,
    status: Option<bool>,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let status = match status {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    }
    .to_string();
    let last = existing
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(now);
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: message.chars().take(1024).collect(),
        last_transition_time: last,
        observed_generation: generation,
    }
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The controller's part of the status (everything but the worker's `progress`).
pub async fn apply_controller_status(
    api: &Api<ImageImport>,
    name: &str,
    s: &ImageImportStatus,
) -> kube::Result<()> {
    let mut status = serde_json::to_value(s).expect("status serializes");
    if let Some(obj) = status.as_object_mut() {
        obj.remove("progress");
    }
    super::upload::strip_service_fields(&mut status);
    apply_status(api, name, CONTROLLER_MANAGER, status).await
}

/// Server-side apply of `status` on the status subresource: `manager` owns exactly the fields
/// it sends, and takes them over from any other manager (`force`). The worker writes its
/// `progress` with this, under [`WORKER_PROGRESS_MANAGER`].
pub async fn apply_status(
    api: &Api<ImageImport>,
    name: &str,
    manager: &str,
    status: serde_json::Value,
) -> kube::Result<()> {
    let patch = json!({
        "apiVersion": "imageimport.dev/v1alpha1",
        "kind": "ImageImport",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
