//! The operator: watches ImageImports, runs each import in a worker Job in the resource's
//! own namespace, and turns the worker's result into status conditions and events.

pub mod admission;
pub mod job;
pub mod metrics;
pub mod outcome;
pub mod policy;
pub mod rbac;
pub mod reconcile;
pub mod report;
pub mod server;
pub mod status;
pub mod upload;
pub mod worker;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, ResourceExt};

use crate::api::ImageImport;
pub use job::WorkerSettings;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("ImageImport is not namespaced")]
    NotNamespaced,
}

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub worker: WorkerSettings,
    pub max_concurrent_imports: usize,
    /// At most this many per namespace (None: only the fair queue limits a namespace).
    pub max_concurrent_imports_per_namespace: Option<usize>,
    /// Reconciles running at once.
    pub reconcile_concurrency: u16,
    /// Attempts per generation before the import is Stalled.
    pub max_attempts: u32,
    /// The platform team's policy (allowed repositories and URL hosts per namespace).
    pub policy: policy::PolicySource,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            worker: WorkerSettings::default(),
            max_concurrent_imports: 4,
            max_concurrent_imports_per_namespace: None,
            reconcile_concurrency: 16,
            max_attempts: 8,
            policy: Default::default(),
        }
    }
}

pub struct Context {
    pub client: Client,
    pub config: ControllerConfig,
    pub recorder: Recorder,
    /// Namespaces whose worker ServiceAccount, Role and RoleBinding are in place.
    pub prepared_namespaces: Arc<rbac::Prepared>,
    pub metrics: Arc<metrics::Metrics>,
    /// Serializes "count running Jobs, then create one": reconciles run concurrently, and
    /// without this two of them could both see room under the limit.
    pub admission: tokio::sync::Mutex<()>,
    /// The fair queue of imports waiting for a slot.
    pub queue: admission::Admission,
    /// The controller's watch caches: worker Jobs (labelled) and ImageImports.
    pub job_cache: reflector::Store<Job>,
    pub import_cache: reflector::Store<ImageImport>,
    /// Objects whose worker Job is running (the in-flight gauge).
    pub running: Mutex<HashSet<(String, String)>>,
    /// Consecutive reconcile errors per object, for exponential backoff (reset on success).
    pub failures: Mutex<std::collections::HashMap<(String, String), u32>>,
}

impl Context {
    fn key(obj: &ImageImport) -> (String, String) {
        (obj.namespace().unwrap_or_default(), obj.name_any())
    }

    pub(crate) fn set_running(&self, obj: &ImageImport, running: bool) {
        let mut r = self.running.lock().expect("lock");
        if running {
            r.insert(Self::key(obj));
        } else {
            r.remove(&Self::key(obj));
        }
        self.metrics.in_flight.set(r.len() as i64);
    }

    pub(crate) fn succeeded(&self, obj: &ImageImport) {
        self.failures.lock().expect("lock").remove(&Self::key(obj));
    }
}

/// Per-object exponential backoff for API errors (1 s doubling to 5 min), reset on success.
fn error_policy(obj: Arc<ImageImport>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.inc();
    let n = {
        let mut f = ctx.failures.lock().expect("lock");
        let n = f.entry(Context::key(&obj)).or_insert(0);
        *n += 1;
        *n
    };
    let delay = Duration::from_secs((1u64 << (n - 1).min(9)).min(300));
    tracing::warn!(name = %obj.name_any(), namespace = ?obj.namespace(), error = %err, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile(obj: Arc<ImageImport>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciliations.inc();
    let started = std::time::Instant::now();
    let result = reconcile::reconcile(obj.clone(), ctx.clone()).await;
    // Whatever this pass did (a Job's end seen, an import gone or admitted), the imports that
    // may start now are woken.
    ctx.queue.after_reconcile(
        &Context::key(&obj),
        started,
        &ctx.job_cache,
        &ctx.import_cache,
    );
    let action = result?;
    ctx.succeeded(&obj);
    Ok(action)
}

/// Run the controller until the shutdown future resolves.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    metrics: Arc<metrics::Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let reporter = Reporter {
        controller: "imageimport-controller".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let imports: Api<ImageImport> = Api::all(client.clone());
    let jobs: Api<Job> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let (job_cache, job_writer) = reflector::store();
    // Only spec changes (new generations) wake the reconciler from the ImageImport watch:
    // its own status writes do not. Worker outcomes arrive with their Job's end. The caches
    // keep no managedFields (they are never read, and take memory per object).
    let prepared = Arc::new(rbac::Prepared::default());
    let forget = prepared.clone();
    let stream = watcher(imports, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        // A deleted ImageImport may mean a deleted namespace: its worker identity is gone.
        .inspect(move |ev| match ev {
            Ok(watcher::Event::Delete(o)) => forget.forget(o.namespace().as_deref()),
            Ok(watcher::Event::InitDone) => forget.forget(None),
            _ => {}
        })
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let job_cfg =
        watcher::Config::default().labels(&format!("{}={}", job::LABEL_MANAGED_BY, job::MANAGER));
    let job_stream = watcher(jobs, job_cfg)
        .default_backoff()
        .modify(|j| j.managed_fields_mut().clear())
        .reflect(job_writer)
        .touched_objects();
    let concurrency = config.reconcile_concurrency.max(1);
    let (wake, woken) = tokio::sync::mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        client: client.clone(),
        queue: admission::Admission::new(
            config.max_concurrent_imports,
            config.max_concurrent_imports_per_namespace,
            Some(wake),
        ),
        config,
        recorder: Recorder::new(client.clone(), reporter),
        prepared_namespaces: prepared,
        failures: Mutex::new(Default::default()),
        metrics,
        admission: tokio::sync::Mutex::new(()),
        running: Mutex::new(HashSet::new()),
        job_cache,
        import_cache: reader.clone(),
    });
    Controller::for_stream(stream, reader)
        .owns_stream(job_stream)
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(woken))
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(name = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
}
