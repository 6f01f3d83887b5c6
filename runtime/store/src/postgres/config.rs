//! The database URL, `postgres://user:pass@host:port/db?sslmode=…&sslrootcert=…&pool_size=…`.
//!
//! tokio-postgres parses URLs, but knows only `disable`, `prefer` and `require` for `sslmode`
//! and nothing of `sslrootcert` or of our pool: those parameters are taken out here first, and
//! the rest is handed to `tokio_postgres::Config`. Messages name the host, port and database,
//! never the password.

use std::path::PathBuf;
use std::str::FromStr as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio_postgres::config::{Host, SslMode};

use super::tls::{MakeRustls, Verify};

/// Connections one host keeps at most: its run writer, the pusher, the sweeper and the API's
/// reads share them, and a short queue for one is better than many idle server processes
/// per host.
const DEFAULT_POOL_SIZE: usize = 16;

/// How long a connection attempt may take, unless the URL says (`connect_timeout`).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long data sent to the database may stay unacknowledged before the connection is
/// given up (Linux's `TCP_USER_TIMEOUT`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the database is and how to reach it.
#[derive(Debug)]
pub(crate) struct Target {
    /// What tokio-postgres connects with.
    pub(crate) config: tokio_postgres::Config,
    /// The TLS connector `sslmode` asks for (unused when it is `disable`).
    pub(crate) tls: MakeRustls,
    /// The pool's size (`pool_size`).
    pub(crate) pool_size: usize,
    /// `host:port/db`, for messages.
    pub(crate) describe: String,
}

impl Target {
    /// Parses `url`.
    ///
    /// # Errors
    /// When it is not a `postgres://` URL, names an unknown `sslmode`, or its root
    /// certificates cannot be read.
    pub(crate) fn parse(url: &str) -> anyhow::Result<Self> {
        let Some((scheme, _)) = url.split_once("://") else {
            bail!("the database URL must start with postgres:// or postgresql://");
        };
        if scheme != "postgres" && scheme != "postgresql" {
            bail!(
                "the database URL must start with postgres:// or postgresql:// (it starts with {scheme}://)"
            );
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut ssl_mode = None;
        let mut root_cert = None;
        let mut pool_size = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match percent_decode(key)?.as_str() {
                "sslmode" => ssl_mode = Some(percent_decode(value)?),
                "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(value)?)),
                "pool_size" => pool_size = Some(percent_decode(value)?),
                // As written: tokio-postgres decodes what it keeps.
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
            anyhow::anyhow!("the database URL is not valid: {}", super::describe(&e))
        })?;
        let describe = describe(&config);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        // A database that vanishes without closing its connections (a cut network, a
        // machine powered off) must not hold a statement for TCP's minutes-long give-up:
        // probe idle connections soon, and give up on unacknowledged data after a while.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(3);
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("gust");
        }
        let mode = ssl_mode.as_deref().unwrap_or("prefer");
        // libpq's meanings. `require` with a root certificate given checks the chain, as
        // libpq does: whoever names a CA expects it to be used.
        let (ssl, verify) = match mode {
            "disable" => (SslMode::Disable, Verify::Nothing),
            "prefer" => (SslMode::Prefer, Verify::Nothing),
            "require" if root_cert.is_some() => (SslMode::Require, Verify::Chain),
            "require" => (SslMode::Require, Verify::Nothing),
            "verify-ca" => (SslMode::Require, Verify::Chain),
            "verify-full" => (SslMode::Require, Verify::Full),
            "allow" => bail!(
                "sslmode=allow is not supported (it tries without TLS first): use prefer, require or verify-full"
            ),
            other => bail!(
                "unknown sslmode `{other}`: use disable, prefer, require, verify-ca or verify-full"
            ),
        };
        config.ssl_mode(ssl);
        let tls = MakeRustls::new(verify, root_cert.as_deref())
            .with_context(|| format!("sslmode={mode} for {describe}"))?;
        let pool_size = match pool_size {
            None => DEFAULT_POOL_SIZE,
            Some(size) => match size.parse() {
                Ok(size @ 1..=1000) => size,
                _ => bail!("pool_size must be a whole number from 1 to 1000 (it is `{size}`)"),
            },
        };
        Ok(Self {
            config,
            tls,
            pool_size,
            describe,
        })
    }
}

/// `host:port/db` (hosts comma-separated), without the user or password.
fn describe(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    format!("{hosts}/{}", config.get_dbname().unwrap_or(""))
}

/// `%XX` decoded, as libpq decodes URL parameters (`+` stays a plus sign).
fn percent_decode(text: &str) -> anyhow::Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .context("the database URL has a `%` that is not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("a parameter of the database URL is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_parameters_are_taken_out_and_the_rest_kept() {
        let target = Target::parse(
            "postgres://u:secret@db.example:6543/gust?sslmode=disable&pool_size=4&application_name=x%20y",
        )
        .unwrap();
        assert_eq!(target.pool_size, 4);
        assert_eq!(target.describe, "db.example:6543/gust");
        assert_eq!(target.config.get_ssl_mode(), SslMode::Disable);
        assert_eq!(target.config.get_application_name(), Some("x y"));
        assert_eq!(target.config.get_password(), Some(&b"secret"[..]));
        assert_eq!(target.config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
    }

    #[test]
    fn sslmode_defaults_to_prefer_and_unknown_modes_are_refused() {
        let target = Target::parse("postgresql://u@h/db").unwrap();
        assert_eq!(target.config.get_ssl_mode(), SslMode::Prefer);
        let err = Target::parse("postgres://u:secret@h/db?sslmode=bogus")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown sslmode `bogus`"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let err = Target::parse("postgres://u@h/db?pool_size=0").unwrap_err();
        assert!(err.to_string().contains("pool_size"), "{err}");
        let err = Target::parse("mysql://u:secret@h/db")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("postgres://") && !err.contains("secret"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_root_certificate_is_named() {
        let err =
            Target::parse("postgres://u:secret@h/db?sslmode=verify-full&sslrootcert=/no/such.pem")
                .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("/no/such.pem") && !err.contains("secret"),
            "{err}"
        );
    }
}
