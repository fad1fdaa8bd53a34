//! Which waiting import may start a worker Job next: a fair queue over namespaces, so one
//! namespace flooding the cluster with imports cannot hold every slot while another's wait.
//!
//! The order (max-min fair, then round robin, then first come first served): a free slot goes
//! to the namespace that runs the fewest imports; among those, to the one served least
//! recently; within a namespace, to its import that asked first. Precisely, a waiting import
//! that is the `k`-th in line of its namespace (from 0), which runs `r` imports, is ranked by
//! `(r + k, when its namespace was last admitted, when it first asked)`, and the first
//! `limit - running` imports of that order may start. `--max-concurrent-imports-per-namespace`
//! caps a namespace on top of that; a namespace alone may use every slot.
//!
//! Running Jobs are counted from the controller's own Job watch (no LIST), and only Jobs an
//! ImageImport really runs count: its status names the Job, or this process just created it.
//!
//! A waiting import asks again every [`ASK_EVERY`], but mostly it need not wait that long:
//! after every reconcile (a Job ended, an import was deleted or admitted) the imports that may
//! start now are woken at once ([`Admission::after_reconcile`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc::UnboundedSender;

use super::job::{self, JobState};
use crate::api::ImageImport;

type Key = (String, String);

/// How often a waiting import asks again ([`Admission::admit`]); a safety net and the
/// refresh of its "N ahead" message: a freed slot wakes the next import at once.
pub const ASK_EVERY: Duration = Duration::from_secs(15);
/// An entry not asked for this long is dropped from the line.
const STOPPED_ASKING: Duration = Duration::from_secs(4 * 15);
/// A Job created here counts this long at most while its ImageImport's status does not name it
/// in the cache.
const CREATED_FOR: Duration = Duration::from_secs(120);

struct Waiting {
    /// Its place in line (when it first asked).
    seq: u64,
    asked: Instant,
    /// Woken since it last asked: not woken again until it has asked (no wake loops).
    woken: bool,
}

#[derive(Default)]
struct State {
    waiting: HashMap<Key, Waiting>,
    next: u64,
    /// Per namespace, the admission count when it was last admitted (round robin).
    served: HashMap<String, u64>,
    admissions: u64,
    /// Jobs created by this process, until the ImageImport's status in the cache names them.
    created: HashMap<Key, Instant>,
}

pub struct Admission {
    limit: usize,
    per_namespace: Option<usize>,
    state: Mutex<State>,
    /// Reconcile requests for imports that may start now.
    wake: Option<UnboundedSender<ObjectRef<ImageImport>>>,
}

/// Why an import must wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// Every slot is taken.
    Full { running: usize, limit: usize },
    /// Its namespace runs (or has first in line) as many as `--max-concurrent-imports-per-namespace`.
    Cap { running: usize, cap: usize },
    /// Imports first in the fair order take the free slots.
    Behind { ahead: usize },
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::Full { running, limit } => {
                write!(f, "waiting: {running} imports are running (limit {limit})")
            }
            Wait::Cap { running, cap } => write!(
                f,
                "waiting: this namespace runs {running} imports, and at most {cap} run at once \
                 per namespace"
            ),
            Wait::Behind { ahead } => write!(
                f,
                "waiting: {ahead} imports are ahead in the fair queue (namespaces running the \
                 fewest imports go first)"
            ),
        }
    }
}

/// The waiting imports that may take a slot, in the order they take them (see the module
/// comment). `served` is each namespace's last admission; an import that the per-namespace
/// cap holds back is left out.
fn fair_order<'k>(
    waiting: &'k HashMap<Key, Waiting>,
    running: &BTreeMap<String, usize>,
    served: &HashMap<String, u64>,
    cap: Option<usize>,
) -> Vec<&'k Key> {
    let mut by_ns: BTreeMap<&str, Vec<(&Key, u64)>> = BTreeMap::new();
    for (k, w) in waiting {
        by_ns.entry(&k.0).or_default().push((k, w.seq));
    }
    let mut ranked = Vec::with_capacity(waiting.len());
    for (ns, mut line) in by_ns {
        line.sort_by_key(|(_, seq)| *seq);
        let r = running.get(ns).copied().unwrap_or(0);
        let last = served.get(ns).copied().unwrap_or(0);
        for (k, (key, seq)) in line.into_iter().enumerate() {
            if cap.is_some_and(|cap| r + k >= cap) {
                break;
            }
            ranked.push(((r + k, last, seq), key));
        }
    }
    ranked.sort_by_key(|(rank, _)| *rank);
    ranked.into_iter().map(|(_, k)| k).collect()
}

impl Admission {
    /// `wake` receives the imports that may start now (see [`Admission::after_reconcile`]).
    pub fn new(
        limit: usize,
        per_namespace: Option<usize>,
        wake: Option<UnboundedSender<ObjectRef<ImageImport>>>,
    ) -> Admission {
        Admission {
            limit: limit.max(1),
            per_namespace: per_namespace.filter(|n| *n > 0),
            state: Mutex::default(),
            wake,
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
        let seq = match st.waiting.get(key) {
            Some(w) => w.seq,
            None => {
                st.next += 1;
                st.next
            }
        };
        st.waiting.insert(
            key.clone(),
            Waiting {
                seq,
                asked: Instant::now(),
                woken: false,
            },
        );
        let (running, free) = self.refresh(st, Some(key), jobs, imports);
        let ns_running = running.get(&key.0).copied().unwrap_or(0);
        if free == 0 {
            return Err(Wait::Full {
                running: running.values().sum(),
                limit: self.limit,
            });
        }
        let order = fair_order(&st.waiting, &running, &st.served, self.per_namespace);
        let Some(place) = order.iter().position(|k| *k == key) else {
            return Err(Wait::Cap {
                running: ns_running,
                cap: self.per_namespace.unwrap_or(self.limit),
            });
        };
        if place >= free {
            return Err(Wait::Behind { ahead: place });
        }
        st.waiting.remove(key);
        st.admissions += 1;
        st.served.insert(key.0.clone(), st.admissions);
        tracing::debug!(namespace = %key.0, name = %key.1, seq, ?running, "admitted");
        Ok(())
    }

    /// Bring the line up to date (`asking` stays: the cache may lag behind what it read);
    /// returns the running Jobs per namespace and the free slots.
    fn refresh(
        &self,
        st: &mut State,
        asking: Option<&Key>,
        jobs: &Store<Job>,
        imports: &Store<ImageImport>,
    ) -> (BTreeMap<String, usize>, usize) {
        let running = running_by_namespace(jobs, imports, &mut st.created);
        // Leave the line when no longer waiting: deleted, started, or no longer asking.
        st.waiting.retain(|(ns, name), w| {
            asking.is_some_and(|k| (&k.0, &k.1) == (ns, name))
                || (w.asked.elapsed() < STOPPED_ASKING
                    && imports
                        .get(&ObjectRef::new(name).within(ns))
                        .is_some_and(|o| {
                            o.metadata.deletion_timestamp.is_none()
                                && o.status.as_ref().is_none_or(|s| s.job_name.is_none())
                        }))
        });
        let waiting = &st.waiting;
        st.served
            .retain(|ns, _| running.contains_key(ns) || waiting.keys().any(|(n, _)| n == ns));
        let total: usize = running.values().sum();
        (running, self.limit.saturating_sub(total))
    }

    /// After a reconcile of `key` that began at `started`: if it did not ask for a slot, it no
    /// longer waits (finished, refused by policy, deleted, failed). Then the imports that may
    /// start now are woken, each once until it asks again: a slot freed by a Job's end is taken
    /// at once, not at the next [`ASK_EVERY`].
    pub fn after_reconcile(
        &self,
        key: &Key,
        started: Instant,
        jobs: &Store<Job>,
        imports: &Store<ImageImport>,
    ) {
        let mut st = self.state.lock().expect("lock");
        let st = &mut *st;
        if st.waiting.get(key).is_some_and(|w| w.asked < started) {
            st.waiting.remove(key);
        }
        let Some(wake) = &self.wake else { return };
        if st.waiting.is_empty() {
            return;
        }
        let (running, free) = self.refresh(st, None, jobs, imports);
        let next: Vec<Key> = fair_order(&st.waiting, &running, &st.served, self.per_namespace)
            .into_iter()
            .take(free)
            .cloned()
            .collect();
        for k in next {
            if let Some(w) = st.waiting.get_mut(&k)
                && !w.woken
            {
                w.woken = true;
                let _ = wake.send(ObjectRef::new(&k.1).within(&k.0));
            }
        }
    }

    /// The Job of `key` was created: it counts until the cache shows it in the status. The
    /// caller then waits (still serialized) until the Job watch shows it, so that the next
    /// admission counts it.
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
/// ImageImport runs (its controller, by uid, whose status names it) or one just created here
/// (the creator waits until the watch shows it, [`Admission::created`]). Jobs others label, or
/// point at an ImageImport of theirs, take no slot.
fn running_by_namespace(
    jobs: &Store<Job>,
    imports: &Store<ImageImport>,
    created: &mut HashMap<Key, Instant>,
) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for j in jobs.state() {
        let ns = j.namespace().unwrap_or_default();
        let name = j.name_any();
        let just_created = created.contains_key(&(ns.clone(), name.clone()));
        // An upload's Job waits for its bytes and takes no slot.
        if job::state(&j) != JobState::Running || super::upload::is_upload_job(&j.metadata) {
            continue;
        }
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
    created.retain(|_, at| at.elapsed() < CREATED_FOR);
    by
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(entries: &[(&str, &str, u64)]) -> HashMap<Key, Waiting> {
        entries
            .iter()
            .map(|(ns, name, seq)| {
                (
                    (ns.to_string(), name.to_string()),
                    Waiting {
                        seq: *seq,
                        asked: Instant::now(),
                        woken: false,
                    },
                )
            })
            .collect()
    }

    fn names(order: &[&Key]) -> Vec<String> {
        order.iter().map(|(ns, n)| format!("{ns}/{n}")).collect()
    }

    #[test]
    fn the_namespace_running_fewest_goes_first_even_if_it_came_last() {
        // The flood asked first (seq 1-3) and runs one; team-a runs none.
        let w = line(&[
            ("flood", "f1", 1),
            ("flood", "f2", 2),
            ("flood", "f3", 3),
            ("team-a", "a1", 10),
            ("team-a", "a2", 11),
        ]);
        let running = BTreeMap::from([("flood".to_string(), 1)]);
        let order = fair_order(&w, &running, &HashMap::new(), None);
        assert_eq!(
            names(&order),
            ["team-a/a1", "flood/f1", "team-a/a2", "flood/f2", "flood/f3"]
        );
    }

    #[test]
    fn equal_namespaces_take_turns_by_when_they_were_last_served() {
        // Nobody runs anything; team-a's imports all came before team-b's, and team-a was
        // served more recently: team-b goes first, then they alternate.
        let w = line(&[
            ("team-a", "a1", 1),
            ("team-a", "a2", 2),
            ("team-b", "b1", 3),
            ("team-b", "b2", 4),
        ]);
        let served = HashMap::from([("team-a".to_string(), 7), ("team-b".to_string(), 5)]);
        let order = fair_order(&w, &BTreeMap::new(), &served, None);
        assert_eq!(
            names(&order),
            ["team-b/b1", "team-a/a1", "team-b/b2", "team-a/a2"]
        );
        // Never served and nothing served: first come first served.
        let order = fair_order(&w, &BTreeMap::new(), &HashMap::new(), None);
        assert_eq!(
            names(&order),
            ["team-a/a1", "team-b/b1", "team-a/a2", "team-b/b2"]
        );
    }

    #[test]
    fn the_per_namespace_cap_leaves_out_what_it_holds_back() {
        let w = line(&[("flood", "f1", 1), ("flood", "f2", 2), ("team-a", "a1", 3)]);
        let running = BTreeMap::from([("flood".to_string(), 1)]);
        let order = fair_order(&w, &running, &HashMap::new(), Some(2));
        assert_eq!(names(&order), ["team-a/a1", "flood/f1"]);
        let order = fair_order(&w, &running, &HashMap::new(), Some(1));
        assert_eq!(names(&order), ["team-a/a1"]);
    }

    #[test]
    fn a_namespace_alone_takes_every_slot_in_arrival_order() {
        let w = line(&[("flood", "f2", 2), ("flood", "f1", 1), ("flood", "f3", 3)]);
        let order = fair_order(&w, &BTreeMap::new(), &HashMap::new(), None);
        assert_eq!(names(&order), ["flood/f1", "flood/f2", "flood/f3"]);
    }
}
