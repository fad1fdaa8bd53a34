//! The status has three writers, each under its own server-side-apply field manager: the
//! controller (conditions, attempts, digest), the worker's result, and the worker's periodic
//! progress. On the real API server: none of them can remove what another one owns, whatever
//! order their writes land in (a progress report that timed out on the client may land after
//! the result).

mod support;

use imageimport::api::ImageImport;
use imageimport::controller::status::{
    WORKER_MANAGER, WORKER_PROGRESS_MANAGER, apply_controller_status, apply_status,
};
use kube::api::{Api, PostParams};
use serde_json::json;
use support::kube::ApiServer;

async fn cluster() -> (ApiServer, Api<ImageImport>) {
    let api = ApiServer::start();
    api.apply_crd_yaml(&imageimport::api::crd_yaml()).await;
    api.create_namespace("shop").await;
    let imports = Api::namespaced(api.client().await, "shop");
    (api, imports)
}

async fn create(imports: &Api<ImageImport>, name: &str) {
    let obj: ImageImport = serde_json::from_value(json!({
        "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
        "metadata": {"name": name},
        "spec": {
            "source": {"url": {"url": "https://example.test/a.tar"}},
            "target": {"repository": "registry.test/shop/web", "tags": ["1"]}
        }
    }))
    .unwrap();
    imports.create(&PostParams::default(), &obj).await.unwrap();
}

fn result(job: &str) -> serde_json::Value {
    json!({ "result": {
        "generation": 1, "jobName": job, "succeeded": true,
        "digest": "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    }})
}

fn progress(done: u64) -> serde_json::Value {
    json!({ "progress": { "bytesDone": done, "bytesTotal": 100, "phase": "pushing" } })
}

#[tokio::test]
async fn a_late_progress_report_never_removes_the_result() {
    let (_api, imports) = cluster().await;
    create(&imports, "web").await;
    apply_status(&imports, "web", WORKER_PROGRESS_MANAGER, progress(10))
        .await
        .unwrap();
    apply_status(&imports, "web", WORKER_MANAGER, result("web-g1-a1"))
        .await
        .unwrap();
    // The late one.
    apply_status(&imports, "web", WORKER_PROGRESS_MANAGER, progress(20))
        .await
        .unwrap();
    let st = imports.get_status("web").await.unwrap().status.unwrap();
    assert_eq!(st.result.expect("result kept").job_name, "web-g1-a1");
    assert_eq!(st.progress.unwrap().bytes_done, 20);

    // Why two managers: under one, an apply owns exactly what it sends, so a progress-only
    // apply after the result removes the result. (This is what the design avoids.)
    create(&imports, "one-manager").await;
    apply_status(&imports, "one-manager", WORKER_MANAGER, result("x-g1-a1"))
        .await
        .unwrap();
    apply_status(&imports, "one-manager", WORKER_MANAGER, progress(20))
        .await
        .unwrap();
    let st = imports.get_status("one-manager").await.unwrap().status;
    assert!(st.unwrap().result.is_none(), "one manager loses the result");
}

#[tokio::test]
async fn the_controller_and_the_worker_keep_their_own_fields() {
    let (_api, imports) = cluster().await;
    create(&imports, "web").await;
    apply_status(&imports, "web", WORKER_MANAGER, result("web-g1-a1"))
        .await
        .unwrap();
    let mut mine = imports.get_status("web").await.unwrap().status.unwrap();
    mine.observed_generation = Some(1);
    mine.attempts = 1;
    mine.job_name = Some("web-g1-a1".into());
    // The controller's copy may hold stale worker fields: they are never written by it.
    mine.result = None;
    apply_controller_status(&imports, "web", &mine)
        .await
        .unwrap();
    apply_status(&imports, "web", WORKER_PROGRESS_MANAGER, progress(30))
        .await
        .unwrap();
    let st = imports.get_status("web").await.unwrap().status.unwrap();
    assert_eq!(st.attempts, 1);
    assert_eq!(st.job_name.as_deref(), Some("web-g1-a1"));
    assert_eq!(st.result.expect("result kept").job_name, "web-g1-a1");
    assert_eq!(st.progress.unwrap().bytes_done, 30);
}
