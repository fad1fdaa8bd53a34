//! The worker's final word: a small JSON document it writes to its container's termination
//! message file, which the kubelet copies into the Pod's status (as Tekton and KubeVirt CDI
//! hand results over). The controller reads it only from the Pod of a Job it created itself
//! (see `outcome.rs`), so nothing another identity writes into the ImageImport's status is
//! ever believed. The kubelet keeps at most [`MAX_BYTES`]; [`WorkerReport::encode`] makes the
//! document fit, listing fewer images (and saying how many were left out) when it must.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

use crate::api::{ImportedImage, reason};

/// The kubelet's cap on one container's termination message.
pub const MAX_BYTES: usize = 4096;
/// Longest failure message carried (the Ready condition's message is cut at 1024 too).
const MAX_MESSAGE_CHARS: usize = 1024;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerReport {
    pub succeeded: bool,
    /// Condition reason on failure (`InvalidArchive`, `Unauthorized`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A failure worth retrying without a spec change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "imageID")]
    pub image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed_bytes: Option<u64>,
    /// Archive bytes read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
    /// The images pushed; each `refs` entry relative to `target.repository` when under it
    /// (`:tag`, `/team/app:2`), which [`WorkerReport::expand_refs`] undoes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImportedImage>,
    /// Images pushed but not listed: the message would not fit the kubelet's cap.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub images_not_listed: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Time>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Every reason a worker may report; anything else is not believed (it would become a
/// condition reason and a metrics label).
const WORKER_REASONS: &[&str] = &[
    reason::VERIFICATION_FAILED,
    reason::INVALID_ARCHIVE,
    reason::TAG_REQUIRED,
    reason::IMAGE_NOT_FOUND,
    reason::SOURCE_NOT_FOUND,
    reason::SOURCE_REFUSED,
    reason::SOURCE_UNAVAILABLE,
    reason::UNAUTHORIZED,
    reason::UNTRUSTED_CERTIFICATE,
    reason::REGISTRY_UNAVAILABLE,
    reason::INVALID_CONFIGURATION,
    reason::REGISTRY_REJECTED,
    reason::INVALID_SPEC,
    reason::SECRET_NOT_FOUND,
    reason::CONFIG_MAP_NOT_FOUND,
    reason::POLICY_VIOLATION,
    reason::UPLOAD_EXPIRED,
    reason::INTERNAL_ERROR,
];

impl WorkerReport {
    /// The document as the worker writes it, at most [`MAX_BYTES`]: `refs` made relative to
    /// `repository`, the message cut, and images dropped from the end (counted in
    /// `imagesNotListed`) until it fits.
    pub fn encode(mut self, repository: &str) -> String {
        if let Some(m) = &mut self.message
            && m.chars().count() > MAX_MESSAGE_CHARS
        {
            *m = m.chars().take(MAX_MESSAGE_CHARS - 1).collect::<String>() + "…";
        }
        for image in &mut self.images {
            for r in &mut image.refs {
                if let Some(rest) = r.strip_prefix(repository)
                    && (rest.starts_with(':') || rest.starts_with('/'))
                {
                    *r = rest.to_string();
                }
            }
        }
        loop {
            let text = serde_json::to_string(&self).expect("report serializes");
            if text.len() <= MAX_BYTES {
                return text;
            }
            if self.images.pop().is_some() {
                self.images_not_listed += 1;
            } else if !self.left_out.is_empty() {
                self.left_out.clear();
            } else {
                // Only the message can still be long: keep a prefix that fits.
                let m = self.message.take().unwrap_or_default();
                let keep = m.chars().count() / 2;
                self.message = Some(m.chars().take(keep).collect::<String>() + "…");
            }
        }
    }

    /// Parse a termination message; None for anything that is not a report.
    pub fn decode(text: &str) -> Option<WorkerReport> {
        serde_json::from_str(text.trim()).ok()
    }

    /// Undo the relative `refs` of [`WorkerReport::encode`].
    pub fn expand_refs(&mut self, repository: &str) {
        for image in &mut self.images {
            for r in &mut image.refs {
                if r.starts_with(':') || r.starts_with('/') {
                    *r = format!("{repository}{r}");
                }
            }
        }
    }

    /// The reason to record: a known one, or `InternalError` for anything else a worker said.
    pub fn failure_reason(&self) -> &str {
        match self.reason.as_deref() {
            Some(r) if WORKER_REASONS.contains(&r) => r,
            _ => reason::INTERNAL_ERROR,
        }
    }

    /// Whether the report agrees with the container's exit code (0 imported, 1 permanent
    /// failure, 75 transient failure): a report the process' own end contradicts is not it.
    pub fn agrees_with_exit_code(&self, code: i32) -> bool {
        match (self.succeeded, self.transient) {
            (true, _) => code == 0,
            (false, true) => code == 75,
            (false, false) => code == 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(i: usize, repo: &str) -> ImportedImage {
        ImportedImage {
            name: format!("team/app{i}:1"),
            digest: format!("sha256:{:064x}", i),
            image_ids: vec![format!("sha256:{:064x}", i + 1000)],
            refs: vec![
                format!("{repo}/team/app{i}:1"),
                format!("{repo}/team/app{i}:latest"),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_report_round_trips_with_relative_refs() {
        let repo = "registry.example:5000/mirror";
        let report = WorkerReport {
            succeeded: true,
            digest: Some(format!("sha256:{:064x}", 1)),
            images: vec![image(1, repo)],
            layers: Some(3),
            ..Default::default()
        };
        let text = report.clone().encode(repo);
        assert!(text.contains("\"/team/app1:1\""), "{text}");
        let mut back = WorkerReport::decode(&text).unwrap();
        back.expand_refs(repo);
        assert_eq!(back, report);
    }

    #[test]
    fn many_images_degrade_to_a_count_within_the_kubelet_cap() {
        let repo = "registry.example:5000/mirror";
        let report = WorkerReport {
            succeeded: true,
            images: (0..500).map(|i| image(i, repo)).collect(),
            message: Some("x".repeat(100_000)),
            left_out: vec!["linux/s390x".into(); 2000],
            ..Default::default()
        };
        let text = report.encode(repo);
        assert!(text.len() <= MAX_BYTES, "{}", text.len());
        let back = WorkerReport::decode(&text).unwrap();
        assert!(back.images_not_listed > 0);
        assert_eq!(back.images.len() + back.images_not_listed as usize, 500);
        assert!(back.message.unwrap().chars().count() <= MAX_MESSAGE_CHARS);
    }

    #[test]
    fn unknown_reasons_and_contradicting_exit_codes_are_not_believed() {
        let r = WorkerReport {
            reason: Some("Whatever{label=\"x\"}".into()),
            ..Default::default()
        };
        assert_eq!(r.failure_reason(), reason::INTERNAL_ERROR);
        assert!(r.agrees_with_exit_code(1) && !r.agrees_with_exit_code(0));
        let ok = WorkerReport {
            succeeded: true,
            ..Default::default()
        };
        assert!(ok.agrees_with_exit_code(0) && !ok.agrees_with_exit_code(137));
        assert!(WorkerReport::decode("OOMKilled\nsome log line").is_none());
    }
}
