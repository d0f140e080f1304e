//! Keeps secrets out of progress lines, error messages and markers: URL credentials and secret env values.

use super::Env;

/// Environment variable names containing one of these are treated as secrets.
const SECRET_NAME_PARTS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "KEY",
    "CREDENTIAL",
    "AUTH",
];
/// Shorter values are not redacted: they would blank out ordinary words and numbers.
const MIN_SECRET_LEN: usize = 6;
const MASK: &str = "***";

/// Replaces secrets in text with `***`.
#[derive(Clone, Default)]
pub(crate) struct Redactor {
    /// Secret values, longest first so a secret containing another is masked whole.
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// Collects the values of secret-looking variables in `env`.
    pub(crate) fn from_env(env: &Env) -> Self {
        let mut secrets: Vec<String> = env
            .iter()
            .filter(|(name, value)| {
                let upper = name.to_ascii_uppercase();
                value.len() >= MIN_SECRET_LEN
                    && SECRET_NAME_PARTS.iter().any(|part| upper.contains(part))
            })
            .map(|(_, value)| value.to_owned())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    /// `text` with URL credentials and secret values masked.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = strip_url_credentials(text, true);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
        out
    }
}

/// Replaces the user-info of every `scheme://user:pass@host` in `text` with `***` (`mask`) or removes it.
pub(crate) fn strip_url_credentials(text: &str, mask: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let authority_start = pos + 3;
        out.push_str(&rest[..authority_start]);
        let after = &rest[authority_start..];
        let authority_end = after
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(after.len());
        match after[..authority_end].rfind('@') {
            Some(at) => {
                if mask {
                    out.push_str(MASK);
                    out.push('@');
                }
                out.push_str(&after[at + 1..authority_end]);
            }
            None => out.push_str(&after[..authority_end]),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_are_masked_or_removed() {
        let text =
            "fetch https://user:s3cret@github.com/a/b and ssh://git@host:22/r, file:///tmp/x";
        assert_eq!(
            strip_url_credentials(text, true),
            "fetch https://***@github.com/a/b and ssh://***@host:22/r, file:///tmp/x"
        );
        assert_eq!(
            strip_url_credentials("https://tok@h/p?q=a@b", false),
            "https://h/p?q=a@b"
        );
    }

    #[test]
    fn secret_env_values_are_masked_and_others_kept() {
        let env: Env = [
            ("HF_TOKEN", "hf_abcdefgh"),
            ("PATH", "/usr/bin"),
            ("API_KEY", "short"),
        ]
        .into_iter()
        .collect();
        let r = Redactor::from_env(&env);
        assert_eq!(
            r.redact("curl -H hf_abcdefgh /usr/bin short"),
            "curl -H *** /usr/bin short"
        );
    }
}
