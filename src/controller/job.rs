//! The worker Job: one per (ImageImport, generation, attempt), named deterministically so a
//! restarted controller finds the Job it created instead of starting a second import.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, KeyToPath,
    LocalObjectReference, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    Toleration, Volume, VolumeMount,
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
/// The worker's report (`report.rs`): the kubelet copies this file into the Pod's status.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

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
    pub url_allow_loopback: bool,
    pub url_deny_private: bool,
    pub url_max_bytes: u64,
    /// Longest a URL download may take, in seconds (0: only the Job's deadline bounds it).
    pub url_timeout_seconds: u64,
    /// Bytes per blob upload request (see `imageimport push --upload-chunk-size`); None: one
    /// request per blob.
    pub upload_chunk_size: Option<u64>,
    /// What the cluster needs in every worker Pod (`--worker-pod`).
    pub pod: WorkerPodSettings,
    /// Upload sources: where the upload service is, and the expiry.
    pub upload: super::upload::UploadSettings,
}

/// Worker Pod settings a cluster may need (`--worker-pod`, JSON; the chart's
/// `controller.worker.pod`): annotations (e.g. to keep a service mesh's sidecar out, which
/// would keep the Job running), scheduling, pull Secrets of the worker image, and extra
/// environment such as `HTTPS_PROXY` (used for registry connections; URL sources never go
/// through a proxy: the URL guard resolves and checks every address itself).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerPodSettings {
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    #[serde(default)]
    pub priority_class_name: Option<String>,
    #[serde(default)]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Plain values only; names starting with `IMAGEIMPORT_` are the worker's inputs and are
    /// refused.
    #[serde(default)]
    pub env: Vec<EnvVar>,
}

impl WorkerPodSettings {
    pub fn parse(json: &str) -> Result<WorkerPodSettings, String> {
        let s: WorkerPodSettings =
            serde_json::from_str(json).map_err(|e| format!("--worker-pod: {e}"))?;
        for e in &s.env {
            if e.name.starts_with("IMAGEIMPORT_") || e.value_from.is_some() {
                return Err(format!(
                    "--worker-pod: env {}: IMAGEIMPORT_* variables and valueFrom are not allowed",
                    e.name
                ));
            }
        }
        Ok(s)
    }
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
            url_allow_loopback: false,
            url_deny_private: false,
            url_max_bytes: 0,
            url_timeout_seconds: 0,
            upload_chunk_size: None,
            pod: WorkerPodSettings::default(),
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
    // Cut where the name has a character boundary, and never end a part in `-` or `.`: the
    // result must stay a DNS-1123 subdomain ("a.-b" is not).
    let cut = name.get(..keep).unwrap_or(&name);
    format!("{}-{hash}{suffix}", cut.trim_end_matches(['-', '.']))
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
        // `$` doubled: the kubelet expands `$(VAR)` in env values and turns `$$` into `$`, so
        // a path or URL holding `$(...)` would otherwise reach the worker changed.
        env(
            "IMAGEIMPORT_SPEC",
            &serde_json::to_string(spec)
                .expect("spec serializes")
                .replace('$', "$$"),
        ),
        env("RUST_LOG", "imageimport=info"),
    ];
    let mut env = env;
    if settings.url_allow_link_local {
        env.push(env_var("IMAGEIMPORT_URL_ALLOW_LINK_LOCAL", "true"));
    }
    if settings.url_allow_loopback {
        env.push(env_var("IMAGEIMPORT_URL_ALLOW_LOOPBACK", "true"));
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
    env.extend(settings.pod.env.iter().cloned());
    // What the policy grants this namespace: every redirect hop must stay among its URL hosts,
    // every repository pushed to must match its patterns. JSON lists: a pattern may hold a
    // comma (`{a,b}` alternation); `$` doubled as in the spec.
    if let Some(grant) = grant {
        let list = |v: &[String]| {
            serde_json::to_string(v)
                .expect("serializes")
                .replace('$', "$$")
        };
        env.push(env_var(
            "IMAGEIMPORT_URL_ALLOWED_HOSTS",
            &list(&grant.url_hosts),
        ));
        env.push(env_var(
            "IMAGEIMPORT_ALLOWED_REPOSITORIES",
            &list(&grant.repositories),
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
        name: super::outcome::WORKER_CONTAINER.into(),
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
        // The file only, never the log tail: whatever an archive makes the worker print must
        // not be read as its report.
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("File".into()),
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
                    annotations: (!settings.pod.annotations.is_empty())
                        .then(|| settings.pod.annotations.clone()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    node_selector: (!settings.pod.node_selector.is_empty())
                        .then(|| settings.pod.node_selector.clone()),
                    tolerations: (!settings.pod.tolerations.is_empty())
                        .then(|| settings.pod.tolerations.clone()),
                    priority_class_name: settings
                        .pod
                        .priority_class_name
                        .clone()
                        .filter(|p| !p.is_empty()),
                    image_pull_secrets: (!settings.pod.image_pull_secrets.is_empty())
                        .then(|| settings.pod.image_pull_secrets.clone()),
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

    fn named(name: &str) -> ImageImport {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
            "metadata": {"name": name, "namespace": "shop", "uid": "u1", "generation": 1},
            "spec": {"source": {"url": {"url": "https://a.example/x.tar"}},
                     "target": {"repository": "r.example/x"}}
        }))
        .unwrap()
    }

    #[test]
    fn worker_pod_settings_reach_the_pod_template() {
        let pod = WorkerPodSettings::parse(
            r#"{"annotations": {"sidecar.istio.io/inject": "false"},
                "nodeSelector": {"pool": "imports"},
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                "priorityClassName": "batch-low",
                "imagePullSecrets": [{"name": "pull"}],
                "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}]}"#,
        )
        .unwrap();
        let settings = WorkerSettings {
            pod,
            ..Default::default()
        };
        let job = build(&named("web"), &settings, None, "web-g1-a1", 1, 1);
        let t = job.spec.unwrap().template;
        assert_eq!(
            t.metadata.unwrap().annotations.unwrap()["sidecar.istio.io/inject"],
            "false"
        );
        let spec = t.spec.unwrap();
        assert_eq!(spec.node_selector.unwrap()["pool"], "imports");
        assert_eq!(
            spec.tolerations.unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        assert_eq!(spec.priority_class_name.as_deref(), Some("batch-low"));
        assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "pull");
        let env = spec.containers[0].env.clone().unwrap();
        assert!(env.iter().any(|e| e.name == "HTTPS_PROXY"));
        for bad in [
            r#"{"env": [{"name": "IMAGEIMPORT_SPEC", "value": "{}"}]}"#,
            r#"{"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}"#,
            r#"{"hostNetwork": true}"#,
        ] {
            assert!(WorkerPodSettings::parse(bad).is_err(), "{bad}");
        }
    }

    /// Whatever the name and suffix, a Job name is a DNS-1123 label-sized subdomain.
    #[test]
    fn job_names_stay_valid_when_shortened() {
        let subdomain = |s: &str| {
            s.len() <= 63
                && s.split('.').all(|part| {
                    !part.is_empty()
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && !part.starts_with('-')
                        && !part.ends_with('-')
                })
        };
        // The review's case: the cut lands right after a '.'.
        let review = format!("{}.{}", "a".repeat(47), "b".repeat(20));
        for name in [
            review.as_str(),
            &format!("{}-{}", "a".repeat(40), "b".repeat(40)),
            "web",
        ] {
            for (g, a) in [(1, 1), (12, 3), (123456, 99)] {
                let j = job_name(&named(name), g, a);
                assert!(subdomain(&j), "{name} g{g} a{a}: {j}");
            }
        }
        for cut in 30..60 {
            let name = format!("{}.{}", "a".repeat(cut), "b".repeat(70 - cut));
            let j = job_name(&named(&name), 7, 2);
            assert!(subdomain(&j), "{name}: {j}");
        }
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
            "IMAGEIMPORT_URL_ALLOW_LOOPBACK",
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
            repositories: vec!["registry.example/{shop,team}/**".into(), "b/*".into()],
        };
        let env = env_of(&build(&obj, &settings, Some(grant), "web-g1-a1", 1, 1));
        assert_eq!(env["IMAGEIMPORT_UPLOAD_CHUNK_SIZE"], "67108864");
        assert_eq!(env["IMAGEIMPORT_URL_TIMEOUT_SECONDS"], "600");
        assert_eq!(
            env["IMAGEIMPORT_URL_ALLOWED_HOSTS"],
            r#"["artifacts.example"]"#
        );
        // The alternation's comma stays inside its pattern.
        assert_eq!(
            env["IMAGEIMPORT_ALLOWED_REPOSITORIES"],
            r#"["registry.example/{shop,team}/**","b/*"]"#
        );
    }
}
