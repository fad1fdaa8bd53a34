//! `crds/` is generated from the Rust types: this fails when the file is stale.
//! Regenerate with `cargo run -- crd > crds/imageimport.dev_imageimports.yaml`.

#[test]
fn crd_file_is_up_to_date() {
    let on_disk = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/imageimport.dev_imageimports.yaml"
    ))
    .unwrap();
    assert!(
        on_disk == imageimport::api::crd_yaml(),
        "crds/imageimport.dev_imageimports.yaml is stale: run `cargo run -- crd > crds/imageimport.dev_imageimports.yaml`"
    );
}

mod support;

/// The schema as the API server applies it (review F19): `kubectl explain imageimport` prints
/// the kind's own description; `image` bounds and a URL with credentials or that does not parse
/// are refused at apply time; `status.conditions` is a map keyed by `type` (a second condition
/// of one type is refused) whose entries are validated as `metav1.Condition` is (status enum,
/// reason pattern).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_refuses_what_the_review_found_it_accepted() {
    use imageimport::api::ImageImport;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams};
    use serde_json::json;

    let api = support::kube::ApiServer::start();
    api.apply_crd_yaml(&imageimport::api::crd_yaml()).await;
    api.create_namespace("schema").await;
    let client = api.client().await;

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds.get("imageimports.imageimport.dev").await.unwrap();
    let top = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| s.description.clone())
        .unwrap_or_default();
    assert!(top.starts_with("An import of the image(s)"), "{top}");
    assert!(!top.contains("Auto-generated"), "{top}");

    let imports: Api<ImageImport> = Api::namespaced(client.clone(), "schema");
    let manifest = |image: Option<&str>, url: &str| {
        let mut m = json!({
            "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
            "metadata": {"name": "x", "namespace": "schema"},
            "spec": {"source": {"url": {"url": url}},
                     "target": {"repository": "registry.example:5000/shop/x"}}
        });
        if let Some(i) = image {
            m["spec"]["image"] = json!(i);
        }
        m
    };
    let apply = |m: serde_json::Value| {
        let imports = imports.clone();
        async move {
            imports
                .patch("x", &PatchParams::apply("test"), &Patch::Apply(&m))
                .await
        }
    };
    let long = "a".repeat(513);
    for (image, url, says) in [
        (Some(""), "https://a.example/x.tar", "at least 1 chars long"),
        (Some(long.as_str()), "https://a.example/x.tar", "Too long"),
        (None, "https://user:pw@a.example/x.tar", "should match"),
        (None, "https://a.example/%zz.tar", "url must be a valid URL"),
    ] {
        let err = apply(manifest(image, url)).await.unwrap_err().to_string();
        assert!(err.contains(says), "{image:?} {url}: {err}");
    }
    apply(manifest(Some("web:1.4"), "https://a.example/x.tar?sig=a@b"))
        .await
        .unwrap();

    let condition = |type_: &str, status: &str, reason: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": "m",
               "lastTransitionTime": "2026-12-02T06:00:00Z"})
    };
    let write_status = |conditions: Vec<serde_json::Value>| {
        let imports = imports.clone();
        async move {
            let patch = json!({
                "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
                "status": {"conditions": conditions}
            });
            imports
                .patch_status(
                    "x",
                    &PatchParams::apply("test-status").force(),
                    &Patch::Apply(&patch),
                )
                .await
        }
    };
    for (conditions, says) in [
        (
            vec![
                condition("Ready", "True", "Succeeded"),
                condition("Ready", "False", "Failed"),
            ],
            "duplicate entries for key [type=\"Ready\"]",
        ),
        (
            vec![condition("Ready", "Maybe", "Succeeded")],
            "Unsupported value",
        ),
        (
            vec![condition("Ready", "True", "not a reason")],
            "should match",
        ),
        (
            vec![condition("Ready", "True", "")],
            "at least 1 chars long",
        ),
    ] {
        let err = write_status(conditions).await.unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    }
    write_status(vec![
        condition("Ready", "True", "Succeeded"),
        condition("Verified", "Unknown", "Importing"),
    ])
    .await
    .unwrap();
}
