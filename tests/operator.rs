//! The operator end to end, on a real kube-apiserver + etcd and a real registry.
//!
//! No kubelet or Job controller runs here: where a Pod would run, the test plays the node.
//! It checks the worker Job's spec (claim mounted read-only, security context, owner), runs
//! the container's command locally with the claim's mount mapped to a local folder and the
//! Secret volumes written out, as the worker's own ServiceAccount, and then records the
//! outcome on the Job's status as the Job controller would.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::archives::{self, Format, ImageSpec, hostile};
use support::cluster::*;
use support::registry::{Registry, skopeo};

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
    assert_eq!(st.images.len(), 1);
    assert_eq!(st.images[0].refs.len(), 2);
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
        .wait_ready("noclaim", "Unknown", Some("SourceNotFound"))
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
        .wait_ready("nosecret", "Unknown", Some("SecretNotFound"))
        .await;
    assert!(
        ready(&obj).unwrap().2.contains("regcred"),
        "{:?}",
        ready(&obj)
    );
    let source = obj
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "SourceReady")
        .unwrap();
    assert_eq!(
        (source.status.as_str(), source.reason.as_str()),
        ("False", "SecretNotFound"),
        "SourceReady follows what the worker met"
    );
    assert!(reg.tags("shop/y").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_policy_limits_targets_and_hosts() {
    let mut c = Cluster::start().await;
    c.kill_controller();
    let reg = Registry::plain();
    let policy = c.work.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!("rules:\n  - namespaces: [\"sh*\"]\n    repositories: [\"{}/shop/*\"]\n    urlHosts: [\"artifacts.example\"]\n    allowInsecure: true\n", reg.host),
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
    // Plain HTTP to the registry is allowed here, sending credentials over it is not: neither
    // the registry's nor a URL source's token.
    let mut m = pvc_import("creds-plain", "d", &reg.reference("shop/web"), &["1"]);
    m["spec"]["target"]["credentialsSecretRef"] = json!({"name": "regcred"});
    c.apply(m).await;
    let obj = c
        .wait_ready("creds-plain", "False", Some("PolicyViolation"))
        .await;
    assert!(ready(&obj).unwrap().2.contains("allowPlainHTTPCredentials"));
    c.apply(json!({
        "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
        "metadata": {"name": "token-plain", "namespace": NS},
        "spec": {"source": {"url": {"url": "http://artifacts.example/x.tar", "secretRef": {"name": "tok"}}},
                 "target": {"repository": reg.reference("shop/x")}}
    }))
    .await;
    let obj = c
        .wait_ready("token-plain", "False", Some("PolicyViolation"))
        .await;
    let (_, _, msg) = ready(&obj).unwrap();
    assert!(msg.contains("plain HTTP"), "{msg}");
    let stalled = obj
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Stalled");
    assert_eq!(stalled.map(|c| c.status).as_deref(), Some("True"));
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

/// Load: 50 ImageImports applied at once all reach Ready, never more than the concurrency
/// limit of worker Jobs running at a time, and fairly: 40 come from one namespace that floods
/// the queue first, then 5 each from two others. The order in which the controller created
/// the Jobs (read from a watch, so exact) must be the fair queue's: once the others wait, a
/// slot goes to a namespace running the fewest imports, ties to the one served least recently;
/// with a limit of 2 and three namespaces waiting, the flood therefore never gets two Jobs in
/// a row while both others still wait (first come, first served would run all 40 first).
/// Reports the controller's memory, the API request rate it caused, and where in the order the
/// other namespaces got their last Job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_imports_at_once_share_the_concurrency_limit_fairly() {
    const FLOOD: usize = 40;
    const OTHERS: [&str; 2] = ["team-a", "team-b"];
    const EACH: usize = 5;
    const N: usize = FLOOD + OTHERS.len() * EACH;
    const LIMIT: usize = 2; // --max-concurrent-imports of Cluster::start
    const LABEL: &str = "app.kubernetes.io/managed-by=imageimport";
    // The controller runs as the chart's ServiceAccount, so that the audit log tells its
    // requests from the workers' and the test's.
    let audit = tempfile::tempdir().unwrap();
    let (flags, audit_log) = audit_flags(audit.path());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut c = Cluster::start_with(&flags).await;
    c.kill_controller();
    let kubeconfig = install_chart_rbac(&c).await;
    let addr = c.metrics_addr.clone();
    c.controller =
        Some(c.spawn_controller_as(&["--metrics-bind-address", &addr], "ctl", &kubeconfig));
    let reg = Registry::plain();
    let (dir, _) = archive_dir(&c, "bulk", ImageSpec::new(&["web:1.4"], layers(3700)));
    c.claim("bulk").await;
    for ns in OTHERS {
        c.api.create_namespace(ns).await;
        c.claim_in(ns, "bulk").await;
    }
    let claims = BTreeMap::from([("bulk", dir.as_path())]);
    // The order of Job creations, as etcd committed them: a watch from before the first import.
    let all_jobs: Api<Job> = Api::all(c.client.clone());
    let rv = all_jobs
        .list_metadata(&ListParams::default().labels(LABEL))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let created = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let watch = tokio::spawn({
        let (api, created) = (all_jobs.clone(), created.clone());
        async move {
            use futures::StreamExt;
            use kube::api::{WatchEvent, WatchParams};
            let mut rv = rv;
            while created.lock().unwrap().len() < N {
                let wp = WatchParams::default().labels(LABEL).timeout(60);
                let mut events = api.watch(&wp, &rv).await.unwrap().boxed();
                while let Some(ev) = events.next().await {
                    let meta = |j: &Job| j.metadata.resource_version.clone().unwrap();
                    match ev.unwrap() {
                        WatchEvent::Added(j) => {
                            rv = meta(&j);
                            let mut created = created.lock().unwrap();
                            created.push((j.namespace().unwrap(), j.name_any()));
                            if created.len() == N {
                                return;
                            }
                        }
                        WatchEvent::Modified(j) | WatchEvent::Deleted(j) => rv = meta(&j),
                        WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                        WatchEvent::Error(e) => panic!("Job watch: {e:?}"),
                    }
                }
            }
        }
    });
    let before = audited_requests(&audit_log);
    let t0 = Instant::now();
    apply_numbered_imports(&c, &reg, "bulk", FLOOD).await;
    for ns in OTHERS {
        let imports: Api<imageimport::api::ImageImport> = Api::namespaced(c.client.clone(), ns);
        for i in 0..EACH {
            let name = format!("bulk-{i}");
            let mut m = pvc_import(
                &name,
                "bulk",
                &reg.reference(&format!("{ns}/app{i}")),
                &["1"],
            );
            m["metadata"]["namespace"] = json!(ns);
            imports
                .patch(
                    &name,
                    &PatchParams::apply("test").force(),
                    &Patch::Apply(&m),
                )
                .await
                .unwrap();
        }
    }
    // Every import has a Job or waits in the queue before the first Job runs: from then on,
    // the order of Jobs is the queue's alone, not that of the reconciles' first passes.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let all: Api<imageimport::api::ImageImport> = Api::all(c.client.clone());
        let items = all.list(&ListParams::default()).await.unwrap().items;
        let placed = items
            .iter()
            .filter(|o| {
                let st = o.status.as_ref();
                st.and_then(|s| s.job_name.as_ref()).is_some()
                    || ready(o).is_some_and(|(_, reason, _)| reason == "Queued")
            })
            .count();
        if placed == N {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {placed} of {N} imports have a Job or are queued"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Play the node: run every Job that exists and has not run yet, checking the limit.
    let mut done = std::collections::HashSet::new();
    let mut max_running = 0;
    let deadline = Instant::now() + Duration::from_secs(900);
    while done.len() < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} imports ran",
            done.len()
        );
        let jobs = all_jobs
            .list(&ListParams::default().labels(LABEL))
            .await
            .unwrap()
            .items;
        let pending: Vec<&Job> = jobs
            .iter()
            .filter(|j| !done.contains(&(j.namespace().unwrap(), j.name_any())))
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
            done.insert((j.namespace().unwrap(), j.name_any()));
        }
    }
    for i in 0..FLOOD {
        c.wait_ready(&format!("bulk-{i}"), "True", Some("Succeeded"))
            .await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    tokio::time::timeout(Duration::from_secs(60), watch)
        .await
        .expect("the watch saw every Job")
        .unwrap();
    let order: Vec<String> = created
        .lock()
        .unwrap()
        .iter()
        .map(|(ns, _)| ns.clone())
        .collect();
    let pid = c.controller.as_ref().unwrap().id();
    let mut by_user = audited_requests(&audit_log);
    for (user, n) in before {
        *by_user.get_mut(&user).unwrap() -= n;
    }
    let of = |user: &str| by_user.get(user).copied().unwrap_or(0) as f64;
    let controller = of("system:serviceaccount:imageimport-system:imageimport-controller");
    let workers: f64 = [NS, OTHERS[0], OTHERS[1]]
        .iter()
        .map(|ns| of(&format!("system:serviceaccount:{ns}:imageimport-worker")))
        .sum();
    // Where the last Job of the other namespaces came, and how many flood Jobs ran before it.
    let last_other = order.iter().rposition(|ns| ns != NS).unwrap();
    let flood_before = order[..last_other].iter().filter(|ns| *ns == NS).count();
    eprintln!(
        "load: {N} imports ({FLOOD} from {NS}, {EACH} each from {OTHERS:?}) Ready in {elapsed:.1}s; \
         at most {max_running} Jobs at once (limit {LIMIT}); the other namespaces' last Job was \
         number {} of {N}, after {flood_before} of the flood's {FLOOD}; controller peak RSS {} KiB; \
         API requests: controller {controller:.0} ({:.1}/s, {:.1} per import), workers {workers:.0} \
         ({:.1} per import); all users: {by_user:?}; order: {order:?}",
        last_other + 1,
        peak_rss_kib(pid),
        controller / elapsed,
        controller / N as f64,
        workers / N as f64,
    );
    assert!(
        controller > 0.0,
        "the controller's requests are attributed: {by_user:?}"
    );
    assert_eq!(order.len(), N, "one Job per import: {order:?}");
    assert_eq!(
        max_running, LIMIT,
        "the limit was reached, so it was tested"
    );
    // Fair: only the first Jobs (at most LIMIT, before the others were queued) went to the
    // flood by arrival. After that, each time the flood got a Job, the next one went to
    // another namespace for as long as both others still had imports waiting.
    for j in 1..N - 1 {
        let waits = |other: &str| order[..=j].iter().filter(|ns| *ns == other).count() < EACH;
        assert!(
            !(order[j] == NS && order[j + 1] == NS && OTHERS.iter().all(|o| waits(o))),
            "Jobs {} and {} both went to the flood while {OTHERS:?} waited: {order:?}",
            j + 1,
            j + 2
        );
    }
}

/// `allImages`: every image of the archive under the target as a prefix, each listed in the
/// status. The worker enforces the policy's repository patterns on where the images really go
/// (the controller sees only the prefix), and the API server refuses `allImages` with `image`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_images_land_under_the_prefix_and_the_status_lists_each() {
    let c = Cluster::start().await;
    let reg = Registry::plain();
    let dir = c.work.path().join("claim-bundle");
    std::fs::create_dir_all(dir.join("web")).unwrap();
    let specs = [
        ImageSpec::new(&["docker.io/library/nginx:1.25"], layers(5000)),
        ImageSpec::new(
            &[
                "registry.example:5000/team/app:2",
                "registry.example:5000/team/app:latest",
            ],
            layers(5100),
        ),
    ];
    let built = archives::build(&Format::DockerLegacy, &specs);
    std::fs::write(dir.join("web/web-1.4.tar"), &built.bytes).unwrap();
    c.claim("bundle").await;
    let claims = BTreeMap::from([("bundle", dir.as_path())]);
    let manifest = |prefix: &str| {
        let mut m = pvc_import("bundle", "bundle", &reg.reference(prefix), &[]);
        m["spec"]["allImages"] = json!(true);
        m["spec"]["target"].as_object_mut().unwrap().remove("tags");
        m
    };

    // Refused by the API server: allImages names no single image.
    let mut bad = manifest("mirror");
    bad["metadata"]["name"] = json!("bad");
    bad["spec"]["image"] = json!("nginx:1.25");
    let err = c
        .imports()
        .create(
            &PostParams::default(),
            &serde_json::from_value(bad).unwrap(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("allImages"), "{err}");

    // Under a policy that allows only `<prefix>/library/*`, the worker refuses the team/app
    // image before anything is pushed.
    c.apply(manifest("mirror")).await;
    let job = c.wait_job("bundle").await;
    let mut cmd = c.prepare_job(&job, &claims).await;
    cmd.env(
        "IMAGEIMPORT_ALLOWED_REPOSITORIES",
        format!("[\"{}/mirror/library/*\"]", reg.host),
    );
    let started = k8s_openapi::jiff::Timestamp::now();
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a permanent failure");
    c.record_job_outcome(&job.name_any(), 1, started).await;
    let obj = c
        .wait_ready("bundle", "False", Some("PolicyViolation"))
        .await;
    let (_, _, msg) = ready(&obj).unwrap();
    assert!(msg.contains("mirror/team/app"), "{msg}");
    assert!(
        reg.tags("mirror/library/nginx").is_empty(),
        "nothing tagged"
    );
    assert!(reg.tags("mirror/team/app").is_empty(), "nothing tagged");

    // Allowed (a new generation): both images, each with its saved tags.
    c.apply(manifest("mirror2")).await;
    let job = c.wait_job("bundle").await;
    assert!(job.name_any().contains("-g2-"), "{}", job.name_any());
    assert_eq!(c.run_job(&job, &claims).await, 0);
    let obj = c.wait_ready("bundle", "True", Some("Succeeded")).await;
    let st = obj.status.unwrap();
    assert_eq!(st.digest, None, "several images: no single digest");
    assert_eq!(st.images.len(), 2, "{:?}", st.images);
    for (img, (repo, tags)) in st.images.iter().zip([
        ("mirror2/library/nginx", vec!["1.25"]),
        ("mirror2/team/app", vec!["2", "latest"]),
    ]) {
        let refs: Vec<String> = tags
            .iter()
            .map(|t| reg.reference(&format!("{repo}:{t}")))
            .collect();
        assert_eq!(img.refs, refs);
        assert_eq!(
            img.digest,
            skopeo::manifest_digest(&reg, &format!("{repo}:{}", tags[0]))
        );
    }
    assert_eq!(
        st.images[1].image_ids,
        vec![built.images[1].config_digest.clone()]
    );
    assert_eq!(st.images.iter().map(|i| i.refs.len()).sum::<usize>(), 3);
}

/// An ImageImport deleted and created again under the same name before the garbage collector
/// (which the harness does not run) removed its Job: the new object never adopts the old Job,
/// whose worker would report the old spec's import; it gets a Job of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_import_never_adopts_its_namesakes_job() {
    let c = Cluster::start().await;
    let reg = Registry::plain();
    let (dir, _) = archive_dir(&c, "again", ImageSpec::new(&["web:1.4"], layers(5200)));
    c.claim("again").await;
    c.apply(pvc_import(
        "again",
        "again",
        &reg.reference("shop/again"),
        &["1"],
    ))
    .await;
    let old = c.wait_job("again").await;
    let old_uid = c.imports().get("again").await.unwrap().uid().unwrap();
    c.imports()
        .delete("again", &DeleteParams::default())
        .await
        .unwrap();
    c.apply(pvc_import(
        "again",
        "again",
        &reg.reference("shop/again"),
        &["1"],
    ))
    .await;
    let new_uid = c.imports().get("again").await.unwrap().uid().unwrap();
    assert_ne!(old_uid, new_uid);
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let job = c.wait_job("again").await;
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0].uid;
        if *owner == new_uid {
            break job;
        }
        assert_eq!(*owner, old_uid);
        assert!(Instant::now() < deadline, "the namesake's Job was adopted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(job.name_any(), old.name_any(), "same name, a new Job");
    assert_eq!(
        c.run_job(&job, &BTreeMap::from([("again", dir.as_path())]))
            .await,
        0
    );
    c.wait_ready("again", "True", Some("Succeeded")).await;
}

/// A namespace deleted and created again within the controller's trust in the worker identity
/// it applied there (issue 7, seen on the real node: the new namespace's Job could not make its
/// Pod, its ServiceAccount was gone, and the import stayed Importing): the identity is applied
/// again, and the new namespace's import runs as its worker and reaches Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_deleted_and_created_again_gets_its_worker_identity_back() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    const REBORN: &str = "reborn";
    let c = Cluster::start().await;
    let reg = Registry::plain();
    let (dir, _) = archive_dir(&c, "deliveries", ImageSpec::new(&["web:1.4"], layers(4100)));
    let claims = BTreeMap::from([("deliveries", dir.as_path())]);
    let imports: Api<imageimport::api::ImageImport> = Api::namespaced(c.client.clone(), REBORN);
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), REBORN);
    // Import `name` in the namespace: its Job (run by the test, as the worker's ServiceAccount,
    // which fails if that account is missing), then Ready.
    let import = |name: &'static str, tag: &'static str| {
        let (c, reg, claims, imports, jobs) = (&c, &reg, &claims, &imports, &jobs);
        async move {
            let mut m = pvc_import(name, "deliveries", &reg.reference("shop/reborn"), &[tag]);
            m["metadata"]["namespace"] = json!(REBORN);
            imports
                .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&m))
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let job = loop {
                let obj = imports.get(name).await.unwrap();
                if let Some(j) = obj.status.as_ref().and_then(|s| s.job_name.clone())
                    && let Some(job) = jobs.get_opt(&j).await.unwrap()
                {
                    break job;
                }
                assert!(
                    Instant::now() < deadline,
                    "no Job for {name}: {:?}",
                    obj.status
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            // What the Job controller needs to make the Pod, and the worker to report.
            let sa = Api::<ServiceAccount>::namespaced(c.client.clone(), REBORN);
            let role = Api::<Role>::namespaced(c.client.clone(), REBORN);
            let binding = Api::<RoleBinding>::namespaced(c.client.clone(), REBORN);
            assert!(
                sa.get_opt("imageimport-worker").await.unwrap().is_some(),
                "ServiceAccount"
            );
            assert!(
                role.get_opt("imageimport-worker").await.unwrap().is_some(),
                "Role"
            );
            assert!(
                binding
                    .get_opt("imageimport-worker")
                    .await
                    .unwrap()
                    .is_some(),
                "RoleBinding"
            );
            assert_eq!(c.run_job(&job, claims).await, 0);
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let obj = imports.get(name).await.unwrap();
                if ready(&obj).is_some_and(|(s, r, _)| s == "True" && r == "Succeeded") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} not Ready: {:?}",
                    ready(&obj)
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    c.api.create_namespace(REBORN).await;
    c.claim_in(REBORN, "deliveries").await;
    import("first", "1").await;
    c.delete_namespace(REBORN).await;
    c.api.create_namespace(REBORN).await;
    c.claim_in(REBORN, "deliveries").await;
    import("second", "2").await;
}

/// The concurrency limit counts only Jobs an ImageImport owns: a tenant putting the label on
/// Jobs of its own cannot hold every import in the cluster Queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_jobs_of_others_take_no_import_slot() {
    let c = Cluster::start().await;
    let reg = Registry::plain();
    for i in 0..3 {
        let squatter: Job = serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": format!("squatter-{i}"), "namespace": NS,
                         "labels": {"app.kubernetes.io/managed-by": "imageimport"}},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "x", "image": "busybox"}]}}}
        }))
        .unwrap();
        c.jobs()
            .create(&PostParams::default(), &squatter)
            .await
            .unwrap();
    }
    let (dir, _) = archive_dir(&c, "slot", ImageSpec::new(&["web:1.4"], layers(5300)));
    c.claim("slot").await;
    c.apply(pvc_import(
        "slot",
        "slot",
        &reg.reference("shop/slot"),
        &["1"],
    ))
    .await;
    let job = c.wait_job("slot").await;
    assert_eq!(
        c.run_job(&job, &BTreeMap::from([("slot", dir.as_path())]))
            .await,
        0
    );
    c.wait_ready("slot", "True", Some("Succeeded")).await;
}

/// The outcome is believed only from the Pod the chain ImageImport uid -> Job -> Pod leads
/// to, running the Job's own worker container: not from anything the worker's identity writes
/// into the status (the old `status.result`), not from a Pod without the Job as controller,
/// not from a Pod of the Job running another container. And a Job the ImageImport does not
/// control is never deleted, whatever `status.jobName` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_jobs_own_pod_reports_and_only_own_jobs_are_deleted() {
    use k8s_openapi::api::core::v1::Pod;
    let c = Cluster::start().await;
    let reg = Registry::plain();
    let (dir, built) = archive_dir(&c, "trust", ImageSpec::new(&["web:1.4"], layers(5400)));
    c.claim("trust").await;
    let claims = BTreeMap::from([("trust", dir.as_path())]);
    // A path the kubelet would expand were `$` not escaped in the Job's env (F17).
    let odd = "web/$(IMAGEIMPORT_NAME)$$.tar";
    std::fs::copy(dir.join("web/web-1.4.tar"), dir.join(odd)).unwrap();
    let mut m = pvc_import("web", "trust", &reg.reference("shop/web"), &["1"]);
    m["spec"]["source"]["pvc"]["path"] = json!(odd);
    c.apply(m).await;
    let job = c.wait_job("web").await;
    let job_name = job.name_any();
    let forged = format!("sha256:{}", "f".repeat(64));
    let report = json!({"succeeded": true, "digest": forged, "layers": 1}).to_string();

    // Anyone running as the worker's ServiceAccount writes a success into the status.
    let worker = c.api.service_account_client(NS, "imageimport-worker").await;
    let as_worker: Api<imageimport::api::ImageImport> = Api::namespaced(worker, NS);
    // (What the controller used to believe; the field is not in the schema any more.)
    as_worker
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&json!({
                "status": {"result": {"generation": 1, "jobName": job_name, "succeeded": true,
                                      "digest": forged, "images": [{"name": "web:1", "digest": forged}]}}
            })),
        )
        .await
        .unwrap();
    // Two Pods claiming to be the worker, each "terminated" with a success report: one that
    // the Job does not control, one of the Job that runs another container.
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    let template = job.spec.clone().unwrap().template;
    for (name, owned, image) in [
        ("impostor-unowned", false, "imageimport:test"),
        ("impostor-image", true, "evil:latest"),
    ] {
        let mut spec = template.spec.clone().unwrap();
        spec.containers[0].image = Some(image.into());
        let mut labels = template.metadata.clone().unwrap().labels.unwrap();
        labels.insert(
            "batch.kubernetes.io/controller-uid".into(),
            job.uid().unwrap(),
        );
        let owners = owned.then(|| {
            vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "Job".into(),
                    name: job_name.clone(),
                    uid: job.uid().unwrap(),
                    controller: Some(true),
                    block_owner_deletion: None,
                },
            ]
        });
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels),
                owner_references: owners,
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        };
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        pods.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"status": {"phase": "Succeeded", "containerStatuses": [{
                "name": "worker", "image": image, "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": report,
                                         "startedAt": now, "finishedAt": now}}}]}}),
            ),
        )
        .await
        .unwrap();
    }
    // The Job ends; its own worker never ran (no report of its own).
    c.record_job_outcome(&job_name, 0, k8s_openapi::jiff::Timestamp::now())
        .await;
    let obj = c.wait_ready("web", "Unknown", Some("WorkerFailed")).await;
    let msg = ready(&obj).unwrap().2;
    assert!(
        msg.contains("impostor-image") && msg.contains("does not run the Job's worker container"),
        "{msg}"
    );
    let st = obj.status.unwrap();
    assert_eq!(st.digest, None, "no forged digest");
    assert!(st.images.is_empty());

    // The next attempt's real worker reports through its own Pod.
    let job2 = c.wait_job("web").await;
    assert!(job2.name_any().ends_with("-a2"), "{}", job2.name_any());
    assert!(
        c.jobs().get_opt(&job_name).await.unwrap().is_none()
            || c.jobs()
                .get(&job_name)
                .await
                .unwrap()
                .metadata
                .deletion_timestamp
                .is_some(),
        "the superseded attempt's Job is removed"
    );
    assert_eq!(c.run_job(&job2, &claims).await, 0);
    let obj = c.wait_ready("web", "True", Some("Succeeded")).await;
    let digest = skopeo::manifest_digest(&reg, "shop/web:1");
    assert_eq!(
        obj.status.as_ref().unwrap().digest.as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(
        obj.status.unwrap().image_id.as_deref(),
        Some(built.images[0].config_digest.as_str())
    );

    // A Job of someone else's, named in a status the worker's identity rewrote: a spec change
    // (which stops the previous generation's Job) leaves it alone.
    let victim: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "victim", "namespace": NS},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "x", "image": "busybox"}]}}}
    }))
    .unwrap();
    c.jobs()
        .create(&PostParams::default(), &victim)
        .await
        .unwrap();
    as_worker
        .patch_status(
            "web",
            &PatchParams::apply("imageimport-worker").force(),
            &Patch::Apply(&json!({
                "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
                "status": {"jobName": "victim"}
            })),
        )
        .await
        .unwrap();
    let mut m = pvc_import("web", "trust", &reg.reference("shop/web"), &["2"]);
    m["spec"]["source"]["pvc"]["path"] = json!(odd);
    c.apply(m).await;
    // (wait_job follows status.jobName, which names the victim until the controller resets it.)
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.wait_job("web").await.name_any().contains("-g2-") {
        assert!(Instant::now() < deadline, "no generation-2 Job");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let victim = c.jobs().get("victim").await.unwrap();
    assert!(
        victim.metadata.deletion_timestamp.is_none(),
        "victim deleted"
    );
}

/// Inputs the API server would refuse later are refused at `kubectl apply` (DNS-1123 names,
/// ConfigMap key syntax), and an API refusal while preparing an attempt (here a RoleBinding
/// of the worker's name with another roleRef, which is immutable) is a condition and an
/// event, retried until it is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_names_and_refused_worker_setup_explain_themselves() {
    use k8s_openapi::api::rbac::v1::RoleBinding;
    let c = Cluster::start().await;
    let reg = Registry::plain();
    for (field, value) in [
        (
            "/spec/target/credentialsSecretRef",
            json!({"name": "My_Secret"}),
        ),
        (
            "/spec/source/pvc",
            json!({"claimName": "claim/other", "path": "a.tar"}),
        ),
        (
            "/spec/target/caBundleRef",
            json!({"name": "ca", "key": "ca crt"}),
        ),
    ] {
        let mut m = pvc_import("badname", "d", &reg.reference("shop/x"), &["1"]);
        let (parent, leaf) = field.rsplit_once('/').unwrap();
        m.pointer_mut(parent).unwrap()[leaf] = value;
        let err = c
            .imports()
            .patch("badname", &PatchParams::apply("test"), &Patch::Apply(&m))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("should match"), "{field}: {err}");
    }

    let ns = "conflict";
    c.api.create_namespace(ns).await;
    let bindings: Api<RoleBinding> = Api::namespaced(c.client.clone(), ns);
    let squatter: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "imageimport-worker"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": []
    }))
    .unwrap();
    bindings
        .create(&PostParams::default(), &squatter)
        .await
        .unwrap();
    let imports: Api<imageimport::api::ImageImport> = Api::namespaced(c.client.clone(), ns);
    let m = json!({
        "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"source": {"url": {"url": "https://artifacts.example/web.tar"}},
                 "target": {"repository": reg.reference("conflict/web"), "insecure": true}}
    });
    imports
        .patch("web", &PatchParams::apply("test"), &Patch::Apply(&m))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let msg = loop {
        let obj = imports.get("web").await.unwrap();
        if let Some((s, r, m)) = ready(&obj)
            && r == "WorkerSetupFailed"
        {
            assert_eq!(s, "Unknown");
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no WorkerSetupFailed: {:?}",
            obj.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        msg.contains("RoleBinding") && msg.contains("refused"),
        "{msg}"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "WorkerSetupFailed"),
        "{reasons:?}"
    );
    // Fixed: the next look creates the Job.
    bindings
        .delete("imageimport-worker", &DeleteParams::default())
        .await
        .unwrap();
    let jobs: Api<Job> = Api::namespaced(c.client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(90);
    while jobs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no Job after the fix");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

// ----- kstatus -----
//
// What GitOps tools see: every ImageImport state read by kstatus itself
// (`sigs.k8s.io/cli-utils/pkg/kstatus`, what Flux and kpt wait on), built from its Go module
// by `hack/build-test-bins.sh kstatus`. InProgress while importing (and again for a new
// generation, whose conditions start over), Current after success, Failed after a permanent
// failure.

/// kstatus' verdict on the object as the API server has it now: (status, message).
async fn kstatus(c: &Cluster, name: &str) -> (String, String) {
    let obj: imageimport::api::ImageImport = c.imports().get(name).await.unwrap();
    let bin = support::kube::testbin_dir().join("kstatus");
    assert!(
        bin.is_file(),
        "{} not found: run hack/build-test-bins.sh kstatus",
        bin.display()
    );
    let mut child = Command::new(bin)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        &serde_json::to_vec(&obj).unwrap(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kstatus: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["status"].as_str().unwrap().to_string(),
        v["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kstatus_reads_in_progress_current_and_failed() {
    let c = Cluster::start().await;
    let reg = Registry::plain();
    let (dir, _) = archive_dir(&c, "d", ImageSpec::new(&["web:1.4"], layers(6100)));
    c.claim("d").await;
    let claims = BTreeMap::from([("d", dir.as_path())]);

    // Importing: InProgress.
    c.apply(pvc_import("web", "d", &reg.reference("shop/web"), &["1"]))
        .await;
    let job = c.wait_job("web").await;
    assert_eq!(kstatus(&c, "web").await.0, "InProgress");
    assert_eq!(c.run_job(&job, &claims).await, 0);
    c.wait_ready("web", "True", Some("Succeeded")).await;
    assert_eq!(kstatus(&c, "web").await.0, "Current");

    // A new generation: InProgress again, and nothing of the last one's verdict is left.
    c.apply(pvc_import("web", "d", &reg.reference("shop/web"), &["2"]))
        .await;
    let job2 = c.wait_job("web").await;
    assert!(job2.metadata.name.as_deref().unwrap().contains("-g2-"));
    assert_eq!(kstatus(&c, "web").await.0, "InProgress");
    let obj = c.imports().get("web").await.unwrap();
    let st = obj.status.unwrap();
    assert!(
        st.conditions
            .iter()
            .all(|x| x.observed_generation == Some(2) && x.type_ != "Verified"),
        "{:?}",
        st.conditions
    );
    assert_eq!(st.digest, None, "the last generation's digest is gone");

    // A permanent failure: Failed, with the reason's message.
    let bad = c.work.path().join("claim-bad");
    std::fs::create_dir_all(bad.join("web")).unwrap();
    std::fs::write(bad.join("web/web-1.4.tar"), hostile::tampered_layer()).unwrap();
    c.claim("bad").await;
    c.apply(pvc_import(
        "evil",
        "bad",
        &reg.reference("shop/evil"),
        &["1"],
    ))
    .await;
    let job = c.wait_job("evil").await;
    assert_eq!(
        kstatus(&c, "evil").await.0,
        "InProgress",
        "not yet failed while the worker runs"
    );
    assert_eq!(
        c.run_job(&job, &BTreeMap::from([("bad", bad.as_path())]))
            .await,
        1
    );
    c.wait_ready("evil", "False", Some("VerificationFailed"))
        .await;
    let (status, message) = kstatus(&c, "evil").await;
    assert_eq!(status, "Failed", "{message}");
    assert!(message.contains("diff_id"), "{message}");
}

/// The worker Pod settings (`--worker-pod`, the chart's `controller.worker.pod`) reach a Job
/// the API server accepts (annotations, nodeSelector, tolerations, priorityClassName,
/// imagePullSecrets, env), and the proxy variable among them is what the worker's registry
/// connections go through: the push arrives at the registry by way of the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_pod_settings_reach_the_job_and_the_proxy_carries_the_push() {
    let mut c = Cluster::start().await;
    c.kill_controller();
    let reg = Registry::plain();
    // The proxy runs its own runtime: started, and dropped, off this one.
    let base = reg.base_url();
    let proxy = tokio::task::spawn_blocking(move || support::faults::FaultyProxy::start(&base))
        .await
        .unwrap();
    let pod = json!({
        "annotations": {"sidecar.istio.io/inject": "false"},
        "nodeSelector": {"pool": "imports"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "batch-low",
        "imagePullSecrets": [{"name": "pull"}],
        "env": [{"name": "HTTP_PROXY", "value": format!("http://{}", proxy.host())}]
    });
    // The Pod's admission resolves the class (the Job's does not): it must exist.
    let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(c.client.clone());
    let class =
        serde_json::from_value(json!({"metadata": {"name": "batch-low"}, "value": 10})).unwrap();
    classes
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    c.controller = Some(c.spawn_controller(
        &[
            "--worker-pod",
            &pod.to_string(),
            "--metrics-bind-address",
            &addr,
        ],
        "ctl-pod",
    ));
    let (dir, built) = archive_dir(&c, "d", ImageSpec::new(&["web:1.4"], layers(4300)));
    c.claim("d").await;
    c.apply(pvc_import("web", "d", &reg.reference("shop/web"), &["1.4"]))
        .await;
    let job = c.wait_job("web").await;
    let template = job.spec.clone().unwrap().template;
    assert_eq!(
        template.metadata.clone().unwrap().annotations.unwrap()["sidecar.istio.io/inject"],
        "false"
    );
    let spec = template.spec.clone().unwrap();
    assert_eq!(spec.node_selector.clone().unwrap()["pool"], "imports");
    let toleration = &spec.tolerations.clone().unwrap()[0];
    assert_eq!(
        (toleration.key.as_deref(), toleration.effect.as_deref()),
        (Some("dedicated"), Some("NoSchedule"))
    );
    assert_eq!(spec.priority_class_name.as_deref(), Some("batch-low"));
    assert_eq!(spec.image_pull_secrets.clone().unwrap()[0].name, "pull");

    let claims = BTreeMap::from([("d", dir.as_path())]);
    assert_eq!(c.run_job(&job, &claims).await, 0);
    c.wait_ready("web", "True", None).await;
    assert_eq!(
        skopeo::pull_diff_ids(&reg, "shop/web:1.4"),
        built.images[0].diff_ids
    );
    let seen = proxy.seen();
    assert!(
        seen.iter()
            .any(|s| s.method == "PUT" && s.path == "/v2/shop/web/manifests/1.4"),
        "the manifest went through the proxy: {seen:?}"
    );
    tokio::task::spawn_blocking(move || drop(proxy))
        .await
        .unwrap();
}
