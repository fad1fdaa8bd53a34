//! Uploads (`spec.source.upload`) end to end: a real kube-apiserver, the real registry, the
//! upload service binary with the chart's RBAC, the controller, and the worker run as its
//! Job's command (the test plays the node, as in tests/operator.rs). Clients: tus-js-client
//! from npm, unchanged (tests/js, run with node), and plain HTTP for the refusals.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use imageimport::controller::upload::TOKEN_AUDIENCE;
use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use serde_json::{Value, json};
use support::archives::{self, Format, ImageSpec, hostile};
use support::cluster::*;
use support::registry::{Registry, skopeo};

struct Uploads {
    c: Cluster,
    service: Child,
    /// The upload service's base URL (public and in-cluster: both loopback here).
    base: String,
    /// A user allowed to upload into imports of NS (`create imageimports/upload`).
    uploader: String,
}

impl Drop for Uploads {
    fn drop(&mut self) {
        let _ = self.service.kill();
        let _ = self.service.wait();
    }
}

/// A ServiceAccount of NS allowed `create imageimports/upload` there (as the aggregated edit
/// role would allow a namespace editor); its token.
async fn uploader_token(c: &Cluster, name: &str) -> String {
    let rules = json!([{"apiGroups": ["imageimport.dev"], "resources": ["imageimports/upload"], "verbs": ["create"]}]);
    namespace_role(c, name, rules).await;
    c.api.service_account_token(NS, name).await
}

async fn start(expiry_seconds: u64) -> Uploads {
    let mut c = Cluster::start().await;
    let (service, base) = spawn_upload_service(&c).await;
    c.kill_controller();
    let expiry = expiry_seconds.to_string();
    let ctl = c.spawn_controller(
        &[
            "--upload-url",
            &base,
            "--upload-internal-url",
            &base,
            "--upload-expiry-seconds",
            &expiry,
        ],
        "ctl",
    );
    c.controller = Some(ctl);
    let uploader = uploader_token(&c, "uploader").await;
    Uploads {
        c,
        service,
        base,
        uploader,
    }
}

fn upload_import(name: &str, repo: &str) -> Value {
    json!({
        "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "source": {"upload": {}},
            "target": {"repository": repo, "tags": ["1"], "insecure": true}
        }
    })
}

/// The worker of `name`'s current Job, running (as the node would run its container).
struct Worker {
    job: Job,
    started: k8s_openapi::jiff::Timestamp,
    run: tokio::task::JoinHandle<Output>,
}

async fn start_worker(c: &Cluster, name: &str) -> Worker {
    let job = c.wait_job(name).await;
    let mut cmd = c.prepare_job(&job, &BTreeMap::new()).await;
    let started = k8s_openapi::jiff::Timestamp::now();
    let run = tokio::task::spawn_blocking(move || cmd.output().unwrap());
    Worker { job, started, run }
}

impl Worker {
    /// Its exit status, recorded on the Job as the Job controller would.
    async fn finish(self, c: &Cluster) -> i32 {
        let out = self.run.await.unwrap();
        eprintln!(
            "worker {}: {}",
            self.job.name_any(),
            String::from_utf8_lossy(&out.stderr)
        );
        let code = out.status.code().unwrap_or(137);
        c.record_job_outcome(&self.job.name_any(), code, self.started)
            .await;
        code
    }
}

fn js_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        dir.join("node_modules/tus-js-client").is_dir(),
        "tus-js-client is not installed: run `npm ci` in tests/js (.ci/run does)"
    );
    dir
}

/// tus-js-client uploading `file` to `endpoint`: its exit status and JSON events.
async fn tus_js(endpoint: &str, file: &Path, extra: &[&str]) -> (i32, Vec<Value>) {
    let dir = js_dir();
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .arg("tus-upload.mjs")
        .arg(endpoint)
        .arg(file)
        .args(extra);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    eprintln!("tus-js-client: {}", String::from_utf8_lossy(&out.stderr));
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.code().unwrap_or(-1), events)
}

async fn wait_reason(c: &Cluster, name: &str, reason: &str) -> imageimport::api::ImageImport {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let obj = c.imports().get(name).await.unwrap();
        if ready(&obj).is_some_and(|(_, r, _)| r == reason) {
            return obj;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never had reason {reason}: {:?}",
            ready(&obj)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn build_archive(u: &Uploads, name: &str, seed: u64) -> (PathBuf, archives::Built) {
    let built = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(&["web:1.4"], layers(seed))],
    );
    let path = u.c.work.path().join(format!("{name}.tar"));
    std::fs::write(&path, &built.bytes).unwrap();
    (path, built)
}

/// A plain tus request: (status, headers).
async fn tus_request(
    method: &str,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap) {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method.parse().unwrap(), url)
        .header("Tus-Resumable", "1.0.0");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.headers().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_js_client_upload_reaches_ready_and_strangers_are_refused() {
    let u = start(24 * 3600).await;
    let c = &u.c;
    let reg = Registry::plain();
    let (file, built) = build_archive(&u, "web", 7000);
    c.apply(upload_import("web", &reg.reference("shop/web")))
        .await;
    let obj = wait_reason(c, "web", "AwaitingUpload").await;
    let endpoint = format!("{}/uploads/{NS}/web", u.base);
    assert_eq!(
        obj.status.as_ref().unwrap().upload.as_ref().unwrap().url,
        Some(endpoint.clone())
    );
    let worker = start_worker(c, "web").await;

    // Refused: no token, a forged one, a user without the verb, a token for another audience.
    let len = built.bytes.len().to_string();
    let create = [("Upload-Length", len.as_str())];
    assert_eq!(tus_request("POST", &endpoint, None, &create).await.0, 401);
    assert_eq!(
        tus_request("POST", &endpoint, Some("forged.token.value"), &create)
            .await
            .0,
        401
    );
    let stranger = c.api.service_account_token(NS, "stranger").await;
    assert_eq!(
        tus_request("POST", &endpoint, Some(&stranger), &create)
            .await
            .0,
        403
    );
    let worker_token = c
        .api
        .service_account_token_for(NS, "imageimport-worker", &[TOKEN_AUDIENCE])
        .await;
    assert_eq!(
        tus_request("POST", &endpoint, Some(&worker_token), &create)
            .await
            .0,
        401,
        "a worker token is for the upload audience only, not a user's"
    );
    // Nor may another namespace's worker pull this import's bytes.
    let foreign = c
        .api
        .service_account_token_for("team", "imageimport-worker", &[TOKEN_AUDIENCE])
        .await;
    let job = worker.job.name_any();
    let pull = format!("{}/internal/v1/pull/{NS}/web?job={job}&offset=0", u.base);
    assert_eq!(tus_request("GET", &pull, Some(&foreign), &[]).await.0, 403);
    let user_pull = tus_request("GET", &pull, Some(&u.uploader), &[]).await.0;
    assert_eq!(user_pull, 401, "a user token is not a worker's");
    // tus-js-client without a token fails; nothing moved.
    let (code, events) = tus_js(&endpoint, &file, &[]).await;
    assert_eq!(code, 1, "{events:?}");
    assert!(events.iter().any(|e| e["status"] == 401), "{events:?}");
    assert!(reg.tags("shop/web").is_empty());

    // The uploader, with tus-js-client unchanged.
    let (code, events) = tus_js(&endpoint, &file, &["--token", &u.uploader]).await;
    assert_eq!(code, 0, "{events:?}");
    assert_eq!(worker.finish(c).await, 0);
    let obj = c.wait_ready("web", "True", Some("Succeeded")).await;
    let st = obj.status.unwrap();
    assert_eq!(
        st.digest.as_deref(),
        Some(skopeo::manifest_digest(&reg, "shop/web:1").as_str())
    );
    assert_eq!(
        st.image_id.as_deref(),
        Some(built.images[0].config_digest.as_str())
    );
    // The upload service's last report is in before the worker exits, so before Ready.
    let up = st.upload.unwrap();
    let len = built.bytes.len() as u64;
    assert_eq!((up.offset, up.length), (Some(len), Some(len)), "{up:?}");
    assert_eq!(up.url, Some(endpoint.clone()));
    // After it is imported, the upload is gone.
    assert_eq!(
        tus_request("POST", &endpoint, Some(&u.uploader), &create)
            .await
            .0,
        410
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_resumes_at_the_reported_offset() {
    let u = start(24 * 3600).await;
    let c = &u.c;
    let reg = Registry::plain();
    let (file, built) = build_archive(&u, "web", 7100);
    c.apply(upload_import("web", &reg.reference("shop/resumed")))
        .await;
    let worker = start_worker(c, "web").await;
    let endpoint = format!("{}/uploads/{NS}/web", u.base);
    let len = built.bytes.len() as u64;
    let half = (len / 2).to_string();
    // Small PATCH requests (as behind a proxy's body limit); stopped halfway.
    let (code, events) = tus_js(
        &endpoint,
        &file,
        &[
            "--token",
            &u.uploader,
            "--chunk-size",
            "16384",
            "--abort-after",
            &half,
        ],
    )
    .await;
    assert_eq!(code, 3, "{events:?}");
    let url = events
        .iter()
        .find_map(|e| e["url"].as_str())
        .unwrap()
        .to_string();
    let acknowledged = events
        .iter()
        .filter_map(|e| e["acknowledged"].as_u64())
        .max()
        .unwrap();
    assert!(acknowledged >= len / 2 && acknowledged < len, "{events:?}");
    // What the server reports is what the import took in: the status says the same.
    let (status, headers) = tus_request("HEAD", &url, Some(&u.uploader), &[]).await;
    assert_eq!(status, 200);
    let offset: u64 = headers["upload-offset"].to_str().unwrap().parse().unwrap();
    assert!(offset >= acknowledged && offset < len, "{offset}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let obj = c.imports().get("web").await.unwrap();
        let up = obj.status.unwrap().upload.unwrap_or_default();
        if up.offset == Some(offset) {
            break;
        }
        assert!(Instant::now() < deadline, "status.upload: {up:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(reg.tags("shop/resumed").is_empty());
    // A second run resumes there (HEAD), sends the rest, and the import completes.
    let (code, events) = tus_js(
        &endpoint,
        &file,
        &["--token", &u.uploader, "--upload-url", &url],
    )
    .await;
    assert_eq!(code, 0, "{events:?}");
    assert_eq!(worker.finish(c).await, 0);
    let obj = c.wait_ready("web", "True", Some("Succeeded")).await;
    assert_eq!(
        obj.status.unwrap().digest.as_deref(),
        Some(skopeo::manifest_digest(&reg, "shop/resumed:1").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_uploads_at_once_and_a_hostile_one() {
    let u = start(24 * 3600).await;
    let c = &u.c;
    let reg = Registry::plain();
    let (file_a, _) = build_archive(&u, "a", 7200);
    let (file_b, _) = build_archive(&u, "b", 7300);
    let evil = u.c.work.path().join("evil.tar");
    std::fs::write(&evil, hostile::tampered_layer()).unwrap();
    for (name, repo) in [("a", "shop/a"), ("b", "shop/b"), ("evil", "shop/evil")] {
        c.apply(upload_import(name, &reg.reference(repo))).await;
    }
    let (wa, wb, we) = (
        start_worker(c, "a").await,
        start_worker(c, "b").await,
        start_worker(c, "evil").await,
    );
    let ea = format!("{}/uploads/{NS}/a", u.base);
    let eb = format!("{}/uploads/{NS}/b", u.base);
    let ee = format!("{}/uploads/{NS}/evil", u.base);
    let token = ["--token", u.uploader.as_str(), "--chunk-size", "65536"];
    let ((ca, _), (cb, _), (_, evil_events)) = tokio::join!(
        tus_js(&ea, &file_a, &token),
        tus_js(&eb, &file_b, &token),
        tus_js(&ee, &evil, &token)
    );
    assert_eq!((ca, cb), (0, 0));
    assert_eq!(wa.finish(c).await, 0);
    assert_eq!(wb.finish(c).await, 0);
    assert_eq!(we.finish(c).await, 1);
    for (name, repo) in [("a", "shop/a:1"), ("b", "shop/b:1")] {
        let obj = c.wait_ready(name, "True", Some("Succeeded")).await;
        assert_eq!(
            obj.status.unwrap().digest.as_deref(),
            Some(skopeo::manifest_digest(&reg, repo).as_str())
        );
    }
    let obj = c
        .wait_ready("evil", "False", Some("VerificationFailed"))
        .await;
    assert!(reg.tags("shop/evil").is_empty());
    eprintln!("hostile upload: {:?} / {evil_events:?}", ready(&obj));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_never_comes_expires() {
    let u = start(2).await;
    let c = &u.c;
    let reg = Registry::plain();
    c.apply(upload_import("late", &reg.reference("shop/late")))
        .await;
    let worker = start_worker(c, "late").await;
    assert_eq!(worker.finish(c).await, 1);
    let obj = c.wait_ready("late", "False", Some("UploadExpired")).await;
    let (_, _, msg) = ready(&obj).unwrap();
    assert!(msg.contains("no byte arrived"), "{msg}");
    let endpoint = format!("{}/uploads/{NS}/late", u.base);
    assert_eq!(
        tus_request(
            "POST",
            &endpoint,
            Some(&u.uploader),
            &[("Upload-Length", "10")]
        )
        .await
        .0,
        422,
        "an expired import takes no upload"
    );
    assert!(reg.tags("shop/late").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_creates_the_import_uploads_and_prints_the_reference() {
    let u = start(24 * 3600).await;
    let c = &u.c;
    let reg = Registry::plain();
    let (file, built) = build_archive(&u, "plugin", 7400);
    // A user who may create ImageImports and upload into them (as `edit` with the chart's
    // aggregated role would).
    let rules = json!([
        {"apiGroups": ["imageimport.dev"], "resources": ["imageimports"], "verbs": ["get", "create", "patch"]},
        {"apiGroups": ["imageimport.dev"], "resources": ["imageimports/upload"], "verbs": ["create"]}
    ]);
    namespace_role(c, "importer", rules).await;
    let kubeconfig = c.api.service_account_kubeconfig(NS, "importer").await;
    let target = reg.reference("shop/plugin:2");
    let plugin = |kubeconfig: PathBuf, file: PathBuf, target: String| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubectl-imageimport"));
        cmd.args(["upload"])
            .arg(file)
            .args(["--to", &target, "-n", NS, "--insecure", "--name", "plugged"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--chunk-size", "20000"]);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let run = plugin(kubeconfig.clone(), file.clone(), target.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.imports().get_opt("plugged").await.unwrap().is_none() {
        assert!(
            !run.is_finished(),
            "the plugin ended before creating the import"
        );
        assert!(
            Instant::now() < deadline,
            "the plugin created no ImageImport"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let worker = start_worker(c, "plugged").await;
    assert_eq!(worker.finish(c).await, 0);
    let out = run.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let digest = skopeo::manifest_digest(&reg, "shop/plugin:2");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{target}@{digest}")
    );
    let obj = c.imports().get("plugged").await.unwrap();
    assert_eq!(
        obj.status.unwrap().image_id.as_deref(),
        Some(built.images[0].config_digest.as_str())
    );
    // A user without a token in the kubeconfig is told what to do; a stranger gets exit 2.
    let stranger = c.api.service_account_kubeconfig(NS, "stranger").await;
    let out = plugin(stranger, file, reg.reference("shop/other:1"))
        .await
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
}

/// Image archives made of parts, read from any offset without being stored: each layer holds
/// one file of a cheap repeating pattern, so gigabytes cost one hashing pass to describe and
/// none to send again from the middle.
mod generated {
    use std::sync::Arc;

    use bytes::Bytes;
    use sha2::{Digest, Sha256};

    enum Part {
        Bytes(Bytes),
        /// `len` bytes of the pattern of `seed`.
        Pattern {
            len: u64,
            seed: u8,
        },
    }

    pub struct Archive {
        parts: Vec<(u64, Part)>,
        pub len: u64,
        /// Where each layer member's data ends in the archive (a checkpoint's offset).
        pub layer_ends: Vec<u64>,
        pub diff_ids: Vec<String>,
        pub config_digest: String,
    }

    /// The pattern: a 64 KiB block that differs for each seed.
    fn block(seed: u8) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(seed);
        (0..65536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn header(name: &str, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn pad(n: u64) -> Vec<u8> {
        vec![0; (n.next_multiple_of(512) - n) as usize]
    }

    impl Archive {
        /// A docker-save archive of one image (`web:1.4`) with a layer of each size in `sizes`.
        pub fn new(sizes: &[u64]) -> Arc<Archive> {
            let mut parts: Vec<Part> = Vec::new();
            let mut layer_ends = Vec::new();
            let mut diff_ids = Vec::new();
            let mut paths = Vec::new();
            let mut at = 0u64;
            for (i, &size) in sizes.iter().enumerate() {
                let seed = i as u8 + 1;
                // The layer: a tar of one file.
                let inner_head = header(&format!("data-{i}"), size);
                let inner_tail = [pad(size), vec![0; 1024]].concat();
                let inner_len = 512 + size + inner_tail.len() as u64;
                let mut h = Sha256::new();
                h.update(&inner_head);
                let b = block(seed);
                let mut left = size;
                while left > 0 {
                    let n = left.min(b.len() as u64) as usize;
                    h.update(&b[..n]);
                    left -= n as u64;
                }
                h.update(&inner_tail);
                diff_ids.push(format!("sha256:{}", hex::encode(h.finalize())));
                let path = format!("{}/layer.tar", hex::encode(Sha256::digest([seed])));
                let outer = header(&path, inner_len);
                at += outer.len() as u64 + inner_len;
                layer_ends.push(at);
                parts.push(Part::Bytes([outer, inner_head].concat().into()));
                parts.push(Part::Pattern { len: size, seed });
                parts.push(Part::Bytes(inner_tail.into()));
                paths.push(path);
            }
            let config = serde_json::to_vec(&serde_json::json!({
                "architecture": "amd64", "os": "linux", "config": {},
                "rootfs": {"type": "layers", "diff_ids": &diff_ids},
            }))
            .unwrap();
            let config_hex = hex::encode(Sha256::digest(&config));
            let config_name = format!("{config_hex}.json");
            let manifest = serde_json::to_vec(&serde_json::json!([
                {"Config": config_name, "RepoTags": ["web:1.4"], "Layers": paths}
            ]))
            .unwrap();
            for (name, data) in [
                (config_name.as_str(), &config),
                ("manifest.json", &manifest),
            ] {
                let len = data.len() as u64;
                parts.push(Part::Bytes(
                    [header(name, len), data.clone(), pad(len)].concat().into(),
                ));
            }
            parts.push(Part::Bytes(vec![0; 1024].into()));
            let mut placed = Vec::new();
            let mut len = 0;
            for p in parts {
                let n = match &p {
                    Part::Bytes(b) => b.len() as u64,
                    Part::Pattern { len, .. } => *len,
                };
                placed.push((len, p));
                len += n;
            }
            Arc::new(Archive {
                parts: placed,
                len,
                layer_ends,
                diff_ids,
                config_digest: format!("sha256:{config_hex}"),
            })
        }

        /// Up to `max` bytes from `offset` (fewer only at a part's end or the archive's).
        pub fn chunk(&self, offset: u64, max: usize) -> Bytes {
            let i = self.parts.partition_point(|(start, _)| *start <= offset) - 1;
            let (start, part) = &self.parts[i];
            let within = offset - start;
            match part {
                Part::Bytes(b) => {
                    let from = within as usize;
                    b.slice(from..b.len().min(from + max))
                }
                Part::Pattern { len, seed } => {
                    let b = block(*seed);
                    let n = (len - within).min(max as u64) as usize;
                    let mut out = Vec::with_capacity(n);
                    let mut pos = (within % b.len() as u64) as usize;
                    while out.len() < n {
                        let take = (b.len() - pos).min(n - out.len());
                        out.extend_from_slice(&b[pos..pos + take]);
                        pos = 0;
                    }
                    out.into()
                }
            }
        }

        pub fn bytes(&self) -> Vec<u8> {
            let mut out = Vec::with_capacity(self.len as usize);
            while (out.len() as u64) < self.len {
                out.extend_from_slice(&self.chunk(out.len() as u64, 1 << 20));
            }
            out
        }
    }
}

/// What a tus client reads its bytes from.
trait Source: Send + Sync + 'static {
    fn len(&self) -> u64;
    fn chunk(&self, offset: u64, max: usize) -> bytes::Bytes;
}

impl Source for generated::Archive {
    fn len(&self) -> u64 {
        self.len
    }
    fn chunk(&self, offset: u64, max: usize) -> bytes::Bytes {
        generated::Archive::chunk(self, offset, max)
    }
}

impl Source for bytes::Bytes {
    fn len(&self) -> u64 {
        bytes::Bytes::len(self) as u64
    }
    fn chunk(&self, offset: u64, max: usize) -> bytes::Bytes {
        let from = offset as usize;
        self.slice(from..bytes::Bytes::len(self).min(from + max))
    }
}

/// A plain tus client streaming from a [`Source`], counting every byte it puts on the wire.
struct Tus {
    http: reqwest::Client,
    url: String,
    token: String,
    /// Bytes handed to the connection, over all requests.
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The offset the request under way has reached.
    at: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Tus {
    async fn create(endpoint: &str, token: &str, len: u64) -> Tus {
        let l = len.to_string();
        let (status, headers) =
            tus_request("POST", endpoint, Some(token), &[("Upload-Length", &l)]).await;
        assert_eq!(status, 201);
        let location = headers["location"].to_str().unwrap();
        let base = endpoint.split("/uploads/").next().unwrap();
        Tus {
            http: reqwest::Client::new(),
            url: format!("{base}{location}"),
            token: token.into(),
            sent: Default::default(),
            at: Default::default(),
        }
    }

    async fn head(&self) -> u64 {
        let (status, headers) = tus_request("HEAD", &self.url, Some(&self.token), &[]).await;
        assert_eq!(status, 200, "{headers:?}");
        headers["upload-offset"].to_str().unwrap().parse().unwrap()
    }

    /// PATCH bytes `from..to` of `src` in one streamed request: the status and the offset the
    /// server answered (Err: the connection broke).
    async fn patch(
        &self,
        src: std::sync::Arc<dyn Source>,
        from: u64,
        to: u64,
    ) -> Result<(u16, Option<u64>), reqwest::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let (sent, at) = (self.sent.clone(), self.at.clone());
        at.store(from, Relaxed);
        let body = futures::stream::unfold(from, move |pos| {
            let (src, sent, at) = (src.clone(), sent.clone(), at.clone());
            async move {
                if pos >= to {
                    return None;
                }
                let max = (to - pos).min(256 << 10) as usize;
                let c = src.chunk(pos, max);
                sent.fetch_add(c.len() as u64, Relaxed);
                at.store(pos + c.len() as u64, Relaxed);
                Some((Ok::<_, std::io::Error>(c.clone()), pos + c.len() as u64))
            }
        });
        let resp = self
            .http
            .patch(&self.url)
            .bearer_auth(&self.token)
            .header("Tus-Resumable", "1.0.0")
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Offset", from.to_string())
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await?;
        let offset = resp
            .headers()
            .get("upload-offset")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        Ok((resp.status().as_u16(), offset))
    }
}

/// A worker that can be killed (SIGKILL, as a node losing the Pod would), its output in a file.
struct Killable {
    job: Job,
    started: k8s_openapi::jiff::Timestamp,
    child: Child,
    log: PathBuf,
}

async fn start_killable(c: &Cluster, name: &str) -> Killable {
    spawn_killable(c, c.wait_job(name).await).await
}

async fn spawn_killable(c: &Cluster, job: Job) -> Killable {
    let mut cmd = c.prepare_job(&job, &BTreeMap::new()).await;
    let log = c.work.path().join(format!("{}.log", job.name_any()));
    let out = std::fs::File::create(&log).unwrap();
    cmd.stdout(out.try_clone().unwrap()).stderr(out);
    let started = k8s_openapi::jiff::Timestamp::now();
    let child = cmd.spawn().unwrap();
    Killable {
        job,
        started,
        child,
        log,
    }
}

impl Killable {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Killed; the Job fails as the Job controller would record it.
    async fn kill(mut self, c: &Cluster) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        eprintln!("killed worker {}: {}", self.job.name_any(), self.output());
        c.record_job_outcome(&self.job.name_any(), 137, self.started)
            .await;
    }

    async fn finish(mut self, c: &Cluster) -> i32 {
        let status = tokio::task::spawn_blocking(move || {
            let s = self.child.wait().unwrap();
            (s, self)
        })
        .await
        .unwrap();
        let (status, me) = status;
        eprintln!("worker {}: {}", me.job.name_any(), me.output());
        let code = status.code().unwrap_or(137);
        c.record_job_outcome(&me.job.name_any(), code, me.started)
            .await;
        code
    }
}

/// The checkpoint offset the upload service holds for `name`'s upload (asked as the worker of
/// the current Job would), or None.
async fn checkpoint_offset(u: &Uploads, name: &str) -> Option<u64> {
    let obj = u.c.imports().get(name).await.unwrap();
    let job = obj.status.unwrap().job_name.unwrap();
    let token =
        u.c.api
            .service_account_token_for(NS, "imageimport-worker", &[TOKEN_AUDIENCE])
            .await;
    let url = format!("{}/internal/v1/checkpoint/{NS}/{name}?job={job}", u.base);
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    match resp.status().as_u16() {
        204 => None,
        200 => {
            let v: Value = resp.json().await.unwrap();
            v["offset"].as_u64()
        }
        s => panic!("checkpoint: HTTP {s}"),
    }
}

/// Wait until `check` holds (every 200 ms, up to `secs`).
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    secs: u64,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The registry holds blob `digest` in `repo`.
async fn has_blob(reg: &Registry, repo: &str, digest: &str) -> bool {
    let url = format!("http://{}/v2/{repo}/blobs/{digest}", reg.host);
    reqwest::Client::new()
        .head(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn import_with(name: &str, repo: &str, compression: Option<&str>) -> Value {
    let mut v = upload_import(name, repo);
    if let Some(c) = compression {
        v["spec"]["layerCompression"] = json!(c);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_resumes_from_its_checkpoint() {
    let u = start(24 * 3600).await;
    let c = &u.c;
    let reg = Registry::plain();
    // Three layers; the default policy encodes them (gzip), so the checkpoint carries blobs
    // whose digests only the first worker knew.
    let archive = generated::Archive::new(&[8 << 20, 8 << 20, 8 << 20]);
    let file = c.work.path().join("killed.tar");
    let bytes = archive.bytes();
    std::fs::write(&file, &bytes).unwrap();
    // Pinned: the checkpoint carries the archive hash's state, and the pin holds after resuming.
    let mut import = upload_import("killed", &reg.reference("shop/killed"));
    use sha2::Digest as _;
    import["spec"]["source"]["sha256"] = json!(hex::encode(sha2::Sha256::digest(&bytes)));
    c.apply(import).await;
    let first = start_killable(c, "killed").await;
    let endpoint = format!("{}/uploads/{NS}/killed", u.base);
    let tus = Tus::create(&endpoint, &u.uploader, archive.len).await;
    // Two layers and half of the third, then the client pauses.
    let layer2 = archive.layer_ends[1];
    let part = layer2 + (4 << 20);
    let src: std::sync::Arc<dyn Source> = archive.clone();
    let (status, offset) = tus.patch(src, 0, part).await.unwrap();
    assert_eq!((status, offset), (204, Some(part)));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let at = checkpoint_offset(&u, "killed").await;
        if at == Some(layer2) {
            break;
        }
        if Instant::now() > deadline {
            let service = std::fs::read_to_string(c.work.path().join("upload-server.log"));
            panic!(
                "no checkpoint after the second layer ({at:?}, layers end at {:?}); worker: {}\nservice: {}",
                archive.layer_ends,
                first.output(),
                service.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    first.kill(c).await;

    // The next attempt's worker takes the upload up at the checkpoint: that is the offset the
    // server reports, in HEAD and in the status.
    let second = start_killable(c, "killed").await;
    eventually("HEAD reports the checkpoint", 60, || async {
        tus.head().await == layer2
    })
    .await;
    eventually("status.upload.offset is the checkpoint", 30, || async {
        let obj = c.imports().get("killed").await.unwrap();
        obj.status.unwrap().upload.unwrap_or_default().offset == Some(layer2)
    })
    .await;
    assert!(layer2 > 0 && layer2 < archive.len);
    // tus-js-client, unchanged, resumes there and sends the rest.
    let (code, events) = tus_js(
        &endpoint,
        &file,
        &["--token", &u.uploader, "--upload-url", &tus.url],
    )
    .await;
    assert_eq!(code, 0, "{events:?}");
    let out = second.output();
    assert_eq!(second.finish(c).await, 0);
    assert!(
        out.contains("taking the upload up at its checkpoint"),
        "{out}"
    );
    let obj = c.wait_ready("killed", "True", Some("Succeeded")).await;
    let st = obj.status.unwrap();
    assert_eq!(
        st.digest.as_deref(),
        Some(skopeo::manifest_digest(&reg, "shop/killed:1").as_str())
    );
    assert_eq!(st.image_id.as_deref(), Some(archive.config_digest.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_upload_whose_worker_restarts_begins_at_zero() {
    use std::io::Write as _;
    let u = start(24 * 3600).await;
    let c = &u.c;
    let reg = Registry::plain();
    let archive = generated::Archive::new(&[4 << 20, 4 << 20, 4 << 20]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&archive.bytes()).unwrap();
    let gz = bytes::Bytes::from(gz.finish().unwrap());
    let file = c.work.path().join("restarted.tar.gz");
    std::fs::write(&file, &gz).unwrap();
    // Layers pushed as they are: the first one's blob is its diff_id, seen in the registry.
    c.apply(import_with("gz", &reg.reference("shop/gz"), Some("none")))
        .await;
    let first = start_killable(c, "gz").await;
    let endpoint = format!("{}/uploads/{NS}/gz", u.base);
    let tus = Tus::create(&endpoint, &u.uploader, gz.len() as u64).await;
    let src: std::sync::Arc<dyn Source> = std::sync::Arc::new(gz.clone());
    let part = gz.len() as u64 * 3 / 4;
    let (status, offset) = tus.patch(src, 0, part).await.unwrap();
    assert_eq!((status, offset), (204, Some(part)));
    let layer1 = archive.diff_ids[0].clone();
    eventually("the first layer committed", 60, || async {
        has_blob(&reg, "shop/gz", &layer1).await
    })
    .await;
    assert_eq!(
        checkpoint_offset(&u, "gz").await,
        None,
        "no checkpoint of a .tar.gz"
    );
    first.kill(c).await;

    let second = start_killable(c, "gz").await;
    eventually("HEAD reports 0", 60, || async { tus.head().await == 0 }).await;
    let (code, events) = tus_js(
        &endpoint,
        &file,
        &["--token", &u.uploader, "--upload-url", &tus.url],
    )
    .await;
    assert_eq!(code, 0, "{events:?}");
    assert_eq!(second.finish(c).await, 0);
    let obj = c.wait_ready("gz", "True", Some("Succeeded")).await;
    assert_eq!(
        obj.status.unwrap().digest.as_deref(),
        Some(skopeo::manifest_digest(&reg, "shop/gz:1").as_str())
    );
}

/// An upload of `sizes` (layers pushed uncompressed) interrupted twice by its worker's death,
/// each time after a checkpoint and with bytes sent beyond it: the client resumes exactly at
/// the last checkpoint (no byte before it sent twice) and the import completes.
async fn interrupted_twice(sizes: &[u64]) {
    use std::sync::atomic::Ordering::Relaxed;
    let u = start(24 * 3600).await;
    let c = &u.c;
    let reg = Registry::plain();
    let t0 = Instant::now();
    let archive = generated::Archive::new(sizes);
    eprintln!(
        "archive of {} bytes described in {:?}",
        archive.len,
        t0.elapsed()
    );
    c.apply(import_with("big", &reg.reference("shop/big"), Some("none")))
        .await;
    let mut worker = start_killable(c, "big").await;
    let endpoint = format!("{}/uploads/{NS}/big", u.base);
    let tus = std::sync::Arc::new(Tus::create(&endpoint, &u.uploader, archive.len).await);
    // The client: HEAD, then one PATCH to the end, again until everything is taken in.
    // Workers killed so far (read by the client as each request starts).
    let kills = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let client = {
        let (tus, src) = (tus.clone(), archive.clone() as std::sync::Arc<dyn Source>);
        let kills = kills.clone();
        tokio::spawn(async move {
            // Each request: where it started, the furthest byte sent before it, the kills then,
            // and where it ended (a worker killed again may end it before the furthest byte).
            let mut requests = Vec::new();
            let mut high = 0;
            loop {
                let from = tus.head().await;
                if from == src.len() {
                    return requests;
                }
                let killed = kills.load(Relaxed);
                let answer = tus.patch(src.clone(), from, src.len()).await;
                let reached = tus.at.load(Relaxed);
                requests.push((from, high, killed, reached));
                high = high.max(reached);
                eprintln!("PATCH from {from}: {answer:?}, reached {reached}");
            }
        })
    };
    let mut checkpoints = Vec::new();
    // After a quarter and after half of the layers: well before the end.
    let points = [sizes.len() / 4, sizes.len() / 2];
    for after_layer in points {
        let end = archive.layer_ends[after_layer];
        eventually("a checkpoint, and bytes sent beyond it", 600, || async {
            checkpoint_offset(&u, "big").await.is_some_and(|o| o >= end)
                && tus.at.load(Relaxed) > end + (16 << 20)
        })
        .await;
        kills.fetch_add(1, Relaxed);
        worker.kill(c).await;
        let job = c.wait_job("big").await;
        // Asked as the new worker will, before it runs.
        checkpoints.push(checkpoint_offset(&u, "big").await.unwrap());
        worker = spawn_killable(c, job).await;
    }
    let requests = client.await.unwrap();
    assert_eq!(worker.finish(c).await, 0);
    let obj = c.wait_ready("big", "True", Some("Succeeded")).await;
    let st = obj.status.unwrap();
    assert_eq!(
        st.digest.as_deref(),
        Some(skopeo::manifest_digest(&reg, "shop/big:1").as_str())
    );
    assert_eq!(st.image_id.as_deref(), Some(archive.config_digest.as_str()));
    assert!(checkpoints[0] >= archive.layer_ends[points[0]]);
    assert!(checkpoints[1] >= archive.layer_ends[points[1]] && checkpoints[1] < archive.len);
    // Each new worker took the upload up exactly at its checkpoint, and every byte sent twice
    // lay beyond the last checkpoint of its time (a request that resumed at an earlier offset
    // would have sent bytes before it again).
    let starts: Vec<u64> = requests.iter().map(|r| r.0).collect();
    assert_eq!(starts[0], 0);
    for cp in &checkpoints {
        assert!(
            starts.contains(cp),
            "no request resumed at {cp}: {requests:?}"
        );
    }
    let mut resent = 0;
    for &(from, high, kills, reached) in &requests {
        if from < high {
            assert!(
                kills > 0 && from >= checkpoints[kills - 1],
                "bytes from {from} sent again, before the checkpoint {checkpoints:?}: {requests:?}"
            );
            resent += reached.min(high) - from;
        }
    }
    let sent = tus.sent.load(Relaxed);
    assert_eq!(sent, archive.len + resent);
    eprintln!(
        "{} bytes, {sent} sent ({resent} again, beyond the checkpoints {checkpoints:?}) in {:?}",
        archive.len,
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_interrupted_twice_resumes_at_its_checkpoints() {
    interrupted_twice(&[24 << 20; 8]).await;
}

/// The 2+ GB case: 2.2 GB through the service and into the registry (60-95 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2gb_upload_interrupted_twice_completes() {
    interrupted_twice(&[280 << 20; 8]).await;
}

/// A new worker takes a checkpoint up only if each of its blobs is in the registry with the
/// size the checkpoint says (HEAD's Content-Length): a blob missing or of another size sends
/// it back to byte 0.
#[tokio::test]
async fn a_checkpoint_is_taken_up_only_with_its_blobs_at_their_sizes() {
    use imageimport::pipeline::checkpoint::{Checkpoint, Unusable, check_blobs};
    let reg = Registry::plain();
    let blob = b"a committed layer blob ".repeat(4096);
    let digest = support::registry::sha256_digest(&blob);
    let http = reqwest::Client::new();
    let started = http
        .post(format!("{}/v2/shop/cp/blobs/uploads/", reg.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let location = started.headers()["location"].to_str().unwrap().to_string();
    let location = reqwest::Url::parse(&reg.base_url())
        .unwrap()
        .join(&location)
        .unwrap();
    let sep = if location.query().is_some() { '&' } else { '?' };
    let put = http
        .put(format!("{location}{sep}digest={digest}"))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);

    let client = imageimport::registry::Registry::connect(
        &reg.host,
        &imageimport::registry::RegistryOptions {
            insecure: true,
            anonymous: true,
            ..Default::default()
        },
    )
    .unwrap();
    let checkpoint = |digest: &str, size: u64| -> Checkpoint {
        serde_json::from_value(json!({
            "version": imageimport::pipeline::checkpoint::VERSION,
            "offset": 1024, "lastMember": "l1/layer.tar", "repository": "shop/cp",
            "members": [],
            "layers": [{
                "member": "l1/layer.tar", "storedDigest": digest, "storedSize": size,
                "storedCodec": "none", "diffId": digest, "uncompressedSize": size,
                "pushedCodec": "none", "asStored": true, "blobDigest": digest,
                "blobSize": size, "blobRepository": "shop/cp",
                "blobMediaType": "application/vnd.oci.image.layer.v1.tar", "sent": size
            }]
        }))
        .unwrap()
    };
    let len = blob.len() as u64;
    check_blobs(&client, &checkpoint(&digest, len))
        .await
        .expect("the blob is there at its size");
    match check_blobs(&client, &checkpoint(&digest, len + 1)).await {
        Err(Unusable::Blob { detail, .. }) => {
            assert!(detail.contains(&format!("holds {len} bytes")), "{detail}")
        }
        other => panic!("a blob of another size was accepted: {other:?}"),
    }
    let absent = support::registry::sha256_digest(b"never pushed");
    match check_blobs(&client, &checkpoint(&absent, len)).await {
        Err(Unusable::Blob { detail, .. }) => assert_eq!(detail, "not found"),
        other => panic!("a missing blob was accepted: {other:?}"),
    }
}
