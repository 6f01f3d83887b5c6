//! A TLS server side for stand-ins of the HTTPS APIs guests call (the end-to-end tests'
//! upstream, the scale benchmark's): a fresh self-signed certificate for `127.0.0.1`, HTTP/2
//! offered by ALPN beside HTTP/1.1, as model APIs are served.

use std::sync::Arc;

/// The acceptor, and its certificate as PEM for the host to trust (`--outbound-ca-certs`).
/// rustls' default session cache lets clients resume; each connection hands out 4 session
/// tickets (rustls sends 2), enough for the few connections a client opens next at once,
/// each ticket being good for one resumption.
///
/// # Errors
/// When the certificate or the configuration cannot be made.
pub fn self_signed() -> anyhow::Result<(tokio_rustls::TlsAcceptor, String)> {
    self_signed_offering(&[b"h2", b"http/1.1"])
}

/// As [`self_signed`], offering the protocols `alpn` by ALPN (`[b"http/1.1"]`: a server that
/// does not speak HTTP/2).
///
/// # Errors
/// When the certificate or the configuration cannot be made.
pub fn self_signed_offering(alpn: &[&[u8]]) -> anyhow::Result<(tokio_rustls::TlsAcceptor, String)> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key.into())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.send_tls13_tickets = 4;
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        certified.cert.pem(),
    ))
}
