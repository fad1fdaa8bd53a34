//! The worker's identity in each namespace: a ServiceAccount allowed only to write the
//! status of ImageImports in its own namespace (progress and result). Applied on demand
//! before a worker Job, at most every few minutes per namespace, and again at once after an
//! ImageImport of the namespace was deleted (a namespace deleted and re-created has lost it).

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Context, Error};

/// How long an applied identity is trusted before it is applied again.
const REAPPLY_AFTER: Duration = Duration::from_secs(300);

/// Namespaces whose worker identity was applied, and when. An entry is trusted only while no
/// ImageImport of its namespace has been deleted since: deleting a namespace deletes its
/// ImageImports (the one the identity was applied for among them) before the namespace can be
/// created again, and the watch shows those deletions before any ImageImport of the new one.
#[derive(Default)]
pub struct Prepared {
    state: Mutex<PreparedState>,
}

#[derive(Default)]
struct PreparedState {
    applied: HashMap<String, Instant>,
    /// Bumped by every [`Prepared::forget`]: an apply that began before one is not recorded
    /// (it may have gone to the namespace being deleted).
    epoch: u64,
}

impl Prepared {
    /// `None`: trusted. `Some(epoch)`: apply, then [`Prepared::applied`] with this epoch.
    fn check(&self, ns: &str) -> Option<u64> {
        let st = self.state.lock().expect("lock");
        match st.applied.get(ns) {
            Some(at) if at.elapsed() < REAPPLY_AFTER => None,
            _ => Some(st.epoch),
        }
    }

    fn applied(&self, ns: &str, epoch: u64) {
        let mut st = self.state.lock().expect("lock");
        if st.epoch == epoch {
            st.applied.insert(ns.to_string(), Instant::now());
        }
    }

    /// An ImageImport of `ns` was deleted (`None`: the watch re-listed, deletions unseen): the
    /// identity there is applied again before the next Job.
    pub fn forget(&self, ns: Option<&str>) {
        let mut st = self.state.lock().expect("lock");
        st.epoch += 1;
        match ns {
            Some(ns) => {
                st.applied.remove(ns);
            }
            None => st.applied.clear(),
        }
    }
}

pub async fn ensure_worker_access(ctx: &Context, ns: &str) -> Result<(), Error> {
    // Three idempotent requests, repeated now and then (not before every Job: a burst of
    // imports would triple its API requests), so a deleted Role or ServiceAccount is put
    // back within minutes instead of failing every later import.
    let Some(epoch) = ctx.prepared_namespaces.check(ns) else {
        return Ok(());
    };
    let sa_name = ctx.config.worker.service_account.clone();
    let pp = PatchParams::apply("imageimport-controller").force();
    let labels = Some(
        std::iter::once((
            "app.kubernetes.io/managed-by".to_string(),
            "imageimport".to_string(),
        ))
        .collect(),
    );
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(ns.to_string()),
        labels: labels.clone(),
        ..Default::default()
    };
    let sa = ServiceAccount {
        metadata: meta(&sa_name),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(ctx.client.clone(), ns)
        .patch(
            &sa_name,
            &pp,
            &Patch::Apply(&with_kind(&sa, "v1", "ServiceAccount")),
        )
        .await?;
    let role = Role {
        metadata: meta(&sa_name),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![crate::api::GROUP.into()]),
            resources: Some(vec!["imageimports/status".into()]),
            // Server-side apply of progress and result: the worker never reads it back.
            verbs: vec!["patch".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(ctx.client.clone(), ns)
        .patch(
            &sa_name,
            &pp,
            &Patch::Apply(&with_kind(&role, "rbac.authorization.k8s.io/v1", "Role")),
        )
        .await?;
    let binding = RoleBinding {
        metadata: meta(&sa_name),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: sa_name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: sa_name.clone(),
            namespace: Some(ns.to_string()),
            api_group: None,
        }]),
    };
    Api::<RoleBinding>::namespaced(ctx.client.clone(), ns)
        .patch(
            &sa_name,
            &pp,
            &Patch::Apply(&with_kind(
                &binding,
                "rbac.authorization.k8s.io/v1",
                "RoleBinding",
            )),
        )
        .await?;
    ctx.prepared_namespaces.applied(ns, epoch);
    Ok(())
}

fn with_kind<T: serde::Serialize>(obj: &T, api_version: &str, kind: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).expect("serializes");
    v["apiVersion"] = api_version.into();
    v["kind"] = kind.into();
    v
}
