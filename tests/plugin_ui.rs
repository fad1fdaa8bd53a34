//! `kubectl imageimport ui` against the real API server and the real upload service: the page
//! and every API call it makes go through the plugin's local port, signed in as the
//! kubeconfig's user and nobody else; the port serves only the browser that opened its address.

mod support;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cluster::*;

struct Ui(Child);

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The plugin's `ui` with `args`; the address it printed (`http://127.0.0.1:PORT/?key=KEY`).
fn spawn_ui(args: &[&str]) -> (Ui, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-imageimport"))
        .arg("ui")
        .arg("--no-browser")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    (Ui(child), String::from_utf8(line).unwrap())
}

/// A ServiceAccount of NS that may read imports and upload into them there, nothing else.
async fn console_user(c: &Cluster) -> std::path::PathBuf {
    let rules = json!([
        {"apiGroups": ["imageimport.dev"], "resources": ["imageimports"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["imageimport.dev"], "resources": ["imageimports/upload"], "verbs": ["create"]}
    ]);
    namespace_role(c, "console-user", rules).await;
    c.api.service_account_kubeconfig(NS, "console-user").await
}

/// One raw HTTP/1.1 request (any Host header); the status and the whole answer.
fn raw(port: u16, request: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_on_localhost_acts_as_the_kubeconfig_user_and_serves_only_its_browser() {
    let mut c = Cluster::start().await;
    let (mut service, base) = spawn_upload_service(&c).await;
    c.kill_controller();
    c.controller = Some(c.spawn_controller(
        &["--upload-url", &base, "--upload-internal-url", &base],
        "ctl",
    ));
    let user_kubeconfig = console_user(&c).await;
    c.apply(json!({
        "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
        "metadata": {"name": "dropped", "namespace": NS},
        "spec": {"source": {"upload": {}},
            "target": {"repository": "127.0.0.1:1/shop/dropped", "insecure": true}}
    }))
    .await;

    // A kubeconfig whose user is a client certificate has nothing to forward: said at once.
    let admin = c.api.kubeconfig.to_str().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-imageimport"))
        .args([
            "ui",
            "--no-browser",
            "--upload-url",
            &base,
            "--kubeconfig",
            &admin,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no bearer token"), "{err}");

    let kubeconfig = user_kubeconfig.to_str().unwrap().to_string();
    let (_ui, address) = spawn_ui(&["--upload-url", &base, "--kubeconfig", &kubeconfig]);
    let url = url::Url::parse(&address).unwrap();
    assert_eq!(url.host_str(), Some("127.0.0.1"), "{address}");
    let ui_port = url.port().unwrap();
    let key = url
        .query_pairs()
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.into_owned())
        .expect("the address carries its key");
    assert_eq!(key.len(), 64, "256 random bits");
    let local = format!("http://127.0.0.1:{ui_port}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // Without the key, with a wrong one, or under another Host name: refused.
    let r = http.get(format!("{local}/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{local}/?key={}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let cookie = format!("imageimport_ui_{ui_port}={key}");
    let (status, answer) = raw(
        ui_port,
        &format!(
            "GET / HTTP/1.1\r\nHost: rebound.example:{ui_port}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 403, "{answer}");

    // The printed address: the key becomes a cookie no other site's page makes the browser send.
    let r = http.get(&address).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.starts_with(&format!("{cookie};")), "{set}");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );

    // The page itself, from the upload service, with its Content-Security-Policy.
    let r = http
        .get(format!("{local}/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("content-security-policy"));
    assert!(
        r.text().await.unwrap().contains("<html"),
        "the console's page"
    );

    // The API as the kubeconfig's user: who it is, what it may read, and no more.
    let api = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{local}/k8s{path}"))
            .header("cookie", &cookie)
            .header("x-imageimport-console", "1")
    };
    let review: Value = api(
        reqwest::Method::POST,
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
    )
    .json(&json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        review["status"]["userInfo"]["username"],
        format!("system:serviceaccount:{NS}:console-user")
    );
    let r = api(
        reqwest::Method::GET,
        &format!("/apis/imageimport.dev/v1alpha1/namespaces/{NS}/imageimports"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["metadata"]["name"] == "dropped"),
        "{list}"
    );
    let r = api(
        reqwest::Method::GET,
        "/apis/imageimport.dev/v1alpha1/namespaces/default/imageimports",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 403, "the user may not read another namespace");

    // A tus upload through the port: created as the user, its Location on this origin.
    let wait = Instant::now() + Duration::from_secs(120);
    let upload_url = loop {
        let obj = c.imports().get("dropped").await.unwrap();
        if let Some(u) = obj.status.and_then(|s| s.upload).and_then(|u| u.url) {
            break u;
        }
        assert!(Instant::now() < wait, "no status.upload.url");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let path = url::Url::parse(&upload_url).unwrap().path().to_string();

    // Without --upload-url the plugin takes the base of an import's status.upload.url in the
    // namespace (it answers from here, so no port-forward).
    let (_found, found_address) = spawn_ui(&["-n", NS, "--kubeconfig", &kubeconfig]);
    let found = url::Url::parse(&found_address).unwrap();
    let found_local = format!("http://127.0.0.1:{}", found.port().unwrap());
    let r = http.get(found.as_str()).send().await.unwrap();
    assert_eq!(r.status(), 303);
    let found_cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let r = http
        .request(reqwest::Method::OPTIONS, format!("{found_local}{path}"))
        .header("cookie", &found_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16() / 100,
        2,
        "tus discovery through the found service"
    );
    assert_eq!(r.headers()["tus-version"], "1.0.0");
    let r = http
        .post(format!("{local}{path}"))
        .header("cookie", &cookie)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "1024")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let location = url::Url::parse(&local).unwrap().join(&location).unwrap();
    assert_eq!(location.origin(), url::Url::parse(&local).unwrap().origin());
    let r = http
        .head(location.as_str())
        .header("cookie", &cookie)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["upload-offset"], "0");
    assert_eq!(r.headers()["upload-length"], "1024");

    // And in a browser: the printed address opens the console signed in, no token typed.
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    assert!(
        web.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci` in web/ (.ci/run does)"
    );
    let out = tokio::process::Command::new("node")
        .current_dir(&web)
        .args([
            "e2e/ui.mjs",
            "--address",
            &address,
            "--namespace",
            NS,
            "--import",
            "dropped",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the browser scenario failed: {stdout}"
    );
    let events: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let find = |name: &str| {
        events
            .iter()
            .find(|e| e["event"] == name)
            .unwrap_or_else(|| panic!("no {name} event: {stdout}"))
            .clone()
    };
    assert_eq!(
        find("landed")["url"],
        format!("{local}/"),
        "the key left the address"
    );
    let signed_in = find("signed-in")["text"].as_str().unwrap().to_string();
    assert!(
        signed_in.contains(&format!("system:serviceaccount:{NS}:console-user"))
            && signed_in.contains("through your sign-in proxy"),
        "{signed_in}"
    );
    assert_eq!(
        find("origins")["foreign"],
        json!([]),
        "third-party requests"
    );

    let _ = service.kill();
    let _ = service.wait();
}
