//! The web console (`web/`, built into `web/dist` and embedded in the binary), served at `/`
//! of the upload service, so its tus uploads and its Kubernetes API calls (`/k8s/…`, see
//! [`super::kube_proxy`]) are same-origin and need no CORS.
//!
//! Every answer carries a strict Content-Security-Policy: scripts, styles and connections only
//! from this origin, no inline code, no framing. The page makes no third-party request.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

#[derive(rust_embed::Embed)]
#[folder = "web/dist"]
struct Assets;

/// No inline scripts or styles, nothing from elsewhere, no framing, no `<base>` tricks.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console's routes: `/`, `/assets/…` and the API pass-through `/k8s/…`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/index.html", get(index))
        .route("/assets/{*file}", get(asset))
        .merge(super::kube_proxy::router())
}

/// Headers every console answer carries.
pub fn harden(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn serve(path: &str, cache: &'static str) -> Response {
    let Some(file) = Assets::get(path) else {
        let mut r = (StatusCode::NOT_FOUND, "not found\n").into_response();
        harden(r.headers_mut());
        return r;
    };
    let mut r = file.data.into_owned().into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    harden(h);
    r
}

async fn index() -> Response {
    // The page names its hashed assets: always ask for it again.
    serve("index.html", "no-cache")
}

async fn asset(Path(file): Path<String>) -> Response {
    // Vite names assets by content hash: they never change under one name.
    serve(
        &format!("assets/{file}"),
        "public, max-age=31536000, immutable",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_page_loads_only_its_own_hashed_assets() {
        let html = String::from_utf8(
            Assets::get("index.html")
                .expect("web/dist/index.html")
                .data
                .into_owned(),
        )
        .unwrap();
        assert!(!html.contains("<script>"), "no inline script: {html}");
        let mut assets = 0;
        for part in html.split(['"', '\'']) {
            if part.starts_with("/assets/") {
                assets += 1;
                assert!(Assets::get(&part[1..]).is_some(), "{part} is embedded");
            }
            assert!(
                !part.starts_with("http://")
                    && !part.starts_with("https://")
                    && !part.starts_with("//"),
                "third-party reference {part}"
            );
        }
        assert!(
            assets >= 2,
            "the page loads its script and stylesheet: {html}"
        );
    }
}
