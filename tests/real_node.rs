//! The operator on a real node: `hack/cluster.sh up` (kubelet, containerd, scheduler, controller
//! manager, registries, the image built here and the chart installed with Helm), then scenarios
//! in order on that one cluster, each in its own namespace labelled
//! `pod-security.kubernetes.io/enforce=restricted`, and `hack/cluster.sh down` at the end, also
//! when a scenario failed. Worker Jobs run as real Pods: nothing here plays the node.
//!
//! Needs root (kubelet, containerd, iptables) and what `hack/cluster.sh` installs. A cluster that
//! is already up (`hack/cluster.sh up` by hand) is reused, upgraded to this build, and left running.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use imageimport::api::ImageImport;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::archives::{self, Format, ImageSpec};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const RELEASE_NS: &str = "imageimport-system";
const DEPLOYMENT: &str = "imageimport-controller";
const LEASE: &str = "imageimport-controller";
/// Safety net for every wait (the waits end on conditions; this only bounds a hang).
const WAIT: Duration = Duration::from_secs(300);

// ----- the cluster -----

struct Cluster {
    env: BTreeMap<String, String>,
    /// Brought up by this test (and so taken down by it).
    owned: bool,
}

impl Cluster {
    fn up() -> Cluster {
        let script = Path::new(ROOT).join("hack/cluster.sh");
        let owned = !Command::new("bash")
            .arg(&script)
            .arg("env")
            .output()
            .unwrap()
            .status
            .success();
        // The image gets this build's binary, without its debug info (a smaller image to pull).
        let bin =
            std::env::temp_dir().join(format!("imageimport-real-node-{}", std::process::id()));
        let status = Command::new("objcopy")
            .args(["--strip-debug", env!("CARGO_BIN_EXE_imageimport")])
            .arg(&bin)
            .status()
            .unwrap();
        assert!(status.success(), "objcopy --strip-debug");
        let start = Instant::now();
        let out = Command::new("bash")
            .arg(&script)
            .arg("up")
            .env("IMAGEIMPORT_BINARY", &bin)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&bin);
        let cluster = Cluster {
            env: parse_exports(&String::from_utf8_lossy(&out.stdout)),
            owned,
        };
        assert!(out.status.success(), "hack/cluster.sh up failed");
        eprintln!("== cluster up in {:.0?}", start.elapsed());
        cluster
    }

    fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .unwrap_or_else(|| panic!("hack/cluster.sh up did not export {name}"))
    }

    async fn client(&self) -> Client {
        let kc = kube::config::Kubeconfig::read_from(self.var("KUBECONFIG")).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        Client::try_from(cfg).unwrap()
    }

    fn helm(&self, args: &[&str]) {
        let helm = support::kube::testbin_dir().join("helm");
        let image = self.var("IMAGEIMPORT_IMAGE");
        let (repo, tag) = image.rsplit_once(':').unwrap();
        let status = Command::new(helm)
            .args(["--kubeconfig", self.var("KUBECONFIG")])
            .args(["upgrade", "imageimport"])
            .arg(Path::new(ROOT).join("charts/imageimport"))
            .args([
                "-n",
                RELEASE_NS,
                "--reuse-values",
                "--wait",
                "--timeout",
                "5m",
            ])
            .arg(format!("--set=image.repository={repo}"))
            .arg(format!("--set=image.tag={tag}"))
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "helm upgrade {args:?}");
    }

    fn cluster_sh(&self, what: &str) {
        let status = Command::new("bash")
            .arg(Path::new(ROOT).join("hack/cluster.sh"))
            .arg(what)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "hack/cluster.sh {what}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owned && std::env::var_os("IMAGEIMPORT_KEEP_CLUSTER").is_none() {
            let start = Instant::now();
            let ok = Command::new("bash")
                .arg(Path::new(ROOT).join("hack/cluster.sh"))
                .arg("down")
                .status()
                .is_ok_and(|s| s.success());
            eprintln!("== cluster down in {:.0?} (ok: {ok})", start.elapsed());
        }
    }
}

fn parse_exports(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ----- one scenario's world -----

struct Ctx<'a> {
    cluster: &'a Cluster,
    client: Client,
}

impl Ctx<'_> {
    fn imports(&self, ns: &str) -> Api<ImageImport> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// A new namespace `<base>-<test process id>` where Pod Security admission enforces
    /// `restricted` (new each run: the controller trusts the worker ServiceAccount it applied in
    /// a namespace for minutes, so a namespace deleted and created again would lack it).
    async fn namespace(&self, base: &str) -> String {
        let ns = format!("{base}-{}", std::process::id());
        let api: Api<Namespace> = Api::all(self.client.clone());
        let obj: Namespace = serde_json::from_value(json!({
            "metadata": {"name": ns, "labels": {
                "imageimport.dev/test": "real-node",
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest"}}
        }))
        .unwrap();
        api.patch(&ns, &ssa(), &Patch::Apply(&obj)).await.unwrap();
        ns
    }

    /// Namespaces (and their volumes) of earlier runs on a reused cluster.
    async fn delete_earlier_runs(&self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let lp = ListParams::default().labels("imageimport.dev/test=real-node");
        for ns in api.list(&lp).await.unwrap() {
            let _ = api
                .delete(&ns.name_any(), &DeleteParams::background())
                .await;
        }
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        for pv in pvs.list(&lp).await.unwrap() {
            let _ = pvs.delete(&pv.name_any(), &DeleteParams::default()).await;
        }
    }

    /// A claim `name` in `ns` bound to a hostPath volume holding `files` (written here, on the
    /// node, as an administrator would deliver them).
    async fn claim(&self, ns: &str, name: &str, files: &[(&str, &[u8])]) {
        let dir = PathBuf::from(self.cluster.var("VOLUMES_DIR"))
            .join(ns)
            .join(name);
        for (path, bytes) in files {
            let file = dir.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, bytes).unwrap();
        }
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": format!("{ns}-{name}"),
                "labels": {"imageimport.dev/test": "real-node"}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                "claimRef": {"namespace": ns, "name": name},
                "hostPath": {"path": dir, "type": "Directory"}}
        }))
        .unwrap();
        pvs.patch(&format!("{ns}-{name}"), &ssa(), &Patch::Apply(&pv))
            .await
            .unwrap();
        let pvc = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                "resources": {"requests": {"storage": "1Gi"}}}
        });
        self.apply(ns, pvc).await;
    }

    async fn apply(&self, ns: &str, obj: Value) {
        let kind = obj["kind"].as_str().unwrap().to_string();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let (ar, _) = kube::discovery::pinned_kind(
            &self.client,
            &kube::api::GroupVersionKind::try_from(&kube::api::TypeMeta {
                api_version: obj["apiVersion"].as_str().unwrap().into(),
                kind: kind.clone(),
            })
            .unwrap(),
        )
        .await
        .unwrap();
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &ar);
        api.patch(&name, &ssa(), &Patch::Apply(&obj))
            .await
            .unwrap_or_else(|e| panic!("apply {kind} {ns}/{name}: {e}"));
    }

    /// The TLS + htpasswd registry's credentials Secret and CA ConfigMap in `ns`.
    async fn tls_registry_access(&self, ns: &str) {
        use base64::Engine as _;
        let c = self.cluster;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            c.var("TLS_REGISTRY_USER"),
            c.var("TLS_REGISTRY_PASSWORD")
        ));
        let config = json!({"auths": {c.var("TLS_REGISTRY"): {"auth": auth}}}).to_string();
        self.apply(
            ns,
            json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "regcred", "namespace": ns},
                "type": "kubernetes.io/dockerconfigjson",
                "stringData": {".dockerconfigjson": config}}),
        )
        .await;
        let ca = std::fs::read_to_string(c.var("TLS_REGISTRY_CA")).unwrap();
        self.apply(
            ns,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "registry-ca", "namespace": ns},
                "data": {"ca.crt": ca}}),
        )
        .await;
    }

    async fn create_import(&self, ns: &str, name: &str, spec: Value) {
        let obj: ImageImport = serde_json::from_value(json!({
            "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
            "metadata": {"name": name, "namespace": ns}, "spec": spec
        }))
        .unwrap();
        self.imports(ns)
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("create ImageImport {ns}/{name}: {e}"));
    }

    /// Waits until the ImageImport's Ready condition is decided (True, or False with a reason
    /// other than the in-progress ones) for its current generation.
    async fn wait_settled(&self, ns: &str, name: &str) -> ImageImport {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        loop {
            let obj = self.imports(ns).get(name).await.unwrap();
            let ready = ready(&obj);
            let current =
                obj.status.as_ref().and_then(|s| s.observed_generation) == obj.metadata.generation;
            // A failure is final once no further attempt is coming (Importing not True and
            // not Retrying).
            let importing = condition(&obj, "Importing");
            let retrying = importing
                .as_ref()
                .is_some_and(|(s, r, _)| s == "True" || r == "Retrying");
            if current
                && let Some((status, reason, _)) = &ready
                && (status == "True"
                    || (!retrying
                        && !["Importing", "Queued", "JobCreated", "Retrying", "Pending"]
                            .contains(&reason.as_str())))
            {
                return obj;
            }
            if ready != last {
                eprintln!("   {ns}/{name}: {ready:?}");
                last = ready;
            }
            assert!(Instant::now() < deadline, "{ns}/{name} never settled");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn wait_ready_true(&self, ns: &str, name: &str) -> ImageImport {
        let obj = self.wait_settled(ns, name).await;
        let r = ready(&obj).unwrap();
        assert_eq!(r.0, "True", "{ns}/{name} failed: {r:?}");
        obj
    }

    async fn jobs(&self, ns: &str, name: &str) -> Vec<Job> {
        Api::<Job>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default().labels(&format!("imageimport.dev/name={name}")))
            .await
            .unwrap()
            .items
    }

    async fn pods(&self, ns: &str, selector: &str) -> Vec<Pod> {
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap()
            .items
    }

    async fn wait_for<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + WAIT;
        while !check().await {
            assert!(Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The running controller Pods, and the one holding the leader Lease.
    async fn controllers(&self) -> (Vec<String>, Option<String>) {
        let pods = self
            .pods(RELEASE_NS, "app.kubernetes.io/name=imageimport")
            .await
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .map(|p| p.name_any())
            .collect();
        let lease = Api::<Lease>::namespaced(self.client.clone(), RELEASE_NS)
            .get_opt(LEASE)
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity);
        (pods, lease)
    }
}

fn ssa() -> PatchParams {
    PatchParams::apply("real-node-test").force()
}

fn ready(obj: &ImageImport) -> Option<(String, String, String)> {
    condition(obj, "Ready")
}

/// (status, reason, message) of a condition.
fn condition(obj: &ImageImport, type_: &str) -> Option<(String, String, String)> {
    obj.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

// ----- registries, as skopeo sees them -----

fn skopeo(args: &[&str]) -> Result<String, String> {
    let out = Command::new("skopeo").args(args).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// skopeo's flags for the cluster's registry at `host` (plain, or TLS with credentials).
fn skopeo_flags(c: &Cluster, host: &str, cert_dir: &Path) -> Vec<String> {
    if host == c.var("TLS_REGISTRY") {
        std::fs::create_dir_all(cert_dir).unwrap();
        std::fs::copy(c.var("TLS_REGISTRY_CA"), cert_dir.join("ca.crt")).unwrap();
        vec![
            format!("--cert-dir={}", cert_dir.display()),
            format!(
                "--creds={}:{}",
                c.var("TLS_REGISTRY_USER"),
                c.var("TLS_REGISTRY_PASSWORD")
            ),
        ]
    } else {
        vec!["--tls-verify=false".into()]
    }
}

/// The manifest digest skopeo reads for `host/repo:tag`.
fn skopeo_digest(c: &Cluster, host: &str, repo_tag: &str) -> String {
    let certs = tempfile::tempdir().unwrap();
    let mut args = vec!["inspect".to_string()];
    args.extend(skopeo_flags(c, host, certs.path()));
    args.push(format!("docker://{host}/{repo_tag}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = skopeo(&args).unwrap_or_else(|e| panic!("skopeo inspect {host}/{repo_tag}: {e}"));
    let v: Value = serde_json::from_str(&out).unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

/// The tags skopeo lists for `host/repo` (none when the repository does not exist).
fn skopeo_tags(c: &Cluster, host: &str, repo: &str) -> Vec<String> {
    let certs = tempfile::tempdir().unwrap();
    let mut args = vec!["list-tags".to_string()];
    args.extend(skopeo_flags(c, host, certs.path()));
    args.push(format!("docker://{host}/{repo}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match skopeo(&args) {
        Ok(out) => serde_json::from_str::<Value>(&out).unwrap()["Tags"]
            .as_array()
            .map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect())
            .unwrap_or_default(),
        Err(e) if e.contains("name unknown") || e.contains("404") => Vec::new(),
        Err(e) => panic!("skopeo list-tags {host}/{repo}: {e}"),
    }
}

/// Ready=True, and every pushed tag is the status digest as skopeo reads it.
fn assert_pushed(c: &Cluster, obj: &ImageImport, host: &str, repo: &str, tags: &[&str]) {
    let st = obj.status.as_ref().unwrap();
    let digest = st.digest.clone().expect("status.digest");
    let mut listed = skopeo_tags(c, host, repo);
    listed.sort();
    let mut want: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    want.sort();
    assert_eq!(listed, want, "tags of {host}/{repo}");
    for tag in tags {
        assert_eq!(
            skopeo_digest(c, host, &format!("{repo}:{tag}")),
            digest,
            "{host}/{repo}:{tag}"
        );
    }
}

// ----- an archive publisher on the node's address -----

/// Serves one archive over HTTP on the node's address (Pods reach it; nothing else does). The
/// first download can be held half-way until [`Publisher::release`].
struct Publisher {
    url: String,
    connections: Arc<AtomicUsize>,
    /// Receives () when the held download has sent its first half.
    holding: Mutex<mpsc::Receiver<()>>,
    release: Mutex<Option<mpsc::Sender<bool>>>,
}

impl Publisher {
    fn start(node_ip: &str, body: Vec<u8>, hold_first: bool) -> Publisher {
        let listener = TcpListener::bind((node_ip, 0)).unwrap();
        let url = format!("http://{}/web.tar", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let (holding_tx, holding) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<bool>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let n = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                let i = n.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                let holding_tx = holding_tx.clone();
                let release_rx = release_rx.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf);
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    if i == 0 && hold_first {
                        let half = body.len() / 2;
                        let _ = s.write_all(&body[..half]);
                        let _ = s.flush();
                        let _ = holding_tx.send(());
                        // finish = true: the rest follows; false: the connection is dropped.
                        let finish = release_rx.lock().unwrap().recv().unwrap_or(false);
                        if finish {
                            let _ = s.write_all(&body[half..]);
                        }
                    } else {
                        let _ = s.write_all(&body);
                    }
                });
            }
        });
        Publisher {
            url,
            connections,
            holding: Mutex::new(holding),
            release: Mutex::new(Some(release_tx)),
        }
    }

    /// Blocks until the held first download is half-way.
    fn wait_holding(&self) {
        self.holding
            .lock()
            .unwrap()
            .recv_timeout(WAIT)
            .expect("the worker never started downloading");
    }

    fn release(&self, finish: bool) {
        if let Some(tx) = self.release.lock().unwrap().take() {
            let _ = tx.send(finish);
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.release(false);
    }
}

/// A docker-save archive of `web:<tag>`, big enough that the worker takes a moment; `seed`
/// makes its layers unique.
fn archive(tag: &str, seed: u64) -> Vec<u8> {
    let spec = ImageSpec::new(
        &[&format!("web:{tag}")],
        vec![
            archives::layer(seed, 8, 256 * 1024),
            archives::layer(seed + 1, 4, 64 * 1024),
        ],
    );
    archives::build(&Format::DockerLegacy, &[spec]).bytes
}

// ----- the scenarios, most valuable first -----

type Scenario = for<'a> fn(&'a Ctx<'a>) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

/// The chart's controller Deployment is available and its Pod holds the leader Lease.
async fn controller_ready_and_leading(ctx: &Ctx<'_>) {
    let deploy = Api::<Deployment>::namespaced(ctx.client.clone(), RELEASE_NS)
        .get(DEPLOYMENT)
        .await
        .unwrap();
    let st = deploy.status.unwrap();
    assert_eq!(st.available_replicas, Some(1), "{st:?}");
    ctx.wait_for("a running controller Pod holds the Lease", || async {
        let (pods, holder) = ctx.controllers().await;
        holder.is_some_and(|h| pods.contains(&h))
    })
    .await;
}

/// README.md's quick start, taken from the file and run by bash as it is, against this cluster
/// (`TARGET_REGISTRY*` from `hack/cluster.sh env`: the TLS registry and its CA): what it prints
/// is the digest skopeo reads for both tags. It uses the namespace `shop` and the volume
/// `shop-deliveries` that `hack/cluster.sh up` made, both made anew here on a reused cluster.
async fn readme_quick_start(ctx: &Ctx<'_>) {
    let c = ctx.cluster;
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let _ = namespaces.delete("shop", &DeleteParams::background()).await;
    ctx.wait_for("namespace shop gone", || async {
        matches!(namespaces.get_opt("shop").await, Ok(None))
    })
    .await;
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let _ = pvs
        .delete("shop-deliveries", &DeleteParams::default())
        .await;
    ctx.wait_for("volume shop-deliveries gone", || async {
        matches!(pvs.get_opt("shop-deliveries").await, Ok(None))
    })
    .await;
    let dir = PathBuf::from(c.var("VOLUMES_DIR")).join("deliveries");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65532), Some(65532)).unwrap();
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": "shop-deliveries"},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
            "claimRef": {"namespace": "shop", "name": "deliveries"},
            "hostPath": {"path": dir, "type": "Directory"}}
    }))
    .unwrap();
    pvs.patch("shop-deliveries", &ssa(), &Patch::Apply(&pv))
        .await
        .unwrap();

    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let block = readme
        .split("<!-- quick-start: begin")
        .nth(1)
        .and_then(|rest| rest.split("<!-- quick-start: end").next())
        .expect("README.md has the quick-start block");
    let script = block
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.rsplit_once("```"))
        .expect("the quick-start block is one sh code block")
        .0;
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("quick-start.sh"), script).unwrap();
    std::fs::write(
        work.path().join("web-1.4.tar"),
        archive("1.4", u64::from(std::process::id())),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        Path::new(ROOT).join("examples"),
        work.path().join("examples"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        std::env::var("PATH").unwrap_or_default(),
        support::kube::testbin_dir().display()
    );
    let out = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "quick-start.sh"])
        .current_dir(work.path())
        .envs(&c.env)
        .env("PATH", path)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "README quick start failed; stdout:\n{stdout}"
    );
    let printed = stdout.lines().last().unwrap_or_default().trim().to_string();
    let obj = ctx.imports("shop").get("web-1-4").await.unwrap();
    assert_eq!(
        Some(printed.as_str()),
        obj.status.as_ref().and_then(|s| s.digest.as_deref()),
        "the digest the quick start printed"
    );
    assert_pushed(
        c,
        &obj,
        c.var("TARGET_REGISTRY"),
        "shop/web",
        &["1.4", "stable"],
    );
}

/// A PVC source (a hostPath volume) pushed to the TLS + htpasswd registry by a real worker Pod
/// in a `restricted` namespace; then deleting the ImageImport lets the garbage collector
/// remove its Job and Pods.
async fn pvc_source_then_garbage_collection(ctx: &Ctx<'_>) {
    let c = ctx.cluster;
    let ns = &ctx.namespace("rn-pvc").await;
    ctx.tls_registry_access(ns).await;
    ctx.claim(
        ns,
        "deliveries",
        &[("web/web-1.4.tar", &archive("1.4", 10))],
    )
    .await;
    let reg = c.var("TLS_REGISTRY");
    ctx.create_import(
        ns,
        "web",
        json!({"source": {"pvc": {"claimName": "deliveries", "path": "web/web-1.4.tar"}},
            "target": {"repository": format!("{reg}/{}", format!("{ns}/web")), "tags": ["1.4", "stable"],
                "credentialsSecretRef": {"name": "regcred"},
                "caBundleRef": {"name": "registry-ca", "key": "ca.crt"}}}),
    )
    .await;
    let obj = ctx.wait_ready_true(ns, "web").await;
    assert_pushed(c, &obj, reg, &format!("{ns}/web"), &["1.4", "stable"]);
    // The worker really ran as a Pod on the node, under the restricted policy.
    ctx.wait_for("the worker Pod Succeeded", || async {
        let pods = ctx.pods(ns, "imageimport.dev/name=web").await;
        !pods.is_empty()
            && pods
                .iter()
                .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
    })
    .await;
    for p in ctx.pods(ns, "imageimport.dev/name=web").await {
        assert_eq!(
            p.spec.as_ref().unwrap().node_name.as_deref(),
            Some("imageimport-node")
        );
    }
    // ... and the namespace's policy is enforced: a Pod running as root is refused.
    let root_pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "as-root"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}
    }))
    .unwrap();
    let refused = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .create(&PostParams::default(), &root_pod)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("violates PodSecurity \"restricted"),
        "{refused}"
    );

    ctx.imports(ns)
        .delete("web", &DeleteParams::background())
        .await
        .unwrap();
    ctx.wait_for("the GC removed the Job and its Pods", || async {
        ctx.jobs(ns, "web").await.is_empty()
            && ctx.pods(ns, "imageimport.dev/name=web").await.is_empty()
    })
    .await;
}

/// A URL source on the node's address, pushed to the plain-HTTP registry.
async fn url_source(ctx: &Ctx<'_>) {
    let c = ctx.cluster;
    let ns = &ctx.namespace("rn-url").await;
    let body = archive("2.0", 20);
    let sha = archives::sha256_hex(&body);
    let publisher = Publisher::start(c.var("NODE_IP"), body, false);
    let reg = c.var("REGISTRY");
    ctx.create_import(
        ns,
        "api",
        json!({"source": {"url": {"url": publisher.url}, "sha256": sha},
            "target": {"repository": format!("{reg}/{}", format!("{ns}/api")), "insecure": true},
            "layerCompression": "zstd"}),
    )
    .await;
    let obj = ctx.wait_ready_true(ns, "api").await;
    assert_pushed(c, &obj, reg, &format!("{ns}/api"), &["2.0"]);
}

/// A hostile archive (a member escaping the archive root) ends Ready=False, nothing tagged.
async fn hostile_archive(ctx: &Ctx<'_>) {
    let c = ctx.cluster;
    let ns = &ctx.namespace("rn-hostile").await;
    let bad = archives::hostile::dotdot_member();
    ctx.claim(ns, "deliveries", &[("bad.tar", &bad)]).await;
    let reg = c.var("REGISTRY");
    ctx.create_import(
        ns,
        "bad",
        json!({"source": {"pvc": {"claimName": "deliveries", "path": "bad.tar"}},
            "target": {"repository": format!("{reg}/{}", format!("{ns}/bad")), "insecure": true}}),
    )
    .await;
    let obj = ctx.wait_settled(ns, "bad").await;
    let (status, reason, message) = ready(&obj).unwrap();
    assert_eq!(status, "False");
    assert_eq!(reason, "InvalidArchive", "{message}");
    assert!(message.contains(".."), "{message}");
    assert_eq!(
        skopeo_tags(c, reg, &format!("{ns}/bad")),
        Vec::<String>::new()
    );
}

/// An import over a held URL download, with `disrupt` applied while the worker is half-way.
/// Ends pushed once (one tag, the status digest) or with a clear failure.
async fn disrupted_import<'a>(
    ctx: &'a Ctx<'a>,
    base: &str,
    seed: u64,
    disrupt: impl AsyncFnOnce(&'a Ctx<'a>, &str) -> bool,
) -> (ImageImport, usize, usize) {
    let c = ctx.cluster;
    let ns = &ctx.namespace(base).await;
    let publisher = Publisher::start(c.var("NODE_IP"), archive("3.0", seed), true);
    let reg = c.var("REGISTRY");
    ctx.create_import(
        ns,
        "web",
        json!({"source": {"url": {"url": publisher.url}},
            "target": {"repository": format!("{reg}/{}", format!("{ns}/web")), "insecure": true}}),
    )
    .await;
    publisher.wait_holding();
    let finish = disrupt(ctx, ns).await;
    publisher.release(finish);
    let obj = ctx.wait_settled(ns, "web").await;
    let (status, reason, message) = ready(&obj).unwrap();
    eprintln!(
        "   ended Ready={status} ({reason}: {message}) after {} download(s), {} Job(s)",
        publisher.connections(),
        ctx.jobs(ns, "web").await.len()
    );
    if status == "True" {
        assert_pushed(c, &obj, reg, &format!("{ns}/web"), &["3.0"]);
    } else {
        assert!(
            !reason.is_empty() && !message.is_empty(),
            "unclear failure: {reason}: {message}"
        );
        assert_eq!(
            skopeo_tags(c, reg, &format!("{ns}/web")),
            Vec::<String>::new()
        );
    }
    (
        obj,
        publisher.connections(),
        ctx.jobs(ns, "web").await.len(),
    )
}

/// The worker Pod deleted mid-import: a new attempt pushes it, or the import fails clearly.
async fn worker_pod_deleted(ctx: &Ctx<'_>) {
    disrupted_import(ctx, "rn-worker-lost", 30, async |ctx, ns| {
        let pods = ctx.pods(ns, "imageimport.dev/name=web").await;
        let api = Api::<Pod>::namespaced(ctx.client.clone(), ns);
        for p in &pods {
            api.delete(&p.name_any(), &DeleteParams::default().grace_period(1))
                .await
                .unwrap();
        }
        // Gone once the kubelet has killed it: only then does the held download break off.
        ctx.wait_for("the worker Pod is gone", || async {
            let left = ctx.pods(ns, "imageimport.dev/name=web").await;
            !left.iter().any(|p| pods.iter().any(|q| q.uid() == p.uid()))
        })
        .await;
        false
    })
    .await;
}

/// The controller Pod deleted mid-import: its replacement adopts the running Job (one Job, one
/// download) and records the result.
async fn controller_pod_deleted(ctx: &Ctx<'_>) {
    let (obj, downloads, jobs) = disrupted_import(ctx, "rn-controller-lost", 40, async |ctx, _| {
        let (pods, _) = ctx.controllers().await;
        for p in &pods {
            Api::<Pod>::namespaced(ctx.client.clone(), RELEASE_NS)
                .delete(p, &DeleteParams::default())
                .await
                .unwrap();
        }
        ctx.wait_for("a new controller leads", || async {
            let (now, holder) = ctx.controllers().await;
            holder.is_some_and(|h| now.contains(&h) && !pods.contains(&h))
        })
        .await;
        true
    })
    .await;
    assert_eq!(ready(&obj).unwrap().0, "True");
    assert_eq!(downloads, 1, "the import ran once");
    assert_eq!(jobs, 1, "one worker Job");
}

/// containerd restarted mid-import: the worker's container keeps running under its shim and the
/// import completes once.
async fn containerd_restarted(ctx: &Ctx<'_>) {
    let (obj, downloads, jobs) = disrupted_import(ctx, "rn-containerd", 50, async |ctx, _| {
        ctx.cluster.cluster_sh("restart-containerd");
        true
    })
    .await;
    assert_eq!(ready(&obj).unwrap().0, "True");
    assert_eq!(downloads, 1, "the import ran once");
    assert_eq!(jobs, 1, "one worker Job");
}

/// Two controller replicas: the leader's Pod killed, the other takes the Lease and imports.
async fn two_replicas_fail_over(ctx: &Ctx<'_>) {
    ctx.cluster.helm(&["--set=replicas=2"]);
    let deadline = Instant::now() + WAIT;
    let leader = loop {
        let (pods, holder) = ctx.controllers().await;
        if let Some(h) = holder
            && pods.len() == 2
            && pods.contains(&h)
        {
            break h;
        }
        assert!(Instant::now() < deadline, "never two replicas, one leading");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    Api::<Pod>::namespaced(ctx.client.clone(), RELEASE_NS)
        .delete(&leader, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    ctx.wait_for("the other replica takes the Lease", || async {
        let (pods, holder) = ctx.controllers().await;
        holder.is_some_and(|h| h != leader && pods.contains(&h))
    })
    .await;
    let c = ctx.cluster;
    let ns = &ctx.namespace("rn-failover").await;
    let publisher = Publisher::start(c.var("NODE_IP"), archive("4.0", 60), false);
    let reg = c.var("REGISTRY");
    ctx.create_import(
        ns,
        "web",
        json!({"source": {"url": {"url": publisher.url}},
            "target": {"repository": format!("{reg}/{}", format!("{ns}/web")), "insecure": true}}),
    )
    .await;
    let obj = ctx.wait_ready_true(ns, "web").await;
    assert_pushed(c, &obj, reg, &format!("{ns}/web"), &["4.0"]);
    ctx.cluster.helm(&["--set=replicas=1"]);
}

/// A kubeconfig for ServiceAccount `ns/name` (a TokenRequest token: the plugin forwards bearer
/// tokens only), written under `dir`.
async fn service_account_kubeconfig(ctx: &Ctx<'_>, ns: &str, name: &str, dir: &Path) -> PathBuf {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    ctx.apply(
        ns,
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": ns}}),
    )
    .await;
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"expirationSeconds": 3600}})).unwrap();
    let minted: TokenRequest = Api::<ServiceAccount>::namespaced(ctx.client.clone(), ns)
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .unwrap();
    let token = minted.status.unwrap().token;
    let admin: Value =
        serde_yaml::from_str(&std::fs::read_to_string(ctx.cluster.var("KUBECONFIG")).unwrap())
            .unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let kc = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": name, "namespace": ns}}],
        "current-context": "c"
    });
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, serde_json::to_string(&kc).unwrap()).unwrap();
    path
}

/// Waits until the controller leading is one started with `--upload-url=<url>` (after a helm
/// upgrade the old Pod may still lead for a while and give new imports its URL).
async fn wait_leader_with_upload_url(ctx: &Ctx<'_>, url: &str) {
    let flag = format!("--upload-url={url}");
    ctx.wait_for(&format!("the leading controller has {flag}"), || async {
        let (_, holder) = ctx.controllers().await;
        let Some(holder) = holder else { return false };
        ctx.pods(RELEASE_NS, "app.kubernetes.io/name=imageimport")
            .await
            .iter()
            .filter(|p| p.name_any() == holder && p.metadata.deletion_timestamp.is_none())
            .flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter()))
            .any(|c| c.args.iter().flatten().any(|a| *a == flag))
    })
    .await;
}

/// `kubectl imageimport upload` as a namespace user (a Role with imageimports and
/// imageimports/upload, nothing else in its namespace): once through `UPLOAD_URL`, the chart's
/// `upload.url` that `hack/cluster.sh up` exposes on the node's address (a hostPort), and once
/// with the chart's default in-cluster URL, which this machine cannot resolve, so the plugin
/// falls back to a port-forward through the API server to the upload service's Pod (the user
/// may list Pods, get Services and port-forward in the release namespace). Both reach Ready
/// with the digest skopeo reads.
async fn plugin_upload(ctx: &Ctx<'_>) {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let c = ctx.cluster;
    let upload_url = c.var("UPLOAD_URL").to_string();
    assert_eq!(upload_url, format!("http://{}:30080", c.var("NODE_IP")));
    let ns = ctx.namespace("upload").await;
    let dir = tempfile::tempdir().unwrap();
    let rules = |ns: &str, rules: Value| {
        (
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": format!("uploader-{ns}"), "namespace": ns}, "rules": rules}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": format!("uploader-{ns}"), "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": format!("uploader-{ns}")},
                "subjects": [{"kind": "ServiceAccount", "name": "uploader", "namespace": ns}]}),
        )
    };
    let (role, binding) = rules(
        &ns,
        json!([{"apiGroups": ["imageimport.dev"], "resources": ["imageimports"],
                "verbs": ["get", "list", "watch", "create", "patch"]},
               {"apiGroups": ["imageimport.dev"], "resources": ["imageimports/upload"],
                "verbs": ["create"]}]),
    );
    ctx.apply(&ns, role).await;
    ctx.apply(&ns, binding).await;
    let kubeconfig = service_account_kubeconfig(ctx, &ns, "uploader", dir.path()).await;
    let reg = c.var("REGISTRY").to_string();

    let upload = |file: &Path, name: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_kubectl-imageimport"))
            .arg("upload")
            .arg(file)
            .args(["--to", &format!("{reg}/{ns}/{name}:1.0"), "--insecure"])
            .args(["-n", &ns, "--name", name, "--timeout", "300"])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "kubectl-imageimport upload {name}: {stderr}"
        );
        (String::from_utf8(out.stdout).unwrap(), stderr)
    };

    // Through UPLOAD_URL.
    let file = dir.path().join("direct.tar");
    std::fs::write(&file, archive("direct", 700)).unwrap();
    let (stdout, stderr) = upload(&file, "direct");
    assert!(!stderr.contains("port-forward"), "{stderr}");
    assert!(
        stderr.contains(&format!("to {upload_url}/uploads/{ns}/direct")),
        "{stderr}"
    );
    let obj = ctx.wait_ready_true(&ns, "direct").await;
    let st = obj.status.as_ref().unwrap();
    assert!(
        st.upload.as_ref().and_then(|u| u.url.as_deref())
            == Some(&format!("{upload_url}/uploads/{ns}/direct")),
        "{:?}",
        st.upload
    );
    assert_pushed(c, &obj, &reg, &format!("{ns}/direct"), &["1.0"]);
    let digest = st.digest.clone().unwrap();
    assert_eq!(stdout.trim(), format!("{reg}/{ns}/direct:1.0@{digest}"));

    // Through a port-forward: the Service's cluster DNS name as the URL users are given (the
    // chart's default without upload.internalUrl), which this machine does not resolve.
    // Without the release namespace's grants the plugin says so.
    let internal = format!("http://imageimport-upload.{RELEASE_NS}.svc:80");
    c.helm(&[&format!("--set=upload.url={internal}")]);
    wait_leader_with_upload_url(ctx, &internal).await;
    let file = dir.path().join("forwarded.tar");
    std::fs::write(&file, archive("forwarded", 710)).unwrap();
    let denied = Command::new(env!("CARGO_BIN_EXE_kubectl-imageimport"))
        .arg("upload")
        .arg(&file)
        .args(["--to", &format!("{reg}/{ns}/forwarded:1.0"), "--insecure"])
        .args(["-n", &ns, "--name", "forwarded"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()
        .unwrap();
    let denied_err = String::from_utf8_lossy(&denied.stderr);
    assert_eq!(denied.status.code(), Some(1), "{denied_err}");
    assert!(denied_err.contains("port-forward"), "{denied_err}");
    let (role, binding) = rules(
        RELEASE_NS,
        json!([{"apiGroups": [""], "resources": ["services"], "verbs": ["get"]},
               {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
               {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"]}]),
    );
    let mut binding = binding;
    binding["subjects"][0]["namespace"] = json!(ns);
    let role_name = format!("uploader-{RELEASE_NS}");
    let (role_obj, binding_obj): (Role, RoleBinding) = (
        serde_json::from_value(role).unwrap(),
        serde_json::from_value(binding).unwrap(),
    );
    Api::<Role>::namespaced(ctx.client.clone(), RELEASE_NS)
        .patch(&role_name, &ssa(), &Patch::Apply(&role_obj))
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(ctx.client.clone(), RELEASE_NS)
        .patch(&role_name, &ssa(), &Patch::Apply(&binding_obj))
        .await
        .unwrap();
    let result = std::panic::AssertUnwindSafe(async {
        let (stdout, stderr) = upload(&file, "forwarded");
        assert!(
            stderr.contains(&format!("{internal} does not answer from here: port-forward to {RELEASE_NS}/imageimport-upload-")),
            "{stderr}"
        );
        let obj = ctx.wait_ready_true(&ns, "forwarded").await;
        let st = obj.status.as_ref().unwrap();
        assert!(
            st.upload.as_ref().and_then(|u| u.url.as_deref())
                == Some(&format!("{internal}/uploads/{ns}/forwarded")),
            "{:?}",
            st.upload
        );
        assert_pushed(c, &obj, &reg, &format!("{ns}/forwarded"), &["1.0"]);
        let digest = st.digest.clone().unwrap();
        assert_eq!(stdout.trim(), format!("{reg}/{ns}/forwarded:1.0@{digest}"));
    });
    let outcome = futures::FutureExt::catch_unwind(result).await;
    // The cluster as hack/cluster.sh left it, also when an assertion failed.
    let _ = Api::<RoleBinding>::namespaced(ctx.client.clone(), RELEASE_NS)
        .delete(&role_name, &DeleteParams::default())
        .await;
    let _ = Api::<Role>::namespaced(ctx.client.clone(), RELEASE_NS)
        .delete(&role_name, &DeleteParams::default())
        .await;
    c.helm(&[&format!("--set=upload.url={upload_url}")]);
    wait_leader_with_upload_url(ctx, &upload_url).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn real_node() {
    let scenarios: Vec<(&str, Scenario)> = vec![
        ("controller_ready_and_leading", |c| {
            Box::pin(controller_ready_and_leading(c))
        }),
        ("readme_quick_start", |c| Box::pin(readme_quick_start(c))),
        ("pvc_source_then_garbage_collection", |c| {
            Box::pin(pvc_source_then_garbage_collection(c))
        }),
        ("url_source", |c| Box::pin(url_source(c))),
        ("hostile_archive", |c| Box::pin(hostile_archive(c))),
        ("worker_pod_deleted", |c| Box::pin(worker_pod_deleted(c))),
        ("controller_pod_deleted", |c| {
            Box::pin(controller_pod_deleted(c))
        }),
        ("containerd_restarted", |c| {
            Box::pin(containerd_restarted(c))
        }),
        ("two_replicas_fail_over", |c| {
            Box::pin(two_replicas_fail_over(c))
        }),
        ("plugin_upload", |c| Box::pin(plugin_upload(c))),
    ];
    let only = std::env::var("IMAGEIMPORT_REAL_NODE_ONLY").ok();
    let start = Instant::now();
    let cluster = Cluster::up();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(cluster.client());
    let ctx = Ctx {
        cluster: &cluster,
        client,
    };
    if !cluster.owned {
        rt.block_on(ctx.delete_earlier_runs());
    }
    let mut failed = Vec::new();
    for (name, scenario) in scenarios {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|x| x == name))
        {
            continue;
        }
        eprintln!("== {name}");
        let t = Instant::now();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(scenario(&ctx))));
        eprintln!(
            "== {name}: {} in {:.1?}",
            if result.is_ok() { "ok" } else { "FAILED" },
            t.elapsed()
        );
        if result.is_err() {
            failed.push(name);
        }
    }
    drop(rt);
    drop(cluster);
    eprintln!("== real_node: {:.0?} in all", start.elapsed());
    assert!(failed.is_empty(), "failed scenarios: {failed:?}");
}
