//! codec-probe ARCHIVE: for each `*/layer.tar` member of a docker-save archive, compress it as
//! imageimport does (independent 1 MiB chunks, one core) with libdeflate levels 1/2/4/6 and
//! zstd levels 1/3, and hash it with sha256; print MB of input per CPU-second and the
//! output/input ratio. One thread: the figures are per core.

use std::io::Read;
use std::time::Instant;

const CHUNK: usize = 1 << 20;

fn cpu_seconds() -> f64 {
    let mut ru: [i64; 18] = [0; 18];
    // struct rusage starts with ru_utime, ru_stime (timeval = 2 x i64 on x86_64).
    unsafe extern "C" {
        fn getrusage(who: i32, usage: *mut i64) -> i32;
    }
    unsafe { getrusage(0, ru.as_mut_ptr()) };
    (ru[0] + ru[2]) as f64 + (ru[1] + ru[3]) as f64 / 1e6
}

fn layers(path: &str) -> Vec<(String, Vec<u8>)> {
    // Minimal ustar reader: enough for the bench archive (short names).
    let mut f = std::fs::File::open(path).expect("open archive");
    let mut out = Vec::new();
    let mut hdr = [0u8; 512];
    loop {
        if f.read_exact(&mut hdr).is_err() || hdr.iter().all(|&b| b == 0) {
            break;
        }
        let name = String::from_utf8_lossy(&hdr[..100]).trim_end_matches('\0').to_string();
        let size_s = String::from_utf8_lossy(&hdr[124..136]).trim_matches(|c: char| c == '\0' || c == ' ').to_string();
        let size = u64::from_str_radix(&size_s, 8).unwrap_or(0) as usize;
        let mut data = vec![0u8; size];
        f.read_exact(&mut data).expect("member");
        let pad = (512 - size % 512) % 512;
        let mut p = vec![0u8; pad];
        f.read_exact(&mut p).expect("pad");
        if name.ends_with("/layer.tar") {
            out.push((name, data));
        }
    }
    out
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: codec-probe ARCHIVE");
    let layers = layers(&path);
    let total: usize = layers.iter().map(|(_, d)| d.len()).sum();
    println!("{} layers, {:.1} MB uncompressed", layers.len(), total as f64 / 1e6);
    let measure = |label: &str, f: &mut dyn FnMut(&[u8]) -> usize| {
        let t = cpu_seconds();
        let w = Instant::now();
        let mut out = 0usize;
        let mut per_layer = Vec::new();
        for (_, d) in &layers {
            let mut o = 0;
            for c in d.chunks(CHUNK) {
                o += f(c);
            }
            per_layer.push(format!("{:.3}", o as f64 / d.len() as f64));
            out += o;
        }
        let cpu = cpu_seconds() - t;
        let _ = w;
        println!(
            "{label:<16} {:7.0} MB/s/core  ratio {:.4}  ({:.1} MB; per layer {})  cpu {:.2}s",
            total as f64 / 1e6 / cpu,
            out as f64 / total as f64,
            out as f64 / 1e6,
            per_layer.join(" "),
            cpu
        );
    };
    measure("sha256", &mut |c| {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(c);
        std::hint::black_box(h.finalize());
        0
    });
    for level in [1, 2, 3, 4, 6] {
        let mut comp = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(level).unwrap());
        let mut buf = vec![0u8; comp.gzip_compress_bound(CHUNK)];
        measure(&format!("libdeflate gz L{level}"), &mut |c| comp.gzip_compress(c, &mut buf).unwrap());
    }
    for level in [1, 3] {
        let mut comp = zstd::bulk::Compressor::new(level).unwrap();
        let mut buf = vec![0u8; zstd::zstd_safe::compress_bound(CHUNK)];
        measure(&format!("zstd L{level}"), &mut |c| comp.compress_to_buffer(c, &mut buf).unwrap());
    }
}
