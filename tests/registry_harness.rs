//! Self-tests of the registry harness (tests/support/registry.rs): real `docker-registry`
//! processes, verified with the HTTP API, skopeo and (when installed) crane.

mod support;

use std::fs;
use std::io::Write as _;
use std::path::Path;

use support::registry::{self, Registry, crane, sha256_digest, skopeo};

/// A one-layer OCI image layout written by hand.
struct TinyImage {
    layout: tempfile::TempDir,
    tag: String,
    manifest_digest: String,
    config: Vec<u8>,
    config_digest: String,
    layer_digest: String,
    diff_id: String,
}

fn write_blob(layout: &Path, data: &[u8]) -> String {
    let digest = sha256_digest(data);
    let hex = digest.strip_prefix("sha256:").unwrap();
    fs::write(layout.join("blobs/sha256").join(hex), data).unwrap();
    digest
}

fn tiny_oci_layout(tag: &str, content: &str) -> TinyImage {
    let layout = tempfile::tempdir().unwrap();
    let root = layout.path();
    fs::create_dir_all(root.join("blobs/sha256")).unwrap();

    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, "hello.txt", content.as_bytes())
        .unwrap();
    let layer_tar = tar.into_inner().unwrap();
    let diff_id = sha256_digest(&layer_tar);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer_tar).unwrap();
    let layer_gz = gz.finish().unwrap();
    let layer_digest = write_blob(root, &layer_gz);

    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created_by": "registry_harness test" }],
    }))
    .unwrap();
    let config_digest = write_blob(root, &config);

    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer_gz.len(),
        }],
    }))
    .unwrap();
    let manifest_digest = write_blob(root, &manifest);

    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    fs::write(
        root.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();

    TinyImage {
        layout,
        tag: tag.to_string(),
        manifest_digest,
        config,
        config_digest,
        layer_digest,
        diff_id,
    }
}

fn push_tiny(reg: &Registry, reference: &str) -> TinyImage {
    let img = tiny_oci_layout("v1", &format!("hello from {reference}\n"));
    skopeo::push_oci_layout(reg, img.layout.path(), &img.tag, reference);
    img
}

/// Everything an independent client sees must match what was pushed.
fn verify_tiny(reg: &Registry, repo: &str, tag: &str, img: &TinyImage) {
    let reference = format!("{repo}:{tag}");
    assert_eq!(reg.tags(repo), vec![tag.to_string()]);
    // skopeo pushes an OCI layout's manifest verbatim (no conversion needed).
    assert_eq!(
        reg.manifest_digest(repo, tag).as_deref(),
        Some(img.manifest_digest.as_str())
    );
    assert_eq!(
        skopeo::manifest_digest(reg, &reference),
        img.manifest_digest
    );
    assert_eq!(
        skopeo::inspect_raw(reg, &reference)["layers"][0]["digest"],
        img.layer_digest.as_str()
    );
    let (config, config_digest) = skopeo::config(reg, &reference);
    assert_eq!(config_digest, img.config_digest);
    assert_eq!(config, img.config);
    assert!(reg.blob_exists(repo, &img.layer_digest));
    assert_eq!(
        reg.blob(repo, &img.config_digest).as_deref(),
        Some(img.config.as_slice())
    );

    assert_eq!(
        skopeo::pull_diff_ids(reg, &reference),
        vec![img.diff_id.clone()]
    );
    let pulled = skopeo::pull(reg, &reference);
    assert_eq!(pulled.config_diff_ids(), pulled.diff_ids());
    assert_eq!(pulled.layers[0].compression, registry::Compression::Gzip);
    assert_eq!(sha256_digest(&pulled.manifest_bytes), img.manifest_digest);

    if let Some(digest) = crane::digest(reg, &reference) {
        assert_eq!(digest, img.manifest_digest);
        assert_eq!(crane::config(reg, &reference).unwrap(), img.config);
    }
}

#[test]
fn plain_registry_starts_and_answers() {
    let reg = Registry::plain();
    assert!(reg.host.starts_with("127.0.0.1:"));
    assert!(!reg.tls && reg.ca_file.is_none() && reg.auth_file.is_none());
    let resp = reg.get_anonymous("/v2/");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("Docker-Distribution-Api-Version"),
        Some("registry/2.0")
    );
    assert!(reg.tags("does/not-exist").is_empty());
    assert_eq!(reg.manifest_digest("does/not-exist", "latest"), None);
    assert!(reg.catalog().is_empty());
    assert!(reg.storage_dir().is_dir());
}

#[test]
fn tls_htpasswd_registry_requires_credentials() {
    let reg = Registry::tls_htpasswd();
    assert!(reg.tls);
    let anonymous = reg.get_anonymous("/v2/");
    assert_eq!(anonymous.status, 401);
    assert!(
        anonymous
            .header("WWW-Authenticate")
            .is_some_and(|h| h.starts_with("Basic")),
        "{:?}",
        anonymous.headers
    );
    assert_eq!(reg.get("/v2/", None).status, 200);
    assert_eq!(
        reg.get_with_credentials("/v2/", registry::USERNAME, "wrong-password")
            .status,
        401
    );

    // The docker config carries exactly these credentials for this host.
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(reg.auth_file.as_ref().unwrap()).unwrap()).unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD
        .decode(config["auths"][&reg.host]["auth"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(auth).unwrap(),
        format!("{}:{}", registry::USERNAME, reg.password.as_ref().unwrap())
    );
    assert!(reg.cert_dir.as_ref().unwrap().join("ca.crt").is_file());

    // Unknown repos: empty, not an error.
    assert!(reg.tags("nothing/here").is_empty());
    assert_eq!(reg.manifest_digest("nothing/here", "v1"), None);
    assert!(skopeo::try_inspect_raw_bytes(&reg, "nothing/here:v1").is_err());
}

#[test]
fn plain_registry_push_and_verify() {
    let reg = Registry::plain();
    let img = push_tiny(&reg, "tiny/app:v1");
    verify_tiny(&reg, "tiny/app", "v1", &img);
    assert_eq!(reg.catalog(), vec!["tiny/app".to_string()]);
    let requests = reg.requests();
    let skopeo_puts: Vec<_> = requests
        .iter()
        .filter(|r| r.is_client() && r.method == "PUT")
        .collect();
    assert!(
        skopeo_puts
            .iter()
            .any(|r| r.path == "/v2/tiny/app/manifests/v1" && r.status == 201),
        "{requests:#?}"
    );
    assert!(requests.iter().any(|r| !r.is_client()));
}

#[test]
fn tls_htpasswd_registry_push_and_verify() {
    let reg = Registry::tls_htpasswd();
    let img = push_tiny(&reg, "tiny/secure:v1");
    verify_tiny(&reg, "tiny/secure", "v1", &img);

    // Deleting by digest removes the tag.
    assert!(reg.delete_manifest("tiny/secure", &img.manifest_digest));
    assert!(reg.tags("tiny/secure").is_empty());
    assert_eq!(reg.manifest_digest("tiny/secure", "v1"), None);
}

#[test]
fn stop_and_restart_keep_port_and_image() {
    let mut reg = Registry::tls_htpasswd();
    let img = push_tiny(&reg, "tiny/persist:v1");
    let host = reg.host.clone();

    reg.stop();
    assert!(!reg.is_running());
    assert!(reg.try_request("GET", "/v2/", None, true).is_err());
    assert!(skopeo::try_inspect_raw_bytes(&reg, "tiny/persist:v1").is_err());

    reg.restart();
    assert!(reg.is_running());
    assert_eq!(reg.host, host);
    verify_tiny(&reg, "tiny/persist", "v1", &img);
}

#[test]
fn suspended_registry_hangs_then_recovers() {
    use std::io::Read as _;
    use std::time::Duration;

    let reg = Registry::plain();
    reg.suspend();
    // The kernel still accepts the connection, but no answer arrives.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", reg.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    stream.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").unwrap();
    let mut buf = [0u8; 16];
    let read = stream.read(&mut buf);
    assert!(read.is_err(), "suspended registry answered: {read:?}");
    reg.resume();
    assert_eq!(reg.get("/v2/", None).status, 200);
}
