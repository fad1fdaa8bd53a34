//! Which waiting import may start a worker Job next: first come, first served, with a fair
//! share per namespace, so one namespace flooding the cluster with imports cannot hold every
//! slot while another's wait. Running Jobs are counted from the controller's own Job watch
//! (no LIST), and only Jobs an ImageImport really runs count: its status names the Job, or
//! this process just created it.
//!
//! The share: with `n` namespaces that have imports running or waiting, each may run
//! `max(1, limit / n)` at once (and never more than `--max-concurrent-imports-per-namespace`);
//! a namespace alone may use every slot.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::job::{self, JobState};
use crate::api::ImageImport;

type Key = (String, String);

/// How often a waiting import asks again ([`Admission::admit`]).
pub const ASK_EVERY: Duration = Duration::from_secs(5);
/// An entry not asked for this long is dropped from the line.
const STOPPED_ASKING: Duration = Duration::from_secs(45);

#[derive(Default)]
struct State {
    /// Waiting imports: their place in line, and when they last asked (a waiting import asks
    /// every few seconds; one that stopped asking no longer waits).
    waiting: HashMap<Key, (u64, Instant)>,
    next: u64,
    /// Jobs created by this process, until the ImageImport's status in the cache names them.
    created: HashMap<Key, Instant>,
}

pub struct Admission {
    limit: usize,
    per_namespace: Option<usize>,
    state: Mutex<State>,
}

/// Why an import must wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// Every slot is taken.
    Full { running: usize, limit: usize },
    /// Its namespace has its share running.
    Share { running: usize, share: usize },
    /// Imports that came first are waiting for the slot.
    Behind { ahead: usize },
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::Full { running, limit } => {
                write!(f, "waiting: {running} imports are running (limit {limit})")
            }
            Wait::Share { running, share } => write!(
                f,
                "waiting: this namespace runs {running} imports, its fair share while other \
                 namespaces wait is {share}"
            ),
            Wait::Behind { ahead } => write!(f, "waiting: {ahead} imports are ahead in line"),
        }
    }
}

impl Admission {
    pub fn new(limit: usize, per_namespace: Option<usize>) -> Admission {
        Admission {
            limit: limit.max(1),
            per_namespace: per_namespace.filter(|n| *n > 0),
            state: Mutex::default(),
        }
    }

    /// May `key` start a Job now? Ok: it is admitted (and leaves the line); the caller creates
    /// the Job and calls [`Admission::created`]. Callers serialize admit-then-create.
    pub fn admit(
        &self,
        key: &Key,
        jobs: &Store<Job>,
        imports: &Store<ImageImport>,
    ) -> Result<(), Wait> {
        let mut st = self.state.lock().expect("lock");
        let st = &mut *st;
        // Forget Jobs the cache has caught up with (or that are long gone).
        st.created
            .retain(|_, at| at.elapsed() < Duration::from_secs(120));
        let running = running_by_namespace(jobs, imports, &st.created);
        let seq = match st.waiting.get(key) {
            Some((seq, _)) => *seq,
            None => {
                st.next += 1;
                st.next
            }
        };
        st.waiting.insert(key.clone(), (seq, Instant::now()));
        // Leave the line when no longer waiting: deleted, started, or no longer asking.
        st.waiting.retain(|(ns, name), (_, asked)| {
            let still = || {
                imports
                    .get(&ObjectRef::new(name).within(ns))
                    .is_some_and(|o| {
                        o.metadata.deletion_timestamp.is_none()
                            && o.status.as_ref().is_none_or(|s| s.job_name.is_none())
                    })
            };
            (ns, name) == (&key.0, &key.1) || (asked.elapsed() < STOPPED_ASKING && still())
        });
        let total: usize = running.values().sum();
        if total >= self.limit {
            return Err(Wait::Full {
                running: total,
                limit: self.limit,
            });
        }
        let mut namespaces: Vec<&String> = running.keys().collect();
        namespaces.extend(st.waiting.keys().map(|(ns, _)| ns));
        namespaces.sort();
        namespaces.dedup();
        let share = (self.limit / namespaces.len().max(1)).max(1);
        let share = self.per_namespace.map_or(share, |cap| share.min(cap));
        let may_run = |ns: &str| running.get(ns).copied().unwrap_or(0) < share;
        if !may_run(&key.0) {
            return Err(Wait::Share {
                running: running.get(&key.0).copied().unwrap_or(0),
                share,
            });
        }
        // First in line among those whose namespace has room.
        let ahead = st
            .waiting
            .iter()
            .filter(|((ns, _), (s, _))| *s < seq && may_run(ns))
            .count();
        if ahead >= self.limit - total {
            return Err(Wait::Behind { ahead });
        }
        st.waiting.remove(key);
        Ok(())
    }

    /// The Job of `key` was created: it counts until the cache shows it in the status.
    pub fn created(&self, ns: &str, job_name: &str) {
        self.state
            .lock()
            .expect("lock")
            .created
            .insert((ns.to_string(), job_name.to_string()), Instant::now());
    }

    /// `key` no longer waits (deleted, finished, refused).
    pub fn forget(&self, key: &Key) {
        self.state.lock().expect("lock").waiting.remove(key);
    }
}

/// Running worker Jobs per namespace: in the watch cache, not finished, and the Job an
/// ImageImport runs (its controller, by uid, whose status names it) or one just created here.
/// Jobs others label, or point at an ImageImport of theirs, take no slot.
fn running_by_namespace(
    jobs: &Store<Job>,
    imports: &Store<ImageImport>,
    created: &HashMap<Key, Instant>,
) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for j in jobs.state() {
        // An upload's Job waits for its bytes and takes no slot.
        if job::state(&j) != JobState::Running || super::upload::is_upload_job(&j.metadata) {
            continue;
        }
        let ns = j.namespace().unwrap_or_default();
        let name = j.name_any();
        let just_created = created.contains_key(&(ns.clone(), name.clone()));
        let named = j
            .owner_references()
            .iter()
            .filter(|o| o.controller == Some(true) && o.kind == "ImageImport")
            .any(|o| {
                imports
                    .get(&ObjectRef::new(&o.name).within(&ns))
                    .is_some_and(|i| {
                        i.metadata.uid.as_deref() == Some(&o.uid)
                            && i.status.as_ref().and_then(|s| s.job_name.as_deref()) == Some(&name)
                    })
            });
        if just_created || named {
            *by.entry(ns).or_insert(0) += 1;
        }
    }
    by
}
