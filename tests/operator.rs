//! The operator end to end, on a real kube-apiserver + etcd and a real registry.
//!
//! No kubelet or Job controller runs here: where a Pod would run, the test plays the node.
//! It checks the worker Job's spec (claim mounted read-only, security context, owner), runs
//! the container's command locally with the claim's mount mapped to a local folder and the
//! Secret volumes written out, as the worker's own ServiceAccount, and then records the
//! outcome on the Job's status as the Job controller would.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imageimport::api::ImageImport;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::archives::{self, Format, ImageSpec, hostile};
use support::kube::ApiServer;
use support::registry::{Registry, skopeo};

const NS: &str = "shop";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_imageimport")
}

struct Cluster {
    api: ApiServer,
    client: Client,
    controller: Option<Child>,
    work: tempfile::TempDir,
    /// The controller's /metrics, /healthz, /readyz address.
    metrics_addr: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP GET on loopback: (status, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
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
    async fn start() -> Cluster {
        Cluster::start_with(&[]).await
    }

    /// With extra kube-apiserver flags.
    async fn start_with(apiserver_args: &[&str]) -> Cluster {
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

    fn start_controller(&mut self) {
        let addr = self.metrics_addr.clone();
        let child = self.spawn_controller(&["--metrics-bind-address", &addr], "ctl");
        self.controller = Some(child);
    }

    fn spawn_controller(&self, extra: &[&str], identity: &str) -> Child {
        self.spawn_controller_as(extra, identity, &self.api.kubeconfig)
    }

    /// The controller authenticated by `kubeconfig` (e.g. the chart's ServiceAccount).
    fn spawn_controller_as(&self, extra: &[&str], identity: &str, kubeconfig: &Path) -> Child {
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
        Command::new(bin())
            .args(["controller", "--worker-image", "imageimport:test"])
            .args(limit)
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

    fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn imports(&self) -> Api<ImageImport> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn apply(&self, manifest: serde_json::Value) {
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

    async fn claim(&self, name: &str) {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}
        }))
        .unwrap();
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), NS);
        let _ = api.create(&PostParams::default(), &pvc).await;
    }

    /// Wait for the controller to create the Job of `attempt` for `name`'s current generation.
    async fn wait_job(&self, name: &str) -> Job {
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
    /// outcome as the Job controller would. `claims` maps claim names to local folders.
    async fn run_job(&self, job: &Job, claims: &BTreeMap<&str, &Path>) -> i32 {
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
        self.record_job_outcome(&job_name, code == 0, started).await;
        code
    }

    /// The node's part before the container starts: check the Pod spec, lay out its volumes
    /// under a local root, and return the container's command (run as the worker's account).
    async fn prepare_job(&self, job: &Job, claims: &BTreeMap<&str, &Path>) -> Command {
        let job_name = job.name_any();
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

        // The container's file system: volumes at their mount paths under a local root.
        let root = self.work.path().join(format!("node-{job_name}"));
        std::fs::create_dir_all(&root).unwrap();
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
                let api: Api<Secret> = Api::namespaced(self.client.clone(), NS);
                if let Some(secret) = api.get_opt(s.secret_name.as_ref().unwrap()).await.unwrap() {
                    for (k, val) in secret.data.unwrap_or_default() {
                        std::fs::write(dest.join(k), val.0).unwrap();
                    }
                }
            } else if let Some(cm) = &v.config_map {
                std::fs::create_dir_all(&dest).unwrap();
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), NS);
                if let Some(found) = api.get_opt(&cm.name).await.unwrap() {
                    let data = found.data.unwrap_or_default();
                    for item in cm.items.clone().unwrap_or_default() {
                        if let Some(val) = data.get(&item.key) {
                            std::fs::write(dest.join(&item.path), val).unwrap();
                        }
                    }
                }
            } else {
                std::fs::create_dir_all(&dest).unwrap();
            }
        }
        // Run as the worker's ServiceAccount: proves the Role the controller made suffices.
        let kubeconfig = self
            .api
            .service_account_kubeconfig(NS, "imageimport-worker")
            .await;
        let mut cmd = Command::new(bin());
        cmd.args(container.args.clone().unwrap());
        for e in container.env.clone().unwrap_or_default() {
            cmd.env(e.name, e.value.unwrap_or_default());
        }
        cmd.env("IMAGEIMPORT_ROOT", &root)
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", &root);
        cmd
    }

    /// What the Job controller writes when its Pod ends.
    async fn record_job_outcome(
        &self,
        job_name: &str,
        succeeded: bool,
        started: k8s_openapi::jiff::Timestamp,
    ) {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let started = started.to_string();
        let status = if succeeded {
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
        self.jobs()
            .patch_status(
                job_name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
            .unwrap_or_else(|e| panic!("record outcome of Job {job_name}: {e}"));
    }

    /// Wait until the Ready condition has `status` (and `reason`, if given).
    async fn wait_ready(&self, name: &str, status: &str, reason: Option<&str>) -> ImageImport {
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

    async fn jobs_for(&self, name: &str) -> Vec<Job> {
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

fn ready(obj: &ImageImport) -> Option<(String, String, String)> {
    obj.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn archive_dir(c: &Cluster, name: &str, spec: ImageSpec) -> (PathBuf, archives::Built) {
    let dir = c.work.path().join(format!("claim-{name}"));
    std::fs::create_dir_all(dir.join("web")).unwrap();
    let built = archives::build(&Format::DockerLegacy, &[spec]);
    std::fs::write(dir.join("web/web-1.4.tar"), &built.bytes).unwrap();
    (dir, built)
}

fn layers(seed: u64) -> Vec<archives::Layer> {
    vec![
        archives::layer(seed, 3, 30_000),
        archives::layer(seed + 1, 1, 9_000),
    ]
}

fn pvc_import(name: &str, claim: &str, repo: &str, tags: &[&str]) -> serde_json::Value {
    json!({
        "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "source": {"pvc": {"claimName": claim, "path": "web/web-1.4.tar"}},
            "target": {"repository": repo, "tags": tags, "insecure": true}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pvc_and_url_sources_reach_ready_and_spec_changes_reimport() {
    let c = Cluster::start().await;
    let reg = Registry::plain();

    // PVC source.
    let (dir, built) = archive_dir(&c, "deliveries", ImageSpec::new(&["web:1.4"], layers(3000)));
    c.claim("deliveries").await;
    c.apply(pvc_import(
        "web",
        "deliveries",
        &reg.reference("shop/web"),
        &["1.4", "stable"],
    ))
    .await;
    let job = c.wait_job("web").await;
    assert_eq!(
        c.run_job(&job, &BTreeMap::from([("deliveries", dir.as_path())]))
            .await,
        0
    );
    let obj = c.wait_ready("web", "True", Some("Succeeded")).await;
    let st = obj.status.clone().unwrap();
    assert_eq!(
        st.digest.as_deref(),
        Some(skopeo::manifest_digest(&reg, "shop/web:1.4").as_str())
    );
    assert_eq!(
        skopeo::manifest_digest(&reg, "shop/web:stable"),
        skopeo::manifest_digest(&reg, "shop/web:1.4")
    );
    assert_eq!(
        st.image_id.as_deref(),
        Some(built.images[0].config_digest.as_str())
    );
    assert_eq!(
        skopeo::pull_diff_ids(&reg, "shop/web:1.4"),
        built.images[0].diff_ids
    );
    assert_eq!(st.pushed.len(), 2);
    assert_eq!(st.attempts, 1);
    assert!(
        st.progress
            .as_ref()
            .is_some_and(|p| p.bytes_done > 0 && p.bytes_done == p.bytes_total),
        "{:?}",
        st.progress
    );
    for t in ["Verified", "SourceReady"] {
        assert!(
            st.conditions
                .iter()
                .any(|x| x.type_ == t && x.status == "True"),
            "{t}: {:?}",
            st.conditions
        );
    }
    // Kubernetes Events on each transition.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), NS);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web"))
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(
        reasons.contains(&"JobCreated".to_string()) && reasons.contains(&"Succeeded".to_string()),
        "{reasons:?}"
    );
    // The same generation is never imported twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.jobs_for("web").await.len(), 1);

    // A spec change is a new generation: a new Job, a new import.
    let (dir2, built2) = archive_dir(
        &c,
        "deliveries2",
        ImageSpec::new(&["web:1.5"], layers(3100)),
    );
    c.claim("deliveries2").await;
    c.apply(pvc_import(
        "web",
        "deliveries2",
        &reg.reference("shop/web"),
        &["1.5"],
    ))
    .await;
    let job2 = c.wait_job("web").await;
    assert_ne!(job2.name_any(), job.name_any());
    assert!(job2.name_any().contains("-g2-"), "{}", job2.name_any());
    assert_eq!(
        c.run_job(&job2, &BTreeMap::from([("deliveries2", dir2.as_path())]))
            .await,
        0
    );
    let obj = c.wait_ready("web", "True", Some("Succeeded")).await;
    assert_eq!(
        obj.status.unwrap().image_id.as_deref(),
        Some(built2.images[0].config_digest.as_str())
    );
    assert_eq!(
        skopeo::config(&reg, "shop/web:1.5").1,
        built2.images[0].config_digest
    );

    // URL source, served on loopback.
    let built3 = archives::build(
        &Format::Docker25Oci,
        &[ImageSpec::new(&["api:2"], layers(3200))],
    );
    let gz = archives::compress_whole(&built3.bytes, archives::Comp::Gzip);
    let (url, server) = support::http::serve_once("/artifacts/api-2.tar.gz", gz);
    c.apply(json!({
        "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
        "metadata": {"name": "api", "namespace": NS},
        "spec": {"source": {"url": {"url": url}}, "target": {"repository": reg.reference("shop/api"), "insecure": true}}
    }))
    .await;
    let job3 = c.wait_job("api").await;
    assert!(
        job3.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .all(|v| v.persistent_volume_claim.is_none())
    );
    assert_eq!(c.run_job(&job3, &BTreeMap::new()).await, 0);
    server.join().unwrap();
    let obj = c.wait_ready("api", "True", Some("Succeeded")).await;
    assert_eq!(
        obj.status.unwrap().digest.unwrap(),
        skopeo::manifest_digest(&reg, "shop/api:2")
    );

    // The controller's endpoints: health, readiness, and metrics of what it saw.
    assert_eq!(
        http_get(&c.metrics_addr, "/healthz").map(|r| r.0),
        Some(200)
    );
    assert_eq!(http_get(&c.metrics_addr, "/readyz").map(|r| r.0), Some(200));
    let (_, metrics) = http_get(&c.metrics_addr, "/metrics").unwrap();
    assert!(
        metrics.contains(r#"imageimport_imports_total{result="succeeded",reason="Succeeded"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("imageimport_import_duration_seconds_count 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("imageimport_imports_in_flight 0"),
        "{metrics}"
    );

    // Deleting the resource: its Job carries the owner reference the garbage collector
    // follows (the harness runs no garbage collector; the test deletes as it would).
    let uid = c.imports().get("api").await.unwrap().uid().unwrap();
    c.imports()
        .delete("api", &DeleteParams::default())
        .await
        .unwrap();
    for j in c.jobs_for("api").await {
        let owners = j.metadata.owner_references.clone().unwrap_or_default();
        assert!(
            owners
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true))
        );
        c.jobs()
            .delete(&j.name_any(), &DeleteParams::background())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_explain_themselves_and_bad_specs_are_refused() {
    let c = Cluster::start().await;
    let reg = Registry::plain();

    // The API server refuses a spec with both sources (CEL rule), before the controller sees it.
    let both = json!({
        "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
        "metadata": {"name": "both", "namespace": NS},
        "spec": {"source": {"url": {"url": "http://127.0.0.1:1/x.tar"}, "pvc": {"claimName": "c", "path": "x.tar"}},
                 "target": {"repository": reg.reference("x")}}
    });
    let err = c
        .imports()
        .patch("both", &PatchParams::apply("test"), &Patch::Apply(&both))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("exactly one of source.pvc or source.url"),
        "{err}"
    );
    let escape = json!({
        "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
        "metadata": {"name": "escape", "namespace": NS},
        "spec": {"source": {"pvc": {"claimName": "c", "path": "../etc/passwd"}}, "target": {"repository": reg.reference("x")}}
    });
    assert!(
        c.imports()
            .patch(
                "escape",
                &PatchParams::apply("test"),
                &Patch::Apply(&escape)
            )
            .await
            .is_err()
    );

    // A hostile archive: Ready=False with its reason, nothing tagged, not retried.
    let dir = c.work.path().join("claim-hostile");
    std::fs::create_dir_all(dir.join("web")).unwrap();
    std::fs::write(dir.join("web/web-1.4.tar"), hostile::tampered_layer()).unwrap();
    c.claim("hostile").await;
    c.apply(pvc_import(
        "evil",
        "hostile",
        &reg.reference("shop/evil"),
        &["1"],
    ))
    .await;
    let job = c.wait_job("evil").await;
    assert_eq!(
        c.run_job(&job, &BTreeMap::from([("hostile", dir.as_path())]))
            .await,
        1
    );
    let obj = c
        .wait_ready("evil", "False", Some("VerificationFailed"))
        .await;
    let (_, _, msg) = ready(&obj).unwrap();
    assert!(msg.contains("diff_id"), "{msg}");
    assert!(reg.tags("shop/evil").is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.jobs_for("evil").await.len(),
        1,
        "a permanent failure is not retried"
    );

    // A claim that does not exist.
    c.apply(pvc_import(
        "noclaim",
        "missing-claim",
        &reg.reference("shop/x"),
        &["1"],
    ))
    .await;
    let obj = c
        .wait_ready("noclaim", "False", Some("SourceNotFound"))
        .await;
    assert!(ready(&obj).unwrap().2.contains("missing-claim"));
    assert!(c.jobs_for("noclaim").await.is_empty());

    // A credentials Secret that does not exist: the worker says which.
    let (dir, _) = archive_dir(&c, "ok", ImageSpec::new(&["web:1.4"], layers(3300)));
    c.claim("ok").await;
    let mut m = pvc_import("nosecret", "ok", &reg.reference("shop/y"), &["1"]);
    m["spec"]["target"]["credentialsSecretRef"] = json!({"name": "regcred"});
    c.apply(m).await;
    let job = c.wait_job("nosecret").await;
    assert_eq!(
        c.run_job(&job, &BTreeMap::from([("ok", dir.as_path())]))
            .await,
        75
    );
    let obj = c
        .wait_ready("nosecret", "False", Some("SecretNotFound"))
        .await;
    assert!(
        ready(&obj).unwrap().2.contains("regcred"),
        "{:?}",
        ready(&obj)
    );
    assert!(reg.tags("shop/y").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_outage_retries_and_controller_restart_imports_once() {
    let mut c = Cluster::start().await;
    let mut reg = Registry::plain();
    let (dir, built) = archive_dir(&c, "d", ImageSpec::new(&["web:1.4"], layers(3400)));
    c.claim("d").await;
    let claims = BTreeMap::from([("d", dir.as_path())]);

    // Registry down: the worker fails transiently, the controller retries with backoff.
    reg.stop();
    c.apply(pvc_import("web", "d", &reg.reference("shop/web"), &["1.4"]))
        .await;
    let job = c.wait_job("web").await;
    assert_eq!(c.run_job(&job, &claims).await, 75);
    let obj = c
        .wait_ready("web", "False", Some("RegistryUnavailable"))
        .await;
    assert!(
        ready(&obj).unwrap().2.contains("retrying"),
        "{:?}",
        ready(&obj)
    );
    reg.restart();
    // The next attempt (after the backoff) succeeds.
    let job2 = c.wait_job("web").await;
    assert_ne!(job2.name_any(), job.name_any());
    assert!(job2.name_any().ends_with("-a2"));

    // The controller is killed while the import runs, and comes back.
    c.kill_controller();
    assert_eq!(c.run_job(&job2, &claims).await, 0);
    c.start_controller();
    let obj = c.wait_ready("web", "True", Some("Succeeded")).await;
    let st = obj.status.unwrap();
    assert_eq!(st.attempts, 2);
    assert_eq!(
        st.digest.unwrap(),
        skopeo::manifest_digest(&reg, "shop/web:1.4")
    );
    assert_eq!(
        skopeo::pull_diff_ids(&reg, "shop/web:1.4"),
        built.images[0].diff_ids
    );
    // Exactly once: no further Job after the restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.jobs_for("web").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_leader_dies() {
    let mut c = Cluster::start().await;
    c.kill_controller();
    let reg = Registry::plain();
    let elect = [
        "--leader-elect",
        "--leader-election-namespace",
        "default",
        "--lease-duration-seconds",
        "4",
    ];
    let mut a = c.spawn_controller(
        &[
            &elect[..],
            &[
                "--metrics-bind-address",
                &format!("127.0.0.1:{}", free_port()),
            ],
        ]
        .concat(),
        "ctl-a",
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut b = c.spawn_controller(
        &[
            &elect[..],
            &[
                "--metrics-bind-address",
                &format!("127.0.0.1:{}", free_port()),
            ],
        ]
        .concat(),
        "ctl-b",
    );
    let (dir, built) = archive_dir(&c, "d", ImageSpec::new(&["web:1.4"], layers(3500)));
    c.claim("d").await;
    c.apply(pvc_import("web", "d", &reg.reference("shop/web"), &["1.4"]))
        .await;
    let job = c.wait_job("web").await;
    // Who leads? The Lease says.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(c.client.clone(), "default");
    let holder = leases
        .get("imageimport-controller")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    let (leader, standby) = if holder == "ctl-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    // The leader dies mid-import; the worker (playing the node) finishes meanwhile.
    leader.kill().unwrap();
    leader.wait().unwrap();
    assert_eq!(
        c.run_job(&job, &BTreeMap::from([("d", dir.as_path())]))
            .await,
        0
    );
    let obj = c.wait_ready("web", "True", Some("Succeeded")).await;
    assert_eq!(
        obj.status.unwrap().digest.unwrap(),
        skopeo::manifest_digest(&reg, "shop/web:1.4")
    );
    assert_eq!(
        skopeo::pull_diff_ids(&reg, "shop/web:1.4"),
        built.images[0].diff_ids
    );
    let new_holder = leases
        .get("imageimport-controller")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert_ne!(new_holder, holder, "the standby took the Lease");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        c.jobs_for("web").await.len(),
        1,
        "the import was neither lost nor done twice"
    );
    let _ = standby.kill();
    let _ = standby.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_policy_limits_targets_and_hosts() {
    let mut c = Cluster::start().await;
    c.kill_controller();
    let reg = Registry::plain();
    let policy = c.work.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!("rules:\n  - namespaces: [\"sh*\"]\n    repositories: [\"{}/shop/*\"]\n    urlHosts: [\"artifacts.example\"]\n", reg.host),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    c.controller = Some(c.spawn_controller(
        &[
            "--policy-file",
            policy.to_str().unwrap(),
            "--metrics-bind-address",
            &addr,
        ],
        "ctl-policy",
    ));
    c.claim("d").await;
    c.apply(pvc_import(
        "elsewhere",
        "d",
        &reg.reference("other/web"),
        &["1"],
    ))
    .await;
    let obj = c
        .wait_ready("elsewhere", "False", Some("PolicyViolation"))
        .await;
    assert!(
        ready(&obj).unwrap().2.contains("other/web"),
        "{:?}",
        ready(&obj)
    );
    c.apply(json!({
        "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
        "metadata": {"name": "metadata", "namespace": NS},
        "spec": {"source": {"url": {"url": "http://169.254.169.254/latest/x.tar"}}, "target": {"repository": reg.reference("shop/x")}}
    }))
    .await;
    let obj = c
        .wait_ready("metadata", "False", Some("PolicyViolation"))
        .await;
    assert!(ready(&obj).unwrap().2.contains("169.254.169.254"));
    assert!(c.jobs_for("elsewhere").await.is_empty() && c.jobs_for("metadata").await.is_empty());
    // Allowed: the Job is created.
    c.apply(pvc_import(
        "allowed",
        "d",
        &reg.reference("shop/web"),
        &["1"],
    ))
    .await;
    c.wait_job("allowed").await;

    // SIGTERM: a graceful stop, exit status 0; the logs are structured (JSON lines).
    let mut ctl = c.controller.take().unwrap();
    let pid = ctl.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = ctl.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "controller did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(c.work.path().join("controller-ctl-policy.log")).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart_and_killed_worker_end_with_one_good_import() {
    let mut c = Cluster::start().await;
    let reg = Registry::plain();
    let (dir, built) = archive_dir(&c, "d", ImageSpec::new(&["web:1.4"], layers(3600)));
    c.claim("d").await;
    let claims = BTreeMap::from([("d", dir.as_path())]);
    c.apply(pvc_import("web", "d", &reg.reference("shop/web"), &["1.4"]))
        .await;

    // The worker is killed mid-import (OOM, eviction): the Job fails without a result.
    let job = c.wait_job("web").await;
    let mut cmd = c.prepare_job(&job, &claims).await;
    let started = k8s_openapi::jiff::Timestamp::now();
    let mut child = cmd.stderr(Stdio::null()).spawn().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    c.record_job_outcome(&job.name_any(), false, started).await;
    let obj = c.wait_ready("web", "False", Some("WorkerFailed")).await;
    assert!(ready(&obj).unwrap().2.contains("retrying"));
    assert!(reg.tags("shop/web").is_empty(), "no half-pushed tag");

    // The next attempt runs while the API server restarts under it: the worker keeps trying
    // to report, the controller's watches reconnect, and the import completes once.
    let job2 = c.wait_job("web").await;
    assert!(job2.name_any().ends_with("-a2"));
    let mut cmd = c.prepare_job(&job2, &claims).await;
    c.api.kill_apiserver();
    let started = k8s_openapi::jiff::Timestamp::now();
    let worker = std::thread::spawn(move || cmd.output().unwrap());
    std::thread::sleep(Duration::from_secs(3));
    c.api.start_apiserver();
    let out = tokio::task::spawn_blocking(move || worker.join().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.client = c.api.client().await;
    c.record_job_outcome(&job2.name_any(), true, started).await;
    let obj = c.wait_ready("web", "True", Some("Succeeded")).await;
    let st = obj.status.unwrap();
    assert_eq!(st.attempts, 2);
    assert_eq!(
        st.digest.unwrap(),
        skopeo::manifest_digest(&reg, "shop/web:1.4")
    );
    assert_eq!(
        skopeo::pull_diff_ids(&reg, "shop/web:1.4"),
        built.images[0].diff_ids
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.jobs_for("web").await.len(), 2);
}

/// `hack/demo.sh`: a local API server, registry and controller; applies
/// `examples/imageimport-pvc.yaml` (pointed at the local registry) with a generated archive,
/// plays the node for its Job, and shows the ImageImport reaching Ready with its digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "interactive demo: run hack/demo.sh"]
async fn demo() {
    let c = Cluster::start().await;
    let reg = Registry::plain();
    println!(
        "\n== kube-apiserver at {} (KUBECONFIG={})",
        c.api.url,
        c.api.kubeconfig.display()
    );
    println!("== registry at {}", reg.base_url());
    let (dir, built) = archive_dir(&c, "deliveries", ImageSpec::new(&["web:1.4"], layers(42)));
    println!(
        "== generated archive {}/web/web-1.4.tar (image ID {})",
        dir.display(),
        built.images[0].config_digest
    );
    c.claim("deliveries").await;
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/imageimport-pvc.yaml"
    ))
    .unwrap();
    let mut manifest: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    manifest["spec"]["target"]["repository"] = json!(reg.reference("shop/web"));
    manifest["spec"]["target"]["insecure"] = json!(true);
    manifest["spec"]["target"]
        .as_object_mut()
        .unwrap()
        .remove("credentialsSecretRef");
    println!(
        "== applying examples/imageimport-pvc.yaml (target: {})",
        reg.reference("shop/web")
    );
    c.apply(manifest).await;
    let job = c.wait_job("web-1-4").await;
    println!(
        "== controller created Job {}; playing the node (no kubelet here)",
        job.name_any()
    );
    c.run_job(&job, &BTreeMap::from([("deliveries", dir.as_path())]))
        .await;
    let obj = c.wait_ready("web-1-4", "True", Some("Succeeded")).await;
    let st = obj.status.unwrap();
    println!("\nNAME      READY   TARGET                              DIGEST");
    println!(
        "web-1-4   True    {}   {}",
        obj.spec.target.repository,
        st.digest.clone().unwrap_or_default()
    );
    println!(
        "\nstatus:\n{}",
        serde_yaml::to_string(&serde_json::to_value(&st).unwrap()).unwrap()
    );
    println!(
        "skopeo reads {} for shop/web:1.4",
        skopeo::manifest_digest(&reg, "shop/web:1.4")
    );
}

/// Sum of `apiserver_request_total` samples (all verbs and resources) from the API server.
async fn apiserver_requests(client: &Client) -> f64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Applies `n` PVC imports `<prefix>-<i>` of the claim `<prefix>`, each to its own repository
/// `<prefix>/app<i>:1`.
async fn apply_numbered_imports(c: &Cluster, reg: &Registry, prefix: &str, n: usize) {
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

/// Load: 50 ImageImports applied at once all reach Ready, never more than the concurrency
/// limit of worker Jobs running at a time. Reports the controller's memory and the API
/// request rate it caused (figures, not assertions on speed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_imports_at_once_respect_the_concurrency_limit() {
    const N: usize = 50;
    const LIMIT: usize = 2; // --max-concurrent-imports of Cluster::start
    let c = Cluster::start().await;
    let reg = Registry::plain();
    let (dir, _) = archive_dir(&c, "bulk", ImageSpec::new(&["web:1.4"], layers(3700)));
    c.claim("bulk").await;
    let claims = BTreeMap::from([("bulk", dir.as_path())]);
    let requests_before = apiserver_requests(&c.client).await;
    let t0 = Instant::now();
    apply_numbered_imports(&c, &reg, "bulk", N).await;
    // Play the node: run every Job that exists and has not run yet, checking the limit.
    let mut done = std::collections::HashSet::new();
    let mut max_running = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while done.len() < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} imports ran",
            done.len()
        );
        let jobs = c.jobs().list(&ListParams::default()).await.unwrap().items;
        let pending: Vec<&Job> = jobs
            .iter()
            .filter(|j| !done.contains(&j.name_any()))
            .collect();
        max_running = max_running.max(pending.len());
        assert!(
            pending.len() <= LIMIT,
            "{} worker Jobs running at once (limit {LIMIT})",
            pending.len()
        );
        if pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let runs = pending.iter().map(|j| c.run_job(j, &claims));
        for code in futures::future::join_all(runs).await {
            assert_eq!(code, 0);
        }
        for j in pending {
            done.insert(j.name_any());
        }
    }
    for i in 0..N {
        c.wait_ready(&format!("bulk-{i}"), "True", Some("Succeeded"))
            .await;
    }
    let elapsed = t0.elapsed();
    let requests = apiserver_requests(&c.client).await - requests_before;
    let pid = c.controller.as_ref().unwrap().id();
    eprintln!(
        "load: {N} imports Ready in {:.1}s; at most {max_running} Jobs at once (limit {LIMIT}); controller peak RSS {} KiB; \
         {requests:.0} API requests in all ({:.1}/s, {:.1} per import, controller + workers + test)",
        elapsed.as_secs_f64(),
        peak_rss_kib(pid),
        requests / elapsed.as_secs_f64(),
        requests / N as f64
    );
    assert_eq!(
        max_running, LIMIT,
        "the limit was reached, so it was tested"
    );
}

/// The API server answers 409 to the controller's Job create (the Job already exists, as after
/// a controller that died between creating it and recording it in status): the Job is adopted,
/// and every import completes once. (429s are not exercised here: the max-in-flight filter exempts
/// system:masters, which this controller runs as; see
/// `throttled_api_server_429s_every_import_completes_once`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_from_the_api_server_are_absorbed() {
    const N: usize = 8;
    let mut c = Cluster::start().await;
    c.kill_controller();
    let reg = Registry::plain();
    let (dir, _) = archive_dir(&c, "t", ImageSpec::new(&["web:1.4"], layers(3800)));
    let claims = BTreeMap::from([("t", dir.as_path())]);
    // Everything the test sends goes through the same throttled server: retry on 429 like a client should.
    async fn retry<T, F: std::future::Future<Output = kube::Result<T>>>(
        mut f: impl FnMut() -> F,
    ) -> T {
        for _ in 0..200 {
            match f().await {
                Ok(v) => return v,
                Err(kube::Error::Api(e)) if e.code == 429 => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("still throttled")
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.client.clone(), NS);
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "t"},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    let pp = PostParams::default();
    retry(|| pvcs.create(&pp, &pvc)).await;
    let imports = c.imports();
    let apply = PatchParams::apply("test").force();
    for i in 0..N {
        let name = format!("t-{i}");
        let m = Patch::Apply(pvc_import(
            &name,
            "t",
            &reg.reference(&format!("t/app{i}")),
            &["1"],
        ));
        retry(|| imports.patch(&name, &apply, &m)).await;
    }
    // A Job the controller will try to create already exists: its create answers 409.
    let first = retry(|| imports.get("t-0")).await;
    let settings = imageimport::controller::WorkerSettings {
        image: "imageimport:test".into(),
        ..Default::default()
    };
    let pre = imageimport::controller::job::build(&first, &settings, None, "t-0-g1-a1", 1, 1);
    let jobs_api = c.jobs();
    retry(|| jobs_api.create(&pp, &pre)).await;

    c.start_controller();
    let mut done = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while done.len() < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} imports ran",
            done.len()
        );
        let lp = ListParams::default();
        let jobs = retry(|| jobs_api.list(&lp)).await.items;
        let todo: Vec<Job> = jobs
            .into_iter()
            .filter(|j| !done.contains(&j.name_any()))
            .collect();
        if todo.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        for j in todo {
            // The harness itself may meet a 429 while playing the node: wait for calm.
            let code = c.run_job(&j, &claims).await;
            assert_eq!(code, 0);
            done.insert(j.name_any());
        }
    }
    for i in 0..N {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match c.imports().get(&format!("t-{i}")).await {
                Ok(obj) if ready(&obj).is_some_and(|r| r.0 == "True") => break,
                _ => {
                    assert!(Instant::now() < deadline, "t-{i} never became Ready");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    assert_eq!(
        done.len(),
        N,
        "one Job per import, the pre-existing one adopted"
    );
}

/// The Helm chart's ServiceAccount and RBAC objects for the controller (release `imageimport` in
/// `imageimport-system`, default values) created for real; a kubeconfig of that ServiceAccount.
async fn install_chart_rbac(c: &Cluster) -> PathBuf {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use kube::api::{ApiResource, DynamicObject};
    use serde::Deserialize as _;
    const RELEASE_NS: &str = "imageimport-system";
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(support::kube::testbin_dir().join("helm"))
        .args([
            "template",
            "imageimport",
            concat!(env!("CARGO_MANIFEST_DIR"), "/charts/imageimport"),
            "--namespace",
            RELEASE_NS,
        ])
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
    let account = account.expect("the chart renders the controller's ServiceAccount");
    c.api.service_account_kubeconfig(RELEASE_NS, &account).await
}

/// Requests the API server's max-in-flight filter answered with 429, by `verb resource/subresource`
/// (`apiserver_request_terminations_total{code="429"}`: `apiserver_dropped_requests_total` is
/// hidden since Kubernetes 1.31).
async fn apiserver_429s(client: &Client) -> BTreeMap<String, f64> {
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

/// 429 answers in an API server audit log, by `user: verb resource/subresource`.
fn audited_429s(log: &Path) -> BTreeMap<String, usize> {
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

fn total(by: &BTreeMap<String, f64>) -> f64 {
    by.values().sum()
}

/// The API server throttles (max-in-flight 1 for reads and for writes, answering 429 with
/// `Retry-After: 1`), the controller runs as the Helm chart's least-privileged ServiceAccount (the
/// filter exempts `system:masters`, so the admin identity would never see a 429) and the workers
/// as `imageimport-worker`: every import is still done exactly once (one Job, one manifest PUT per
/// tag), and never leaves a half-pushed tag. kube's client retries the 429s itself; what this
/// caught was their delay: a Job read waiting out a Retry-After while the worker reported and its
/// Job completed made the controller take a finished import for a lost worker and start it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_api_server_429s_every_import_completes_once() {
    const N: usize = 8;
    let t0 = Instant::now();
    // An audit log says who was answered 429 (the filter runs inside the audit filter).
    let audit = tempfile::tempdir().unwrap();
    let policy = audit.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n",
    )
    .unwrap();
    let audit_log = audit.path().join("audit.log");
    let mut c = Cluster::start_with(&[
        // The harness already passes --enable-priority-and-fairness=false: the old filter applies.
        "--max-requests-inflight=1",
        "--max-mutating-requests-inflight=1",
        &format!("--audit-policy-file={}", policy.display()),
        &format!("--audit-log-path={}", audit_log.display()),
    ])
    .await;
    c.kill_controller();
    let kubeconfig = install_chart_rbac(&c).await;

    // The probe: a burst of reads by a non-admin identity, without client retries, is answered 429.
    let before_probe = total(&apiserver_429s(&c.client).await);
    let mut config = c.api.service_account_config(NS, "probe").await;
    config.default_retry = false;
    let probe = Client::try_from(config).unwrap();
    let burst = (0..16).map(|_| {
        let probe = probe.clone();
        async move {
            let req = http::Request::get("/openapi/v2").body(Vec::new()).unwrap();
            probe.request_text(req).await.map(|_| ())
        }
    });
    let answers = futures::future::join_all(burst).await;
    let throttled = answers
        .iter()
        .filter(|a| matches!(a, Err(kube::Error::Api(e)) if e.code == 429))
        .count();
    let after_probe = apiserver_429s(&c.client).await;
    assert!(throttled > 0, "no 429 for a burst of 16: {answers:?}");
    assert_eq!(
        total(&after_probe) - before_probe,
        throttled as f64,
        "the metric counts the 429s: {after_probe:?}"
    );

    let reg = Registry::plain();
    let (dir, built) = archive_dir(&c, "t", ImageSpec::new(&["web:1.4"], layers(3900)));
    c.claim("t").await;
    let claims = BTreeMap::from([("t", dir.as_path())]);
    apply_numbered_imports(&c, &reg, "t", N).await;
    let addr = c.metrics_addr.clone();
    let t_run = Instant::now();
    c.controller = Some(c.spawn_controller_as(
        &[
            "--metrics-bind-address",
            &addr,
            "--max-concurrent-imports",
            "8",
        ],
        "ctl-sa",
        &kubeconfig,
    ));

    // Play the node once every Job exists: all workers at once, so that their status writes
    // meet each other's (and the controller's) in the API server's single slot.
    let ctl_log = c.work.path().join("controller-ctl-sa.log");
    let deadline = Instant::now() + Duration::from_secs(300);
    let jobs = loop {
        let jobs = c.jobs().list(&ListParams::default()).await.unwrap().items;
        if jobs.len() >= N {
            break jobs;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {N} worker Jobs were created",
            jobs.len()
        );
        assert!(
            c.controller.as_mut().unwrap().try_wait().unwrap().is_none(),
            "the controller exited: {}",
            std::fs::read_to_string(&ctl_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let runs = jobs.iter().map(|j| c.run_job(j, &claims));
    for code in futures::future::join_all(runs).await {
        assert_eq!(code, 0);
    }
    for i in 0..N {
        let name = format!("t-{i}");
        let tag = format!("t/app{i}:1");
        let obj = c.wait_ready(&name, "True", Some("Succeeded")).await;
        let st = obj.status.unwrap();
        // The tag is whole: the digest reported is the tag's, and every layer pulls and verifies.
        assert_eq!(
            st.digest.unwrap(),
            skopeo::manifest_digest(&reg, &tag),
            "{name}"
        );
        assert_eq!(skopeo::pull_diff_ids(&reg, &tag), built.images[0].diff_ids);
        assert_eq!(
            st.image_id.as_deref(),
            Some(built.images[0].config_digest.as_str())
        );
        assert_eq!(st.attempts, 1, "{name}");
        assert_eq!(reg.tags(&format!("t/app{i}")), vec!["1".to_string()]);
    }
    let run_elapsed = t_run.elapsed();
    // Exactly once, also a while later: one Job per generation, one manifest PUT per tag.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..N {
        let name = format!("t-{i}");
        let jobs: Vec<String> = c
            .jobs_for(&name)
            .await
            .iter()
            .map(|j| j.name_any())
            .collect();
        assert_eq!(jobs, vec![format!("{name}-g1-a1")]);
        let puts = reg
            .requests()
            .into_iter()
            .filter(|r| r.is_client() && r.method == "PUT")
            .filter(|r| r.path.starts_with(&format!("/v2/t/app{i}/manifests/")))
            .count();
        assert_eq!(puts, 1, "t/app{i}: {puts} manifest PUTs");
    }
    let log = std::fs::read_to_string(&ctl_log).unwrap();
    assert!(
        !log.contains("orbidden"),
        "the controller was refused: {log}"
    );

    // And it was throttled: the metric counts the 429s since the probe, the audit log says whose.
    let mut since_probe = apiserver_429s(&c.client).await;
    for (k, n) in &after_probe {
        *since_probe.get_mut(k).unwrap() -= n;
    }
    since_probe.retain(|_, n| *n > 0.0);
    let by_user = audited_429s(&audit_log);
    let of = |user: &str| -> usize {
        by_user
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("system:serviceaccount:{user}: ")))
            .map(|(_, n)| n)
            .sum()
    };
    let controller = of("imageimport-system:imageimport-controller");
    let workers = of(&format!("{NS}:imageimport-worker"));
    eprintln!(
        "throttled: {} requests answered 429 during the imports, {controller} to the controller and \
         {workers} to workers ({by_user:?}); {N} imports done once in {:.1}s (test {:.1}s)",
        total(&since_probe),
        run_elapsed.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        total(&since_probe) >= 1.0 && controller >= 1 && workers >= 1,
        "the controller and the workers must each have been answered 429, or the test proved \
         nothing: {by_user:#?}"
    );
}
