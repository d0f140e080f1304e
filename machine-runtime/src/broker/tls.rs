//! The broker's TLS settings and TLS failures: a private CA, a client certificate and key (mTLS) and
//! the insecure switch, read from `HUB_REDIS_TLS_*` and checked before anything starts; and the
//! words for a failed handshake (unknown CA, expired, wrong host name, client certificate refused).
//!
//! Variables (the same names in every profile's `.env.secrets.example`, Compose file and Kubernetes
//! manifest, from [`machine_model::catalog::BROKER_TLS_VARS`]):
//! - `HUB_REDIS_TLS_CA_FILE`: PEM file of the CA (or CAs) that signed the broker's certificate. Set,
//!   it replaces the built-in public roots (Mozilla's, through `webpki-roots`); unset, a `rediss://`
//!   broker must have a publicly trusted certificate.
//! - `HUB_REDIS_TLS_CERT_FILE` and `HUB_REDIS_TLS_KEY_FILE`: the client certificate (PEM, chain
//!   allowed) and its private key (PEM: PKCS#8, PKCS#1 or SEC1), for a broker that asks for one
//!   (`tls-auth-clients yes`). Both or neither.
//! - `HUB_REDIS_TLS_INSECURE`: `true` turns certificate and host name checks off (the traffic stays
//!   encrypted but anyone on the path can read it). Logged loudly at every start. The URL fragment
//!   `#insecure` (`rediss://host:6380/#insecure`, the redis crate's spelling) means the same.
//!
//! The files are read and parsed once, at start: a missing file, a file that is not PEM, a
//! certificate without its key or a key that does not belong to the certificate is a start-up error
//! naming the variable and the file; none of them ever reaches a log in any other form.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS variables' names (defined with the runtime's other variables).
pub use crate::env::{CA_FILE_VAR, CERT_FILE_VAR, INSECURE_VAR, KEY_FILE_VAR};

/// The checked TLS settings of a `rediss://` broker.
#[derive(Clone, Default)]
pub struct TlsSettings {
    /// The CA file, when given.
    pub ca_file: Option<PathBuf>,
    /// The client certificate file, when given (its key file is then given too).
    pub cert_file: Option<PathBuf>,
    /// Certificate checks off (`HUB_REDIS_TLS_INSECURE=true` or `#insecure`).
    pub insecure: bool,
    /// The PEM bytes for the redis client; `None` when neither a CA nor a client certificate is set.
    pub(crate) certificates: Option<redis::TlsCertificates>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

/// One problem with the TLS variables; each names the variable, the file and what is accepted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TlsConfigError {
    /// A file cannot be read.
    #[error("{var}={path}: cannot read the file: {reason}")]
    Unreadable {
        /// The variable.
        var: &'static str,
        /// The path as given.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// A file holds no usable PEM block of the expected kind.
    #[error("{var}={path} is not {expected}: {reason}")]
    NotPem {
        /// The variable.
        var: &'static str,
        /// The path as given.
        path: String,
        /// What was expected, e.g. `a PEM certificate (-----BEGIN CERTIFICATE-----)`.
        expected: &'static str,
        /// What was found.
        reason: String,
    },
    /// One of the certificate and the key is set, the other not.
    #[error(
        "{given} is set but {missing} is not; a client certificate needs its private key: set both (mutual TLS) or neither"
    )]
    HalfPair {
        /// The variable that is set.
        given: &'static str,
        /// The one that is missing.
        missing: &'static str,
    },
    /// The key does not belong to the certificate (or rustls refuses the pair).
    #[error(
        "{KEY_FILE_VAR}={key} does not fit the certificate in {CERT_FILE_VAR}={cert}: {reason}; give the key the certificate was issued for"
    )]
    KeyMismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// rustls's reason.
        reason: String,
    },
    /// TLS settings given for a `redis://` URL, where they would be ignored.
    #[error(
        "{vars} set but HUB_REDIS_URL is redis:// (no TLS); use rediss:// for a TLS broker, or unset them"
    )]
    WithoutTls {
        /// The variables set, comma-separated.
        vars: String,
    },
    /// The insecure switch is not a boolean.
    #[error("{INSECURE_VAR}=\"{value}\" is not a boolean; expected true or false")]
    BadInsecure {
        /// The value given.
        value: String,
    },
    /// Insecure and a CA file together: one of them is a mistake.
    #[error(
        "{INSECURE_VAR}=true (or #insecure in HUB_REDIS_URL) and {CA_FILE_VAR} are both set; the CA would never be checked: keep the CA and drop the insecure switch"
    )]
    InsecureWithCa,
}

impl TlsSettings {
    /// Reads the `HUB_REDIS_TLS_*` variables for a URL that is (`url_tls`) or is not `rediss://` and
    /// may carry `#insecure` (`url_insecure`); reports every problem at once.
    pub fn from_lookup(
        lookup: &impl Fn(&str) -> Option<String>,
        url_tls: bool,
        url_insecure: bool,
    ) -> Result<Self, Vec<TlsConfigError>> {
        let get = |var: &str| {
            lookup(var)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut errors = Vec::new();
        let insecure_var = match get(INSECURE_VAR).map(|v| crate::env::parse_bool(&v)) {
            None | Some(Ok(None | Some(false))) => false,
            Some(Ok(Some(true))) => true,
            Some(Err(())) => {
                errors.push(TlsConfigError::BadInsecure {
                    value: get(INSECURE_VAR).unwrap_or_default(),
                });
                false
            }
        };
        let insecure = insecure_var || url_insecure;
        let (ca, cert, key) = (get(CA_FILE_VAR), get(CERT_FILE_VAR), get(KEY_FILE_VAR));
        if !url_tls {
            let set: Vec<&str> = [
                (CA_FILE_VAR, ca.is_some()),
                (CERT_FILE_VAR, cert.is_some()),
                (KEY_FILE_VAR, key.is_some()),
                (INSECURE_VAR, insecure_var),
            ]
            .into_iter()
            .filter_map(|(var, set)| set.then_some(var))
            .collect();
            if !set.is_empty() {
                errors.push(TlsConfigError::WithoutTls {
                    vars: set.join(", "),
                });
            }
            return if errors.is_empty() {
                Ok(Self::default())
            } else {
                Err(errors)
            };
        }
        if insecure && ca.is_some() {
            errors.push(TlsConfigError::InsecureWithCa);
        }
        let roots = ca.as_deref().and_then(|path| match read_ca(path) {
            Ok(roots) => Some(roots),
            Err(err) => {
                errors.push(err);
                None
            }
        });
        let client = match (&cert, &key) {
            (Some(cert), Some(key)) => match read_pair(cert, key) {
                Ok(pair) => Some(pair),
                Err(errs) => {
                    errors.extend(errs);
                    None
                }
            },
            (Some(_), None) => {
                errors.push(TlsConfigError::HalfPair {
                    given: CERT_FILE_VAR,
                    missing: KEY_FILE_VAR,
                });
                None
            }
            (None, Some(_)) => {
                errors.push(TlsConfigError::HalfPair {
                    given: KEY_FILE_VAR,
                    missing: CERT_FILE_VAR,
                });
                None
            }
            (None, None) => None,
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let certificates = (roots.is_some() || client.is_some()).then(|| redis::TlsCertificates {
            client_tls: client.map(|(client_cert, client_key)| redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
            root_cert: roots,
        });
        Ok(Self {
            ca_file: ca.map(PathBuf::from),
            cert_file: cert.map(PathBuf::from),
            insecure,
            certificates,
        })
    }

    /// The loud warning of the insecure switch, `None` when checks are on.
    pub fn insecure_warning(&self) -> Option<String> {
        self.insecure.then(|| {
            format!(
                "TLS CERTIFICATE CHECKS ARE OFF for the job broker ({INSECURE_VAR}=true or #insecure in HUB_REDIS_URL): the connection is encrypted but not authenticated, so anyone on the path can read the password and the jobs; give the broker's CA in {CA_FILE_VAR} instead"
            )
        })
    }
}

fn read(var: &'static str, path: &str) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(Path::new(path)).map_err(|err| TlsConfigError::Unreadable {
        var,
        path: path.to_owned(),
        reason: err.to_string(),
    })
}

const PEM_CERT: &str = "a PEM certificate (-----BEGIN CERTIFICATE-----)";

/// The certificates of a PEM file, at least one; `var` names it in errors.
fn certificates(
    var: &'static str,
    path: &str,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let not_pem = |reason: String| TlsConfigError::NotPem {
        var,
        path: path.to_owned(),
        expected: PEM_CERT,
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| not_pem(err.to_string()))?;
    if certs.is_empty() {
        return Err(not_pem(
            "no CERTIFICATE block found (a DER file? convert it: openssl x509 -inform der -in FILE -out FILE.pem)"
                .to_owned(),
        ));
    }
    Ok(certs)
}

/// Checks the CA file: PEM, and every certificate a usable trust anchor. Returns its bytes.
fn read_ca(path: &str) -> Result<Vec<u8>, TlsConfigError> {
    let bytes = read(CA_FILE_VAR, path)?;
    let mut store = rustls::RootCertStore::empty();
    for cert in certificates(CA_FILE_VAR, path, &bytes)? {
        store.add(cert).map_err(|err| TlsConfigError::NotPem {
            var: CA_FILE_VAR,
            path: path.to_owned(),
            expected: "a CA certificate",
            reason: err.to_string(),
        })?;
    }
    Ok(bytes)
}

/// Checks the client certificate and key: both PEM, and the key the certificate's. Returns their bytes.
fn read_pair(cert: &str, key: &str) -> Result<(Vec<u8>, Vec<u8>), Vec<TlsConfigError>> {
    let mut errors = Vec::new();
    let chain = read(CERT_FILE_VAR, cert)
        .and_then(|bytes| Ok((certificates(CERT_FILE_VAR, cert, &bytes)?, bytes)))
        .map_err(|err| errors.push(err))
        .ok();
    let private = read(KEY_FILE_VAR, key)
        .and_then(|bytes| {
            let der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| TlsConfigError::NotPem {
                var: KEY_FILE_VAR,
                path: key.to_owned(),
                expected: "a PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)",
                reason: err.to_string(),
            })?;
            Ok((der, bytes))
        })
        .map_err(|err| errors.push(err))
        .ok();
    let (Some((chain, cert_bytes)), Some((der, key_bytes))) = (chain, private) else {
        return Err(errors);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let fits = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_client_auth_cert(chain, der)
        });
    match fits {
        Ok(Ok(_)) => Ok((cert_bytes, key_bytes)),
        Ok(Err(err)) | Err(err) => Err(vec![TlsConfigError::KeyMismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
            reason: err.to_string(),
        }]),
    }
}

/// Why a TLS handshake failed, in the operator's words, with the fix; `None` when `text` (a redis
/// error's message, password already removed) is not a TLS failure.
///
/// rustls's messages are matched (`invalid peer certificate: UnknownIssuer`, `... certificate expired
/// ...`, `... not valid for name ...`, `received fatal alert: CertificateRequired`): the error reaches
/// us through an `io::Error` whose source chain hides the typed `rustls::Error`.
pub fn explain_handshake_failure(text: &str) -> Option<String> {
    let t = text.to_ascii_lowercase();
    // rustls's certificate and alert errors say so; anything else (a reset, a timeout) is not TLS's.
    if !(t.contains("certificate") || t.contains("alert") || t.contains("corrupt message")) {
        return None;
    }
    let reason = if t.contains("unknownissuer") || t.contains("unknown issuer") {
        format!(
            "the broker's certificate is signed by a CA this machine does not trust (unknown CA); set {CA_FILE_VAR} to that CA's PEM file"
        )
    } else if t.contains("causedasendentity") {
        format!(
            "the broker presents a CA certificate (self-signed?) as its own, which TLS refuses; give the broker a server certificate signed by that CA, and the CA to this machine in {CA_FILE_VAR}"
        )
    } else if t.contains("expired") {
        "the broker's certificate has expired; renew it on the broker (check the clocks too)"
            .to_owned()
    } else if t.contains("notvalidyet") || t.contains("not valid yet") {
        "the broker's certificate is not valid yet; check this machine's clock".to_owned()
    } else if t.contains("notvalidforname") || t.contains("not valid for name") {
        "the broker's certificate does not name the host in HUB_REDIS_URL (wrong host name); use a host name the certificate lists, or reissue it with that name".to_owned()
    } else if t.contains("certificaterequired") || t.contains("certificate required") {
        format!(
            "the broker asks for a client certificate (mutual TLS) and got none; set {CERT_FILE_VAR} and {KEY_FILE_VAR}"
        )
    } else if t.contains("alert") && (t.contains("unknownca") || t.contains("badcertificate")) {
        format!(
            "the broker refused this machine's client certificate (its CA does not trust it); give a certificate the broker's tls-ca-cert-file signs in {CERT_FILE_VAR}"
        )
    } else if t.contains("invalid peer certificate")
        || t.contains("received fatal alert")
        || t.contains("corrupt message")
        || t.contains("invalidcontenttype")
    {
        "the TLS handshake failed; check that the port speaks TLS and the certificates".to_owned()
    } else {
        return None;
    };
    Some(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_failures_are_named() {
        for (text, word) in [
            ("invalid peer certificate: UnknownIssuer", "unknown CA"),
            (
                "invalid peer certificate: certificate expired: verification time 1, but certificate is not valid after 0",
                "expired",
            ),
            (
                "invalid peer certificate: certificate not valid for name \"localhost\"",
                "wrong host name",
            ),
            (
                "received fatal alert: CertificateRequired",
                "client certificate",
            ),
        ] {
            let why = explain_handshake_failure(text).unwrap();
            assert!(why.contains(word), "{text} → {why}");
        }
        assert_eq!(
            explain_handshake_failure("Connection refused (os error 111)"),
            None
        );
    }

    #[test]
    fn tls_variables_on_a_plain_url_are_refused() {
        let lookup = |name: &str| (name == CA_FILE_VAR).then(|| "/x.pem".to_owned());
        let errors = TlsSettings::from_lookup(&lookup, false, false).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("rediss://"), "{}", errors[0]);
        let none = |_: &str| None;
        assert!(TlsSettings::from_lookup(&none, false, false).is_ok());
    }
}
