//! The browser origins allowed to use the health endpoint's control routes without the control
//! token (`MACHINE_CONTROL_ALLOWED_ORIGINS`), and the CORS headers an answer carries for them.
//!
//! The unmodified monitor is a web page that sends no token (worker contract §5). A browser sets
//! the `Origin` header of every cross-origin request itself and a page cannot change it, so an exact
//! origin list lets that one page restart a process while other pages a browser on the machine's
//! network opens cannot. Any other client (curl) can write any `Origin`: against someone who
//! reaches the port over the network, only the token protects (docs/health-endpoint.md).

pub(crate) use crate::env::ALLOWED_ORIGINS_VAR;

/// Exact web origins (`scheme://host[:port]`, as browsers serialise them: lowercase, no default
/// port, no path). Empty (the default) allows none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<String>);

impl AllowedOrigins {
    /// Parses `MACHINE_CONTROL_ALLOWED_ORIGINS`: comma-separated origins, blanks ignored, each
    /// normalised as a browser writes it (`HTTP://Monitor.example:443/` → `http://monitor.example:443`,
    /// `https://m.example:443` → `https://m.example`). Returns the valid entries and one problem per
    /// invalid one (naming its position and the allowed form); `*` and `null` are refused.
    pub fn parse(raw: &str) -> (AllowedOrigins, Vec<String>) {
        let mut origins = Vec::new();
        let mut problems = Vec::new();
        for (index, entry) in raw.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            match normalise(entry) {
                Ok(origin) => {
                    if !origins.contains(&origin) {
                        origins.push(origin);
                    }
                }
                Err(why) => problems.push(format!(
                    "{ALLOWED_ORIGINS_VAR} entry {} \"{entry}\" {why}; write exact origins as scheme://host[:port], comma-separated (e.g. https://monitor.example.com,http://localhost:3333)",
                    index + 1
                )),
            }
        }
        (AllowedOrigins(origins), problems)
    }

    /// Whether the `Origin` header value `origin` is one of the list (exact, case-sensitive, as
    /// browsers send it).
    pub fn allows(&self, origin: &str) -> bool {
        self.0.iter().any(|o| o == origin)
    }

    /// Whether the list is empty (origin-based control is off).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The origins, normalised, in the order given.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// An origin as a browser serialises it, or why `entry` is not one.
fn normalise(entry: &str) -> Result<String, String> {
    if entry == "*" {
        return Err("would let every web page control the machine".to_owned());
    }
    if entry.eq_ignore_ascii_case("null") {
        return Err(
            "is the origin of sandboxed pages and files, which any page can take".to_owned(),
        );
    }
    let url = url::Url::parse(entry).map_err(|e| format!("is not an origin ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "has scheme \"{}\"; use http or https",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("carries a user name or password".to_owned());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err("has a path, query or fragment; an origin has none".to_owned());
    }
    if url.host().is_none() {
        return Err("has no host".to_owned());
    }
    Ok(url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_origins_and_names_every_bad_entry() {
        let (origins, problems) = AllowedOrigins::parse(
            " https://Monitor.Example.com/ , http://localhost:3333,,https://m.example:443,*,null,ftp://x,https://a.example/path,https://u:p@b.example,http://localhost:3333",
        );
        assert_eq!(
            origins.as_slice(),
            [
                "https://monitor.example.com",
                "http://localhost:3333",
                "https://m.example"
            ]
        );
        assert!(origins.allows("http://localhost:3333"));
        assert!(!origins.allows("http://localhost:3334"));
        assert!(!origins.allows("http://localhost"));
        assert!(!origins.allows("null"));
        assert_eq!(problems.len(), 5, "{problems:#?}");
        for (problem, (position, words)) in problems.iter().zip([
            (5, "every web page"),
            (6, "sandboxed"),
            (7, "scheme \"ftp\""),
            (8, "path"),
            (9, "user name"),
        ]) {
            assert!(
                problem.starts_with(&format!("{ALLOWED_ORIGINS_VAR} entry {position} "))
                    && problem.contains(words)
                    && problem.contains("scheme://host[:port]"),
                "{problem}"
            );
        }
        let (none, problems) = AllowedOrigins::parse("  ");
        assert!(none.is_empty() && problems.is_empty());
    }
}
