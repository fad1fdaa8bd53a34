//! The `imageimport` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use imageimport::archive::formats::Platform;
use imageimport::pipeline::{
    self, Codec, CompressionPolicy, HttpOptions, ImportError, ImportOptions, Location, Progress,
    Reuse, Selection,
};
use imageimport::registry::{RegistryOptions, Target};

/// Exit status, the same for every command (README.md, "Exit status").
const EXIT_STATUS: &str = "\
Exit status:
  0   success (inspect: the archive verifies)
  1   a permanent failure: the archive, the target, the credentials or the registry's
      answer must change first (inspect: the archive does not verify)
  2   usage: invalid arguments
  70  an internal error (a bug: please report it)
  75  a transient failure (the registry or the source is unavailable): trying again later
      may succeed";

/// EX_USAGE-like status for invalid arguments (clap's own, too), EX_SOFTWARE for internal
/// errors, EX_TEMPFAIL (sysexits.h) for what is worth trying again: scripts and schedulers
/// retry on 75 only.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_INTERNAL: u8 = 70;
const EXIT_TRANSIENT: u8 = 75;

fn exit_code(e: &ImportError) -> u8 {
    match e {
        ImportError::Usage(_) => EXIT_USAGE,
        // The operator retries these (they may pass); the command says what they are.
        ImportError::Internal(_) => EXIT_INTERNAL,
        e if e.is_transient() => EXIT_TRANSIENT,
        _ => EXIT_FAILED,
    }
}

#[derive(Parser)]
#[command(
    name = "imageimport",
    version,
    about = "Import docker/OCI image archives into registries",
    after_help = EXIT_STATUS
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Push the image(s) of an archive (file, `-` for stdin, or http(s) URL) to TARGET
    /// (`registry[:port]/repository[:tag]`).
    #[command(after_help = EXIT_STATUS)]
    Push(Box<PushArgs>),
    /// Print the ImageImport CustomResourceDefinition (YAML).
    Crd,
    /// Run the Kubernetes controller.
    Controller(Box<ControllerArgs>),
    /// Run one import inside a worker Job (started by the controller).
    Worker,
    /// Run the upload service (tus 1.0 uploads into ImageImports with `source.upload`).
    UploadServer(UploadServerArgs),
    /// List the images, tags, IDs and layers of an archive, and verify it.
    #[command(after_help = EXIT_STATUS)]
    Inspect {
        /// Print JSON on stdout, also when the archive cannot be read (then with `error`).
        #[arg(long)]
        json: bool,
        /// CA bundle for an https archive URL.
        #[arg(long)]
        source_ca_file: Option<PathBuf>,
        /// Predict the digest of a push of only this platform (as `push --platform`).
        #[arg(long)]
        platform: Option<Platform>,
        /// Predict the digest of a push with this layer compression (as `push --compression`).
        #[arg(long)]
        compression: Option<Codec>,
        /// The archive: a file, `-` for standard input, or an http(s) URL.
        #[arg(value_name = "ARCHIVE")]
        archive: String,
    },
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// Container image of worker Jobs (normally this controller's own image).
    #[arg(long, env = "IMAGEIMPORT_WORKER_IMAGE")]
    worker_image: String,
    #[arg(long, env = "IMAGEIMPORT_WORKER_IMAGE_PULL_POLICY")]
    worker_image_pull_policy: Option<String>,
    /// ServiceAccount the workers run as (created in each namespace that has imports).
    #[arg(long, default_value = "imageimport-worker")]
    worker_service_account: String,
    /// Imports running at once, over all namespaces (a free slot goes to the namespace
    /// running the fewest imports).
    #[arg(long, default_value_t = 4)]
    max_concurrent_imports: usize,
    /// Imports running at once in one namespace (0: only the fair queue limits it).
    #[arg(long, default_value_t = 0)]
    max_concurrent_imports_per_namespace: usize,
    /// Reconciles running at once.
    #[arg(long, default_value_t = 16)]
    reconcile_concurrency: u16,
    #[arg(long, default_value = "500m")]
    worker_cpu_request: String,
    #[arg(long)]
    worker_cpu_limit: Option<String>,
    #[arg(long, default_value = "64Mi")]
    worker_memory_request: String,
    #[arg(long, default_value = "256Mi")]
    worker_memory_limit: String,
    /// Policy file (YAML) limiting repositories and URL hosts per namespace; re-read on use.
    #[arg(long, env = "IMAGEIMPORT_POLICY_FILE")]
    policy_file: Option<PathBuf>,
    /// Address of the /metrics, /healthz and /readyz listener.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_bind_address: std::net::SocketAddr,
    /// Run as one of several replicas: only the holder of a coordination Lease reconciles.
    #[arg(long)]
    leader_elect: bool,
    /// Namespace of the Lease (default: this Pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    #[arg(long, default_value = "imageimport-controller")]
    leader_election_lease: String,
    /// Seconds a leader's Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// URL sources may use link-local addresses (169.254.0.0/16, fe80::/10).
    #[arg(long)]
    url_allow_link_local: bool,
    /// URL sources may not use private or loopback addresses.
    #[arg(long)]
    url_deny_private: bool,
    /// URL sources may use loopback addresses (in a Pod: the worker itself and its sidecars;
    /// off by default).
    #[arg(long)]
    url_allow_loopback: bool,
    /// Largest archive a URL source may deliver, in bytes (0: no limit).
    #[arg(long, default_value_t = 0)]
    url_max_bytes: u64,
    /// Longest a URL source's download may take, in seconds (0: bounded only by
    /// --worker-deadline-seconds; a stalled body fails after 120 s in any case).
    #[arg(long, default_value_t = 0)]
    url_timeout_seconds: u64,
    /// Workers send each blob in upload requests of at most this size (e.g. 64M), so that a
    /// broken upload continues from the last accepted request; default: one request per blob.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    worker_upload_chunk_size: Option<u64>,
    /// Longest an import may run before its Job is stopped (upload sources: plus the
    /// upload expiry).
    #[arg(long, default_value_t = 6 * 3600)]
    worker_deadline_seconds: i64,
    /// Worker Pod settings as JSON: annotations, nodeSelector, tolerations,
    /// priorityClassName, imagePullSecrets, env (e.g. HTTPS_PROXY for registry connections).
    #[arg(long, value_name = "JSON", value_parser = parse_worker_pod)]
    worker_pod: Option<imageimport::controller::job::WorkerPodSettings>,
    /// Seconds a finished worker Job (and its Pod and log) is kept.
    #[arg(long, default_value_t = 24 * 3600)]
    worker_ttl_seconds: i32,
    /// Attempts per generation; after the last transient failure the import is Stalled.
    #[arg(long, default_value_t = 8)]
    max_attempts: u32,
    /// Base URL of the upload service as users reach it (status.upload.url is
    /// <URL>/uploads/<namespace>/<name>); default: --upload-internal-url.
    #[arg(long, env = "IMAGEIMPORT_UPLOAD_URL")]
    upload_url: Option<String>,
    /// Base URL of the upload service inside the cluster, which workers pull uploads from.
    #[arg(long, env = "IMAGEIMPORT_UPLOAD_INTERNAL_URL")]
    upload_internal_url: Option<String>,
    /// An upload that receives no byte for this long ends Ready=False, UploadExpired.
    #[arg(long, default_value_t = 24 * 3600)]
    upload_expiry_seconds: u64,
}

#[derive(clap::Args)]
struct UploadServerArgs {
    /// Address to listen on (tus endpoints under /uploads/, workers under /internal/).
    #[arg(long, default_value = "0.0.0.0:8080")]
    bind_address: std::net::SocketAddr,
    /// ServiceAccount the workers run as (the controller's --worker-service-account).
    #[arg(long, default_value = "imageimport-worker")]
    worker_service_account: String,
    /// Accept worker tokens not bound to a Pod (any Pod of the worker ServiceAccount of that
    /// namespace may then pull its uploads). Off: only the Pod of the import's current Job.
    #[arg(long)]
    allow_unbound_worker_tokens: bool,
    /// The controller's cluster policy file: the console offers the repositories it allows.
    #[arg(long)]
    policy_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct PushArgs {
    /// Talk plain (unencrypted) HTTP to the registry. Registries on this machine
    /// (localhost, 127.0.0.0/8, ::1) are asked over HTTPS first and over HTTP when they answer
    /// in plain HTTP, without this flag.
    #[arg(long)]
    insecure: bool,
    /// CA bundle (PEM) for the registry's certificate.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Docker config.json with registry credentials (default: $DOCKER_CONFIG, ~/.docker).
    #[arg(long)]
    auth_file: Option<PathBuf>,
    /// Push only this image of a multi-image archive (saved tag or image ID).
    #[arg(long, conflicts_with = "all")]
    image: Option<String>,
    /// Push every image under TARGET, keeping each repository's path.
    #[arg(long)]
    all: bool,
    /// Push only this platform (os/arch[/variant]) of a multi-platform archive.
    #[arg(long)]
    platform: Option<Platform>,
    /// Layer compression: gzip, zstd or none. Default: layers stored compressed are pushed
    /// as stored, uncompressed ones gzip-compressed. Given, every layer is pushed with it.
    #[arg(long, value_name = "gzip|zstd|none")]
    compression: Option<Codec>,
    /// Which blobs already in the registry may stand for the archive's layers: `exact`
    /// (default) only blobs this encoder wrote, so the manifest digest is the one a cold push
    /// gives; `any-encoding` also other tools' blobs of the same codec: fewer bytes sent, a
    /// digest that depends on the registry. Both read each blob back, and it must hold the
    /// layer byte for byte. `trust-registry`: as `exact`, but the blobs are taken on the word
    /// of the registry's manifests, not read back (an upgrade several times faster; whoever
    /// can push a manifest into the repository decides which blob stands for a layer).
    #[arg(
        long,
        value_name = "exact|any-encoding|trust-registry",
        default_value = "exact"
    )]
    reuse: Reuse,
    /// Refuse unless the image ID (config digest) is this.
    #[arg(long)]
    expect_image_id: Option<String>,
    /// Refuse unless the archive file's sha256 is this.
    #[arg(long)]
    expect_sha256: Option<String>,
    /// CA bundle for an https archive URL.
    #[arg(long)]
    source_ca_file: Option<PathBuf>,
    /// Send blobs in requests of at most SIZE (e.g. 64M; 16M at most from stdin or a URL,
    /// whose unacknowledged request is kept in memory): behind a proxy that limits request
    /// bodies, or so that a broken upload continues from the last accepted request even on a
    /// registry that drops half-received ones. Default: one request per blob.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    upload_chunk_size: Option<u64>,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
    /// The archive: a file (`docker save`, `podman save`, an OCI archive; plain tar, or
    /// compressed whole with gzip or zstd), `-` for standard input, or an http(s) URL.
    #[arg(value_name = "ARCHIVE")]
    archive: String,
    /// Where to push: `REGISTRY[:PORT]/REPOSITORY[:TAG]`, e.g. `127.0.0.1:5000/shop/web` or
    /// `registry.example.com/team/web:1.4`. Without a tag, the image's saved tag is used.
    /// With --all, a prefix (no tag): each image goes to TARGET/<its saved repository>.
    #[arg(value_name = "TARGET")]
    target: String,
}

/// A byte count with an optional binary suffix: 1048576, 1024K, 64M, 1G.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let shift = match unit
        .trim_end_matches(['i', 'B'])
        .to_ascii_uppercase()
        .as_str()
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => {
            return Err(format!(
                "{s:?}: expected a size such as 1048576, 512K, 64M or 1G"
            ));
        }
    };
    let n: u64 = digits.parse().map_err(|_| format!("{s:?}: not a size"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json_logs = std::env::var("IMAGEIMPORT_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "imageimport=info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into log files or a Pod's log.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json_logs {
        builder.json().init();
    } else {
        builder.init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        match cli.command {
            Command::Push(args) => push(*args).await,
            Command::Inspect {
                json,
                source_ca_file,
                platform,
                compression,
                archive,
            } => {
                let options = pipeline::inspect::InspectOptions {
                    platform,
                    compression: compression
                        .map(CompressionPolicy::Force)
                        .unwrap_or_default(),
                };
                inspect(json, source_ca_file, options, archive).await
            }
            Command::Crd => {
                print!("{}", imageimport::api::crd_yaml());
                Ok(ExitCode::SUCCESS)
            }
            Command::Worker => {
                imageimport::front_end::set(imageimport::front_end::FrontEnd::Operator);
                Ok(ExitCode::from(
                    imageimport::controller::worker::run().await as u8,
                ))
            }
            Command::Controller(args) => controller(*args).await,
            Command::UploadServer(args) => upload_server(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imageimport: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

async fn push(args: PushArgs) -> Result<ExitCode, ImportError> {
    let source: Location = args.archive.parse().map_err(ImportError::Usage)?;
    let target = Target::parse(&args.target).map_err(|e| ImportError::Usage(e.to_string()))?;
    let mut opts = ImportOptions::new(source, target);
    opts.selection = match (args.image, args.all) {
        (Some(i), _) => Selection::Image(i),
        (None, true) => Selection::All,
        (None, false) => Selection::Only,
    };
    opts.platform = args.platform;
    opts.compression = match args.compression {
        Some(c) => CompressionPolicy::Force(c),
        None => CompressionPolicy::default(),
    };
    opts.expect_image_id = args.expect_image_id;
    opts.expect_sha256 = args.expect_sha256;
    opts.reuse = args.reuse;
    opts.registry = RegistryOptions {
        insecure: args.insecure,
        ca_file: args.ca_file,
        auth_file: args.auth_file,
        upload_segment: args.upload_chunk_size,
        ..Default::default()
    };
    opts.http = HttpOptions {
        ca_file: args.source_ca_file,
        ..Default::default()
    };
    let progress = Arc::new(Progress::default());
    let display = (!args.quiet).then(|| show_progress(progress.clone()));
    let result = pipeline::import(opts, progress).await;
    if let Some((stop, handle)) = display {
        let _ = stop.send(());
        let _ = handle.await;
    }
    let reports = result?;
    for r in &reports {
        for l in &r.left_out {
            eprintln!("left out: {} of {}", l, r.name);
        }
        if !args.quiet {
            let what = if r.up_to_date {
                "already up to date".to_string()
            } else {
                format!("{} bytes pushed", r.pushed_bytes)
            };
            eprintln!(
                "{}: {} layers, image ID {}, {}",
                r.name,
                r.layers,
                r.image_ids.join(", "),
                what
            );
            eprintln!("{}: verified: {}", r.name, r.checked);
        }
        match (&r.archive_digest, &r.digest_changed) {
            (Some(a), None) if !args.quiet => eprintln!("{}: digest kept: {a}", r.name),
            (Some(a), Some(why)) => eprintln!(
                "{}: digest changed: the archive names it {a}, the tag now {}: {why}",
                r.name, r.digest
            ),
            _ => {}
        }
        for reference in &r.refs {
            println!("{reference}@{}", r.digest);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on a terminal, a line every few seconds otherwise.
fn show_progress(
    progress: Arc<Progress>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let tty = std::io::stderr().is_terminal();
    let handle = tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new(0);
        if tty {
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:24} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
        } else {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let mut last_line = std::time::Instant::now();
        loop {
            let (done, total) = progress.snapshot();
            bar.set_length(total.max(done));
            bar.set_position(done);
            bar.set_message(progress.phase());
            if !tty && last_line.elapsed() >= Duration::from_secs(5) {
                match total {
                    // A stream of unknown length (stdin).
                    0 => eprintln!("{}: {} bytes read", progress.phase(), done),
                    _ => eprintln!("{}: {} of {} bytes read", progress.phase(), done, total),
                }
                last_line = std::time::Instant::now();
            }
            tokio::select! {
                _ = &mut rx => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        bar.finish_and_clear();
    });
    (tx, handle)
}

fn parse_worker_pod(s: &str) -> Result<imageimport::controller::job::WorkerPodSettings, String> {
    imageimport::controller::job::WorkerPodSettings::parse(s)
}

async fn controller(args: ControllerArgs) -> Result<ExitCode, ImportError> {
    use imageimport::controller::{ControllerConfig, WorkerSettings, metrics::Metrics, server};
    // Its messages end up in ImageImports' status: they speak of the spec and the chart.
    imageimport::front_end::set(imageimport::front_end::FrontEnd::Operator);
    use std::sync::atomic::AtomicBool;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| ImportError::Usage(format!("no Kubernetes configuration: {e}")))?;
    let config = ControllerConfig {
        worker: WorkerSettings {
            image: args.worker_image,
            image_pull_policy: args.worker_image_pull_policy,
            service_account: args.worker_service_account,
            cpu_request: args.worker_cpu_request,
            memory_request: args.worker_memory_request,
            cpu_limit: args.worker_cpu_limit,
            memory_limit: args.worker_memory_limit,
            active_deadline_seconds: args.worker_deadline_seconds,
            url_allow_link_local: args.url_allow_link_local,
            url_allow_loopback: args.url_allow_loopback,
            url_deny_private: args.url_deny_private,
            url_max_bytes: args.url_max_bytes,
            url_timeout_seconds: args.url_timeout_seconds,
            upload_chunk_size: args.worker_upload_chunk_size,
            ttl_seconds_after_finished: args.worker_ttl_seconds,
            pod: args.worker_pod.unwrap_or_default(),
            upload: imageimport::controller::upload::UploadSettings {
                public_url: args.upload_url,
                internal_url: args.upload_internal_url,
                expiry: Duration::from_secs(args.upload_expiry_seconds),
            },
        },
        max_concurrent_imports: args.max_concurrent_imports.max(1),
        max_concurrent_imports_per_namespace: Some(args.max_concurrent_imports_per_namespace)
            .filter(|n| *n > 0),
        reconcile_concurrency: args.reconcile_concurrency.max(1),
        max_attempts: args.max_attempts.max(1),
        policy: imageimport::controller::policy::PolicySource {
            path: args.policy_file,
        },
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx_listener = Arc::new(stop_tx);
    let stop_tx = stop_tx_listener.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let health = server::Health {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    // Without its listener the Pod's probes fail: a bind error stops the controller at once,
    // before it talks to the API server.
    let listener = match tokio::net::TcpListener::bind(args.metrics_bind_address).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "imageimport: cannot listen on --metrics-bind-address {}: {e}",
                args.metrics_bind_address
            );
            return Ok(ExitCode::from(EXIT_FAILED));
        }
    };
    let listener_stop = stop_tx_listener.clone();
    let server_future = server::serve_on(listener, health, stopped(stop_rx.clone()));
    let server = tokio::spawn(async move {
        if let Err(e) = server_future.await {
            tracing::error!(error = %e, "metrics/health listener failed");
            let _ = listener_stop.send(true);
        }
    });
    let election = args.leader_elect.then_some(LeaderElection {
        lease: args.leader_election_lease,
        namespace: args.leader_election_namespace,
        duration_seconds: args.lease_duration_seconds,
    });
    let work = lead_and_reconcile(election, client, config, metrics, ready, stop_rx.clone());
    tokio::pin!(work);
    let code = tokio::select! {
        code = &mut work => code,
        _ = stopped(stop_rx) => {
            // Stopping: in-flight reconciles get a moment to finish, but an API server that
            // does not answer cannot keep the process from ending (SIGTERM is followed by
            // SIGKILL after the Pod's grace period anyway).
            match tokio::time::timeout(Duration::from_secs(10), work).await {
                Ok(code) => code,
                Err(_) => {
                    tracing::warn!("the controller did not stop within 10 s; exiting");
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
    };
    server.abort();
    code
}

struct LeaderElection {
    lease: String,
    namespace: String,
    duration_seconds: u64,
}

/// Leader election (when asked for) and the controller, until `stop_rx` says stop.
async fn lead_and_reconcile(
    election: Option<LeaderElection>,
    client: kube::Client,
    config: imageimport::controller::ControllerConfig,
    metrics: Arc<imageimport::controller::metrics::Metrics>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    stop_rx: tokio::sync::watch::Receiver<bool>,
) -> Result<ExitCode, ImportError> {
    use std::sync::atomic::Ordering;
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Ready once the API server answers (a standby is ready too: it is healthy and waiting);
    // asked again until it does, so a slow API server at start-up does not leave us unready.
    {
        let (client, ready) = (client.clone(), ready.clone());
        tokio::spawn(async move {
            while let Err(e) = client.apiserver_version().await {
                tracing::warn!(error = %e, "API server not reachable yet; not ready");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            ready.store(true, Ordering::Relaxed);
        });
    }

    if let Some(args) = election {
        let identity = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| format!("imageimport-{}", std::process::id()));
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease)
            .with_namespace(&args.namespace)
            .with_identity(&identity)
            .with_duration(args.duration_seconds)
            .with_grace((args.duration_seconds / 3).max(1))
            .build()
            .await;
        let manager = match manager {
            Ok(m) => m,
            Err(e) => {
                // Not a usage error: the API server refused or did not answer. Exiting lets
                // the kubelet restart the Pod.
                eprintln!("imageimport: leader election: {e}");
                return Ok(ExitCode::from(EXIT_FAILED));
            }
        };
        let (mut leading, lease_task) = manager.watch().await;
        tracing::info!(%identity, lease = %args.lease, "waiting for leadership");
        let mut stop = stop_rx.clone();
        let became_leader = tokio::select! {
            r = leading.wait_for(|l| *l) => r.is_ok(),
            _ = stop.wait_for(|s| *s) => false,
        };
        if !became_leader {
            drop(leading);
            let _ = lease_task.await;
            return Ok(ExitCode::SUCCESS);
        }
        tracing::info!(%identity, "leading: starting the controller");
        // Leadership lost (or SIGTERM): stop reconciling. A lost lease ends the process so the
        // replica restarts clean as a standby; no import is lost, the next leader resumes it.
        let mut lost = leading.clone();
        let stop = stop_rx.clone();
        let until = async move {
            tokio::select! {
                _ = lost.wait_for(|l| !*l) => tracing::warn!("lost leadership"),
                _ = stopped(stop) => {}
            }
        };
        imageimport::controller::run(client, config, metrics, until).await;
        let lost = !*leading.borrow();
        drop(leading);
        if let Ok(Ok(manager)) = lease_task.await {
            let _ = manager.release().await;
        }
        return Ok(if lost {
            ExitCode::from(EXIT_FAILED)
        } else {
            ExitCode::SUCCESS
        });
    }
    imageimport::controller::run(client, config, metrics, stopped(stop_rx)).await;
    Ok(ExitCode::SUCCESS)
}

async fn inspect(
    json: bool,
    source_ca_file: Option<PathBuf>,
    options: pipeline::inspect::InspectOptions,
    archive: String,
) -> Result<ExitCode, ImportError> {
    let location: Result<Location, _> = archive.parse().map_err(ImportError::Usage);
    let http = HttpOptions {
        ca_file: source_ca_file,
        ..Default::default()
    };
    let report = match location {
        Ok(location) => {
            pipeline::inspect::inspect(location, http, options, Arc::new(Progress::default())).await
        }
        Err(e) => Err(e),
    };
    let report = match report {
        Ok(r) => r,
        // With --json, stdout is JSON whatever happens: the error is part of it.
        Err(e) if json => {
            let out = serde_json::json!({
                "archive": archive,
                "verified": false,
                "error": {"reason": e.reason(), "message": e.to_string()},
            });
            println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
            eprintln!("imageimport: {e}");
            return Ok(ExitCode::from(exit_code(&e)));
        }
        Err(e) => return Err(e),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        // `digests` has one entry per image, in the same order.
        for (i, img) in report.images.iter().enumerate() {
            let tags = if img.tags.is_empty() {
                "<no tag>".to_string()
            } else {
                img.tags.join(", ")
            };
            if img.index {
                let n = img.platforms.len() + img.left_out.len();
                println!("{tags}\n  index of {n} platforms (pushed as one manifest list)");
            } else {
                println!("{tags}");
            }
            for p in &img.platforms {
                println!(
                    "  {}image ID  {}\n  {}platform  {}",
                    if img.index { "  " } else { "" },
                    p.image_id,
                    if img.index { "  " } else { "" },
                    p.platform
                );
                for l in &p.layers {
                    println!(
                        "  {}layer     {} {} ({} bytes stored, {}, {} uncompressed){}",
                        if img.index { "  " } else { "" },
                        l.diff_id,
                        l.member,
                        l.stored_size,
                        l.compression,
                        l.uncompressed_size,
                        if l.verified { "" } else { "  MISMATCH" }
                    );
                }
            }
            for lo in &img.left_out {
                println!("  left out  {lo} (blobs not in the archive)");
            }
            let Some(d) = report.digests.get(i) else {
                continue;
            };
            let archive = d
                .archive_digest
                .as_deref()
                .unwrap_or("none (no manifest stored)");
            println!("  archive digest  {archive}");
            match (&d.push_digest, &d.digest_changed) {
                (Some(p), None) if d.archive_digest.is_some() => {
                    println!("  push digest     {p} (kept)")
                }
                (Some(p), None) => println!("  push digest     {p}"),
                (Some(p), Some(why)) => println!("  push digest     {p} (changed: {why})"),
                (None, _) => println!("  push digest     none (a push would refuse it)"),
            }
        }
        match &report.problem {
            None => println!("verified: every layer matches its config's diff_ids"),
            Some(p) => println!("NOT verified: {p}"),
        }
    }
    Ok(if report.verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

async fn upload_server(args: UploadServerArgs) -> Result<ExitCode, ImportError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| ImportError::Usage(format!("no Kubernetes configuration: {e}")))?;
    let config = imageimport::upload::ServerConfig {
        bind: args.bind_address,
        worker_service_account: args.worker_service_account,
        allow_unbound_worker_tokens: args.allow_unbound_worker_tokens,
        policy: imageimport::controller::policy::PolicySource {
            path: args.policy_file,
        },
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    imageimport::upload::serve(client, config, shutdown)
        .await
        .map_err(|e| ImportError::Usage(format!("upload service: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
