//! `imageimport worker`: the container of a worker Job. Runs one import with the engine,
//! reports progress every few seconds and the result at the end, into the ImageImport's
//! status (its own fields, its own field manager).
//!
//! Inputs come from the Job: the spec in `IMAGEIMPORT_SPEC`, the archive under `/archive`,
//! Secrets and ConfigMaps as files. `IMAGEIMPORT_ROOT` (default `/`) prefixes every path,
//! which lets a test play the kubelet with local folders.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kube::{Api, Client};
use serde_json::json;

use super::job::{
    ARCHIVE_DIR, CA_FILE, REGISTRY_AUTH_DIR, REGISTRY_CA_DIR, SOURCE_AUTH_DIR, SOURCE_CA_DIR,
};
use super::status::{self, apply_status};
use crate::api::{
    ImageImport, ImageImportSpec, ImportProgress, ImportedImage, LayerCompression, WorkerResult,
};
use crate::pipeline::{
    self, Codec, CompressionPolicy, HttpOptions, ImportError, ImportOptions, Location, Progress,
    Selection,
};
use crate::registry::{RegistryOptions, Target};

/// Exit codes: 0 imported, 1 permanent failure, 75 transient failure.
pub async fn run() -> i32 {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let ns = env("IMAGEIMPORT_NAMESPACE");
    let name = env("IMAGEIMPORT_NAME");
    let generation: i64 = env("IMAGEIMPORT_GENERATION").parse().unwrap_or(0);
    let job_name = env("IMAGEIMPORT_JOB");
    let root = PathBuf::from(std::env::var("IMAGEIMPORT_ROOT").unwrap_or_else(|_| "/".into()));
    let spec: ImageImportSpec = match serde_json::from_str(&env("IMAGEIMPORT_SPEC")) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("imageimport worker: IMAGEIMPORT_SPEC is not a valid spec: {e}");
            return 1;
        }
    };
    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("imageimport worker: no Kubernetes client: {e}");
            return 75;
        }
    };
    let api: Api<ImageImport> = Api::namespaced(client, &ns);
    let progress = Arc::new(Progress::default());
    let (stop_reporter, stopped) = tokio::sync::oneshot::channel();
    let reporter = tokio::spawn(report_progress(
        api.clone(),
        name.clone(),
        progress.clone(),
        stopped,
    ));

    let outcome = match options(&spec, &root) {
        Ok(opts) => pipeline::import(opts, progress.clone()).await,
        Err(e) => Err(e),
    };
    // Stop the reporter and let a report under way finish, never cut it: a progress apply that
    // reached the API server and lands after the result's would remove `result` (server-side
    // apply drops the fields this field manager no longer sends).
    let _ = stop_reporter.send(());
    let _ = reporter.await;
    let mut result = WorkerResult {
        generation,
        job_name,
        finished: Some(status::now()),
        ..Default::default()
    };
    let code = match &outcome {
        Ok(reports) => {
            result.succeeded = true;
            // One image: its digest and ID at the top; several: `images` alone says which.
            if let [only] = reports.as_slice() {
                result.digest = Some(only.digest.clone());
                result.image_id = only.image_ids.first().cloned();
            }
            result.images = reports
                .iter()
                .map(|r| ImportedImage {
                    name: r.name.clone(),
                    digest: r.digest.clone(),
                    image_ids: r.image_ids.clone(),
                    refs: r.refs.clone(),
                    archive_digest: r.archive_digest.clone(),
                    digest_changed: r.digest_changed.clone(),
                    checked: Some(r.checked.clone()),
                })
                .collect();
            result.pushed = reports
                .iter()
                .flat_map(|r| r.refs.iter().map(move |x| format!("{x}@{}", r.digest)))
                .collect();
            result.layers = Some(reports.iter().map(|r| r.layers as u32).sum());
            result.pushed_bytes = Some(reports.iter().map(|r| r.pushed_bytes).sum());
            result.left_out = reports.iter().flat_map(|r| r.left_out.clone()).collect();
            for r in reports {
                eprintln!(
                    "imported {} -> {} ({})",
                    r.name,
                    r.refs.join(", "),
                    r.digest
                );
            }
            0
        }
        Err(e) => {
            eprintln!("imageimport worker: {e}");
            result.reason = Some(e.reason().to_string());
            // Capped: archive names in it can be megabytes, and it is written to the status.
            result.message = Some(e.to_string().chars().take(4096).collect());
            result.transient = e.is_transient();
            if e.is_transient() { 75 } else { 1 }
        }
    };
    let (done, total) = progress.snapshot();
    let final_progress = ImportProgress {
        bytes_done: done,
        bytes_total: total.max(done),
        phase: "finished".into(),
        updated: Some(status::now()),
    };
    // The result must reach the API: the controller decides on it. Retry for a while.
    let body = json!({ "result": result, "progress": final_progress });
    for attempt in 0..30 {
        match apply_status(&api, &name, status::WORKER_MANAGER, body.clone()).await {
            Ok(()) => return code,
            Err(e) => {
                eprintln!("imageimport worker: cannot report the result (attempt {attempt}): {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
    75
}

async fn report_progress(
    api: Api<ImageImport>,
    name: String,
    progress: Arc<Progress>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
        let (done, total) = progress.snapshot();
        let p = ImportProgress {
            bytes_done: done,
            bytes_total: total,
            phase: progress.phase(),
            updated: Some(status::now()),
        };
        if let Err(e) = apply_status(
            &api,
            &name,
            status::WORKER_PROGRESS_MANAGER,
            json!({ "progress": p }),
        )
        .await
        {
            tracing::warn!(error = %e, "could not report progress");
        }
    }
}

fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// A referenced Secret or ConfigMap is mounted as an optional volume: missing means empty.
fn mounted_file(
    root: &Path,
    dir: &str,
    candidates: &[&str],
    what: &str,
) -> Result<PathBuf, ImportError> {
    for c in candidates {
        let p = under(root, dir).join(c);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(ImportError::MissingReference {
        what: format!("{what} in the ImageImport's namespace"),
        kind: if what.starts_with("Secret") {
            "Secret"
        } else {
            "ConfigMap"
        },
    })
}

fn options(spec: &ImageImportSpec, root: &Path) -> Result<ImportOptions, ImportError> {
    let usage = |m: String| ImportError::Usage(m);
    let mut http = HttpOptions::default();
    let flag = |k: &str| std::env::var(k).is_ok_and(|v| v == "true");
    http.url_policy.allow_link_local = flag("IMAGEIMPORT_URL_ALLOW_LINK_LOCAL");
    http.url_policy.allow_private = !flag("IMAGEIMPORT_URL_DENY_PRIVATE");
    http.url_policy.max_bytes = std::env::var("IMAGEIMPORT_URL_MAX_BYTES")
        .ok()
        .and_then(|v| v.parse().ok());
    http.url_policy.total_timeout = std::env::var("IMAGEIMPORT_URL_TIMEOUT_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|s: &u64| *s > 0)
        .map(Duration::from_secs);
    http.url_policy.allowed_hosts = env_list("IMAGEIMPORT_URL_ALLOWED_HOSTS");
    let source = match (&spec.source.pvc, &spec.source.url) {
        (Some(pvc), None) => {
            if pvc.path.starts_with('/') || pvc.path.split('/').any(|c| c == "..") {
                return Err(usage(format!(
                    "source.pvc.path {:?} must stay inside the claim",
                    pvc.path
                )));
            }
            Location::File(under(root, ARCHIVE_DIR).join(&pvc.path))
        }
        (None, Some(u)) => {
            if let Some(r) = &u.secret_ref {
                let token = mounted_file(
                    root,
                    SOURCE_AUTH_DIR,
                    &["token"],
                    &format!("Secret {} key token", r.name),
                );
                http.authorization = Some(match token {
                    Ok(p) => format!("Bearer {}", read_trimmed(&p)?),
                    Err(_) => {
                        let user = mounted_file(
                            root,
                            SOURCE_AUTH_DIR,
                            &["username"],
                            &format!("Secret {} (keys token, or username and password)", r.name),
                        )?;
                        let pass = mounted_file(
                            root,
                            SOURCE_AUTH_DIR,
                            &["password"],
                            &format!("Secret {} key password", r.name),
                        )?;
                        use base64::Engine;
                        let pair = format!("{}:{}", read_trimmed(&user)?, read_trimmed(&pass)?);
                        format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode(pair)
                        )
                    }
                });
            }
            if let Some(r) = &u.ca_bundle_ref {
                http.ca_file = Some(mounted_file(
                    root,
                    SOURCE_CA_DIR,
                    &[CA_FILE],
                    &format!("ConfigMap {} key {}", r.name, r.key),
                )?);
            }
            u.url.parse().map_err(usage)?
        }
        (None, None) if spec.source.upload.is_some() => super::upload::worker_location(spec, root)?,
        _ => {
            return Err(usage(
                "exactly one of source.pvc or source.url must be set".into(),
            ));
        }
    };
    let target = Target::parse(&spec.target.repository).map_err(|e| usage(e.to_string()))?;
    if target.tag.is_some() {
        return Err(usage(
            "target.repository must not carry a tag: use target.tags".into(),
        ));
    }
    let mut registry = RegistryOptions {
        insecure: spec.target.insecure,
        upload_segment: std::env::var("IMAGEIMPORT_UPLOAD_CHUNK_SIZE")
            .ok()
            .and_then(|v| v.parse().ok()),
        ..Default::default()
    };
    if let Some(r) = &spec.target.credentials_secret_ref {
        registry.auth_file = Some(mounted_file(
            root,
            REGISTRY_AUTH_DIR,
            &[".dockerconfigjson", "config.json"],
            &format!("Secret {} (type kubernetes.io/dockerconfigjson)", r.name),
        )?);
    } else {
        // Never pick up a config from the container's home directory.
        registry.anonymous = true;
    }
    if let Some(r) = &spec.target.ca_bundle_ref {
        registry.ca_file = Some(mounted_file(
            root,
            REGISTRY_CA_DIR,
            &[CA_FILE],
            &format!("ConfigMap {} key {}", r.name, r.key),
        )?);
    }
    let mut opts = ImportOptions::new(source, target);
    opts.registry = registry;
    opts.http = http;
    opts.selection = match &spec.image {
        _ if spec.all_images => Selection::All,
        Some(i) => Selection::Image(i.clone()),
        None => Selection::Only,
    };
    opts.allowed_repositories = env_list("IMAGEIMPORT_ALLOWED_REPOSITORIES");
    opts.platform = spec
        .platform
        .as_deref()
        .map(|p| p.parse())
        .transpose()
        .map_err(usage)?;
    opts.compression = match spec.layer_compression {
        None => CompressionPolicy::default(),
        Some(LayerCompression::Gzip) => CompressionPolicy::Force(Codec::Gzip),
        Some(LayerCompression::Zstd) => CompressionPolicy::Force(Codec::Zstd),
        Some(LayerCompression::None) => CompressionPolicy::Force(Codec::None),
    };
    opts.expect_sha256 = spec.source.sha256.clone();
    opts.expect_image_id = spec.verify.as_ref().and_then(|v| v.image_id.clone());
    opts.tags = spec.target.tags.iter().map(|t| t.0.clone()).collect();
    Ok(opts)
}

/// A comma-separated list the Job hands the worker (what the policy grants); None when the
/// variable is not set (no policy: anything), empty when it grants nothing.
fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name).ok().map(|v| {
        v.split(',')
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect()
    })
}

fn read_trimmed(p: &Path) -> Result<String, ImportError> {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .map_err(|e| ImportError::Source {
            source: pipeline::source::SourceError::Unreadable {
                what: p.display().to_string(),
                detail: e.to_string(),
            },
        })
}
