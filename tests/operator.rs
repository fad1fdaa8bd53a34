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

/// Load: 50 ImageImports applied at once all reach Ready, never more than the concurrency
/// limit of worker Jobs running at a time. Reports the controller's memory and the API
/// request rate it caused (figures, not assertions on speed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_imports_at_once_respect_the_concurrency_limit() {
    const N: usize = 50;
    const LIMIT: usize = 2; // --max-concurrent-imports of Cluster::start
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
    let claims = BTreeMap::from([("bulk", dir.as_path())]);
    let before = audited_requests(&audit_log);
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
    let elapsed = t0.elapsed().as_secs_f64();
    let pid = c.controller.as_ref().unwrap().id();
    let mut by_user = audited_requests(&audit_log);
    for (user, n) in before {
        *by_user.get_mut(&user).unwrap() -= n;
    }
    let of = |user: &str| by_user.get(user).copied().unwrap_or(0) as f64;
    let controller = of("system:serviceaccount:imageimport-system:imageimport-controller");
    let workers = of(&format!("system:serviceaccount:{NS}:imageimport-worker"));
    eprintln!(
        "load: {N} imports Ready in {elapsed:.1}s; at most {max_running} Jobs at once (limit {LIMIT}); controller peak RSS {} KiB; \
         API requests: controller {controller:.0} ({:.1}/s, {:.1} per import), workers {workers:.0} ({:.1} per import); all users: {by_user:?}",
        peak_rss_kib(pid),
        controller / elapsed,
        controller / N as f64,
        workers / N as f64,
    );
    assert!(
        controller > 0.0,
        "the controller's requests are attributed: {by_user:?}"
    );
    assert_eq!(
        max_running, LIMIT,
        "the limit was reached, so it was tested"
    );
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
        format!("{}/mirror/library/*", reg.host),
    );
    let started = k8s_openapi::jiff::Timestamp::now();
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a permanent failure");
    c.record_job_outcome(&job.name_any(), false, started).await;
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
    assert_eq!(st.pushed.len(), 3);
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
