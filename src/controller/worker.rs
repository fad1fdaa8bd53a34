//! `imageimport worker`: the container of a worker Job. Runs one import with the engine,
//! reports progress every few seconds into the ImageImport's status (its own field, its own
//! field manager), and its outcome in the container's termination message, where only the
//! kubelet could have put it (see `report.rs`, `outcome.rs`).
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
    TERMINATION_LOG,
};
use super::report::WorkerReport;
use super::status::{self, apply_status};
use crate::api::{ImageImport, ImageImportSpec, ImportProgress, ImportedImage, LayerCompression};
use crate::pipeline::{
    self, Codec, CompressionPolicy, HttpOptions, ImportError, ImportOptions, Location, Progress,
    Selection,
};
use crate::registry::{RegistryOptions, Target};

/// Exit codes: 0 imported, 1 permanent failure, 75 transient failure. The outcome goes to
/// the termination message file ([`TERMINATION_LOG`]); the API only gets progress.
pub async fn run() -> i32 {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let ns = env("IMAGEIMPORT_NAMESPACE");
    let name = env("IMAGEIMPORT_NAME");
    let root = PathBuf::from(std::env::var("IMAGEIMPORT_ROOT").unwrap_or_else(|_| "/".into()));
    let report_to = under(&root, TERMINATION_LOG);
    let spec: ImageImportSpec = match serde_json::from_str(&env("IMAGEIMPORT_SPEC")) {
        Ok(s) => s,
        Err(e) => {
            let message = format!("IMAGEIMPORT_SPEC is not a valid spec: {e}");
            eprintln!("imageimport worker: {message}");
            let report = WorkerReport {
                reason: Some(crate::api::reason::INVALID_SPEC.into()),
                message: Some(message),
                finished: Some(status::now()),
                ..Default::default()
            };
            let _ = std::fs::write(&report_to, report.encode(""));
            return 1;
        }
    };
    // Progress is display only: without an API client the import still runs and reports.
    let api: Option<Api<ImageImport>> = match Client::try_default().await {
        Ok(c) => Some(Api::namespaced(c, &ns)),
        Err(e) => {
            eprintln!("imageimport worker: no Kubernetes client, no progress reports: {e}");
            None
        }
    };
    let progress = Arc::new(Progress::default());
    let (stop_reporter, stopped) = tokio::sync::oneshot::channel();
    let reporter = api.clone().map(|api| {
        tokio::spawn(report_progress(
            api,
            name.clone(),
            progress.clone(),
            stopped,
        ))
    });

    let outcome = match options(&spec, &root) {
        Ok(opts) => pipeline::import(opts, progress.clone()).await,
        Err(e) => Err(e),
    };
    // Stop the reporter and let a report under way finish, so the final one lands last.
    let _ = stop_reporter.send(());
    if let Some(r) = reporter {
        let _ = r.await;
    }
    let (done, total) = progress.snapshot();
    let mut report = WorkerReport {
        finished: Some(status::now()),
        bytes_read: Some(done),
        ..Default::default()
    };
    let code = match &outcome {
        Ok(reports) => {
            report.succeeded = true;
            // One image: its digest and ID at the top; several: `images` alone says which.
            if let [only] = reports.as_slice() {
                report.digest = Some(only.digest.clone());
                report.image_id = only.image_ids.first().cloned();
            }
            report.images = reports
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
            report.layers = Some(reports.iter().map(|r| r.layers as u32).sum());
            report.pushed_bytes = Some(reports.iter().map(|r| r.pushed_bytes).sum());
            report.left_out = reports.iter().flat_map(|r| r.left_out.clone()).collect();
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
            report.reason = Some(e.reason().to_string());
            // Capped before formatting the whole: archive names in it can be megabytes
            // (`encode` cuts it to 1024 characters for the report).
            report.message = Some(e.to_string().chars().take(4096).collect());
            report.transient = e.is_transient();
            if e.is_transient() { 75 } else { 1 }
        }
    };
    if let Some(api) = &api {
        let final_progress = ImportProgress {
            bytes_done: done,
            bytes_total: total.max(done),
            phase: "finished".into(),
            last_update_time: Some(status::now()),
        };
        // Best effort: the outcome does not depend on it.
        for _ in 0..3 {
            let body = json!({ "progress": final_progress });
            match apply_status(api, &name, status::WORKER_PROGRESS_MANAGER, body).await {
                Ok(()) => break,
                Err(e) => {
                    eprintln!("imageimport worker: cannot report the final progress: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    let text = report.encode(&spec.target.repository);
    if let Err(e) = std::fs::write(&report_to, &text) {
        eprintln!(
            "imageimport worker: cannot write the report to {}: {e}",
            report_to.display()
        );
    }
    code
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
            last_update_time: Some(status::now()),
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
    // In a Pod, loopback is the worker itself and its sidecars (a mesh proxy's admin port).
    http.url_policy.allow_loopback = flag("IMAGEIMPORT_URL_ALLOW_LOOPBACK");
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
            let claim = under(root, ARCHIVE_DIR);
            let file = claim.join(&pvc.path);
            // A symlink on the claim must not lead the worker to its own token or mounted
            // Secrets: the file, resolved, stays inside the claim.
            if let (Ok(c), Ok(f)) = (claim.canonicalize(), file.canonicalize())
                && !f.starts_with(&c)
            {
                return Err(usage(format!(
                    "source.pvc.path {:?} leads outside the claim (a symbolic link)",
                    pvc.path
                )));
            }
            Location::File(file)
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
    refuse_metadata_registry(&target.registry, http.url_policy.allow_link_local)?;
    let mut registry = RegistryOptions {
        insecure: spec.target.insecure,
        // The Secret is the user's: never run a credential helper it names.
        auths_only: true,
        allow_link_local: http.url_policy.allow_link_local,
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

/// The registry connection does not go through the URL guard's resolver, but it must not
/// reach what the guard protects most: cloud metadata endpoints (always) and link-local
/// addresses (unless allowed), checked on every address the registry's name resolves to now.
/// (A name re-resolved to such an address later is not covered: docs/operations.md, "URL
/// sources"; the token realm and blob redirects it names are checked by the registry client.)
fn refuse_metadata_registry(registry: &str, allow_link_local: bool) -> Result<(), ImportError> {
    use crate::pipeline::url_guard::{AddressKind, classify};
    use std::net::ToSocketAddrs;
    let with_port = if registry
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !registry.ends_with(']')
    {
        registry.to_string()
    } else {
        format!("{registry}:443")
    };
    let Ok(addrs) = with_port.to_socket_addrs() else {
        // Unresolvable: the registry client reports it (transient) as it always did.
        return Ok(());
    };
    for a in addrs {
        let kind = classify(a.ip());
        if kind == AddressKind::Metadata || (kind == AddressKind::LinkLocal && !allow_link_local) {
            return Err(ImportError::Usage(format!(
                "target registry {registry} resolves to {} address {}: refused",
                kind,
                a.ip()
            )));
        }
    }
    Ok(())
}

/// A JSON list of strings the Job hands the worker (what the policy grants); None when the
/// variable is not set (no policy: anything). Unparsable grants nothing (fail closed).
fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name)
        .ok()
        .map(|v| serde_json::from_str(&v).unwrap_or_default())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_at_metadata_or_link_local_addresses_are_refused() {
        for r in [
            "169.254.169.254",
            "169.254.169.254:80",
            "169.254.10.1:5000",
            "[fd00:ec2::254]:80",
        ] {
            assert!(refuse_metadata_registry(r, false).is_err(), "{r}");
        }
        assert!(refuse_metadata_registry("169.254.10.1:5000", true).is_ok());
        assert!(refuse_metadata_registry("169.254.169.254", true).is_err());
        assert!(refuse_metadata_registry("127.0.0.1:5000", false).is_ok());
        assert!(refuse_metadata_registry("10.1.2.3:5000", false).is_ok());
    }

    /// A symlink on the claim leading out of it (to the worker's token, its mounted Secrets)
    /// is refused before anything is read; one that stays inside is followed.
    #[test]
    fn a_claim_path_that_leads_outside_the_claim_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let claim = under(root.path(), ARCHIVE_DIR);
        std::fs::create_dir_all(claim.join("web")).unwrap();
        std::fs::write(root.path().join("token"), "secret").unwrap();
        std::fs::write(claim.join("web/real.tar"), "tar").unwrap();
        std::os::unix::fs::symlink(root.path().join("token"), claim.join("web/out.tar")).unwrap();
        std::os::unix::fs::symlink("real.tar", claim.join("web/in.tar")).unwrap();
        let spec = |path: &str| -> ImageImportSpec {
            serde_json::from_value(serde_json::json!({
                "source": {"pvc": {"claimName": "d", "path": path}},
                "target": {"repository": "127.0.0.1:5000/shop/web"}
            }))
            .unwrap()
        };
        match options(&spec("web/out.tar"), root.path()) {
            Err(ImportError::Usage(m)) => assert!(m.contains("leads outside the claim"), "{m}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a symlink out of the claim was accepted"),
        }
        assert!(options(&spec("web/in.tar"), root.path()).is_ok());
    }
}
