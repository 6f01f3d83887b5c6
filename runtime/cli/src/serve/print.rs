//! `gust serve --print-config`: the effective settings as a config file, each line saying
//! where its value came from, with secrets masked.

use std::fmt::Write as _;
use std::path::Path;

use super::layers::{Kind, Setting, Source};

/// What a secret is printed as. A file fed back with it would set the admin token to it, so
/// `serve` refuses this value as a token.
pub(super) const MASK: &str = "***";

/// Column at which the comments saying where a value came from start, unless the value is
/// longer.
const COMMENT_COLUMN: usize = 40;

/// The settings as TOML that `--config` accepts, one `key = value  # source` line each.
pub(super) fn render(settings: &[Setting], config: Option<&Path>) -> String {
    let mut out = String::from(
        "# The effective settings of `gust serve`: a flag beats its GUST_* variable, which\n\
         # beats the config file, which beats the default. Usable as `--config` (put a\n\
         # masked secret back first; better, give it as admin-token-file).\n",
    );
    match config {
        Some(path) => {
            let _ = writeln!(out, "# Config file: {}", path.display());
        }
        None => out.push_str("# No config file.\n"),
    }
    for setting in settings {
        if setting.hidden && setting.source == Source::Default {
            continue;
        }
        let line = match &setting.value {
            None => format!("# {} is not set", setting.key),
            Some(_) if setting.secret => format!("{} = {}", setting.key, quote(MASK)),
            Some(value) => format!("{} = {}", setting.key, literal(setting.kind, value)),
        };
        let source = match &setting.source {
            Source::Flag => "flag".to_owned(),
            Source::Env(name) => format!("env {name}"),
            Source::File => "file".to_owned(),
            Source::Default => "default".to_owned(),
        };
        let _ = writeln!(out, "{line:<COMMENT_COLUMN$}  # {source}");
    }
    out
}

/// A value as TOML: numbers and switches bare, everything else a string.
fn literal(kind: Kind, value: &str) -> String {
    match kind {
        Kind::Switch | Kind::Number => value.to_owned(),
        Kind::List | Kind::Text => quote(value),
    }
}

/// A TOML basic string.
fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            '\r' => quoted.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(quoted, "\\u{:04X}", u32::from(c));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    #[test]
    fn strings_are_quoted_as_toml_reads_them() {
        let value = "a \"b\" \\ c\n\u{7}";
        let text = format!("k = {}", super::quote(value));
        let table: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(table["k"].as_str(), Some(value));
    }
}
