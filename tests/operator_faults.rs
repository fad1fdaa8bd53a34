//! The operator under faults, on a real kube-apiserver + etcd and a real registry: registry
//! outages, API server restarts and throttling, conflicts, a killed leader or worker. Each ends
//! with the right image pushed exactly once or a clear failure, never a half-pushed tag.
//!
//! No kubelet or Job controller runs here: where a Pod would run, the test plays the node.
//! It checks the worker Job's spec (claim mounted read-only, security context, owner), runs
//! the container's command locally with the claim's mount mapped to a local folder and the
//! Secret volumes written out, as the worker's own ServiceAccount, and then records the
//! outcome on the Job's status as the Job controller would.

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::archives::ImageSpec;
use support::cluster::*;
use support::registry::{Registry, skopeo};

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
        .wait_ready("web", "Unknown", Some("RegistryUnavailable"))
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
    // Exactly once: no further Job after the restart (the first attempt's was removed when
    // the second started).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let jobs: Vec<String> = c
        .jobs_for("web")
        .await
        .iter()
        .map(|j| j.name_any())
        .collect();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert!(jobs[0].ends_with("-a2"), "{jobs:?}");
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
    c.record_job_outcome(&job.name_any(), 137, started).await;
    let obj = c.wait_ready("web", "Unknown", Some("WorkerFailed")).await;
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
    c.record_job_outcome(&job2.name_any(), 0, started).await;
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
    // The first attempt's Job was removed when the second started.
    let jobs: Vec<String> = c
        .jobs_for("web")
        .await
        .iter()
        .map(|j| j.name_any())
        .collect();
    assert_eq!(jobs, [job2.name_any()]);
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
            .filter(|r| r.path == format!("/v2/t/app{i}/manifests/1"))
            .count();
        assert_eq!(puts, 1, "t/app{i}: the tag was put {puts} times");
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

/// A spec change while the previous generation's worker Pod still runs (deleting a Job stops its
/// Pod only later: the garbage collector deletes it, the kubelet stops it within its grace
/// period): the old Job is deleted at once, but the new generation's Job waits until that Pod is
/// gone. Otherwise the old worker, still pushing, could move the tag after the new import
/// finished, and `status.digest` would name an image the tag no longer points at. Here the old
/// worker does push late, to the same tag, while its Pod terminates; the new import runs after it
/// and its image is the one left under the tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_change_waits_for_the_previous_worker_pod_to_stop() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::DeleteParams;
    use support::archives::{self, Format};

    let c = Cluster::start().await;
    let reg = Registry::plain();
    let (dir, first) = archive_dir(&c, "d", ImageSpec::new(&["web:1.4"], layers(4100)));
    // The second generation imports another image, from another archive on the same claim.
    let second = archives::build(
        &Format::DockerLegacy,
        &[ImageSpec::new(&["web:1.4"], layers(4200))],
    );
    std::fs::write(dir.join("web/web-2.tar"), &second.bytes).unwrap();
    c.claim("d").await;
    let claims = BTreeMap::from([("d", dir.as_path())]);
    c.apply(pvc_import("web", "d", &reg.reference("shop/web"), &["1.4"]))
        .await;
    let job1 = c.wait_job("web").await;
    let job1_name = job1.name_any();
    assert!(job1_name.ends_with("-g1-a1"), "{job1_name}");

    // Playing the Job controller, the scheduler and the kubelet: the Job's Pod, bound to a node
    // and running. Its labels are the template's plus the ones the Job controller adds.
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    let template = job1.spec.clone().unwrap().template;
    let mut labels = template.metadata.unwrap().labels.unwrap();
    let uid = job1.metadata.uid.clone().unwrap();
    for (k, v) in [
        ("batch.kubernetes.io/job-name", job1_name.as_str()),
        ("job-name", job1_name.as_str()),
        ("batch.kubernetes.io/controller-uid", uid.as_str()),
        ("controller-uid", uid.as_str()),
    ] {
        labels.insert(k.into(), v.into());
    }
    let mut spec = template.spec.unwrap();
    spec.node_name = Some("node-a".into());
    let pod_name = format!("{job1_name}-x7k2p");
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(pod_name.clone()),
            labels: Some(labels),
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "Job".into(),
                    name: job1_name.clone(),
                    uid,
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                },
            ]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch_status(
        &pod_name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();

    // The spec changes: the other archive, to the same tag.
    let mut changed = pvc_import("web", "d", &reg.reference("shop/web"), &["1.4"]);
    changed["spec"]["source"]["pvc"]["path"] = json!("web/web-2.tar");
    c.apply(changed).await;

    // The generation-1 Job is deleted at once...
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.jobs().get_opt(&job1_name).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the generation-1 Job was kept");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and (playing the garbage collector) its Pod deleted with the default grace period: it
    // stays, terminating, until the kubelet sees its container end.
    pods.delete(&pod_name, &DeleteParams::default())
        .await
        .unwrap();
    let terminating = pods.get(&pod_name).await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());

    // No generation-2 Job while that Pod exists; the status says what it waits for.
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        let jobs: Vec<String> = c
            .jobs_for("web")
            .await
            .iter()
            .map(|j| j.name_any())
            .collect();
        assert!(
            jobs.is_empty(),
            "a Job started beside the old worker: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let obj = c.wait_ready("web", "Unknown", Some("Pending")).await;
    let message = ready(&obj).unwrap().2;
    assert!(
        message.contains(&pod_name) && message.contains("previous import's worker"),
        "{message}"
    );
    assert_eq!(obj.status.as_ref().unwrap().job_name, None);

    // The old worker, still running, finishes its push now, to the tag (its Job is gone:
    // nothing records its outcome; the result it reports is of generation 1 and ignored).
    let mut old_worker = c.prepare_job(&job1, &claims).await;
    let out = tokio::task::spawn_blocking(move || old_worker.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed_late = skopeo::manifest_digest(&reg, "shop/web:1.4");
    assert_eq!(
        skopeo::pull_diff_ids(&reg, "shop/web:1.4"),
        first.images[0].diff_ids
    );
    assert!(c.jobs_for("web").await.is_empty());

    // The kubelet saw the container end and removes the Pod: now generation 2 starts.
    pods.delete(
        &pod_name,
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let job2 = c.wait_job("web").await;
    assert!(job2.name_any().ends_with("-g2-a1"), "{}", job2.name_any());
    assert_eq!(c.run_job(&job2, &claims).await, 0);
    let obj = c.wait_ready("web", "True", Some("Succeeded")).await;
    let st = obj.status.unwrap();
    assert_eq!(st.observed_generation, Some(2));
    // The tag points at the image the status names: the new generation's.
    let digest = skopeo::manifest_digest(&reg, "shop/web:1.4");
    assert_eq!(st.digest.as_deref(), Some(digest.as_str()));
    assert_ne!(digest, pushed_late);
    assert_eq!(
        skopeo::pull_diff_ids(&reg, "shop/web:1.4"),
        second.images[0].diff_ids
    );
    let jobs: Vec<String> = c
        .jobs_for("web")
        .await
        .iter()
        .map(|j| j.name_any())
        .collect();
    assert_eq!(jobs, vec![job2.name_any()]);
}

// ---------------------------------------------------------------------------------------------
// Faults in the middle of an import: the upload is under way (bytes in the registry's
// `_uploads`) when the registry or the worker dies. Helpers first, then the tests.
// ---------------------------------------------------------------------------------------------

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use support::registry::{HARNESS_USER_AGENT, MANIFEST_ACCEPT};

/// Two layers of 1 MiB files (~2/3 text-like, ~1/3 random: compressible only in part), 24 MiB
/// in all: the upload takes long enough to be seen under way and cut.
fn big_layers(seed: u64) -> Vec<support::archives::Layer> {
    vec![
        support::archives::layer(seed, 16, 1 << 20),
        support::archives::layer(seed + 1, 8, 1 << 20),
    ]
}

/// What `<repo>:<tag>` points at on a plain-HTTP registry, by a HEAD of its manifest:
/// `Ok(None)` unknown, `Ok(Some(digest))`, `Err` when the registry cannot answer.
fn tag_digest(host: &str, repo: &str, tag: &str) -> Result<Option<String>, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(host).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "HEAD /v2/{repo}/manifests/{tag} HTTP/1.1\r\nHost: {host}\r\nAccept: {MANIFEST_ACCEPT}\r\n\
         User-Agent: {HARNESS_USER_AGENT}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status: u16 = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {out:?}"))?;
    match status {
        404 => Ok(None),
        200 => out
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("docker-content-digest")
                    .then(|| Some(v.trim().to_string()))
            })
            .flatten()
            .map(Some)
            .ok_or_else(|| format!("200 without Docker-Content-Digest: {out:?}")),
        s => Err(format!("HTTP {s}")),
    }
}

/// One look at the tag: when (since the watch started) and what it pointed at.
type TagSeen = (Duration, Result<Option<String>, String>);

/// Looks at a tag every 20 ms from a thread, for as long as a fault test runs.
struct TagWatch {
    t0: Instant,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<TagSeen>>,
}

impl TagWatch {
    fn start(host: &str, repo: &str, tag: &str) -> TagWatch {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let (host, repo, tag, flag) = (
            host.to_string(),
            repo.to_string(),
            tag.to_string(),
            stop.clone(),
        );
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                // A probe that fails is asked again (three tries): on a loaded machine one
                // HEAD can miss its 5 s timeout while the registry is up.
                let at = t0.elapsed();
                let mut look = tag_digest(&host, &repo, &tag);
                for _ in 0..2 {
                    if look.is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    look = tag_digest(&host, &repo, &tag);
                }
                seen.push((at, look));
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        TagWatch { t0, stop, handle }
    }

    /// Now, on the watch's clock.
    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn finish(self) -> Vec<TagSeen> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// Manifest PUTs of the import's clients (not the harness) to `/v2/<repo>/manifests/<tag>`.
fn manifest_puts(reg: &Registry, repo: &str, tag: &str) -> usize {
    let path = format!("/v2/{repo}/manifests/{tag}");
    reg.requests()
        .into_iter()
        .filter(|r| r.is_client() && r.method == "PUT" && r.path == path)
        .count()
}

/// Starts the worker of `job` (playing the node; its stderr into `log`) and returns once the
/// registry holds at least 1 MiB of an unfinished blob upload, the worker still running.
async fn start_worker_until_uploading(
    c: &Cluster,
    job: &Job,
    claims: &BTreeMap<&str, &std::path::Path>,
    reg: &Registry,
    log: &std::path::Path,
) -> (std::process::Child, k8s_openapi::jiff::Timestamp) {
    let mut cmd = c.prepare_job(job, claims).await;
    let started = k8s_openapi::jiff::Timestamp::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while reg.uploading_bytes() < (1 << 20) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the worker ended ({status}) before an upload was seen under way: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "no upload seen under way");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (child, started)
}

/// Checks the tag's history: unknown until `quiet_until`, and from then on unknown or the
/// final digest, never anything else; and the watch did look at it during the fault and after.
fn assert_never_half_pushed(seen: &[TagSeen], quiet_until: Duration, digest: &str) {
    assert!(
        seen.iter().filter(|s| s.0 < quiet_until).count() >= 5,
        "the tag was hardly looked at before the fault: {seen:?}"
    );
    for (at, what) in seen {
        match what {
            Ok(Some(d)) if *at < quiet_until => {
                panic!("the tag existed ({d}) at {at:?}, before the import could have ended")
            }
            Ok(Some(d)) => assert_eq!(d, digest, "the tag pointed elsewhere at {at:?}"),
            _ => {}
        }
    }
    assert!(
        seen.iter()
            .any(|s| s.1.as_ref().ok() == Some(&Some(digest.to_string()))),
        "the watch never saw the final tag: {seen:?}"
    );
}

/// The registry is killed while the worker's upload is under way (bytes in `_uploads`) and
/// comes back a second later: the worker continues the upload (or fails transiently and the
/// next attempt does it). The import ends Ready with the tag's digest, the tag put exactly
/// once, and the tag never existed before the import ended nor pointed at anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_killed_mid_upload_the_import_completes_once() {
    let t0 = Instant::now();
    let c = Cluster::start().await;
    let mut reg = Registry::plain();
    let (dir, built) = archive_dir(&c, "d", ImageSpec::new(&["web:1.4"], big_layers(4300)));
    c.claim("d").await;
    let claims = BTreeMap::from([("d", dir.as_path())]);
    c.apply(pvc_import("web", "d", &reg.reference("shop/web"), &["1.4"]))
        .await;
    let job = c.wait_job("web").await;
    let watch = TagWatch::start(&reg.host, "shop/web", "1.4");
    let log = c.work.path().join("worker-a1.log");
    let (mut child, started) = start_worker_until_uploading(&c, &job, &claims, &reg, &log).await;

    let killed_at = watch.now();
    let held = reg.uploading_bytes();
    reg.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    reg.restart();
    let restarted_at = watch.now();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let code = status.code().unwrap_or(137);
    let stderr = std::fs::read_to_string(&log).unwrap();
    eprintln!(
        "worker a1 (registry killed with {held} bytes uploading, {killed_at:?} into the watch): \
         exit {code}: {stderr}"
    );
    c.record_job_outcome(&job.name_any(), code, started).await;
    let attempts = match code {
        0 => {
            assert!(
                stderr.contains("interrupted") || stderr.contains("retrying"),
                "the worker did not meet the outage: {stderr}"
            );
            1
        }
        // Transient: the controller says so and runs the next attempt after its backoff.
        75 => {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let obj = c.imports().get("web").await.unwrap();
                match ready(&obj) {
                    Some((s, _, m)) if s == "Unknown" && m.contains("retrying") => break,
                    other => assert!(Instant::now() < deadline, "not retried: {other:?}"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let job2 = c.wait_job("web").await;
            assert!(job2.name_any().ends_with("-a2"), "{}", job2.name_any());
            assert_eq!(c.run_job(&job2, &claims).await, 0);
            2
        }
        other => panic!("the worker ended with {other}: {stderr}"),
    };
    let obj = c.wait_ready("web", "True", Some("Succeeded")).await;
    let seen = watch.finish();
    let st = obj.status.unwrap();
    let digest = skopeo::manifest_digest(&reg, "shop/web:1.4");
    assert_eq!(st.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(st.attempts, attempts);
    assert_eq!(
        skopeo::pull_diff_ids(&reg, "shop/web:1.4"),
        built.images[0].diff_ids
    );
    // The watch saw the outage (it was looking), no tag before the registry came back, and
    // never another image under the tag.
    assert!(
        seen.iter()
            .any(|s| s.0 > killed_at && s.0 < restarted_at && s.1.is_err()),
        "the watch did not see the registry down"
    );
    assert_never_half_pushed(&seen, restarted_at, &digest);
    assert_eq!(
        manifest_puts(&reg, "shop/web", "1.4"),
        1,
        "the tag is put exactly once"
    );
    assert_eq!(reg.tags("shop/web"), vec!["1.4".to_string()]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.jobs_for("web").await.len() as u32, attempts);
    eprintln!(
        "registry killed mid-upload: {attempts} attempt(s), test {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

/// The worker is killed (SIGKILL: OOM, eviction) while its upload is under way: the Job
/// fails without a result, the controller calls the worker lost (WorkerFailed, retrying) and,
/// after its backoff, runs attempt 2, which imports the image. No tag exists from the kill
/// until attempt 2 puts it, and then only the final one, put once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_upload_is_lost_and_the_next_attempt_imports() {
    let t0 = Instant::now();
    let c = Cluster::start().await;
    let reg = Registry::plain();
    let (dir, built) = archive_dir(&c, "d", ImageSpec::new(&["web:1.4"], big_layers(4400)));
    c.claim("d").await;
    let claims = BTreeMap::from([("d", dir.as_path())]);
    c.apply(pvc_import("web", "d", &reg.reference("shop/web"), &["1.4"]))
        .await;
    let job = c.wait_job("web").await;
    assert!(job.name_any().ends_with("-a1"), "{}", job.name_any());
    let watch = TagWatch::start(&reg.host, "shop/web", "1.4");
    let log = c.work.path().join("worker-a1.log");
    let (mut child, started) = start_worker_until_uploading(&c, &job, &claims, &reg, &log).await;
    let held = reg.uploading_bytes();
    child.kill().unwrap();
    let status = child.wait().unwrap();
    let killed_at = watch.now();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the worker was killed, not ended: {status}"
    );
    eprintln!(
        "worker a1 killed with {held} bytes uploading: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    c.record_job_outcome(&job.name_any(), 137, started).await;

    let obj = c.wait_ready("web", "Unknown", Some("WorkerFailed")).await;
    let msg = ready(&obj).unwrap().2;
    assert!(
        msg.contains("retrying") && msg.contains(&job.name_any()),
        "{msg}"
    );
    let st = obj.status.unwrap();
    assert_eq!(st.attempts, 1);
    assert!(st.next_attempt_after.is_some());
    assert!(reg.tags("shop/web").is_empty(), "no half-pushed tag");
    // The lost attempt is counted as a failure.
    let (_, metrics) = http_get(&c.metrics_addr, "/metrics").expect("metrics");
    assert!(
        metrics.contains(r#"imageimport_imports_total{result="failed",reason="WorkerFailed"} 1"#),
        "{metrics}"
    );
    // And its time: from the attempt's start to when its Job was found ended.
    assert!(
        metrics.contains("imageimport_import_duration_seconds_count 1"),
        "{metrics}"
    );

    let job2 = c.wait_job("web").await;
    assert!(job2.name_any().ends_with("-a2"), "{}", job2.name_any());
    // The backoff was waited out: attempt 2 is not created before 10 s after the loss.
    let a2_at = watch.now();
    assert!(
        a2_at >= killed_at + Duration::from_secs(9),
        "attempt 2 came {:?} after the kill",
        a2_at - killed_at
    );
    assert_eq!(c.run_job(&job2, &claims).await, 0);
    let obj = c.wait_ready("web", "True", Some("Succeeded")).await;
    let seen = watch.finish();
    let st = obj.status.unwrap();
    assert_eq!(st.attempts, 2);
    let digest = skopeo::manifest_digest(&reg, "shop/web:1.4");
    assert_eq!(st.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(
        skopeo::pull_diff_ids(&reg, "shop/web:1.4"),
        built.images[0].diff_ids
    );
    // No tag from the start through the kill and the backoff until attempt 2 ran.
    assert_never_half_pushed(&seen, a2_at, &digest);
    let errors: Vec<&String> = seen.iter().filter_map(|s| s.1.as_ref().err()).collect();
    assert!(errors.is_empty(), "the registry stayed up: {errors:?}");
    assert_eq!(manifest_puts(&reg, "shop/web", "1.4"), 1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let jobs: Vec<String> = c
        .jobs_for("web")
        .await
        .iter()
        .map(|j| j.name_any())
        .collect();
    // The lost attempt's Job was removed when attempt 2 started.
    assert_eq!(jobs, ["web-g1-a2"], "{jobs:?}");
    eprintln!(
        "worker killed mid-upload: attempt 2 {:?} after the kill, test {:.1}s",
        a2_at - killed_at,
        t0.elapsed().as_secs_f64()
    );
}

/// The value of one series in a Prometheus/OpenMetrics text exposition (`name{labels}` exact).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// The controller's /metrics once `ready(text)` holds (the counters are bumped in the same
/// reconcile as the status write a test waits for, but scraped over another connection).
async fn scrape_until(addr: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = http_get(addr, "/metrics").map(|r| r.1).unwrap_or_default();
        if ready(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {what}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The controller's metrics after one import that succeeds and one that fails for good (a
/// tampered layer): imports by result and reason, bytes pushed equal to what the status says
/// was pushed, archive bytes read, the duration histogram, the in-flight gauge up while an import
/// runs and back to 0, and the reconcile counters. Counted once: a later scrape says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_success_and_a_failure_once() {
    let t0 = Instant::now();
    let c = Cluster::start().await;
    let reg = Registry::plain();
    let addr = c.metrics_addr.clone();
    let inflight = "imageimport_imports_in_flight";

    let web_layers = layers(4500);
    let layer_bytes: usize = web_layers.iter().map(|l| l.tar.len()).sum();
    let (dir, built) = archive_dir(&c, "d", ImageSpec::new(&["web:1.4"], web_layers));
    c.claim("d").await;
    c.apply(pvc_import("web", "d", &reg.reference("shop/web"), &["1.4"]))
        .await;
    let job = c.wait_job("web").await;
    scrape_until(&addr, "one import in flight", |t| {
        metric(t, inflight) == Some(1.0)
    })
    .await;
    assert_eq!(
        c.run_job(&job, &BTreeMap::from([("d", dir.as_path())]))
            .await,
        0
    );
    let web = c.wait_ready("web", "True", Some("Succeeded")).await;

    let bad = c.work.path().join("claim-bad");
    std::fs::create_dir_all(bad.join("web")).unwrap();
    let tampered = support::archives::hostile::tampered_layer();
    std::fs::write(bad.join("web/web-1.4.tar"), &tampered).unwrap();
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
        c.run_job(&job, &BTreeMap::from([("bad", bad.as_path())]))
            .await,
        1
    );
    let evil = c
        .wait_ready("evil", "False", Some("VerificationFailed"))
        .await;

    let ok = r#"imageimport_imports_total{result="succeeded",reason="Succeeded"}"#;
    let failed = r#"imageimport_imports_total{result="failed",reason="VerificationFailed"}"#;
    let text = scrape_until(&addr, "both imports", |t| {
        metric(t, ok).is_some() && metric(t, failed).is_some() && metric(t, inflight) == Some(0.0)
    })
    .await;
    eprintln!("{text}");
    assert_eq!(metric(&text, ok), Some(1.0), "{text}");
    assert_eq!(metric(&text, failed), Some(1.0), "{text}");
    // Every outcome's series exists from start-up; only these two are not 0.
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("imageimport_imports_total{") && !l.ends_with(" 0"))
        .collect();
    assert_eq!(series.len(), 2, "only these two outcomes: {series:?}");

    let web_st = web.status.unwrap();
    let evil_st = evil.status.unwrap();
    let pushed = web_st.pushed_bytes.expect("status.pushedBytes");
    assert!(pushed > 0);
    assert_eq!(
        metric(&text, "imageimport_bytes_pushed_total"),
        Some(pushed as f64),
        "bytes pushed = the successful import's status.pushedBytes (the failed one pushed no \
         tag): {text}"
    );
    let read_web = web_st.progress.as_ref().map(|p| p.bytes_done).unwrap_or(0);
    let read_evil = evil_st.progress.as_ref().map(|p| p.bytes_done).unwrap_or(0);
    eprintln!(
        "archives: web {} bytes (read {read_web}), evil {} bytes (read {read_evil}); pushed {pushed}",
        built.bytes.len(),
        tampered.len()
    );
    assert!(read_web > 0 && read_evil > 0, "{web_st:?} {evil_st:?}");
    assert_eq!(
        metric(&text, "imageimport_archive_bytes_read_total"),
        Some((read_web + read_evil) as f64),
        "archive bytes read = what the two workers reported reading: {text}"
    );
    // From a file, what is read (and counted) is the layers' bytes: the worker seeks past the
    // rest.
    assert_eq!(
        read_web as usize, layer_bytes,
        "the successful import read its layers ({read_web} of {layer_bytes} bytes)"
    );
    assert_eq!(
        metric(&text, "imageimport_import_duration_seconds_count"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(metric(&text, inflight), Some(0.0), "{text}");
    assert!(
        metric(&text, "imageimport_reconcile_errors_total").is_some(),
        "the reconcile-errors counter is exposed: {text}"
    );
    assert!(
        metric(&text, "imageimport_reconciliations_total").is_some_and(|n| n >= 4.0),
        "{text}"
    );

    // Counted once: more reconciles (a requeue, a resync) do not count the outcomes again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = http_get(&addr, "/metrics").unwrap().1;
    for s in [
        ok,
        failed,
        "imageimport_bytes_pushed_total",
        "imageimport_archive_bytes_read_total",
        "imageimport_import_duration_seconds_count",
        inflight,
    ] {
        assert_eq!(metric(&again, s), metric(&text, s), "{s}: {again}");
    }
    eprintln!("metrics: test {:.1}s", t0.elapsed().as_secs_f64());
}

/// SIGTERM to a controller process: `kill -TERM <pid>`.
fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits (at most `within`) for a process to exit; its status and how long it took.
async fn exits_within(
    child: &mut std::process::Child,
    within: Duration,
    what: &str,
) -> (std::process::ExitStatus, Duration) {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, t.elapsed());
        }
        assert!(
            t.elapsed() < within,
            "{what} still runs {within:?} after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With leader election: SIGTERM to a standby ends it at once (exit 0), the Lease untouched;
/// SIGTERM to the leader, while an import runs, ends it promptly (exit 0) and releases its
/// Lease (the Lease no longer names it as soon as it has exited, long before the lease
/// duration would have run out); the remaining standby takes the Lease and finishes the import,
/// exactly once; SIGTERM to that new leader releases the Lease too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_leader_releases_the_lease() {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    const LEASE_SECONDS: u64 = 15;
    let t0 = Instant::now();
    let mut c = Cluster::start().await;
    c.kill_controller();
    let reg = Registry::plain();
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "default");
    let lease = || async {
        leases
            .get_opt("imageimport-controller")
            .await
            .unwrap()
            .and_then(|l| l.spec)
            .unwrap_or_default()
    };
    let wait_holder = |want: &'static str, within: Duration| {
        let lease = &lease;
        async move {
            let deadline = Instant::now() + within;
            loop {
                let spec: LeaseSpec = lease().await;
                if spec.holder_identity.as_deref() == Some(want) {
                    return spec;
                }
                assert!(
                    Instant::now() < deadline,
                    "{want} did not take the Lease: {spec:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let lease_seconds = LEASE_SECONDS.to_string();
    let spawn = |identity: &str| {
        let metrics = format!("127.0.0.1:{}", free_port());
        c.spawn_controller(
            &[
                "--leader-elect",
                "--leader-election-namespace",
                "default",
                "--lease-duration-seconds",
                &lease_seconds,
                "--metrics-bind-address",
                &metrics,
            ],
            identity,
        )
    };
    let log = |identity: &str| {
        std::fs::read_to_string(c.work.path().join(format!("controller-{identity}.log")))
            .unwrap_or_default()
    };

    // ctl-a leads (it starts alone), ctl-b and ctl-c stand by.
    let mut a = spawn("ctl-a");
    wait_holder("ctl-a", Duration::from_secs(30)).await;
    let mut b = spawn("ctl-b");
    let mut cc = spawn("ctl-c");
    // The standbys are up (their health listener answers) and have seen the Lease taken.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(b.try_wait().unwrap().is_none(), "{}", log("ctl-b"));
    assert!(cc.try_wait().unwrap().is_none(), "{}", log("ctl-c"));

    // An import is under way: the leader created its Job.
    let (dir, built) = archive_dir(&c, "d", ImageSpec::new(&["web:1.4"], layers(4600)));
    c.claim("d").await;
    c.apply(pvc_import("web", "d", &reg.reference("shop/web"), &["1.4"]))
        .await;
    let job = c.wait_job("web").await;

    // A standby's SIGTERM: it exits 0 at once, and leaves the Lease to its holder.
    let held = lease().await;
    sigterm(&b);
    let (status, took_b) = exits_within(&mut b, Duration::from_secs(10), "the standby").await;
    assert!(status.success(), "standby exit {status}: {}", log("ctl-b"));
    let after = lease().await;
    assert_eq!(after.holder_identity.as_deref(), Some("ctl-a"));
    assert_eq!(after.acquire_time, held.acquire_time, "the leader kept it");

    // The leader's SIGTERM: it exits 0 promptly and gives the Lease up on its way out.
    let before = lease().await;
    let renewed = before.renew_time.clone().expect("a held Lease is renewed");
    sigterm(&a);
    let (status, took_a) = exits_within(&mut a, Duration::from_secs(10), "the leader").await;
    assert!(status.success(), "leader exit {status}: {}", log("ctl-a"));
    let released = lease().await;
    eprintln!(
        "Lease before the leader's SIGTERM: {before:?}; after its exit: {released:?}; it exited \
         in {took_a:?} (the standby in {took_b:?})"
    );
    match released.holder_identity.as_deref() {
        // Released: nobody holds it (and no renewal of a holder is left in it).
        None => assert!(released.renew_time.is_none(), "{released:?}"),
        // Or the standby took it at once (only possible because it was free).
        Some("ctl-c") => assert!(
            released
                .renew_time
                .as_ref()
                .is_some_and(|t| t.0 > renewed.0),
            "{released:?}"
        ),
        Some(other) => panic!(
            "the Lease still names {other} after the leader exited: it was not released, and \
             the standby waits up to {LEASE_SECONDS}s for it to expire: {released:?}"
        ),
    }

    // The standby takes over and the import completes, once. (When: kube-lease-manager's
    // standby sleeps until the expiry it last read and does not watch the Lease, so a released
    // Lease is taken only then; reported, not asserted.)
    let exited = Instant::now();
    wait_holder("ctl-c", Duration::from_secs(LEASE_SECONDS + 15)).await;
    let gap = exited.elapsed();
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
    assert_eq!(c.jobs_for("web").await.len(), 1);

    // The new leader's SIGTERM releases the Lease as well.
    sigterm(&cc);
    let (status, _) = exits_within(&mut cc, Duration::from_secs(10), "the new leader").await;
    assert!(
        status.success(),
        "new leader exit {status}: {}",
        log("ctl-c")
    );
    let last = lease().await;
    assert_eq!(last.holder_identity, None, "{last:?}");
    eprintln!(
        "leader SIGTERM: the standby took the released Lease {gap:?} after the leader exited \
         (lease duration {LEASE_SECONDS}s); test {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}
