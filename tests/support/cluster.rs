//! The operator's test cluster: a real kube-apiserver + etcd with the CRD installed, the
//! controller binary running against it, and helpers that play the node for its worker Jobs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imageimport::api::ImageImport;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::archives::{self, Format, ImageSpec};
use super::kube::ApiServer;
use super::registry::Registry;

pub const NS: &str = "shop";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_imageimport")
}

pub struct Cluster {
    pub api: ApiServer,
    pub client: Client,
    pub controller: Option<Child>,
    pub work: tempfile::TempDir,
    /// The controller's /metrics, /healthz, /readyz address.
    pub metrics_addr: String,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP GET on loopback: (status, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

impl Cluster {
    pub async fn start() -> Cluster {
        Cluster::start_with(&[]).await
    }

    /// With extra kube-apiserver flags.
    pub async fn start_with(apiserver_args: &[&str]) -> Cluster {
        let api = ApiServer::start_with_args(apiserver_args);
        let crd = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crds/imageimport.dev_imageimports.yaml"
        ))
        .unwrap();
        api.apply_crd_yaml(&crd).await;
        api.create_namespace(NS).await;
        let client = api.client().await;
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut c = Cluster {
            api,
            client,
            controller: None,
            work: tempfile::tempdir().unwrap(),
            metrics_addr,
        };
        c.start_controller();
        c
    }

    pub fn start_controller(&mut self) {
        let addr = self.metrics_addr.clone();
        let child = self.spawn_controller(&["--metrics-bind-address", &addr], "ctl");
        self.controller = Some(child);
    }

    pub fn spawn_controller(&self, extra: &[&str], identity: &str) -> Child {
        self.spawn_controller_as(extra, identity, &self.api.kubeconfig)
    }

    /// The controller authenticated by `kubeconfig` (e.g. the chart's ServiceAccount).
    pub fn spawn_controller_as(&self, extra: &[&str], identity: &str, kubeconfig: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.path().join(format!("controller-{identity}.log")))
            .unwrap();
        // A limit of 2 unless `extra` sets one (clap refuses a flag given twice).
        let limit: &[&str] = if extra.contains(&"--max-concurrent-imports") {
            &[]
        } else {
            &["--max-concurrent-imports", "2"]
        };
        // A port of its own unless `extra` names one: the default (0.0.0.0:8080) is shared by
        // every test on this machine, and a controller that cannot bind it exits at once.
        let metrics = format!("127.0.0.1:{}", free_port());
        let metrics: Vec<&str> = if extra.contains(&"--metrics-bind-address") {
            Vec::new()
        } else {
            vec!["--metrics-bind-address", &metrics]
        };
        // The test's file servers listen on loopback, where the harness runs its workers.
        Command::new(bin())
            .args(["controller", "--worker-image", "imageimport:test"])
            .arg("--url-allow-loopback")
            .args(limit)
            .args(&metrics)
            .args(extra)
            .env("POD_NAME", identity)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "imageimport=debug")
            .env("IMAGEIMPORT_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn imports(&self) -> Api<ImageImport> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub async fn apply(&self, manifest: serde_json::Value) {
        let name = manifest["metadata"]["name"].as_str().unwrap().to_string();
        self.imports()
            .patch(
                &name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&manifest),
            )
            .await
            .unwrap();
    }

    pub async fn claim(&self, name: &str) {
        self.claim_in(NS, name).await
    }

    /// A claim `name` in namespace `ns`.
    pub async fn claim_in(&self, ns: &str, name: &str) {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}
        }))
        .unwrap();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
        let _ = api.create(&PostParams::default(), &pvc).await;
    }

    /// Wait for the controller to create the Job of `attempt` for `name`'s current generation.
    pub async fn wait_job(&self, name: &str) -> Job {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let obj = self.imports().get(name).await.unwrap();
            if let Some(job_name) = obj.status.as_ref().and_then(|s| s.job_name.clone())
                && let Some(job) = self.jobs().get_opt(&job_name).await.unwrap()
                && job
                    .status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .is_none()
            {
                return job;
            }
            assert!(
                Instant::now() < deadline,
                "no worker Job for {name}: {:?}",
                obj.status
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Play the node for one Job: check its Pod spec, run its container locally, record the
    /// outcome as the kubelet and the Job controller would. `claims` maps claim names to local
    /// folders.
    pub async fn run_job(&self, job: &Job, claims: &BTreeMap<&str, &Path>) -> i32 {
        let job_name = job.name_any();
        let mut cmd = self.prepare_job(job, claims).await;
        let started = k8s_openapi::jiff::Timestamp::now();
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        eprintln!(
            "worker {job_name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let code = out.status.code().unwrap_or(137);
        self.record_job_outcome_in(&job.namespace().unwrap(), &job_name, code, started)
            .await;
        code
    }

    /// The local folder that plays the worker container's file system.
    pub fn node_root(&self, ns: &str, job_name: &str) -> PathBuf {
        self.work.path().join(format!("node-{ns}-{job_name}"))
    }

    /// The Job controller's part: the Job's Pod, made from its template with the labels and
    /// the controller reference the Job controller sets (kept if one exists already).
    /// Returns its name.
    pub async fn create_job_pod(&self, job: &Job) -> String {
        let ns = job.namespace().unwrap();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let uid = job.metadata.uid.clone().unwrap();
        let selector = format!("batch.kubernetes.io/controller-uid={uid}");
        let existing = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap();
        let template = job.spec.clone().unwrap().template;
        let image = template.spec.as_ref().unwrap().containers[0].image.clone();
        let own = existing.items.iter().find(|p| {
            p.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid)
                && p.spec.as_ref().unwrap().containers[0].image == image
        });
        if let Some(p) = own {
            return p.name_any();
        }
        let job_name = job.name_any();
        let mut labels = template.metadata.unwrap().labels.unwrap_or_default();
        for (k, v) in [
            ("batch.kubernetes.io/job-name", job_name.as_str()),
            ("job-name", job_name.as_str()),
            ("batch.kubernetes.io/controller-uid", uid.as_str()),
            ("controller-uid", uid.as_str()),
        ] {
            labels.insert(k.into(), v.into());
        }
        let mut spec = template.spec.unwrap();
        spec.node_name = Some("node-a".into());
        let pod_name = format!("{job_name}-n0d3a");
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(pod_name.clone()),
                labels: Some(labels),
                owner_references: Some(vec![OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "Job".into(),
                    name: job_name,
                    uid,
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        };
        pods.create(&PostParams::default(), &pod).await.unwrap();
        pod_name
    }

    /// The node's part before the container starts: check the Pod spec, create the Job's Pod,
    /// lay out its volumes under a local root, and return the container's command (run as the
    /// worker's account).
    pub async fn prepare_job(&self, job: &Job, claims: &BTreeMap<&str, &Path>) -> Command {
        let job_name = job.name_any();
        let ns = job.namespace().unwrap();
        let spec = job.spec.as_ref().unwrap();
        let pod = spec.template.spec.as_ref().unwrap();
        // What a kubelet would be asked to run.
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("ImageImport", Some(true))
        );
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("imageimport-worker")
        );
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        let container = &pod.containers[0];
        let sc = container.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
            &vec!["ALL".to_string()]
        );
        assert_eq!(
            container.args.as_ref().unwrap(),
            &vec!["worker".to_string()]
        );
        // The report goes to the file only, never the log tail.
        assert_eq!(
            container.termination_message_policy.as_deref(),
            Some("File")
        );
        self.create_job_pod(job).await;

        // The container's file system: volumes at their mount paths under a local root, and
        // the termination-message file the kubelet mounts.
        let root = self.node_root(&ns, &job_name);
        std::fs::create_dir_all(&root).unwrap();
        let message = root.join(
            container
                .termination_message_path
                .as_deref()
                .unwrap()
                .trim_start_matches('/'),
        );
        std::fs::create_dir_all(message.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&message);
        let volumes = pod.volumes.clone().unwrap_or_default();
        for m in container.volume_mounts.clone().unwrap_or_default() {
            let v = volumes.iter().find(|v| v.name == m.name).unwrap();
            let dest = root.join(m.mount_path.trim_start_matches('/'));
            if let Some(pvc) = &v.persistent_volume_claim {
                assert_eq!(pvc.read_only, Some(true), "claims are mounted read-only");
                assert_eq!(m.read_only, Some(true));
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                let local = claims
                    .get(pvc.claim_name.as_str())
                    .unwrap_or_else(|| panic!("no local folder for claim {}", pvc.claim_name));
                std::os::unix::fs::symlink(local, &dest).unwrap();
            } else if let Some(s) = &v.secret {
                assert_eq!(s.optional, Some(true));
                std::fs::create_dir_all(&dest).unwrap();
                let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
                if let Some(secret) = api.get_opt(s.secret_name.as_ref().unwrap()).await.unwrap() {
                    for (k, val) in secret.data.unwrap_or_default() {
                        std::fs::write(dest.join(k), val.0).unwrap();
                    }
                }
            } else if let Some(cm) = &v.config_map {
                std::fs::create_dir_all(&dest).unwrap();
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
                if let Some(found) = api.get_opt(&cm.name).await.unwrap() {
                    let data = found.data.unwrap_or_default();
                    for item in cm.items.clone().unwrap_or_default() {
                        if let Some(val) = data.get(&item.key) {
                            std::fs::write(dest.join(&item.path), val).unwrap();
                        }
                    }
                }
            } else if let Some(p) = &v.projected {
                // The kubelet's projected ServiceAccount token, for its audience.
                std::fs::create_dir_all(&dest).unwrap();
                for src in p.sources.clone().unwrap_or_default() {
                    if let Some(t) = src.service_account_token {
                        let aud = t.audience.clone().unwrap_or_default();
                        let token = self
                            .api
                            .service_account_token_for(
                                NS,
                                pod.service_account_name.as_deref().unwrap(),
                                &[&aud],
                            )
                            .await;
                        std::fs::write(dest.join(&t.path), token).unwrap();
                    }
                }
            } else {
                std::fs::create_dir_all(&dest).unwrap();
            }
        }
        // Run as the worker's ServiceAccount: proves the Role the controller made suffices.
        let kubeconfig = self
            .api
            .service_account_kubeconfig(&ns, "imageimport-worker")
            .await;
        let mut cmd = Command::new(bin());
        cmd.args(container.args.clone().unwrap());
        // The kubelet expands `$(VAR)` (earlier variables) and `$$` in env values.
        let mut defined: Vec<(String, String)> = Vec::new();
        for e in container.env.clone().unwrap_or_default() {
            let value = kubelet_expand(&e.value.unwrap_or_default(), &defined);
            cmd.env(&e.name, &value);
            defined.push((e.name, value));
        }
        cmd.env("IMAGEIMPORT_ROOT", &root)
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", &root);
        cmd
    }

    /// What the kubelet and then the Job controller write when the worker container exited
    /// with `exit_code`: the Pod's container status with the termination message (the file the
    /// worker wrote, at most 4096 bytes, as the kubelet reads it), then the Job's outcome.
    pub async fn record_job_outcome(
        &self,
        job_name: &str,
        exit_code: i32,
        started: k8s_openapi::jiff::Timestamp,
    ) {
        self.record_job_outcome_in(NS, job_name, exit_code, started)
            .await
    }

    /// [`Cluster::record_job_outcome`] for a Job in namespace `ns`.
    pub async fn record_job_outcome_in(
        &self,
        ns: &str,
        job_name: &str,
        exit_code: i32,
        started: k8s_openapi::jiff::Timestamp,
    ) {
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), ns);
        let job = jobs.get(job_name).await.unwrap();
        let pod_name = self.create_job_pod(&job).await;
        let path = job
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .termination_message_path
            .clone()
            .unwrap();
        let mut message = std::fs::read(
            self.node_root(ns, job_name)
                .join(path.trim_start_matches('/')),
        )
        .unwrap_or_default();
        message.truncate(4096);
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let started = started.to_string();
        let reason = match exit_code {
            0 => "Completed",
            137 => "OOMKilled",
            _ => "Error",
        };
        let mut terminated = json!({"exitCode": exit_code, "reason": reason,
            "startedAt": started, "finishedAt": now, "containerID": format!("containerd://{job_name}")});
        if !message.is_empty() {
            terminated["message"] = json!(String::from_utf8_lossy(&message));
        }
        let phase = if exit_code == 0 {
            "Succeeded"
        } else {
            "Failed"
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        pods.patch_status(
            &pod_name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": phase, "containerStatuses": [{
                "name": "worker", "image": "imageimport:test", "imageID": "", "ready": false,
                "restartCount": 0, "started": false, "state": {"terminated": terminated}}]}})),
        )
        .await
        .unwrap_or_else(|e| panic!("record the end of Pod {pod_name}: {e}"));
        let status = if exit_code == 0 {
            json!({"startTime": started, "completionTime": now, "succeeded": 1, "active": 0, "ready": 0, "terminating": 0,
                   "conditions": [
                       {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": now, "lastProbeTime": now},
                       {"type": "Complete", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": now, "lastProbeTime": now}]})
        } else {
            json!({"startTime": started, "failed": 1, "active": 0, "ready": 0, "terminating": 0,
                   "conditions": [
                       {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": now, "lastProbeTime": now},
                       {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": now, "lastProbeTime": now}]})
        };
        jobs.patch_status(
            job_name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": status })),
        )
        .await
        .unwrap_or_else(|e| panic!("record outcome of Job {job_name}: {e}"));
    }

    /// Wait until the Ready condition has `status` (and `reason`, if given).
    pub async fn wait_ready(&self, name: &str, status: &str, reason: Option<&str>) -> ImageImport {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let obj = self.imports().get(name).await.unwrap();
            let ready = ready(&obj);
            if let Some((s, r, _)) = &ready
                && s == status
                && reason.is_none_or(|want| want == r)
                && obj.status.as_ref().and_then(|s| s.observed_generation)
                    == obj.metadata.generation
            {
                return obj;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never became Ready={status} {reason:?}; now {ready:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Delete namespace `ns` as the namespace controller would (none runs here): every object
    /// the controller, the workers and the tests make in it is deleted (claims' protection
    /// finalizer removed, as the controller-manager would once no Pod uses them), then the
    /// namespace is finalized and waited out, so a namespace of that name can be created again.
    pub async fn delete_namespace(&self, ns: &str) {
        use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
        use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
        use kube::api::DeleteParams;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        namespaces
            .delete(ns, &DeleteParams::default())
            .await
            .unwrap();
        let (dp, lp) = (DeleteParams::background(), ListParams::default());
        let c = &self.client;
        Api::<ImageImport>::namespaced(c.clone(), ns)
            .delete_collection(&dp, &lp)
            .await
            .unwrap();
        Api::<Job>::namespaced(c.clone(), ns)
            .delete_collection(&dp, &lp)
            .await
            .unwrap();
        Api::<Pod>::namespaced(c.clone(), ns)
            .delete_collection(&dp, &lp)
            .await
            .unwrap();
        Api::<Secret>::namespaced(c.clone(), ns)
            .delete_collection(&dp, &lp)
            .await
            .unwrap();
        Api::<ConfigMap>::namespaced(c.clone(), ns)
            .delete_collection(&dp, &lp)
            .await
            .unwrap();
        Api::<ServiceAccount>::namespaced(c.clone(), ns)
            .delete_collection(&dp, &lp)
            .await
            .unwrap();
        Api::<Role>::namespaced(c.clone(), ns)
            .delete_collection(&dp, &lp)
            .await
            .unwrap();
        Api::<RoleBinding>::namespaced(c.clone(), ns)
            .delete_collection(&dp, &lp)
            .await
            .unwrap();
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), ns);
        claims.delete_collection(&dp, &lp).await.unwrap();
        for pvc in claims.list(&lp).await.unwrap().items {
            let _ = claims
                .patch(
                    &pvc.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
                )
                .await;
        }
        let mut finalized = namespaces.get(ns).await.unwrap();
        finalized.spec = Some(Default::default());
        namespaces
            .replace_subresource("finalize", ns, &PostParams::default(), &finalized)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while namespaces.get_opt(ns).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "namespace {ns} was not deleted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn jobs_for(&self, name: &str) -> Vec<Job> {
        self.jobs()
            .list(&ListParams::default().labels(&format!("imageimport.dev/name={name}")))
            .await
            .unwrap()
            .items
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_controller();
    }
}

pub fn ready(obj: &ImageImport) -> Option<(String, String, String)> {
    obj.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

pub fn archive_dir(c: &Cluster, name: &str, spec: ImageSpec) -> (PathBuf, archives::Built) {
    let dir = c.work.path().join(format!("claim-{name}"));
    std::fs::create_dir_all(dir.join("web")).unwrap();
    let built = archives::build(&Format::DockerLegacy, &[spec]);
    std::fs::write(dir.join("web/web-1.4.tar"), &built.bytes).unwrap();
    (dir, built)
}

pub fn layers(seed: u64) -> Vec<archives::Layer> {
    vec![
        archives::layer(seed, 3, 30_000),
        archives::layer(seed + 1, 1, 9_000),
    ]
}

pub fn pvc_import(name: &str, claim: &str, repo: &str, tags: &[&str]) -> serde_json::Value {
    json!({
        "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "source": {"pvc": {"claimName": claim, "path": "web/web-1.4.tar"}},
            "target": {"repository": repo, "tags": tags, "insecure": true}
        }
    })
}

/// Sum of `apiserver_request_total` samples (all verbs and resources) from the API server.
pub async fn apiserver_requests(client: &Client) -> f64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Applies `n` PVC imports `<prefix>-<i>` of the claim `<prefix>`, each to its own repository
/// `<prefix>/app<i>:1`.
pub async fn apply_numbered_imports(c: &Cluster, reg: &Registry, prefix: &str, n: usize) {
    for i in 0..n {
        c.apply(pvc_import(
            &format!("{prefix}-{i}"),
            prefix,
            &reg.reference(&format!("{prefix}/app{i}")),
            &["1"],
        ))
        .await;
    }
}

/// The Helm chart's ServiceAccount and RBAC objects for the controller (release `imageimport` in
/// `imageimport-system`, default values) created for real; a kubeconfig of that ServiceAccount.
pub async fn install_chart_rbac(c: &Cluster) -> PathBuf {
    install_chart_identity(c, &[], "the controller's").await
}

/// The upload service's RBAC objects and ServiceAccount from the chart (`upload.enabled`),
/// created for real; a kubeconfig of that ServiceAccount.
pub async fn install_upload_rbac(c: &Cluster) -> PathBuf {
    install_chart_identity(
        c,
        &[
            "--set",
            "upload.enabled=true",
            "--show-only",
            "templates/upload-rbac.yaml",
            "--show-only",
            "templates/upload-serviceaccount.yaml",
        ],
        "the upload service's",
    )
    .await
}

/// `helm template` of the chart with `helm_args`, its ServiceAccount and RBAC objects applied
/// as helm would; a kubeconfig of the ServiceAccount (`whose` names it in a failure).
async fn install_chart_identity(c: &Cluster, helm_args: &[&str], whose: &str) -> PathBuf {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use kube::api::{ApiResource, DynamicObject};
    use serde::Deserialize as _;
    const RELEASE_NS: &str = "imageimport-system";
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(super::kube::testbin_dir().join("helm"))
        .args([
            "template",
            "imageimport",
            concat!(env!("CARGO_MANIFEST_DIR"), "/charts/imageimport"),
            "--namespace",
            RELEASE_NS,
        ])
        .args(helm_args)
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .expect("run helm (hack/build-test-bins.sh builds it)");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.api.create_namespace(RELEASE_NS).await;
    let mut account = None;
    for doc in serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout)) {
        let o = serde_json::Value::deserialize(doc).unwrap();
        let resource = match o["kind"].as_str() {
            Some("ServiceAccount") => ApiResource::erase::<ServiceAccount>(&()),
            Some("ClusterRole") => ApiResource::erase::<ClusterRole>(&()),
            Some("ClusterRoleBinding") => ApiResource::erase::<ClusterRoleBinding>(&()),
            Some("Role") => ApiResource::erase::<Role>(&()),
            Some("RoleBinding") => ApiResource::erase::<RoleBinding>(&()),
            _ => continue,
        };
        let name = o["metadata"]["name"].as_str().unwrap();
        if o["kind"] == "ServiceAccount" {
            account = Some(name.to_string());
        }
        let api: Api<DynamicObject> = match o["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(c.client.clone(), ns, &resource),
            None => Api::all_with(c.client.clone(), &resource),
        };
        api.patch(name, &PatchParams::apply("helm").force(), &Patch::Apply(&o))
            .await
            .unwrap_or_else(|e| panic!("apply {} {name}: {e}", o["kind"]));
    }
    let account = account.unwrap_or_else(|| panic!("the chart renders {whose} ServiceAccount"));
    c.api.service_account_kubeconfig(RELEASE_NS, &account).await
}

/// Requests the API server's max-in-flight filter answered with 429, by `verb resource/subresource`
/// (`apiserver_request_terminations_total{code="429"}`: `apiserver_dropped_requests_total` is
/// hidden since Kubernetes 1.31).
pub async fn apiserver_429s(client: &Client) -> BTreeMap<String, f64> {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.unwrap();
    let mut by = BTreeMap::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_terminations_total{"))
        .filter(|l| l.contains(r#"code="429""#))
    {
        let label = |k: &str| {
            l.split(&format!("{k}=\""))
                .nth(1)
                .and_then(|v| v.split('"').next())
                .unwrap_or("")
        };
        let key = format!(
            "{} {}/{}",
            label("verb"),
            label("resource"),
            label("subresource")
        );
        let n: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *by.entry(key).or_insert(0.0) += n;
    }
    by
}

/// kube-apiserver flags for an audit log of every request's metadata, written under `dir`;
/// returns the flags and the log's path.
pub fn audit_flags(dir: &Path) -> (Vec<String>, PathBuf) {
    let policy = dir.join("audit-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n",
    )
    .unwrap();
    let log = dir.join("audit.log");
    (
        vec![
            format!("--audit-policy-file={}", policy.display()),
            format!("--audit-log-path={}", log.display()),
        ],
        log,
    )
}

/// Requests in an API server audit log, by user.
pub fn audited_requests(log: &Path) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap().lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        if e["stage"] == "ResponseComplete" {
            let user = e["user"]["username"].as_str().unwrap_or("").to_string();
            *by.entry(user).or_insert(0) += 1;
        }
    }
    by
}

/// 429 answers in an API server audit log, by `user: verb resource/subresource`.
pub fn audited_429s(log: &Path) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap().lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        if e["stage"] != "ResponseComplete" || e["responseStatus"]["code"] != 429 {
            continue;
        }
        let key = format!(
            "{}: {} {}/{}",
            e["user"]["username"].as_str().unwrap_or(""),
            e["verb"].as_str().unwrap_or(""),
            e["objectRef"]["resource"].as_str().unwrap_or(""),
            e["objectRef"]["subresource"].as_str().unwrap_or(""),
        );
        *by.entry(key).or_insert(0) += 1;
    }
    by
}

pub fn total(by: &BTreeMap<String, f64>) -> f64 {
    by.values().sum()
}

/// The kubelet's expansion of an env value: `$$` is `$`, `$(NAME)` the value of an earlier
/// variable (left as written when there is none).
pub fn kubelet_expand(value: &str, defined: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match defined.iter().rev().find(|(n, _)| n == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[i..i + 2 + end + 1]),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The upload service binary with the chart's identity (`install_upload_rbac`), on a free
/// loopback port, once it answers `/healthz`; its process and base URL. No kubelet here binds
/// tokens to Pods, hence `--allow-unbound-worker-tokens`.
pub async fn spawn_upload_service(c: &Cluster) -> (Child, String) {
    spawn_upload_service_with(c, &[]).await
}

/// [`spawn_upload_service`] with further flags (e.g. `--policy-file`).
pub async fn spawn_upload_service_with(c: &Cluster, extra: &[&str]) -> (Child, String) {
    let kubeconfig = install_upload_rbac(c).await;
    let port = free_port();
    let log = std::fs::File::create(c.work.path().join("upload-server.log")).unwrap();
    let service = Command::new(bin())
        .args([
            "upload-server",
            "--bind-address",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--allow-unbound-worker-tokens")
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "imageimport=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&format!("127.0.0.1:{port}"), "/healthz").is_none() {
        assert!(
            Instant::now() < deadline,
            "the upload service never listened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (service, format!("http://127.0.0.1:{port}"))
}

/// A Role `name` in NS with `rules`, bound to the ServiceAccount `name` of NS.
pub async fn namespace_role(c: &Cluster, name: &str, rules: serde_json::Value) {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let role: Role = serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": NS}, "rules": rules}),
    )
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NS}]
    }))
    .unwrap();
    let pp = PatchParams::apply("test").force();
    Api::<Role>::namespaced(c.client.clone(), NS)
        .patch(name, &pp, &Patch::Apply(&role))
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(c.client.clone(), NS)
        .patch(name, &pp, &Patch::Apply(&binding))
        .await
        .unwrap();
}
