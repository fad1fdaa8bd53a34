//! The worker Job: one per (ImageImport, generation, attempt), named deterministically so a
//! restarted controller finds the Job it created instead of starting a second import.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, KeyToPath,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use sha2::{Digest as _, Sha256};

use crate::api::ImageImport;

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "imageimport";
pub const LABEL_NAME: &str = "imageimport.dev/name";
pub const LABEL_GENERATION: &str = "imageimport.dev/generation";

/// Where the worker finds its inputs (under `IMAGEIMPORT_ROOT`, `/` in a Pod).
pub const ARCHIVE_DIR: &str = "/archive";
pub const REGISTRY_AUTH_DIR: &str = "/etc/imageimport/registry-auth";
pub const REGISTRY_CA_DIR: &str = "/etc/imageimport/registry-ca";
pub const SOURCE_AUTH_DIR: &str = "/etc/imageimport/source-auth";
pub const SOURCE_CA_DIR: &str = "/etc/imageimport/source-ca";
pub const CA_FILE: &str = "ca.crt";

/// How worker Jobs are built (controller flags).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub image: String,
    pub image_pull_policy: Option<String>,
    pub service_account: String,
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: Option<String>,
    pub memory_limit: String,
    pub active_deadline_seconds: i64,
    pub ttl_seconds_after_finished: i32,
    /// URL-source guard settings handed to workers.
    pub url_allow_link_local: bool,
    pub url_deny_private: bool,
    pub url_max_bytes: u64,
    /// Longest a URL download may take, in seconds (0: only the Job's deadline bounds it).
    pub url_timeout_seconds: u64,
    /// Bytes per blob upload request (see `imageimport push --upload-chunk-size`); None: one
    /// request per blob.
    pub upload_chunk_size: Option<u64>,
    /// Upload sources: where the upload service is, and the expiry.
    pub upload: super::upload::UploadSettings,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            image: "ghcr.io/imageimport/imageimport:latest".into(),
            image_pull_policy: None,
            service_account: "imageimport-worker".into(),
            cpu_request: "500m".into(),
            memory_request: "64Mi".into(),
            cpu_limit: None,
            memory_limit: "256Mi".into(),
            active_deadline_seconds: 6 * 3600,
            ttl_seconds_after_finished: 24 * 3600,
            url_allow_link_local: false,
            url_deny_private: false,
            url_max_bytes: 0,
            url_timeout_seconds: 0,
            upload_chunk_size: None,
            upload: Default::default(),
        }
    }
}

/// `<name>-g<generation>-a<attempt>`, shortened with a hash when over the 63-char label limit.
pub fn job_name(obj: &ImageImport, generation: i64, attempt: u32) -> String {
    let suffix = format!("-g{generation}-a{attempt}");
    let name = obj.name_any();
    let full = format!("{name}{suffix}");
    if full.len() <= 63 {
        return full;
    }
    let hash = hex::encode(&Sha256::digest(name.as_bytes())[..4]);
    let keep = 63 - suffix.len() - hash.len() - 1;
    format!("{}-{hash}{suffix}", name[..keep].trim_end_matches('-'))
}

pub fn build(
    obj: &ImageImport,
    settings: &WorkerSettings,
    grant: Option<super::policy::Grant>,
    name: &str,
    generation: i64,
    attempt: u32,
) -> Job {
    let spec = &obj.spec;
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_MANAGED_BY.to_string(), MANAGER.to_string());
    labels.insert(LABEL_NAME.to_string(), label_value(&obj.name_any()));
    labels.insert(LABEL_GENERATION.to_string(), generation.to_string());

    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("64Mi".into())),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }];
    if let Some(pvc) = &spec.source.pvc {
        volumes.push(Volume {
            name: "archive".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.claim_name.clone(),
                read_only: Some(true),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "archive".into(),
            mount_path: ARCHIVE_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    // Secrets and ConfigMaps are optional volumes: a missing one leaves an empty directory,
    // which the worker reports by name, instead of a Pod stuck in ContainerCreating.
    let mut secret = |vol: &str, secret_name: &str, dir: &str, items: Option<Vec<KeyToPath>>| {
        volumes.push(Volume {
            name: vol.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name.into()),
                optional: Some(true),
                default_mode: Some(0o400),
                items,
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: vol.into(),
            mount_path: dir.into(),
            read_only: Some(true),
            ..Default::default()
        });
    };
    if let Some(r) = &spec.target.credentials_secret_ref {
        secret("registry-auth", &r.name, REGISTRY_AUTH_DIR, None);
    }
    if let Some(r) = spec.source.url.as_ref().and_then(|u| u.secret_ref.as_ref()) {
        secret("source-auth", &r.name, SOURCE_AUTH_DIR, None);
    }
    let mut config_map = |vol: &str, cm: &str, key: &str, dir: &str| {
        volumes.push(Volume {
            name: vol.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cm.into(),
                optional: Some(true),
                items: Some(vec![KeyToPath {
                    key: key.into(),
                    path: CA_FILE.into(),
                    mode: None,
                }]),
                default_mode: None,
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: vol.into(),
            mount_path: dir.into(),
            read_only: Some(true),
            ..Default::default()
        });
    };
    if let Some(r) = &spec.target.ca_bundle_ref {
        config_map("registry-ca", &r.name, &r.key, REGISTRY_CA_DIR);
    }
    if let Some(r) = spec
        .source
        .url
        .as_ref()
        .and_then(|u| u.ca_bundle_ref.as_ref())
    {
        config_map("source-ca", &r.name, &r.key, SOURCE_CA_DIR);
    }

    let env = vec![
        env(
            "IMAGEIMPORT_NAMESPACE",
            &obj.namespace().unwrap_or_default(),
        ),
        env("IMAGEIMPORT_NAME", &obj.name_any()),
        env("IMAGEIMPORT_GENERATION", &generation.to_string()),
        env("IMAGEIMPORT_ATTEMPT", &attempt.to_string()),
        env("IMAGEIMPORT_JOB", name),
        env(
            "IMAGEIMPORT_SPEC",
            &serde_json::to_string(spec).expect("spec serializes"),
        ),
        env("RUST_LOG", "imageimport=info"),
    ];
    let mut env = env;
    if settings.url_allow_link_local {
        env.push(env_var("IMAGEIMPORT_URL_ALLOW_LINK_LOCAL", "true"));
    }
    if settings.url_deny_private {
        env.push(env_var("IMAGEIMPORT_URL_DENY_PRIVATE", "true"));
    }
    if settings.url_max_bytes > 0 {
        env.push(env_var(
            "IMAGEIMPORT_URL_MAX_BYTES",
            &settings.url_max_bytes.to_string(),
        ));
    }
    if settings.url_timeout_seconds > 0 {
        env.push(env_var(
            "IMAGEIMPORT_URL_TIMEOUT_SECONDS",
            &settings.url_timeout_seconds.to_string(),
        ));
    }
    if let Some(n) = settings.upload_chunk_size.filter(|n| *n > 0) {
        env.push(env_var("IMAGEIMPORT_UPLOAD_CHUNK_SIZE", &n.to_string()));
    }
    // What the policy grants this namespace: every redirect hop must stay among its URL hosts,
    // every repository pushed to must match its patterns.
    if let Some(grant) = grant {
        env.push(env_var(
            "IMAGEIMPORT_URL_ALLOWED_HOSTS",
            &grant.url_hosts.join(","),
        ));
        env.push(env_var(
            "IMAGEIMPORT_ALLOWED_REPOSITORIES",
            &grant.repositories.join(","),
        ));
    }
    let mut limits = BTreeMap::new();
    limits.insert(
        "memory".to_string(),
        Quantity(settings.memory_limit.clone()),
    );
    if let Some(cpu) = &settings.cpu_limit {
        limits.insert("cpu".to_string(), Quantity(cpu.clone()));
    }
    let mut requests = BTreeMap::new();
    requests.insert("cpu".to_string(), Quantity(settings.cpu_request.clone()));
    requests.insert(
        "memory".to_string(),
        Quantity(settings.memory_request.clone()),
    );

    let container = Container {
        name: "worker".into(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        args: Some(vec!["worker".into()]),
        env: Some(env),
        volume_mounts: Some(mounts),
        resources: Some(ResourceRequirements {
            limits: Some(limits),
            requests: Some(requests),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let owner = obj
        .controller_owner_ref(&())
        .expect("ImageImport has a name and uid");
    let mut job = Job {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: obj.namespace(),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // Retries are the controller's: it decides what is transient.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(settings.active_deadline_seconds),
            ttl_seconds_after_finished: Some(settings.ttl_seconds_after_finished),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    service_account_name: Some(settings.service_account.clone()),
                    automount_service_account_token: Some(true),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        fs_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    };
    super::upload::adapt_job(obj, &settings.upload, &mut job);
    job
}

fn env_var(name: &str, value: &str) -> EnvVar {
    env(name, value)
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// Label values are at most 63 characters.
pub fn label_value(s: &str) -> String {
    if s.len() <= 63 {
        s.to_string()
    } else {
        let hash = hex::encode(&Sha256::digest(s.as_bytes())[..4]);
        format!("{}-{hash}", &s[..54])
    }
}

/// Job state as the Job controller reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

pub fn state(job: &Job) -> JobState {
    let Some(status) = &job.status else {
        return JobState::Running;
    };
    let cond = |t: &str| {
        status
            .conditions
            .as_ref()
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
    };
    if cond("Complete") || status.succeeded.unwrap_or(0) > 0 {
        JobState::Succeeded
    } else if cond("Failed") || status.failed.unwrap_or(0) > 0 {
        JobState::Failed
    } else {
        JobState::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::policy::Grant;

    fn env_of(job: &Job) -> BTreeMap<String, String> {
        job.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| Some((e.name, e.value?)))
            .collect()
    }

    #[test]
    fn worker_settings_and_the_policy_grant_reach_the_worker_env() {
        let obj: ImageImport = serde_json::from_value(serde_json::json!({
            "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "generation": 1},
            "spec": {
                "source": {"url": {"url": "https://artifacts.example/web.tar"}},
                "target": {"repository": "registry.example/shop/web"}
            }
        }))
        .unwrap();
        let plain = env_of(&build(
            &obj,
            &WorkerSettings::default(),
            None,
            "web-g1-a1",
            1,
            1,
        ));
        for k in [
            "IMAGEIMPORT_UPLOAD_CHUNK_SIZE",
            "IMAGEIMPORT_URL_TIMEOUT_SECONDS",
            "IMAGEIMPORT_ALLOWED_REPOSITORIES",
            "IMAGEIMPORT_URL_ALLOWED_HOSTS",
        ] {
            assert!(!plain.contains_key(k), "{k} set by default");
        }
        let settings = WorkerSettings {
            upload_chunk_size: Some(64 << 20),
            url_timeout_seconds: 600,
            ..Default::default()
        };
        let grant = Grant {
            url_hosts: vec!["artifacts.example".into()],
            repositories: vec!["registry.example/shop/**".into(), "b/*".into()],
        };
        let env = env_of(&build(&obj, &settings, Some(grant), "web-g1-a1", 1, 1));
        assert_eq!(env["IMAGEIMPORT_UPLOAD_CHUNK_SIZE"], "67108864");
        assert_eq!(env["IMAGEIMPORT_URL_TIMEOUT_SECONDS"], "600");
        assert_eq!(env["IMAGEIMPORT_URL_ALLOWED_HOSTS"], "artifacts.example");
        assert_eq!(
            env["IMAGEIMPORT_ALLOWED_REPOSITORIES"],
            "registry.example/shop/**,b/*"
        );
    }
}
