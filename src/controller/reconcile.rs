//! The reconciler: level-based, idempotent. Everything it needs to decide is in the
//! ImageImport's status, the worker Job it names and the worker Pods its labels find, so a
//! restarted controller picks up exactly where the last one stopped.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use super::job::{self, JobState, LABEL_GENERATION, LABEL_MANAGED_BY, LABEL_NAME, MANAGER};
use super::status::{self, condition};
use super::upload;
use super::{Context, Error};
use crate::api::{IMPORTING, READY, SOURCE_READY, VERIFIED};
use crate::api::{ImageImport, ImageImportStatus, WorkerResult, reason};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Backoff between attempts after a transient failure: 10 s doubling, capped at 10 min.
pub fn retry_delay(attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(6);
    Duration::from_secs((10u64 << exp).min(600))
}

pub async fn reconcile(obj: Arc<ImageImport>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = obj.namespace().ok_or(Error::NotNamespaced)?;
    let name = obj.name_any();
    let api: Api<ImageImport> = Api::namespaced(ctx.client.clone(), &ns);
    // Read it fresh: a worker's result may be newer than the cache that woke us (the Job's
    // completion can arrive first), and deciding on stale status would retry a success.
    let Some(fresh) = api.get_opt(&name).await? else {
        ctx.set_running(&obj, false);
        return Ok(Action::await_change());
    };
    let obj = fresh;
    if obj.metadata.deletion_timestamp.is_some() {
        ctx.set_running(&obj, false);
        return Ok(Action::await_change());
    }
    let mut pass = Pass::new(&ctx, &obj, api, Api::namespaced(ctx.client.clone(), &ns));

    // A new generation starts over: the previous generation's Job is stopped (an error, the
    // status untouched, if it cannot be: the next pass tries again).
    if pass.st.observed_generation != Some(pass.generation) {
        if let Some(old) = &pass.st.job_name {
            delete_job(&pass.jobs, old).await?;
        }
        pass.st = ImageImportStatus {
            observed_generation: Some(pass.generation),
            conditions: pass.st.conditions.clone(),
            result: pass.st.result.clone(),
            ..Default::default()
        };
    }
    // And this generation's first Job waits until the worker Pods of earlier ones are gone:
    // deleting a Job does not stop its Pod at once, and an old worker still pushing could move
    // the tags after this import finished, leaving `status.digest` naming another image. Found
    // by their labels, so nothing about them is kept in the status.
    if pass.st.job_name.is_none()
        && pass.st.attempts == 0
        && pass.generation > 1
        && let Some(action) = pass.wait_for_previous_workers().await?
    {
        return Ok(action);
    }

    let result = pass.st.result.clone().filter(|r| {
        r.generation == pass.generation && Some(&r.job_name) == pass.st.job_name.as_ref()
    });
    match result {
        // Finished for this generation: nothing to do until the spec changes.
        Some(r) if r.succeeded || !r.transient => {
            pass.finish(&r).await?;
            return Ok(Action::await_change());
        }
        Some(r) => return pass.after_transient_failure(&r).await,
        None => {}
    }

    // An attempt is under way: follow its Job.
    if let Some(job_name) = pass.st.job_name.clone() {
        return match pass.jobs.get_opt(&job_name).await? {
            Some(job) => match job::state(&job) {
                JobState::Running => pass.importing(&job_name).await,
                state => pass.job_ended_without_result(&job_name, state).await,
            },
            None => {
                // Deleted by someone (or not yet visible): create it again under the same name.
                let attempt = pass.st.attempts.max(1);
                pass.start_attempt_named(job_name, attempt).await
            }
        };
    }

    if let Some(after) = &pass.st.next_attempt_after {
        let now = k8s_openapi::jiff::Timestamp::now();
        if after.0 > now {
            return Ok(Action::requeue(after.0.duration_since(now).unsigned_abs()));
        }
    }
    pass.start_attempt().await
}

/// One reconcile of one ImageImport: the object as read, its status as found (`current`),
/// and the status this pass builds (`st`), written once at the end of each path.
struct Pass<'a> {
    ctx: &'a Context,
    obj: &'a ImageImport,
    api: Api<ImageImport>,
    jobs: Api<Job>,
    current: ImageImportStatus,
    st: ImageImportStatus,
    generation: i64,
}

impl<'a> Pass<'a> {
    fn new(ctx: &'a Context, obj: &'a ImageImport, api: Api<ImageImport>, jobs: Api<Job>) -> Self {
        let current = obj.status.clone().unwrap_or_default();
        Pass {
            ctx,
            obj,
            api,
            jobs,
            st: current.clone(),
            current,
            generation: obj.metadata.generation.unwrap_or(0),
        }
    }

    /// Set one condition of the status being built.
    fn set(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        let c = condition(
            &self.st.conditions,
            type_,
            status,
            reason,
            message,
            Some(self.generation),
        );
        self.st.conditions.retain(|x| x.type_ != type_);
        self.st.conditions.push(c);
        self.st.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    }

    /// A failure the worker met reaching the source (claim file, URL, Secret, ConfigMap) also
    /// makes `SourceReady` false: the controller only saw that the references exist.
    fn mark_source(&mut self, reason_text: &str, message: &str) {
        if matches!(
            reason_text,
            reason::SOURCE_NOT_FOUND
                | reason::SOURCE_UNAVAILABLE
                | reason::SOURCE_REFUSED
                | reason::SECRET_NOT_FOUND
                | reason::CONFIG_MAP_NOT_FOUND
        ) {
            self.set(SOURCE_READY, false, reason_text, message);
        }
    }

    /// Write the status if it changed, and record an event when Ready changes.
    async fn write(&self, event: Option<(EventType, &str, &str)>) -> Result<(), Error> {
        let (mut a, mut b) = (self.current.clone(), self.st.clone());
        // The worker's fields are not ours to compare or write.
        (a.progress, b.progress, a.result, b.result) = (None, None, None, None);
        if a == b {
            return Ok(());
        }
        status::apply_controller_status(&self.api, &self.obj.name_any(), &self.st).await?;
        if let Some((type_, reason, note)) = event {
            let ready = |s: &ImageImportStatus| {
                status::find(&s.conditions, READY).map(|c| (c.status.clone(), c.reason.clone()))
            };
            if ready(&self.current) != ready(&self.st) {
                publish(self.ctx, self.obj, type_, reason, note).await;
            }
        }
        Ok(())
    }

    /// The worker Job is running.
    async fn importing(mut self, job_name: &str) -> Result<Action, Error> {
        self.ctx.set_running(self.obj, true);
        let msg = format!(
            "worker Job {job_name} is importing (attempt {})",
            self.st.attempts
        );
        let mut again = Duration::from_secs(60);
        match upload::running_reason(self.obj, &self.st) {
            Some((r, m, after)) => {
                self.set(IMPORTING, true, r, &m);
                self.set(READY, false, r, &m);
                again = after;
            }
            None => {
                self.set(IMPORTING, true, reason::IMPORTING, &msg);
                self.set(READY, false, reason::IMPORTING, &msg);
            }
        }
        self.write(None).await?;
        // Job events wake us; this is only a safety net (and how upload progress is seen).
        Ok(Action::requeue(again))
    }

    /// The worker reports its result before exiting; a Job that ended without one was killed
    /// (OOM, eviction, deadline): transient.
    async fn job_ended_without_result(
        mut self,
        job_name: &str,
        state: JobState,
    ) -> Result<Action, Error> {
        // But the object was read before the Job: a result written in between (the Job read
        // may have waited out a 429's Retry-After meanwhile) is only seen by a read made after
        // the Job's end. Read again before calling it lost.
        self.ctx.set_running(self.obj, false);
        if result_reported(&self.api, &self.obj.name_any(), self.generation, job_name).await? {
            // Once the cache has the result (not at once: a lagging watch would make this a
            // busy loop of reads).
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        let wait = retry_delay(self.st.attempts);
        let ended = if state == JobState::Failed {
            "failed"
        } else {
            "completed"
        };
        let msg = format!(
            "worker Job {job_name} {ended} without reporting a result (killed, out of memory or past its deadline); retrying in {}s",
            wait.as_secs()
        );
        // A lost worker is a failed attempt too (counted here: it reported nothing but its
        // progress, and it ran until now).
        let seconds = self.st.start_time.as_ref().map(|start| {
            k8s_openapi::jiff::Timestamp::now()
                .duration_since(start.0)
                .as_secs_f64()
        });
        self.ctx.metrics.finished(super::metrics::Finished {
            succeeded: false,
            reason: reason::WORKER_FAILED,
            bytes_read: self
                .obj
                .status
                .as_ref()
                .and_then(|s| s.progress.as_ref())
                .map_or(0, |p| p.bytes_done),
            bytes_pushed: 0,
            seconds,
        });
        self.st.job_name = None;
        self.st.next_attempt_after = Some(Time(k8s_openapi::jiff::Timestamp::now() + wait));
        self.set(READY, false, reason::WORKER_FAILED, &msg);
        self.set(IMPORTING, false, reason::RETRYING, &msg);
        self.write(Some((EventType::Warning, reason::WORKER_FAILED, &msg)))
            .await?;
        Ok(Action::requeue(wait))
    }

    /// The attempt failed transiently: wait out the backoff, then start the next attempt.
    async fn after_transient_failure(mut self, r: &WorkerResult) -> Result<Action, Error> {
        let wait = retry_delay(self.st.attempts);
        let finished = r
            .finished
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
        let elapsed = k8s_openapi::jiff::Timestamp::now()
            .duration_since(finished)
            .unsigned_abs();
        let reason_text = failure_reason(r);
        let msg = format!(
            "attempt {} failed: {}; retrying in {}s",
            self.st.attempts,
            r.message.clone().unwrap_or_default(),
            wait.saturating_sub(elapsed).as_secs()
        );
        self.ctx.set_running(self.obj, false);
        let first =
            status::find(&self.current.conditions, READY).is_none_or(|c| c.reason != reason_text);
        if first {
            count_result(self.ctx, self.obj, &self.st, r);
        }
        if elapsed >= wait {
            return self.start_attempt().await;
        }
        self.mark_source(&reason_text, &msg);
        self.set(READY, false, &reason_text, &msg);
        self.set(IMPORTING, false, reason::RETRYING, &msg);
        self.write(Some((EventType::Warning, reason::RETRYING, &msg)))
            .await?;
        Ok(Action::requeue(wait - elapsed))
    }

    /// The attempt finished for good: record its outcome.
    async fn finish(mut self, r: &WorkerResult) -> Result<(), Error> {
        self.ctx.set_running(self.obj, false);
        let generation = self.generation;
        let already = status::find(&self.current.conditions, READY).is_some_and(|c| {
            c.observed_generation == Some(generation)
                && (c.status == "True") == r.succeeded
                && (r.succeeded || Some(&c.reason) == r.reason.as_ref())
        });
        if !already {
            count_result(self.ctx, self.obj, &self.st, r);
        }
        if r.succeeded {
            let msg = match r.images.len() {
                0 | 1 => format!(
                    "imported {} ({} layers)",
                    r.pushed.join(", "),
                    r.layers.unwrap_or(0)
                ),
                n => format!(
                    "imported {n} images ({} tags, {} layers)",
                    r.pushed.len(),
                    r.layers.unwrap_or(0)
                ),
            };
            let st = &mut self.st;
            st.digest = r.digest.clone();
            st.image_id = r.image_id.clone();
            st.images = r.images.clone();
            st.pushed = r.pushed.clone();
            st.layers = r.layers;
            st.pushed_bytes = r.pushed_bytes;
            st.left_out = r.left_out.clone();
            st.completion_time = st
                .completion_time
                .clone()
                .or_else(|| r.finished.clone())
                .or_else(|| Some(status::now()));
            self.set(READY, true, reason::SUCCEEDED, &msg);
            self.set(IMPORTING, false, reason::SUCCEEDED, "import finished");
            self.set(
                VERIFIED,
                true,
                reason::SUCCEEDED,
                "every layer matches the config's diff_ids",
            );
            self.set(SOURCE_READY, true, reason::SUCCEEDED, "archive read");
            self.write(Some((EventType::Normal, reason::SUCCEEDED, &msg)))
                .await
        } else {
            let reason_text = failure_reason(r);
            let msg = format!(
                "{} (not retried: fix the archive or the spec; a spec change starts a new import)",
                r.message.clone().unwrap_or_default()
            );
            self.st.completion_time = self
                .st
                .completion_time
                .clone()
                .or_else(|| r.finished.clone());
            self.mark_source(&reason_text, &msg);
            self.set(READY, false, &reason_text, &msg);
            self.set(IMPORTING, false, &reason_text, "import failed");
            if matches!(
                reason_text.as_str(),
                reason::VERIFICATION_FAILED | reason::INVALID_ARCHIVE
            ) {
                self.set(VERIFIED, false, &reason_text, &msg);
            }
            self.write(Some((EventType::Warning, &reason_text, &msg)))
                .await
        }
    }

    /// Start the next attempt under a new Job name.
    async fn start_attempt(self) -> Result<Action, Error> {
        let attempt = self.st.attempts + 1;
        let name = job::job_name(self.obj, self.generation, attempt);
        self.start_attempt_named(name, attempt).await
    }

    /// Create the worker Job `job_name` for `attempt`, once policy, source and the concurrency
    /// limit allow it.
    async fn start_attempt_named(
        mut self,
        job_name: String,
        attempt: u32,
    ) -> Result<Action, Error> {
        let ctx = self.ctx;
        let ns = self.obj.namespace().unwrap_or_default();
        // The cluster policy first: nothing runs that the platform team did not allow.
        if let Some(msg) = ctx.config.policy.check(&ns, &self.obj.spec) {
            self.set(READY, false, reason::POLICY_VIOLATION, &msg);
            self.write(Some((EventType::Warning, reason::POLICY_VIOLATION, &msg)))
                .await?;
            // The policy may change: look again now and then.
            return Ok(Action::requeue(Duration::from_secs(120)));
        }
        // A claim that does not exist (yet) is explained, and looked for again later.
        if let Some(pvc) = &self.obj.spec.source.pvc {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            if claims.get_metadata_opt(&pvc.claim_name).await?.is_none() {
                let msg = format!(
                    "PersistentVolumeClaim {} not found in namespace {ns}",
                    pvc.claim_name
                );
                self.set(SOURCE_READY, false, reason::SOURCE_NOT_FOUND, &msg);
                self.set(READY, false, reason::SOURCE_NOT_FOUND, &msg);
                self.write(Some((EventType::Warning, reason::SOURCE_NOT_FOUND, &msg)))
                    .await?;
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
        }
        // Concurrency limit over all namespaces (held until the Job exists).
        let _admission = ctx.admission.lock().await;
        if !upload::is_upload(self.obj)
            && let Some(busy) = self.at_capacity(&job_name).await?
        {
            let msg = format!(
                "waiting: {busy} imports are running (limit {})",
                ctx.config.max_concurrent_imports
            );
            self.set(READY, false, reason::QUEUED, &msg);
            self.write(None).await?;
            return Ok(Action::requeue(Duration::from_secs(3)));
        }
        super::rbac::ensure_worker_access(ctx, &ns).await?;
        let grant = ctx.config.policy.grant(&ns);
        let job = job::build(
            self.obj,
            &ctx.config.worker,
            grant,
            &job_name,
            self.generation,
            attempt,
        );
        match self.jobs.create(&PostParams::default(), &job).await {
            Ok(_) => {}
            // Created by an earlier pass whose status write was lost: ours, if it is owned by
            // this very object. A Job left by a deleted namesake (same name, another uid, not
            // yet collected) is not adopted: its worker would report an old spec's import.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let existing = self.jobs.get_metadata_opt(&job_name).await?;
                let ours = existing.is_some_and(|j| {
                    j.metadata
                        .owner_references
                        .unwrap_or_default()
                        .iter()
                        .any(|o| Some(&o.uid) == self.obj.metadata.uid.as_ref())
                });
                if !ours {
                    delete_job(&self.jobs, &job_name).await?;
                    return Ok(Action::requeue(Duration::from_secs(2)));
                }
            }
            Err(e) => return Err(e.into()),
        }
        let st = &mut self.st;
        st.job_name = Some(job_name.clone());
        st.attempts = attempt;
        st.next_attempt_after = None;
        st.start_time = st.start_time.clone().or_else(|| Some(status::now()));
        st.completion_time = None;
        let msg = format!("worker Job {job_name} created (attempt {attempt})");
        self.set(
            SOURCE_READY,
            true,
            reason::JOB_CREATED,
            "source and references resolved",
        );
        self.set(IMPORTING, true, reason::JOB_CREATED, &msg);
        self.set(READY, false, reason::IMPORTING, &msg);
        upload::set_url(self.obj, &ctx.config.worker.upload, &mut self.st);
        let mut again = Duration::from_secs(60);
        if let Some((r, m, after)) = upload::running_reason(self.obj, &self.st) {
            self.set(READY, false, r, &m);
            again = after;
        }
        self.write(Some((EventType::Normal, reason::JOB_CREATED, &msg)))
            .await?;
        Ok(Action::requeue(again))
    }

    /// `Some(running)` when the concurrency limit leaves no room for `job_name` (a Job that
    /// already exists under that name takes no new room).
    async fn at_capacity(&self, job_name: &str) -> Result<Option<usize>, Error> {
        let limit = self.ctx.config.max_concurrent_imports;
        let all: Api<Job> = Api::all(self.ctx.client.clone());
        let ours = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
        // Only Jobs an ImageImport owns take room: anyone may put the label on a Job of theirs.
        let owned = |meta: &kube::api::ObjectMeta| {
            meta.owner_references.as_ref().is_some_and(|refs| {
                refs.iter().any(|o| {
                    o.controller == Some(true)
                        && o.kind == "ImageImport"
                        && o.api_version.starts_with(crate::api::GROUP)
                })
            })
        };
        // Metadata first: cheap, and enough while there are fewer Jobs than the limit.
        let listed = all.list_metadata(&ours).await?;
        if listed
            .items
            .iter()
            .filter(|j| owned(&j.metadata) && !upload::is_upload_job(&j.metadata))
            .count()
            < limit
            || self.jobs.get_metadata_opt(job_name).await?.is_some()
        {
            return Ok(None);
        }
        let busy = all
            .list(&ours)
            .await?
            .items
            .iter()
            .filter(|j| {
                owned(&j.metadata)
                    && !upload::is_upload_job(&j.metadata)
                    && job::state(j) == JobState::Running
            })
            .count();
        Ok((busy >= limit).then_some(busy))
    }
}

/// Whether the worker of `job_name` has reported its result, read from the API now.
async fn result_reported(
    api: &Api<ImageImport>,
    name: &str,
    generation: i64,
    job_name: &str,
) -> Result<bool, Error> {
    let fresh = api.get_opt(name).await?;
    Ok(fresh
        .and_then(|o| o.status)
        .and_then(|s| s.result)
        .is_some_and(|r| r.generation == generation && r.job_name == job_name))
}

/// The condition reason of a failed attempt (a worker that gave none failed as a worker).
fn failure_reason(r: &WorkerResult) -> String {
    r.reason
        .clone()
        .unwrap_or_else(|| reason::WORKER_FAILED.into())
}

/// Metrics for a finished attempt (counted once, when its outcome is first recorded).
fn count_result(ctx: &Context, obj: &ImageImport, st: &ImageImportStatus, r: &WorkerResult) {
    let reason = if r.succeeded {
        reason::SUCCEEDED.to_string()
    } else {
        r.reason.clone().unwrap_or_default()
    };
    ctx.metrics.finished(super::metrics::Finished {
        succeeded: r.succeeded,
        reason: &reason,
        bytes_read: obj
            .status
            .as_ref()
            .and_then(|s| s.progress.as_ref())
            .map_or(0, |p| p.bytes_done),
        bytes_pushed: r.pushed_bytes.unwrap_or(0),
        seconds: match (&st.start_time, &r.finished) {
            (Some(start), Some(end)) => Some(end.0.duration_since(start.0).as_secs_f64()),
            _ => None,
        },
    });
}

async fn publish(ctx: &Context, obj: &ImageImport, type_: EventType, reason: &str, note: &str) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1024).collect()),
        action: "Import".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish event");
    }
}

/// Delete a superseded worker Job (gone already is fine). Background propagation: the garbage
/// collector then deletes its Pod, which `Pass::wait_for_previous_workers` waits out.
async fn delete_job(jobs: &Api<Job>, name: &str) -> Result<(), Error> {
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match jobs.delete(name, &dp).await {
        Ok(_) => tracing::info!(job = name, "stopped the previous generation's worker"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => {
            tracing::warn!(job = name, error = %e, "could not delete old worker Job");
            return Err(e.into());
        }
    }
    Ok(())
}

impl Pass<'_> {
    /// `Some(action)` while a worker Pod of an earlier generation of this ImageImport has not
    /// ended: the status says so, and the next look is a few seconds away (Pods are not
    /// watched). A Pod counts until it is gone or in a terminal phase (every container of a
    /// `restartPolicy: Never` Pod has then exited), so one terminating, or on a node that no
    /// longer answers, holds the new generation back: it may still be pushing.
    async fn wait_for_previous_workers(&mut self) -> Result<Option<Action>, Error> {
        let ns = self.obj.namespace().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
        let selector = format!(
            "{LABEL_MANAGED_BY}={MANAGER},{LABEL_NAME}={}",
            job::label_value(&self.obj.name_any())
        );
        let running: Vec<String> = pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .iter()
            .filter(|p| is_unfinished_worker_before(p, self.generation))
            .map(|p| p.name_any())
            .collect();
        if running.is_empty() {
            return Ok(None);
        }
        let shown = running
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let more = match running.len() {
            n if n > 3 => format!(" and {} more", n - 3),
            _ => String::new(),
        };
        let msg = format!(
            "waiting for the previous import's worker to stop (Pod {shown}{more}) before \
             importing generation {}: its Job was deleted, but a worker still pushing could move \
             the tags after this import",
            self.generation
        );
        self.set(READY, false, reason::PENDING, &msg);
        self.set(IMPORTING, false, reason::PENDING, &msg);
        self.write(Some((EventType::Normal, reason::PENDING, &msg)))
            .await?;
        Ok(Some(Action::requeue(Duration::from_secs(3))))
    }
}

/// A worker Pod of a generation before `generation` whose containers may still run.
fn is_unfinished_worker_before(pod: &Pod, generation: i64) -> bool {
    let older = pod
        .labels()
        .get(LABEL_GENERATION)
        .and_then(|g| g.parse::<i64>().ok())
        .is_some_and(|g| g < generation);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    older && !matches!(phase, Some("Succeeded" | "Failed"))
}
