//! The one masker: hides secret values and URL credentials in text before it reaches a log line, an
//! error message, a marker or a terminal.
//!
//! Every place that shows text that may hold a secret uses [`Masker`]: the installer's progress lines
//! and errors, the supervisor's log ring, the broker's URL and its errors. The rules:
//!
//! - Secret values are replaced longest first, so a secret that contains another is masked whole.
//! - So is the form in which the queue's worker shows a secret of more than 8 characters at its start
//!   (`hfTo***02aa`: its first and last 4 characters).
//! - In free text, the whole user-info of every `scheme://user:pass@host` is masked (`scheme://***@host`):
//!   a user name may be a token too (`https://TOKEN:x-oauth-basic@github.com`).
//! - A single URL known to be one (the broker's `HUB_REDIS_URL`) is shown by [`mask_url`], which keeps
//!   the user name and masks the password (`redis://user:***@host`); when the user-info's end is
//!   ambiguous (the URL does not parse as one), all of it is masked.
//! - Which environment variables are secret ([`is_secret_name`]): the ones the plan marks secret
//!   ([`crate::catalog::is_secret`]) and names that look secret (`TOKEN`, `SECRET`, `PASSWORD`, `KEY`,
//!   `AUTH`, `WEBHOOK`, …). Their values are masked, and so are the passwords of URLs in any variable.

use std::borrow::Cow;

/// What a masked secret looks like.
pub(crate) const MASK: &str = "***";

/// Environment variable names containing one of these (upper-cased) are treated as secrets.
const SECRET_NAME_PARTS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "KEY",
    "CREDENTIAL",
    "AUTH",
    // A webhook URL is a bearer credential: whoever has it may post (Slack, Discord).
    "WEBHOOK",
];
/// The bytes a part of [`SECRET_NAME_PARTS`] starts with, made from that list.
const PART_STARTS: [bool; 256] = {
    let mut starts = [false; 256];
    let mut i = 0;
    while i < SECRET_NAME_PARTS.len() {
        starts[SECRET_NAME_PARTS[i].as_bytes()[0] as usize] = true;
        i += 1;
    }
    starts
};
/// Values of variables guessed secret by name are masked from this length on: shorter ones would
/// blank out ordinary words and numbers.
const MIN_GUESSED_LEN: usize = 6;
/// Values of variables marked secret, and URL passwords, are masked from this length on: a one- or
/// two-character password would blank out every such letter of a message.
const MIN_MARKED_LEN: usize = 3;

/// Replaces every occurrence of known secret values, and the credentials of every URL, with [`MASK`].
#[derive(Clone, Default)]
pub struct Masker {
    /// Longest first, so a secret that contains another is masked whole.
    values: Vec<String>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} values)", self.values.len())
    }
}

impl Masker {
    /// A masker for `values`; empty values are ignored.
    pub fn new<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut values: Vec<String> = values
            .into_iter()
            .map(Into::into)
            .filter(|v| !v.is_empty())
            .collect();
        let shown: Vec<String> = values
            .iter()
            .filter_map(|v| as_the_worker_shows(v))
            .collect();
        values.extend(shown);
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Masker { values }
    }

    /// A masker for the current values of `names`, looked up with `lookup` (for example the process environment).
    pub fn from_lookup<'a, I>(names: I, lookup: &dyn Fn(&str) -> Option<String>) -> Self
    where
        I: IntoIterator<Item = &'a str>,
    {
        Masker::new(names.into_iter().filter_map(lookup))
    }

    /// A masker for an environment given as `(name, value)` pairs: the values of the secret variables
    /// ([`is_secret_name`]; 3 characters or more when the plan marks the name secret, 6 or more when
    /// only the name looks secret) and the password (or lone user-info) of every URL value of 3
    /// characters or more, whatever the variable's name.
    pub fn for_env<'a, I>(env: I) -> Self
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        Masker::new(secret_values(env))
    }

    /// A masker for `values` and everything `self` masks.
    pub fn and(&self, values: Vec<String>) -> Masker {
        if values.is_empty() {
            return self.clone();
        }
        Masker::new(self.values.iter().cloned().chain(values))
    }

    /// `text` with the user-info of every URL and every secret value replaced by [`MASK`]; borrowed
    /// when nothing was masked.
    pub fn mask<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = mask_url_credentials(text);
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = Cow::Owned(out.replace(value.as_str(), MASK));
            }
        }
        out
    }
}

/// The values [`Masker::for_env`] masks for the environment `env` (`(name, value)` pairs), in `env`'s
/// order, unsorted: the values of the secret variables and the URL passwords.
pub fn secret_values<'a, I>(env: I) -> Vec<String>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut values = Vec::new();
    for (name, value) in env {
        if value.len() >= MIN_MARKED_LEN && crate::catalog::is_secret(name)
            || value.len() >= MIN_GUESSED_LEN && looks_secret(name)
        {
            values.push(value.to_owned());
        }
        if let Some(password) = url_password(value)
            && password.len() >= MIN_MARKED_LEN
        {
            values.push(password.to_owned());
        }
    }
    values
}

/// How the queue's worker shows a secret of more than 8 characters in its start-up report (its
/// "Secret Variables (masked)" lines): the first and last 4 characters around `***` (`hfTo***02aa`),
/// which tells 8 characters of it. `None` for a shorter secret (the worker shows `***MASKED***`).
/// Characters, where the worker counts UTF-16 units: the same for the ASCII of tokens and keys.
fn as_the_worker_shows(secret: &str) -> Option<String> {
    let chars: Vec<char> = secret.chars().collect();
    (chars.len() > 8).then(|| {
        let first: String = chars[..4].iter().collect();
        let last: String = chars[chars.len() - 4..].iter().collect();
        format!("{first}***{last}")
    })
}

/// Whether the variable `name` holds a secret: marked secret by the plan ([`crate::catalog::is_secret`])
/// or named like one (contains `TOKEN`, `SECRET`, `PASSWORD`, `PASSWD`, `KEY`, `CREDENTIAL`, `AUTH` or
/// `WEBHOOK`, any case).
pub fn is_secret_name(name: &str) -> bool {
    crate::catalog::is_secret(name) || looks_secret(name)
}

/// Whether `name` contains one of [`SECRET_NAME_PARTS`], in any case. Runs for every variable of
/// every app before the apps start, so it compares bytes in place (no upper-cased copy) and looks
/// further only where a part's first letter is.
fn looks_secret(name: &str) -> bool {
    let name = name.as_bytes();
    (0..name.len()).any(|at| {
        let rest = &name[at..];
        let first = rest[0].to_ascii_uppercase();
        PART_STARTS[usize::from(first)]
            && SECRET_NAME_PARTS.iter().any(|part| {
                let part = part.as_bytes();
                part[0] == first
                    && rest.len() >= part.len()
                    && rest[..part.len()].eq_ignore_ascii_case(part)
            })
    })
}

/// `text` with the user-info of every `scheme://user:pass@host` replaced by [`MASK`].
fn mask_url_credentials(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let stripped = rewrite_url_credentials(text, Some(MASK));
    if stripped == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(stripped)
    }
}

/// `text` with the user-info of every `scheme://user:pass@host` removed (`scheme://host`), for
/// records that name a source without its credentials.
pub fn strip_url_credentials(text: &str) -> String {
    rewrite_url_credentials(text, None)
}

fn rewrite_url_credentials(text: &str, mask: Option<&str>) -> String {
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
                if let Some(mask) = mask {
                    out.push_str(mask);
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

/// The password part of `scheme://user:password@host`, or the whole user-info when it has no `:`
/// (`redis://password@host`); `None` for a URL without credentials or text that is not a URL.
pub fn url_password(raw: &str) -> Option<&str> {
    let userinfo = userinfo_of(raw)?;
    match userinfo.split_once(':') {
        Some((_, password)) if !password.is_empty() => Some(password),
        Some(_) => None,
        None if !userinfo.is_empty() => Some(userinfo),
        None => None,
    }
}

fn userinfo_of(raw: &str) -> Option<&str> {
    let rest = &raw[raw.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority.rfind('@').map(|at| &authority[..at])
}

/// True when the user-info of a URL cannot be told apart from the rest: an `@` after the end of
/// the authority, or any `#` (the URLs masked whole have no fragment). Both come from a password
/// with one of `#/?@` not percent-encoded.
pub fn userinfo_is_ambiguous(raw: &str) -> bool {
    let Some(start) = raw.find("://") else {
        return false;
    };
    let rest = &raw[start + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest.contains('#') || rest[authority_end..].contains('@')
}

/// One URL (not free text) with its password replaced by [`MASK`]; works on malformed input too.
///
/// The user name stays (`redis://user:***@host`); a user-info without `:` is masked whole, because
/// some people write `redis://password@host`. When the user-info's end is ambiguous (see
/// [`userinfo_is_ambiguous`]), everything between `://` and the last `@` is masked, user name
/// included. Without a scheme there is no telling which part is secret: the result is [`MASK`].
pub fn mask_url(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return MASK.to_owned();
    };
    if userinfo_is_ambiguous(raw) {
        let start = scheme_end + 3;
        return match raw.rfind('@') {
            Some(at) if at >= start => format!("{}{MASK}{}", &raw[..start], &raw[at..]),
            // A `#` and no `@`: the part after `://` up to the `#` may be a password alone.
            _ => format!("{}{MASK}", &raw[..start]),
        };
    }
    let Some(userinfo) = userinfo_of(raw) else {
        return raw.to_owned();
    };
    let start = userinfo.as_ptr() as usize - raw.as_ptr() as usize;
    let end = start + userinfo.len();
    let replacement = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:{MASK}"),
        None if userinfo.is_empty() => String::new(),
        None => MASK.to_owned(),
    };
    format!("{}{replacement}{}", &raw[..start], &raw[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence_longest_first() {
        let m = Masker::new(["abc", "abcdef", ""]);
        assert_eq!(m.mask("x abcdef y abc z"), "x *** y *** z");
        assert!(matches!(m.mask("clean"), Cow::Borrowed("clean")));
        assert_eq!(format!("{m:?}"), "Masker(2 values)");
    }

    #[test]
    fn the_form_the_worker_shows_a_secret_in_is_masked_too() {
        let m = Masker::new(["hf_abcdefgh1234", "short"]);
        assert_eq!(
            m.mask("HF_TOKEN: hf_a***1234 OTHER: shor***hort x: hf_abcdefgh1234"),
            "HF_TOKEN: *** OTHER: shor***hort x: ***"
        );
        // Added once, whatever the maskers it is made from.
        assert_eq!(
            format!("{:?}", m.and(vec!["hf_abcdefgh1234".into()])),
            "Masker(3 values)"
        );
    }

    #[test]
    fn from_lookup_reads_current_values() {
        let m = Masker::from_lookup(["KEY", "UNSET"], &|n| {
            (n == "KEY").then(|| "hunter2".to_owned())
        });
        assert_eq!(m.mask("password hunter2"), "password ***");
    }

    #[test]
    fn url_credentials_are_masked_in_text_or_removed() {
        let text =
            "fetch https://user:s3cret@github.com/a/b and ssh://git@host:22/r, file:///tmp/x";
        assert_eq!(
            Masker::default().mask(text),
            "fetch https://***@github.com/a/b and ssh://***@host:22/r, file:///tmp/x"
        );
        assert_eq!(
            strip_url_credentials("https://tok@h/p?q=a@b"),
            "https://h/p?q=a@b"
        );
        assert!(matches!(
            Masker::default().mask("see https://h/p?q=a@b"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn secret_env_values_are_masked_and_others_kept() {
        let env = [
            ("HF_TOKEN", "hf_abcdefgh"),
            ("PATH", "/usr/bin"),
            ("API_KEY", "short"),
        ];
        let m = Masker::for_env(env);
        assert_eq!(
            m.mask("curl -H hf_abcdefgh /usr/bin short"),
            "curl -H *** /usr/bin short"
        );
    }

    #[test]
    fn names_are_guessed_secret_in_any_case_and_anywhere_in_the_name() {
        for part in SECRET_NAME_PARTS {
            assert!(
                looks_secret(part) && looks_secret(&part.to_ascii_lowercase()),
                "{part}"
            );
        }
        for name in [
            "hf_token",
            "Api_Key",
            "PASSWD",
            "x_credentials",
            "authz",
            "MY_WEBHOOK",
        ] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in ["PATH", "TOKE", "PASS_WD", "KE_Y", "", "MONKEY_"] {
            assert_eq!(is_secret_name(name), name.contains("KEY"), "{name}");
        }
    }

    #[test]
    fn values_the_plan_marks_secret_are_masked_whatever_their_name() {
        // WORKER_WEBSOCKET_AUTH_TOKEN is marked by the catalog; OPENAI_API_KEY too. A short value of
        // a marked name is still masked (the guess by name wants 6 characters).
        assert!(is_secret_name("OPENAI_API_KEY") && is_secret_name("GEMINI_API_KEY"));
        let m = Masker::for_env([("GEMINI_API_KEY", "g-12"), ("PORT", "8188")]);
        assert_eq!(m.mask("key g-12 on 8188"), "key *** on 8188");
    }

    #[test]
    fn webhook_urls_and_url_passwords_in_any_variable_are_masked() {
        // The value of SLACK_WEBHOOK_URL leaked before: no TOKEN/KEY/… in the name, and the secret
        // is in the URL's path, not its user-info.
        let hook = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX";
        let m = Masker::for_env([
            ("SLACK_WEBHOOK_URL", hook),
            ("DATABASE_URL", "postgres://app:db-pw-77@db:5432/x"),
            ("MIRROR", "https://h/p?q=a@b"),
        ]);
        assert_eq!(m.mask(&format!("posting to {hook}")), "posting to ***");
        // The password alone (a driver's "auth failed for …") and inside its URL.
        assert_eq!(
            m.mask("auth failed for db-pw-77 at postgres://app:db-pw-77@db:5432/x"),
            "auth failed for *** at postgres://***@db:5432/x"
        );
        assert!(matches!(m.mask("q=a@b"), Cow::Borrowed(_)));
    }

    #[test]
    fn one_url_keeps_its_user_name_and_masks_the_password() {
        assert_eq!(
            mask_url("redis://:s3cret@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(mask_url("rediss://user:s3cret@h"), "rediss://user:***@h");
        assert_eq!(mask_url("redis://s3cret@h"), "redis://***@h");
        assert_eq!(mask_url("redis://h:6379"), "redis://h:6379");
        // Ambiguous (the URL does not parse as one): the whole user-info goes, up to the last `@`.
        assert_eq!(mask_url("redis://u:p@ss:w@h/x@y"), "redis://***@y");
        assert_eq!(
            mask_url("redis://:p@ss#w:rd/1@127.0.0.1:16391"),
            "redis://***@127.0.0.1:16391"
        );
        assert_eq!(mask_url("redis://secret#x"), "redis://***");
        assert_eq!(mask_url("redis://:pa/ss@h"), "redis://***@h");
        assert_eq!(mask_url("s3cret"), "***");
        assert_eq!(url_password("redis://u:pw@h"), Some("pw"));
        assert_eq!(url_password("redis://pw@h"), Some("pw"));
        assert_eq!(url_password("redis://u:@h"), None);
        assert_eq!(url_password("not a url"), None);
    }
}
