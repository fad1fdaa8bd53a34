//! A real `etcd` + `kube-apiserver` for integration tests of the operator (envtest-style).
//!
//! [`ApiServer::start`] generates a PKI with rcgen (CA, serving certificate, `system:masters`
//! client certificate, ECDSA service-account signing key), starts etcd and kube-apiserver on free
//! loopback ports with everything (data, certificates, logs, kubeconfig) in a private temp dir,
//! and waits for etcd `/health` and the API server's `/livez`, `/readyz` and the `default`
//! namespace. Nothing else runs: no controller-manager (Jobs never get Pods, namespaces stay
//! `Terminating`, ServiceAccounts get no token Secrets), no scheduler, no kubelet, no garbage
//! collector (ownerReferences are not acted on). A test that needs one of those effects performs it
//! itself and says so.
//!
//! Authorization is RBAC: the admin client ([`ApiServer::client`], [`ApiServer::kubeconfig`]) is
//! in `system:masters` and bypasses it; [`ApiServer::service_account_client`] and
//! [`ApiServer::impersonating_client`] are subject to it, for least-privilege tests.
//!
//! Binaries: `$IMAGEIMPORT_TESTBIN_DIR` (default `$HOME/.cache/imageimport/testbin`) must hold
//! `etcd` and `kube-apiserver` (built by `hack/build-test-bins.sh`); without them the harness panics,
//! it never skips.
//!
//! Children are spawned from one long-lived thread with `PR_SET_PDEATHSIG=SIGKILL`, so they die
//! with the test process even when it is killed (timeout, Ctrl-C) and `Drop` never runs.
//! Starts are serialized within a test process (two cold apiservers at once on 2 cores only slow
//! each other down); the wait for the lock does not count against the start timeout.
//!
//! Environment: `IMAGEIMPORT_TESTBIN_DIR`, `IMAGEIMPORT_KEEP_TEST_KUBE=1` (keep the temp dir with
//! logs and etcd data for post-mortem), `IMAGEIMPORT_TEST_KUBE_TIMEOUT_SECS` (default 90: bound of
//! every wait of the harness).

use std::collections::BTreeSet;
use std::ffi::{OsString, c_int, c_long, c_ulong};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, mpsc};
use std::time::{Duration, Instant};

use ::kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use ::kube::{Client, Config};
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize as _;
use tempfile::TempDir;

/// The Kubernetes version `hack/build-test-bins.sh` builds (and k8s-openapi's `v1_34`).
pub const KUBERNETES_VERSION: &str = "v1.34.4";
/// Service CIDR of the test cluster; its first address is the `kubernetes` Service.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.0.0.0/24";
/// `--service-account-issuer` (and the default audience of minted tokens).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc";
/// Field manager of the harness' own server-side applies.
pub const FIELD_MANAGER: &str = "imageimport-test-harness";

const DEFAULT_TIMEOUT_SECS: u64 = 90;
const START_ATTEMPTS: usize = 3;
const POLL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 60;

/// Loopback ports handed out by this process and not released yet (a stopped apiserver keeps its
/// port reserved for `start_apiserver`).
static PORTS_IN_USE: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
/// Serializes cold starts within the test process.
static START_LOCK: Mutex<()> = Mutex::new(());

/// A running etcd + kube-apiserver pair. Both processes are killed (and reaped) on drop, then the
/// temp dir is removed.
pub struct ApiServer {
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The apiserver's secure port (stays the same across [`ApiServer::restart_apiserver`]).
    pub port: u16,
    /// `http://127.0.0.1:PORT` of etcd (plain HTTP, loopback only).
    pub etcd_url: String,
    /// Admin kubeconfig (`system:masters`, certificate + CA embedded as base64 data): usable by a
    /// subprocess through `KUBECONFIG=` or `--kubeconfig`.
    pub kubeconfig: PathBuf,
    /// PEM file of the cluster CA (signs the serving and client certificates).
    pub ca_file: PathBuf,
    dir: TempDir,
    pki: Pki,
    etcd_peer_port: u16,
    extra_args: Vec<OsString>,
    timeout: Duration,
    etcd: Option<Child>,
    apiserver: Option<Child>,
}

/// Memory and CPU of one of the harness' processes, from `/proc`.
#[derive(Debug, Clone)]
pub struct ProcessUsage {
    pub name: &'static str,
    pub pid: u32,
    /// Current resident set size (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`).
    pub peak_rss_kib: u64,
    /// User + system CPU time since the process started.
    pub cpu: Duration,
}

struct Pki {
    ca_der: Vec<u8>,
    ca_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
}

enum StartError {
    /// Lost a race for a free port: worth another attempt on other ports.
    PortInUse(String),
    Fatal(String),
}

impl ApiServer {
    /// Starts etcd and kube-apiserver and waits until the API server is ready. Blocking; works
    /// from sync tests and inside `#[tokio::test]` alike. Panics (with log tails) on failure.
    pub fn start() -> ApiServer {
        ApiServer::start_with_args(&[])
    }

    /// Like [`ApiServer::start`] with extra kube-apiserver flags (appended last, so they override
    /// the harness' defaults), e.g. `--feature-gates=…` or `--audit-policy-file=…`.
    pub fn start_with_args(extra_apiserver_args: &[&str]) -> ApiServer {
        let _serialized = lock(&START_LOCK);
        let etcd_bin = test_binary("etcd");
        let apiserver_bin = test_binary("kube-apiserver");
        let dir = tempfile::Builder::new()
            .prefix("imageimport-kube-")
            .tempdir()
            .expect("create kube harness temp dir");
        let pki = generate_pki(dir.path());
        let mut server = ApiServer {
            url: String::new(),
            port: 0,
            etcd_url: String::new(),
            kubeconfig: dir.path().join("admin.kubeconfig"),
            ca_file: dir.path().join("pki/ca.crt"),
            dir,
            pki,
            etcd_peer_port: 0,
            extra_args: extra_apiserver_args.iter().map(OsString::from).collect(),
            timeout: harness_timeout(),
            etcd: None,
            apiserver: None,
        };
        for attempt in 1..=START_ATTEMPTS {
            server.assign_ports();
            let result = server
                .spawn_etcd(&etcd_bin)
                .and_then(|()| server.spawn_apiserver(&apiserver_bin));
            match result {
                Ok(()) => return server,
                Err(StartError::PortInUse(msg)) if attempt < START_ATTEMPTS => {
                    eprintln!("kube harness: port conflict, retrying on other ports: {msg}");
                    server.kill_all();
                    server.release_ports();
                    let _ = fs::remove_dir_all(server.etcd_data_dir());
                }
                Err(StartError::PortInUse(msg) | StartError::Fatal(msg)) => panic!("{msg}"),
            }
        }
        unreachable!()
    }

    /// Admin configuration (`CN=admin, O=system:masters` client certificate, CA as root), e.g.
    /// for building clients of an in-process controller.
    pub fn kube_config(&self) -> Config {
        let mut config = self.anonymous_config();
        config.auth_info.client_certificate_data = Some(b64(&self.pki.admin_cert_pem));
        config.auth_info.client_key_data = Some(b64(&self.pki.admin_key_pem).into());
        config
    }

    /// An admin client (bypasses RBAC). Must be called inside a tokio runtime, and used only in
    /// the runtime it was created in.
    pub async fn client(&self) -> Client {
        Client::try_from(self.kube_config()).expect("build admin kube client")
    }

    /// A client authenticated as admin that impersonates `user` in `groups` (RBAC applies to the
    /// impersonated identity; `system:authenticated` is added by the API server).
    pub async fn impersonating_client(&self, user: &str, groups: &[&str]) -> Client {
        let mut config = self.kube_config();
        config.auth_info.impersonate = Some(user.to_string());
        if !groups.is_empty() {
            config.auth_info.impersonate_groups =
                Some(groups.iter().map(|g| g.to_string()).collect());
        }
        Client::try_from(config).expect("build impersonating kube client")
    }

    /// Creates the ServiceAccount `namespace/name` (and its namespace) if missing and mints a
    /// bearer token for it with the TokenRequest API (valid 24 h, audience = the issuer).
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        self.service_account_token_for(namespace, name, &[]).await
    }

    /// [`ApiServer::service_account_token`] for `audiences` (none: the issuer's).
    pub async fn service_account_token_for(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
    ) -> String {
        self.create_namespace(namespace).await;
        let sas: Api<ServiceAccount> = Api::namespaced(self.client().await, namespace);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(::kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(e) => panic!("create ServiceAccount {namespace}/{name}: {e}"),
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audiences.iter().map(|a| a.to_string()).collect(),
                expiration_seconds: Some(24 * 3600),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let minted: TokenRequest = sas
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"));
        minted
            .status
            .unwrap_or_else(|| panic!("TokenRequest for {namespace}/{name}: no status"))
            .token
    }

    /// Configuration of a client authenticated as ServiceAccount `namespace/name` (bearer token
    /// from [`ApiServer::service_account_token`]), subject to RBAC.
    pub async fn service_account_config(&self, namespace: &str, name: &str) -> Config {
        let token = self.service_account_token(namespace, name).await;
        let mut config = self.anonymous_config();
        config.default_namespace = namespace.to_string();
        config.auth_info.token = Some(token.into());
        config
    }

    /// A client authenticated as ServiceAccount `namespace/name`, subject to RBAC.
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> Client {
        let config = self.service_account_config(namespace, name).await;
        Client::try_from(config).expect("build service-account kube client")
    }

    /// Writes a kubeconfig (token embedded, default namespace = `namespace`) for ServiceAccount
    /// `namespace/name`, for running a subprocess (the operator binary) with its least privileges.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.service_account_token(namespace, name).await;
        let path = self
            .dir
            .path()
            .join(format!("sa-{namespace}-{name}.kubeconfig"));
        let user = format!("system:serviceaccount:{namespace}:{name}");
        write_kubeconfig(
            &path,
            &self.url,
            &self.pki.ca_pem,
            &user,
            &format!("token: {token}"),
            namespace,
        );
        path
    }

    /// Creates namespace `name` unless it exists; returns it.
    pub async fn create_namespace(&self, name: &str) -> Namespace {
        let api: Api<Namespace> = Api::all(self.client().await);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &ns).await {
            Ok(ns) => ns,
            Err(::kube::Error::Api(status)) if status.is_already_exists() => api
                .get(name)
                .await
                .unwrap_or_else(|e| panic!("get namespace {name}: {e}")),
            Err(e) => panic!("create namespace {name}: {e}"),
        }
    }

    /// Server-side applies (force, field manager [`FIELD_MANAGER`]) a CustomResourceDefinition,
    /// waits for its `Established` condition and until every served version can be listed.
    /// Returns the CRD as stored. Panics if its names are not accepted or on timeout.
    pub async fn apply_crd(&self, crd: &CustomResourceDefinition) -> CustomResourceDefinition {
        let client = self.client().await;
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let name = crd
            .metadata
            .name
            .clone()
            .expect("CustomResourceDefinition without metadata.name");
        let mut crd = crd.clone();
        crd.metadata.managed_fields = None;
        crd.metadata.resource_version = None;
        crd.metadata.uid = None;
        crd.metadata.creation_timestamp = None;
        crd.status = None;
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));

        let deadline = Instant::now() + self.timeout;
        let stored = loop {
            let current = api
                .get(&name)
                .await
                .unwrap_or_else(|e| panic!("get CRD {name}: {e}"));
            let conditions = current
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            let condition = |t: &str| conditions.iter().find(|c| c.type_ == t);
            if condition("Established").is_some_and(|c| c.status == "True") {
                break current;
            }
            if let Some(c) = condition("NamesAccepted").filter(|c| c.status == "False") {
                panic!("CRD {name}: names not accepted: {:?}", c.message);
            }
            if Instant::now() > deadline {
                panic!(
                    "CRD {name} not Established after {:?}; conditions: {conditions:?}",
                    self.timeout
                );
            }
            tokio::time::sleep(POLL).await;
        };

        let spec = &stored.spec;
        for version in spec.versions.iter().filter(|v| v.served) {
            let resource = ApiResource {
                group: spec.group.clone(),
                version: version.name.clone(),
                api_version: format!("{}/{}", spec.group, version.name),
                kind: spec.names.kind.clone(),
                plural: spec.names.plural.clone(),
            };
            let objects: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            loop {
                match objects.list(&ListParams::default().limit(1)).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        panic!("CRD {name}: cannot list {}: {e}", resource.api_version)
                    }
                    Err(_) => tokio::time::sleep(POLL).await,
                }
            }
        }
        stored
    }

    /// [`ApiServer::apply_crd`] for each CustomResourceDefinition of a (multi-document) YAML
    /// string, in order. Panics if a document is not a CRD or there is none.
    pub async fn apply_crd_yaml(&self, yaml: &str) -> Vec<CustomResourceDefinition> {
        let mut applied = Vec::new();
        for document in serde_yaml::Deserializer::from_str(yaml) {
            let value = serde_json::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("CRD YAML does not parse: {e}"));
            if value.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition = serde_json::from_value(value)
                .unwrap_or_else(|e| panic!("YAML document is not a CustomResourceDefinition: {e}"));
            applied.push(self.apply_crd(&crd).await);
        }
        assert!(!applied.is_empty(), "no CustomResourceDefinition in YAML");
        applied
    }

    /// Whether the kube-apiserver process is running (not stopped/killed, not exited).
    pub fn apiserver_running(&mut self) -> bool {
        self.apiserver
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Graceful stop: SIGTERM, then SIGKILL if it has not exited within the harness timeout.
    /// etcd keeps running, the port stays reserved. No-op if already stopped.
    pub fn stop_apiserver(&mut self) {
        let Some(mut child) = self.apiserver.take() else {
            return;
        };
        signal(&child, SIGTERM);
        let deadline = Instant::now() + self.timeout;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Abrupt stop (SIGKILL), like a crashed or OOM-killed API server. No-op if already stopped.
    pub fn kill_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts kube-apiserver again on the same port against the same etcd (same certificates and
    /// kubeconfig) and waits until it is ready. Panics (with log tails) on failure.
    pub fn start_apiserver(&mut self) {
        assert!(
            self.apiserver.is_none(),
            "start_apiserver: kube-apiserver is already running"
        );
        let bin = test_binary("kube-apiserver");
        if let Err(StartError::PortInUse(msg) | StartError::Fatal(msg)) = self.spawn_apiserver(&bin)
        {
            panic!("{msg}");
        }
    }

    /// [`ApiServer::stop_apiserver`] then [`ApiServer::start_apiserver`]: data in etcd survives,
    /// existing clients reconnect on their next request (watches end and must be restarted).
    pub fn restart_apiserver(&mut self) {
        self.stop_apiserver();
        self.start_apiserver();
    }

    /// The temp dir holding certificates (`pki/`), etcd data, logs and kubeconfigs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn apiserver_log_file(&self) -> PathBuf {
        self.dir.path().join("kube-apiserver.log")
    }

    pub fn etcd_log_file(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// PEM of the cluster CA.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// Memory/CPU of the running processes (kube-apiserver first, then etcd).
    pub fn usage(&self) -> Vec<ProcessUsage> {
        [("kube-apiserver", &self.apiserver), ("etcd", &self.etcd)]
            .into_iter()
            .filter_map(|(name, child)| process_usage(name, child.as_ref()?.id()))
            .collect()
    }

    // ----- internals -----

    fn anonymous_config(&self) -> Config {
        let mut config = Config::new(self.url.parse().expect("apiserver URL"));
        config.root_cert = Some(vec![self.pki.ca_der.clone()]);
        config
    }

    fn etcd_data_dir(&self) -> PathBuf {
        self.dir.path().join("etcd-data")
    }

    fn assign_ports(&mut self) {
        let etcd_client_port = reserve_port();
        self.etcd_peer_port = reserve_port();
        self.port = reserve_port();
        self.etcd_url = format!("http://127.0.0.1:{etcd_client_port}");
        self.url = format!("https://127.0.0.1:{}", self.port);
        write_kubeconfig(
            &self.kubeconfig,
            &self.url,
            &self.pki.ca_pem,
            "admin",
            &format!(
                "client-certificate-data: {}\n    client-key-data: {}",
                b64(&self.pki.admin_cert_pem),
                b64(&self.pki.admin_key_pem)
            ),
            "default",
        );
    }

    fn etcd_client_port(&self) -> u16 {
        self.etcd_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    fn release_ports(&mut self) {
        let mut ports = lock(&PORTS_IN_USE);
        for port in [self.etcd_client_port(), self.etcd_peer_port, self.port] {
            ports.remove(&port);
        }
    }

    fn kill_all(&mut self) {
        self.kill_apiserver();
        if let Some(mut child) = self.etcd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn spawn_etcd(&mut self, bin: &Path) -> Result<(), StartError> {
        let peer = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        let mut cmd = Command::new(bin);
        cmd.arg("--name=imageimport-test")
            .arg(flag("--data-dir=", self.etcd_data_dir()))
            .arg(format!("--listen-client-urls={}", self.etcd_url))
            .arg(format!("--advertise-client-urls={}", self.etcd_url))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=imageimport-test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");
        let log = self.etcd_log_file();
        let started = Instant::now();
        self.etcd = Some(spawn_logged(cmd, &log, "etcd")?);
        let health = format!("{}/health", self.etcd_url);
        let timeout = self.timeout;
        let child = self.etcd.as_mut().unwrap();
        let outcome = block_on(async move {
            let http = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("build reqwest client");
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("etcd exited ({status})"));
                }
                let last = match http.get(&health).send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        let body = resp.text().await.unwrap_or_default();
                        if status.is_success() && body.contains("\"health\":\"true\"") {
                            return Ok(());
                        }
                        format!("{status}: {body}")
                    }
                    Err(e) => e.to_string(),
                };
                if started.elapsed() > timeout {
                    return Err(format!("etcd not healthy after {timeout:?} (last: {last})"));
                }
                tokio::time::sleep(POLL).await;
            }
        });
        outcome.map_err(|msg| classify(msg, &[&log]))
    }

    fn spawn_apiserver(&mut self, bin: &Path) -> Result<(), StartError> {
        let pki = self.dir.path().join("pki");
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--etcd-servers={}", self.etcd_url))
            .arg(format!("--secure-port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(flag("--cert-dir=", pki.join("apiserver-cert-dir")))
            .arg(flag("--tls-cert-file=", pki.join("apiserver.crt")))
            .arg(flag("--tls-private-key-file=", pki.join("apiserver.key")))
            .arg(flag("--client-ca-file=", pki.join("ca.crt")))
            .arg(format!(
                "--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"
            ))
            .arg("--authorization-mode=RBAC")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
            .arg(flag("--service-account-key-file=", pki.join("sa.pub")))
            .arg(flag(
                "--service-account-signing-key-file=",
                pki.join("sa.key"),
            ))
            .arg("--allow-privileged=true")
            .arg("--enable-priority-and-fairness=false")
            .arg("--profiling=false")
            .args(&self.extra_args);
        let log = self.apiserver_log_file();
        let etcd_log = self.etcd_log_file();
        let started = Instant::now();
        self.apiserver = Some(spawn_logged(cmd, &log, "kube-apiserver")?);
        let base = self.url.clone();
        let ca = self.pki.ca_pem.clone().into_bytes();
        let identity = format!("{}{}", self.pki.admin_cert_pem, self.pki.admin_key_pem);
        let timeout = self.timeout;
        let child = self.apiserver.as_mut().unwrap();
        let outcome = block_on(async move {
            let http = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("CA PEM")])
                .identity(reqwest::Identity::from_pem(identity.as_bytes()).expect("admin PEM"))
                .build()
                .expect("build reqwest client");
            // /livez, then /readyz (etcd, informers, RBAC bootstrap), then the `default` namespace
            // that the bootstrap controller creates shortly after.
            let checks = ["/livez", "/readyz?verbose", "/api/v1/namespaces/default"];
            for check in checks {
                loop {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!("kube-apiserver exited ({status})"));
                    }
                    let last = match http.get(format!("{base}{check}")).send().await {
                        Ok(resp) if resp.status().is_success() => break,
                        Ok(resp) => {
                            let status = resp.status();
                            let body = resp.text().await.unwrap_or_default();
                            let failing: Vec<&str> = body
                                .lines()
                                .filter(|l| l.contains("failed") || l.starts_with("[-]"))
                                .collect();
                            if failing.is_empty() {
                                format!("GET {check}: {status}: {body}")
                            } else {
                                format!("GET {check}: {status}: {}", failing.join("; "))
                            }
                        }
                        Err(e) => format!("GET {check}: {e}"),
                    };
                    if started.elapsed() > timeout {
                        return Err(format!(
                            "kube-apiserver not ready after {timeout:?} (last: {last})"
                        ));
                    }
                    tokio::time::sleep(POLL).await;
                }
            }
            Ok(())
        });
        outcome.map_err(|msg| classify(msg, &[&log, &etcd_log]))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill_all();
        self.release_ports();
        if std::env::var_os("IMAGEIMPORT_KEEP_TEST_KUBE").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("kube harness: keeping {}", self.dir.path().display());
        }
    }
}

/// `$IMAGEIMPORT_TESTBIN_DIR`, default `$HOME/.cache/imageimport/testbin`.
pub fn testbin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IMAGEIMPORT_TESTBIN_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set");
    PathBuf::from(home).join(".cache/imageimport/testbin")
}

fn test_binary(name: &str) -> PathBuf {
    let path = testbin_dir().join(name);
    if !path.is_file() {
        panic!(
            "{} not found (IMAGEIMPORT_TESTBIN_DIR={:?}): run hack/build-test-bins.sh",
            path.display(),
            std::env::var_os("IMAGEIMPORT_TESTBIN_DIR")
        );
    }
    path
}

fn harness_timeout() -> Duration {
    let secs = std::env::var("IMAGEIMPORT_TEST_KUBE_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_TIMEOUT_SECS);
    Duration::from_secs(secs)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn flag(name: &str, path: PathBuf) -> OsString {
    let mut s = OsString::from(name);
    s.push(path.as_os_str());
    s
}

fn b64(data: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A loopback port that was free a moment ago and is not reserved by this process.
fn reserve_port() -> u16 {
    for _ in 0..1000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        drop(listener);
        if lock(&PORTS_IN_USE).insert(port) {
            return port;
        }
    }
    panic!("no free loopback port");
}

/// Runs `fut` to completion on a private current-thread runtime in a scoped helper thread, so
/// blocking entry points work both from sync code and from inside a tokio runtime.
fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build tokio runtime")
                    .block_on(fut)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Turns a startup failure into an error message with the tails of the logs.
fn classify(msg: String, logs: &[&Path]) -> StartError {
    let mut text = msg;
    let mut port_in_use = false;
    for log in logs {
        let tail = log_tail(log);
        port_in_use |= tail.contains("address already in use");
        text.push_str(&format!(
            "\n----- last {LOG_TAIL_LINES} lines of {} -----\n{tail}",
            log.display()
        ));
    }
    if port_in_use {
        StartError::PortInUse(text)
    } else {
        StartError::Fatal(text)
    }
}

fn log_tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::from("(no log)");
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    user_fields: &str,
    namespace: &str,
) {
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: imageimport-test
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: \"{user}\"
  user:
    {user_fields}
contexts:
- name: imageimport-test
  context:
    cluster: imageimport-test
    user: \"{user}\"
    namespace: {namespace}
current-context: imageimport-test
",
        ca = b64(ca_pem),
    );
    // Concurrent test nodes rewrite the same service-account kubeconfig: write aside and rename,
    // so a reader never sees a half-written file.
    let tmp = path.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        NEXT_TMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

static NEXT_TMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// CA, apiserver serving certificate, admin client certificate and service-account key pair,
/// written under `<root>/pki`.
fn generate_pki(root: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, date_time_ymd,
    };

    let dir = root.join("pki");
    fs::create_dir_all(dir.join("apiserver-cert-dir")).expect("create pki dir");
    let write = |name: &str, data: &str| {
        fs::write(dir.join(name), data).unwrap_or_else(|e| panic!("write pki/{name}: {e}"));
    };

    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "imageimport test cluster CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = date_time_ymd(2000, 1, 1);
    ca_params.not_after = date_time_ymd(2099, 12, 31);
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |sans: Vec<String>, cn: &str, org: Option<&str>, eku: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(sans).expect("leaf SANs");
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(org) = org {
            params
                .distinguished_name
                .push(DnType::OrganizationName, org);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![eku];
        params.use_authority_key_identifier_extension = true;
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(2099, 12, 31);
        let cert = params.signed_by(&key, &issuer).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    };

    let serving_sans = [
        "127.0.0.1",
        "::1",
        "localhost",
        "10.0.0.1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ];
    let (serving_cert, serving_key) = leaf(
        serving_sans.iter().map(|s| s.to_string()).collect(),
        "kube-apiserver",
        None,
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (admin_cert_pem, admin_key_pem) = leaf(
        Vec::new(),
        "admin",
        Some("system:masters"),
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let sa_key = KeyPair::generate().expect("service-account key (ECDSA P-256)");

    let ca_pem = ca_cert.pem();
    write("ca.crt", &ca_pem);
    write("apiserver.crt", &serving_cert);
    write("apiserver.key", &serving_key);
    write("admin.crt", &admin_cert_pem);
    write("admin.key", &admin_key_pem);
    write("sa.key", &sa_key.serialize_pem());
    write("sa.pub", &sa_key.public_key_pem());
    Pki {
        ca_der: ca_cert.der().to_vec(),
        ca_pem,
        admin_cert_pem,
        admin_key_pem,
    }
}

// ----- process handling -----

const PR_SET_PDEATHSIG: c_int = 1;
const SIGKILL: c_int = 9;
const SIGTERM: c_int = 15;
const SC_CLK_TCK: c_int = 2;

unsafe extern "C" {
    fn prctl(option: c_int, ...) -> c_int;
    fn getppid() -> c_int;
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn sysconf(name: c_int) -> c_long;
}

fn signal(child: &Child, sig: c_int) {
    // SAFETY: plain kill(2) on our own, not yet reaped child.
    unsafe {
        kill(child.id() as c_int, sig);
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` (stdin null, stdout+stderr appended to `log`) from the harness' spawner thread.
fn spawn_logged(mut cmd: Command, log: &Path, name: &str) -> Result<Child, StartError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
    let file2 = file.try_clone().expect("clone log file handle");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(file2));
    spawn_child(cmd).map_err(|e| StartError::Fatal(format!("spawn {name}: {e}")))
}

/// Spawns from one thread that lives as long as the process, with `PR_SET_PDEATHSIG=SIGKILL`:
/// the signal fires when the *spawning thread* exits, so spawning from short-lived test or
/// blocking-pool threads would kill the children early.
fn spawn_child(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let parent = std::process::id() as c_int;
    // SAFETY: the closure only makes async-signal-safe syscalls (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if prctl(PR_SET_PDEATHSIG, SIGKILL as c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            if getppid() != parent {
                return Err(io::Error::other("test process already exited"));
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("kube-harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, reply_tx))
        .expect("spawner thread is gone");
    reply_rx.recv().expect("spawner thread is gone")
}

fn process_usage(name: &'static str, pid: u32) -> Option<ProcessUsage> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "(comm)": state is index 0, utime 11, stime 12.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { sysconf(SC_CLK_TCK) }.max(1) as u64;
    Some(ProcessUsage {
        name,
        pid,
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
        cpu: Duration::from_millis(ticks * 1000 / hz),
    })
}
