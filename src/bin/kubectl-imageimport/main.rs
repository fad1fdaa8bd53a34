//! `kubectl imageimport upload FILE --to REPO[:TAG]`: create an upload-source ImageImport (or
//! use `--name`), upload the archive to the upload service (tus 1.0, resumed when run again),
//! wait until it is imported and print `REF@DIGEST`.
//!
//! Without `--upload-url` the upload service is found by `status.upload.url`, or, where that
//! address does not answer from here, through a port-forward to its Pod (`endpoint.rs`).
//!
//! `kubectl imageimport ui`: the upload service's web console on this machine, signed in with
//! the kubeconfig's own credentials (`ui.rs`).
//!
//! Exit status: 0 imported; 1 usage or configuration; 2 the upload failed (run again to
//! resume); 3 the import failed (the archive or the spec: see `kubectl describe imageimport`).

mod endpoint;
mod ui;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use imageimport::api::ImageImport;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "kubectl-imageimport",
    version,
    about = "Upload image archives into ImageImports, or open the web console signed in as you"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Upload a docker-save or OCI archive into the registry through an ImageImport.
    Upload(UploadArgs),
    /// Serve the web console on 127.0.0.1 with this kubeconfig's credentials and open it.
    Ui(ui::UiArgs),
}

#[derive(clap::Args)]
struct UploadArgs {
    /// The archive (.tar, .tar.gz, .tar.zst).
    file: PathBuf,
    /// Target `registry[:port]/repository[:tag]`.
    #[arg(long)]
    to: String,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    #[arg(long)]
    context: Option<String>,
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Secret (type kubernetes.io/dockerconfigjson) with the registry credentials.
    #[arg(long)]
    secret: Option<String>,
    /// Use (or create) the ImageImport of this name. Default: derived from the file, so a run
    /// again after an interruption finds the same import and resumes.
    #[arg(long)]
    name: Option<String>,
    /// Plain HTTP to the registry.
    #[arg(long)]
    insecure: bool,
    /// The upload service's base URL, instead of the one `status.upload.url` gives.
    #[arg(long)]
    upload_url: Option<String>,
    /// Where the upload service's Pods are, for a port-forward when `status.upload.url` does
    /// not answer from here (the chart's release namespace).
    #[arg(long, default_value = "imageimport-system")]
    upload_namespace: String,
    /// Bytes per PATCH request (behind a proxy's body-size limit); default: one request.
    #[arg(long)]
    chunk_size: Option<u64>,
    /// Longest wait for the import after the last byte, in seconds.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
}

/// Why the plugin stopped.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Usage(String),
    #[error("upload failed: {0} (run the same command again to resume)")]
    Upload(String),
    #[error("import failed ({reason}): {message}")]
    Import { reason: String, message: String },
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 1,
            Failure::Upload(_) => 2,
            Failure::Import { .. } => 3,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = rt.block_on(async {
        match cli.command {
            Cmd::Upload(args) => upload(args).await,
            Cmd::Ui(args) => ui::run(args).await.map(|()| Vec::new()),
        }
    });
    match result {
        Ok(refs) => {
            for r in refs {
                println!("{r}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kubectl-imageimport: {e}");
            ExitCode::from(e.code())
        }
    }
}

/// The kubeconfig's bearer token for the upload service (a static token, a token file, or an
/// exec credential plugin's output); client certificates cannot be forwarded.
async fn bearer_token(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<String, Failure> {
    let kc = match kubeconfig {
        Some(p) => Kubeconfig::read_from(p),
        None => Kubeconfig::read(),
    }
    .map_err(|e| Failure::Usage(format!("kubeconfig: {e}")))?;
    let context_name = context
        .map(str::to_string)
        .or(kc.current_context.clone())
        .ok_or_else(|| Failure::Usage("kubeconfig has no current context".into()))?;
    let context = kc
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| Failure::Usage(format!("no context {context_name} in the kubeconfig")))?;
    let user = context.user.unwrap_or_default();
    let auth = kc
        .auth_infos
        .iter()
        .find(|a| a.name == user)
        .and_then(|a| a.auth_info.clone())
        .unwrap_or_default();
    use secrecy::ExposeSecret;
    if let Some(t) = &auth.token {
        return Ok(t.expose_secret().to_string());
    }
    if let Some(f) = &auth.token_file {
        return std::fs::read_to_string(f)
            .map(|t| t.trim().to_string())
            .map_err(|e| Failure::Usage(format!("token file {f}: {e}")));
    }
    if let Some(exec) = &auth.exec {
        let cmd = exec
            .command
            .clone()
            .ok_or_else(|| Failure::Usage("exec credential plugin without a command".into()))?;
        let mut c = tokio::process::Command::new(&cmd);
        c.args(exec.args.clone().unwrap_or_default());
        for e in exec.env.clone().unwrap_or_default() {
            if let (Some(k), Some(v)) = (e.get("name"), e.get("value")) {
                c.env(k, v);
            }
        }
        let out = c
            .output()
            .await
            .map_err(|e| Failure::Usage(format!("exec credential plugin {cmd}: {e}")))?;
        let cred: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| Failure::Usage(format!("exec credential plugin {cmd}: {e}")))?;
        if let Some(t) = cred["status"]["token"].as_str() {
            return Ok(t.to_string());
        }
    }
    Err(Failure::Usage(format!(
        "the kubeconfig user {user:?} has no bearer token (a client certificate cannot be \
         forwarded to the upload service): use a context with a token, an OIDC/exec plugin, or \
         a ServiceAccount token (`kubectl create token <account>` for an account allowed to \
         create imageimports/upload)"
    )))
}

/// `registry/repo[:tag]` → (repository, tag).
fn split_target(to: &str) -> (String, Option<String>) {
    let last = to.rsplit('/').next().unwrap_or(to);
    match last.rsplit_once(':') {
        Some((_, tag)) if !to.ends_with(':') && to.contains('/') => {
            let repo = &to[..to.len() - tag.len() - 1];
            (repo.to_string(), Some(tag.to_string()))
        }
        _ => (to.to_string(), None),
    }
}

/// A name for the file's import: the same file (path, size, mtime) gives the same name.
fn derived_name(file: &Path) -> Result<String, Failure> {
    use sha2::{Digest as _, Sha256};
    let meta =
        std::fs::metadata(file).map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?;
    let abs = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let mut h = Sha256::new();
    h.update(abs.to_string_lossy().as_bytes());
    h.update(meta.len().to_le_bytes());
    if let Ok(m) = meta.modified()
        && let Ok(d) = m.duration_since(std::time::UNIX_EPOCH)
    {
        h.update(d.as_nanos().to_le_bytes());
    }
    let stem: String = file
        .file_name()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let stem = stem.trim_matches('-');
    let stem = if stem.is_empty() { "upload" } else { stem };
    Ok(format!("{stem}-{}", &hex::encode(h.finalize())[..8]))
}

/// A client of the kubeconfig's context.
async fn client(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<kube::Client, Failure> {
    let config = config(kubeconfig, context).await?;
    kube::Client::try_from(config).map_err(|e| Failure::Usage(format!("client: {e}")))
}

async fn config(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<kube::Config, Failure> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    match kubeconfig {
        Some(p) => {
            let kc = Kubeconfig::read_from(p).map_err(|e| Failure::Usage(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &options).await
        }
        None => kube::Config::from_kubeconfig(&options).await,
    }
    .map_err(|e| Failure::Usage(format!("kubeconfig: {e}")))
}

async fn upload(args: UploadArgs) -> Result<Vec<String>, Failure> {
    let config = config(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client =
        kube::Client::try_from(config).map_err(|e| Failure::Usage(format!("client: {e}")))?;
    let token = bearer_token(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let api: Api<ImageImport> = Api::namespaced(client.clone(), &ns);
    let name = match &args.name {
        Some(n) => n.clone(),
        None => derived_name(&args.file)?,
    };
    let length = std::fs::metadata(&args.file)
        .map_err(|e| Failure::Usage(format!("{}: {e}", args.file.display())))?
        .len();

    let kube_err = |e: kube::Error| Failure::Usage(format!("Kubernetes API: {e}"));
    if api.get_opt(&name).await.map_err(kube_err)?.is_none() {
        let (repository, tag) = split_target(&args.to);
        let mut target = json!({"repository": repository, "insecure": args.insecure});
        if let Some(t) = tag {
            target["tags"] = json!([t]);
        }
        if let Some(s) = &args.secret {
            target["credentialsSecretRef"] = json!({"name": s});
        }
        let obj = json!({
            "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"source": {"upload": {}}, "target": target}
        });
        api.patch(
            &name,
            &PatchParams::apply("kubectl-imageimport"),
            &Patch::Apply(&obj),
        )
        .await
        .map_err(kube_err)?;
        eprintln!("created ImageImport {ns}/{name}");
    }

    let mut endpoint = wait_endpoint(&api, &name, args.upload_url.as_deref()).await?;
    // Held until the upload is sent: a port-forward's listener lives as long as it.
    let mut reached = None;
    if args.upload_url.is_none() {
        let base = endpoint::base_of(&endpoint).to_string();
        let ep = endpoint::resolve(&client, Some(&base), &args.upload_namespace).await?;
        if let Some(pod) = &ep.forwarded_to {
            eprintln!(
                "{base} does not answer from here: port-forward to {pod} on {}",
                ep.base
            );
        }
        endpoint = format!("{}{}", ep.base, &endpoint[base.len()..]);
        reached = Some(ep);
    }
    eprintln!("uploading {} to {endpoint}", args.file.display());
    send(&endpoint, &token, &args.file, length, args.chunk_size).await?;
    drop(reached);
    eprintln!("upload complete; waiting for the import (Ctrl-C is safe: it goes on)");
    wait_imported(&api, &name, Duration::from_secs(args.timeout)).await
}

/// The creation endpoint, once the import waits for its upload.
async fn wait_endpoint(
    api: &Api<ImageImport>,
    name: &str,
    base: Option<&str>,
) -> Result<String, Failure> {
    loop {
        let obj = api
            .get(name)
            .await
            .map_err(|e| Failure::Usage(format!("Kubernetes API: {e}")))?;
        if obj.spec.source.upload.is_none() {
            return Err(Failure::Usage(format!(
                "ImageImport {name} has no spec.source.upload"
            )));
        }
        if let Some(f) = final_failure(&obj) {
            return Err(f);
        }
        let url = obj
            .status
            .as_ref()
            .and_then(|s| s.upload.as_ref())
            .and_then(|u| u.url.clone());
        if let Some(url) = url {
            return Ok(match base {
                Some(b) => imageimport::controller::upload::endpoint(b, &obj),
                None => url,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A failure that waits for a spec change (not a wait or a retry).
fn final_failure(obj: &ImageImport) -> Option<Failure> {
    let st = obj.status.as_ref()?;
    let generation = obj.metadata.generation;
    // Failed for good: kstatus' Stalled condition, for this generation.
    let stalled = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled" && c.status == "True")?;
    (st.observed_generation == generation && stalled.observed_generation == generation).then(|| {
        Failure::Import {
            reason: stalled.reason.clone(),
            message: stalled.message.clone(),
        }
    })
}

fn tus(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
) -> reqwest::RequestBuilder {
    client
        .request(method, url)
        .bearer_auth(token)
        .header("Tus-Resumable", "1.0.0")
}

async fn upload_error(resp: reqwest::Response) -> Failure {
    let status = resp.status();
    let reason = resp
        .headers()
        .get("imageimport-reason")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let text = resp.text().await.unwrap_or_default().trim().to_string();
    match (status.as_u16(), reason) {
        (422, Some(reason)) => Failure::Import {
            reason,
            message: text,
        },
        (401, _) => Failure::Upload(format!("401: {text} (is the kubeconfig token valid?)")),
        (403, _) => Failure::Upload(format!("403: {text}")),
        (code, _) => Failure::Upload(format!("HTTP {code}: {text}")),
    }
}

/// Create (or find again) the upload, ask where it stands, and send the rest; on a broken
/// request ask again and continue (a few times).
async fn send(
    endpoint: &str,
    token: &str,
    file: &Path,
    length: u64,
    chunk: Option<u64>,
) -> Result<(), Failure> {
    let client = reqwest::Client::new();
    let net = |e: reqwest::Error| Failure::Upload(e.to_string());
    let resp = tus(&client, reqwest::Method::POST, endpoint, token)
        .header("Upload-Length", length)
        .send()
        .await
        .map_err(net)?;
    if resp.status() != reqwest::StatusCode::CREATED {
        return Err(upload_error(resp).await);
    }
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Failure::Upload("no Location in the creation answer".into()))?;
    let url = url::Url::parse(endpoint)
        .and_then(|e| e.join(location))
        .map_err(|e| Failure::Upload(e.to_string()))?
        .to_string();
    let bar = indicatif::ProgressBar::new(length);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("template"),
    );
    let mut failures = 0;
    loop {
        let head = tus(&client, reqwest::Method::HEAD, &url, token)
            .send()
            .await
            .map_err(net)?;
        if !head.status().is_success() {
            return Err(upload_error(head).await);
        }
        let offset: u64 = head
            .headers()
            .get("upload-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Failure::Upload("no Upload-Offset".into()))?;
        bar.set_position(offset);
        if offset >= length {
            bar.finish_and_clear();
            return Ok(());
        }
        let size = chunk.unwrap_or(length).min(length - offset);
        let progress = bar.clone();
        let stream = file_chunks(file, offset, size)
            .map_err(|e| Failure::Usage(format!("{}: {e}", file.display())))?
            .inspect(move |c| {
                if let Ok(b) = c {
                    progress.inc(b.len() as u64);
                }
            });
        let sent = tus(&client, reqwest::Method::PATCH, &url, token)
            .header("Upload-Offset", offset)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/offset+octet-stream",
            )
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => failures = 0,
            Ok(r) if matches!(r.status().as_u16(), 409 | 423 | 500..=599) => failures += 1,
            Ok(r) => return Err(upload_error(r).await),
            Err(e) => {
                failures += 1;
                if failures > 5 {
                    return Err(net(e));
                }
            }
        }
        if failures > 5 {
            return Err(Failure::Upload("the upload service keeps failing".into()));
        }
        if failures > 0 {
            tokio::time::sleep(Duration::from_secs(1 << failures.min(4))).await;
        }
    }
}

/// Bytes read per chunk of a PATCH body: large enough that the file is read and the socket
/// written in few system calls (hyper sends a chunk this size without copying it).
const READ_CHUNK: usize = 1 << 20;

/// `size` bytes of `file` from `offset` on, read on a thread of their own a few chunks ahead
/// of the request: one copy out of the page cache, and no blocking-pool round trip per read
/// (which made tokio's file reader cost more CPU than sending the bytes).
fn file_chunks(
    file: &Path,
    offset: u64,
    size: u64,
) -> std::io::Result<impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + use<>> {
    use std::io::{Read as _, Seek as _};
    let mut f = std::fs::File::open(file)?;
    f.seek(std::io::SeekFrom::Start(offset))?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    std::thread::spawn(move || {
        let mut f = f.take(size);
        loop {
            // Into spare capacity: no zeroing of a chunk that is about to be overwritten.
            let mut chunk = Vec::with_capacity(READ_CHUNK);
            let item = match (&mut f).take(READ_CHUNK as u64).read_to_end(&mut chunk) {
                Ok(0) => return,
                Ok(_) => Ok(bytes::Bytes::from(chunk)),
                Err(e) => Err(e),
            };
            let last = item.as_ref().map_or(true, |c| c.len() < READ_CHUNK);
            // The request was given up (its receiver dropped): stop reading.
            if tx.blocking_send(item).is_err() || last {
                return;
            }
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Wait for Ready=True (printing the pushed references) or a final failure.
async fn wait_imported(
    api: &Api<ImageImport>,
    name: &str,
    timeout: Duration,
) -> Result<Vec<String>, Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let obj = api
            .get(name)
            .await
            .map_err(|e| Failure::Usage(format!("Kubernetes API: {e}")))?;
        let st = obj.status.clone().unwrap_or_default();
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
        if st.observed_generation == obj.metadata.generation
            && ready.is_some_and(|c| c.status == "True")
        {
            return Ok(st
                .images
                .iter()
                .flat_map(|i| i.refs.iter().map(move |r| format!("{r}@{}", i.digest)))
                .collect());
        }
        if let Some(f) = final_failure(&obj) {
            return Err(f);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Failure::Import {
                reason: "Timeout".into(),
                message: format!(
                    "not Ready after {} s: {:?}",
                    timeout.as_secs(),
                    ready.map(|c| (&c.reason, &c.message))
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_repository_and_tag() {
        assert_eq!(
            split_target("registry:5000/shop/web:1.4"),
            ("registry:5000/shop/web".into(), Some("1.4".into()))
        );
        assert_eq!(
            split_target("registry:5000/shop/web"),
            ("registry:5000/shop/web".into(), None)
        );
    }
}
