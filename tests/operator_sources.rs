//! The operator end to end for the source, target and selection options of the spec: a TLS
//! registry with htpasswd credentials (`target.credentialsSecretRef`, `target.caBundleRef`),
//! URL sources with a Bearer token (`url.secretRef`) over HTTP and HTTPS (`url.caBundleRef`),
//! the pins (`source.sha256`, `verify.imageID`), and the selections (`image`, `platform`,
//! `layerCompression`).
//!
//! As in `tests/operator.rs`: a real kube-apiserver + etcd, the controller binary, a real
//! registry; the test plays the node for each worker Job (`Cluster::run_job` lays out the
//! Secret and ConfigMap volumes from the objects in the API server) and checks the result
//! with skopeo and on the ImageImport's status.
//!
//! The HTTPS archive server is `openssl s_server` in stdio mode: it terminates TLS with a
//! certificate signed by a CA generated here, and the test reads the decrypted request and
//! writes the answer itself, so the Bearer token is checked over HTTPS as well.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use imageimport::api::{ImageImport, ImageImportStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;
use support::archives::{self, Comp, Format, ImageSpec, MT_OCI_LAYER_GZIP, MT_OCI_LAYER_ZSTD};
use support::cluster::*;
use support::registry::{Registry, sha256_digest, skopeo};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A Secret in the test namespace; `string_data` as `kubectl create secret` would send it.
async fn create_secret(c: &Cluster, name: &str, type_: Option<&str>, string_data: &[(&str, &str)]) {
    let data: BTreeMap<&str, &str> = string_data.iter().copied().collect();
    let mut s = json!({"metadata": {"name": name, "namespace": NS}, "stringData": data});
    if let Some(t) = type_ {
        s["type"] = json!(t);
    }
    let secret: Secret = serde_json::from_value(s).unwrap();
    Api::<Secret>::namespaced(c.client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("create Secret {name}: {e}"));
}

async fn create_config_map(c: &Cluster, name: &str, data: &[(&str, &str)]) {
    let data: BTreeMap<&str, &str> = data.iter().copied().collect();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": NS}, "data": data}))
            .unwrap();
    Api::<ConfigMap>::namespaced(c.client.clone(), NS)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap_or_else(|e| panic!("create ConfigMap {name}: {e}"));
}

/// A docker `config.json` with credentials for `host`.
fn docker_config(host: &str, user: &str, password: &str) -> String {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    json!({"auths": {host: {"auth": auth}}}).to_string()
}

/// A claim's local folder holding `bytes` at `web/web-1.4.tar` (the path `pvc_import` names).
fn claim_dir(c: &Cluster, claim: &str, bytes: &[u8]) -> PathBuf {
    let dir = c.work.path().join(format!("claim-{claim}"));
    std::fs::create_dir_all(dir.join("web")).unwrap();
    std::fs::write(dir.join("web/web-1.4.tar"), bytes).unwrap();
    dir
}

/// A URL-source ImageImport to a plain-HTTP registry.
fn url_import(name: &str, url: &str, repo: &str) -> serde_json::Value {
    json!({
        "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"source": {"url": {"url": url}}, "target": {"repository": repo, "insecure": true}}
    })
}

fn condition(st: &ImageImportStatus, type_: &str) -> (String, String) {
    st.conditions
        .iter()
        .find(|x| x.type_ == type_)
        .map(|x| (x.status.clone(), x.reason.clone()))
        .unwrap_or_else(|| panic!("no {type_} condition: {:?}", st.conditions))
}

/// Play the node for `name`'s Job: it must exit 0 and the ImageImport become Ready.
async fn import_ok(c: &Cluster, name: &str, claims: &BTreeMap<&str, &Path>) -> ImageImportStatus {
    let job = c.wait_job(name).await;
    assert_eq!(
        c.run_job(&job, claims).await,
        0,
        "{name}: worker exit status"
    );
    let obj = c.wait_ready(name, "True", Some("Succeeded")).await;
    let st = obj.status.unwrap();
    assert_eq!(st.attempts, 1, "{name}");
    for t in ["SourceReady", "Verified"] {
        assert_eq!(condition(&st, t).0, "True", "{name}: {t}");
    }
    st
}

/// Play the node for `name`'s Job: it must exit 1 (a permanent failure) and the ImageImport
/// become Ready=False with `reason`, not to be retried. Returns the Ready message.
async fn import_fails(
    c: &Cluster,
    name: &str,
    claims: &BTreeMap<&str, &Path>,
    reason: &str,
) -> (ImageImport, String) {
    let job = c.wait_job(name).await;
    assert_eq!(
        c.run_job(&job, claims).await,
        1,
        "{name}: worker exit status"
    );
    let obj = c.wait_ready(name, "False", Some(reason)).await;
    let (_, _, msg) = ready(&obj).unwrap();
    assert!(msg.contains("not retried"), "{name}: {msg}");
    let st = obj.status.clone().unwrap();
    assert_eq!(
        condition(&st, "Stalled"),
        ("True".to_string(), reason.to_string()),
        "{name}: failed for good"
    );
    assert_eq!(st.next_attempt_after, None, "{name}: no next attempt");
    assert_eq!(
        condition(&st, "Importing"),
        ("False".to_string(), reason.to_string()),
        "{name}: not Retrying"
    );
    assert!(
        st.digest.is_none() && st.images.is_empty(),
        "{name}: {st:?}"
    );
    (obj, msg)
}

/// After a moment, each of `names` still has its one Job: permanent failures are not retried.
async fn assert_single_attempt(c: &Cluster, names: &[&str]) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in names {
        assert_eq!(c.jobs_for(name).await.len(), 1, "{name} was retried");
        let st = c.imports().get(name).await.unwrap().status.unwrap();
        assert_eq!(st.attempts, 1, "{name}");
    }
}

/// Layer media types of the image manifest at `reference` (skopeo inspect --raw).
fn layer_media_types(reg: &Registry, reference: &str) -> Vec<String> {
    let m = skopeo::inspect_raw(reg, reference);
    assert!(m.get("manifests").is_none(), "an image manifest: {m}");
    m["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_string())
        .collect()
}

// --- The archive publisher: checks `Authorization: Bearer <token>` -------------------------

/// What the archive server saw of the one request it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    path: String,
    authorization: Option<String>,
    /// Answered with the archive (else 401 or 404).
    served: bool,
}

/// Reads one request, answers it: the archive at `path` to `Bearer <token>`, 401 without
/// (or with another) token, 404 for another path.
fn answer(
    reader: &mut impl BufRead,
    writer: &mut impl Write,
    path: &str,
    body: &[u8],
    token: &str,
) -> Seen {
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case("authorization")
        {
            authorization = Some(v.trim().to_string());
        }
    }
    let asked = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let authorized = authorization.as_deref() == Some(format!("Bearer {token}").as_str());
    let served = asked == path && authorized;
    let _ = if served {
        write!(
            writer,
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .and_then(|_| writer.write_all(body))
    } else if !authorized {
        write!(
            writer,
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"archives\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    } else {
        write!(
            writer,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    let _ = writer.flush();
    Seen {
        path: asked,
        authorization,
        served,
    }
}

/// Serves one request on `http://127.0.0.1:PORT` (see [`answer`]).
fn serve_http_once(path: &str, body: Vec<u8>, token: &str) -> (String, JoinHandle<Seen>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap());
    let (path, token) = (path.to_string(), token.to_string());
    let handle = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut writer = s;
        answer(&mut reader, &mut writer, &path, &body, &token)
    });
    (url, handle)
}

/// The request a server answered; panics if none came within a minute.
fn seen(handle: JoinHandle<Seen>) -> Seen {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !handle.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the archive server got no request"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    handle.join().unwrap()
}

/// Whether something listens on 127.0.0.1:`port` (Linux /proc).
fn listening(port: u16) -> bool {
    let wanted = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[1] == wanted && cols[3] == "0A"
        })
}

/// One HTTPS request served by `openssl s_server` (stdio mode, one connection), answered by
/// [`answer`]. Killed on drop.
struct HttpsOnce {
    url: String,
    child: Child,
    handle: Option<JoinHandle<Seen>>,
}

impl HttpsOnce {
    fn start(cert: &Path, key: &Path, path: &str, body: Vec<u8>, token: &str) -> HttpsOnce {
        let port = free_port();
        let mut child = Command::new("openssl")
            .args(["s_server", "-quiet", "-naccept", "1", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run openssl s_server (the openssl command-line tool)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !listening(port) {
            assert!(
                child.try_wait().unwrap().is_none(),
                "openssl s_server exited"
            );
            assert!(
                Instant::now() < deadline,
                "openssl s_server does not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (p, token) = (path.to_string(), token.to_string());
        // Closing stdin after the answer makes s_server close the connection and exit.
        let handle = std::thread::spawn(move || answer(&mut stdout, &mut stdin, &p, &body, &token));
        HttpsOnce {
            url: format!("https://127.0.0.1:{port}{path}"),
            child,
            handle: Some(handle),
        }
    }

    fn seen(&mut self) -> Seen {
        seen(self.handle.take().unwrap())
    }
}

impl Drop for HttpsOnce {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// 1. A TLS registry with htpasswd credentials
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_with_credentials_secret_and_ca_bundle() {
    let c = Cluster::start().await;
    let reg = Registry::tls_htpasswd();
    let ca_pem = std::fs::read_to_string(reg.ca_file.as_ref().unwrap()).unwrap();
    let (user, password) = (reg.username.clone().unwrap(), reg.password.clone().unwrap());
    create_secret(
        &c,
        "regcred",
        Some("kubernetes.io/dockerconfigjson"),
        &[(
            ".dockerconfigjson",
            &docker_config(&reg.host, &user, &password),
        )],
    )
    .await;
    create_secret(
        &c,
        "badcred",
        Some("kubernetes.io/dockerconfigjson"),
        &[(
            ".dockerconfigjson",
            &docker_config(&reg.host, &user, "not-the-password"),
        )],
    )
    .await;
    // A key other than the file name the worker reads (`ca.crt`): the Job maps it.
    create_config_map(&c, "registry-ca", &[("private-ca.pem", &ca_pem)]).await;

    let (dir, built) = archive_dir(&c, "d", ImageSpec::new(&["web:1.4"], layers(5100)));
    c.claim("d").await;
    let claims = BTreeMap::from([("d", dir.as_path())]);
    let secure = |name: &str, repo: &str, cred: &str, ca: bool| {
        let mut m = pvc_import(name, "d", &reg.reference(repo), &["1"]);
        m["spec"]["target"]["insecure"] = json!(false);
        m["spec"]["target"]["credentialsSecretRef"] = json!({"name": cred});
        if ca {
            m["spec"]["target"]["caBundleRef"] =
                json!({"name": "registry-ca", "key": "private-ca.pem"});
        }
        m
    };

    // Credentials and CA: imported.
    c.apply(secure("secure", "secure/web", "regcred", true))
        .await;
    let job = c.wait_job("secure").await;
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let volumes = pod.volumes.as_ref().unwrap();
    assert!(
        volumes.iter().any(|v| v
            .secret
            .as_ref()
            .is_some_and(|s| s.secret_name.as_deref() == Some("regcred"))),
        "{volumes:?}"
    );
    assert!(
        volumes.iter().any(|v| v
            .config_map
            .as_ref()
            .is_some_and(|cm| cm.name == "registry-ca"
                && cm
                    .items
                    .as_ref()
                    .is_some_and(|i| i.len() == 1 && i[0].key == "private-ca.pem"))),
        "{volumes:?}"
    );
    let st = import_ok(&c, "secure", &claims).await;
    let digest = skopeo::manifest_digest(&reg, "secure/web:1");
    assert_eq!(st.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(
        st.image_id.as_deref(),
        Some(built.images[0].config_digest.as_str())
    );
    assert_eq!(st.images.len(), 1);
    assert_eq!(st.images[0].refs, vec![reg.reference("secure/web:1")]);
    assert_eq!(st.images[0].digest, digest);
    assert_eq!(
        skopeo::pull_diff_ids(&reg, "secure/web:1"),
        built.images[0].diff_ids
    );
    // The credentials were needed: the registry refuses an anonymous client.
    assert_eq!(reg.get_anonymous("/v2/secure/web/tags/list").status, 401);

    // Credentials without the CA: the certificate is not trusted; permanent, nothing tagged.
    c.apply(secure("noca", "secure/noca", "regcred", false))
        .await;
    let (_, msg) = import_fails(&c, "noca", &claims, "UntrustedCertificate").await;
    assert!(
        msg.contains("not trusted") && msg.contains("caBundleRef"),
        "says what to do: {msg}"
    );
    assert!(reg.tags("secure/noca").is_empty());

    // The CA with wrong credentials: refused, permanent, nothing tagged.
    c.apply(secure("badcred", "secure/bad", "badcred", true))
        .await;
    let (_, msg) = import_fails(&c, "badcred", &claims, "Unauthorized").await;
    assert!(msg.contains("refused the credentials"), "{msg}");
    assert!(
        !msg.contains("not-the-password"),
        "no secret in the status: {msg}"
    );
    assert!(reg.tags("secure/bad").is_empty());

    assert_single_attempt(&c, &["noca", "badcred"]).await;
    assert_eq!(reg.tags("secure/web"), vec!["1".to_string()]);
}

// ---------------------------------------------------------------------------
// 2. URL sources with a Bearer token, over HTTP and HTTPS
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_sources_with_a_token_secret_over_http_and_https() {
    let c = Cluster::start().await;
    let reg = Registry::plain();
    let token = "t0ken-5ecret";
    // As `kubectl create secret generic --from-file=token` leaves it: with a newline.
    create_secret(
        &c,
        "archive-token",
        None,
        &[("token", &format!("{token}\n"))],
    )
    .await;
    create_secret(&c, "wrong-token", None, &[("token", "expired-token")]).await;
    let no_claims = BTreeMap::new();

    // HTTP with the token: imported, and the server saw exactly the token.
    let built = archives::build(
        &Format::Docker25Oci,
        &[ImageSpec::new(&["api:2"], layers(5200))],
    );
    let gz = archives::compress_whole(&built.bytes, Comp::Gzip);
    let (url, server) = serve_http_once("/artifacts/api-2.tar.gz", gz.clone(), token);
    let mut m = url_import("tok", &url, &reg.reference("shop/api"));
    m["spec"]["source"]["url"]["secretRef"] = json!({"name": "archive-token"});
    c.apply(m).await;
    let st = import_ok(&c, "tok", &no_claims).await;
    let s = seen(server);
    assert_eq!(
        s.authorization.as_deref(),
        Some(format!("Bearer {token}").as_str())
    );
    assert!(s.served, "{s:?}");
    assert_eq!(
        st.digest.unwrap(),
        skopeo::manifest_digest(&reg, "shop/api:2")
    );
    assert_eq!(
        st.image_id.as_deref(),
        Some(built.images[0].config_digest.as_str())
    );

    // The server refuses another token: HTTP 401, permanent, nothing tagged.
    let (url, server) = serve_http_once("/artifacts/api-2.tar.gz", gz, token);
    let url = format!("{url}?X-Amz-Signature=query-s3cret");
    let mut m = url_import("badtok", &url, &reg.reference("shop/badtok"));
    m["spec"]["source"]["url"]["secretRef"] = json!({"name": "wrong-token"});
    c.apply(m).await;
    let (obj, msg) = import_fails(&c, "badtok", &no_claims, "SourceUnavailable").await;
    assert!(msg.contains("401"), "{msg}");
    assert!(
        !msg.contains("expired-token") && !msg.contains("query-s3cret"),
        "no token, no query string in the status: {msg}"
    );
    assert_eq!(
        condition(obj.status.as_ref().unwrap(), "SourceReady"),
        ("False".to_string(), "SourceUnavailable".to_string())
    );
    let s = seen(server);
    assert_eq!(s.authorization.as_deref(), Some("Bearer expired-token"));
    assert!(!s.served);
    assert!(reg.tags("shop/badtok").is_empty());

    // HTTPS from a server whose certificate a private CA signed: the CA from a ConfigMap,
    // the token checked over TLS too.
    let tls_dir = c.work.path().join("archive-server-tls");
    let tls = support::registry::generate_tls(&tls_dir);
    let (ca_pem, cert, key) = (
        String::from_utf8(tls.ca_pem).unwrap(),
        tls.cert_file,
        tls.key_file,
    );
    create_config_map(&c, "archive-ca", &[("bundle.pem", &ca_pem)]).await;
    let built = archives::build(
        &Format::OciArchive {
            layer_compression: Comp::Gzip,
        },
        &[ImageSpec::new(&["cli:3"], layers(5300))],
    );
    let mut server = HttpsOnce::start(
        &cert,
        &key,
        "/artifacts/cli-3.tar",
        built.bytes.clone(),
        token,
    );
    let mut m = url_import("https", &server.url, &reg.reference("shop/cli"));
    m["spec"]["source"]["url"]["secretRef"] = json!({"name": "archive-token"});
    m["spec"]["source"]["url"]["caBundleRef"] = json!({"name": "archive-ca", "key": "bundle.pem"});
    c.apply(m).await;
    let job = c.wait_job("https").await;
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert!(
        pod.volumes.as_ref().unwrap().iter().any(|v| v
            .config_map
            .as_ref()
            .is_some_and(|cm| cm.name == "archive-ca")),
        "{:?}",
        pod.volumes
    );
    let st = import_ok(&c, "https", &no_claims).await;
    let s = server.seen();
    assert_eq!(
        s,
        Seen {
            path: "/artifacts/cli-3.tar".into(),
            authorization: Some(format!("Bearer {token}")),
            served: true
        }
    );
    let digest = skopeo::manifest_digest(&reg, "shop/cli:3");
    assert_eq!(st.digest.as_deref(), Some(digest.as_str()));
    // An OCI archive with gzip layers, no compression asked: the archive's manifest as is.
    assert_eq!(Some(digest), built.images[0].manifest_digest);
    assert_eq!(
        skopeo::pull_diff_ids(&reg, "shop/cli:3"),
        built.images[0].diff_ids
    );
    drop(server);

    // The same server without the CA: no download; Ready=False naming the certificate.
    let mut server = HttpsOnce::start(&cert, &key, "/artifacts/cli-3.tar", built.bytes, token);
    let url = format!("{}?X-Amz-Signature=query-s3cret", server.url);
    let mut m = url_import("https-noca", &url, &reg.reference("shop/cli-noca"));
    m["spec"]["source"]["url"]["secretRef"] = json!({"name": "archive-token"});
    c.apply(m).await;
    // Permanent, as for a registry: retrying cannot make the certificate trusted.
    let (_, msg) = import_fails(&c, "https-noca", &no_claims, "UntrustedCertificate").await;
    assert!(
        msg.contains("certificate") && msg.contains("caBundleRef") && !msg.contains("query-s3cret"),
        "names the certificate and the fix, not the query string: {msg}"
    );
    assert!(reg.tags("shop/cli-noca").is_empty());
    // The handshake failed: no request, the token was never sent (s_server gave up on its
    // one connection).
    let s = server.seen();
    assert_eq!((s.path.as_str(), s.authorization), ("", None));
    drop(server);

    assert_single_attempt(&c, &["badtok", "https-noca"]).await;
}

// ---------------------------------------------------------------------------
// 3. Pins: source.sha256 and verify.imageID
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_and_image_id_pins() {
    let c = Cluster::start().await;
    let reg = Registry::plain();
    let (dir, built) = archive_dir(&c, "d", ImageSpec::new(&["web:1.4"], layers(5400)));
    c.claim("d").await;
    let claims = BTreeMap::from([("d", dir.as_path())]);
    let archive_sha = sha256_digest(&built.bytes);
    let other_sha = sha256_digest(b"another archive");
    let image_id = built.images[0].config_digest.clone();
    let other_id = sha256_digest(b"another config");
    let pinned = |name: &str, repo: &str, sha: Option<&str>, id: Option<&str>| {
        let mut m = pvc_import(name, "d", &reg.reference(repo), &["1"]);
        if let Some(sha) = sha {
            m["spec"]["source"]["sha256"] = json!(sha);
        }
        if let Some(id) = id {
            m["spec"]["verify"] = json!({"imageID": id});
        }
        m
    };

    // The right archive digest (bare hex): imported.
    let hex = archive_sha.strip_prefix("sha256:").unwrap();
    c.apply(pinned("sha-ok", "pin/sha-ok", Some(hex), None))
        .await;
    let st = import_ok(&c, "sha-ok", &claims).await;
    assert_eq!(
        st.digest.unwrap(),
        skopeo::manifest_digest(&reg, "pin/sha-ok:1")
    );

    // Another digest: VerificationFailed, nothing tagged.
    c.apply(pinned("sha-bad", "pin/sha-bad", Some(&other_sha), None))
        .await;
    let (obj, msg) = import_fails(&c, "sha-bad", &claims, "VerificationFailed").await;
    assert!(
        msg.contains(&other_sha) && msg.contains(&archive_sha),
        "names both digests: {msg}"
    );
    assert_eq!(
        condition(obj.status.as_ref().unwrap(), "Verified"),
        ("False".to_string(), "VerificationFailed".to_string())
    );
    assert!(reg.tags("pin/sha-bad").is_empty());

    // The right image ID: imported (and reported).
    c.apply(pinned("id-ok", "pin/id-ok", None, Some(&image_id)))
        .await;
    let st = import_ok(&c, "id-ok", &claims).await;
    assert_eq!(st.image_id.as_deref(), Some(image_id.as_str()));
    assert_eq!(skopeo::config(&reg, "pin/id-ok:1").1, image_id);

    // Another image ID: VerificationFailed, nothing tagged.
    c.apply(pinned("id-bad", "pin/id-bad", None, Some(&other_id)))
        .await;
    let (obj, msg) = import_fails(&c, "id-bad", &claims, "VerificationFailed").await;
    assert!(msg.contains(&other_id) && msg.contains(&image_id), "{msg}");
    assert_eq!(
        condition(obj.status.as_ref().unwrap(), "Verified"),
        ("False".to_string(), "VerificationFailed".to_string())
    );
    assert!(reg.tags("pin/id-bad").is_empty());

    // A streamed (URL) source is hashed as it is read, after its blobs went up: a wrong pin
    // must still leave nothing tagged; the right one (`sha256:` form) imports.
    let gz = archives::compress_whole(&built.bytes, Comp::Gzip);
    let gz_sha = sha256_digest(&gz);
    let (url, server) = serve_http_once("/web.tar.gz", gz.clone(), "t");
    create_secret(&c, "t", None, &[("token", "t")]).await;
    let mut m = url_import("url-sha-bad", &url, &reg.reference("pin/url-bad"));
    m["spec"]["source"]["url"]["secretRef"] = json!({"name": "t"});
    m["spec"]["source"]["sha256"] = json!(other_sha);
    c.apply(m).await;
    let (_, msg) = import_fails(&c, "url-sha-bad", &BTreeMap::new(), "VerificationFailed").await;
    assert!(seen(server).served);
    assert!(
        msg.contains(&gz_sha),
        "the digest of the bytes served: {msg}"
    );
    assert!(reg.tags("pin/url-bad").is_empty());

    let (url, server) = serve_http_once("/web.tar.gz", gz, "t");
    let mut m = url_import("url-sha-ok", &url, &reg.reference("pin/url-ok"));
    m["spec"]["source"]["url"]["secretRef"] = json!({"name": "t"});
    m["spec"]["source"]["sha256"] = json!(gz_sha);
    c.apply(m).await;
    let st = import_ok(&c, "url-sha-ok", &BTreeMap::new()).await;
    assert!(seen(server).served);
    assert_eq!(
        st.digest.unwrap(),
        skopeo::manifest_digest(&reg, "pin/url-ok:1.4")
    );

    assert_single_attempt(&c, &["sha-bad", "id-bad", "url-sha-bad"]).await;
}

// ---------------------------------------------------------------------------
// 4. Selections: image, platform, layerCompression
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_platform_and_layer_compression_select_what_is_pushed() {
    let c = Cluster::start().await;
    let reg = Registry::plain();

    // A two-image archive: `image` by saved tag (the tag pushed is the saved one), and by ID.
    let two = archives::build(
        &Format::DockerLegacy,
        &[
            ImageSpec::new(&["web:1.4"], layers(5500)),
            ImageSpec::new(&["api:2"], layers(5600)),
        ],
    );
    let (web, api) = (&two.images[0], &two.images[1]);
    let dir_two = claim_dir(&c, "two", &two.bytes);
    c.claim("two").await;
    let claims = BTreeMap::from([("two", dir_two.as_path())]);
    let mut m = pvc_import("by-tag", "two", &reg.reference("sel/api"), &[]);
    m["spec"]["image"] = json!("api:2");
    c.apply(m).await;
    let st = import_ok(&c, "by-tag", &claims).await;
    assert_eq!(reg.tags("sel/api"), vec!["2".to_string()]);
    assert_eq!(st.image_id.as_deref(), Some(api.config_digest.as_str()));
    assert_eq!(
        st.digest.unwrap(),
        skopeo::manifest_digest(&reg, "sel/api:2")
    );
    assert_eq!(skopeo::config(&reg, "sel/api:2").1, api.config_digest);
    assert_eq!(skopeo::pull_diff_ids(&reg, "sel/api:2"), api.diff_ids);

    let mut m = pvc_import("by-id", "two", &reg.reference("sel/web"), &["picked"]);
    m["spec"]["image"] = json!(web.config_digest);
    c.apply(m).await;
    let st = import_ok(&c, "by-id", &claims).await;
    assert_eq!(reg.tags("sel/web"), vec!["picked".to_string()]);
    assert_eq!(st.image_id.as_deref(), Some(web.config_digest.as_str()));
    assert_eq!(skopeo::config(&reg, "sel/web:picked").1, web.config_digest);

    // A multi-platform (containerd) archive: `platform` pushes that platform's image alone.
    let multi = archives::build(
        &Format::ContainerdMultiPlatform {
            present: vec![
                ("linux".into(), "amd64".into()),
                ("linux".into(), "arm64".into()),
            ],
        },
        &[
            ImageSpec::new(&["multi:3"], layers(5700)).platform("linux", "amd64"),
            ImageSpec::new(&["multi:3"], layers(5800)).platform("linux", "arm64"),
        ],
    );
    let arm = &multi.images[1];
    assert_ne!(arm.config_digest, multi.images[0].config_digest);
    let dir_multi = claim_dir(&c, "multi", &multi.bytes);
    c.claim("multi").await;
    let claims = BTreeMap::from([("multi", dir_multi.as_path())]);
    let mut m = pvc_import("arm", "multi", &reg.reference("sel/multi"), &["arm"]);
    m["spec"]["platform"] = json!("linux/arm64");
    c.apply(m).await;
    let st = import_ok(&c, "arm", &claims).await;
    assert_eq!(st.image_id.as_deref(), Some(arm.config_digest.as_str()));
    let digest = skopeo::manifest_digest(&reg, "sel/multi:arm");
    assert_eq!(st.digest.as_deref(), Some(digest.as_str()));
    // That platform's own manifest (layers as stored), not the index.
    assert_eq!(Some(digest), arm.manifest_digest);
    assert_eq!(
        layer_media_types(&reg, "sel/multi:arm"),
        vec![MT_OCI_LAYER_GZIP; arm.diff_ids.len()]
    );
    let (config, config_digest) = skopeo::config(&reg, "sel/multi:arm");
    assert_eq!(config_digest, arm.config_digest);
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["architecture"], "arm64");

    // layerCompression zstd: every layer re-encoded, with the zstd OCI media type.
    let (dir, built) = archive_dir(&c, "plain", ImageSpec::new(&["web:1.4"], layers(5900)));
    c.claim("plain").await;
    let claims = BTreeMap::from([("plain", dir.as_path())]);
    let mut m = pvc_import("zstd", "plain", &reg.reference("sel/zstd"), &["1"]);
    m["spec"]["layerCompression"] = json!("zstd");
    c.apply(m).await;
    let st = import_ok(&c, "zstd", &claims).await;
    assert_eq!(
        st.digest.unwrap(),
        skopeo::manifest_digest(&reg, "sel/zstd:1")
    );
    assert_eq!(
        layer_media_types(&reg, "sel/zstd:1"),
        vec![MT_OCI_LAYER_ZSTD; built.images[0].diff_ids.len()]
    );
    // The bytes are zstd too (checked against the media type) and decompress to the diff_ids.
    let pulled = skopeo::pull(&reg, "sel/zstd:1");
    assert!(
        pulled
            .layers
            .iter()
            .all(|l| l.compression == support::registry::Compression::Zstd),
        "{:?}",
        pulled.layers
    );
    assert_eq!(pulled.diff_ids(), built.images[0].diff_ids);
    assert_eq!(pulled.config_diff_ids(), built.images[0].diff_ids);
}
