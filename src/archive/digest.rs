//! `sha256:<hex>` digests: parsing, validating and computing.

use sha2::{Digest as _, Sha256};

/// Validate a digest string (only sha256 is accepted: it is what every archive format uses).
pub fn parse(s: &str) -> Option<&str> {
    let hex = s.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

/// True for a bare 64-char lowercase hex string.
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn finish(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Accept `sha256:<hex>` or bare hex, return the canonical `sha256:<hex>` form.
pub fn normalize(s: &str) -> Option<String> {
    let s = s.trim().to_ascii_lowercase();
    if parse(&s).is_some() {
        Some(s)
    } else if is_hex64(&s) {
        Some(format!("sha256:{s}"))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn digests() {
        let d = super::sha256_of(b"");
        assert_eq!(
            d,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(super::parse(&d).is_some());
        assert!(super::parse("sha256:XYZ").is_none());
        assert_eq!(super::normalize(&d[7..]).unwrap(), d);
    }
}
