//! The status has two writers, each under its own server-side-apply field manager: the
//! controller (conditions, attempts, digest, images) and the worker's periodic progress (its
//! outcome goes through its termination message, not the status). On the real API server:
//! neither can remove what the other owns, whatever order their writes land in.

mod support;

use imageimport::api::ImageImport;
use imageimport::controller::status::{
    WORKER_PROGRESS_MANAGER, apply_controller_status, apply_status,
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

fn progress(done: u64) -> serde_json::Value {
    json!({ "progress": { "bytesDone": done, "bytesTotal": 100, "phase": "pushing" } })
}

/// The controller's writes never remove the worker's progress, and a progress report landing
/// after the controller's outcome (one that timed out on the client) never removes or
/// changes any of the controller's fields.
#[tokio::test]
async fn the_controller_and_the_worker_keep_their_own_fields() {
    let (_api, imports) = cluster().await;
    create(&imports, "web").await;
    apply_status(&imports, "web", WORKER_PROGRESS_MANAGER, progress(10))
        .await
        .unwrap();
    let mut mine = imports.get_status("web").await.unwrap().status.unwrap();
    mine.observed_generation = Some(1);
    mine.attempts = 1;
    mine.job_name = Some("web-g1-a1".into());
    mine.digest =
        Some("sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into());
    // The controller's copy holds the worker's progress: it is never written by it.
    apply_controller_status(&imports, "web", &mine)
        .await
        .unwrap();
    let st = imports.get_status("web").await.unwrap().status.unwrap();
    assert_eq!(st.progress.as_ref().unwrap().bytes_done, 10);
    // The late one.
    apply_status(&imports, "web", WORKER_PROGRESS_MANAGER, progress(30))
        .await
        .unwrap();
    let st = imports.get_status("web").await.unwrap().status.unwrap();
    assert_eq!(st.attempts, 1);
    assert_eq!(st.job_name.as_deref(), Some("web-g1-a1"));
    assert_eq!(st.digest, mine.digest);
    assert_eq!(st.progress.unwrap().bytes_done, 30);
    // And a controller write without progress leaves the worker's progress in place.
    mine.progress = None;
    mine.attempts = 2;
    apply_controller_status(&imports, "web", &mine)
        .await
        .unwrap();
    let st = imports.get_status("web").await.unwrap().status.unwrap();
    assert_eq!((st.attempts, st.progress.unwrap().bytes_done), (2, 30));
}

/// `status.upload`: the controller's `url` and the upload service's `offset`/`length` (its own
/// field manager) survive each other's writes, in any order, also a controller write made from
/// a copy that holds the service's fields or no `upload` at all.
#[tokio::test]
async fn the_controller_and_the_upload_service_keep_their_own_upload_fields() {
    use imageimport::api::UploadStatus;
    use imageimport::upload::report::MANAGER;
    let (_api, imports) = cluster().await;
    create(&imports, "up").await;
    let service = |offset: u64| {
        json!({"upload": {"generation": 1, "offset": offset, "length": 100,
                          "expiresAt": "2030-01-01T00:00:00Z"}})
    };
    apply_status(&imports, "up", MANAGER, service(0))
        .await
        .unwrap();
    let mut mine = imports.get_status("up").await.unwrap().status.unwrap();
    mine.observed_generation = Some(1);
    mine.upload.get_or_insert_default().url = Some("https://up.test/uploads/shop/up".into());
    // Its copy holds the service's fields (offset 0): they are not its to write.
    apply_controller_status(&imports, "up", &mine)
        .await
        .unwrap();
    apply_status(&imports, "up", MANAGER, service(60))
        .await
        .unwrap();
    apply_controller_status(&imports, "up", &mine)
        .await
        .unwrap();
    let up = imports
        .get_status("up")
        .await
        .unwrap()
        .status
        .unwrap()
        .upload;
    assert_eq!(
        up,
        Some(UploadStatus {
            url: Some("https://up.test/uploads/shop/up".into()),
            generation: Some(1),
            offset: Some(60),
            length: Some(100),
            expires_at: up.as_ref().unwrap().expires_at.clone(),
        })
    );
    // Without `upload` in the controller's write: its url goes, the service's fields stay.
    mine.upload = None;
    apply_controller_status(&imports, "up", &mine)
        .await
        .unwrap();
    let up = imports
        .get_status("up")
        .await
        .unwrap()
        .status
        .unwrap()
        .upload
        .unwrap();
    assert_eq!((up.url, up.offset, up.length), (None, Some(60), Some(100)));
}
