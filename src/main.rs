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
    Selection,
};
use imageimport::registry::{RegistryOptions, Target};

#[derive(Parser)]
#[command(
    name = "imageimport",
    version,
    about = "Import docker/OCI image archives into registries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Push the image(s) of an archive (file, `-` for stdin, or http(s) URL) to TARGET
    /// (`registry[:port]/repository[:tag]`).
    Push(Box<PushArgs>),
    /// List the images, tags, IDs and layers of an archive, and verify it.
    Inspect {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// CA bundle for an https archive URL.
        #[arg(long)]
        source_ca_file: Option<PathBuf>,
        archive: String,
    },
}

#[derive(clap::Args)]
struct PushArgs {
    /// Talk plain HTTP to the registry.
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
    /// Layer compression (default gzip; compressed layers are then kept as stored).
    #[arg(long)]
    compression: Option<Codec>,
    /// Refuse unless the image ID (config digest) is this.
    #[arg(long)]
    expect_image_id: Option<String>,
    /// Refuse unless the archive file's sha256 is this.
    #[arg(long)]
    expect_sha256: Option<String>,
    /// CA bundle for an https archive URL.
    #[arg(long)]
    source_ca_file: Option<PathBuf>,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
    archive: String,
    target: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "imageimport=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
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
                archive,
            } => inspect(json, source_ca_file, archive).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imageimport: {e}");
            ExitCode::from(if e.is_transient() { 75 } else { 1 })
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
    opts.registry = RegistryOptions {
        insecure: args.insecure,
        ca_file: args.ca_file,
        auth_file: args.auth_file,
        retries: None,
    };
    opts.http = HttpOptions {
        ca_file: args.source_ca_file,
        authorization: None,
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
                eprintln!("{}: {} of {} bytes read", progress.phase(), done, total);
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

async fn inspect(
    json: bool,
    source_ca_file: Option<PathBuf>,
    archive: String,
) -> Result<ExitCode, ImportError> {
    let location: Location = archive.parse().map_err(ImportError::Usage)?;
    let http = HttpOptions {
        ca_file: source_ca_file,
        authorization: None,
    };
    let report = pipeline::inspect::inspect(location, http, Arc::new(Progress::default())).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        for img in &report.images {
            let tags = if img.tags.is_empty() {
                "<no tag>".to_string()
            } else {
                img.tags.join(", ")
            };
            println!(
                "{tags}\n  image ID  {}\n  platform  {}",
                img.image_id, img.platform
            );
            for l in &img.layers {
                println!(
                    "  layer     {} {} ({} bytes stored, {}, {} uncompressed){}",
                    l.diff_id,
                    l.member,
                    l.stored_size,
                    l.compression,
                    l.uncompressed_size,
                    if l.verified { "" } else { "  MISMATCH" }
                );
            }
            for lo in &img.left_out {
                println!("  left out  {lo} (blobs not in the archive)");
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
        ExitCode::from(1)
    })
}
