//! Where the upload service is, without `--upload-url`: the base of `status.upload.url` when
//! this machine reaches it (a tus discovery request answers), else a port-forward through the
//! API server to the upload service's Pod (`pods/portforward`, as `kubectl port-forward` does)
//! on a local port, for clusters whose upload URL is in-cluster only or behind a network this
//! machine is not on.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::Failure;

/// Labels of the chart's upload service Pods (`imageimport.uploadSelectorLabels`).
const COMPONENT: &str = "app.kubernetes.io/component=upload-server";

/// A reachable base URL; holds the port-forward's listener while it is used.
pub struct Endpoint {
    pub base: String,
    /// `namespace/pod` when the base is a local port-forward.
    pub forwarded_to: Option<String>,
    _forward: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(f) = &self._forward {
            f.abort();
        }
    }
}

impl Endpoint {
    /// A base URL given by the user, used as it is.
    pub fn given(base: &str) -> Endpoint {
        Endpoint {
            base: base.to_string(),
            forwarded_to: None,
            _forward: None,
        }
    }
}

/// `<base>` of a `status.upload.url` (`<base>/uploads/<namespace>/<name>`).
pub fn base_of(upload_url: &str) -> &str {
    match upload_url.rfind("/uploads/") {
        Some(i) => &upload_url[..i],
        None => upload_url.trim_end_matches('/'),
    }
}

/// Does a tus server answer at `base` (OPTIONS /uploads/, no token needed)?
pub async fn reachable(base: &str) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
    else {
        return false;
    };
    match client
        .request(reqwest::Method::OPTIONS, format!("{base}/uploads/"))
        .send()
        .await
    {
        Ok(r) => r.headers().contains_key("tus-version"),
        Err(_) => false,
    }
}

/// `base` if it answers, else a port-forward to the upload service's Pod: the Service the base
/// names (`http://<service>.<namespace>.svc…`, the chart's in-cluster default), or the Pods
/// labelled as the chart's upload service in `fallback_namespace`.
pub async fn resolve(
    client: &Client,
    base: Option<&str>,
    fallback_namespace: &str,
) -> Result<Endpoint, Failure> {
    if let Some(b) = base
        && reachable(b).await
    {
        return Ok(Endpoint {
            base: b.to_string(),
            forwarded_to: None,
            _forward: None,
        });
    }
    let (namespace, selector) = match base.and_then(service_of) {
        Some((svc, ns)) => {
            let s = Api::<Service>::namespaced(client.clone(), &ns)
                .get(&svc)
                .await
                .map_err(|e| forward_error(&ns, &format!("Service {svc}: {e}")))?;
            let selector = s
                .spec
                .and_then(|s| s.selector)
                .unwrap_or_default()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            (ns, selector)
        }
        None => (fallback_namespace.to_string(), COMPONENT.to_string()),
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| forward_error(&namespace, &format!("Pods {selector}: {e}")))?;
    let pod = list.items.into_iter().find(ready).ok_or_else(|| {
        forward_error(&namespace, &format!("no Ready Pod with labels {selector}"))
    })?;
    let port = pod
        .spec
        .as_ref()
        .and_then(|s| {
            s.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some("http"))
        })
        .map(|p| p.container_port as u16)
        .unwrap_or(8080);
    let name = pod.name_any();
    // One port-forward per connection, as kubectl does: a broken one breaks one request only.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| Failure::Usage(format!("a local port for the port-forward: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let pod_name = name.clone();
    let forward = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let pods = pods.clone();
            let pod_name = pod_name.clone();
            tokio::spawn(async move {
                let mut pf = match pods.portforward(&pod_name, &[port]).await {
                    Ok(pf) => pf,
                    Err(e) => {
                        eprintln!("kubectl-imageimport: port-forward to {pod_name}: {e}");
                        return;
                    }
                };
                if let Some(mut upstream) = pf.take_stream(port) {
                    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                }
                drop(conn);
                pf.abort();
                let _ = pf.join().await;
            });
        }
    });
    Ok(Endpoint {
        base: format!("http://{local}"),
        forwarded_to: Some(format!("{namespace}/{name}")),
        _forward: Some(forward),
    })
}

fn forward_error(namespace: &str, detail: &str) -> Failure {
    Failure::Usage(format!(
        "the upload URL is not reachable from here and no port-forward to the upload service \
         in namespace {namespace} could be set up ({detail}); pass --upload-url, or ask for \
         get services, list pods and create pods/portforward there"
    ))
}

/// `(service, namespace)` of an in-cluster base URL `http://<service>.<namespace>.svc[…]`.
fn service_of(base: &str) -> Option<(String, String)> {
    let url = url::Url::parse(base).ok()?;
    let host = url.host_str()?;
    let mut parts = host.split('.');
    let (svc, ns, svc_label) = (parts.next()?, parts.next()?, parts.next()?);
    (svc_label == "svc").then(|| (svc.to_string(), ns.to_string()))
}

fn ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_and_in_cluster_services() {
        assert_eq!(
            base_of("http://192.0.2.2:30080/uploads/shop/web-1"),
            "http://192.0.2.2:30080"
        );
        assert_eq!(
            base_of("https://up.example/prefix/uploads/shop/web"),
            "https://up.example/prefix"
        );
        assert_eq!(
            service_of("http://imageimport-upload.imageimport-system.svc:80"),
            Some(("imageimport-upload".into(), "imageimport-system".into()))
        );
        assert_eq!(
            service_of("http://imageimport-upload.imageimport-system.svc.cluster.local"),
            Some(("imageimport-upload".into(), "imageimport-system".into()))
        );
        assert_eq!(service_of("https://uploads.example.com"), None);
        assert_eq!(service_of("http://192.0.2.2:30080"), None);
    }
}
