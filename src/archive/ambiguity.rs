//! Documents that mean two things are refused (the class of CVE-2021-41190, GHSA-mc8v-mgrf-8f4m
//! and GHSA-77vh-xpmg-72qh): a manifest that also lists `manifests`, an index that also has
//! `config` or `layers`, a `mediaType` other than the one the referring descriptor (or the
//! place it is read from) gives it, and a `schemaVersion` other than 2. Different clients read
//! different images from such a document, and a registry stores it under one digest; pushing
//! it would hand that ambiguity on. Duplicate keys of the fields read are refused by the typed
//! parse (serde reports `duplicate field`).

use serde_json::{Map, Value};

use super::error::ArchiveError;
use super::formats::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};

/// What a document is read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Manifest,
    Index,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Manifest => "image manifest",
            Kind::Index => "image index",
        }
    }

    fn media_types(self) -> [&'static str; 2] {
        match self {
            Kind::Manifest => [OCI_MANIFEST, DOCKER_MANIFEST],
            Kind::Index => [OCI_INDEX, DOCKER_MANIFEST_LIST],
        }
    }
}

/// Check that `bytes` (member `member`) is unambiguously a document of `kind`, as `expected`
/// (the referring descriptor's media type, if it gives one) says.
pub fn check(
    member: &str,
    bytes: &[u8],
    kind: Kind,
    expected: Option<&str>,
) -> Result<(), ArchiveError> {
    let refuse = |detail: String| ArchiveError::Ambiguous {
        member: member.to_string(),
        detail,
    };
    // Not an object, or not JSON: the typed parse names that.
    let Ok(Value::Object(doc)) = serde_json::from_slice::<Value>(bytes) else {
        return Ok(());
    };
    let present = |key: &str| has(&doc, key);
    match kind {
        Kind::Manifest if present("manifests") => {
            return Err(refuse(
                "an image manifest that also lists \"manifests\" (an index's field)".into(),
            ));
        }
        Kind::Index if present("config") || present("layers") => {
            return Err(refuse(format!(
                "an image index that also has {} (an image manifest's field)",
                if present("config") {
                    "\"config\""
                } else {
                    "\"layers\""
                }
            )));
        }
        _ => {}
    }
    match doc.get("schemaVersion") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64() == Some(2) => {}
        Some(v) => {
            return Err(refuse(format!(
                "schemaVersion is {v}, an {} must have 2",
                kind.name()
            )));
        }
    }
    match doc.get("mediaType") {
        None | Some(Value::Null) => {}
        Some(Value::String(own)) => {
            if let Some(expected) = expected.filter(|e| !e.is_empty())
                && own != expected
            {
                return Err(refuse(format!(
                    "its mediaType is {own:?} but the descriptor pointing at it says {expected:?}"
                )));
            }
            if !kind.media_types().contains(&own.as_str()) {
                return Err(refuse(format!(
                    "read as an {} but its mediaType is {own:?}",
                    kind.name()
                )));
            }
        }
        Some(v) => return Err(refuse(format!("mediaType is {v}, not a string"))),
    }
    Ok(())
}

/// A field that is there with a value (Go writes absent lists as `null`).
fn has(doc: &Map<String, Value>, key: &str) -> bool {
    doc.get(key).is_some_and(|v| !v.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(bytes: &str, kind: Kind, expected: Option<&str>) -> String {
        match check("m", bytes.as_bytes(), kind, expected) {
            Err(ArchiveError::Ambiguous { member, detail }) => {
                assert_eq!(member, "m");
                detail
            }
            other => panic!("{bytes}: expected Ambiguous, got {other:?}"),
        }
    }

    #[test]
    fn documents_with_both_shapes_are_refused() {
        let m = r#"{"schemaVersion":2,"config":{},"layers":[],"manifests":[]}"#;
        assert!(err(m, Kind::Manifest, None).contains("manifests"));
        assert!(err(m, Kind::Index, None).contains("config"));
        let i = r#"{"schemaVersion":2,"manifests":[],"layers":[]}"#;
        assert!(err(i, Kind::Index, None).contains("layers"));
        // Go's null is absence.
        let ok = r#"{"schemaVersion":2,"config":{},"layers":[],"manifests":null}"#;
        check("m", ok.as_bytes(), Kind::Manifest, None).unwrap();
    }

    #[test]
    fn media_types_must_agree() {
        let m = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{}}}}"#);
        check("m", m.as_bytes(), Kind::Manifest, Some(OCI_MANIFEST)).unwrap();
        check("m", m.as_bytes(), Kind::Manifest, Some("")).unwrap();
        check("m", m.as_bytes(), Kind::Manifest, None).unwrap();
        assert!(err(&m, Kind::Manifest, Some(DOCKER_MANIFEST)).contains("descriptor"));
        let i = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","config":null}}"#);
        assert!(err(&i, Kind::Manifest, None).contains("read as an image manifest"));
        check("m", i.as_bytes(), Kind::Index, Some(OCI_INDEX)).unwrap();
        assert!(err(r#"{"mediaType":7}"#, Kind::Index, None).contains("not a string"));
    }

    #[test]
    fn schema_version_must_be_2() {
        assert!(err(r#"{"schemaVersion":1}"#, Kind::Manifest, None).contains("schemaVersion"));
        assert!(err(r#"{"schemaVersion":"2"}"#, Kind::Index, None).contains("schemaVersion"));
        check("m", br#"{"schemaVersion":2}"#, Kind::Index, None).unwrap();
        check("m", b"not json", Kind::Index, None).unwrap();
    }
}
