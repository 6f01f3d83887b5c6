//! Where each `gust serve` setting comes from: a flag, else its `GUST_*` variable, else the
//! `--config` file, else the built-in default.
//!
//! clap already puts flags over variables over defaults. The file goes in between by a
//! second parse in which the file's values are given as flags — only for the settings that
//! no flag and no variable set — so the order holds by construction, and a value from the
//! file passes the same parser and the same `requires`/`conflicts_with` rules as one typed
//! on the command line.

use std::any::TypeId;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args as _, Command, FromArgMatches as _};

use super::flags::{Flags, Schedule};

/// Settings of which only one may be given: when a flag or a variable sets one of them, the
/// file's value for any of them is set aside, so that `GUST_ADMIN_TOKEN` replaces the file's
/// `admin-token-file` instead of conflicting with it.
const ONE_OF: &[&[&str]] = &[&["admin_token", "admin_token_file"]];

/// Flags that steer `gust serve` itself rather than the host: not settings, so not file keys.
const NOT_SETTINGS: &[&str] = &["config", "print_config"];

/// Where an effective setting came from, strongest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    Flag,
    /// The variable's name.
    Env(String),
    File,
    Default,
}

/// What a setting holds: decides the TOML type the file must give and how it is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// On or off: `true` or `false`.
    Switch,
    /// A whole number.
    Number,
    /// Numbers of seconds: an array, or the flag's comma-separated string.
    List,
    /// A string: addresses, paths, names.
    Text,
}

/// One effective setting, as `--print-config` shows it.
#[derive(Debug, Clone)]
pub(super) struct Setting {
    /// The flag's long name, which is also the file's key.
    pub(super) key: String,
    pub(super) kind: Kind,
    /// As given (or the default's text); `None` when not set and without a default.
    pub(super) value: Option<String>,
    pub(super) source: Source,
    /// A value never printed (the admin token).
    pub(super) secret: bool,
    /// Left out of `--print-config` unless set (`--engine-tuning`).
    pub(super) hidden: bool,
}

/// The flags after all the layers, and a description of each setting.
pub(super) struct Resolved {
    pub(super) flags: Flags,
    pub(super) settings: Vec<Setting>,
}

/// Layers the `--config` file (if any) under the flags and variables of `first`, the
/// matches of the command line as clap parsed it.
///
/// # Errors
/// When the file cannot be read, is not TOML, names an unknown setting or gives one a value
/// of the wrong type or that its parser refuses; the message names the file and the key.
pub(super) fn resolve(first: &ArgMatches) -> Result<Resolved, clap::Error> {
    let cmd = command();
    let Some(path) = first.get_one::<PathBuf>("config").cloned() else {
        return Ok(Resolved {
            flags: Flags::from_arg_matches(first)?,
            settings: describe(&cmd, first, first, &BTreeSet::new()),
        });
    };
    let mut from_file = read(&path, &cmd)?;
    for group in ONE_OF {
        if group.iter().any(|id| given(first, id)) {
            from_file.retain(|id, _| !group.contains(&id.as_str()));
        }
    }

    let mut argv: Vec<OsString> = vec!["serve".into()];
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        match first.value_source(id) {
            Some(ValueSource::CommandLine) => replay(first, arg, &mut argv),
            // clap reads the variable again in the second parse.
            Some(ValueSource::EnvVariable) => {}
            _ => {
                if let Some(value) = from_file.get(id) {
                    value.push_to(arg, &mut argv);
                }
            }
        }
    }
    let effective = cmd
        .clone()
        .try_get_matches_from(argv)
        .map_err(|e| in_file(&path, &e))?;
    let file_ids = from_file.into_keys().collect();
    Ok(Resolved {
        flags: Flags::from_arg_matches(&effective)?,
        settings: describe(&cmd, first, &effective, &file_ids),
    })
}

/// The command `Flags` describes, built so its arguments can be inspected.
fn command() -> Command {
    let mut cmd = Flags::augment_args(Command::new("serve").bin_name("gust serve"));
    cmd.build();
    cmd
}

/// The arguments that are settings (not `--help`, `--config` or `--print-config`).
fn settings(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments().filter(|arg| {
        arg.get_long().is_some()
            && !NOT_SETTINGS.contains(&arg.get_id().as_str())
            && !matches!(
                arg.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    })
}

fn kind(arg: &Arg) -> Kind {
    if !arg.get_action().takes_values() {
        return Kind::Switch;
    }
    let parsed = arg.get_value_parser().type_id();
    if parsed == TypeId::of::<Schedule>() {
        Kind::List
    } else if [
        TypeId::of::<u64>(),
        TypeId::of::<u32>(),
        TypeId::of::<usize>(),
    ]
    .iter()
    .any(|t| parsed == *t)
    {
        Kind::Number
    } else {
        Kind::Text
    }
}

/// Whether a flag or a variable set `id`.
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Gives the second parse what the command line gave the first.
fn replay(first: &ArgMatches, arg: &Arg, argv: &mut Vec<OsString>) {
    let Some(long) = arg.get_long() else { return };
    if !arg.get_action().takes_values() {
        argv.push(format!("--{long}").into());
        return;
    }
    for value in first.get_raw(arg.get_id().as_str()).into_iter().flatten() {
        // `--name=value`, so that a value starting with `-` stays a value.
        let mut flag = OsString::from(format!("--{long}="));
        flag.push(value);
        argv.push(flag);
    }
}

/// A setting's value as the file gives it, checked for its kind.
#[derive(Debug, Clone, PartialEq)]
enum FileValue {
    Switch(bool),
    Text(String),
}

impl FileValue {
    fn push_to(&self, arg: &Arg, argv: &mut Vec<OsString>) {
        let Some(long) = arg.get_long() else { return };
        match self {
            // A switch has no `--name=false`: off is not saying it.
            Self::Switch(false) => {}
            Self::Switch(true) => argv.push(format!("--{long}").into()),
            Self::Text(value) => argv.push(format!("--{long}={value}").into()),
        }
    }
}

/// The settings in the file at `path`, by argument id.
fn read(path: &Path, cmd: &Command) -> Result<BTreeMap<String, FileValue>, clap::Error> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        clap::Error::raw(
            ErrorKind::Io,
            format!("cannot read the config file {}: {e}", path.display()),
        )
    })?;
    parse(&text, cmd).map_err(|message| {
        clap::Error::raw(
            ErrorKind::InvalidValue,
            format!("config file {}: {message}", path.display()),
        )
    })
}

/// The settings in a config file's text, by argument id; the error names the key.
fn parse(text: &str, cmd: &Command) -> Result<BTreeMap<String, FileValue>, String> {
    // The parser's message without its excerpt of the file, which could show the token.
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
        match line {
            Some(line) => format!("not valid TOML on line {line}: {}", e.message().trim_end()),
            None => format!("not valid TOML: {}", e.message().trim_end()),
        }
    })?;
    let mut values = BTreeMap::new();
    for (key, value) in table {
        // `max_upload_mib` is accepted for `max-upload-mib`: TOML users write both.
        let name = key.replace('_', "-");
        let Some(arg) = settings(cmd).find(|arg| arg.get_long() == Some(name.as_str())) else {
            return Err(if NOT_SETTINGS.contains(&name.replace('-', "_").as_str()) {
                format!("`{key}` is given on the command line, not in a config file")
            } else {
                format!(
                    "unknown setting `{key}` (the keys are the names of `gust serve`'s flags \
                     without `--`, as `gust serve --help` lists them)"
                )
            });
        };
        let checked = check(kind(arg), &value).map_err(|expected| {
            // A secret's value is never repeated back (logs keep what a service prints).
            let shown = if arg.is_hide_env_values_set() {
                String::new()
            } else {
                format!(" `{value}`")
            };
            format!(
                "`{key}` must be {expected}, not {}{shown}",
                value.type_str()
            )
        })?;
        let id = arg.get_id().as_str().to_owned();
        if values.insert(id, checked).is_some() {
            return Err(format!("`{name}` is set twice"));
        }
    }
    Ok(values)
}

/// The value if its TOML type suits the setting's kind, else what was expected.
fn check(kind: Kind, value: &toml::Value) -> Result<FileValue, &'static str> {
    use toml::Value as V;
    match (kind, value) {
        (Kind::Switch, V::Boolean(on)) => Ok(FileValue::Switch(*on)),
        (Kind::Switch, _) => Err("true or false"),
        (Kind::Number, V::Integer(n)) if *n >= 0 => Ok(FileValue::Text(n.to_string())),
        (Kind::Number, _) => Err("a whole number, 0 or more"),
        (Kind::List, V::String(s)) => Ok(FileValue::Text(s.clone())),
        (Kind::List, V::Integer(_) | V::Float(_)) => Ok(FileValue::Text(value.to_string())),
        (Kind::List, V::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                V::Integer(_) | V::Float(_) => Ok(item.to_string()),
                _ => Err(()),
            })
            .collect::<Result<Vec<_>, ()>>()
            .map(|items| FileValue::Text(items.join(",")))
            .map_err(|()| "a list of seconds such as [5, 300] or \"5,300\""),
        (Kind::List, _) => Err("a list of seconds such as [5, 300] or \"5,300\""),
        (Kind::Text, V::String(s)) => Ok(FileValue::Text(s.clone())),
        (Kind::Text, _) => Err("a string (in quotes)"),
    }
}

/// An error of the second parse: only the file's values can cause one there (the command
/// line and the variables passed the first), so it is reported as the file's.
fn in_file(path: &Path, error: &clap::Error) -> clap::Error {
    let rendered = error.render().to_string();
    // The message, without clap's `error: ` and its usage and help lines after a blank one.
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .collect();
    let message = message.join("\n");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    clap::Error::raw(
        error.kind(),
        format!("config file {}: {message}", path.display()),
    )
}

/// Each setting's effective value and where it came from.
fn describe(
    cmd: &Command,
    first: &ArgMatches,
    effective: &ArgMatches,
    file_ids: &BTreeSet<String>,
) -> Vec<Setting> {
    settings(cmd)
        .map(|arg| {
            let id = arg.get_id().as_str();
            let source = match first.value_source(id) {
                Some(ValueSource::CommandLine) => Source::Flag,
                Some(ValueSource::EnvVariable) => Source::Env(
                    arg.get_env()
                        .map(|name| name.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
                _ if file_ids.contains(id) => Source::File,
                _ => Source::Default,
            };
            let kind = kind(arg);
            let value = match kind {
                Kind::Switch => Some(effective.get_flag(id).to_string()),
                _ => effective
                    .get_raw(id)
                    .and_then(|mut values| values.next())
                    .map(|value| value.to_string_lossy().into_owned()),
            };
            Setting {
                key: arg.get_long().unwrap_or(id).to_owned(),
                kind,
                value,
                source,
                // A variable whose value `--help` hides holds a secret.
                secret: arg.is_hide_env_values_set(),
                hidden: arg.is_hide_set(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_its_variable_and_a_file_key() {
        let cmd = command();
        for arg in settings(&cmd) {
            let long = arg.get_long().unwrap();
            if arg.is_hide_set() {
                continue;
            }
            // `--database` takes the name platforms give a database's URL.
            let expected = match long {
                "database" => "GUST_DATABASE_URL".to_owned(),
                _ => format!("GUST_{}", long.replace('-', "_").to_uppercase()),
            };
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(expected.as_str()),
                "--{long}"
            );
        }
        let config = cmd.get_arguments().find(|a| a.get_id() == "config");
        assert_eq!(
            config.and_then(|a| a.get_env()).and_then(|e| e.to_str()),
            Some("GUST_CONFIG")
        );
    }

    #[test]
    fn file_values_are_checked_by_kind() {
        let cmd = command();
        let values = parse(
            "workers = 8\nlisten = \"0.0.0.0:9000\"\nallow_private_network = true\n\
             push-retry-schedule = [5, 0.5, 300]\n",
            &cmd,
        )
        .unwrap();
        assert_eq!(values["workers"], FileValue::Text("8".into()));
        assert_eq!(values["listen"], FileValue::Text("0.0.0.0:9000".into()));
        assert_eq!(values["allow_private_network"], FileValue::Switch(true));
        assert_eq!(
            values["push_retry_schedule"],
            FileValue::Text("5,0.5,300".into())
        );

        for (text, expected) in [
            ("wrokers = 8", "unknown setting `wrokers`"),
            ("workers = \"8\"", "`workers` must be a whole number"),
            ("workers = -1", "`workers` must be a whole number"),
            ("listen = 8080", "`listen` must be a string"),
            ("allow-private-network = \"yes\"", "must be true or false"),
            ("push-retry-schedule = [5, \"x\"]", "a list of seconds"),
            ("config = \"other.toml\"", "not in a config file"),
            ("workers = 1\nworkers = 2", "not valid TOML"),
            ("workers = 1\nworkers_ = 2", "unknown setting"),
            ("max-workers = 1", "unknown setting"),
            (
                "workers = 1\n[serve]\nlog = \"x\"",
                "unknown setting `serve`",
            ),
        ] {
            let error = parse(text, &cmd).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
        let twice = parse("max-upload-mib = 1\nmax_upload_mib = 2", &cmd).unwrap_err();
        assert!(twice.contains("set twice"), "{twice}");
    }
}
