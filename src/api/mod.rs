//! The `ImageImport` API (`imageimport.dev/v1alpha1`).
//!
//! Defaults and validation live in the schema (OpenAPI patterns and CEL rules), so the API
//! server refuses a bad spec at `kubectl apply` time, before the controller sees it.

mod conditions;
pub use conditions::*;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "imageimport.dev";

/// Import the image(s) of an archive into a registry repository.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "imageimport.dev",
    version = "v1alpha1",
    kind = "ImageImport",
    namespaced,
    status = "ImageImportStatus",
    shortname = "imgi",
    doc = "An import of the image(s) of a docker-save or OCI archive (on a claim, or at a URL) into a registry repository. A run object: once imported, or failed for good, it is not looked at again until its spec changes.",
    category = "all",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target.repository"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","jsonPath":".status.digest"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.allImages) || !self.allImages || (!has(self.image) && (!has(self.target.tags) || size(self.target.tags) == 0))").message("allImages pushes each image under its own saved name and tags: it excludes image and target.tags"))]
pub struct ImageImportSpec {
    pub source: Source,
    /// Which image of a multi-image archive (a saved tag such as `web:1.4`, or an image ID).
    /// Default: the only image of the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Import every image of the archive. `target.repository` is then a prefix: an image saved
    /// as `docker.io/team/app:2` goes to `<target.repository>/team/app:2`, under each of its
    /// saved tags; `status.images` lists them. Excludes `image` and `target.tags`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_images: bool,
    /// Import only this platform (`os/arch[/variant]`) of a multi-platform archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$"))]
    pub platform: Option<String>,
    pub target: TargetSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
    /// Layer compression for the registry. Unset: uncompressed layers are gzip-compressed
    /// and layers already compressed in the archive are pushed as stored (digests kept).
    /// Set: every layer is (re-)encoded with this codec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_compression: Option<LayerCompression>,
}

/// Where the archive is: exactly one of `pvc`, `url` or `upload`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.pvc) ? 1 : 0) + (has(self.url) ? 1 : 0) + (has(self.upload) ? 1 : 0) == 1").message("exactly one of source.pvc or source.url or source.upload must be set"))]
pub struct Source {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<UrlSource>,
    /// The archive is uploaded (tus 1.0) to the upload service, at the URL `status.upload.url`
    /// gives, and streamed into the import as it arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadSource>,
    /// Optional pin of the archive file's sha256 (hex, or `sha256:` + hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(sha256:)?[a-f0-9]{64}$"))]
    pub sha256: Option<String>,
}

/// A file on a PersistentVolumeClaim of the ImageImport's namespace, mounted read-only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub claim_name: String,
    /// Path of the archive inside the claim (relative, no `..`).
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')").message("path must be relative to the claim and must not contain '..'"))]
    pub path: String,
}

/// An archive served over HTTP(S).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UrlSource {
    /// An `http://` or `https://` URL without credentials in it (put them in `secretRef`).
    #[schemars(
        regex(pattern = r"^https?://[^\s/?#@]+([/?#]\S*)?$"),
        length(max = 4096)
    )]
    #[x_kube(validation = Rule::new("isURL(self)").message("url must be a valid URL"))]
    pub url: String,
    /// Secret (same namespace) with a `token` key (sent as a Bearer token) or `username` and
    /// `password` keys (Basic), sent only to the URL's own host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalRef>,
    /// ConfigMap key (same namespace) with the CA bundle for the URL's server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_ref: Option<KeyRef>,
}

/// An archive uploaded to the upload service (see `status.upload`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UploadSource {
    /// Largest archive accepted, in bytes: an upload announcing more is refused (413), and
    /// one that sends more is cut off. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_bytes: Option<u64>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TargetSpec {
    /// `registry[:port]/path` without tag. The registry is a host with a dot or a port, or
    /// `localhost` (never an implicit Docker Hub). With `allImages`, the prefix of every image.
    #[schemars(
        regex(
            pattern = r"^(localhost(:[0-9]+)?|[a-zA-Z0-9-]+(\.[a-zA-Z0-9-]+)+(:[0-9]+)?|[a-zA-Z0-9-]+:[0-9]+)/[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$"
        ),
        length(max = 512)
    )]
    pub repository: String,
    /// Tags to push. Default: the image's own tag(s) from the archive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tags: Vec<Tag>,
    /// Secret of type kubernetes.io/dockerconfigjson (same namespace) with credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalRef>,
    /// Plain HTTP to the registry.
    #[serde(default)]
    pub insecure: bool,
    /// ConfigMap key (same namespace) with the CA bundle of the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_ref: Option<KeyRef>,
}

/// A registry tag.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(transparent)]
pub struct Tag(
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"),
        length(max = 128)
    )]
    pub String,
);

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Verify {
    /// Pin of the image ID (config digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^sha256:[a-f0-9]{64}$"))]
    #[serde(rename = "imageID")]
    pub image_id: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LocalRef {
    /// An object name (DNS-1123 subdomain).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// A ConfigMap name (DNS-1123 subdomain).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// A ConfigMap key.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LayerCompression {
    Gzip,
    Zstd,
    None,
}

/// Observed state. Conditions follow the Kubernetes API conventions; there is no `phase`.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageImportStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled` (kstatus), `Importing`, `SourceReady`, `Verified`: one
    /// per type, all about `observedGeneration`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        schema_with = "conditions_schema",
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"])
    )]
    pub conditions: Vec<Condition>,
    /// Manifest (or index) digest the pushed tags point at (a single-image import; with
    /// `allImages`, `images` has each image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Config digest (image ID) of a single-image import.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "imageID")]
    pub image_id: Option<String>,
    /// Number of layers pushed (over all images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<u32>,
    /// Blob bytes sent to the registry by the last import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_bytes: Option<u64>,
    /// Platforms the archive's index lists but whose blobs it lacks (not imported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    /// Every image the last import pushed (one, or each image with `allImages`), with the
    /// references of its tags: the one place for what was pushed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImportedImage>,
    /// Images pushed but not listed in `images`: the worker's report is capped at 4 KiB (the
    /// kubelet's termination-message limit); its log lists every image.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub images_not_listed: u32,
    /// Written by the worker while it runs (its own field manager); display only: the
    /// controller decides on nothing in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ImportProgress>,
    /// When the observed generation's first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the observed generation ended: imported, failed for good, or out of attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Import attempts for the observed generation.
    #[serde(default)]
    pub attempts: u32,
    /// Earliest start of the next attempt after a worker was lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_after: Option<Time>,
    /// The worker Job of the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Where and how far the upload of an upload-source import is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadStatus>,
}

/// The upload of an upload-source import. `url` is written by the controller; the rest by the
/// upload service (its own field manager), for the generation it names.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UploadStatus {
    /// The tus 1.0 creation endpoint for this import (`POST` here, then `PATCH` the
    /// `Location` it answers). Authenticate with a Kubernetes bearer token allowed to
    /// `create` `imageimports/upload` on this object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The generation the fields below describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Bytes the import has taken in (what a client resumes from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The archive's length as the client announced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// When the upload expires if no byte arrives before (`UploadExpired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImportProgress {
    /// Bytes processed so far.
    pub bytes_done: u64,
    /// Bytes to process, as far as known yet.
    pub bytes_total: u64,
    /// What the worker is doing, in words (display only).
    pub phase: String,
    /// When the worker wrote this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
}

/// One image an import pushed.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImportedImage {
    /// The image as the archive names it (its first saved tag, or its image ID).
    pub name: String,
    /// Manifest (or index) digest its tags point at.
    pub digest: String,
    /// Config digest (image ID); one per platform for a multi-platform image.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "imageIDs")]
    pub image_ids: Vec<String>,
    /// `registry/repository:tag` for each tag pushed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<String>,
    /// The digest the archive names the image by (its index or manifest), if it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_digest: Option<String>,
    /// Why `digest` is not `archiveDigest` (absent: the archive's digest was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_changed: Option<String>,
    /// What was checked before the import reported the tags as holding the archive's image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked: Option<String>,
}

/// `metav1.Condition` as the API server's own types validate it (k8s-openapi's schema has no
/// patterns, enum or bounds): a status write with a malformed condition is refused.
fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {
            "type": "object",
            "required": ["lastTransitionTime", "message", "reason", "status", "type"],
            "properties": {
                "lastTransitionTime": {
                    "description": "When the condition last changed status.",
                    "type": "string",
                    "format": "date-time"
                },
                "message": {
                    "description": "What happened, for humans.",
                    "type": "string",
                    "maxLength": 32768
                },
                "observedGeneration": {
                    "description": "The .metadata.generation the condition is about.",
                    "type": "integer",
                    "format": "int64",
                    "minimum": 0
                },
                "reason": {
                    "description": "Why, as a CamelCase identifier (see docs/operations.md).",
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 1024,
                    "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
                },
                "status": {
                    "description": "True, False or Unknown.",
                    "type": "string",
                    "enum": ["True", "False", "Unknown"]
                },
                "type": {
                    "description": "The condition's type, CamelCase.",
                    "type": "string",
                    "maxLength": 316,
                    "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
                }
            }
        }
    })
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The CRD as YAML (what `imageimport crd` prints and `crds/` holds).
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = ImageImport::crd();
    format!(
        "# Generated by `imageimport crd` from src/api; do not edit.\n{}",
        serde_yaml::to_string(&crd).expect("CRD serializes")
    )
}
