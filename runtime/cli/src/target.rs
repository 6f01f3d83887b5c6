//! Which server a client command talks to, and with which token.
//!
//! A URL and a token always come as a pair from one source, tried in this order:
//!
//! 1. given: `--url`/`--token` (or `--token-stdin`), else `GUST_URL`/`GUST_TOKEN`;
//! 2. a profile stored by `gust login`: `--profile`/`GUST_PROFILE`, else the default one;
//! 3. the local data folder: `./gust-data/admin-token` with `http://127.0.0.1:8080`.
//!
//! A URL given without a token takes the token of the profile stored for that URL, if any,
//! and no other: the token of a profile or of the data folder is never sent anywhere but the
//! server it was stored for. A token given without a URL goes to the default URL.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::exit::Failure;

/// Where a local `gust serve` listens unless told otherwise.
pub(crate) const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// The token a local `gust serve` generates in its default data folder.
const LOCAL_TOKEN_FILE: &str = "gust-data/admin-token";
/// The profile `gust login` writes when none is named.
pub(crate) const DEFAULT_PROFILE: &str = "default";

/// What the command line and environment say about the connection.
#[derive(Debug, Default, Clone)]
pub(crate) struct Given {
    pub(crate) url: Option<String>,
    pub(crate) token: Option<String>,
    pub(crate) profile: Option<String>,
}

/// The server and token a command uses, and where they came from (for `gust whoami` and
/// for the hint on a 401).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) token: Option<String>,
    pub(crate) source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// `--url`/`--token` or `GUST_URL`/`GUST_TOKEN`.
    Given,
    /// A URL was given, and the token is that of the profile stored for it.
    GivenUrlWithProfile(String),
    /// A profile stored by `gust login`.
    Profile(String),
    /// `./gust-data/admin-token`.
    DataFolder,
    /// Nothing: the default URL, no token.
    Nothing,
}

impl Source {
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Given => "given (--url/--token or GUST_URL/GUST_TOKEN)".to_owned(),
            Self::GivenUrlWithProfile(name) => {
                format!("--url/GUST_URL, with the token of profile `{name}` stored for it")
            }
            Self::Profile(name) => format!("profile `{name}` ({})", config_path_shown()),
            Self::DataFolder => format!("the local data folder (./{LOCAL_TOKEN_FILE})"),
            Self::Nothing => "nothing: the default URL, no token".to_owned(),
        }
    }
}

/// Resolves the connection by the order in the module's documentation.
pub(crate) fn resolve(given: &Given) -> anyhow::Result<Target> {
    let profiles = Profiles::load()?;
    if given.url.is_some() || given.token.is_some() {
        let url = normalize(given.url.as_deref().unwrap_or(DEFAULT_URL));
        if let Some(token) = &given.token {
            return Ok(Target {
                url,
                token: Some(token.clone()),
                source: Source::Given,
            });
        }
        // The profile named for this command first, then any stored for the same server.
        let named = given.profile.as_deref().or(profiles.default.as_deref());
        let stored = named
            .and_then(|name| profiles.get(name).map(|p| (name, p)))
            .filter(|(_, p)| normalize(&p.url) == url)
            .or_else(|| {
                profiles
                    .profiles
                    .iter()
                    .find(|(_, p)| normalize(&p.url) == url)
                    .map(|(name, p)| (name.as_str(), p))
            });
        return Ok(match stored {
            Some((name, profile)) => Target {
                url,
                token: Some(profile.token.clone()),
                source: Source::GivenUrlWithProfile(name.to_owned()),
            },
            None => Target {
                url,
                token: None,
                source: Source::Given,
            },
        });
    }
    if let Some(name) = &given.profile {
        let Some(profile) = profiles.get(name) else {
            return Err(Failure::auth(format!(
                "no profile `{name}` in {}: `gust login --profile {name} --url URL` stores one",
                config_path_shown()
            ))
            .into());
        };
        return Ok(profile.target(name));
    }
    if let Some(name) = &profiles.default
        && let Some(profile) = profiles.get(name)
    {
        return Ok(profile.target(name));
    }
    if let Ok(token) = std::fs::read_to_string(LOCAL_TOKEN_FILE) {
        let token = token.trim();
        if !token.is_empty() {
            return Ok(Target {
                url: DEFAULT_URL.to_owned(),
                token: Some(token.to_owned()),
                source: Source::DataFolder,
            });
        }
    }
    Ok(Target {
        url: DEFAULT_URL.to_owned(),
        token: None,
        source: Source::Nothing,
    })
}

/// `http://host:8080/` and `http://host:8080` are one server.
pub(crate) fn normalize(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

/// The per-user file of `gust login`: `$XDG_CONFIG_HOME/gust/config.toml` (by default
/// `~/.config/gust/config.toml`), mode 0600 in a 0700 folder, since it holds tokens.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Profiles {
    /// The profile used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) default: Option<String>,
    #[serde(default)]
    pub(crate) profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Profile {
    pub(crate) url: String,
    pub(crate) token: String,
}

impl Profile {
    fn target(&self, name: &str) -> Target {
        Target {
            url: normalize(&self.url),
            token: Some(self.token.clone()),
            source: Source::Profile(name.to_owned()),
        }
    }
}

pub(crate) fn config_path() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).context(
                "neither XDG_CONFIG_HOME nor HOME is set: where should gust keep its profiles?",
            )?;
            PathBuf::from(home).join(".config")
        }
    };
    Ok(base.join("gust").join("config.toml"))
}

fn config_path_shown() -> String {
    config_path().map_or_else(
        |_| "the gust config file".to_owned(),
        |p| p.display().to_string(),
    )
}

impl Profiles {
    pub(crate) fn load() -> anyhow::Result<Self> {
        let path = config_path()?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        toml::from_str(&text).with_context(|| format!("reading {}", path.display()))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    /// Writes the file whole (a new file renamed over the old one), never readable by others.
    pub(crate) fn save(&self) -> anyhow::Result<PathBuf> {
        let path = config_path()?;
        let dir = path.parent().context("the config path has no folder")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Only a folder gust made itself is tightened; an existing ~/.config is left alone.
        if dir.file_name().is_some_and(|n| n == "gust") {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("setting the mode of {}", dir.display()))?;
        }
        let text = toml::to_string(self).context("writing the profiles")?;
        let partial = dir.join(".config.toml.partial");
        let _ = std::fs::remove_file(&partial);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", partial.display()))?;
        std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// Reads one secret: a hidden prompt on a terminal, else the first line of standard input.
pub(crate) fn read_secret(prompt: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal as _;
    let secret = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(prompt).context("reading the secret from the terminal")?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the secret from standard input")?;
        line
    };
    let secret = secret.trim().to_owned();
    if secret.is_empty() {
        return Err(Failure::usage("no secret was given").into());
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_compare_without_trailing_slash() {
        assert_eq!(normalize("http://a:1/"), normalize("http://a:1"));
        assert_ne!(normalize("http://a:1"), normalize("http://a:2"));
    }

    #[test]
    fn profiles_round_trip_through_toml() {
        let mut profiles = Profiles {
            default: Some("prod".into()),
            ..Profiles::default()
        };
        profiles.profiles.insert(
            "prod".into(),
            Profile {
                url: "https://agents.example.com".into(),
                token: "t0k".into(),
            },
        );
        let text = toml::to_string(&profiles).unwrap();
        let back: Profiles = toml::from_str(&text).unwrap();
        assert_eq!(back.default.as_deref(), Some("prod"));
        assert_eq!(back.profiles["prod"].token, "t0k");
        assert!(toml::from_str::<Profiles>("surprise = 1").is_err());
    }
}
