//! The platform team's policy: which registry repositories each namespace may push to, and
//! which hosts its URL sources may be fetched from. A YAML file (mounted from a ConfigMap by
//! the Helm chart), read again at every check so an edited ConfigMap applies without a restart.
//!
//! ```yaml
//! rules:
//!   - namespaces: ["shop", "team-*"]
//!     repositories: ["registry.internal:5000/shop/*"]
//!     urlHosts: ["artifacts.example", "*.corp.example"]
//!     allowInsecure: false          # target.insecure (plain HTTP to the registry)
//!     allowPlainHTTPCredentials: false  # credentials sent over plain HTTP
//! ```
//! Without a policy file everything is allowed. With one, an import is allowed when some rule
//! matching its namespace allows its target repository (and its URL host, for URL sources),
//! and, for `target.insecure` or credentials over plain HTTP (`target.insecure` with
//! `credentialsSecretRef`, an `http://` URL with `secretRef`), some such rule allows that too.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

use crate::api::ImageImportSpec;
use crate::pipeline::url_guard;
use crate::registry::repository_pattern;

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub repositories: Vec<String>,
    #[serde(default)]
    pub url_hosts: Vec<String>,
    #[serde(default)]
    pub allow_insecure: bool,
    #[serde(default, rename = "allowPlainHTTPCredentials")]
    pub allow_plain_http_credentials: bool,
}

struct Rule {
    namespaces: Vec<GlobMatcher>,
    repositories: Vec<GlobMatcher>,
    /// Host names, `*.suffix` for any name under a domain, or IP literals: matched by the
    /// worker's own matcher ([`url_guard::host_allowed`]), so both always agree.
    url_hosts: Vec<String>,
    allow_insecure: bool,
    allow_plain_http_credentials: bool,
}

pub struct Policy {
    rules: Vec<Rule>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {detail}")]
    Unreadable { path: String, detail: String },
    #[error("invalid policy {path}: {detail}")]
    Invalid { path: String, detail: String },
}

fn matchers(patterns: &[String], path: &Path) -> Result<Vec<GlobMatcher>, PolicyError> {
    patterns
        .iter()
        .map(|p| {
            Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|e| PolicyError::Invalid {
                    path: path.display().to_string(),
                    detail: format!("pattern {p:?}: {e}"),
                })
        })
        .collect()
}

/// URL host patterns: a host name, `*.` and a domain (any name under it), or an IP literal.
/// Anything else is refused when the policy is read, not silently never matched.
fn host_patterns(patterns: &[String], path: &Path) -> Result<Vec<String>, PolicyError> {
    for p in patterns {
        let body = p.strip_prefix("*.").unwrap_or(p);
        if body.is_empty() || body.contains(['*', '/', ':']) && !p.starts_with('[') {
            return Err(PolicyError::Invalid {
                path: path.display().to_string(),
                detail: format!(
                    "urlHosts pattern {p:?}: expected a host name, *.domain or an IP address"
                ),
            });
        }
    }
    Ok(patterns.to_vec())
}

/// Repository patterns: `*` within one path component, `**` across them.
fn repository_matchers(patterns: &[String], path: &Path) -> Result<Vec<GlobMatcher>, PolicyError> {
    patterns
        .iter()
        .map(|p| {
            repository_pattern(p).map_err(|e| PolicyError::Invalid {
                path: path.display().to_string(),
                detail: format!("pattern {p:?}: {e}"),
            })
        })
        .collect()
}

impl Policy {
    pub fn parse(yaml: &str, path: &Path) -> Result<Policy, PolicyError> {
        let file: PolicyFile = serde_yaml::from_str(yaml).map_err(|e| PolicyError::Invalid {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        let rules = file
            .rules
            .iter()
            .map(|r| {
                Ok(Rule {
                    namespaces: matchers(&r.namespaces, path)?,
                    repositories: repository_matchers(&r.repositories, path)?,
                    url_hosts: host_patterns(&r.url_hosts, path)?,
                    allow_insecure: r.allow_insecure,
                    allow_plain_http_credentials: r.allow_plain_http_credentials,
                })
            })
            .collect::<Result<_, PolicyError>>()?;
        Ok(Policy { rules })
    }

    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Unreadable {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        Policy::parse(&text, path)
    }

    /// None when allowed; otherwise what the user is told.
    pub fn check(&self, namespace: &str, spec: &ImageImportSpec) -> Option<String> {
        let rules: Vec<&Rule> = self
            .rules
            .iter()
            .filter(|r| r.namespaces.iter().any(|m| m.is_match(namespace)))
            .collect();
        let repo = spec.target.repository.as_str();
        if !rules
            .iter()
            .any(|r| r.repositories.iter().any(|m| m.is_match(repo)))
        {
            return Some(format!(
                "the cluster policy does not allow namespace {namespace} to push to {repo}"
            ));
        }
        if spec.target.insecure && !rules.iter().any(|r| r.allow_insecure) {
            return Some(format!(
                "the cluster policy does not allow namespace {namespace} plain HTTP to a registry \
                 (target.insecure; a rule needs allowInsecure)"
            ));
        }
        let plain_credentials = (spec.target.insecure
            && spec.target.credentials_secret_ref.is_some())
            || spec
                .source
                .url
                .as_ref()
                .is_some_and(|u| u.secret_ref.is_some() && u.url.starts_with("http://"));
        if plain_credentials && !rules.iter().any(|r| r.allow_plain_http_credentials) {
            return Some(format!(
                "the cluster policy does not allow namespace {namespace} to send credentials over \
                 plain HTTP (a rule needs allowPlainHTTPCredentials)"
            ));
        }
        if let Some(u) = &spec.source.url {
            let parsed = url::Url::parse(&u.url).ok();
            let host = parsed
                .as_ref()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_default();
            let allowed = parsed.as_ref().and_then(|u| u.host()).is_some_and(|h| {
                rules
                    .iter()
                    .any(|r| url_guard::host_allowed(&h, &r.url_hosts))
            });
            if !allowed {
                return Some(format!(
                    "the cluster policy does not allow namespace {namespace} to fetch from {host}"
                ));
            }
        }
        None
    }
}

/// Where the policy lives; read on every check.
#[derive(Debug, Clone, Default)]
pub struct PolicySource {
    pub path: Option<PathBuf>,
}

impl PolicySource {
    /// Ok(None) when allowed. An unreadable or invalid policy denies (fail closed).
    pub fn check(&self, namespace: &str, spec: &ImageImportSpec) -> Option<String> {
        let path = self.path.as_ref()?;
        match Policy::load(path) {
            Ok(p) => p.check(namespace, spec),
            Err(e) => Some(format!(
                "{e} (imports are refused until the policy is fixed)"
            )),
        }
    }
}

/// What the rules grant a namespace, handed to its worker, which enforces it too: every
/// redirect hop of a URL source, and every repository an import really pushes to (with
/// `allImages` those are only known once the archive is read).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grant {
    pub url_hosts: Vec<String>,
    pub repositories: Vec<String>,
}

impl Policy {
    pub fn grant(&self, namespace: &str) -> Grant {
        let rules = || {
            self.rules
                .iter()
                .filter(|r| r.namespaces.iter().any(|m| m.is_match(namespace)))
        };
        let patterns = |m: &GlobMatcher| m.glob().glob().to_string();
        Grant {
            url_hosts: rules().flat_map(|r| r.url_hosts.clone()).collect(),
            repositories: rules()
                .flat_map(|r| r.repositories.iter().map(patterns))
                .collect(),
        }
    }
}

impl PolicySource {
    /// None without a policy file (everything allowed); an unreadable policy grants nothing.
    pub fn grant(&self, namespace: &str) -> Option<Grant> {
        let path = self.path.as_ref()?;
        Some(
            Policy::load(path)
                .map(|p| p.grant(namespace))
                .unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PvcSource, Source, TargetSpec, UrlSource};

    fn spec(repo: &str, url: Option<&str>) -> ImageImportSpec {
        ImageImportSpec {
            source: Source {
                pvc: url.is_none().then(|| PvcSource {
                    claim_name: "c".into(),
                    path: "a.tar".into(),
                }),
                url: url.map(|u| UrlSource {
                    url: u.into(),
                    ..Default::default()
                }),
                sha256: None,
                upload: None,
            },
            image: None,
            all_images: false,
            platform: None,
            target: TargetSpec {
                repository: repo.into(),
                ..Default::default()
            },
            verify: None,
            layer_compression: None,
        }
    }

    #[test]
    fn rules_match_namespace_repository_and_host() {
        let p = Policy::parse(
            r#"
rules:
  - namespaces: ["shop", "team-*"]
    repositories: ["registry.internal:5000/shop/*"]
    urlHosts: ["artifacts.example", "*.corp.example"]
"#,
            Path::new("policy.yaml"),
        )
        .unwrap();
        assert_eq!(
            p.check("shop", &spec("registry.internal:5000/shop/web", None)),
            None
        );
        assert_eq!(
            p.check(
                "team-a",
                &spec(
                    "registry.internal:5000/shop/web",
                    Some("https://dl.corp.example/x.tar")
                )
            ),
            None
        );
        assert!(
            p.check("shop", &spec("registry.internal:5000/other/web", None))
                .unwrap()
                .contains("push to")
        );
        assert!(
            p.check("other", &spec("registry.internal:5000/shop/web", None))
                .is_some()
        );
        assert!(
            p.check(
                "shop",
                &spec(
                    "registry.internal:5000/shop/web",
                    Some("http://169.254.169.254/x")
                )
            )
            .unwrap()
            .contains("fetch from")
        );
        assert!(Policy::parse("rules: [{namespaces: [a], bogus: 1}]", Path::new("p")).is_err());
        for bad in ["*", "artifacts-*.example", "a.example/x"] {
            let yaml = format!("rules: [{{namespaces: [a], urlHosts: [\"{bad}\"]}}]");
            assert!(Policy::parse(&yaml, Path::new("p")).is_err(), "{bad}");
        }
        // Controller and worker agree: a subdomain pattern does not cover the domain itself.
        let p = Policy::parse(
            "rules: [{namespaces: [a], repositories: [\"r.example/**\"], urlHosts: [\"*.corp.example\", \"10.0.0.5\"]}]",
            Path::new("p"),
        )
        .unwrap();
        let url = |u: &str| p.check("a", &spec("r.example/x", Some(u))).is_none();
        assert!(url("https://dl.corp.example/a.tar"));
        assert!(!url("https://corp.example/a.tar"));
        assert!(!url("https://dl.corp.example.evil/a.tar"));
        assert!(url("http://10.0.0.5:8080/a.tar"));
    }

    #[test]
    fn plain_http_and_credentials_over_it_need_a_rule_that_allows_them() {
        let strict = Policy::parse(
            "rules: [{namespaces: [a], repositories: [\"r.example/**\"], urlHosts: [\"h.example\"]}]",
            Path::new("p"),
        )
        .unwrap();
        let lax = Policy::parse(
            "rules: [{namespaces: [a], repositories: [\"r.example/**\"], urlHosts: [\"h.example\"], allowInsecure: true, allowPlainHTTPCredentials: true}]",
            Path::new("p"),
        )
        .unwrap();
        let mut insecure = spec("r.example/x", None);
        insecure.target.insecure = true;
        assert!(
            strict
                .check("a", &insecure)
                .unwrap()
                .contains("allowInsecure")
        );
        assert_eq!(lax.check("a", &insecure), None);
        insecure.target.credentials_secret_ref = Some(crate::api::LocalRef { name: "c".into() });
        let only_insecure = Policy::parse(
            "rules: [{namespaces: [a], repositories: [\"r.example/**\"], allowInsecure: true}]",
            Path::new("p"),
        )
        .unwrap();
        assert!(
            only_insecure
                .check("a", &insecure)
                .unwrap()
                .contains("allowPlainHTTPCredentials")
        );
        let mut token = spec("r.example/x", Some("http://h.example/a.tar"));
        token.source.url.as_mut().unwrap().secret_ref =
            Some(crate::api::LocalRef { name: "t".into() });
        assert!(strict.check("a", &token).unwrap().contains("plain HTTP"));
        assert_eq!(lax.check("a", &token), None);
        token.source.url.as_mut().unwrap().url = "https://h.example/a.tar".into();
        assert_eq!(strict.check("a", &token), None);
    }

    #[test]
    fn a_star_never_crosses_a_path_component() {
        let p = Policy::parse(
            r#"
rules:
  - namespaces: ["shop"]
    repositories: ["*.corp.example/team/*", "registry.internal:5000/mirror/**"]
"#,
            Path::new("policy.yaml"),
        )
        .unwrap();
        let allowed = |repo: &str| p.check("shop", &spec(repo, None)).is_none();
        assert!(allowed("registry.corp.example/team/web"));
        assert!(!allowed("evil.example/x.corp.example/team/web"));
        assert!(!allowed("registry.corp.example/team/web/nested"));
        assert!(allowed("registry.internal:5000/mirror/library/nginx"));
        assert!(!allowed("registry.internal:5000/other/web"));
        assert_eq!(
            p.grant("shop").repositories,
            vec![
                "*.corp.example/team/*".to_string(),
                "registry.internal:5000/mirror/**".to_string()
            ]
        );
    }
}
