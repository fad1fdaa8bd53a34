//! The upload bench of issue 9 ("Speed and limits"): a measurement, not a timed test, so it is
//! `#[ignore]`d. The same harness as tests/upload.rs (real kube-apiserver + etcd, the
//! controller, the upload service with the chart's RBAC, the worker run as its Job's command,
//! Debian's docker-registry), with the binaries of the profile it is built in: run it in release
//! through `bench/upload.sh` (`cargo test --release --test upload_bench -- --ignored`).
//!
//! One run: `kubectl-imageimport upload` of the bench archive through the service into one fresh
//! registry, and `imageimport push` of the same file into another fresh registry (same config),
//! in the order `UPLOAD_BENCH_FIRST` says (`upload` or `push`). Prints the figures.

// Children are reaped with wait4 (`wait_rusage`, for their rusage), which clippy cannot see.
#![allow(clippy::zombie_processes)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use serde_json::json;
use support::cluster::*;
use support::registry::{Registry, skopeo};

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a live process, in seconds.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map(|(_, a)| a).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    f.get(11)
        .zip(f.get(12))
        .map_or(0.0, |(u, s)| (u + s) as f64 / ticks)
}

/// How a child ended: exit code, peak RSS (KiB), CPU seconds.
struct Ended {
    code: i32,
    max_rss_kib: u64,
    cpu_s: f64,
}

/// Reap `pid` with wait4 for its resource usage (the std `Child` is not waited again).
fn wait_rusage(pid: u32) -> Ended {
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut ru) };
    assert_eq!(r, pid as i32, "wait4");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ended {
        code,
        max_rss_kib: ru.ru_maxrss as u64,
        cpu_s: tv(ru.ru_utime) + tv(ru.ru_stime),
    }
}

/// Where the plugin's read of `file` stands: Some(offset) while open, None if not open.
fn read_position(pid: u32, file: &Path) -> Option<u64> {
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if std::fs::read_link(fd.path()).ok().as_deref() == Some(file) {
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().display()))
                    .ok()?;
            return info
                .lines()
                .find_map(|l| l.strip_prefix("pos:"))?
                .trim()
                .parse()
                .ok();
        }
    }
    None
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

struct Push {
    wall: f64,
    /// CPU seconds of the registry (its whole life).
    registry_cpu_s: f64,
    ended: Ended,
    digest: String,
    load: String,
}

/// `imageimport push` of the file (`stdin`: `-`, the file as standard input: the streaming
/// path a worker's upload takes, where a file is read by the seekable path).
fn push(archive: &Path, reg: &Registry, stdin: bool) -> Push {
    let load = loadavg();
    let t0 = Instant::now();
    let mut cmd = Command::new(bin());
    cmd.args(["push", "--insecure", "-q"]);
    if stdin {
        cmd.arg("-").stdin(std::fs::File::open(archive).unwrap());
    } else {
        cmd.arg(archive);
    }
    let child = cmd
        .arg(reg.reference("bench/push:1"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let ended = wait_rusage(child.id());
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(ended.code, 0, "imageimport push failed");
    Push {
        wall,
        registry_cpu_s: reg.pid().map_or(0.0, cpu_s),
        ended,
        digest: skopeo::manifest_digest(reg, "bench/push:1"),
        load,
    }
}

struct Upload {
    /// Client's first byte read → Ready.
    wall: f64,
    first_to_last: f64,
    last_to_ready: f64,
    worker: Ended,
    plugin: Ended,
    service_hwm_kib: u64,
    service_rss_before_kib: u64,
    service_cpu_s: f64,
    /// Most VmRSS seen in each quarter of the bytes: (service, worker).
    quarters: [(u64, u64); 4],
    digest: String,
    printed: String,
    load: String,
    /// CPU seconds of the registry (its whole life) and of kube-apiserver + etcd (during the
    /// upload).
    registry_cpu_s: f64,
    api_cpu_s: f64,
    /// Pull answers the service logged: (count, bytes, frames).
    pulls: (u64, u64, u64),
}

/// CPU seconds of kube-apiserver and etcd so far.
fn api_cpu_s(c: &Cluster) -> f64 {
    c.api.usage().iter().map(|u| u.cpu.as_secs_f64()).sum()
}

/// The pull answers in the upload service's log (`pull answered bytes=N frames=F`).
fn pulls(c: &Cluster) -> (u64, u64, u64) {
    let log = std::fs::read_to_string(c.work.path().join("upload-server.log")).unwrap_or_default();
    let field = |line: &str, key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    log.lines()
        .filter(|l| l.contains("pull answered"))
        .fold((0, 0, 0), |(n, b, f), l| {
            (n + 1, b + field(l, "bytes="), f + field(l, "frames="))
        })
}

async fn upload(
    c: &Cluster,
    service_pid: u32,
    archive: &Path,
    reg: &Registry,
    kubeconfig: &Path,
) -> Upload {
    let name = "bench";
    let target = reg.reference("bench/upload:1");
    let (repo, _) = target.rsplit_once(':').unwrap();
    c.apply(json!({
        "apiVersion": "imageimport.dev/v1alpha1", "kind": "ImageImport",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"source": {"upload": {}}, "target": {"repository": repo, "tags": ["1"], "insecure": true}}
    }))
    .await;
    // The worker runs (waiting for bytes) before the client starts, as a Job starts at once
    // when its import is created; the harness's node work is not part of the figures.
    let job = c.wait_job(name).await;
    let mut cmd = c.prepare_job(&job, &BTreeMap::new()).await;
    let log = c.work.path().join("bench-worker.log");
    let out = std::fs::File::create(&log).unwrap();
    cmd.stdout(out.try_clone().unwrap()).stderr(out);
    let started = k8s_openapi::jiff::Timestamp::now();
    let worker = cmd.spawn().unwrap();
    let worker_pid = worker.id();
    let mut worker_wait = Some(tokio::task::spawn_blocking(move || wait_rusage(worker_pid)));

    let len = std::fs::metadata(archive).unwrap().len();
    let service_rss_before_kib = status_kib(service_pid, "VmRSS:").unwrap_or(0);
    let api_before = api_cpu_s(c);
    let load = loadavg();
    let plugin_out = c.work.path().join("bench-plugin.out");
    let plugin = Command::new(env!("CARGO_BIN_EXE_kubectl-imageimport"))
        .arg("upload")
        .arg(archive)
        .args(["--to", &target, "-n", NS, "--insecure", "--name", name])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .stdout(std::fs::File::create(&plugin_out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let plugin_pid = plugin.id();
    let plugin_wait = tokio::task::spawn_blocking(move || wait_rusage(plugin_pid));

    let (mut first, mut last, mut ready_at) = (None::<Instant>, None::<Instant>, None::<Instant>);
    let mut seen_open = false;
    let mut quarters = [(0u64, 0u64); 4];
    let mut quarter = 0usize;
    let mut worker_ended = None;
    let mut polls = 0u64;
    let deadline = Instant::now() + Duration::from_secs(900);
    while ready_at.is_none() {
        assert!(Instant::now() < deadline, "no Ready within 900 s");
        let now = Instant::now();
        if last.is_none() {
            match read_position(plugin_pid, archive) {
                Some(pos) => {
                    seen_open = true;
                    if pos > 0 && first.is_none() {
                        first = Some(now);
                    }
                    quarter = ((pos * 4 / len.max(1)) as usize).min(3);
                    if pos >= len {
                        last = Some(now);
                    }
                }
                // The plugin closes the file at its end (one PATCH).
                None if seen_open && first.is_some() => last = Some(now),
                None => {}
            }
        }
        if first.is_some() && last.is_none() {
            let q = &mut quarters[quarter];
            q.0 = q.0.max(status_kib(service_pid, "VmRSS:").unwrap_or(0));
            q.1 = q.1.max(status_kib(worker_pid, "VmRSS:").unwrap_or(0));
        }
        if worker_wait.as_ref().is_some_and(|w| w.is_finished()) {
            let ended = worker_wait.take().unwrap().await.unwrap();
            let code = ended.code;
            c.record_job_outcome(&job.name_any(), code, started).await;
            assert_eq!(
                code,
                0,
                "worker failed: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            worker_ended = Some(ended);
        }
        polls += 1;
        // Ready is asked every 50 ms; the file position every 10 ms.
        if polls.is_multiple_of(5) && last.is_some() {
            let obj = c.imports().get(name).await.unwrap();
            if let Some((s, _, _)) = ready(&obj)
                && s == "True"
                && obj.status.as_ref().and_then(|s| s.observed_generation)
                    == obj.metadata.generation
            {
                ready_at = Some(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (first, last, ready_at) = (first.unwrap(), last.unwrap(), ready_at.unwrap());
    let plugin = plugin_wait.await.unwrap();
    assert_eq!(plugin.code, 0, "the plugin failed");
    let api_cpu_s = api_cpu_s(c) - api_before;
    Upload {
        registry_cpu_s: reg.pid().map_or(0.0, cpu_s),
        api_cpu_s,
        pulls: pulls(c),
        wall: (ready_at - first).as_secs_f64(),
        first_to_last: (last - first).as_secs_f64(),
        last_to_ready: (ready_at - last).as_secs_f64(),
        worker: worker_ended.expect("Ready before the worker ended"),
        plugin,
        service_hwm_kib: status_kib(service_pid, "VmHWM:").unwrap_or(0),
        service_rss_before_kib,
        service_cpu_s: cpu_s(service_pid),
        quarters,
        digest: skopeo::manifest_digest(reg, "bench/upload:1"),
        printed: std::fs::read_to_string(&plugin_out)
            .unwrap_or_default()
            .trim()
            .to_string(),
        load,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a bench (bench/upload.sh runs it with release binaries)"]
async fn upload_bench() {
    let archive = PathBuf::from(
        std::env::var("UPLOAD_BENCH_ARCHIVE")
            .unwrap_or_else(|_| "/tmp/imageimport-bench/polyglot-docker-save.tar".into()),
    );
    let archive = std::fs::canonicalize(&archive)
        .unwrap_or_else(|e| panic!("{}: {e} (bench/run.sh builds it)", archive.display()));
    let push_first = std::env::var("UPLOAD_BENCH_FIRST").as_deref() == Ok("push");
    let len = std::fs::metadata(&archive).unwrap().len();
    // Both read the archive from the page cache.
    std::io::copy(
        &mut std::fs::File::open(&archive).unwrap(),
        &mut std::io::sink(),
    )
    .unwrap();

    let mut c = Cluster::start().await;
    let (mut service, base) = spawn_upload_service(&c).await;
    c.kill_controller();
    let ctl = c.spawn_controller(
        &["--upload-url", &base, "--upload-internal-url", &base],
        "ctl",
    );
    c.controller = Some(ctl);
    let rules = json!([
        {"apiGroups": ["imageimport.dev"], "resources": ["imageimports"], "verbs": ["get", "create", "patch"]},
        {"apiGroups": ["imageimport.dev"], "resources": ["imageimports/upload"], "verbs": ["create"]}
    ]);
    namespace_role(&c, "importer", rules).await;
    let kubeconfig = c.api.service_account_kubeconfig(NS, "importer").await;
    let (reg_push, reg_upload, reg_stdin) =
        (Registry::plain(), Registry::plain(), Registry::plain());

    let (p, u) = if push_first {
        let p = push(&archive, &reg_push, false);
        (
            p,
            upload(&c, service.id(), &archive, &reg_upload, &kubeconfig).await,
        )
    } else {
        let u = upload(&c, service.id(), &archive, &reg_upload, &kubeconfig).await;
        (push(&archive, &reg_push, false), u)
    };
    let s = push(&archive, &reg_stdin, true);
    let _ = service.kill();
    let _ = service.wait();

    let ratio = p.wall / u.wall;
    let mb = len as f64 / 1e6;
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    println!("archive {} ({mb:.1} MB)", archive.display());
    println!(
        "order: {} first; load average at the end {}",
        if push_first { "push" } else { "upload" },
        loadavg()
    );
    println!(
        "push    wall {:.2} s ({:.0} MB/s)  cpu {:.1} s  peak RSS {}  (load {})",
        p.wall,
        mb / p.wall,
        p.ended.cpu_s,
        mib(p.ended.max_rss_kib),
        p.load
    );
    println!(
        "push -  wall {:.2} s ({:.0} MB/s)  cpu {:.1} s  peak RSS {}  (stdin: the streaming path; load {})",
        s.wall,
        mb / s.wall,
        s.ended.cpu_s,
        mib(s.ended.max_rss_kib),
        s.load
    );
    println!(
        "upload  first byte -> Ready {:.2} s ({:.0} MB/s); first -> last byte {:.2} s; last byte -> Ready {:.2} s  (load {})",
        u.wall,
        mb / u.wall,
        u.first_to_last,
        u.last_to_ready,
        u.load
    );
    println!(
        "upload  cpu: worker {:.1} s, service {:.1} s (whole life), plugin {:.1} s",
        u.worker.cpu_s, u.service_cpu_s, u.plugin.cpu_s
    );
    println!(
        "upload  peak RSS: service {} (VmHWM; {} before the upload), worker {}, plugin {}",
        mib(u.service_hwm_kib),
        mib(u.service_rss_before_kib),
        mib(u.worker.max_rss_kib),
        mib(u.plugin.max_rss_kib)
    );
    println!(
        "upload  most RSS per quarter of the bytes (service / worker): {}",
        u.quarters
            .iter()
            .map(|(s, w)| format!("{} / {}", mib(*s), mib(*w)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "digest  push {} upload {} ({}); plugin printed {}",
        p.digest,
        u.digest,
        if p.digest == u.digest {
            "same"
        } else {
            "DIFFERENT"
        },
        u.printed
    );
    let (n, bytes, frames) = u.pulls;
    println!(
        "upload  pulls {n}, {:.2} MiB and {:.1} frames each on average",
        bytes as f64 / n.max(1) as f64 / 1048576.0,
        frames as f64 / n.max(1) as f64
    );
    println!(
        "cpu     registry: push {:.1} s, upload {:.1} s; kube-apiserver + etcd during the upload {:.1} s",
        p.registry_cpu_s, u.registry_cpu_s, u.api_cpu_s
    );
    let upload_cpu = u.worker.cpu_s + u.service_cpu_s + u.plugin.cpu_s;
    println!(
        "cpu     push / upload (worker + service + plugin) {:.2}; push - / upload wall {:.2}",
        p.ended.cpu_s / upload_cpu,
        s.wall / u.wall
    );
    println!(
        "targets: push wall / upload wall {ratio:.2} >= 0.8 {}; last byte -> Ready {:.2} s <= 2 s {}",
        verdict(ratio >= 0.8),
        u.last_to_ready,
        verdict(u.last_to_ready <= 2.0)
    );
}
