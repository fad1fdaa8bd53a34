//! The reconciler: level-based, idempotent. Everything it needs to decide is in the
//! ImageImport's status (its own fields), the worker Job it names (if this ImageImport
//! controls it) and that Job's Pods (the worker's report, `outcome.rs`), so a restarted
//! controller picks up exactly where the last one stopped.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::job::{self, JobState, LABEL_GENERATION, LABEL_MANAGED_BY, LABEL_NAME, MANAGER};
use super::outcome::{self, Outcome};
use super::report::WorkerReport;
use super::status::{self, condition};
use super::upload;
use super::{Context, Error};
use crate::api::{IMPORTING, READY, RECONCILING, SOURCE_READY, STALLED, VERIFIED};
use crate::api::{ImageImport, ImageImportStatus, reason};
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
    // Read it fresh: the cache that woke us may predate our own last status write, and
    // deciding on stale status would start an attempt twice.
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
    // status untouched, if it cannot be: the next pass tries again), and every condition is
    // about the new generation only.
    if pass.st.observed_generation != Some(pass.generation) {
        if let Some(old) = pass.st.job_name.clone() {
            pass.delete_own_job(&old).await?;
        }
        pass.st = ImageImportStatus {
            observed_generation: Some(pass.generation),
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

    // Finished for this generation (imported, failed for good, or out of attempts): nothing
    // to do until the spec changes.
    if pass.st.completion_time.is_some() {
        ctx.set_running(&obj, false);
        return Ok(Action::await_change());
    }

    // An attempt is under way: follow its Job.
    if let Some(job_name) = pass.st.job_name.clone() {
        return match pass.jobs.get_opt(&job_name).await? {
            Some(job) if !pass.owns(&job) => pass.foreign_job(&job_name).await,
            Some(job) => match job::state(&job) {
                JobState::Running => pass.importing(&job_name).await,
                _ => match outcome::read(&ctx.client, &job).await? {
                    Outcome::Reported(mut r) => {
                        r.expand_refs(&obj.spec.target.repository);
                        if r.succeeded || !r.transient {
                            pass.finish(&r).await?;
                            Ok(Action::await_change())
                        } else {
                            pass.attempt_failed(&job_name, AttemptEnd::Reported(&r))
                                .await
                        }
                    }
                    Outcome::Lost(seen) => {
                        pass.attempt_failed(&job_name, AttemptEnd::Lost(&seen))
                            .await
                    }
                },
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

/// How an attempt that will be retried ended.
enum AttemptEnd<'r> {
    /// The worker reported a transient failure.
    Reported(&'r WorkerReport),
    /// The worker ended without a report (what its Pods showed).
    Lost(&'r str),
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

    /// Set one condition of the status being built (`None`: Unknown).
    fn set(&mut self, type_: &str, status: Option<bool>, reason: &str, message: &str) {
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

    /// Drop a condition (kstatus' `Reconciling` and `Stalled` are present only while true).
    fn clear(&mut self, type_: &str) {
        self.st.conditions.retain(|x| x.type_ != type_);
    }

    /// Still working on this generation: `Ready=Unknown`, `Reconciling=True`, not stalled.
    fn in_progress(&mut self, reason: &str, message: &str) {
        self.set(READY, None, reason, message);
        self.set(RECONCILING, Some(true), reason, message);
        self.clear(STALLED);
    }

    /// Done with this generation, short of success: `Ready=False`, `Stalled=True`.
    fn stalled(&mut self, reason: &str, message: &str) {
        self.set(READY, Some(false), reason, message);
        self.set(STALLED, Some(true), reason, message);
        self.clear(RECONCILING);
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
            self.set(SOURCE_READY, Some(false), reason_text, message);
        }
    }

    /// Whether this ImageImport is the controller of `job` (its uid, not its name).
    fn owns(&self, job: &Job) -> bool {
        self.obj
            .metadata
            .uid
            .as_deref()
            .is_some_and(|uid| outcome::controlled_by(&job.metadata, "ImageImport", uid))
    }

    /// Write the status if it changed, and record an event when Ready changes. The event's
    /// note is stable for a repeated situation (no attempt numbers or waits), so the API
    /// server folds repeats into one series.
    async fn write(&self, event: Option<(EventType, &str, &str)>) -> Result<(), Error> {
        let (mut a, mut b) = (self.current.clone(), self.st.clone());
        // The worker's field is not ours to compare or write.
        (a.progress, b.progress) = (None, None);
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
                self.set(IMPORTING, Some(true), r, &m);
                self.in_progress(r, &m);
                again = after;
            }
            None => {
                self.set(IMPORTING, Some(true), reason::IMPORTING, &msg);
                self.in_progress(reason::IMPORTING, &msg);
            }
        }
        self.write(None).await?;
        // Job events wake us; this is only a safety net (and how upload progress is seen).
        Ok(Action::requeue(again))
    }

    /// `status.jobName` names a Job this ImageImport does not control (someone wrote the
    /// status, or made a Job of that name): never followed, believed or deleted.
    async fn foreign_job(mut self, job_name: &str) -> Result<Action, Error> {
        let msg = format!(
            "Job {job_name} is not controlled by this ImageImport: it is ignored and left alone; \
             delete it, or change the spec to start a new import"
        );
        self.set(IMPORTING, Some(false), reason::JOB_CONFLICT, &msg);
        self.in_progress(reason::JOB_CONFLICT, &msg);
        self.write(Some((EventType::Warning, reason::JOB_CONFLICT, &msg)))
            .await?;
        Ok(Action::requeue(Duration::from_secs(30)))
    }

    /// The attempt ended and will be retried after its backoff, unless it was the last one.
    async fn attempt_failed(
        mut self,
        job_name: &str,
        end: AttemptEnd<'_>,
    ) -> Result<Action, Error> {
        self.ctx.set_running(self.obj, false);
        let wait = retry_delay(self.st.attempts);
        let (reason_text, what) = match &end {
            AttemptEnd::Reported(r) => (
                r.failure_reason().to_string(),
                r.message.clone().unwrap_or_default(),
            ),
            AttemptEnd::Lost(seen) => (
                reason::WORKER_FAILED.to_string(),
                format!(
                    "worker Job {job_name} ended without reporting a result (killed, out of \
                     memory or past its deadline: {seen})"
                ),
            ),
        };
        match &end {
            AttemptEnd::Reported(r) => count_result(self.ctx, &self.st, r),
            AttemptEnd::Lost(_) => {
                count_failure(self.ctx, self.obj, &self.st, reason::WORKER_FAILED)
            }
        }
        self.st.job_name = None;
        let max = self.ctx.config.max_attempts;
        if self.st.attempts >= max {
            let msg = format!("{what}; gave up after {max} attempts (a spec change starts over)");
            self.st.completion_time = Some(status::now());
            self.mark_source(&reason_text, &msg);
            self.set(IMPORTING, Some(false), &reason_text, &msg);
            self.stalled(&reason_text, &msg);
            let note = format!("{reason_text}: gave up after {max} attempts");
            self.write(Some((EventType::Warning, &reason_text, &note)))
                .await?;
            return Ok(Action::await_change());
        }
        let finished = match &end {
            AttemptEnd::Reported(r) => r.finished.as_ref().map(|t| t.0),
            AttemptEnd::Lost(_) => None,
        };
        // Never later than now: a report's clock must not stretch the backoff either.
        let now = k8s_openapi::jiff::Timestamp::now();
        let from = finished.filter(|f| *f <= now).unwrap_or(now);
        self.st.next_attempt_after = Some(Time(from + wait));
        let msg = format!(
            "attempt {} failed: {what}; retrying in {}s",
            self.st.attempts,
            wait.as_secs()
        );
        self.mark_source(&reason_text, &msg);
        self.set(IMPORTING, Some(false), reason::RETRYING, &msg);
        self.set(READY, None, &reason_text, &msg);
        self.set(RECONCILING, Some(true), reason::RETRYING, &msg);
        self.clear(STALLED);
        let note = format!("{reason_text}: the attempt failed and is retried after a backoff");
        self.write(Some((EventType::Warning, &reason_text, &note)))
            .await?;
        Ok(Action::requeue(wait))
    }

    /// The attempt finished for good: record its outcome.
    async fn finish(mut self, r: &WorkerReport) -> Result<(), Error> {
        self.ctx.set_running(self.obj, false);
        count_result(self.ctx, &self.st, r);
        self.st.completion_time = r
            .finished
            .clone()
            .filter(|f| f.0 <= k8s_openapi::jiff::Timestamp::now())
            .or_else(|| Some(status::now()));
        self.set(
            IMPORTING,
            Some(false),
            if r.succeeded {
                reason::SUCCEEDED
            } else {
                r.failure_reason()
            },
            "import finished",
        );
        if r.succeeded {
            let refs: Vec<&str> = r
                .images
                .iter()
                .flat_map(|i| i.refs.iter().map(String::as_str))
                .collect();
            let msg = match r.images.len() + r.images_not_listed as usize {
                0 | 1 => format!(
                    "imported {}@{} ({} layers)",
                    refs.join(", "),
                    r.digest.as_deref().unwrap_or_default(),
                    r.layers.unwrap_or(0)
                ),
                n if r.images_not_listed > 0 => format!(
                    "imported {n} images ({} layers); status.images lists {} of them (the \
                     worker's report is capped at 4 KiB; its log lists every image)",
                    r.layers.unwrap_or(0),
                    r.images.len()
                ),
                n => format!(
                    "imported {n} images ({} tags, {} layers)",
                    refs.len(),
                    r.layers.unwrap_or(0)
                ),
            };
            let st = &mut self.st;
            st.digest = r.digest.clone();
            st.image_id = r.image_id.clone();
            st.images = r.images.clone();
            st.images_not_listed = r.images_not_listed;
            st.layers = r.layers;
            st.pushed_bytes = r.pushed_bytes;
            st.left_out = r.left_out.clone();
            self.set(READY, Some(true), reason::SUCCEEDED, &msg);
            self.clear(RECONCILING);
            self.clear(STALLED);
            self.set(
                VERIFIED,
                Some(true),
                reason::SUCCEEDED,
                "every layer matches the config's diff_ids",
            );
            self.set(SOURCE_READY, Some(true), reason::SUCCEEDED, "archive read");
            self.write(Some((EventType::Normal, reason::SUCCEEDED, &msg)))
                .await
        } else {
            let reason_text = r.failure_reason().to_string();
            let msg = format!(
                "{} (not retried: fix the archive or the spec; a spec change starts a new import)",
                r.message.clone().unwrap_or_default()
            );
            self.mark_source(&reason_text, &msg);
            self.stalled(&reason_text, &msg);
            if matches!(
                reason_text.as_str(),
                reason::VERIFICATION_FAILED | reason::INVALID_ARCHIVE
            ) {
                self.set(VERIFIED, Some(false), &reason_text, &msg);
            }
            self.write(Some((EventType::Warning, &reason_text, &msg)))
                .await
        }
    }

    /// Start the next attempt under a new Job name; the previous attempt's Job (kept during
    /// the backoff for its logs) is removed first.
    async fn start_attempt(self) -> Result<Action, Error> {
        let attempt = self.st.attempts + 1;
        if attempt > 1 {
            let previous = job::job_name(self.obj, self.generation, attempt - 1);
            self.delete_own_job(&previous).await?;
        }
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
        // The cluster policy first: nothing runs that the platform team did not allow. Stalled
        // (someone must act), but looked at again now and then: the policy may change.
        if let Some(msg) = ctx.config.policy.check(&ns, &self.obj.spec) {
            self.stalled(reason::POLICY_VIOLATION, &msg);
            self.write(Some((EventType::Warning, reason::POLICY_VIOLATION, &msg)))
                .await?;
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
                self.set(SOURCE_READY, Some(false), reason::SOURCE_NOT_FOUND, &msg);
                self.in_progress(reason::SOURCE_NOT_FOUND, &msg);
                self.write(Some((EventType::Warning, reason::SOURCE_NOT_FOUND, &msg)))
                    .await?;
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
        }
        // The fair queue (held until the Job exists). A Job already there under this name
        // (re-created after a lost status write) takes no new room.
        let _admission = ctx.admission.lock().await;
        let _ = ctx.job_cache.wait_until_ready().await;
        let _ = ctx.import_cache.wait_until_ready().await;
        let key = (ns.clone(), self.obj.name_any());
        let exists = ctx
            .job_cache
            .get(&ObjectRef::new(&job_name).within(&ns))
            .is_some();
        // An upload's Job waits for its bytes, not for a slot: it takes none.
        if !exists
            && !upload::is_upload(self.obj)
            && let Err(wait) = ctx.queue.admit(&key, &ctx.job_cache, &ctx.import_cache)
        {
            let msg = wait.to_string();
            self.in_progress(reason::QUEUED, &msg);
            self.write(None).await?;
            return Ok(Action::requeue(super::admission::ASK_EVERY));
        }
        if let Err(e) = super::rbac::ensure_worker_access(ctx, &ns).await {
            return self
                .setup_failed("the worker's ServiceAccount, Role or RoleBinding", e)
                .await;
        }
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
            Ok(_) => {
                ctx.queue.created(&ns, &job_name);
                // The next admission (serialized behind this one) counts Jobs from the watch:
                // wait until it shows this one, briefly (a slow watch only delays that count).
                let seen = ObjectRef::new(&job_name).within(&ns);
                for _ in 0..100 {
                    if ctx.job_cache.get(&seen).is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            // Created by an earlier pass whose status write was lost: ours, if this very object
            // controls it. A Job left by a deleted namesake (same name, another uid, not yet
            // collected) is not adopted: its worker would report an old spec's import.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let existing = self.jobs.get_opt(&job_name).await?;
                if !existing.as_ref().is_some_and(|j| self.owns(j)) {
                    if existing.as_ref().is_some_and(|j| self.left_by_namesake(j)) {
                        self.delete_job_named(&job_name).await?;
                        return Ok(Action::requeue(Duration::from_secs(2)));
                    }
                    return self.foreign_job(&job_name).await;
                }
            }
            Err(e) => return self.setup_failed("the worker Job", e.into()).await,
        }
        let st = &mut self.st;
        st.job_name = Some(job_name.clone());
        st.attempts = attempt;
        st.next_attempt_after = None;
        st.start_time = st.start_time.clone().or_else(|| Some(status::now()));
        st.completion_time = None;
        let msg = format!("worker Job {job_name} created (attempt {attempt})");
        // Unknown until the worker has read it: the controller only saw the references.
        self.set(
            SOURCE_READY,
            None,
            reason::JOB_CREATED,
            "references resolved; the worker reads the source",
        );
        self.set(IMPORTING, Some(true), reason::JOB_CREATED, &msg);
        self.in_progress(reason::IMPORTING, &msg);
        upload::set_url(self.obj, &ctx.config.worker.upload, &mut self.st);
        let mut again = Duration::from_secs(60);
        if let Some((r, m, after)) = upload::running_reason(self.obj, &self.st) {
            self.in_progress(r, &m);
            again = after;
        }
        self.write(Some((
            EventType::Normal,
            reason::JOB_CREATED,
            "worker Job created",
        )))
        .await?;
        Ok(Action::requeue(again))
    }

    /// The API server refused an object the attempt needs: said in the status and an event,
    /// not only a log line. A refused Job spec (400/422) needs a spec change (Stalled);
    /// anything else (RBAC, a conflicting RoleBinding) is looked at again in a while.
    async fn setup_failed(mut self, what: &str, e: Error) -> Result<Action, Error> {
        let Error::Kube(kube::Error::Api(ae)) = &e else {
            return Err(e);
        };
        if ae.code == 429 || ae.code >= 500 {
            return Err(e);
        }
        let msg = format!(
            "the API server refused {what}: {} ({})",
            ae.message, ae.code
        );
        let note = format!("the API server refused {what} ({})", ae.reason);
        self.ctx.set_running(self.obj, false);
        if what == "the worker Job" && matches!(ae.code, 400 | 422) {
            self.st.completion_time = Some(status::now());
            self.stalled(reason::INVALID_SPEC, &msg);
            self.write(Some((EventType::Warning, reason::INVALID_SPEC, &note)))
                .await?;
            return Ok(Action::await_change());
        }
        self.in_progress(reason::WORKER_SETUP_FAILED, &msg);
        self.write(Some((
            EventType::Warning,
            reason::WORKER_SETUP_FAILED,
            &note,
        )))
        .await?;
        Ok(Action::requeue(Duration::from_secs(15)))
    }

    /// A Job of this name whose controller is an ImageImport of the same name but another
    /// uid: a deleted predecessor of this object (names are unique while an object exists).
    fn left_by_namesake(&self, job: &Job) -> bool {
        job.metadata.owner_references.as_ref().is_some_and(|refs| {
            refs.iter().any(|o| {
                o.controller == Some(true)
                    && o.kind == "ImageImport"
                    && o.name == self.obj.name_any()
                    && Some(&o.uid) != self.obj.metadata.uid.as_ref()
            })
        })
    }

    /// Delete `name` if this ImageImport controls it (checked first: a forged
    /// `status.jobName` must not make us delete someone else's Job).
    async fn delete_own_job(&self, name: &str) -> Result<(), Error> {
        match self.jobs.get_opt(name).await? {
            Some(job) if self.owns(&job) => self.delete_job_named(name).await,
            Some(_) => {
                tracing::warn!(
                    job = name,
                    "not deleting a Job this ImageImport does not control"
                );
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn delete_job_named(&self, name: &str) -> Result<(), Error> {
        delete_job(&self.jobs, name).await
    }
}

/// Metrics for a finished attempt (counted once: when its outcome is first recorded).
fn count_result(ctx: &Context, st: &ImageImportStatus, r: &WorkerReport) {
    let reason = if r.succeeded {
        reason::SUCCEEDED
    } else {
        r.failure_reason()
    };
    ctx.metrics.finished(super::metrics::Finished {
        succeeded: r.succeeded,
        reason,
        bytes_read: r.bytes_read.unwrap_or(0),
        bytes_pushed: r.pushed_bytes.unwrap_or(0),
        seconds: match (&st.start_time, &r.finished) {
            (Some(start), Some(end)) => Some(end.0.duration_since(start.0).as_secs_f64()),
            _ => None,
        },
    });
}

/// A failed attempt that reported nothing (a lost worker): its bytes read as last reported in
/// its progress, and its duration until now, count too.
fn count_failure(ctx: &Context, obj: &ImageImport, st: &ImageImportStatus, reason: &str) {
    ctx.metrics.finished(super::metrics::Finished {
        succeeded: false,
        reason,
        bytes_read: obj
            .status
            .as_ref()
            .and_then(|s| s.progress.as_ref())
            .map_or(0, |p| p.bytes_done),
        bytes_pushed: 0,
        seconds: st.start_time.as_ref().map(|start| {
            k8s_openapi::jiff::Timestamp::now()
                .duration_since(start.0)
                .as_secs_f64()
        }),
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
        self.set(IMPORTING, Some(false), reason::PENDING, &msg);
        self.in_progress(reason::PENDING, &msg);
        self.write(Some((
            EventType::Normal,
            reason::PENDING,
            "waiting for the previous generation's worker Pod to stop",
        )))
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
