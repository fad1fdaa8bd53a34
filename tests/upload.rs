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
