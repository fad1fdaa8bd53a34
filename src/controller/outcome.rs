//! How an attempt ended, read from the one place a worker cannot be impersonated: the
//! termination message the kubelet recorded for the worker container of a Pod of the Job this
//! controller created. The chain is checked link by link — the Job's controller is this
//! ImageImport (uid), the Pod's controller is that Job (uid), and the Pod runs the Job's own
//! worker container (image, command, arguments, environment) — so a Pod someone else made,
//! or a status field another identity wrote, is never taken for a result.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, ListParams, ObjectMeta};
use kube::{Client, ResourceExt};

use super::Error;
use super::report::WorkerReport;

pub const WORKER_CONTAINER: &str = "worker";

/// What the Pods of an ended Job say.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Reported(WorkerReport),
    /// The worker ended without a (believable) report: killed, out of memory, past its
    /// deadline, or its Pod is gone. The text says what was seen.
    Lost(String),
}

/// Whether `meta`'s controller (the owner reference with `controller: true`) has `uid`.
pub fn controlled_by(meta: &ObjectMeta, kind: &str, uid: &str) -> bool {
    meta.owner_references.as_ref().is_some_and(|refs| {
        refs.iter()
            .any(|o| o.controller == Some(true) && o.kind == kind && o.uid == uid)
    })
}

/// The outcome of `job` (already checked to be this controller's), from its Pods.
pub async fn read(client: &Client, job: &Job) -> Result<Outcome, Error> {
    let ns = job.namespace().unwrap_or_default();
    let Some(job_uid) = job.uid() else {
        return Ok(Outcome::Lost("the Job has no uid".into()));
    };
    let template = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.iter().find(|c| c.name == WORKER_CONTAINER));
    let Some(template) = template else {
        return Ok(Outcome::Lost("the Job has no worker container".into()));
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = format!("batch.kubernetes.io/controller-uid={job_uid}");
    let listed = pods.list(&ListParams::default().labels(&selector)).await?;
    let mut seen = Vec::new();
    let mut best: Option<(Option<String>, WorkerReport)> = None;
    for pod in &listed.items {
        if !controlled_by(&pod.metadata, "Job", &job_uid) {
            seen.push(format!("Pod {} is not the Job's", pod.name_any()));
            continue;
        }
        let runs_template = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == WORKER_CONTAINER))
            .is_some_and(|c| same_container(c, template));
        if !runs_template {
            seen.push(format!(
                "Pod {} does not run the Job's worker container",
                pod.name_any()
            ));
            continue;
        }
        let terminated = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == WORKER_CONTAINER))
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref());
        let Some(t) = terminated else {
            seen.push(format!(
                "Pod {}: the worker did not terminate",
                pod.name_any()
            ));
            continue;
        };
        let report = t.message.as_deref().and_then(WorkerReport::decode);
        match report {
            Some(r) if r.agrees_with_exit_code(t.exit_code) => {
                let at = t.finished_at.as_ref().map(|f| f.0.to_string());
                if best.as_ref().is_none_or(|(b, _)| at > *b) {
                    best = Some((at, r));
                }
            }
            Some(_) => seen.push(format!(
                "Pod {}: the worker's report contradicts its exit code {}",
                pod.name_any(),
                t.exit_code
            )),
            None => seen.push(format!(
                "Pod {}: the worker exited with code {}{} and no report",
                pod.name_any(),
                t.exit_code,
                t.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )),
        }
    }
    Ok(match best {
        Some((_, r)) => Outcome::Reported(r),
        None if seen.is_empty() => Outcome::Lost("no worker Pod found".into()),
        None => Outcome::Lost(seen.join("; ")),
    })
}

/// The Pod's container is the one the Job's template describes.
fn same_container(pod: &Container, template: &Container) -> bool {
    pod.image == template.image
        && pod.command == template.command
        && pod.args == template.args
        && pod.env == template.env
        && pod.termination_message_path == template.termination_message_path
}
