//! Deterministic generators of image archives in every format `imageimport`
//! must read, plus hostile archives (`hostile`) that it must refuse safely.
//!
//! Written from the public format descriptions (docker-archive "save" format
//! v1.2, OCI image-layout v1.1, Docker 25+ `docker save`, containers/image
//! docker-archive output, containerd-store `docker save`). The outer archives
//! are produced by a small ustar writer of our own ([`TarWriter`]) so that
//! hostile headers (absolute names, `..`, devices, base-256 sizes, ...) can be
//! written; nothing here depends on the `tar` crate, which the tests use as an
//! independent reader.
//!
//! Every function is a pure function of its arguments: the same call always
//! returns the same bytes, so tests may pin digests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------
// Media types and fixed values
// ---------------------------------------------------------------------------

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// `created` of every generated config and history entry.
pub const CREATED: &str = "2024-01-02T03:04:05Z";
const EPOCH: &str = "1970-01-01T00:00:00Z";
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// Fixed mtime of every member of generated archives and layers.
const MTIME: u64 = 1_704_164_645; // 2024-01-02T03:04:05Z

// ---------------------------------------------------------------------------
// Digests and PRNG
// ---------------------------------------------------------------------------

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

fn hex_part(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

/// Chain IDs as docker computes them: `chain[0] = diff[0]`,
/// `chain[n] = sha256(chain[n-1] + " " + diff[n])`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// splitmix64: tiny deterministic PRNG (no `rand` dev-dependency).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

// ---------------------------------------------------------------------------
// Minimal ustar writer
// ---------------------------------------------------------------------------

/// A ustar writer that writes exactly what it is told (no path validation), so
/// it can produce both well-formed and hostile archives. Deterministic: mtime
/// is fixed, uid/gid 0, no user/group names.
#[derive(Debug, Default, Clone)]
pub struct TarWriter {
    buf: Vec<u8>,
}

pub const TYPE_FILE: u8 = b'0';
pub const TYPE_HARDLINK: u8 = b'1';
pub const TYPE_SYMLINK: u8 = b'2';
pub const TYPE_CHAR: u8 = b'3';
pub const TYPE_DIR: u8 = b'5';
pub const TYPE_FIFO: u8 = b'6';

impl TarWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Writes one 512-byte header. `size` above 8 GiB - 1 is written in GNU
    /// base-256 form. Names over 100 bytes are split into ustar prefix/name.
    #[allow(clippy::too_many_arguments)]
    pub fn header(
        &mut self,
        name: &str,
        typeflag: u8,
        size: u64,
        mode: u32,
        linkname: &str,
        dev: (u32, u32),
    ) {
        let mut h = [0u8; 512];
        let (prefix, short) = split_name(name);
        put(&mut h[0..100], short.as_bytes());
        put(&mut h[345..500], prefix.as_bytes());
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        if size < 8u64.pow(11) {
            octal(&mut h[124..136], size);
        } else {
            h[124] = 0x80;
            h[128..136].copy_from_slice(&size.to_be_bytes());
        }
        octal(&mut h[136..148], MTIME);
        h[156] = typeflag;
        assert!(linkname.len() <= 100, "linkname too long: {linkname}");
        put(&mut h[157..257], linkname.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        if typeflag == TYPE_CHAR || typeflag == b'4' {
            octal(&mut h[329..337], u64::from(dev.0));
            octal(&mut h[337..345], u64::from(dev.1));
        }
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let cks = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(cks.as_bytes());
        self.buf.extend_from_slice(&h);
    }

    /// Regular file; returns the offset of its first data byte.
    pub fn file(&mut self, name: &str, data: &[u8]) -> usize {
        self.header(name, TYPE_FILE, data.len() as u64, 0o644, "", (0, 0));
        let at = self.buf.len();
        self.buf.extend_from_slice(data);
        self.pad();
        at
    }

    /// Directory; `name` should end in `/`.
    pub fn dir(&mut self, name: &str) {
        self.header(name, TYPE_DIR, 0, 0o755, "", (0, 0));
    }

    pub fn symlink(&mut self, name: &str, target: &str) {
        self.header(name, TYPE_SYMLINK, 0, 0o777, target, (0, 0));
    }

    pub fn hardlink(&mut self, name: &str, target: &str) {
        self.header(name, TYPE_HARDLINK, 0, 0o644, target, (0, 0));
    }

    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.header(name, TYPE_CHAR, 0, 0o666, "", (major, minor));
    }

    pub fn fifo(&mut self, name: &str) {
        self.header(name, TYPE_FIFO, 0, 0o644, "", (0, 0));
    }

    /// Appends raw bytes (no padding).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Pads to the next 512-byte boundary.
    pub fn pad(&mut self) {
        let rem = self.buf.len() % 512;
        if rem != 0 {
            self.buf.resize(self.buf.len() + 512 - rem, 0);
        }
    }

    /// Appends the two zero end-of-archive blocks.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.resize(self.buf.len() + 1024, 0);
        self.buf
    }

    /// The bytes so far, without end-of-archive blocks.
    pub fn into_unfinished(self) -> Vec<u8> {
        self.buf
    }
}

fn split_name(name: &str) -> (&str, &str) {
    if name.len() <= 100 {
        return ("", name);
    }
    for (i, c) in name.char_indices() {
        if c == '/' && i <= 155 && name.len() - i - 1 <= 100 && i > 0 {
            return (&name[..i], &name[i + 1..]);
        }
    }
    panic!("tar member name too long for ustar: {name}");
}

fn put(field: &mut [u8], value: &[u8]) {
    assert!(value.len() <= field.len(), "tar field overflow");
    field[..value.len()].copy_from_slice(value);
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0width$o}", width = field.len() - 1);
    assert_eq!(s.len(), field.len() - 1, "octal overflow");
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()] = 0;
}

/// Cuts `archive` (an uncompressed tar) in the middle of the data of
/// `member`. Parses headers itself (octal sizes only). Panics if absent.
pub fn truncate_in_member(archive: &[u8], member: &str) -> Vec<u8> {
    let mut off = 0;
    while off + 512 <= archive.len() {
        let h = &archive[off..off + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let field = |r: std::ops::Range<usize>| {
            let f = &h[r];
            let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
            String::from_utf8_lossy(&f[..end]).into_owned()
        };
        let (name, prefix) = (field(0..100), field(345..500));
        let full = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let size = u64::from_str_radix(field(124..136).trim(), 8).expect("octal size") as usize;
        if full == member {
            assert!(size >= 2, "member {member} too small to cut");
            return archive[..off + 512 + size / 2].to_vec();
        }
        off += 512 + size.div_ceil(512) * 512;
    }
    panic!("member {member} not found");
}

// ---------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------

/// One uncompressed layer tar.
#[derive(Clone, PartialEq, Eq)]
pub struct Layer {
    pub tar: Vec<u8>,
}

impl Layer {
    /// `sha256:<hex>` of the uncompressed tar (the config's diff_id).
    pub fn diff_id(&self) -> String {
        sha256_digest(&self.tar)
    }
}

impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Layer({} bytes, {})", self.tar.len(), self.diff_id())
    }
}

const WORDS: &[&str] = &[
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu", "layer", "image", "registry",
    "manifest", "config", "digest",
];

fn content(rng: &mut SplitMix64, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let n = (size - out.len()).min(4096);
        if rng.below(3) == 0 {
            let start = out.len();
            out.resize(start + n, 0);
            rng.fill(&mut out[start..]);
        } else {
            let end = out.len() + n;
            let mut col = 0;
            while out.len() < end {
                let w = WORDS[rng.below(WORDS.len() as u64) as usize];
                out.extend_from_slice(w.as_bytes());
                col += w.len() + 1;
                out.push(if col > 72 { b'\n' } else { b' ' });
                if col > 72 {
                    col = 0;
                }
            }
            out.truncate(end);
        }
    }
    out
}

/// A valid layer tar: directory `gen-<seed>/` and `files` regular files of
/// `file_size` bytes each (4 KiB chunks, ~2/3 text-like, ~1/3 random).
/// Same seed and sizes => same bytes; different seeds => different diff_ids.
pub fn layer(seed: u64, files: usize, file_size: usize) -> Layer {
    let mut rng = SplitMix64::new(seed ^ 0x5EED_0F1A_7E50_0000);
    let dir = format!("gen-{seed:016x}/");
    let mut t = TarWriter::new();
    t.dir(&dir);
    for i in 0..files {
        let ext = if i % 2 == 0 { "txt" } else { "bin" };
        let data = content(&mut rng, file_size);
        t.file(&format!("{dir}file-{i:04}.{ext}"), &data);
    }
    Layer { tar: t.finish() }
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

impl Comp {
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Comp::None => MT_OCI_LAYER,
            Comp::Gzip => MT_OCI_LAYER_GZIP,
            Comp::Zstd => MT_OCI_LAYER_ZSTD,
        }
    }
}

/// Compresses `bytes` deterministically (gzip: flate2 with an empty header
/// and mtime 0; zstd: level 3, single thread).
pub fn compress_whole(bytes: &[u8], comp: Comp) -> Vec<u8> {
    match comp {
        Comp::None => bytes.to_vec(),
        Comp::Gzip => {
            let mut e = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::default());
            e.write_all(bytes).expect("gzip");
            e.finish().expect("gzip")
        }
        Comp::Zstd => zstd::encode_all(bytes, 3).expect("zstd"),
    }
}

/// Writes `bytes` to `dir/name` and returns the path.
pub fn write_to(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    p
}

// ---------------------------------------------------------------------------
// Images and formats
// ---------------------------------------------------------------------------

/// What to put in an archive. `repo_tags` like `"app:1.0"` or
/// `"registry.example:5000/team/app:v2"`; empty = saved by ID.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub repo_tags: Vec<String>,
    pub layers: Vec<Layer>,
    pub os: String,
    pub arch: String,
}

impl ImageSpec {
    /// linux/amd64 image.
    pub fn new(repo_tags: &[&str], layers: Vec<Layer>) -> Self {
        ImageSpec {
            repo_tags: repo_tags.iter().map(|s| s.to_string()).collect(),
            layers,
            os: "linux".into(),
            arch: "amd64".into(),
        }
    }

    pub fn platform(mut self, os: &str, arch: &str) -> Self {
        self.os = os.into();
        self.arch = arch.into();
        self
    }

    pub fn diff_ids(&self) -> Vec<String> {
        self.layers.iter().map(Layer::diff_id).collect()
    }
}

/// Archive format to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// `docker save` before Docker 25: `<v1id>/{VERSION,json,layer.tar}`,
    /// `<config-hex>.json`, then `manifest.json` and `repositories`.
    /// A diff_id repeated under another v1 id is written as a full copy.
    DockerLegacy,
    /// As `DockerLegacy`, but a repeated diff_id under another v1 id is a
    /// symlink `../<first-v1id>/layer.tar` (as docker 1.10..24 did). The
    /// specs must contain such a repeat (asserted).
    DockerLegacySymlinkDedup,
    /// Docker 25+ `docker save`: OCI layout (uncompressed layers at
    /// `blobs/sha256/<diffid-hex>`) plus `manifest.json` and `repositories`.
    Docker25Oci,
    /// `oci-archive` (skopeo/podman/buildah): OCI layout only.
    OciArchive { layer_compression: Comp },
    /// containers/image docker-archive: `<hex>.tar` layers (hex of the file
    /// as stored), `<hex>.json` config, `manifest.json`, `repositories`.
    SkopeoDockerArchive { layer_compression: Comp },
    /// containerd-store `docker save` of a multi-platform image: all specs
    /// are platform variants of ONE image (tags from `images[0]`); index.json
    /// points at an image index; only `present` (os, arch) platforms have
    /// manifest/config/layer blobs (gzip layers). `manifest.json` lists the
    /// present ones (RepoTags on the first only).
    ContainerdMultiPlatform { present: Vec<(String, String)> },
}

/// Result of [`build`].
#[derive(Debug, Clone)]
pub struct Built {
    pub bytes: Vec<u8>,
    /// One per input spec, in input order.
    pub images: Vec<BuiltImage>,
    /// ContainerdMultiPlatform: digest of the nested image index.
    pub index_digest: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Exact config bytes written.
    pub config: Vec<u8>,
    /// `sha256:<hex>` of `config`.
    pub config_digest: String,
    pub diff_ids: Vec<String>,
    pub repo_tags: Vec<String>,
    pub os: String,
    pub arch: String,
    /// OCI formats: digest of the image manifest blob.
    pub manifest_digest: Option<String>,
    /// Digests of the layer files as stored (compressed if compressed).
    pub layer_digests: Vec<String>,
    /// Archive member holding the config.
    pub config_path: String,
    /// Archive members holding the layers (as referenced by manifest.json,
    /// or the blob paths for OCI-only formats).
    pub layer_paths: Vec<String>,
    /// False only for absent platforms of ContainerdMultiPlatform.
    pub present: bool,
}

/// Realistic image config for `spec`.
pub fn image_config(spec: &ImageSpec) -> Vec<u8> {
    let diff_ids = spec.diff_ids();
    let history: Vec<Value> = (0..diff_ids.len())
        .map(|i| {
            json!({
                "created": CREATED,
                "created_by": format!("/bin/sh -c #(nop) ADD file:generated-{i} in / "),
                "comment": "imageimport test generator"
            })
        })
        .collect();
    let v = json!({
        "architecture": spec.arch,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
            "Labels": {"org.example.generator": "imageimport-tests"}
        },
        "created": CREATED,
        "history": history,
        "os": spec.os,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    });
    serde_json::to_vec(&v).expect("config json")
}

/// `"app:1"` -> `("app", "1")`; `"h:5000/a/b"` -> `("h:5000/a/b", "latest")`.
pub fn split_tag(repo_tag: &str) -> (&str, &str) {
    match repo_tag.rfind(':') {
        Some(i) if !repo_tag[i..].contains('/') => (&repo_tag[..i], &repo_tag[i + 1..]),
        _ => (repo_tag, "latest"),
    }
}

/// Fully qualified name as containerd stores it: `app:1` ->
/// `docker.io/library/app:1`.
pub fn normalized_name(repo_tag: &str) -> String {
    let (repo, tag) = split_tag(repo_tag);
    let first = repo.split('/').next().unwrap_or("");
    let qualified = if !repo.contains('/') {
        format!("docker.io/library/{repo}")
    } else if first.contains('.') || first.contains(':') || first == "localhost" {
        repo.to_string()
    } else {
        format!("docker.io/{repo}")
    };
    format!("{qualified}:{tag}")
}

fn familiar_repo(repo_tag: &str) -> String {
    let (repo, _) = split_tag(repo_tag);
    repo.strip_prefix("docker.io/library/")
        .or_else(|| repo.strip_prefix("docker.io/"))
        .unwrap_or(repo)
        .to_string()
}

#[derive(Serialize)]
struct ManifestItem<'a> {
    #[serde(rename = "Config")]
    config: &'a str,
    #[serde(rename = "RepoTags")]
    repo_tags: Option<&'a [String]>,
    #[serde(rename = "Layers")]
    layers: &'a [String],
}

#[derive(Serialize, Clone)]
struct Platform<'a> {
    architecture: &'a str,
    os: &'a str,
}

#[derive(Serialize, Clone)]
struct Descriptor<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    digest: String,
    size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<&'a str, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform<'a>>,
}

#[derive(Serialize)]
struct OciManifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
struct OciIndex<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: Vec<Descriptor<'a>>,
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

/// `manifest.json` as docker's json.Encoder writes it (trailing newline).
fn manifest_json(items: &[ManifestItem<'_>]) -> Vec<u8> {
    let mut v = to_json(&items);
    v.push(b'\n');
    v
}

/// `repositories`: familiar repo -> tag -> id. `None` if no tags at all.
fn repositories(entries: &[(&[String], String)]) -> Option<Vec<u8>> {
    let mut m: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (tags, id) in entries {
        for t in tags.iter() {
            let tag = split_tag(t).1.to_string();
            m.entry(familiar_repo(t))
                .or_default()
                .insert(tag, id.clone());
        }
    }
    if m.is_empty() {
        return None;
    }
    let mut v = to_json(&m);
    v.push(b'\n');
    Some(v)
}

fn ref_annotations(repo_tag: &str, docker_style: bool) -> BTreeMap<&'static str, String> {
    let mut a = BTreeMap::new();
    if docker_style {
        a.insert(ANN_CONTAINERD_NAME, normalized_name(repo_tag));
        a.insert(ANN_REF_NAME, split_tag(repo_tag).1.to_string());
    } else {
        a.insert(ANN_REF_NAME, repo_tag.to_string());
    }
    a
}

/// An entry of a lexically ordered archive (what docker's archive.Tar of its
/// temp directory produces).
enum Entry {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

fn write_sorted(t: &mut TarWriter, entries: &BTreeMap<String, Entry>) {
    for (name, e) in entries {
        match e {
            Entry::Dir => t.dir(name),
            Entry::File(d) => {
                t.file(name, d);
            }
            Entry::Symlink(target) => t.symlink(name, target),
        }
    }
}

/// Legacy v1 ids, derived from chain ids the way docker does (sha256 over a
/// JSON object holding the chain id and the parent v1 id; the top layer also
/// covers the image config). Never equal to a diff_id.
pub fn v1_ids(diff_ids: &[String], config_digest: &str) -> Vec<String> {
    let chains = chain_ids(diff_ids);
    let mut out: Vec<String> = Vec::with_capacity(chains.len());
    for (i, chain) in chains.iter().enumerate() {
        let mut o = json!({"created": EPOCH, "layer_id": chain});
        if let Some(p) = out.last() {
            o["parent"] = json!(format!("sha256:{p}"));
        }
        if i + 1 == chains.len() {
            o["config"] = json!(config_digest);
        }
        out.push(sha256_hex(&to_json(&o)));
    }
    out
}

/// The legacy per-layer `json` file.
fn v1_json(spec: &ImageSpec, ids: &[String], i: usize) -> Vec<u8> {
    let top = i + 1 == ids.len();
    let mut o = json!({
        "id": ids[i],
        "created": if top { CREATED } else { EPOCH },
        "container_config": {"Hostname": "", "User": "", "Env": null, "Cmd": null, "Image": ""},
        "os": spec.os,
    });
    if i > 0 {
        o["parent"] = json!(ids[i - 1]);
    }
    if top {
        o["architecture"] = json!(spec.arch);
        o["config"] = json!({"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"]});
    }
    to_json(&o)
}

/// Builds an archive of `images` in `format`. Deterministic.
pub fn build(format: &Format, images: &[ImageSpec]) -> Built {
    assert!(!images.is_empty(), "build needs at least one image");
    match format {
        Format::DockerLegacy => build_docker_legacy(images, false),
        Format::DockerLegacySymlinkDedup => build_docker_legacy(images, true),
        Format::Docker25Oci => build_docker25(images),
        Format::OciArchive { layer_compression } => build_oci(images, *layer_compression),
        Format::SkopeoDockerArchive { layer_compression } => {
            build_skopeo(images, *layer_compression)
        }
        Format::ContainerdMultiPlatform { present } => build_containerd(images, present),
    }
}

fn base_image(spec: &ImageSpec) -> BuiltImage {
    let config = image_config(spec);
    BuiltImage {
        config_digest: sha256_digest(&config),
        config,
        diff_ids: spec.diff_ids(),
        repo_tags: spec.repo_tags.clone(),
        os: spec.os.clone(),
        arch: spec.arch.clone(),
        manifest_digest: None,
        layer_digests: Vec::new(),
        config_path: String::new(),
        layer_paths: Vec::new(),
        present: true,
    }
}

fn build_docker_legacy(images: &[ImageSpec], symlink_dedup: bool) -> Built {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let mut first_dir_of: BTreeMap<String, String> = BTreeMap::new();
    let mut symlinks = 0;
    let mut out = Vec::new();
    let mut repos = Vec::new();
    for spec in images {
        let mut b = base_image(spec);
        let ids = v1_ids(&b.diff_ids, &b.config_digest);
        b.config_path = format!("{}.json", hex_part(&b.config_digest));
        entries.insert(b.config_path.clone(), Entry::File(b.config.clone()));
        for (i, (l, id)) in spec.layers.iter().zip(&ids).enumerate() {
            let diff = &b.diff_ids[i];
            entries.insert(format!("{id}/"), Entry::Dir);
            entries.insert(format!("{id}/VERSION"), Entry::File(b"1.0".to_vec()));
            entries.insert(format!("{id}/json"), Entry::File(v1_json(spec, &ids, i)));
            let path = format!("{id}/layer.tar");
            let first = first_dir_of
                .entry(diff.clone())
                .or_insert_with(|| id.clone());
            if symlink_dedup && first != id {
                symlinks += 1;
                entries.insert(
                    path.clone(),
                    Entry::Symlink(format!("../{first}/layer.tar")),
                );
            } else {
                entries.insert(path.clone(), Entry::File(l.tar.clone()));
            }
            b.layer_paths.push(path);
            b.layer_digests.push(diff.clone());
        }
        repos.push((
            spec.repo_tags.clone(),
            ids.last().cloned().unwrap_or_default(),
        ));
        out.push(b);
    }
    if symlink_dedup {
        assert!(
            symlinks > 0,
            "DockerLegacySymlinkDedup needs a repeated layer (same diff_id under another v1 id)"
        );
    }
    let mut t = TarWriter::new();
    write_sorted(&mut t, &entries);
    let items: Vec<ManifestItem<'_>> = out
        .iter()
        .map(|b| ManifestItem {
            config: &b.config_path,
            repo_tags: (!b.repo_tags.is_empty()).then_some(b.repo_tags.as_slice()),
            layers: &b.layer_paths,
        })
        .collect();
    t.file("manifest.json", &manifest_json(&items));
    let repo_refs: Vec<(&[String], String)> = repos
        .iter()
        .map(|(t, id)| (t.as_slice(), id.clone()))
        .collect();
    if let Some(r) = repositories(&repo_refs) {
        t.file("repositories", &r);
    }
    Built {
        bytes: t.finish(),
        images: out,
        index_digest: None,
    }
}

/// Serialized OCI manifest for one image; returns (manifest bytes, layer
/// blobs as stored).
fn oci_manifest(
    b: &BuiltImage,
    spec: &ImageSpec,
    comp: Comp,
    config_platform: bool,
) -> (Vec<u8>, Vec<Vec<u8>>) {
    let blobs: Vec<Vec<u8>> = spec
        .layers
        .iter()
        .map(|l| compress_whole(&l.tar, comp))
        .collect();
    let m = OciManifest {
        schema_version: 2,
        media_type: MT_OCI_MANIFEST,
        config: Descriptor {
            media_type: MT_OCI_CONFIG,
            digest: b.config_digest.clone(),
            size: b.config.len(),
            annotations: None,
            platform: config_platform.then_some(Platform {
                architecture: &spec.arch,
                os: &spec.os,
            }),
        },
        layers: blobs
            .iter()
            .map(|d| Descriptor {
                media_type: comp.oci_media_type(),
                digest: sha256_digest(d),
                size: d.len(),
                annotations: None,
                platform: None,
            })
            .collect(),
    };
    (to_json(&m), blobs)
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", hex_part(digest))
}

fn build_docker25(images: &[ImageSpec]) -> Built {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    entries.insert("blobs/".into(), Entry::Dir);
    entries.insert("blobs/sha256/".into(), Entry::Dir);
    let mut out = Vec::new();
    let mut descs = Vec::new();
    let mut repos = Vec::new();
    for spec in images {
        let mut b = base_image(spec);
        let ids = v1_ids(&b.diff_ids, &b.config_digest);
        // Legacy v1 json files become (unreferenced) blobs in Docker 25.
        for i in 0..ids.len() {
            let j = v1_json(spec, &ids, i);
            entries.insert(blob_path(&sha256_digest(&j)), Entry::File(j));
        }
        let (m, blobs) = oci_manifest(&b, spec, Comp::None, true);
        for blob in blobs {
            let p = blob_path(&sha256_digest(&blob));
            b.layer_paths.push(p.clone());
            b.layer_digests.push(sha256_digest(&blob));
            entries.insert(p, Entry::File(blob));
        }
        b.config_path = blob_path(&b.config_digest);
        entries.insert(b.config_path.clone(), Entry::File(b.config.clone()));
        let md = sha256_digest(&m);
        let base = Descriptor {
            media_type: MT_OCI_MANIFEST,
            digest: md.clone(),
            size: m.len(),
            annotations: None,
            platform: Some(Platform {
                architecture: &spec.arch,
                os: &spec.os,
            }),
        };
        if spec.repo_tags.is_empty() {
            descs.push(base.clone());
        }
        for t in &spec.repo_tags {
            descs.push(Descriptor {
                annotations: Some(ref_annotations(t, true)),
                ..base.clone()
            });
        }
        entries.insert(blob_path(&md), Entry::File(m));
        b.manifest_digest = Some(md);
        repos.push((
            spec.repo_tags.clone(),
            b.diff_ids
                .last()
                .map(|d| hex_part(d).to_string())
                .unwrap_or_default(),
        ));
        out.push(b);
    }
    let index = OciIndex {
        schema_version: 2,
        media_type: MT_OCI_INDEX,
        manifests: descs,
    };
    entries.insert("index.json".into(), Entry::File(to_json(&index)));
    let items: Vec<ManifestItem<'_>> = out
        .iter()
        .map(|b| ManifestItem {
            config: &b.config_path,
            repo_tags: (!b.repo_tags.is_empty()).then_some(b.repo_tags.as_slice()),
            layers: &b.layer_paths,
        })
        .collect();
    entries.insert("manifest.json".into(), Entry::File(manifest_json(&items)));
    entries.insert("oci-layout".into(), Entry::File(OCI_LAYOUT.to_vec()));
    let repo_refs: Vec<(&[String], String)> = repos
        .iter()
        .map(|(t, id)| (t.as_slice(), id.clone()))
        .collect();
    if let Some(r) = repositories(&repo_refs) {
        entries.insert("repositories".into(), Entry::File(r));
    }
    let mut t = TarWriter::new();
    write_sorted(&mut t, &entries);
    Built {
        bytes: t.finish(),
        images: out,
        index_digest: None,
    }
}

fn build_oci(images: &[ImageSpec], comp: Comp) -> Built {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    entries.insert("blobs/".into(), Entry::Dir);
    entries.insert("blobs/sha256/".into(), Entry::Dir);
    let mut out = Vec::new();
    let mut descs = Vec::new();
    for spec in images {
        let mut b = base_image(spec);
        let (m, blobs) = oci_manifest(&b, spec, comp, false);
        for blob in blobs {
            let p = blob_path(&sha256_digest(&blob));
            b.layer_paths.push(p.clone());
            b.layer_digests.push(sha256_digest(&blob));
            entries.insert(p, Entry::File(blob));
        }
        b.config_path = blob_path(&b.config_digest);
        entries.insert(b.config_path.clone(), Entry::File(b.config.clone()));
        let md = sha256_digest(&m);
        let base = Descriptor {
            media_type: MT_OCI_MANIFEST,
            digest: md.clone(),
            size: m.len(),
            annotations: None,
            platform: None,
        };
        if spec.repo_tags.is_empty() {
            descs.push(base.clone());
        }
        for t in &spec.repo_tags {
            descs.push(Descriptor {
                annotations: Some(ref_annotations(t, false)),
                ..base.clone()
            });
        }
        entries.insert(blob_path(&md), Entry::File(m));
        b.manifest_digest = Some(md);
        out.push(b);
    }
    let index = OciIndex {
        schema_version: 2,
        media_type: MT_OCI_INDEX,
        manifests: descs,
    };
    entries.insert("index.json".into(), Entry::File(to_json(&index)));
    entries.insert("oci-layout".into(), Entry::File(OCI_LAYOUT.to_vec()));
    let mut t = TarWriter::new();
    write_sorted(&mut t, &entries);
    Built {
        bytes: t.finish(),
        images: out,
        index_digest: None,
    }
}

fn build_skopeo(images: &[ImageSpec], comp: Comp) -> Built {
    // Streamed in copy order: layers, config, then manifest.json/repositories.
    let mut t = TarWriter::new();
    let mut written = BTreeSet::new();
    let mut out = Vec::new();
    for spec in images {
        let mut b = base_image(spec);
        for l in &spec.layers {
            let blob = compress_whole(&l.tar, comp);
            let d = sha256_digest(&blob);
            let p = format!("{}.tar", hex_part(&d));
            if written.insert(p.clone()) {
                t.file(&p, &blob);
            }
            b.layer_paths.push(p);
            b.layer_digests.push(d);
        }
        b.config_path = format!("{}.json", hex_part(&b.config_digest));
        if written.insert(b.config_path.clone()) {
            t.file(&b.config_path, &b.config);
        }
        out.push(b);
    }
    let items: Vec<ManifestItem<'_>> = out
        .iter()
        .map(|b| ManifestItem {
            config: &b.config_path,
            repo_tags: Some(b.repo_tags.as_slice()),
            layers: &b.layer_paths,
        })
        .collect();
    t.file("manifest.json", &manifest_json(&items));
    let repo_refs: Vec<(&[String], String)> = out
        .iter()
        .map(|b| {
            let top = b
                .layer_digests
                .last()
                .map(|d| hex_part(d).to_string())
                .unwrap_or_default();
            (b.repo_tags.as_slice(), top)
        })
        .collect();
    if let Some(r) = repositories(&repo_refs) {
        t.file("repositories", &r);
    }
    Built {
        bytes: t.finish(),
        images: out,
        index_digest: None,
    }
}

fn build_containerd(images: &[ImageSpec], present: &[(String, String)]) -> Built {
    let tags = images[0].repo_tags.clone();
    let mut blobs: BTreeMap<String, Entry> = BTreeMap::new();
    blobs.insert("blobs/".into(), Entry::Dir);
    blobs.insert("blobs/sha256/".into(), Entry::Dir);
    let mut out = Vec::new();
    let mut platform_descs = Vec::new();
    for spec in images {
        let mut b = base_image(spec);
        b.repo_tags = tags.clone();
        b.present = present
            .iter()
            .any(|(os, arch)| *os == spec.os && *arch == spec.arch);
        let (m, layer_blobs) = oci_manifest(&b, spec, Comp::Gzip, false);
        let md = sha256_digest(&m);
        b.config_path = blob_path(&b.config_digest);
        for blob in layer_blobs {
            let d = sha256_digest(&blob);
            b.layer_paths.push(blob_path(&d));
            b.layer_digests.push(d);
            if b.present {
                blobs.insert(blob_path(&sha256_digest(&blob)), Entry::File(blob));
            }
        }
        platform_descs.push(Descriptor {
            media_type: MT_OCI_MANIFEST,
            digest: md.clone(),
            size: m.len(),
            annotations: None,
            platform: Some(Platform {
                architecture: &spec.arch,
                os: &spec.os,
            }),
        });
        if b.present {
            blobs.insert(b.config_path.clone(), Entry::File(b.config.clone()));
            blobs.insert(blob_path(&md), Entry::File(m));
        }
        b.manifest_digest = Some(md);
        out.push(b);
    }
    let nested = to_json(&OciIndex {
        schema_version: 2,
        media_type: MT_OCI_INDEX,
        manifests: platform_descs,
    });
    let nd = sha256_digest(&nested);
    blobs.insert(blob_path(&nd), Entry::File(nested.clone()));
    let base = Descriptor {
        media_type: MT_OCI_INDEX,
        digest: nd.clone(),
        size: nested.len(),
        annotations: None,
        platform: None,
    };
    let mut top = Vec::new();
    if tags.is_empty() {
        top.push(base.clone());
    }
    for t in &tags {
        top.push(Descriptor {
            annotations: Some(ref_annotations(t, true)),
            ..base.clone()
        });
    }
    let mut t = TarWriter::new();
    write_sorted(&mut t, &blobs);
    t.file("oci-layout", OCI_LAYOUT);
    t.file(
        "index.json",
        &to_json(&OciIndex {
            schema_version: 2,
            media_type: MT_OCI_INDEX,
            manifests: top,
        }),
    );
    let present_imgs: Vec<&BuiltImage> = out.iter().filter(|b| b.present).collect();
    let items: Vec<ManifestItem<'_>> = present_imgs
        .iter()
        .enumerate()
        .map(|(i, b)| ManifestItem {
            config: &b.config_path,
            repo_tags: (i == 0 && !b.repo_tags.is_empty()).then_some(b.repo_tags.as_slice()),
            layers: &b.layer_paths,
        })
        .collect();
    t.file("manifest.json", &manifest_json(&items));
    Built {
        bytes: t.finish(),
        images: out,
        index_digest: Some(nd),
    }
}

// ---------------------------------------------------------------------------
// Hostile archives
// ---------------------------------------------------------------------------

/// `docker save <image-id>` of Docker 25+ (an untagged [`Format::Docker25Oci`] spec): Go's
/// nil slices written as `null`, `"manifests":null` in index.json and `"RepoTags":null` in
/// manifest.json. skopeo and crane import it when given a tag.
pub fn docker25_saved_by_id(spec: &ImageSpec) -> Built {
    assert!(spec.repo_tags.is_empty(), "saved by ID: no tags");
    let mut b = build(&Format::Docker25Oci, std::slice::from_ref(spec));
    let index = format!(r#"{{"schemaVersion":2,"mediaType":"{MT_OCI_INDEX}","manifests":null}}"#);
    b.bytes = hostile::replace_member(&b.bytes, "index.json", index.as_bytes());
    let manifest = String::from_utf8(find_member(&b.bytes, "manifest.json")).expect("utf8");
    assert!(manifest.contains(r#""RepoTags":null"#), "{manifest}");
    b
}

/// The content of member `name` of an archive written by [`TarWriter`] (files only).
pub fn find_member(archive: &[u8], name: &str) -> Vec<u8> {
    let mut off = 0;
    while off + 512 <= archive.len() {
        let h = &archive[off..off + 512];
        let field = |r: std::ops::Range<usize>| {
            let f = &h[r];
            let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
            String::from_utf8_lossy(&f[..end]).into_owned()
        };
        let size = u64::from_str_radix(field(124..136).trim(), 8).unwrap_or(0) as usize;
        if field(0..100) == name && field(345..500).is_empty() {
            return archive[off + 512..off + 512 + size].to_vec();
        }
        off += 512 + size.div_ceil(512) * 512;
    }
    panic!("member {name} not found")
}

/// Archives an importer must refuse (or handle without harm). Unless noted,
/// each is a docker-save-style archive of one image `hostile:latest` with two
/// small layers whose `manifest.json` references the hostile member, so the
/// hostile element is on the path a reader follows. Deterministic.
pub mod hostile {
    use super::*;

    /// The pieces of the standard two-layer hostile base image.
    pub struct Parts {
        pub spec: ImageSpec,
        pub config: Vec<u8>,
        pub config_hex: String,
        /// v1 ids (legacy directory names) of the two layers.
        pub ids: Vec<String>,
    }

    pub fn parts() -> Parts {
        parts_of(ImageSpec::new(
            &["hostile:latest"],
            vec![layer(0xBAD0, 2, 3000), layer(0xBAD1, 2, 3000)],
        ))
    }

    fn parts_of(spec: ImageSpec) -> Parts {
        let config = image_config(&spec);
        let config_hex = sha256_hex(&config);
        let ids = v1_ids(&spec.diff_ids(), &format!("sha256:{config_hex}"));
        Parts {
            spec,
            config,
            config_hex,
            ids,
        }
    }

    fn manifest(config: &str, layers: &[String]) -> Vec<u8> {
        let tags = vec!["hostile:latest".to_string()];
        manifest_json(&[ManifestItem {
            config,
            repo_tags: Some(&tags),
            layers,
        }])
    }

    /// Writes the legacy layer dir for layer `i` except `layer.tar`.
    fn layer_dir(t: &mut TarWriter, p: &Parts, i: usize) {
        t.dir(&format!("{}/", p.ids[i]));
        t.file(&format!("{}/VERSION", p.ids[i]), b"1.0");
        t.file(&format!("{}/json", p.ids[i]), &v1_json(&p.spec, &p.ids, i));
    }

    /// Docker-order archive where layer `i`'s tar member is written by
    /// `hostile_layer(t, i, normal_name)`, and manifest.json references
    /// `paths[i]`.
    fn docker_with(
        p: &Parts,
        paths: &[String],
        mut hostile_layer: impl FnMut(&mut TarWriter, usize, &str),
    ) -> Vec<u8> {
        let mut t = TarWriter::new();
        t.file(&format!("{}.json", p.config_hex), &p.config);
        for i in 0..p.ids.len() {
            layer_dir(&mut t, p, i);
            hostile_layer(&mut t, i, &format!("{}/layer.tar", p.ids[i]));
        }
        t.file(
            "manifest.json",
            &manifest(&format!("{}.json", p.config_hex), paths),
        );
        t.finish()
    }

    fn normal_paths(p: &Parts) -> Vec<String> {
        p.ids.iter().map(|id| format!("{id}/layer.tar")).collect()
    }

    fn flip(mut bytes: Vec<u8>, at: usize) -> Vec<u8> {
        bytes[at] ^= 0x01;
        bytes
    }

    /// Layer 0 is stored at the absolute member name `/<id0>/layer.tar`, and
    /// manifest.json references it by that absolute name.
    pub fn absolute_path_member() -> Vec<u8> {
        let p = parts();
        let mut paths = normal_paths(&p);
        paths[0] = format!("/{}", paths[0]);
        let first = paths[0].clone();
        docker_with(&p, &paths, |t, i, name| {
            let n = if i == 0 { first.as_str() } else { name };
            t.file(n, &p.spec.layers[i].tar);
        })
    }

    /// Layer 0 is stored at `../<id0>/layer.tar` (escapes the archive root)
    /// and manifest.json references that name.
    pub fn dotdot_member() -> Vec<u8> {
        let p = parts();
        let mut paths = normal_paths(&p);
        paths[0] = format!("../{}", paths[0]);
        let first = paths[0].clone();
        docker_with(&p, &paths, |t, i, name| {
            let n = if i == 0 { first.as_str() } else { name };
            t.file(n, &p.spec.layers[i].tar);
        })
    }

    /// `<id0>/layer.tar` appears twice: first the genuine layer, then a copy
    /// with one content byte flipped (valid tar, wrong diff_id). "Last one
    /// wins" readers get wrong content; importers must reject duplicates.
    pub fn duplicate_member() -> Vec<u8> {
        let p = parts();
        let paths = normal_paths(&p);
        docker_with(&p, &paths, |t, i, name| {
            t.file(name, &p.spec.layers[i].tar);
            if i == 0 {
                t.file(name, &flip(p.spec.layers[0].tar.clone(), 1024 + 7));
            }
        })
    }

    /// `<id1>/layer.tar` is a hard-link member whose target is `/etc/passwd`.
    pub fn hardlink_member() -> Vec<u8> {
        let p = parts();
        docker_with(&p, &normal_paths(&p), |t, i, name| {
            if i == 1 {
                t.hardlink(name, "/etc/passwd");
            } else {
                t.file(name, &p.spec.layers[i].tar);
            }
        })
    }

    /// `<id0>/layer.tar` is a character device 1:5 (`/dev/zero`: endless
    /// zeros if ever materialised and opened).
    pub fn char_device_member() -> Vec<u8> {
        let p = parts();
        docker_with(&p, &normal_paths(&p), |t, i, name| {
            if i == 0 {
                t.char_device(name, 1, 5);
            } else {
                t.file(name, &p.spec.layers[i].tar);
            }
        })
    }

    /// `<id0>/layer.tar` is a FIFO (opening a materialised one blocks).
    pub fn fifo_member() -> Vec<u8> {
        let p = parts();
        docker_with(&p, &normal_paths(&p), |t, i, name| {
            if i == 0 {
                t.fifo(name);
            } else {
                t.file(name, &p.spec.layers[i].tar);
            }
        })
    }

    /// `<id0>/layer.tar` is a symlink to `../../etc/passwd` (outside).
    pub fn symlink_outside() -> Vec<u8> {
        let p = parts();
        docker_with(&p, &normal_paths(&p), |t, i, name| {
            if i == 0 {
                t.symlink(name, "../../etc/passwd");
            } else {
                t.file(name, &p.spec.layers[i].tar);
            }
        })
    }

    /// `<id0>/layer.tar -> ../<id1>/layer.tar` and
    /// `<id1>/layer.tar -> ../<id0>/layer.tar` (a loop; both referenced).
    pub fn symlink_loop() -> Vec<u8> {
        let p = parts();
        let ids = p.ids.clone();
        docker_with(&p, &normal_paths(&p), |t, i, name| {
            t.symlink(name, &format!("../{}/layer.tar", ids[1 - i]));
        })
    }

    /// manifest.json, repositories and config first, then the layer dirs;
    /// cut in the middle of the LAST layer's data (no end blocks).
    pub fn truncated_mid_layer() -> Vec<u8> {
        let p = parts();
        let paths = normal_paths(&p);
        let mut t = TarWriter::new();
        t.file(
            "manifest.json",
            &manifest(&format!("{}.json", p.config_hex), &paths),
        );
        t.file(&format!("{}.json", p.config_hex), &p.config);
        for (i, path) in paths.iter().enumerate().take(p.ids.len()) {
            layer_dir(&mut t, &p, i);
            t.file(path, &p.spec.layers[i].tar);
        }
        truncate_in_member(&t.finish(), paths.last().expect("layers"))
    }

    /// 64 KiB of PRNG bytes (first byte forced to 0x42: not gzip/zstd magic).
    pub fn not_a_tar() -> Vec<u8> {
        let mut b = vec![0u8; 64 * 1024];
        SplitMix64::new(0x0B0B).fill(&mut b);
        b[0] = 0x42;
        b
    }

    /// Complete, valid archive whose manifest.json is `size` bytes of valid
    /// JSON: `[` + whitespace padding + the real entry + `]`. Use
    /// e.g. 64 MiB to exceed any sane metadata cap.
    pub fn oversized_manifest_json(size: usize) -> Vec<u8> {
        let p = parts();
        let paths = normal_paths(&p);
        let real = manifest(&format!("{}.json", p.config_hex), &paths);
        assert!(size > real.len(), "size too small");
        let mut m = Vec::with_capacity(size);
        m.push(b'[');
        m.resize(size - (real.len() - 1), b' ');
        m.extend_from_slice(&real[1..]);
        assert_eq!(m.len(), size);
        let mut t = TarWriter::new();
        t.file(&format!("{}.json", p.config_hex), &p.config);
        for (i, path) in paths.iter().enumerate() {
            layer_dir(&mut t, &p, i);
            t.file(path, &p.spec.layers[i].tar);
        }
        t.file("manifest.json", &m);
        t.finish()
    }

    /// Normal layer dirs and config, then a `manifest.json` header claiming
    /// 64 MiB followed by ~100 bytes of JSON and EOF (no padding/end blocks).
    pub fn manifest_json_size_lie() -> Vec<u8> {
        let p = parts();
        let paths = normal_paths(&p);
        let mut t = TarWriter::new();
        t.file(&format!("{}.json", p.config_hex), &p.config);
        for (i, path) in paths.iter().enumerate() {
            layer_dir(&mut t, &p, i);
            t.file(path, &p.spec.layers[i].tar);
        }
        let m = manifest(&format!("{}.json", p.config_hex), &paths);
        t.header("manifest.json", TYPE_FILE, 64 << 20, 0o644, "", (0, 0));
        t.raw(&m[..100.min(m.len())]);
        t.into_unfinished()
    }

    /// Well-formed archive, but one content byte of layer 0's tar (inside
    /// its first file's data, so it is still a valid tar) was flipped after
    /// the config's diff_ids were computed.
    pub fn tampered_layer() -> Vec<u8> {
        let p = parts();
        docker_with(&p, &normal_paths(&p), |t, i, name| {
            let tar = p.spec.layers[i].tar.clone();
            t.file(name, &if i == 0 { flip(tar, 1024 + 7) } else { tar });
        })
    }

    /// Config lists 2 diff_ids; manifest.json lists 3 layers (all present
    /// and well-formed).
    pub fn diff_ids_count_mismatch() -> Vec<u8> {
        let p = parts();
        let extra = layer(0xBAD2, 1, 1000);
        let extra_dir = sha256_hex(format!("extra {}", extra.diff_id()).as_bytes());
        let mut paths = normal_paths(&p);
        paths.push(format!("{extra_dir}/layer.tar"));
        let mut t = TarWriter::new();
        t.file(&format!("{}.json", p.config_hex), &p.config);
        for (i, path) in paths.iter().enumerate().take(p.ids.len()) {
            layer_dir(&mut t, &p, i);
            t.file(path, &p.spec.layers[i].tar);
        }
        t.dir(&format!("{extra_dir}/"));
        t.file(&format!("{extra_dir}/VERSION"), b"1.0");
        t.file(&paths[2], &extra.tar);
        t.file(
            "manifest.json",
            &manifest(&format!("{}.json", p.config_hex), &paths),
        );
        t.finish()
    }

    /// Replaces the generator label "imageimport-tests" by
    /// "imageimport-tEsts": same length, still valid JSON, other digest.
    fn tamper_config(config: &[u8]) -> Vec<u8> {
        let s = String::from_utf8(config.to_vec()).expect("utf8");
        assert!(s.contains("imageimport-tests"));
        s.replacen("imageimport-tests", "imageimport-tEsts", 1)
            .into_bytes()
    }

    /// docker-archive: `<hex>.json` holds a config whose sha256 is not
    /// `<hex>` (same length, one character changed). Layers are genuine.
    pub fn config_digest_mismatch() -> Vec<u8> {
        let p = parts();
        let bad = Parts {
            config: tamper_config(&p.config),
            ..parts()
        };
        docker_with(&bad, &normal_paths(&bad), |t, i, name| {
            t.file(name, &bad.spec.layers[i].tar);
        })
    }

    /// OCI archive (uncompressed layers) whose config blob
    /// `blobs/sha256/<hex>` holds content with another digest (same size).
    pub fn oci_config_digest_mismatch() -> Vec<u8> {
        let b = build(
            &Format::OciArchive {
                layer_compression: Comp::None,
            },
            &[parts().spec],
        );
        let img = &b.images[0];
        replace_member(&b.bytes, &img.config_path, &tamper_config(&img.config))
    }

    /// OCI archive (uncompressed layers) where layer 0's blob content does
    /// not match its name/descriptor digest (one content byte flipped; size
    /// and tar structure intact).
    pub fn oci_blob_mismatch() -> Vec<u8> {
        let spec = parts().spec;
        let b = build(
            &Format::OciArchive {
                layer_compression: Comp::None,
            },
            std::slice::from_ref(&spec),
        );
        let img = &b.images[0];
        replace_member(
            &b.bytes,
            &img.layer_paths[0],
            &flip(spec.layers[0].tar.clone(), 1024 + 7),
        )
    }

    /// OCI archive whose index.json manifest descriptor digest is
    /// `sha256:../../../../etc/passwd` (path traversal via digest).
    pub fn oci_digest_path_traversal() -> Vec<u8> {
        let b = build(
            &Format::OciArchive {
                layer_compression: Comp::None,
            },
            &[parts().spec],
        );
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../../../etc/passwd","size":1000,"annotations":{"org.opencontainers.image.ref.name":"hostile:latest"}}]}"#;
        replace_member(&b.bytes, "index.json", index)
    }

    /// manifest.json and config first, then `<id0>/` and a `<id0>/layer.tar`
    /// header claiming 1 TiB (GNU base-256 size field) followed by 4 KiB of
    /// data and EOF.
    pub fn enormous_member_size() -> Vec<u8> {
        let p = parts();
        let paths = normal_paths(&p);
        let mut t = TarWriter::new();
        t.file(
            "manifest.json",
            &manifest(&format!("{}.json", p.config_hex), &paths),
        );
        t.file(&format!("{}.json", p.config_hex), &p.config);
        layer_dir(&mut t, &p, 0);
        t.header(&paths[0], TYPE_FILE, 1 << 40, 0o644, "", (0, 0));
        t.raw(&p.spec.layers[0].tar[..4096]);
        t.into_unfinished()
    }

    /// An OCI archive (uncompressed layers) of the base image whose manifest document is
    /// `manifest(real)` (raw bytes, built from the genuine manifest as JSON) and whose
    /// index.json is `index(descriptor of that manifest)`; blobs are named by their digests,
    /// so only the documents' meaning is wrong.
    fn oci_documents(
        manifest: impl FnOnce(serde_json::Value) -> Vec<u8>,
        index: impl FnOnce(serde_json::Value, &serde_json::Value, &mut TarWriter) -> Vec<u8>,
    ) -> Vec<u8> {
        let spec = parts().spec;
        let b = build(
            &Format::OciArchive {
                layer_compression: Comp::None,
            },
            std::slice::from_ref(&spec),
        );
        let img = &b.images[0];
        let real: serde_json::Value = serde_json::from_slice(&find_member(
            &b.bytes,
            &blob_path(img.manifest_digest.as_ref().expect("OCI manifest")),
        ))
        .expect("manifest json");
        let m = manifest(real.clone());
        let mut t = TarWriter::new();
        t.dir("blobs/");
        t.dir("blobs/sha256/");
        t.file(&img.config_path, &img.config);
        for (path, l) in img.layer_paths.iter().zip(&spec.layers) {
            t.file(path, &l.tar);
        }
        t.file(&blob_path(&sha256_digest(&m)), &m);
        let d = json!({
            "mediaType": MT_OCI_MANIFEST,
            "digest": sha256_digest(&m),
            "size": m.len(),
            "annotations": {ANN_REF_NAME: "hostile:latest"},
        });
        let index = index(d, &real, &mut t);
        t.file("index.json", &index);
        t.file("oci-layout", OCI_LAYOUT);
        t.finish()
    }

    fn plain_index(manifests: serde_json::Value) -> Vec<u8> {
        to_json(&json!({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": manifests}))
    }

    /// An image manifest that also lists `manifests` (pointing at a second, other image): an
    /// index-reading client sees that image, a manifest-reading one the base image.
    pub fn oci_manifest_with_manifests() -> Vec<u8> {
        oci_documents(
            |mut m| {
                m["manifests"] = json!([{
                    "mediaType": MT_OCI_MANIFEST,
                    "digest": sha256_digest(b"another image"),
                    "size": 13,
                }]);
                to_json(&m)
            },
            |d, _, _| plain_index(json!([d])),
        )
    }

    /// index.json points at a nested image index that also carries the base image's
    /// `config` and `layers`.
    pub fn oci_index_with_layers() -> Vec<u8> {
        oci_documents(
            |m| to_json(&m),
            |mut d, m, t| {
                d.as_object_mut().expect("object").remove("annotations");
                let nested = to_json(&json!({
                    "schemaVersion": 2,
                    "mediaType": MT_OCI_INDEX,
                    "manifests": [d],
                    "config": m["config"],
                    "layers": m["layers"],
                }));
                t.file(&blob_path(&sha256_digest(&nested)), &nested);
                plain_index(json!([{
                    "mediaType": MT_OCI_INDEX,
                    "digest": sha256_digest(&nested),
                    "size": nested.len(),
                    "annotations": {ANN_REF_NAME: "hostile:latest"},
                }]))
            },
        )
    }

    /// The descriptor in index.json says Docker schema 2, the manifest itself says OCI.
    pub fn oci_media_type_mismatch() -> Vec<u8> {
        oci_documents(
            |m| to_json(&m),
            |mut d, _, _| {
                d["mediaType"] = json!("application/vnd.docker.distribution.manifest.v2+json");
                plain_index(json!([d]))
            },
        )
    }

    /// A manifest whose `schemaVersion` is 1 (the spec requires 2).
    pub fn oci_schema_version_1() -> Vec<u8> {
        oci_documents(
            |mut m| {
                m["schemaVersion"] = json!(1);
                to_json(&m)
            },
            |d, _, _| plain_index(json!([d])),
        )
    }

    /// A manifest with the key `layers` twice: first the genuine list, then only the second
    /// layer (first-key and last-key readers see different images).
    pub fn oci_duplicate_layers_key() -> Vec<u8> {
        oci_documents(
            |m| {
                let obj = m.as_object().expect("object");
                let mut s = String::from("{");
                for (k, v) in obj {
                    s += &format!("{}:{},", json!(k), v);
                }
                s += &format!("\"layers\":[{}]}}", m["layers"][1]);
                s.into_bytes()
            },
            |d, _, _| plain_index(json!([d])),
        )
    }

    /// index.json itself also carries `layers` (and `config`).
    pub fn oci_index_json_with_layers() -> Vec<u8> {
        oci_documents(
            |m| to_json(&m),
            |d, m, _| {
                to_json(&json!({
                    "schemaVersion": 2,
                    "mediaType": MT_OCI_INDEX,
                    "manifests": [d],
                    "config": m["config"],
                    "layers": m["layers"],
                }))
            },
        )
    }

    /// Rewrites `archive` (as produced by our writer: files, dirs, links)
    /// with member `name`'s content replaced by `data`.
    pub fn replace_member(archive: &[u8], name: &str, data: &[u8]) -> Vec<u8> {
        let mut t = TarWriter::new();
        let mut off = 0;
        let mut found = false;
        while off + 512 <= archive.len() {
            let h = &archive[off..off + 512];
            if h.iter().all(|&b| b == 0) {
                break;
            }
            let field = |r: std::ops::Range<usize>| {
                let f = &h[r];
                let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
                String::from_utf8_lossy(&f[..end]).into_owned()
            };
            let (short, prefix) = (field(0..100), field(345..500));
            let full = if prefix.is_empty() {
                short
            } else {
                format!("{prefix}/{short}")
            };
            let size = u64::from_str_radix(field(124..136).trim(), 8).expect("size") as usize;
            let body = &archive[off + 512..off + 512 + size];
            match h[156] {
                TYPE_DIR => t.dir(&full),
                TYPE_SYMLINK => t.symlink(&full, &field(157..257)),
                _ if full == name => {
                    found = true;
                    t.file(&full, data);
                }
                _ => {
                    t.file(&full, body);
                }
            }
            off += 512 + size.div_ceil(512) * 512;
        }
        assert!(found, "member {name} not found");
        t.finish()
    }

    /// What a compression bomb's extension entry claims: 600 MiB.
    pub const BOMB_SIZE: u64 = 600 << 20;

    /// The uncompressed start of a bomb: the config, then a header of type `typeflag` (`L`
    /// GNU long name, `x` PAX) claiming [`BOMB_SIZE`] bytes of data.
    pub fn bomb_head(typeflag: u8) -> Vec<u8> {
        let p = parts();
        let mut t = TarWriter::new();
        t.file(&format!("{}.json", p.config_hex), &p.config);
        t.header("././@LongLink", typeflag, BOMB_SIZE, 0o644, "", (0, 0));
        t.into_unfinished()
    }

    /// A whole-archive gzip of about 600 KB that holds [`bomb_head`] and then 600 MiB of
    /// extension data (`filler` bytes), a member and the end blocks: readers that take the
    /// extension's size from its header and read it into memory need 600 MiB. Written as
    /// one gzip member per MiB (valid gzip, as `cat a.gz b.gz` is), so it is quick to build.
    fn bomb(typeflag: u8, filler: u8) -> Vec<u8> {
        let gz = |bytes: &[u8]| compress_whole(bytes, Comp::Gzip);
        let mut out = gz(&bomb_head(typeflag));
        let mib = gz(&vec![filler; 1 << 20]);
        for _ in 0..(BOMB_SIZE >> 20) {
            out.extend_from_slice(&mib);
        }
        let mut t = TarWriter::new();
        t.file("manifest.json", b"[]");
        out.extend(gz(&t.finish()));
        out
    }

    /// A 600 MiB PAX extended header (`x`) in a ~600 KB gzip.
    pub fn pax_header_bomb() -> Vec<u8> {
        bomb(b'x', b'0')
    }

    /// A 600 MiB GNU long name (`L`) in a ~600 KB gzip.
    pub fn long_name_bomb() -> Vec<u8> {
        bomb(b'L', b'a')
    }

    /// Every small hostile archive, with its function name (excludes
    /// `oversized_manifest_json`, which takes a size, and the bombs, which are not small).
    pub fn all() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("absolute_path_member", absolute_path_member()),
            ("dotdot_member", dotdot_member()),
            ("duplicate_member", duplicate_member()),
            ("hardlink_member", hardlink_member()),
            ("char_device_member", char_device_member()),
            ("fifo_member", fifo_member()),
            ("symlink_outside", symlink_outside()),
            ("symlink_loop", symlink_loop()),
            ("truncated_mid_layer", truncated_mid_layer()),
            ("not_a_tar", not_a_tar()),
            ("manifest_json_size_lie", manifest_json_size_lie()),
            ("tampered_layer", tampered_layer()),
            ("diff_ids_count_mismatch", diff_ids_count_mismatch()),
            ("config_digest_mismatch", config_digest_mismatch()),
            ("oci_config_digest_mismatch", oci_config_digest_mismatch()),
            ("oci_blob_mismatch", oci_blob_mismatch()),
            ("oci_digest_path_traversal", oci_digest_path_traversal()),
            ("enormous_member_size", enormous_member_size()),
            ("oci_manifest_with_manifests", oci_manifest_with_manifests()),
            ("oci_index_with_layers", oci_index_with_layers()),
            ("oci_media_type_mismatch", oci_media_type_mismatch()),
            ("oci_schema_version_1", oci_schema_version_1()),
            ("oci_duplicate_layers_key", oci_duplicate_layers_key()),
            ("oci_index_json_with_layers", oci_index_json_with_layers()),
        ]
    }
}
