//! An agent's configuration: edited as a draft (`PUT /v1/agents/{agent}/config`), frozen
//! into each deployment by the deploy that makes it live. A change of mode or push target
//! therefore takes effect at the next deploy, and a rollback brings back the configuration
//! that went with the version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How the results of a deployment's queued runs reach the user: polled only, or also
/// pushed to their application. (Not to be confused with the kind of a call — a sync call
/// answered inline or a queued run — which the guest sees as `invocation.mode`.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    /// Sync calls answer inline; queued runs are polled.
    #[default]
    Sync,
    /// As sync, and every queued run's result is also pushed to the push URL.
    Async,
}

/// Where the results of queued runs are pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// The receiver: an `http` or `https` URL of the user's application.
    pub url: String,
    /// Sent as `Authorization: Bearer …` with every push. Write-only: answers show
    /// [`REDACTED`].
    pub access_token: String,
    /// The signing secret (`whsec_…`) the receiver verifies pushes with: made by the host
    /// and shown once, in the answer that turned push on (or rotated it). Never stored
    /// here and never accepted in a request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(read_only))]
    pub secret: Option<String>,
}

/// What answers show instead of an access token; sending it back in a `PUT` keeps the
/// token the draft already has.
pub const REDACTED: &str = "***";

/// See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `sync` or `async`; `async` requires `push`.
    #[serde(default)]
    pub mode: DeliveryMode,
    /// Wall-time limit of a sync call, in seconds.
    #[serde(default = "default_sync_timeout_s")]
    pub sync_timeout_s: u64,
    /// Wall-time limit of one attempt of a queued run, in seconds; `None` (JSON `null`) for
    /// none.
    #[serde(default = "default_async_timeout_s")]
    pub async_timeout_s: Option<u64>,
    /// How long a run may wait in the queue before it is `expired`, in seconds.
    #[serde(default = "default_max_queue_wait_s")]
    pub max_queue_wait_s: u64,
    /// Push delivery of queued runs' results; `None` for none.
    #[serde(default)]
    pub push: Option<PushConfig>,
    /// Largest linear memory an instance may grow to, in MiB (within the server's maximum).
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Largest output a call may answer, in MiB (within the server's maximum).
    #[serde(default = "default_output_mib")]
    pub output_mib: u32,
    /// Instances of this agent running at once; `None` for the server's per-agent default
    /// (below the core count). Raise it for agents that mostly wait on models and tools.
    #[serde(default)]
    pub max_instances: Option<u32>,
    /// Where the guest may send HTTP requests: `scheme://host[:port]` patterns, the host
    /// possibly `*.domain`. Empty (the default): nowhere.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Time one outgoing request may take, in seconds.
    #[serde(default = "default_outbound_timeout_s")]
    pub outbound_timeout_s: u64,
    /// Values the guest reads with `config(key)`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// The default wall-time limit for a call, sync or queued.
const DEFAULT_SYNC_TIMEOUT_S: u64 = 180;
const DEFAULT_ASYNC_TIMEOUT_S: u64 = 180;
const DEFAULT_MAX_QUEUE_WAIT_S: u64 = 3600;

fn default_sync_timeout_s() -> u64 {
    DEFAULT_SYNC_TIMEOUT_S
}

fn default_async_timeout_s() -> Option<u64> {
    Some(DEFAULT_ASYNC_TIMEOUT_S)
}

fn default_max_queue_wait_s() -> u64 {
    DEFAULT_MAX_QUEUE_WAIT_S
}

/// The default memory limit of an instance.
pub const DEFAULT_MEMORY_MIB: u32 = 256;
const DEFAULT_OUTPUT_MIB: u32 = 16;

const DEFAULT_OUTBOUND_TIMEOUT_S: u64 = 30;

fn default_outbound_timeout_s() -> u64 {
    DEFAULT_OUTBOUND_TIMEOUT_S
}

fn default_memory_mib() -> u32 {
    DEFAULT_MEMORY_MIB
}

fn default_output_mib() -> u32 {
    DEFAULT_OUTPUT_MIB
}

/// The server-wide maxima a deployment's limits must stay within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Maxima {
    /// Largest `memory_mib`.
    pub memory_mib: u32,
    /// Largest `output_mib`.
    pub output_mib: u32,
    /// Largest `max_instances`.
    pub instances: u32,
}

impl Default for Maxima {
    fn default() -> Self {
        Self {
            memory_mib: 1024,
            output_mib: 64,
            instances: 256,
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            mode: DeliveryMode::Sync,
            sync_timeout_s: DEFAULT_SYNC_TIMEOUT_S,
            async_timeout_s: default_async_timeout_s(),
            max_queue_wait_s: DEFAULT_MAX_QUEUE_WAIT_S,
            push: None,
            memory_mib: DEFAULT_MEMORY_MIB,
            output_mib: DEFAULT_OUTPUT_MIB,
            max_instances: None,
            allowed_hosts: Vec::new(),
            outbound_timeout_s: DEFAULT_OUTBOUND_TIMEOUT_S,
            config: BTreeMap::new(),
        }
    }
}

impl AgentConfig {
    /// The configuration as answers show it: the access token replaced by [`REDACTED`].
    pub fn redacted(&self) -> AgentConfig {
        let mut shown = self.clone();
        if let Some(push) = &mut shown.push {
            push.access_token = REDACTED.to_owned();
        }
        shown
    }

    /// The configuration as a confirmation shows it: [`AgentConfig::redacted`], and the
    /// values of `config` (API keys among them) replaced by [`REDACTED`] too, their names
    /// kept.
    pub fn masked(&self) -> AgentConfig {
        let mut shown = self.redacted();
        for value in shown.config.values_mut() {
            REDACTED.clone_into(value);
        }
        shown
    }

    /// The push target when runs of this configuration are pushed.
    pub fn push_target(&self) -> Option<&PushConfig> {
        match self.mode {
            DeliveryMode::Async => self.push.as_ref(),
            DeliveryMode::Sync => None,
        }
    }
}

/// One entry of `allowed_hosts`: `http` or `https`, a host (or `*.domain` for any name
/// under it), and a port (the scheme's default when left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    scheme: String,
    host: String,
    wildcard: bool,
    port: u16,
}

impl HostPattern {
    /// Parses `scheme://host[:port]`.
    ///
    /// # Errors
    /// A message saying what is wrong with the pattern.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("`allowed_hosts` entry `{pattern}`: {why}");
        let (scheme, rest) = pattern
            .split_once("://")
            .ok_or_else(|| bad("write it as scheme://host[:port]"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "only a scheme, a host and a port; no path or credentials",
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
                match port.parse::<u16>() {
                    Ok(port) => (host, port),
                    Err(_) if rest.starts_with('[') && !host.ends_with(']') => (rest, default_port),
                    Err(_) => return Err(bad("the port is not a number")),
                }
            }
            _ => (rest, default_port),
        };
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, host),
        };
        if host.is_empty() || host.contains('*') {
            return Err(bad(
                "the host is missing, or has a `*` other than a leading `*.`",
            ));
        }
        Ok(Self {
            scheme,
            host: host.to_ascii_lowercase(),
            wildcard,
            port,
        })
    }

    /// Whether a request to `origin` (`scheme://host[:port]`, as outgoing requests are
    /// recorded) matches; read with the same rules as a pattern.
    pub fn matches_origin(&self, origin: &str) -> bool {
        Self::parse(origin).is_ok_and(|o| !o.wildcard && self.matches(&o.scheme, &o.host, o.port))
    }

    /// Whether a request to `scheme://host:port` matches.
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        if !self.scheme.eq_ignore_ascii_case(scheme) || self.port != port {
            return false;
        }
        let host = host.to_ascii_lowercase();
        if self.wildcard {
            host.strip_suffix(&self.host)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
        } else {
            host == self.host
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AgentConfig;

    fn parse(json: &str) -> AgentConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_and_null_timeouts() {
        let c = parse("{}");
        assert_eq!(c, AgentConfig::default());
        assert_eq!(c.async_timeout_s, Some(180));
        assert_eq!(parse(r#"{"async_timeout_s": null}"#).async_timeout_s, None);
        // A stored configuration reads back as it was written, `null` included.
        let none = parse(r#"{"async_timeout_s": null}"#);
        assert_eq!(parse(&serde_json::to_string(&none).unwrap()), none);
    }
}

#[cfg(test)]
mod pattern_tests {
    use super::HostPattern;

    #[test]
    fn patterns_match_scheme_host_and_port() {
        let exact = HostPattern::parse("https://api.openai.com").unwrap();
        assert!(exact.matches("https", "API.openai.com", 443));
        assert!(!exact.matches("http", "api.openai.com", 443));
        assert!(!exact.matches("https", "api.openai.com", 8443));
        assert!(!exact.matches("https", "evil-api.openai.com", 443));
        let wild = HostPattern::parse("https://*.example.com").unwrap();
        assert!(wild.matches("https", "a.example.com", 443));
        assert!(wild.matches("https", "a.b.example.com", 443));
        assert!(!wild.matches("https", "example.com", 443));
        assert!(!wild.matches("https", "badexample.com", 443));
        let local = HostPattern::parse("http://127.0.0.1:8080/").unwrap();
        assert!(local.matches("http", "127.0.0.1", 8080));
        assert!(!local.matches("http", "127.0.0.1", 80));
        let v6 = HostPattern::parse("http://[::1]:9000").unwrap();
        assert!(v6.matches("http", "[::1]", 9000));
        // Recorded origins, as outgoing requests name them.
        assert!(wild.matches_origin("https://a.example.com"));
        assert!(
            !wild.matches_origin("https://*.example.com"),
            "an origin is not a pattern"
        );
        assert!(local.matches_origin("http://127.0.0.1:8080"));
        assert!(!local.matches_origin("http://127.0.0.1"));
        assert!(v6.matches_origin("http://[::1]:9000"));
        for bad in [
            "api.openai.com",
            "ftp://x",
            "https://x/path",
            "https://u@x",
            "https://*",
            "https://a.*.com",
            "http://x:port",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
