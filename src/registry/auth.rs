//! Registry credentials from a docker `config.json` (the format of `docker login`,
//! podman's auth.json and a `kubernetes.io/dockerconfigjson` Secret).

use std::path::{Path, PathBuf};

use docker_credential::{CredentialRetrievalError, DockerCredential};
use oci_client::secrets::RegistryAuth;

use super::error::RegistryError;

/// Where credentials come from: an explicit file, else `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`. No file, or no entry for the host, means anonymous. With
/// `auths_only` (the worker, reading a user's Secret) only the file's `auths` are read: its
/// `credsStore` and `credHelpers` would name a program to run.
pub fn credentials_for(
    host: &str,
    auth_file: Option<&Path>,
    auths_only: bool,
) -> Result<RegistryAuth, RegistryError> {
    let path = match auth_file {
        Some(p) => p.to_path_buf(),
        None => match default_config_path() {
            Some(p) if p.exists() => p,
            _ => return Ok(RegistryAuth::Anonymous),
        },
    };
    let mut text = std::fs::read(&path).map_err(|e| {
        RegistryError::Config(format!("cannot read auth file {}: {e}", path.display()))
    })?;
    if auths_only {
        let config: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| RegistryError::Config(format!("auth file {}: {e}", path.display())))?;
        let auths = config
            .get("auths")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({}));
        text = serde_json::to_vec(&serde_json::json!({ "auths": auths })).expect("serializes");
    }
    match docker_credential::get_credential_from_reader(text.as_slice(), host) {
        Ok(DockerCredential::UsernamePassword(u, p)) => Ok(RegistryAuth::Basic(u, p)),
        Ok(DockerCredential::IdentityToken(_)) => Err(RegistryError::Config(format!(
            "auth file {} holds an identity token for {host}; only username/password credentials are supported",
            path.display()
        ))),
        Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(RegistryAuth::Anonymous),
        Err(e) => Err(RegistryError::Config(format!(
            "auth file {}: {e}",
            path.display()
        ))),
    }
}

fn default_config_path() -> Option<PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))
        .map(|d| d.join("config.json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_basic_credentials_and_defaults_to_anonymous() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        // base64("tester:s3cret")
        write!(
            f,
            r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"dGVzdGVyOnMzY3JldA=="}}}}}}"#
        )
        .unwrap();
        let auth = credentials_for("127.0.0.1:5000", Some(f.path()), false).unwrap();
        assert!(matches!(auth, RegistryAuth::Basic(u, p) if u == "tester" && p == "s3cret"));
        let other = credentials_for("127.0.0.1:6000", Some(f.path()), false).unwrap();
        assert!(matches!(other, RegistryAuth::Anonymous));
        assert!(credentials_for("x", Some(Path::new("/nonexistent/config.json")), false).is_err());
    }

    /// A Secret naming a credential helper: with `auths_only` no program is run (the helper
    /// here would fail loudly: there is no `docker-credential-evil`), its `auths` still work.
    #[test]
    fn auths_only_never_runs_a_credential_helper() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        write!(
            f,
            r#"{{"credsStore":"evil","credHelpers":{{"127.0.0.1:5000":"evil"}},"auths":{{"127.0.0.1:5000":{{"auth":"dGVzdGVyOnMzY3JldA=="}}}}}}"#
        )
        .unwrap();
        assert!(credentials_for("127.0.0.1:5000", Some(f.path()), false).is_err());
        let auth = credentials_for("127.0.0.1:5000", Some(f.path()), true).unwrap();
        assert!(matches!(auth, RegistryAuth::Basic(u, p) if u == "tester" && p == "s3cret"));
        let other = credentials_for("127.0.0.1:6000", Some(f.path()), true).unwrap();
        assert!(matches!(other, RegistryAuth::Anonymous));
    }
}
