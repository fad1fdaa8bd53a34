//! The reconciler: level-based, idempotent. Everything it needs to decide is in the
//! ImageImport's status and the worker Job it names, so a restarted controller picks up
//! exactly where the last one stopped.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use super::job::{self, JobState, LABEL_MANAGED_BY, LABEL_NAME, MANAGER};
use super::status::{self, condition};
use super::{Context, Error};
use crate::api::{IMPORTING, READY, SOURCE_READY, VERIFIED};
use crate::api::{ImageImport, ImageImportStatus, WorkerResult, reason};
#[allow(unused_imports)]
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
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    // Read it fresh: a worker's result may be newer than the cache that woke us (the Job's
    // completion can arrive first), and deciding on stale status would retry a success.
    let Some(obj) = api.get_opt(&name).await?.map(Arc::new) else {
        return Ok(Action::await_change());
    };
    let generation = obj.metadata.generation.unwrap_or(0);
    let current = obj.status.clone().unwrap_or_default();
    let mut st = current.clone();

    if obj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }

    // A new generation starts over: the previous generation's Job is stopped.
    if st.observed_generation != Some(generation) {
        if let Some(old) = &st.job_name {
            delete_job(&jobs, old).await;
        }
        st = ImageImportStatus {
            observed_generation: Some(generation),
            conditions: st.conditions.clone(),
            result: st.result.clone(),
            ..Default::default()
        };
    }

    let result = st
        .result
        .clone()
        .filter(|r| r.generation == generation && Some(&r.job_name) == st.job_name.as_ref());

    // Finished for this generation: nothing to do until the spec changes.
    if let Some(r) = &result
        && (r.succeeded || !r.transient)
    {
        finish(&ctx, &obj, &api, &current, st, r).await?;
        return Ok(Action::await_change());
    }

    if let Some(r) = &result {
        // Transient failure: wait out the backoff, then start the next attempt.
        let wait = retry_delay(st.attempts);
        let finished = r
            .finished
            .as_ref()
            .map(|t| t.0)
            .unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
        let elapsed = k8s_openapi::jiff::Timestamp::now()
            .duration_since(finished)
            .unsigned_abs();
        let reason_text = r
            .reason
            .clone()
            .unwrap_or_else(|| reason::WORKER_FAILED.into());
        let msg = format!(
            "attempt {} failed: {}; retrying in {}s",
            st.attempts,
            r.message.clone().unwrap_or_default(),
            wait.saturating_sub(elapsed).as_secs()
        );
        ctx.set_running(&obj, false);
        let first =
            status::find(&current.conditions, READY).is_none_or(|c| c.reason != reason_text);
        if first {
            count_result(&ctx, &obj, &st, r);
        }
        if elapsed < wait {
            set(&mut st, READY, false, &reason_text, &msg, generation);
            set(
                &mut st,
                IMPORTING,
                false,
                reason::RETRYING,
                &msg,
                generation,
            );
            write(
                &ctx,
                &obj,
                &api,
                &current,
                &st,
                Some((EventType::Warning, reason::RETRYING, &msg)),
            )
            .await?;
            return Ok(Action::requeue(wait - elapsed));
        }
        return start_attempt(&ctx, &obj, &api, &jobs, &current, st, generation).await;
    }

    // An attempt is under way: follow its Job.
    if let Some(job_name) = st.job_name.clone() {
        match jobs.get_opt(&job_name).await? {
            Some(job) => match job::state(&job) {
                JobState::Running => {
                    ctx.set_running(&obj, true);
                    let msg = format!(
                        "worker Job {job_name} is importing (attempt {})",
                        st.attempts
                    );
                    set(
                        &mut st,
                        IMPORTING,
                        true,
                        reason::IMPORTING,
                        &msg,
                        generation,
                    );
                    set(&mut st, READY, false, reason::IMPORTING, &msg, generation);
                    write(&ctx, &obj, &api, &current, &st, None).await?;
                    // Job events wake us; this is only a safety net.
                    return Ok(Action::requeue(Duration::from_secs(60)));
                }
                // The worker reports its result before exiting; a Job that ended without one
                // was killed (OOM, eviction, deadline): transient.
                state => {
                    // But the object was read before the Job: a result written in between (the
                    // Job read may have waited out a 429's Retry-After meanwhile) is only seen by
                    // a read made after the Job's end. Read again before calling it lost.
                    if result_reported(&api, &name, generation, &job_name).await? {
                        // Once the cache has the result (not at once: a lagging watch would
                        // make this a busy loop of reads).
                        return Ok(Action::requeue(Duration::from_secs(1)));
                    }
                    let wait = retry_delay(st.attempts);
                    let msg = format!(
                        "worker Job {job_name} {} without reporting a result (killed, out of memory or past its deadline); retrying in {}s",
                        if state == JobState::Failed {
                            "failed"
                        } else {
                            "completed"
                        },
                        wait.as_secs()
                    );
                    st.job_name = None;
                    st.next_attempt_after =
                        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            k8s_openapi::jiff::Timestamp::now() + wait,
                        ));
                    set(
                        &mut st,
                        READY,
                        false,
                        reason::WORKER_FAILED,
                        &msg,
                        generation,
                    );
                    set(
                        &mut st,
                        IMPORTING,
                        false,
                        reason::RETRYING,
                        &msg,
                        generation,
                    );
                    write(
                        &ctx,
                        &obj,
                        &api,
                        &current,
                        &st,
                        Some((EventType::Warning, reason::WORKER_FAILED, &msg)),
                    )
                    .await?;
                    return Ok(Action::requeue(wait));
                }
            },
            None => {
                // Deleted by someone (or not yet visible): create it again under the same name.
                let attempt = st.attempts.max(1);
                return start_attempt_named(
                    &ctx, &obj, &api, &jobs, &current, st, generation, job_name, attempt,
                )
                .await;
            }
        }
    }

    if let Some(after) = &st.next_attempt_after {
        let now = k8s_openapi::jiff::Timestamp::now();
        if after.0 > now {
            return Ok(Action::requeue(after.0.duration_since(now).unsigned_abs()));
        }
    }
    start_attempt(&ctx, &obj, &api, &jobs, &current, st, generation).await
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

/// Metrics for a finished attempt (counted once, when its outcome is first recorded).
fn count_result(ctx: &Context, obj: &ImageImport, st: &ImageImportStatus, r: &WorkerResult) {
    let m = &ctx.metrics;
    let reason = if r.succeeded {
        reason::SUCCEEDED.to_string()
    } else {
        r.reason.clone().unwrap_or_default()
    };
    let result = if r.succeeded { "succeeded" } else { "failed" };
    m.imports
        .get_or_create(&super::metrics::ResultLabels {
            result: result.into(),
            reason,
        })
        .inc();
    m.bytes_pushed.inc_by(r.pushed_bytes.unwrap_or(0));
    if let Some(p) = obj.status.as_ref().and_then(|s| s.progress.as_ref()) {
        m.bytes_read.inc_by(p.bytes_done);
    }
    if let (Some(start), Some(end)) = (&st.start_time, &r.finished) {
        let secs = end.0.duration_since(start.0).as_secs_f64();
        if secs >= 0.0 {
            m.duration.observe(secs);
        }
    }
}

fn set(
    st: &mut ImageImportStatus,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: i64,
) {
    let c = condition(
        &st.conditions,
        type_,
        status,
        reason,
        message,
        Some(generation),
    );
    st.conditions.retain(|x| x.type_ != type_);
    st.conditions.push(c);
    st.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// Write the status if it changed, and record an event for transitions.
async fn write(
    ctx: &Context,
    obj: &ImageImport,
    api: &Api<ImageImport>,
    current: &ImageImportStatus,
    st: &ImageImportStatus,
    event: Option<(EventType, &str, &str)>,
) -> Result<(), Error> {
    let mut a = current.clone();
    let mut b = st.clone();
    a.progress = None;
    b.progress = None;
    a.result = None;
    b.result = None;
    if a == b {
        return Ok(());
    }
    status::apply_controller_status(api, &obj.name_any(), st).await?;
    if let Some((type_, reason, note)) = event {
        let ready_changed = status::find(&current.conditions, READY)
            .map(|c| (&c.status, &c.reason))
            != status::find(&st.conditions, READY).map(|c| (&c.status, &c.reason));
        if ready_changed {
            publish(ctx, obj, type_, reason, note).await;
        }
    }
    Ok(())
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

async fn finish(
    ctx: &Context,
    obj: &ImageImport,
    api: &Api<ImageImport>,
    current: &ImageImportStatus,
    mut st: ImageImportStatus,
    r: &WorkerResult,
) -> Result<(), Error> {
    let generation = st.observed_generation.unwrap_or(0);
    ctx.set_running(obj, false);
    let already = status::find(&current.conditions, READY).is_some_and(|c| {
        c.observed_generation == Some(generation)
            && (c.status == "True") == r.succeeded
            && (r.succeeded || Some(&c.reason) == r.reason.as_ref())
    });
    if !already {
        count_result(ctx, obj, &st, r);
    }
    if r.succeeded {
        let msg = format!(
            "imported {} ({} layers)",
            r.pushed.join(", "),
            r.layers.unwrap_or(0)
        );
        st.digest = r.digest.clone();
        st.image_id = r.image_id.clone();
        st.pushed = r.pushed.clone();
        st.layers = r.layers;
        st.pushed_bytes = r.pushed_bytes;
        st.left_out = r.left_out.clone();
        st.completion_time = st
            .completion_time
            .clone()
            .or_else(|| r.finished.clone())
            .or_else(|| Some(status::now()));
        set(&mut st, READY, true, reason::SUCCEEDED, &msg, generation);
        set(
            &mut st,
            IMPORTING,
            false,
            reason::SUCCEEDED,
            "import finished",
            generation,
        );
        set(
            &mut st,
            VERIFIED,
            true,
            reason::SUCCEEDED,
            "every layer matches the config's diff_ids",
            generation,
        );
        set(
            &mut st,
            SOURCE_READY,
            true,
            reason::SUCCEEDED,
            "archive read",
            generation,
        );
        write(
            ctx,
            obj,
            api,
            current,
            &st,
            Some((EventType::Normal, reason::SUCCEEDED, &msg)),
        )
        .await
    } else {
        let reason_text = r
            .reason
            .clone()
            .unwrap_or_else(|| reason::WORKER_FAILED.into());
        let msg = format!(
            "{} (not retried: fix the archive or the spec; a spec change starts a new import)",
            r.message.clone().unwrap_or_default()
        );
        st.completion_time = st.completion_time.clone().or_else(|| r.finished.clone());
        set(&mut st, READY, false, &reason_text, &msg, generation);
        set(
            &mut st,
            IMPORTING,
            false,
            &reason_text,
            "import failed",
            generation,
        );
        if matches!(
            reason_text.as_str(),
            "VerificationFailed" | "InvalidArchive"
        ) {
            set(&mut st, VERIFIED, false, &reason_text, &msg, generation);
        }
        write(
            ctx,
            obj,
            api,
            current,
            &st,
            Some((EventType::Warning, &reason_text, &msg)),
        )
        .await
    }
}

async fn start_attempt(
    ctx: &Context,
    obj: &ImageImport,
    api: &Api<ImageImport>,
    jobs: &Api<Job>,
    current: &ImageImportStatus,
    st: ImageImportStatus,
    generation: i64,
) -> Result<Action, Error> {
    let attempt = st.attempts + 1;
    let name = job::job_name(obj, generation, attempt);
    start_attempt_named(ctx, obj, api, jobs, current, st, generation, name, attempt).await
}

#[allow(clippy::too_many_arguments)]
async fn start_attempt_named(
    ctx: &Context,
    obj: &ImageImport,
    api: &Api<ImageImport>,
    jobs: &Api<Job>,
    current: &ImageImportStatus,
    mut st: ImageImportStatus,
    generation: i64,
    job_name: String,
    attempt: u32,
) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    // The cluster policy first: nothing runs that the platform team did not allow.
    if let Some(msg) = ctx.config.policy.check(&ns, &obj.spec) {
        set(
            &mut st,
            READY,
            false,
            reason::POLICY_VIOLATION,
            &msg,
            generation,
        );
        write(
            ctx,
            obj,
            api,
            current,
            &st,
            Some((EventType::Warning, reason::POLICY_VIOLATION, &msg)),
        )
        .await?;
        // The policy may change: look again now and then.
        return Ok(Action::requeue(Duration::from_secs(120)));
    }
    // A claim that does not exist (yet) is explained, and looked for again later.
    if let Some(pvc) = &obj.spec.source.pvc {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
        if claims.get_metadata_opt(&pvc.claim_name).await?.is_none() {
            let msg = format!(
                "PersistentVolumeClaim {} not found in namespace {ns}",
                pvc.claim_name
            );
            set(
                &mut st,
                SOURCE_READY,
                false,
                reason::SOURCE_NOT_FOUND,
                &msg,
                generation,
            );
            set(
                &mut st,
                READY,
                false,
                reason::SOURCE_NOT_FOUND,
                &msg,
                generation,
            );
            write(
                ctx,
                obj,
                api,
                current,
                &st,
                Some((EventType::Warning, reason::SOURCE_NOT_FOUND, &msg)),
            )
            .await?;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    }
    // Concurrency limit over all namespaces (held until the Job exists).
    let _admission = ctx.admission.lock().await;
    let all: Api<Job> = Api::all(ctx.client.clone());
    let active = all
        .list_metadata(&ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}")))
        .await?;
    let running = active.items.len();
    if running >= ctx.config.max_concurrent_imports
        && jobs.get_metadata_opt(&job_name).await?.is_none()
    {
        let running_jobs = all
            .list(&ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}")))
            .await?;
        let busy = running_jobs
            .items
            .iter()
            .filter(|j| job::state(j) == JobState::Running)
            .count();
        if busy >= ctx.config.max_concurrent_imports {
            let msg = format!(
                "waiting: {busy} imports are running (limit {})",
                ctx.config.max_concurrent_imports
            );
            set(&mut st, READY, false, reason::QUEUED, &msg, generation);
            write(ctx, obj, api, current, &st, None).await?;
            return Ok(Action::requeue(Duration::from_secs(3)));
        }
    }
    super::rbac::ensure_worker_access(ctx, &ns).await?;
    let url_hosts = ctx.config.policy.url_hosts(&ns);
    let job = job::build(
        obj,
        &ctx.config.worker,
        url_hosts,
        &job_name,
        generation,
        attempt,
    );
    match jobs.create(&PostParams::default(), &job).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    st.job_name = Some(job_name.clone());
    st.attempts = attempt;
    st.next_attempt_after = None;
    st.start_time = st.start_time.clone().or_else(|| Some(status::now()));
    st.completion_time = None;
    let msg = format!("worker Job {job_name} created (attempt {})", st.attempts);
    set(
        &mut st,
        SOURCE_READY,
        true,
        reason::JOB_CREATED,
        "source and references resolved",
        generation,
    );
    set(
        &mut st,
        IMPORTING,
        true,
        reason::JOB_CREATED,
        &msg,
        generation,
    );
    set(&mut st, READY, false, reason::IMPORTING, &msg, generation);
    write(
        ctx,
        obj,
        api,
        current,
        &st,
        Some((EventType::Normal, reason::JOB_CREATED, &msg)),
    )
    .await?;
    let _ = LABEL_NAME;
    Ok(Action::requeue(Duration::from_secs(60)))
}

async fn delete_job(jobs: &Api<Job>, name: &str) {
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match jobs.delete(name, &dp).await {
        Ok(_) => tracing::info!(job = name, "stopped the previous generation's worker"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => tracing::warn!(job = name, error = %e, "could not delete old worker Job"),
    }
}
