//! TLS with libpq's `sslmode` semantics, on rustls (the stack the S3 client uses too).
//!
//! What each mode promises, as libpq documents it:
//! - `disable`: never TLS. `allow`: plain first, TLS if the server turns plain away.
//! - `prefer` (the default): TLS if the server offers it, unverified.
//! - `require`: TLS or nothing, unverified, unless a root certificate file
//!   exists, when it verifies the chain as `verify-ca` does.
//! - `verify-ca`: the chain must lead to `sslrootcert`. `verify-full`: and the
//!   certificate must name the host we dialled.
//!
//! Over a Unix socket there is no TLS, as in libpq: the kernel is the channel.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use zeroize::Zeroizing;

use super::conninfo::ConnInfoError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// One way of opening the connection; a mode tries one or two in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Plain,
    /// TLS; `or_plain` continues without it when the server offers none.
    Tls {
        or_plain: bool,
    },
}

impl SslMode {
    pub fn parse(text: &str) -> Result<SslMode, ConnInfoError> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return Err(ConnInfoError(
                "sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full"
                    .into(),
            )),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The attempts in order; the second is made only if pg_hba.conf turned the first away.
    pub fn attempts(self, unix_socket: bool) -> &'static [Attempt] {
        const PLAIN: Attempt = Attempt::Plain;
        const TLS: Attempt = Attempt::Tls { or_plain: false };
        const TLS_OR_PLAIN: Attempt = Attempt::Tls { or_plain: true };
        if unix_socket {
            return &[PLAIN];
        }
        match self {
            SslMode::Disable => &[PLAIN],
            SslMode::Allow => &[PLAIN, TLS],
            SslMode::Prefer => &[TLS_OR_PLAIN, PLAIN],
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => &[TLS],
        }
    }
}

/// Where trusted root certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// `sslrootcert=FILE`.
    Given(PathBuf),
    /// `~/.postgresql/root.crt`, used if it exists.
    Default(Option<PathBuf>),
    /// `sslrootcert=system`: the operating system's trusted roots.
    System,
}

/// A file named in the string or environment (`given`), or libpq's default one, used if it exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSetting {
    pub path: PathBuf,
    pub given: bool,
}

#[derive(Clone)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: RootCert,
    pub cert: Option<FileSetting>,
    pub key: Option<PathBuf>,
    pub key_password: Option<Zeroizing<String>>,
}

/// Why TLS could not be set up from the files named; always bad input.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsFileError(pub String);

impl TlsSettings {
    /// The rustls configuration for this mode, reading the files it names.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsFileError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsFileError(format!("TLS setup failed: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = match (self.mode, self.roots()?) {
            (SslMode::VerifyFull, Some(roots)) => web_pki(roots, &provider)?,
            (SslMode::VerifyCa | SslMode::Require, Some(roots)) => {
                Arc::new(ChainOnly(web_pki(roots, &provider)?))
            }
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(TlsFileError(format!(
                    "sslmode={} needs a root certificate, and {} does not exist; set sslrootcert to the CA file that signed the server's certificate, or sslrootcert=system",
                    self.mode.as_str(),
                    self.default_root_display()
                )))
            }
            _ => Arc::new(AnyCertificate(provider)),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match self.client_identity()? {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsFileError(format!("the client certificate and key do not go together ({e}); check sslcert and sslkey")))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    /// The trusted roots, if this mode verifies and a root file is there.
    fn roots(&self) -> Result<Option<RootCertStore>, TlsFileError> {
        if !matches!(
            self.mode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        ) {
            return Ok(None);
        }
        let mut store = RootCertStore::empty();
        match &self.root_cert {
            RootCert::System => {
                let found = rustls_native_certs::load_native_certs();
                store.add_parsable_certificates(found.certs);
                if store.is_empty() {
                    return Err(TlsFileError(
                        "sslrootcert=system, but this system has no trusted root certificates; install ca-certificates or name a CA file in sslrootcert".into(),
                    ));
                }
            }
            RootCert::Given(path) | RootCert::Default(Some(path)) => {
                // A named file must be there; libpq's default one is used only if it is.
                if matches!(self.root_cert, RootCert::Default(_)) && !path.exists() {
                    return Ok(None);
                }
                for cert in read_certificates(path, "sslrootcert")? {
                    store.add(cert).map_err(|e| {
                        TlsFileError(format!("{} holds a certificate rustls cannot use as a root ({e}); check sslrootcert", path.display()))
                    })?;
                }
            }
            RootCert::Default(None) => return Ok(None),
        }
        Ok(Some(store))
    }

    fn default_root_display(&self) -> String {
        match &self.root_cert {
            RootCert::Default(Some(path)) | RootCert::Given(path) => path.display().to_string(),
            _ => "~/.postgresql/root.crt".into(),
        }
    }

    /// The client certificate chain and key, if one is named or in libpq's default place.
    #[allow(clippy::type_complexity)]
    fn client_identity(
        &self,
    ) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, TlsFileError> {
        let cert = match &self.cert {
            Some(cert) if cert.given || cert.path.exists() => &cert.path,
            _ => return Ok(None),
        };
        let key_path = self.key.as_ref().ok_or_else(|| {
            TlsFileError(
                "sslcert is set but sslkey is not; set sslkey to the client key file".into(),
            )
        })?;
        // The key's mode first, as libpq does: a shared key is refused before anything is read.
        crate::base::files::refuse_if_shared(key_path)
            .map_err(|e| TlsFileError(format!("sslkey: {e}")))?;
        let chain = read_certificates(cert, "sslcert")?;
        let key = read_private_key(key_path, self.key_password.as_deref().map(String::as_str))?;
        Ok(Some((chain, key)))
    }
}

fn read_certificates(
    path: &Path,
    setting: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let text = std::fs::read(path).map_err(|e| {
        TlsFileError(format!(
            "cannot read {setting} file {}: {e}; check the path",
            path.display()
        ))
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            TlsFileError(format!(
                "{setting} file {} is not PEM certificates ({e}); give a PEM file",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsFileError(format!(
            "{setting} file {} holds no certificate; give a PEM file with one",
            path.display()
        )));
    }
    Ok(certs)
}

/// A PEM key, decrypted with `sslpassword` when it is an encrypted PKCS#8 key.
fn read_private_key(
    path: &Path,
    password: Option<&str>,
) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let text = Zeroizing::new(std::fs::read(path).map_err(|e| {
        TlsFileError(format!(
            "cannot read sslkey file {}: {e}; check the path",
            path.display()
        ))
    })?);
    let as_text = String::from_utf8_lossy(&text);
    if as_text.contains("BEGIN ENCRYPTED PRIVATE KEY") {
        use pkcs8::der::Decode;
        let password = password.ok_or_else(|| {
            TlsFileError(format!(
                "sslkey file {} is encrypted; give its passphrase as sslpassword",
                path.display()
            ))
        })?;
        let (_, der) = pkcs8::der::pem::decode_vec(&text).map_err(|e| {
            TlsFileError(format!(
                "sslkey file {} is not valid PEM ({e})",
                path.display()
            ))
        })?;
        let info = pkcs8::EncryptedPrivateKeyInfo::from_der(&der).map_err(|e| {
            TlsFileError(format!(
                "sslkey file {} is not an encrypted PKCS#8 key ({e})",
                path.display()
            ))
        })?;
        let plain = info.decrypt(password).map_err(|_| {
            TlsFileError(format!(
                "sslpassword does not decrypt sslkey file {}; check the passphrase",
                path.display()
            ))
        })?;
        return Ok(PrivateKeyDer::Pkcs8(plain.as_bytes().to_vec().into()));
    }
    if as_text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(TlsFileError(format!(
            "sslkey file {} uses OpenSSL's legacy encryption; convert it with openssl pkcs8 -topk8 -in KEY -out KEY.p8",
            path.display()
        )));
    }
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
        TlsFileError(format!(
            "sslkey file {} holds no usable private key ({e}); give a PEM key",
            path.display()
        ))
    })
}

fn web_pki(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsFileError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsFileError(format!("cannot use the root certificates: {e}")))
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name, so a name error means the chain passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root file: encrypted, not authenticated (libpq's meaning).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One line for a failed handshake: what was wrong with the server's certificate, and the fix.
pub fn describe_handshake_failure(error: &std::io::Error, host: &str, mode: SslMode) -> String {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!(
            "the server's TLS certificate is not valid for host {host}; connect by a name the certificate holds, or use sslmode=verify-ca"
        ),
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => format!(
            "the server's TLS certificate is not signed by a CA in sslrootcert (sslmode={}); set sslrootcert to the CA that signed it",
            mode.as_str()
        ),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "the server's TLS certificate has expired; renew it on the server".into(),
        Some(other) => format!(
            "the TLS handshake with {host} failed ({other}); check the server's certificate and sslmode"
        ),
        None => format!("the TLS handshake with {host} failed ({error})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_try_what_libpq_tries() {
        assert_eq!(
            SslMode::Prefer.attempts(false)[0],
            Attempt::Tls { or_plain: true }
        );
        assert_eq!(SslMode::Allow.attempts(false)[0], Attempt::Plain);
        assert_eq!(
            SslMode::VerifyFull.attempts(false),
            &[Attempt::Tls { or_plain: false }]
        );
        assert_eq!(SslMode::VerifyFull.attempts(true), &[Attempt::Plain]);
        for text in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            assert_eq!(SslMode::parse(text).unwrap().as_str(), text);
        }
        assert!(SslMode::parse("on").is_err());
    }

    #[test]
    fn verifying_modes_without_a_root_file_refuse_with_the_fix() {
        let settings = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: RootCert::Default(Some(PathBuf::from("/nonexistent/root.crt"))),
            cert: None,
            key: None,
            key_password: None,
        };
        let message = settings.client_config().err().unwrap().0;
        assert!(message.contains("/nonexistent/root.crt"), "{message}");
        assert!(message.contains("sslrootcert"), "{message}");
        let require = TlsSettings {
            mode: SslMode::Require,
            ..settings
        };
        assert!(require.client_config().is_ok());
    }
}
