//! What a deploy would change in an agent's configuration: the live deployment's frozen
//! configuration beside the draft, field by field, as the deploy preview (API, CLI and the
//! console's Confirm dialog) shows it.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{AgentConfig, REDACTED};

/// One field that differs. Paths are dotted (`push.url`, `config.MODEL`); `null` on a side
/// means the field is absent there. Secrets are never shown: a changed access token and
/// the values of `config` keys read `***`, with `secret` set.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigChange {
    /// The dotted path of the field.
    pub field: String,
    /// The live value (`null`: absent).
    pub from: Value,
    /// The value the deploy would make live (`null`: absent).
    pub to: Value,
    /// Whether the values are hidden (`***`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// The fields in which `to` differs from `from` (`None`: nothing deployed yet, so every
/// field of `to` counts as new), sorted by path.
pub fn config_changes(from: Option<&AgentConfig>, to: &AgentConfig) -> Vec<ConfigChange> {
    let mut changes = Vec::new();
    let shown = |c: &AgentConfig| serde_json::to_value(c.redacted()).unwrap_or_default();
    let before = from.map_or(Value::Null, shown);
    walk("", &before, &shown(to), &mut changes);
    // Redaction hides a new token behind the same `***`: compare the tokens themselves.
    if let (Some(a), Some(b)) = (from.and_then(|c| c.push.as_ref()), to.push.as_ref())
        && a.access_token != b.access_token
    {
        changes.push(ConfigChange {
            field: "push.access_token".into(),
            from: REDACTED.into(),
            to: REDACTED.into(),
            secret: true,
        });
    }
    for change in &mut changes {
        change.secret |= change.field == "push.access_token";
        // Configuration values often are API keys: a preview names the key, not the value.
        if change.field.starts_with("config.") {
            change.secret = true;
            for side in [&mut change.from, &mut change.to] {
                if !side.is_null() {
                    *side = REDACTED.into();
                }
            }
        }
    }
    changes.sort_by(|a, b| a.field.cmp(&b.field));
    changes
}

fn walk(path: &str, from: &Value, to: &Value, out: &mut Vec<ConfigChange>) {
    if from == to {
        return;
    }
    let no_fields = Map::new();
    let fields_of = |v: &'_ Value| match v {
        Value::Object(fields) => Some(fields.clone()),
        Value::Null => Some(no_fields.clone()),
        _ => None,
    };
    // Objects (and an object beside nothing) are compared field by field; anything else is
    // one value.
    let objects = from.is_object() || to.is_object();
    match (objects, fields_of(from), fields_of(to)) {
        (true, Some(a), Some(b)) => {
            let keys: Vec<&String> = b
                .keys()
                .chain(a.keys().filter(|k| !b.contains_key(*k)))
                .collect();
            for key in keys {
                let field = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let (x, y) = (a.get(key), b.get(key));
                walk(
                    &field,
                    x.unwrap_or(&Value::Null),
                    y.unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ => out.push(ConfigChange {
            field: path.to_owned(),
            from: from.clone(),
            to: to.clone(),
            secret: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DeliveryMode, PushConfig};

    fn fields(changes: &[ConfigChange]) -> Vec<&str> {
        changes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn the_same_configuration_changes_nothing() {
        let config = AgentConfig::default();
        assert!(config_changes(Some(&config), &config.clone()).is_empty());
    }

    #[test]
    fn a_mode_switch_shows_mode_and_push_target_with_the_token_masked() {
        let live = AgentConfig::default();
        let mut draft = live.clone();
        draft.mode = DeliveryMode::Async;
        draft.push = Some(PushConfig {
            url: "https://app.example/hook".into(),
            access_token: "tok-123".into(),
            secret: None,
        });
        draft.config.insert("MODEL".into(), "small".into());
        let changes = config_changes(Some(&live), &draft);
        assert_eq!(
            fields(&changes),
            ["config.MODEL", "mode", "push.access_token", "push.url"]
        );
        assert_eq!(
            (&changes[1].from, &changes[1].to),
            (&"sync".into(), &"async".into())
        );
        assert_eq!(changes[3].from, Value::Null);
        assert!(changes[2].secret && !changes[3].secret);
        assert_eq!(
            (&changes[0].from, &changes[0].to),
            (&Value::Null, &REDACTED.into())
        );
        let shown = serde_json::to_string(&changes).unwrap();
        assert!(
            !shown.contains("tok-123") && !shown.contains("small"),
            "{shown}"
        );
    }

    #[test]
    fn a_new_token_for_the_same_url_is_a_masked_change() {
        let live = AgentConfig {
            mode: DeliveryMode::Async,
            push: Some(PushConfig {
                url: "https://app.example/hook".into(),
                access_token: "old".into(),
                secret: None,
            }),
            ..AgentConfig::default()
        };
        let mut draft = live.clone();
        draft.push.as_mut().unwrap().access_token = "new".into();
        let changes = config_changes(Some(&live), &draft);
        assert_eq!(fields(&changes), ["push.access_token"]);
        assert_eq!(
            (changes[0].from.clone(), changes[0].to.clone()),
            (REDACTED.into(), REDACTED.into())
        );
        assert!(changes[0].secret);
    }

    #[test]
    fn removed_keys_and_first_deploys_are_listed() {
        let mut live = AgentConfig::default();
        live.config.insert("GONE".into(), "x".into());
        live.memory_mib = 64;
        let draft = AgentConfig::default();
        let changes = config_changes(Some(&live), &draft);
        assert_eq!(fields(&changes), ["config.GONE", "memory_mib"]);
        assert_eq!(changes[0].to, Value::Null);
        let first = config_changes(None, &draft);
        assert!(fields(&first).contains(&"mode"), "{first:?}");
    }
}
