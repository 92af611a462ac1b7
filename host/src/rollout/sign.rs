//! Minisign signatures of published components (ed25519, the format of
//! Debian's `minisign` tool): `zkrun publish --sign-key` signs, participants
//! with `--trust-key` verify. Verification uses `minisign-verify`, signing
//! the `minisign` crate.

use std::path::Path;

/// Public keys a participant trusts.
#[derive(Clone, Default)]
pub struct TrustKeys(Vec<minisign_verify::PublicKey>);

impl std::fmt::Debug for TrustKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustKeys({} keys)", self.0.len())
    }
}

impl TrustKeys {
    /// Reads every key in `files`: minisign `.pub` files, or files with one
    /// base64 key per line (lines starting with `untrusted comment:` or `#`
    /// are skipped).
    pub fn load(files: &[std::path::PathBuf]) -> Result<TrustKeys, String> {
        let mut keys = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read trust key file {}: {e}", file.display()))?;
            let before = keys.len();
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') || line.starts_with("untrusted comment:") {
                    continue;
                }
                let key = minisign_verify::PublicKey::from_base64(line)
                    .map_err(|e| format!("{}: not a minisign public key: {e}", file.display()))?;
                keys.push(key);
            }
            if keys.len() == before {
                return Err(format!("{}: no minisign public key in it", file.display()));
            }
        }
        Ok(TrustKeys(keys))
    }

    /// Whether any key is configured (else signatures are not checked).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks `signature` (a `.minisig` text) over `bytes`; `Err` is one line.
    pub fn verify(&self, bytes: &[u8], signature: Option<&str>) -> Result<(), String> {
        let Some(text) = signature else {
            return Err("it is not signed, and --trust-key requires a signature".into());
        };
        let signature = minisign_verify::Signature::decode(text)
            .map_err(|e| format!("its signature cannot be read: {e}"))?;
        let mut last = String::from("no trust key");
        for key in &self.0 {
            match key.verify(bytes, &signature, false) {
                Ok(()) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("its signature is not valid for any --trust-key ({last})"))
    }
}

/// Signs `bytes` with the minisign secret key in `key_file`. An encrypted
/// key takes its password from `$ZKRUN_SIGN_PASSWORD`, else asks on the
/// terminal.
pub fn sign(bytes: &[u8], key_file: &Path, label: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(key_file)
        .map_err(|e| format!("cannot read signing key {}: {e}", key_file.display()))?;
    let boxed = minisign::SecretKeyBox::from_string(&text)
        .map_err(|e| format!("{}: not a minisign secret key: {e}", key_file.display()))?;
    let password = std::env::var("ZKRUN_SIGN_PASSWORD").ok();
    let key = match boxed.clone().into_unencrypted_secret_key() {
        Ok(key) => key,
        Err(_) => boxed
            .into_secret_key(password)
            .map_err(|e| format!("{}: cannot open the secret key: {e}", key_file.display()))?,
    };
    let trusted = format!("zkrun publish {label}");
    let signature = minisign::sign(None, &key, std::io::Cursor::new(bytes), Some(&trusted), None)
        .map_err(|e| format!("cannot sign: {e}"))?;
    Ok(signature.to_string())
}
