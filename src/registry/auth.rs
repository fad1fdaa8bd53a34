//! Registry credentials from a docker `config.json` (the format of `docker login`,
//! podman's auth.json and a `kubernetes.io/dockerconfigjson` Secret).

use std::path::{Path, PathBuf};

use docker_credential::{CredentialRetrievalError, DockerCredential};
use oci_client::secrets::RegistryAuth;

use super::error::RegistryError;

/// Where credentials come from: an explicit file, else `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`. No file, or no entry for the host, means anonymous.
pub fn credentials_for(
    host: &str,
    auth_file: Option<&Path>,
) -> Result<RegistryAuth, RegistryError> {
    let path = match auth_file {
        Some(p) => p.to_path_buf(),
        None => match default_config_path() {
            Some(p) if p.exists() => p,
            _ => return Ok(RegistryAuth::Anonymous),
        },
    };
    let file = std::fs::File::open(&path).map_err(|e| {
        RegistryError::Config(format!("cannot read auth file {}: {e}", path.display()))
    })?;
    match docker_credential::get_credential_from_reader(std::io::BufReader::new(file), host) {
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
        let auth = credentials_for("127.0.0.1:5000", Some(f.path())).unwrap();
        assert!(matches!(auth, RegistryAuth::Basic(u, p) if u == "tester" && p == "s3cret"));
        let other = credentials_for("127.0.0.1:6000", Some(f.path())).unwrap();
        assert!(matches!(other, RegistryAuth::Anonymous));
        assert!(credentials_for("x", Some(Path::new("/nonexistent/config.json"))).is_err());
    }
}
