//! SSRF-safe outbound connections — guests' HTTP requests and push deliveries: which
//! addresses the host may connect to on a user's behalf.
//!
//! By default only public unicast addresses: loopback, private (RFC 1918), shared (RFC 6598),
//! link-local, unique-local, IPv4-mapped and -compatible IPv6, NAT64, unspecified, multicast,
//! broadcast and reserved addresses are refused, and so are host names that resolve to any
//! of them. Names are resolved once, by [`resolve_checked`], and the connection goes to the
//! addresses that were checked, so a second lookup cannot swap in another address (DNS
//! rebinding). `--allow-private-network` lifts all of this for development and tests.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an address is refused, or `None` when it is a public unicast address.
pub(crate) fn refused(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, _, _] = ip.octets();
    Some(match (a, b) {
        _ if ip.is_unspecified() || a == 0 => "unspecified",
        _ if ip.is_loopback() => "loopback",
        (10, _) | (172, 16..=31) | (192, 168) => "private",
        (100, 64..=127) => "shared address space",
        (169, 254) => "link-local",
        (192, 0) if ip.octets()[2] == 0 => "IETF protocol assignment",
        (192, 0) if ip.octets()[2] == 2 => "documentation",
        (198, 51) if ip.octets()[2] == 100 => "documentation",
        (203, 0) if ip.octets()[2] == 113 => "documentation",
        (198, 18..=19) => "benchmarking",
        _ if ip.is_multicast() => "multicast",
        _ if ip.is_broadcast() => "broadcast",
        (240..=255, _) => "reserved",
        _ => return None,
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    Some(match segments {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        [0, 0, 0, 0, 0, 0xffff, _, _] => "IPv4-mapped",
        [0, 0, 0, 0, 0xffff, 0, _, _] => "IPv4-translated",
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible",
        [0x64, 0xff9b, ..] => "NAT64",
        // 6to4 and Teredo carry an IPv4 address, which may be a private one.
        [0x2002, ..] => "6to4",
        [0x2001, 0, ..] => "Teredo",
        [0x2001, 0xdb8, ..] => "documentation",
        [s, ..] if s & 0xffc0 == 0xfe80 => "link-local",
        [s, ..] if s & 0xffc0 == 0xfec0 => "site-local",
        [s, ..] if s & 0xfe00 == 0xfc00 => "unique-local",
        [s, ..] if s & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

/// An outbound request refused by the address policy.
#[derive(Debug, Clone)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// A host name that could not be resolved.
#[derive(Debug)]
pub(crate) struct NotResolved {
    host: String,
    source: std::io::Error,
}

impl fmt::Display for NotResolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not resolve {}", self.host)
    }
}

impl std::error::Error for NotResolved {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Why a connection could not be opened, as far as a guest's error code tells it apart.
#[derive(Debug, Clone)]
pub(crate) enum ConnectFault {
    /// The address policy refused the destination.
    Refused(Refused),
    /// The name did not resolve.
    Dns,
    /// The server's certificate was not accepted.
    TlsCertificate,
    /// The TLS handshake failed otherwise.
    Tls,
    /// Anything else: refused, reset, unreachable.
    Other,
}

/// What made a connect fail, found in the error or its sources. An `io::Error` that wraps
/// another error (TLS connectors wrap rustls's, sometimes twice) is looked into: its own
/// `source` skips the error it wraps.
pub(crate) fn connect_fault(error: &(dyn std::error::Error + 'static)) -> ConnectFault {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return ConnectFault::Refused(refused.clone());
        }
        if e.is::<NotResolved>() {
            return ConnectFault::Dns;
        }
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                    ConnectFault::TlsCertificate
                }
                _ => ConnectFault::Tls,
            };
        }
        current = match e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(wrapped) => Some(wrapped as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    ConnectFault::Other
}

/// Checks a URL before a request: `http` or `https`, and a host that is not a refused
/// address literal (host names are checked when they are resolved, by [`resolve_checked`]).
///
/// # Errors
/// [`Refused`] saying why.
pub fn check_url(url: &reqwest::Url, allow_private: bool) -> Result<(), Refused> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused(format!(
            "`{}` URLs are not allowed; use http or https",
            url.scheme()
        )));
    }
    let literal = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => None,
        None => return Err(Refused("the URL has no host".into())),
    };
    if let Some(ip) = literal
        && !allow_private
        && let Some(why) = refused(ip)
    {
        return Err(Refused(format!(
            "the destination {ip} is not allowed ({why} address)"
        )));
    }
    Ok(())
}

/// The resolver of push deliveries' client (reqwest): [`resolve_checked`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SafeResolver {
    pub(crate) allow_private: bool,
}

impl Resolve for SafeResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs = resolve_checked(name.as_str(), allow_private).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Resolves `host` once and refuses it if any of its addresses is refused (so a name cannot
/// point partly inside): the resolver of both outbound clients (push deliveries through
/// [`SafeResolver`], guests' requests through `host::client`).
///
/// # Errors
/// The lookup's error, or [`Refused`].
pub(crate) async fn resolve_checked(
    host: &str,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|source| NotResolved {
            host: host.to_owned(),
            source,
        })?
        .collect();
    if !allow_private
        && let Some((ip, why)) = addrs
            .iter()
            .find_map(|a| refused(a.ip()).map(|w| (a.ip(), w)))
    {
        return Err(Box::new(Refused(format!(
            "the destination {host} is not allowed: it resolves to {ip} ({why} address)"
        ))));
    }
    Ok(addrs)
}

/// CA certificates trusted beside the webpki roots for guests' HTTPS requests and push
/// deliveries (`--outbound-ca-certs`): a company's own CA, or a model server's on the same
/// network. Empty by default.
#[derive(Debug, Clone, Default)]
pub struct ExtraRoots(std::sync::Arc<[rustls::pki_types::CertificateDer<'static>]>);

impl ExtraRoots {
    /// The certificates of the PEM file at `path`.
    ///
    /// # Errors
    /// When the file cannot be read, or holds no certificate or a malformed one.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        use rustls::pki_types::pem::PemObject as _;
        let reading = |e| anyhow::anyhow!("reading CA certificates from {}: {e}", path.display());
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(reading)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(reading)?;
        if certs.is_empty() {
            anyhow::bail!(
                "{} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
                path.display()
            );
        }
        Ok(Self(certs.into()))
    }

    /// Adds them to `store`.
    ///
    /// # Errors
    /// When one is not a CA certificate rustls can use.
    pub(crate) fn add_to(&self, store: &mut rustls::RootCertStore) -> anyhow::Result<()> {
        for cert in self.0.iter() {
            store
                .add(cert.clone())
                .map_err(|e| anyhow::anyhow!("a CA certificate of --outbound-ca-certs: {e}"))?;
        }
        Ok(())
    }
}

/// The HTTP client of push deliveries: no proxy from the environment (a
/// proxy would resolve names where this host cannot check them), no redirects, every name
/// resolved by [`SafeResolver`], servers' certificates checked against the webpki roots and
/// `roots`.
///
/// # Errors
/// When the client cannot be built; there is no fallback to a client without these rules.
pub fn client(
    allow_private: bool,
    timeout: std::time::Duration,
    roots: &ExtraRoots,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    for cert in roots.0.iter() {
        builder =
            builder
                .add_root_certificate(reqwest::Certificate::from_der(cert).map_err(|e| {
                    anyhow::anyhow!("a CA certificate of --outbound-ca-certs: {e}")
                })?);
    }
    builder
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(std::sync::Arc::new(SafeResolver { allow_private }))
        .timeout(timeout)
        .user_agent(concat!("gust/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| anyhow::anyhow!("building the outbound HTTP client: {e}"))
}

/// An error with its causes, for a call's record.
pub(crate) fn described(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The policy refusal behind a request error, if that is what it was.
pub fn refusal(error: &reqwest::Error) -> Option<Refused> {
    cause(error)
}

/// The cause of an error that is an `E` (a policy refusal, a refused body), found in the
/// error or its sources.
pub(crate) fn cause<E: std::error::Error + Clone + 'static>(
    error: &(dyn std::error::Error + 'static),
) -> Option<E> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found.clone());
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the connectors hand them over: hyper-util's wraps the resolver's error, rustls's
    /// error comes inside an `io::Error`.
    #[test]
    fn connect_faults_are_told_apart_through_their_wrappers() {
        let not_resolved = std::io::Error::other(NotResolved {
            host: "model.example".into(),
            source: std::io::Error::other("failed to lookup address information"),
        });
        assert!(matches!(connect_fault(&not_resolved), ConnectFault::Dns));
        let unknown_ca = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert!(matches!(
            connect_fault(&unknown_ca),
            ConnectFault::TlsCertificate
        ));
        let handshake = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::HandshakeNotComplete,
        );
        assert!(matches!(connect_fault(&handshake), ConnectFault::Tls));
        let refused = Refused("the destination is not allowed".into());
        assert!(matches!(connect_fault(&refused), ConnectFault::Refused(_)));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(connect_fault(&reset), ConnectFault::Other));
    }

    #[test]
    fn every_non_public_range_is_refused() {
        let refused_ips = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("10.0.0.1", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared address space"),
            ("169.254.169.254", "link-local"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "IPv4-mapped"),
            ("::ffff:8.8.8.8", "IPv4-mapped"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("64:ff9b::7f00:1", "NAT64"),
            ("64:ff9b:1::a00:1", "NAT64"),
            ("::ffff:0:a00:1", "IPv4-translated"),
            ("2002:a00:1::1", "6to4"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            ("2001:db8::1", "documentation"),
            ("fec0::1", "site-local"),
            ("192.0.0.8", "IETF protocol assignment"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.1", "documentation"),
            ("203.0.113.9", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fc00::1", "unique-local"),
            ("fdff::1", "unique-local"),
            ("ff02::1", "multicast"),
        ];
        for (ip, why) in refused_ips {
            assert_eq!(refused(ip.parse().unwrap()), Some(why), "{ip}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2001:4860:4860::8888",
            "2606:4700::1111",
        ] {
            assert_eq!(refused(public.parse().unwrap()), None, "{public}");
        }
    }

    #[test]
    fn url_literals_in_every_spelling_are_checked() {
        for url in [
            "http://127.0.0.1:9/x",
            "http://[::1]:9/x",
            "http://[::ffff:127.0.0.1]:9/x",
            "http://2130706433:9/x",
            "http://0x7f000001/x",
            "http://017700000001/x",
            "https://10.1.2.3/",
        ] {
            let parsed = reqwest::Url::parse(url).unwrap();
            let refusal = check_url(&parsed, false).unwrap_err();
            assert!(refusal.0.contains("not allowed"), "{url}: {refusal}");
            assert!(
                check_url(&parsed, true).is_ok(),
                "{url} with private networks allowed"
            );
        }
        assert!(
            check_url(
                &reqwest::Url::parse("https://example.com/hook").unwrap(),
                false
            )
            .is_ok()
        );
        assert!(check_url(&reqwest::Url::parse("ftp://example.com/").unwrap(), true).is_err());
    }

    #[tokio::test]
    async fn names_that_resolve_inside_are_refused() {
        let resolver = SafeResolver {
            allow_private: false,
        };
        let name: Name = "localhost".parse().unwrap();
        let err = match resolver.resolve(name).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("loopback"), "{err}");
        let allowed = SafeResolver {
            allow_private: true,
        };
        assert!(allowed.resolve("localhost".parse().unwrap()).await.is_ok());
    }
}
