//! Upload sources (`spec.source.upload`): what the controller adds to their worker Job and
//! status. The Job starts at once (as CDI starts its upload server Pod) and its worker pulls
//! the bytes from the upload service as a client sends them (see `src/upload`); the controller
//! only says where to upload and how far the upload is.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    EnvVar, ProjectedVolumeSource, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use kube::ResourceExt;

use crate::api::{ImageImport, ImageImportStatus, UploadStatus, reason};

/// Audience of the worker's projected token: the upload service asks TokenReview for exactly
/// this audience, and the API server refuses the token for anything else.
pub const TOKEN_AUDIENCE: &str = "imageimport.dev/upload";
/// Where the worker finds that token (under `IMAGEIMPORT_ROOT`, `/` in a Pod).
pub const TOKEN_DIR: &str = "/var/run/secrets/imageimport.dev/upload";
pub const TOKEN_FILE: &str = "token";
/// Label of worker Jobs (and their Pods) of upload sources.
pub const LABEL_SOURCE: &str = "imageimport.dev/source";

/// Controller flags for upload sources.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    /// Base URL users are given (`status.upload.url` = `<base>/uploads/<ns>/<name>`).
    pub public_url: Option<String>,
    /// Base URL workers pull from (the upload service's in-cluster address).
    pub internal_url: Option<String>,
    /// An upload that receives no byte for this long ends `UploadExpired`.
    pub expiry: Duration,
}

impl Default for UploadSettings {
    fn default() -> Self {
        UploadSettings {
            public_url: None,
            internal_url: None,
            expiry: Duration::from_secs(24 * 3600),
        }
    }
}

pub fn is_upload(obj: &ImageImport) -> bool {
    obj.spec.source.upload.is_some()
}

/// A worker Job of an upload source: it waits for a person, so it takes no room under
/// `maxConcurrentImports` (and waiting for room would keep the upload from starting at all).
pub fn is_upload_job(meta: &kube::api::ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SOURCE))
        .is_some_and(|v| v == "upload")
}

/// The creation endpoint of `obj`'s upload under `base`.
pub fn endpoint(base: &str, obj: &ImageImport) -> String {
    format!(
        "{}/uploads/{}/{}",
        base.trim_end_matches('/'),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// What an upload-source Job needs besides the ordinary worker: the upload service's
/// address, the expiry, a token for the upload service only, a label, and a deadline that
/// leaves room for the wait.
pub fn adapt_job(obj: &ImageImport, settings: &UploadSettings, job: &mut Job) {
    if !is_upload(obj) {
        return;
    }
    job.metadata
        .labels
        .get_or_insert_default()
        .insert(LABEL_SOURCE.into(), "upload".into());
    let Some(spec) = job.spec.as_mut() else {
        return;
    };
    if let Some(d) = spec.active_deadline_seconds.as_mut() {
        *d += settings.expiry.as_secs() as i64;
    }
    let template = &mut spec.template;
    template
        .metadata
        .get_or_insert_default()
        .labels
        .get_or_insert_default()
        .insert(LABEL_SOURCE.into(), "upload".into());
    let Some(pod) = template.spec.as_mut() else {
        return;
    };
    pod.volumes.get_or_insert_default().push(Volume {
        name: "upload-token".into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o400),
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.into()),
                    expiration_seconds: Some(3600),
                    path: TOKEN_FILE.into(),
                }),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    });
    let env = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    for c in pod.containers.iter_mut() {
        c.volume_mounts.get_or_insert_default().push(VolumeMount {
            name: "upload-token".into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        let e = c.env.get_or_insert_default();
        if let Some(url) = &settings.internal_url {
            e.push(env("IMAGEIMPORT_UPLOAD_SERVICE_URL", url.clone()));
        }
        e.push(env(
            "IMAGEIMPORT_UPLOAD_EXPIRY_SECONDS",
            settings.expiry.as_secs().to_string(),
        ));
    }
}

/// Fill in `status.upload.url` for an upload source (the rest is the upload service's).
pub fn set_url(obj: &ImageImport, settings: &UploadSettings, st: &mut ImageImportStatus) {
    if !is_upload(obj) {
        return;
    }
    let base = settings
        .public_url
        .as_deref()
        .or(settings.internal_url.as_deref());
    if let Some(base) = base {
        st.upload.get_or_insert_default().url = Some(endpoint(base, obj));
    }
}

/// While an upload-source worker runs: `AwaitingUpload` until the import holds a byte,
/// `Uploading` until it holds them all, then `None` (importing as any source). With how soon
/// to look again: the upload service's reports do not wake the reconciler.
pub fn running_reason(
    obj: &ImageImport,
    st: &ImageImportStatus,
) -> Option<(&'static str, String, Duration)> {
    if !is_upload(obj) {
        return None;
    }
    let generation = obj.metadata.generation;
    let up = st
        .upload
        .as_ref()
        .filter(|u| u.generation.is_some() && u.generation == generation);
    let url = st
        .upload
        .as_ref()
        .and_then(|u| u.url.clone())
        .unwrap_or_else(|| "the upload service".into());
    match up {
        Some(UploadStatus {
            offset: Some(off),
            length,
            ..
        }) if *off > 0 => match length {
            Some(len) if off >= len => None,
            Some(len) => Some((
                reason::UPLOADING,
                format!("uploading: {off} of {len} bytes taken in"),
                Duration::from_secs(5),
            )),
            None => Some((
                reason::UPLOADING,
                format!("uploading: {off} bytes taken in"),
                Duration::from_secs(5),
            )),
        },
        _ => Some((
            reason::AWAITING_UPLOAD,
            format!("waiting for the archive to be uploaded to {url} (tus 1.0)"),
            Duration::from_secs(10),
        )),
    }
}

/// The controller does not write the upload service's fields (it would write back stale
/// values under its own field manager).
pub fn strip_service_fields(status: &mut serde_json::Value) {
    if let Some(up) = status.get_mut("upload").and_then(|u| u.as_object_mut()) {
        for k in ["generation", "offset", "length", "expiresAt"] {
            up.remove(k);
        }
        if up.is_empty()
            && let Some(s) = status.as_object_mut()
        {
            s.remove("upload");
        }
    }
}

/// The worker's side: where it pulls the upload from (from the Job's environment).
pub fn worker_location(
    spec: &crate::api::ImageImportSpec,
    root: &std::path::Path,
) -> Result<crate::pipeline::Location, crate::pipeline::ImportError> {
    use crate::pipeline::ImportError;
    let var = |k: &str| {
        std::env::var(k).map_err(|_| {
            ImportError::Usage(format!(
                "{k} is not set: the controller runs upload sources only with --upload-internal-url"
            ))
        })
    };
    let service = var("IMAGEIMPORT_UPLOAD_SERVICE_URL")?
        .parse()
        .map_err(|e| ImportError::Usage(format!("IMAGEIMPORT_UPLOAD_SERVICE_URL: {e}")))?;
    let expiry = var("IMAGEIMPORT_UPLOAD_EXPIRY_SECONDS")?
        .parse()
        .map_err(|e| ImportError::Usage(format!("IMAGEIMPORT_UPLOAD_EXPIRY_SECONDS: {e}")))?;
    Ok(crate::pipeline::Location::Upload(Box::new(
        crate::pipeline::source::UploadEndpoint {
            service,
            namespace: var("IMAGEIMPORT_NAMESPACE")?,
            name: var("IMAGEIMPORT_NAME")?,
            job: var("IMAGEIMPORT_JOB")?,
            token_file: root
                .join(TOKEN_DIR.trim_start_matches('/'))
                .join(TOKEN_FILE),
            expiry: Duration::from_secs(expiry),
            max_bytes: spec.source.upload.as_ref().and_then(|u| u.max_bytes),
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj() -> ImageImport {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "generation": 2},
            "spec": {
                "source": {"upload": {}},
                "target": {"repository": "registry.example/shop/web"}
            }
        }))
        .unwrap()
    }

    #[test]
    fn reasons_follow_the_offset_of_this_generation() {
        let o = obj();
        let mut st = ImageImportStatus::default();
        let r = |st: &ImageImportStatus| running_reason(&o, st).map(|x| x.0);
        assert_eq!(r(&st), Some(reason::AWAITING_UPLOAD));
        st.upload = Some(UploadStatus {
            generation: Some(1),
            offset: Some(10),
            length: Some(20),
            ..Default::default()
        });
        assert_eq!(r(&st), Some(reason::AWAITING_UPLOAD), "an older generation");
        st.upload.as_mut().unwrap().generation = Some(2);
        assert_eq!(r(&st), Some(reason::UPLOADING));
        st.upload.as_mut().unwrap().offset = Some(20);
        assert_eq!(r(&st), None);
    }

    #[test]
    fn the_controller_writes_only_the_url() {
        let mut v = serde_json::json!({"upload": {"url": "u", "offset": 3, "generation": 1}});
        strip_service_fields(&mut v);
        assert_eq!(v, serde_json::json!({"upload": {"url": "u"}}));
        let mut v = serde_json::json!({"upload": {"offset": 3}});
        strip_service_fields(&mut v);
        assert_eq!(v, serde_json::json!({}));
    }
}
