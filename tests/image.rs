//! The operator image built without Docker (`hack/build-image.sh`, used by `hack/cluster.sh`)
//! and the `Dockerfile`'s image describe the same image: entrypoint, command, user, the binary
//! at the Dockerfile's COPY destination, the glibc libraries the binary links, CA certificates,
//! the nonroot user, and no shell. The binary then runs inside the built root file system as
//! uid 65532, so no library is missing.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The final stage of the Dockerfile: its base, COPY destinations, USER, ENTRYPOINT and CMD.
#[derive(Debug, Default)]
struct FinalStage {
    from: String,
    copies: Vec<String>,
    user: Option<String>,
    entrypoint: Option<Value>,
    cmd: Option<Value>,
}

fn dockerfile_final_stage() -> FinalStage {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).unwrap();
    let mut stage = FinalStage::default();
    // Instructions with `\` continuations joined; comments dropped.
    let mut joined = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            joined.push_str(head);
            joined.push(' ');
            continue;
        }
        joined.push_str(line);
        let instruction = std::mem::take(&mut joined);
        let Some((op, rest)) = instruction.split_once(char::is_whitespace) else {
            continue;
        };
        let rest = rest.trim();
        match op.to_ascii_uppercase().as_str() {
            "FROM" => {
                stage = FinalStage {
                    from: rest.to_string(),
                    ..Default::default()
                }
            }
            "COPY" => stage
                .copies
                .push(rest.rsplit(' ').next().unwrap().to_string()),
            "USER" => stage.user = Some(rest.to_string()),
            "ENTRYPOINT" => stage.entrypoint = Some(serde_json::from_str(rest).unwrap()),
            "CMD" => stage.cmd = Some(serde_json::from_str(rest).unwrap()),
            _ => {}
        }
    }
    stage
}

struct Built {
    config: Value,
    /// Path (no leading `/`) -> (mode, uid, kind, contents of regular files).
    files: BTreeMap<String, (u32, u64, tar::EntryType, Vec<u8>)>,
}

fn build_image(dir: &Path, bin: &Path) -> Built {
    let out = dir.join("image.tar");
    let status = Command::new("bash")
        .arg(Path::new(ROOT).join("hack/build-image.sh"))
        .arg(&out)
        .arg("imageimport:test")
        .env("IMAGEIMPORT_BINARY", bin)
        .status()
        .unwrap();
    assert!(status.success(), "hack/build-image.sh failed: {status}");

    let mut blobs = BTreeMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        blobs.insert(path, data);
    }
    let blob = |digest: &str| -> &[u8] {
        &blobs[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))]
    };
    let index: Value = serde_json::from_slice(&blobs["index.json"]).unwrap();
    let manifest: Value =
        serde_json::from_slice(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let config: Value =
        serde_json::from_slice(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let mut files = BTreeMap::new();
    for layer in manifest["layers"].as_array().unwrap() {
        let gz = blob(layer["digest"].as_str().unwrap());
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let header = entry.header().clone();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            files.insert(
                path.trim_end_matches('/').to_string(),
                (
                    header.mode().unwrap(),
                    header.uid().unwrap(),
                    header.entry_type(),
                    data,
                ),
            );
        }
    }
    Built { config, files }
}

/// The shared libraries `ldd` resolves for the binary (and its interpreter).
fn linked_libraries(bin: &Path) -> Vec<String> {
    let out = Command::new("ldd").arg(bin).output().unwrap();
    assert!(out.status.success(), "ldd {} failed", bin.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [_, "=>", path, ..] if path.starts_with('/') => Some(path.to_string()),
                [path, ..] if path.starts_with('/') => Some(path.to_string()),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn built_image_matches_the_dockerfile() {
    let stage = dockerfile_final_stage();
    assert!(
        stage
            .from
            .starts_with("gcr.io/distroless/cc-debian12:nonroot"),
        "the Dockerfile's base changed ({}): update hack/build-image.sh to the same contents",
        stage.from
    );
    let dir = tempfile::tempdir().unwrap();
    // The test build's binary without its debug info (hack/cluster.sh's tests do the same).
    let bin = dir.path().join("imageimport");
    let status = Command::new("objcopy")
        .args(["--strip-debug", env!("CARGO_BIN_EXE_imageimport")])
        .arg(&bin)
        .status()
        .unwrap();
    assert!(status.success(), "objcopy --strip-debug");
    let built = build_image(dir.path(), &bin);
    let c = &built.config["config"];

    assert_eq!(Some(&c["Entrypoint"]), stage.entrypoint.as_ref());
    assert_eq!(Some(&c["Cmd"]), stage.cmd.as_ref());
    // distroless nonroot is user 65532 too; the Dockerfile says so explicitly.
    assert_eq!(c["User"].as_str(), stage.user.as_deref());
    assert_eq!(c["WorkingDir"], "/home/nonroot");
    assert!(
        c["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"),
        "Env as distroless: {}",
        c["Env"]
    );

    // The binary at the Dockerfile's COPY destination, byte for byte, executable.
    assert_eq!(stage.copies.len(), 1, "one COPY in the final stage");
    let dest = stage.copies[0].trim_start_matches('/');
    let (mode, _, kind, data) = built
        .files
        .get(dest)
        .unwrap_or_else(|| panic!("no {dest} in the built image"));
    assert_eq!(*kind, tar::EntryType::Regular);
    assert_eq!(mode & 0o777, 0o755);
    assert!(
        *data == std::fs::read(&bin).unwrap(),
        "{dest} is not the binary"
    );
    for lib in linked_libraries(&bin) {
        assert!(
            built.files.contains_key(lib.trim_start_matches('/')),
            "{lib} (linked by the binary) missing from the image"
        );
    }
    assert!(
        built
            .files
            .contains_key("etc/ssl/certs/ca-certificates.crt")
    );
    let passwd = String::from_utf8(built.files["etc/passwd"].3.clone()).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "{passwd}"
    );
    assert_eq!(built.files["home/nonroot"].1, 65532);
    assert_eq!(built.files["tmp"].0 & 0o7777, 0o1777);
    // No shell, no package manager, nothing else executable besides the binary and libraries.
    for (path, (mode, _, kind, _)) in &built.files {
        let name = path.rsplit('/').next().unwrap();
        assert!(
            !["sh", "bash", "dash", "busybox", "apt", "dpkg"].contains(&name),
            "{path} in the image"
        );
        if *kind == tar::EntryType::Regular && mode & 0o111 != 0 {
            assert!(
                path == dest || path.starts_with("lib"),
                "unexpected executable {path}"
            );
        }
    }

    // The binary runs in that root file system, as the image's user.
    if is_root() {
        let rootfs = dir.path().join("rootfs");
        for (path, (mode, _, kind, data)) in &built.files {
            let target = rootfs.join(path);
            if *kind == tar::EntryType::Directory {
                std::fs::create_dir_all(&target).unwrap();
            } else {
                std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                std::fs::write(&target, data).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(*mode)).unwrap();
            }
        }
        let out = Command::new("/usr/sbin/chroot")
            .arg("--userspec=65532:65532")
            .arg(&rootfs)
            .args(["/usr/local/bin/imageimport", "--version"])
            .env_clear()
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "imageimport --version in the image's root file system: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// chroot needs root; the CI machine runs tests as root.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}
