//! Real OCI registries for integration tests, plus independent verification clients.
//!
//! * [`Registry`] runs Debian's `docker-registry` (distribution 2.8) on a free loopback port,
//!   optionally with TLS (CA + leaf generated with rcgen) and htpasswd basic auth. Storage, config,
//!   certificates, credentials and the registry log live in a private temp dir.
//! * [`Registry::tags`], [`Registry::manifest_digest`], [`Registry::get`] … talk to the registry
//!   HTTP API directly (reqwest, trusting only the generated CA).
//! * [`skopeo`] drives `skopeo` as a completely independent client (push seeds, inspect, pull +
//!   recompute diff_ids).
//! * [`crane`] drives `crane` when it is installed under `$HOME/.cache/imageimport/testbin/`
//!   (optional: every helper returns `None` when crane is absent).
//!
//! Environment overrides: `IMAGEIMPORT_TEST_REGISTRY_BIN` (registry binary, default
//! `docker-registry`), `IMAGEIMPORT_TEST_SKOPEO` (default `skopeo`), `IMAGEIMPORT_TEST_CRANE`,
//! `IMAGEIMPORT_KEEP_TEST_REGISTRY=1` keeps the temp dir of every registry for post-mortem.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

/// User name configured in htpasswd-protected registries.
pub const USERNAME: &str = "tester";

/// `Accept` header value covering every manifest type the registry may store.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 5;
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// Ports handed out to registries of this test process (never reused while a registry lives, so
/// a stopped registry keeps its port reserved for `restart`).
static PORTS_IN_USE: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Which features a [`Registry`] is started with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Serve HTTPS with a certificate signed by a freshly generated CA.
    pub tls: bool,
    /// Require HTTP basic auth (htpasswd, bcrypt) for user [`USERNAME`] with a random password.
    pub htpasswd: bool,
}

/// A `docker-registry serve` child process listening on `127.0.0.1:<port>`.
///
/// Killed on drop; its temp dir (storage, config, log, certs) is removed afterwards.
pub struct Registry {
    /// `127.0.0.1:PORT` — the registry part of image references.
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// PEM file of the CA that signed the server certificate (TLS only).
    pub ca_file: Option<PathBuf>,
    /// Directory containing only `ca.crt` (the CA): the layout `skopeo --cert-dir` /
    /// containers `certs.d` expect (TLS only).
    pub cert_dir: Option<PathBuf>,
    /// Docker `config.json` with `{"auths":{"127.0.0.1:PORT":{"auth":…}}}` (htpasswd only).
    /// It lives in [`Registry::docker_config_dir`], so `DOCKER_CONFIG` can point there.
    pub auth_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    dir: TempDir,
    config_file: PathBuf,
    log_file: PathBuf,
    ca_pem: Option<Vec<u8>>,
    child: Option<Child>,
}

/// User agent of the harness' own HTTP requests (see [`Registry::requests`]).
pub const HARNESS_USER_AGENT: &str = "imageimport-test-harness";

/// One access-log line of the registry (combined log format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub method: String,
    /// Path including the query string.
    pub path: String,
    pub status: u16,
    pub user_agent: String,
}

impl AccessLogEntry {
    /// `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "referer" "user-agent"`
    fn parse(line: &str) -> Option<AccessLogEntry> {
        let parts: Vec<&str> = line.split('"').collect();
        if parts.len() < 6 || !parts[0].contains(" - ") || !parts[0].trim_end().ends_with(']') {
            return None;
        }
        let mut request = parts[1].split(' ');
        let method = request.next()?.to_string();
        let path = request.next()?.to_string();
        let status = parts[2].split_whitespace().next()?.parse().ok()?;
        Some(AccessLogEntry {
            method,
            path,
            status,
            user_agent: parts[5].to_string(),
        })
    }

    /// Not sent by the harness itself.
    pub fn is_client(&self) -> bool {
        self.user_agent != HARNESS_USER_AGENT
    }
}

/// A response from the registry HTTP API.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names are lower-case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "registry response is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl Registry {
    /// HTTP, no auth.
    pub fn plain() -> Registry {
        Registry::start(Options::default())
    }

    /// HTTPS (generated CA), no auth.
    pub fn tls() -> Registry {
        Registry::start(Options {
            tls: true,
            htpasswd: false,
        })
    }

    /// HTTPS (generated CA) + htpasswd basic auth, user [`USERNAME`] with a random password.
    pub fn tls_htpasswd() -> Registry {
        Registry::start(Options {
            tls: true,
            htpasswd: true,
        })
    }

    /// Starts a registry; panics (with the registry log) if it does not come up.
    pub fn start(opts: Options) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("imageimport-registry-")
            .tempdir()
            .expect("create registry temp dir");
        let root = dir.path().to_path_buf();
        fs::create_dir_all(root.join("storage")).unwrap();
        fs::create_dir_all(root.join("docker")).unwrap();

        let tls_files = opts.tls.then(|| generate_tls(&root));
        let (username, password) = if opts.htpasswd {
            let password = random_hex(12);
            write_htpasswd(&root.join("htpasswd"), USERNAME, &password);
            (Some(USERNAME.to_string()), Some(password))
        } else {
            (None, None)
        };

        let mut reg = Registry {
            host: String::new(),
            port: 0,
            tls: opts.tls,
            ca_file: tls_files.as_ref().map(|t| t.ca_file.clone()),
            cert_dir: tls_files.as_ref().map(|t| t.cert_dir.clone()),
            auth_file: None,
            username,
            password,
            config_file: root.join("config.yml"),
            log_file: root.join("registry.log"),
            ca_pem: tls_files.as_ref().map(|t| t.ca_pem.clone()),
            child: None,
            dir,
        };

        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let port = reserve_port();
            reg.port = port;
            reg.host = format!("127.0.0.1:{port}");
            reg.write_config(opts);
            reg.write_docker_config();
            match reg.spawn_and_wait() {
                Ok(()) => return reg,
                Err(e) => {
                    release_port(port);
                    failures.push(format!("attempt {attempt} (port {port}): {e}"));
                    // Another process may have taken the port; pick a new one.
                }
            }
        }
        panic!(
            "docker-registry did not start:\n{}\n--- registry log ---\n{}",
            failures.join("\n"),
            reg.log()
        );
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.host
        )
    }

    /// `127.0.0.1:PORT/<reference>`, e.g. `reference("app:v1")`.
    pub fn reference(&self, reference: &str) -> String {
        format!("{}/{}", self.host, reference)
    }

    /// Root of the registry's filesystem storage (`docker/registry/v2/...` below it).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Bytes of unfinished blob uploads in the storage (`_uploads/<id>/data` files): what a
    /// registry holds of uploads in progress or abandoned.
    pub fn uploading_bytes(&self) -> u64 {
        fn walk(p: &Path, total: &mut u64) {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    let path = e.path();
                    if path.is_dir() {
                        walk(&path, total);
                    } else if path.file_name().is_some_and(|n| n == "data")
                        && path.to_string_lossy().contains("_uploads")
                    {
                        *total += e.metadata().map(|m| m.len()).unwrap_or(0);
                    }
                }
            }
        }
        let mut total = 0;
        walk(&self.storage_dir(), &mut total);
        total
    }

    /// The registry's private temp dir (config.yml, registry.log, certs, htpasswd, docker/).
    /// The registry process (None when stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Directory holding a docker `config.json` for this registry (credentials when
    /// htpasswd-protected, `{"auths":{}}` otherwise). Point `DOCKER_CONFIG` here.
    pub fn docker_config_dir(&self) -> PathBuf {
        self.dir.path().join("docker")
    }

    /// Always-present docker config file (see [`Registry::docker_config_dir`]).
    pub fn docker_config_file(&self) -> PathBuf {
        self.docker_config_dir().join("config.json")
    }

    /// Environment for Go/Rust clients to reach this registry: `DOCKER_CONFIG` (credentials) and,
    /// for TLS, `SSL_CERT_FILE` (the CA).
    pub fn client_env(&self) -> Vec<(&'static str, OsString)> {
        let mut env = vec![("DOCKER_CONFIG", self.docker_config_dir().into_os_string())];
        if let Some(ca) = &self.ca_file {
            env.push(("SSL_CERT_FILE", ca.clone().into_os_string()));
        }
        env
    }

    /// Registry output so far (stderr log at level warn + access log), across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// Access-log entries so far (all restarts), for asserting what a client did or did not
    /// send (e.g. no blob re-upload). The harness' own requests carry [`HARNESS_USER_AGENT`].
    pub fn requests(&self) -> Vec<AccessLogEntry> {
        self.log()
            .lines()
            .filter_map(AccessLogEntry::parse)
            .collect()
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().map(|s| s.is_none()).unwrap_or(false),
            None => false,
        }
    }

    /// Kills the registry (SIGKILL: no graceful shutdown). Storage and port are kept; clients
    /// get "connection refused" until [`Registry::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the registry on the same port with the same storage and credentials.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.spawn_and_wait() {
            panic!(
                "docker-registry did not restart on {}: {e}\n--- registry log ---\n{}",
                self.host,
                self.log()
            );
        }
    }

    /// Freezes the registry process (SIGSTOP): connections are accepted by the kernel but never
    /// answered — for timeout tests. Undo with [`Registry::resume`] (drop also works).
    pub fn suspend(&self) {
        self.signal("-STOP");
        // kill(2) returns once the signal is queued; the threads of the (Go, multi-threaded)
        // process stop a moment later. Wait until every one of them is stopped, or a request
        // sent right now could still be answered.
        let pid = self.child.as_ref().expect("registry is not running").id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !all_threads_stopped(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "registry {pid} did not stop after SIGSTOP"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Continues a [`Registry::suspend`]ed registry (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("registry is not running");
        let status = Command::new("kill")
            .arg(sig)
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {} failed", child.id());
    }

    /// Authenticated (when the registry has credentials) GET of `path` (e.g. `/v2/`).
    /// Panics on transport errors.
    pub fn get(&self, path: &str, accept: Option<&str>) -> HttpResponse {
        self.try_request("GET", path, accept, true)
            .unwrap_or_else(|e| panic!("GET {}{path}: {e}", self.base_url()))
    }

    /// GET without credentials (still trusting the CA).
    pub fn get_anonymous(&self, path: &str) -> HttpResponse {
        self.try_request("GET", path, None, false)
            .unwrap_or_else(|e| panic!("GET {}{path}: {e}", self.base_url()))
    }

    /// GET with explicit basic-auth credentials (e.g. a wrong password).
    pub fn get_with_credentials(&self, path: &str, user: &str, password: &str) -> HttpResponse {
        let creds = Some((user.to_string(), password.to_string()));
        http_request(self.http_target("GET", path, None, creds))
            .unwrap_or_else(|e| panic!("GET {}{path}: {e}", self.base_url()))
    }

    /// Any method; transport errors (registry down, TLS failure, timeout) are returned as `Err`.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        accept: Option<&str>,
        authenticated: bool,
    ) -> Result<HttpResponse, String> {
        let creds = if authenticated {
            self.username.clone().zip(self.password.clone())
        } else {
            None
        };
        http_request(self.http_target(method, path, accept, creds))
    }

    fn http_target(
        &self,
        method: &str,
        path: &str,
        accept: Option<&str>,
        creds: Option<(String, String)>,
    ) -> HttpTarget {
        HttpTarget {
            method: method.to_string(),
            url: format!("{}{}", self.base_url(), path),
            accept: accept.map(str::to_string),
            creds,
            ca_pem: self.ca_pem.clone(),
            timeout: HTTP_TIMEOUT,
        }
    }

    /// Tags of `repo` via `/v2/<repo>/tags/list`, sorted; empty if the repo is unknown.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let resp = self.get(&format!("/v2/{repo}/tags/list"), None);
        match resp.status {
            404 => Vec::new(),
            200 => {
                // distribution answers `"tags": null` once every tag is deleted.
                let mut tags: Vec<String> = resp.json()["tags"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|t| t.as_str().expect("tag is a string").to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                tags.sort();
                tags
            }
            s => panic!(
                "tags/list {repo}: HTTP {s}: {}",
                String::from_utf8_lossy(&resp.body)
            ),
        }
    }

    /// Repositories via `/v2/_catalog`, sorted (follows `Link` pagination; distribution 2.8
    /// rejects `n` > 1000 with 400 PAGINATION_NUMBER_INVALID).
    pub fn catalog(&self) -> Vec<String> {
        let mut repos = Vec::new();
        let mut path = "/v2/_catalog?n=1000".to_string();
        loop {
            let resp = self.get(&path, None);
            assert_eq!(
                resp.status,
                200,
                "_catalog: HTTP {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
            if let Some(list) = resp.json()["repositories"].as_array() {
                repos.extend(list.iter().filter_map(|r| r.as_str().map(String::from)));
            }
            // Link: </v2/_catalog?last=foo&n=1000>; rel="next"
            match resp
                .header("link")
                .and_then(|l| Some(l[l.find('<')? + 1..l.find('>')?].to_string()))
            {
                Some(next) => path = next,
                None => break,
            }
        }
        repos.sort();
        repos
    }

    /// Raw manifest bytes and content type for `repo` at `reference` (tag or digest);
    /// `None` if unknown.
    pub fn manifest(&self, repo: &str, reference: &str) -> Option<(Vec<u8>, String)> {
        let resp = self.get(
            &format!("/v2/{repo}/manifests/{reference}"),
            Some(MANIFEST_ACCEPT),
        );
        match resp.status {
            404 => None,
            200 => {
                let content_type = resp.header("content-type").unwrap_or("").to_string();
                Some((resp.body, content_type))
            }
            s => panic!(
                "manifest {repo}:{reference}: HTTP {s}: {}",
                String::from_utf8_lossy(&resp.body)
            ),
        }
    }

    /// `sha256:…` of the stored manifest bytes (checked against `Docker-Content-Digest`);
    /// `None` if the repo or tag is unknown.
    pub fn manifest_digest(&self, repo: &str, tag: &str) -> Option<String> {
        let resp = self.get(
            &format!("/v2/{repo}/manifests/{tag}"),
            Some(MANIFEST_ACCEPT),
        );
        match resp.status {
            404 => None,
            200 => {
                let digest = sha256_digest(&resp.body);
                if let Some(header) = resp.header("docker-content-digest") {
                    assert_eq!(
                        header, digest,
                        "Docker-Content-Digest differs from the manifest bytes' digest"
                    );
                }
                Some(digest)
            }
            s => panic!(
                "manifest {repo}:{tag}: HTTP {s}: {}",
                String::from_utf8_lossy(&resp.body)
            ),
        }
    }

    /// Blob bytes (digest-verified); `None` if unknown.
    pub fn blob(&self, repo: &str, digest: &str) -> Option<Vec<u8>> {
        let resp = self.get(&format!("/v2/{repo}/blobs/{digest}"), None);
        match resp.status {
            404 => None,
            200 => {
                assert_eq!(sha256_digest(&resp.body), digest, "blob digest mismatch");
                Some(resp.body)
            }
            s => panic!("blob {repo}@{digest}: HTTP {s}"),
        }
    }

    /// HEAD `/v2/<repo>/blobs/<digest>`.
    pub fn blob_exists(&self, repo: &str, digest: &str) -> bool {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self
            .try_request("HEAD", &path, None, true)
            .unwrap_or_else(|e| panic!("HEAD {path}: {e}"));
        match resp.status {
            200 => true,
            404 => false,
            s => panic!("HEAD {path}: HTTP {s}"),
        }
    }

    /// Deletes the manifest `digest` (and thereby every tag pointing at it).
    /// distribution cannot delete by tag. Returns whether it existed.
    pub fn delete_manifest(&self, repo: &str, digest: &str) -> bool {
        let path = format!("/v2/{repo}/manifests/{digest}");
        let resp = self
            .try_request("DELETE", &path, None, true)
            .unwrap_or_else(|e| panic!("DELETE {path}: {e}"));
        match resp.status {
            202 => true,
            404 => false,
            s => panic!(
                "DELETE {path}: HTTP {s}: {}",
                String::from_utf8_lossy(&resp.body)
            ),
        }
    }

    fn write_config(&self, opts: Options) {
        let root = self.dir.path();
        let q = |p: &Path| serde_json::to_string(&p.to_string_lossy()).unwrap();
        let mut cfg = format!(
            "version: 0.1
log:
  level: warn
  formatter: text
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: \"127.0.0.1:{port}\"
  secret: imageimport-test-secret
  headers:
    X-Content-Type-Options: [nosniff]
",
            storage = q(&self.storage_dir()),
            port = self.port,
        );
        if opts.tls {
            cfg += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                q(&root.join("tls/server.crt")),
                q(&root.join("tls/server.key"))
            );
        }
        if opts.htpasswd {
            cfg += &format!(
                "auth:\n  htpasswd:\n    realm: imageimport-test\n    path: {}\n",
                q(&root.join("htpasswd"))
            );
        }
        fs::write(&self.config_file, cfg).expect("write registry config");
    }

    fn write_docker_config(&mut self) {
        let file = self.docker_config_file();
        let auths = match (&self.username, &self.password) {
            (Some(user), Some(password)) => {
                let auth =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                serde_json::json!({ self.host.clone(): { "auth": auth } })
            }
            _ => serde_json::json!({}),
        };
        let config = serde_json::json!({ "auths": auths });
        fs::write(&file, serde_json::to_vec_pretty(&config).unwrap()).expect("write docker config");
        self.auth_file = self.username.is_some().then_some(file);
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .expect("open registry log");
        let mut cmd = Command::new(registry_bin());
        cmd.arg("serve")
            .arg(&self.config_file)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // REGISTRY_* variables override config.yml values in distribution.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {:?}: {e}", registry_bin()))?;
        let pid = child.id();
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_err;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("registry exited with {status}"));
            }
            let mut target = self.http_target("GET", "/v2/", None, None);
            target.timeout = Duration::from_secs(2);
            match http_request(target) {
                Ok(resp) if resp.status == 200 || resp.status == 401 => {
                    // Make sure it is *our* process answering, not a squatter on the port.
                    if owns_listening_port(pid, self.port) == Some(false) {
                        self.stop();
                        return Err(format!(
                            "port {} answered but is not held by pid {pid}",
                            self.port
                        ));
                    }
                    return Ok(());
                }
                Ok(resp) => last_err = format!("GET /v2/ answered HTTP {}", resp.status),
                Err(e) => last_err = e,
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!(
                    "not ready after {START_TIMEOUT:?}; last error: {last_err}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A SIGSTOPped process still dies from SIGKILL, but resume anyway for clean reaping.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .stderr(Stdio::null())
                .status();
        }
        self.stop();
        release_port(self.port);
        if std::env::var_os("IMAGEIMPORT_KEEP_TEST_REGISTRY").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("keeping registry dir {}", self.dir.path().display());
        }
    }
}

fn registry_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("IMAGEIMPORT_TEST_REGISTRY_BIN") {
        return PathBuf::from(p);
    }
    if Path::new("/usr/bin/docker-registry").exists() {
        return PathBuf::from("/usr/bin/docker-registry");
    }
    PathBuf::from("docker-registry")
}

/// A free loopback port not handed to another registry of this process.
fn reserve_port() -> u16 {
    let mut guard = PORTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    let used = guard.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        if used.insert(port) {
            return port;
        }
    }
    panic!("could not find a free loopback port");
}

fn release_port(port: u16) {
    let mut guard = PORTS_IN_USE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(used) = guard.as_mut() {
        used.remove(&port);
    }
}

/// Whether `pid` holds the listening socket on 127.0.0.1:`port` (Linux /proc); `None` if unknown.
fn owns_listening_port(pid: u32, port: u16) -> Option<bool> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let wanted = format!("0100007F:{port:04X}");
    let inodes: HashSet<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // cols: sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            (cols.len() > 9 && cols[1] == wanted && cols[3] == "0A")
                .then(|| format!("socket:[{}]", cols[9]))
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(fds.flatten().any(|fd| {
        fs::read_link(fd.path())
            .map(|target| inodes.contains(&*target.to_string_lossy()))
            .unwrap_or(false)
    }))
}

/// A test CA and a server certificate it signed, as files.
pub struct TlsFiles {
    pub ca_pem: Vec<u8>,
    pub ca_file: PathBuf,
    pub cert_dir: PathBuf,
    /// The server's certificate and key (PEM).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// CA + server leaf (SANs 127.0.0.1, ::1, localhost) under `<root>/tls`, CA also as
/// `<root>/certs/ca.crt` for `--cert-dir`.
pub fn generate_tls(root: &Path) -> TlsFiles {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, date_time_ymd,
    };

    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "imageimport test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = date_time_ymd(2000, 1, 1);
    ca_params.not_after = date_time_ymd(2099, 12, 31);
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().expect("server key");
    let mut leaf = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "localhost".to_string(),
    ])
    .expect("server SANs");
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = date_time_ymd(2000, 1, 1);
    leaf.not_after = date_time_ymd(2099, 12, 31);
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .expect("sign server cert");

    let tls_dir = root.join("tls");
    let cert_dir = root.join("certs");
    fs::create_dir_all(&tls_dir).unwrap();
    fs::create_dir_all(&cert_dir).unwrap();
    let ca_pem = ca_cert.pem();
    let ca_file = tls_dir.join("ca.crt");
    fs::write(&ca_file, &ca_pem).unwrap();
    fs::write(cert_dir.join("ca.crt"), &ca_pem).unwrap();
    let (cert_file, key_file) = (tls_dir.join("server.crt"), tls_dir.join("server.key"));
    fs::write(&cert_file, leaf_cert.pem()).unwrap();
    fs::write(&key_file, leaf_key.serialize_pem()).unwrap();
    TlsFiles {
        ca_pem: ca_pem.into_bytes(),
        ca_file,
        cert_dir,
        cert_file,
        key_file,
    }
}

fn write_htpasswd(path: &Path, user: &str, password: &str) {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("run htpasswd (apache2-utils)");
    assert!(
        out.status.success(),
        "htpasswd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // htpasswd -n prints "user:hash\n\n".
    let line = String::from_utf8(out.stdout).unwrap();
    fs::write(path, format!("{}\n", line.trim())).expect("write htpasswd");
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    hex::encode(buf)
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

struct HttpTarget {
    method: String,
    url: String,
    accept: Option<String>,
    creds: Option<(String, String)>,
    ca_pem: Option<Vec<u8>>,
    timeout: Duration,
}

/// One request on a private runtime in a helper thread, so it works from sync tests and from
/// inside `#[tokio::test]` alike.
fn http_request(t: HttpTarget) -> Result<HttpResponse, String> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let mut builder = reqwest::Client::builder()
                .no_proxy()
                .user_agent(HARNESS_USER_AGENT)
                .timeout(t.timeout)
                .connect_timeout(t.timeout)
                .redirect(reqwest::redirect::Policy::none());
            if let Some(pem) = &t.ca_pem {
                let ca = reqwest::Certificate::from_pem(pem).map_err(|e| e.to_string())?;
                builder = builder.tls_certs_only([ca]);
            }
            let client = builder.build().map_err(|e| format!("{e:?}"))?;
            let method = reqwest::Method::from_bytes(t.method.as_bytes()).unwrap();
            let mut req = client.request(method, &t.url);
            if let Some(accept) = &t.accept {
                req = req.header("Accept", accept);
            }
            if let Some((user, password)) = &t.creds {
                req = req.basic_auth(user, Some(password));
            }
            let resp = req.send().await.map_err(|e| format!("{e:?}"))?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_ascii_lowercase(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = resp.bytes().await.map_err(|e| format!("{e:?}"))?.to_vec();
            Ok(HttpResponse {
                status,
                headers,
                body,
            })
        })
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Layer compression as detected from the blob's magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn detect(data: &[u8]) -> Compression {
        if data.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// Compression a layer media type announces (`None` for unknown/foreign types too).
    pub fn from_media_type(media_type: &str) -> Compression {
        if media_type.ends_with("gzip") {
            Compression::Gzip
        } else if media_type.ends_with("zstd") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// `sha256:<hex>` of the decompressed stream of `data`.
pub fn diff_id(data: &[u8], compression: Compression) -> String {
    let mut reader: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(data),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(data).expect("zstd decoder"))
        }
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).expect("decompress layer");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// skopeo as an independent client. `reference` is relative to the registry:
/// `"repo:tag"` or `"repo@sha256:…"`.
pub mod skopeo {
    use super::*;

    pub fn bin() -> PathBuf {
        std::env::var_os("IMAGEIMPORT_TEST_SKOPEO")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("skopeo"))
    }

    /// `docker://127.0.0.1:PORT/<reference>`.
    pub fn docker_ref(reg: &Registry, reference: &str) -> String {
        format!("docker://{}/{}", reg.host, reference)
    }

    /// TLS/credential flags for the registry side; `prefix` is `""` (inspect), `"src-"` or
    /// `"dest-"` (copy).
    pub fn registry_flags(reg: &Registry, prefix: &str) -> Vec<OsString> {
        let mut flags: Vec<OsString> = Vec::new();
        match &reg.cert_dir {
            Some(dir) => {
                flags.push(format!("--{prefix}cert-dir").into());
                flags.push(dir.clone().into_os_string());
            }
            // Plain HTTP: skopeo only falls back to http:// with tls-verify off.
            None => flags.push(format!("--{prefix}tls-verify=false").into()),
        }
        // Always pass our own auth file so no ambient credentials leak in.
        flags.push(format!("--{prefix}authfile").into());
        flags.push(reg.docker_config_file().into_os_string());
        flags
    }

    /// Runs skopeo, returning stdout or `Err(stderr)`.
    pub fn try_run<I, S>(args: I) -> Result<Vec<u8>, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let out = Command::new(bin())
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("spawn {:?}: {e}", bin()))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(format!(
                "skopeo {:?} failed ({}): {}",
                args,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    pub fn run<I, S>(args: I) -> Vec<u8>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        try_run(args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn inspect_args(reg: &Registry, reference: &str, extra: &[&str]) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["inspect".into()];
        args.extend(extra.iter().map(OsString::from));
        args.extend(registry_flags(reg, ""));
        args.push(docker_ref(reg, reference).into());
        args
    }

    /// `skopeo inspect --raw`: the manifest bytes exactly as served.
    pub fn try_inspect_raw_bytes(reg: &Registry, reference: &str) -> Result<Vec<u8>, String> {
        try_run(inspect_args(reg, reference, &["--raw"]))
    }

    pub fn inspect_raw_bytes(reg: &Registry, reference: &str) -> Vec<u8> {
        run(inspect_args(reg, reference, &["--raw"]))
    }

    /// The manifest (or index) as JSON.
    pub fn inspect_raw(reg: &Registry, reference: &str) -> serde_json::Value {
        serde_json::from_slice(&inspect_raw_bytes(reg, reference)).expect("manifest JSON")
    }

    /// `skopeo inspect` summary (Digest, RepoTags, Layers, Architecture, …).
    pub fn inspect(reg: &Registry, reference: &str) -> serde_json::Value {
        serde_json::from_slice(&run(inspect_args(reg, reference, &[]))).expect("inspect JSON")
    }

    /// `sha256:` of the raw manifest bytes.
    pub fn manifest_digest(reg: &Registry, reference: &str) -> String {
        sha256_digest(&inspect_raw_bytes(reg, reference))
    }

    /// Raw config blob and its digest (for an index: the config of the host platform's image).
    pub fn config(reg: &Registry, reference: &str) -> (Vec<u8>, String) {
        let raw = run(inspect_args(reg, reference, &["--config", "--raw"]));
        let digest = sha256_digest(&raw);
        (raw, digest)
    }

    /// `skopeo copy <src> docker://HOST/<reference>`; `src` is any transport reference, e.g.
    /// `oci:/path/layout:tag`, `docker-archive:/path/img.tar`.
    pub fn try_push(reg: &Registry, src: &str, reference: &str) -> Result<(), String> {
        let mut args: Vec<OsString> = vec!["--insecure-policy".into(), "copy".into()];
        args.extend(registry_flags(reg, "dest-"));
        args.push(src.into());
        args.push(docker_ref(reg, reference).into());
        try_run(args).map(|_| ())
    }

    pub fn push(reg: &Registry, src: &str, reference: &str) {
        try_push(reg, src, reference).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Pushes tag `layout_tag` of the OCI layout at `layout` to `reference`.
    pub fn push_oci_layout(reg: &Registry, layout: &Path, layout_tag: &str, reference: &str) {
        push(
            reg,
            &format!("oci:{}:{layout_tag}", layout.display()),
            reference,
        )
    }

    /// One layer of a [`Pulled`] image.
    #[derive(Debug, Clone)]
    pub struct PulledLayer {
        pub digest: String,
        pub media_type: String,
        pub size: u64,
        /// From the blob's magic bytes.
        pub compression: Compression,
        /// sha256 of the decompressed layer, computed here.
        pub diff_id: String,
        pub path: PathBuf,
    }

    /// An image pulled with `skopeo copy docker://… dir:…` (manifest kept verbatim).
    pub struct Pulled {
        pub dir: TempDir,
        pub manifest_bytes: Vec<u8>,
        pub manifest: serde_json::Value,
        pub config_bytes: Vec<u8>,
        pub config: serde_json::Value,
        pub layers: Vec<PulledLayer>,
    }

    impl Pulled {
        pub fn diff_ids(&self) -> Vec<String> {
            self.layers.iter().map(|l| l.diff_id.clone()).collect()
        }

        /// `rootfs.diff_ids` as declared by the config.
        pub fn config_diff_ids(&self) -> Vec<String> {
            self.config["rootfs"]["diff_ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        }
    }

    /// Pulls `reference` (an index resolves to the host platform's image) and verifies every
    /// blob's digest and size against the manifest.
    pub fn pull(reg: &Registry, reference: &str) -> Pulled {
        let dir = tempfile::Builder::new()
            .prefix("imageimport-skopeo-pull-")
            .tempdir()
            .unwrap();
        let mut args: Vec<OsString> = vec!["--insecure-policy".into(), "copy".into()];
        args.extend(registry_flags(reg, "src-"));
        args.push(docker_ref(reg, reference).into());
        args.push(format!("dir:{}", dir.path().display()).into());
        run(args);

        let blob_path = |digest: &str| {
            let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
            dir.path().join(hex)
        };
        let read_blob = |digest: &str, size: Option<u64>| {
            let data = fs::read(blob_path(digest))
                .unwrap_or_else(|e| panic!("blob {digest} missing in dir: copy: {e}"));
            assert_eq!(sha256_digest(&data), digest, "pulled blob digest mismatch");
            if let Some(size) = size {
                assert_eq!(data.len() as u64, size, "blob {digest}: size mismatch");
            }
            data
        };

        let manifest_bytes = fs::read(dir.path().join("manifest.json")).expect("manifest.json");
        let manifest: serde_json::Value =
            serde_json::from_slice(&manifest_bytes).expect("manifest JSON");
        let cfg = &manifest["config"];
        let config_bytes = read_blob(
            cfg["digest"].as_str().expect("config digest"),
            cfg["size"].as_u64(),
        );
        let config: serde_json::Value = serde_json::from_slice(&config_bytes).expect("config JSON");
        let layers = manifest["layers"]
            .as_array()
            .expect("manifest.layers")
            .iter()
            .map(|l| {
                let digest = l["digest"].as_str().expect("layer digest").to_string();
                let media_type = l["mediaType"].as_str().unwrap_or("").to_string();
                let size = l["size"].as_u64().expect("layer size");
                let data = read_blob(&digest, Some(size));
                let compression = Compression::detect(&data);
                PulledLayer {
                    diff_id: diff_id(&data, compression),
                    path: blob_path(&digest),
                    digest,
                    media_type,
                    size,
                    compression,
                }
            })
            .collect();
        Pulled {
            dir,
            manifest_bytes,
            manifest,
            config_bytes,
            config,
            layers,
        }
    }

    /// The real diff_ids an independent client computes (decompress + sha256 each layer).
    /// Panics if a layer's media type announces a different compression than its bytes have.
    pub fn pull_diff_ids(reg: &Registry, reference: &str) -> Vec<String> {
        let pulled = pull(reg, reference);
        for layer in &pulled.layers {
            assert_eq!(
                Compression::from_media_type(&layer.media_type),
                layer.compression,
                "layer {} has media type {} but {:?} content",
                layer.digest,
                layer.media_type,
                layer.compression
            );
        }
        pulled.diff_ids()
    }
}

/// crane (go-containerregistry) as a second independent client — only when installed at
/// `$IMAGEIMPORT_TEST_CRANE` or `$HOME/.cache/imageimport/testbin/crane`. Every helper returns
/// `None` when crane is absent. `reference` is relative to the registry (`"repo:tag"`).
pub mod crane {
    use super::*;

    pub fn path() -> Option<PathBuf> {
        let candidate = match std::env::var_os("IMAGEIMPORT_TEST_CRANE") {
            Some(p) => PathBuf::from(p),
            None => {
                PathBuf::from(std::env::var_os("HOME")?).join(".cache/imageimport/testbin/crane")
            }
        };
        candidate.is_file().then_some(candidate)
    }

    pub fn available() -> bool {
        path().is_some()
    }

    /// A crane command with `DOCKER_CONFIG`/`SSL_CERT_FILE` set for `reg`. Append `--insecure`
    /// (or use [`run`]) for plain-HTTP registries.
    pub fn command(reg: &Registry) -> Option<Command> {
        let mut cmd = Command::new(path()?);
        cmd.envs(reg.client_env()).stdin(Stdio::null());
        Some(cmd)
    }

    /// `crane <args…>` (+ `--insecure` for plain HTTP); panics on failure.
    pub fn run(reg: &Registry, args: &[&str]) -> Option<Vec<u8>> {
        let mut cmd = command(reg)?;
        cmd.args(args);
        if !reg.tls {
            cmd.arg("--insecure");
        }
        let out = cmd.output().expect("run crane");
        assert!(
            out.status.success(),
            "crane {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(out.stdout)
    }

    pub fn digest(reg: &Registry, reference: &str) -> Option<String> {
        let out = run(reg, &["digest", &reg.reference(reference)])?;
        Some(String::from_utf8(out).unwrap().trim().to_string())
    }

    pub fn manifest(reg: &Registry, reference: &str) -> Option<Vec<u8>> {
        run(reg, &["manifest", &reg.reference(reference)])
    }

    pub fn config(reg: &Registry, reference: &str) -> Option<Vec<u8>> {
        run(reg, &["config", &reg.reference(reference)])
    }

    pub fn ls(reg: &Registry, repo: &str) -> Option<Vec<String>> {
        let out = run(reg, &["ls", &reg.reference(repo)])?;
        Some(
            String::from_utf8(out)
                .unwrap()
                .lines()
                .map(String::from)
                .collect(),
        )
    }
}

/// Whether every thread of `pid` is in the stopped state (`T` in `/proc/PID/task/TID/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            // The state follows the parenthesised command name, which may itself hold spaces.
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next())
            })
            .is_some_and(|state| state == 'T' || state == 't')
    })
}
