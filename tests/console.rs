//! The web console end to end, in headless Chromium (Debian's `/usr/bin/chromium`, driven by
//! playwright-core from web/node_modules: web/e2e/console.mjs), against a real kube-apiserver,
//! the real registry, the upload service binary (which serves the page and its `/k8s`
//! pass-through) and the controller; the worker Jobs are played on this host, as in
//! tests/upload.rs. Every browser request acts as a test user: the service's own
//! ServiceAccount may not even list ImageImports.
//!
//! Screenshots land in docs/console-*.png when IMAGEIMPORT_CONSOLE_SHOTS is set to that folder.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kube::ResourceExt;
use kube::api::ListParams;
use serde_json::{Value, json};
use support::archives::{self, Format, ImageSpec, hostile};
use support::cluster::*;
use support::registry::{Registry, skopeo};

struct Console {
    c: Cluster,
    service: Child,
    base: String,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.service.kill();
        let _ = self.service.wait();
    }
}

/// A ServiceAccount of NS with `rules` (a Role bound to it); its bearer token.
async fn user(c: &Cluster, name: &str, rules: Value) -> String {
    namespace_role(c, name, rules).await;
    c.api.service_account_token(NS, name).await
}

/// What a namespace editor may do with imports (the chart's aggregated edit role).
fn editor_rules(upload: bool) -> Value {
    let mut rules = vec![
        json!({"apiGroups": ["imageimport.dev"], "resources": ["imageimports"], "verbs": ["get", "list", "watch", "create", "delete", "patch", "update"]}),
        json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}),
    ];
    if upload {
        rules.push(json!({"apiGroups": ["imageimport.dev"], "resources": ["imageimports/upload"], "verbs": ["create"]}));
    }
    Value::Array(rules)
}

/// The cluster policy the upload service reads (`--policy-file`, as the chart mounts it): what
/// the console offers in Target repository. The controller runs without it (its enforcement is
/// tests/operator.rs'), so the imports here push where the scenarios say.
const POLICY_REPOSITORIES: [&str; 2] = [
    "registry.shop.example:5000/shop/*",
    "registry.shop.example:5000/mirror",
];

async fn start() -> Console {
    let mut c = Cluster::start().await;
    let policy = c.work.path().join("policy.yaml");
    let rules = json!({"rules": [
        {"namespaces": [NS], "repositories": POLICY_REPOSITORIES},
        {"namespaces": ["elsewhere"], "repositories": ["registry.other.example/team/*"]}
    ]});
    std::fs::write(&policy, serde_json::to_string(&rules).unwrap()).unwrap();
    let (service, base) =
        spawn_upload_service_with(&c, &["--policy-file", policy.to_str().unwrap()]).await;
    c.kill_controller();
    let ctl = c.spawn_controller(
        &["--upload-url", &base, "--upload-internal-url", &base],
        "ctl",
    );
    c.controller = Some(ctl);
    Console { c, service, base }
}

type Finished = (String, k8s_openapi::jiff::Timestamp, std::process::Output);

/// Plays the node for the worker Jobs of NS: runs each Job's command here once and records its
/// outcome on the Job as the Job controller would. Kept across browser runs, so a Job is never
/// run twice, and drained after each run, so no outcome is left unrecorded.
#[derive(Default)]
struct Kubelet {
    seen: HashSet<String>,
    running: FuturesUnordered<std::pin::Pin<Box<dyn Future<Output = Finished> + Send>>>,
    /// Ended, outcome not yet recorded (recorded first thing on the next step: a step cut off
    /// while recording records it again).
    ended: Vec<Finished>,
}

impl Kubelet {
    async fn record(&mut self, c: &Cluster) {
        while let Some((name, started, out)) = self.ended.last() {
            eprintln!("worker {name}: {}", String::from_utf8_lossy(&out.stderr));
            let (name, started, code) = (name.clone(), *started, out.status.code().unwrap_or(1));
            c.record_job_outcome(&name, code, started).await;
            self.ended.pop();
        }
    }

    async fn step(&mut self, c: &Cluster) {
        self.record(c).await;
        // A failed list (a dropped keep-alive connection) is asked again on the next step.
        let jobs = c
            .jobs()
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        for job in jobs {
            let name = job.name_any();
            if self.seen.contains(&name) {
                continue;
            }
            let mut cmd = c.prepare_job(&job, &BTreeMap::new()).await;
            let started = k8s_openapi::jiff::Timestamp::now();
            self.seen.insert(name.clone());
            self.running.push(Box::pin(async move {
                let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
                    .await
                    .unwrap();
                (name, started, out)
            }));
        }
        tokio::select! {
            Some(done) = self.running.next(), if !self.running.is_empty() => self.ended.push(done),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }

    async fn run(&mut self, c: &Cluster) {
        loop {
            self.step(c).await;
        }
    }

    /// Waits for the workers still running and records every outcome.
    async fn drain(&mut self, c: &Cluster) {
        while let Some(done) = self.running.next().await {
            self.ended.push(done);
        }
        self.record(c).await;
    }
}

fn web_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci` in web/ (.ci/run does)"
    );
    dir
}

/// Runs a browser scenario (web/e2e/console.mjs) while the node plays the workers; its events.
async fn browser(c: &Cluster, kubelet: &mut Kubelet, scenario: &str, args: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new("node");
    cmd.current_dir(web_dir())
        .arg("e2e/console.mjs")
        .arg(scenario)
        .args(args);
    if let Some(dir) = std::env::var_os("IMAGEIMPORT_CONSOLE_SHOTS") {
        cmd.arg("--shots").arg(dir);
    }
    let run = tokio::task::spawn_blocking(move || cmd.output().unwrap());
    let out = tokio::select! {
        out = run => out.unwrap(),
        _ = kubelet.run(c) => unreachable!("the kubelet loop never ends"),
    };
    kubelet.drain(c).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "{scenario}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "scenario {scenario} failed: {stdout}");
    let events: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let origins = events
        .iter()
        .find(|e| e["event"] == "origins")
        .expect("origins event");
    assert_eq!(
        origins["foreign"],
        json!([]),
        "the page made third-party requests"
    );
    assert_eq!(
        origins["cspViolations"],
        json!([]),
        "the page broke its own CSP"
    );
    events
}

fn event<'a>(events: &'a [Value], name: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event in {events:?}"))
}

fn write(c: &Cluster, name: &str, bytes: &[u8]) -> String {
    let path = c.work.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_signs_in_imports_a_multi_image_archive_and_explains_refusals() {
    let u = start().await;
    let c = &u.c;
    let mut kubelet = Kubelet::default();
    let reg = Registry::plain();
    let alice = user(c, "alice", editor_rules(true)).await;
    let bob = user(c, "bob", editor_rules(false)).await;
    let registry = reg.reference("shop");
    let registry = registry.trim_end_matches("/shop");
    let url = u.base.as_str();

    // The page and its headers.
    let page = reqwest::get(format!("{url}/")).await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'self'")
            && csp.contains("script-src 'self'")
            && !csp.contains("unsafe"),
        "{csp}"
    );
    // The pass-through adds nothing of the service's own: without a user token the API
    // server sees an anonymous request, which may not list imports.
    let anonymous = reqwest::Client::new()
        .get(format!(
            "{url}/k8s/apis/imageimport.dev/v1alpha1/namespaces/{NS}/imageimports"
        ))
        .header("X-Imageimport-Console", "1")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert!(
        anonymous == 401 || anonymous == 403,
        "anonymous list answered {anonymous}"
    );

    // A forged token is refused, and says so.
    let events = browser(
        c,
        &mut kubelet,
        "wrong-token",
        &["--url", url, "--token", "x"],
    )
    .await;
    let refused = event(&events, "refused")["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(refused.contains("did not accept this token"), "{refused}");

    // Two images in one docker save archive: both read in the browser, all imported (each
    // under the prefix plus its normalized saved name, as `push --all` does).
    let built = archives::build(
        &Format::DockerLegacy,
        &[
            ImageSpec::new(&["web:1.4"], layers(8100)),
            ImageSpec::new(&["tools/api:2"], layers(8200)),
        ],
    );
    let multi = write(c, "two-images.tar", &built.bytes);

    // Bob may create imports but not upload: he is told why before he tries.
    let events = browser(
        c,
        &mut kubelet,
        "no-upload",
        &[
            "--url",
            url,
            "--token",
            &bob,
            "--namespace",
            NS,
            "--archive",
            &multi,
            "--registry",
            registry,
        ],
    )
    .await;
    let explained = event(&events, "explained");
    assert_eq!(explained["startDisabled"], true, "{explained}");
    // The repositories the policy allows NS are offered (a `*` pattern as its prefix), and
    // said; another namespace's are not.
    let offered = event(&events, "offered");
    let options: Vec<&str> = offered["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert!(
        options.starts_with(&[
            "registry.shop.example:5000/shop/",
            "registry.shop.example:5000/mirror"
        ]),
        "{offered}"
    );
    assert!(
        !offered.to_string().contains("registry.other.example"),
        "{offered}"
    );
    assert_eq!(
        offered["list"], "repositories",
        "the field offers the list: {offered}"
    );
    let said = offered["text"].as_str().unwrap();
    assert!(
        said.contains(&format!(
            "lets namespace {NS} push to: {}",
            POLICY_REPOSITORIES.join(", ")
        )),
        "{said}"
    );
    // The service answers that only to someone who may create imports in the namespace.
    let ask = |token: String| {
        let url = format!("{url}/console/v1/namespaces/{NS}/repositories");
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (code, body) = ask(bob.clone()).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"restricted": true, "patterns": POLICY_REPOSITORIES})
    );
    assert_eq!(ask("forged".into()).await.0, 401);
    let reader = user(c, "reader", json!([{"apiGroups": ["imageimport.dev"], "resources": ["imageimports"], "verbs": ["get", "list"]}])).await;
    let (code, body) = ask(reader).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        explained["text"]
            .as_str()
            .unwrap()
            .contains("imageimports/upload"),
        "{explained}"
    );

    let events = browser(
        c,
        &mut kubelet,
        "multi-image",
        &[
            "--url",
            url,
            "--token",
            &alice,
            "--namespace",
            NS,
            "--archive",
            &multi,
            "--registry",
            &format!("{registry}/shop"),
        ],
    )
    .await;
    let read = event(&events, "read");
    assert_eq!(read["rows"], 2, "{read}");
    assert_eq!(read["choice"], "all", "{read}");
    let ready = event(&events, "ready");
    let name = ready["name"].as_str().unwrap();
    let obj = c.imports().get(name).await.unwrap();
    let st = obj.status.clone().unwrap();
    let mut digests = BTreeMap::new();
    for img in &st.images {
        for r in &img.refs {
            let reference = r.strip_prefix(&format!("{registry}/")).unwrap();
            assert_eq!(img.digest, skopeo::manifest_digest(&reg, reference), "{r}");
            digests.insert(reference.to_string(), img.digest.clone());
        }
    }
    assert_eq!(
        digests.keys().cloned().collect::<Vec<_>>(),
        ["shop/library/web:1.4", "shop/tools/api:2"]
    );
    let shown: Vec<String> = ready["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    for (reference, digest) in &digests {
        assert!(
            shown.contains(&format!("{registry}/{reference}@{digest}")),
            "{shown:?} lacks {reference}@{digest}"
        );
    }
    assert!(obj.spec.all_images);
    assert_eq!(
        obj.spec.source.upload.as_ref().unwrap().max_bytes,
        Some(built.bytes.len() as u64)
    );

    // Typed by keyboard, a single image: the digest shown is skopeo's.
    let single = archives::build(
        &Format::Docker25Oci,
        &[ImageSpec::new(&["kb:1"], layers(8300))],
    );
    let single = write(c, "kb.tar", &single.bytes);
    let events = browser(
        c,
        &mut kubelet,
        "keyboard",
        &[
            "--url",
            url,
            "--token",
            &alice,
            "--namespace",
            NS,
            "--archive",
            &single,
            "--registry",
            registry,
        ],
    )
    .await;
    let ready = event(&events, "ready");
    assert_eq!(
        ready["digest"].as_str().unwrap(),
        skopeo::manifest_digest(&reg, "shop/keyboard:kb1")
    );

    // A tampered layer: the page cannot see it, the import refuses it, nothing is tagged.
    let tampered = write(c, "tampered.tar", &hostile::tampered_layer());
    let events = browser(
        c,
        &mut kubelet,
        "hostile",
        &[
            "--url",
            url,
            "--token",
            &alice,
            "--namespace",
            NS,
            "--archive",
            &tampered,
            "--registry",
            registry,
        ],
    )
    .await;
    let failed = event(&events, "failed")["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        failed.contains("VerificationFailed") || failed.contains("InvalidArchive"),
        "{failed}"
    );
    assert!(
        reg.tags("shop/hostile").is_empty(),
        "a hostile archive was tagged"
    );
    // A member escaping the archive: refused in the browser, before any byte is sent.
    let escaping = write(c, "dotdot.tar", &hostile::dotdot_member());
    let events = browser(
        c,
        &mut kubelet,
        "refused-early",
        &[
            "--url",
            url,
            "--token",
            &alice,
            "--namespace",
            NS,
            "--archive",
            &escaping,
        ],
    )
    .await;
    let refused = event(&events, "refused");
    assert_eq!(refused["startDisabled"], true, "{refused}");
}

/// An archive large enough to be cut mid-upload (three 16 MiB upload chunks).
fn big_archive(c: &Cluster, name: &str, seed: u64) -> (String, u64) {
    let built = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(
            &["big:1"],
            vec![archives::layer(seed, 10, 4 << 20)],
        )],
    );
    let len = built.bytes.len() as u64;
    (write(c, name, &built.bytes), len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_uploads_resume_after_a_network_cut_and_a_reload() {
    let u = start().await;
    let c = &u.c;
    let mut kubelet = Kubelet::default();
    let reg = Registry::plain();
    let alice = user(c, "alice", editor_rules(true)).await;
    let registry = reg.reference("shop");
    let registry = registry.trim_end_matches("/shop");
    let url = u.base.as_str();

    let (file, len) = big_archive(c, "cut.tar", 9100);
    let events = browser(
        c,
        &mut kubelet,
        "network-cut",
        &[
            "--url",
            url,
            "--token",
            &alice,
            "--namespace",
            NS,
            "--archive",
            &file,
            "--registry",
            registry,
        ],
    )
    .await;
    let cut = event(&events, "cut")["acked"].as_u64().unwrap();
    assert!(cut > 0 && cut < len, "cut at {cut} of {len}");
    let ready = event(&events, "ready");
    assert_eq!(
        ready["digest"].as_str().unwrap(),
        skopeo::manifest_digest(&reg, "shop/cut:cut1")
    );
    // Resumed, not started again: after the cut, less than the whole file crossed the wire.
    let after = ready["sentTotal"].as_u64().unwrap() - ready["sentBefore"].as_u64().unwrap();
    assert!(
        after < len,
        "{after} bytes sent after the cut, the archive is {len}"
    );

    let (file, len) = big_archive(c, "reload.tar", 9200);
    let events = browser(
        c,
        &mut kubelet,
        "reload",
        &[
            "--url",
            url,
            "--token",
            &alice,
            "--namespace",
            NS,
            "--archive",
            &file,
            "--registry",
            registry,
        ],
    )
    .await;
    let before = event(&events, "reloaded")["acked"].as_u64().unwrap();
    assert!(before > 0 && before < len, "reloaded at {before} of {len}");
    let ready = event(&events, "ready");
    assert_eq!(
        ready["digest"].as_str().unwrap(),
        skopeo::manifest_digest(&reg, "shop/reload:r1")
    );
    let after = ready["sentTotal"].as_u64().unwrap() - ready["sentBefore"].as_u64().unwrap();
    assert!(
        after < len,
        "{after} bytes sent after the reload, the archive is {len}"
    );
}
