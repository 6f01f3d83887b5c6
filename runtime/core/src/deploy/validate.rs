//! The bounds a user may set in an agent's configuration, within the server's maxima:
//! checked when a draft is saved, so every deployment freezes a configuration that holds.

use gust_model::{AgentConfig, DeliveryMode, HostPattern, Maxima, PushConfig};

/// Upper bounds a deployment may ask for.
const MAX_SYNC_TIMEOUT_S: u64 = 3600;
const MAX_ASYNC_TIMEOUT_S: u64 = 24 * 3600;
const MAX_QUEUE_WAIT_S: u64 = 7 * 24 * 3600;
/// Bounds on the `config` map, so a draft stays a configuration and not a data store.
const MAX_CONFIG_ENTRIES: usize = 256;
const MAX_CONFIG_KEY_BYTES: usize = 256;
const MAX_CONFIG_VALUE_BYTES: usize = 64 * 1024;
const MAX_PUSH_FIELD_BYTES: usize = 4096;

const MAX_OUTBOUND_TIMEOUT_S: u64 = 600;
const MAX_ALLOWED_HOSTS: usize = 64;

/// Checks the bounds a user may set, within the server's maxima.
///
/// # Errors
/// A message saying which field is out of bounds.
pub fn validate(config: &AgentConfig, maxima: &Maxima) -> Result<(), String> {
    let within = |name: &str, value: u32, max: u32| {
        if (1..=max).contains(&value) {
            Ok(())
        } else {
            Err(format!(
                "`{name}` must be between 1 and {max} on this host, not {value}"
            ))
        }
    };
    within("memory_mib", config.memory_mib, maxima.memory_mib)?;
    within("output_mib", config.output_mib, maxima.output_mib)?;
    if let Some(n) = config.max_instances {
        within("max_instances", n, maxima.instances)?;
    }
    if config.allowed_hosts.len() > MAX_ALLOWED_HOSTS {
        return Err(format!(
            "`allowed_hosts` has more than {MAX_ALLOWED_HOSTS} entries"
        ));
    }
    for pattern in &config.allowed_hosts {
        HostPattern::parse(pattern)?;
    }
    if !(1..=MAX_OUTBOUND_TIMEOUT_S).contains(&config.outbound_timeout_s) {
        return Err(format!(
            "`outbound_timeout_s` must be between 1 and {MAX_OUTBOUND_TIMEOUT_S}, not {}",
            config.outbound_timeout_s
        ));
    }
    if !(1..=MAX_SYNC_TIMEOUT_S).contains(&config.sync_timeout_s) {
        return Err(format!(
            "`sync_timeout_s` must be between 1 and {MAX_SYNC_TIMEOUT_S}, not {}",
            config.sync_timeout_s
        ));
    }
    if let Some(s) = config.async_timeout_s
        && !(1..=MAX_ASYNC_TIMEOUT_S).contains(&s)
    {
        return Err(format!(
            "`async_timeout_s` must be between 1 and {MAX_ASYNC_TIMEOUT_S}, or null for none, not {s}"
        ));
    }
    if !(1..=MAX_QUEUE_WAIT_S).contains(&config.max_queue_wait_s) {
        return Err(format!(
            "`max_queue_wait_s` must be between 1 and {MAX_QUEUE_WAIT_S}, not {}",
            config.max_queue_wait_s
        ));
    }
    match &config.push {
        None if config.mode == DeliveryMode::Async => {
            return Err("`\"mode\": \"async\"` needs `push`: {\"url\", \"access_token\"}".into());
        }
        None => {}
        Some(push) => validate_push(push)?,
    }
    if config.config.len() > MAX_CONFIG_ENTRIES {
        return Err(format!(
            "`config` has {} entries; at most {MAX_CONFIG_ENTRIES} are allowed",
            config.config.len()
        ));
    }
    for (key, value) in &config.config {
        if key.is_empty() || key.len() > MAX_CONFIG_KEY_BYTES {
            return Err(format!(
                "`config` keys must be 1 to {MAX_CONFIG_KEY_BYTES} bytes long"
            ));
        }
        if value.len() > MAX_CONFIG_VALUE_BYTES {
            return Err(format!(
                "`config.{key}` is longer than {MAX_CONFIG_VALUE_BYTES} bytes"
            ));
        }
    }
    Ok(())
}

fn validate_push(push: &PushConfig) -> Result<(), String> {
    let url =
        reqwest::Url::parse(&push.url).map_err(|e| format!("`push.url` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("`push.url` must be an http or https URL with a host".into());
    }
    if push.url.len() > MAX_PUSH_FIELD_BYTES {
        return Err(format!(
            "`push.url` is longer than {MAX_PUSH_FIELD_BYTES} bytes"
        ));
    }
    if push.access_token.is_empty() || push.access_token.len() > MAX_PUSH_FIELD_BYTES {
        return Err(format!(
            "`push.access_token` must be 1 to {MAX_PUSH_FIELD_BYTES} bytes long"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use gust_model::REDACTED;

    use super::*;

    fn parse(json: &str) -> AgentConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn limits_stay_within_the_server_maxima() {
        let maxima = Maxima {
            memory_mib: 512,
            output_mib: 32,
            instances: 8,
        };
        let within = parse(r#"{"memory_mib": 512, "output_mib": 32, "max_instances": 8}"#);
        assert!(validate(&within, &maxima).is_ok());
        for (json, field) in [
            (r#"{"memory_mib": 513}"#, "memory_mib"),
            (r#"{"memory_mib": 0}"#, "memory_mib"),
            (r#"{"output_mib": 33}"#, "output_mib"),
            (r#"{"max_instances": 9}"#, "max_instances"),
        ] {
            let err = validate(&parse(json), &maxima).unwrap_err();
            assert!(err.contains(field), "{json}: {err}");
        }
    }

    #[test]
    fn async_mode_needs_a_valid_push_target() {
        let no_push = parse(r#"{"mode": "async"}"#);
        assert!(
            validate(&no_push, &Maxima::default())
                .unwrap_err()
                .contains("push")
        );
        let ok = parse(
            r#"{"mode": "async", "push": {"url": "https://app.example/hook", "access_token": "t"}}"#,
        );
        validate(&ok, &Maxima::default()).unwrap();
        assert_eq!(ok.push_target().unwrap().url, "https://app.example/hook");
        assert_eq!(ok.redacted().push.unwrap().access_token, REDACTED);
        let ftp = parse(r#"{"push": {"url": "ftp://x/y", "access_token": "t"}}"#);
        assert!(validate(&ftp, &Maxima::default()).is_err());
        let sync_with_push = parse(r#"{"push": {"url": "http://x/y", "access_token": "t"}}"#);
        assert!(
            sync_with_push.push_target().is_none(),
            "push only applies in async mode"
        );
    }
}
