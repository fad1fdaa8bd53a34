//! Self-tests of the kube harness (tests/support/kube.rs): a real etcd + kube-apiserver.
//! Every test starts its own pair (starts are serialized by the harness).

mod support;

use std::collections::BTreeMap;
use std::time::Instant;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use support::kube::ApiServer;

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.imageimport.dev
spec:
  group: test.imageimport.dev
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    listKind: WidgetList
  versions:
    - name: v1alpha1
      served: true
      storage: true
      subresources:
        status: {}
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [replicas]
              properties:
                replicas:
                  type: integer
                  minimum: 0
                maxReplicas:
                  type: integer
              x-kubernetes-validations:
                - rule: "!has(self.maxReplicas) || self.replicas <= self.maxReplicas"
                  message: "replicas must not exceed maxReplicas"
            status:
              type: object
              properties:
                phase:
                  type: string
"#;

fn widget_resource() -> ApiResource {
    ApiResource {
        group: "test.imageimport.dev".into(),
        version: "v1alpha1".into(),
        api_version: "test.imageimport.dev/v1alpha1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    }
}

fn widget(name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "test.imageimport.dev/v1alpha1",
        "kind": "Widget",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap()
}

fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
}

#[tokio::test]
async fn start_list_namespaces_and_round_trip_a_config_map() {
    let started = Instant::now();
    let server = ApiServer::start();
    eprintln!("apiserver ready after {:?}", started.elapsed());
    for usage in server.usage() {
        eprintln!("{usage:?}");
    }
    let client = server.client().await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|ns| ns.metadata.name)
        .collect();
    for expected in ["default", "kube-system", "kube-public"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }

    server.create_namespace("cm-test").await;
    // Idempotent.
    server.create_namespace("cm-test").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "cm-test");
    cms.create(
        &PostParams::default(),
        &config_map("hello", &[("greeting", "hi")]),
    )
    .await
    .unwrap();
    let read = cms.get("hello").await.unwrap();
    assert_eq!(read.data.unwrap()["greeting"], "hi");
    assert!(read.metadata.uid.is_some());

    // The kubeconfig file works for another client, as it would for a subprocess.
    let kubeconfig = Kubeconfig::read_from(&server.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let other = kube::Client::try_from(config).unwrap();
    let read: ConfigMap = Api::namespaced(other, "cm-test")
        .get("hello")
        .await
        .unwrap();
    assert_eq!(read.data.unwrap()["greeting"], "hi");

    // Server version is the pinned one (ldflags in hack/build-test-bins.sh).
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, support::kube::KUBERNETES_VERSION);

    // Idle cost after a few seconds.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    for usage in server.usage() {
        eprintln!("after 5 s idle: {usage:?}");
    }
}

#[tokio::test]
async fn crd_with_cel_validation_is_enforced() {
    let server = ApiServer::start();
    let crds = server.apply_crd_yaml(WIDGET_CRD).await;
    assert_eq!(crds.len(), 1);
    assert_eq!(
        crds[0].metadata.name.as_deref(),
        Some("widgets.test.imageimport.dev")
    );
    // Applying again is a no-op that still returns once Established.
    server.apply_crd_yaml(WIDGET_CRD).await;

    server.create_namespace("widgets").await;
    let client = server.client().await;
    let widgets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "widgets", &widget_resource());

    let ok = widgets
        .create(
            &PostParams::default(),
            &widget("ok", json!({"replicas": 2, "maxReplicas": 3})),
        )
        .await
        .unwrap();
    assert_eq!(ok.data["spec"]["replicas"], 2);

    // CEL rule (x-kubernetes-validations) refused by the API server.
    let err = widgets
        .create(
            &PostParams::default(),
            &widget("too-many", json!({"replicas": 5, "maxReplicas": 3})),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = &err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status
            .message
            .contains("replicas must not exceed maxReplicas"),
        "{status:?}"
    );

    // OpenAPI schema validation too.
    let err = widgets
        .create(
            &PostParams::default(),
            &widget("neg", json!({"replicas": -1})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err:?}"
    );

    // Status subresource: writes to /status change status, not spec.
    let status_patch = json!({"status": {"phase": "Ready"}, "spec": {"replicas": 0}});
    let patched = widgets
        .patch_status(
            "ok",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&status_patch),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["status"]["phase"], "Ready");
    assert_eq!(patched.data["spec"]["replicas"], 2);
}

#[tokio::test]
async fn data_survives_apiserver_restart() {
    let mut server = ApiServer::start();
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &config_map("persisted", &[("k", "v")]),
    )
    .await
    .unwrap();

    let url = server.url.clone();
    let started = Instant::now();
    server.restart_apiserver();
    eprintln!("graceful restart took {:?}", started.elapsed());
    assert_eq!(server.url, url, "restart keeps the port");

    // The old client reconnects on its next request.
    let read = cms.get("persisted").await.unwrap();
    assert_eq!(read.data.unwrap()["k"], "v");

    let started = Instant::now();
    server.stop_apiserver();
    eprintln!("graceful stop took {:?}", started.elapsed());
    server.start_apiserver();
    server.kill_apiserver();
    assert!(!server.apiserver_running());
    assert!(cms.get("persisted").await.is_err(), "apiserver is down");
    let started = Instant::now();
    server.start_apiserver();
    eprintln!("start after kill took {:?}", started.elapsed());
    assert!(server.apiserver_running());
    let fresh: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let read = fresh.get("persisted").await.unwrap();
    assert_eq!(read.data.unwrap()["k"], "v");
}

#[tokio::test]
async fn service_account_is_subject_to_rbac() {
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

    let server = ApiServer::start();
    let sa_client = server
        .service_account_client("operator", "imageimport")
        .await;

    // No permissions at all yet: cluster-wide secrets and even namespaced configmaps are denied.
    let err = Api::<Secret>::all(sa_client.clone())
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err:?}"
    );
    let own_cms: Api<ConfigMap> = Api::namespaced(sa_client.clone(), "operator");
    let err = own_cms.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err:?}"
    );

    // Grant configmaps in its own namespace only.
    let admin = server.client().await;
    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        namespace: Some("operator".into()),
        ..Default::default()
    };
    Api::<Role>::namespaced(admin.clone(), "operator")
        .create(
            &PostParams::default(),
            &Role {
                metadata: meta("cm-reader"),
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["configmaps".into()]),
                    verbs: vec!["list".into(), "get".into()],
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), "operator")
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: meta("cm-reader"),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: "cm-reader".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: "imageimport".into(),
                    namespace: Some("operator".into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
    // RBAC is evaluated per request from the informer cache: allow a moment.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match own_cms.list(&ListParams::default()).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => panic!("still denied: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    // Still no secrets, and no configmaps elsewhere.
    let err = Api::<Secret>::all(sa_client.clone())
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err:?}"
    );
    let err = Api::<ConfigMap>::namespaced(sa_client.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err:?}"
    );

    // Who am I, as seen by the API server (SelfSubjectReview).
    let review = Api::<SelfSubjectReview>::all(sa_client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    let user = review.status.and_then(|s| s.user_info).unwrap_or_default();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:operator:imageimport")
    );

    // Impersonation is subject to RBAC too.
    let nobody = server.impersonating_client("nobody", &["some-group"]).await;
    let err = Api::<Secret>::all(nobody)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err:?}"
    );

    // The kubeconfig written for the ServiceAccount authenticates the same way.
    let path = server
        .service_account_kubeconfig("operator", "imageimport")
        .await;
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&path).unwrap(),
        &KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(config.default_namespace, "operator");
    let from_file = kube::Client::try_from(config).unwrap();
    Api::<ConfigMap>::default_namespaced(from_file.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let err = Api::<Secret>::all(from_file)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err:?}"
    );
}
