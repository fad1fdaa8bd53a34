//! Push targets (`registry[:port]/repository[:tag]`) and the tags saved in archives.

use std::fmt;

/// A pattern over `registry[:port]/repository`, as the cluster policy writes them: `*` stays
/// within one path component and `**` crosses them, so `*.corp.example/team/*` can never match
/// `evil.example/x.corp.example/team/y`. The controller and the worker match with this alone.
pub fn repository_pattern(pattern: &str) -> Result<globset::GlobMatcher, globset::Error> {
    Ok(globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()?
        .compile_matcher())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid target {input:?}: {reason}")]
pub struct TargetError {
    pub input: String,
    pub reason: String,
}

impl Target {
    /// Parse a push target. The registry host is required: pushing somewhere implicit
    /// (Docker Hub) by accident is worse than asking for one more word.
    pub fn parse(input: &str) -> Result<Target, TargetError> {
        let err = |reason: &str| TargetError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.contains('@') {
            return Err(err("a push target cannot name a digest"));
        }
        let (registry, rest) = input
            .split_once('/')
            .ok_or_else(|| err("expected registry/repository[:tag]"))?;
        if !(registry.contains('.')
            || registry.contains(':')
            || registry == "localhost"
            || registry.starts_with('['))
        {
            return Err(err(
                "the first component must be a registry host (with a '.' or a ':port', or localhost)",
            ));
        }
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_string())),
            _ => (rest, None),
        };
        if !valid_repository(repository) {
            return Err(err(
                "repository must be lowercase path components of [a-z0-9._-]",
            ));
        }
        if let Some(t) = &tag
            && !valid_tag(t)
        {
            return Err(err("tag must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
        }
        Ok(Target {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag,
        })
    }

    pub fn with_tag(&self, tag: &str) -> Target {
        Target {
            tag: Some(tag.to_string()),
            ..self.clone()
        }
    }

    pub fn with_repository(&self, repository: String) -> Target {
        Target {
            repository,
            ..self.clone()
        }
    }

    /// The oci-client reference for this repository (tag `latest` when none; only the
    /// repository part is used for blob operations).
    pub fn oci_reference(&self) -> oci_client::Reference {
        oci_client::Reference::with_tag(
            self.registry.clone(),
            self.repository.clone(),
            self.tag.clone().unwrap_or_else(|| "latest".into()),
        )
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        Ok(())
    }
}

pub fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

pub fn valid_repository(r: &str) -> bool {
    !r.is_empty()
        && r.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        })
}

/// A tag as saved in an archive (`nginx:1.25`, `docker.io/library/nginx:1.25`,
/// `registry:5000/team/app:2`, or a bare `1.4` from an OCI layout's ref.name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedTag {
    /// Repository path without the registry (`library/nginx`), None for a bare tag.
    pub path: Option<String>,
    pub tag: String,
}

impl SavedTag {
    pub fn parse(s: &str) -> Option<SavedTag> {
        let s = s.split('@').next().unwrap_or(s);
        if valid_tag(s) && !s.contains('/') && !s.contains(':') {
            return Some(SavedTag {
                path: None,
                tag: s.to_string(),
            });
        }
        let (name, tag) = match s.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, t.to_string()),
            _ => (s, "latest".to_string()),
        };
        if !valid_tag(&tag) {
            return None;
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        let has_registry = parts.len() > 1
            && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost");
        let registry = if has_registry {
            Some(parts.remove(0))
        } else {
            None
        };
        let mut path = parts.join("/");
        let docker_hub = matches!(registry, None | Some("docker.io") | Some("index.docker.io"));
        if docker_hub && !path.contains('/') {
            path = format!("library/{path}");
        }
        valid_repository(&path).then_some(SavedTag {
            path: Some(path),
            tag,
        })
    }

    /// Does a user's `--image` reference name this tag?
    pub fn matches(&self, wanted: &str) -> bool {
        match (SavedTag::parse(wanted), &self.path) {
            (Some(w), Some(p)) => w.path.as_deref() == Some(p.as_str()) && w.tag == self.tag,
            (Some(w), None) => w.path.is_none() && w.tag == self.tag,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("127.0.0.1:5000/shop/web:1.4").unwrap();
        assert_eq!(
            (t.registry.as_str(), t.repository.as_str(), t.tag.as_deref()),
            ("127.0.0.1:5000", "shop/web", Some("1.4"))
        );
        let t = Target::parse("registry.internal/shop/web").unwrap();
        assert_eq!(t.tag, None);
        assert!(Target::parse("shop/web:1").is_err());
        assert!(Target::parse("r.io/Shop/web").is_err());
        assert!(Target::parse("r.io/web@sha256:00").is_err());
        assert!(Target::parse("r.io/web:bad/tag").is_err());
    }

    #[test]
    fn saved_tags() {
        let t = SavedTag::parse("nginx:1.25").unwrap();
        assert_eq!(
            t,
            SavedTag {
                path: Some("library/nginx".into()),
                tag: "1.25".into()
            }
        );
        assert_eq!(SavedTag::parse("docker.io/library/nginx:1.25").unwrap(), t);
        assert_eq!(
            SavedTag::parse("reg:5000/team/app:2")
                .unwrap()
                .path
                .as_deref(),
            Some("team/app")
        );
        assert_eq!(
            SavedTag::parse("1.4").unwrap(),
            SavedTag {
                path: None,
                tag: "1.4".into()
            }
        );
        assert_eq!(SavedTag::parse("team/app").unwrap().tag, "latest");
        assert!(t.matches("docker.io/library/nginx:1.25"));
        assert!(t.matches("nginx:1.25"));
        assert!(!t.matches("nginx:1.26"));
    }
}
