//! Which server a client command talks to, and with which token.
//!
//! A URL and a token always come as a pair from one place, the first of:
//!
//! 1. the command line: `--url` with `--token`/`--token-stdin`;
//! 2. `--profile NAME`: a profile stored by `gust login`;
//! 3. the environment: `GUST_URL` with `GUST_TOKEN`;
//! 4. `GUST_PROFILE`, else the default profile (the one logged in to last);
//! 5. the local data folder: `./gust-data/admin-token`, with the URL the host in that folder
//!    recorded beside it (`./gust-data/url`; `http://127.0.0.1:8080` if there is none).
//!
//! In 1 and 3 a URL without a token takes the token of the profile stored for that URL, if
//! any, and no other; a token without a URL is refused. So a stored token is sent only to the
//! server it was stored for, and a given one only where it was given for.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::exit::{Code, Failure};

/// Where a local `gust serve` listens unless told otherwise.
pub(crate) const DEFAULT_URL: &str = "http://127.0.0.1:8080";
/// The data folder a local `gust serve` uses unless told otherwise.
const LOCAL_DATA: &str = "gust-data";
/// The profile `gust login` writes when none is named and none is stored for the URL.
pub(crate) const DEFAULT_PROFILE: &str = "default";

/// A URL and a token as one place gives them.
#[derive(Debug, Default, Clone)]
pub(crate) struct Pair {
    pub(crate) url: Option<String>,
    pub(crate) token: Option<String>,
}

impl Pair {
    fn any(&self) -> bool {
        self.url.is_some() || self.token.is_some()
    }
}

/// What the command line and the environment say about the connection.
#[derive(Debug, Default, Clone)]
pub(crate) struct Given {
    /// `--url`, `--token`/`--token-stdin`.
    pub(crate) flags: Pair,
    /// `--profile`.
    pub(crate) profile: Option<String>,
    /// `GUST_URL`, `GUST_TOKEN`.
    pub(crate) env: Pair,
    /// `GUST_PROFILE`.
    pub(crate) env_profile: Option<String>,
    /// How long to wait for the server (`--timeout`, `GUST_TIMEOUT`).
    pub(crate) timeout: std::time::Duration,
}

impl Given {
    /// The environment's part, an empty variable counting as unset.
    pub(crate) fn with_env(
        flags: Pair,
        profile: Option<String>,
        timeout: std::time::Duration,
    ) -> Self {
        Self {
            flags,
            profile,
            env: Pair {
                url: env_var("GUST_URL"),
                token: env_var("GUST_TOKEN"),
            },
            env_profile: env_var("GUST_PROFILE"),
            timeout,
        }
    }
}

/// A variable of the environment, an empty one counting as unset.
pub(crate) fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The server and token a command uses, and where they came from.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) token: Option<String>,
    pub(crate) source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// `--url` (with `--token`, or with `profile`'s token stored for that URL).
    Flags { profile: Option<String> },
    /// `GUST_URL` (with `GUST_TOKEN`, or with `profile`'s token stored for that URL).
    Env { profile: Option<String> },
    /// A profile stored by `gust login`.
    Profile(String),
    /// `./gust-data`.
    DataFolder,
    /// Nothing at all.
    Nothing,
}

impl Source {
    pub(crate) fn describe(&self) -> String {
        let stored = |profile: &Option<String>| match profile {
            Some(name) => format!(", with the token of profile `{name}` stored for that URL"),
            None => String::new(),
        };
        match self {
            Self::Flags { profile } => format!("the command line{}", stored(profile)),
            Self::Env { profile } => format!("GUST_URL/GUST_TOKEN{}", stored(profile)),
            Self::Profile(name) => format!("profile `{name}` ({})", config_path_shown()),
            Self::DataFolder => format!("the local data folder ./{LOCAL_DATA}"),
            Self::Nothing => "nothing: no flag, variable, profile or ./gust-data".to_owned(),
        }
    }

    /// The stored profile the token came from, if it came from one.
    pub(crate) fn profile(&self) -> Option<&str> {
        match self {
            Self::Flags { profile } | Self::Env { profile } => profile.as_deref(),
            Self::Profile(name) => Some(name),
            Self::DataFolder | Self::Nothing => None,
        }
    }
}

/// Resolves the connection by the order in the module's documentation.
pub(crate) fn resolve(given: &Given) -> anyhow::Result<Target> {
    if given.flags.any() {
        return pair(&given.flags, Place::Flags, given.profile.as_deref());
    }
    if let Some(name) = &given.profile {
        return named(name);
    }
    if given.env.any() {
        return pair(&given.env, Place::Env, None);
    }
    if let Some(name) = &given.env_profile {
        return named(name);
    }
    let profiles = Profiles::load()?;
    if let Some(name) = &profiles.default
        && let Some(profile) = profiles.get(name)
    {
        return profile.target(name);
    }
    if let Some(target) = data_folder()? {
        return Ok(target);
    }
    Ok(Target {
        url: DEFAULT_URL.to_owned(),
        token: None,
        source: Source::Nothing,
    })
}

#[derive(Clone, Copy)]
enum Place {
    Flags,
    Env,
}

/// The URL and token one place gives; a URL alone takes the token stored for it.
fn pair(pair: &Pair, place: Place, profile: Option<&str>) -> anyhow::Result<Target> {
    let (url_name, token_name) = match place {
        Place::Flags => ("--url", "--token"),
        Place::Env => ("GUST_URL", "GUST_TOKEN"),
    };
    let Some(url) = &pair.url else {
        return Err(Failure::usage(format!(
            "{token_name} needs {url_name}: a token is sent only to the server named with it"
        ))
        .into());
    };
    let url = normalize(url)?;
    let source = |profile: Option<String>| match place {
        Place::Flags => Source::Flags { profile },
        Place::Env => Source::Env { profile },
    };
    if let Some(token) = &pair.token {
        return Ok(Target {
            url,
            token: Some(token.clone()),
            source: source(None),
        });
    }
    let profiles = Profiles::load()?;
    let stored = match profile {
        // A profile named with the URL must be the one stored for it.
        Some(name) => {
            let p = profiles.get(name).ok_or_else(|| no_profile(name))?;
            if normalize(&p.url)? != url {
                return Err(Failure::usage(format!(
                    "profile `{name}` is for {}, not {url}",
                    p.url
                ))
                .into());
            }
            Some((name.to_owned(), p.token.clone()))
        }
        None => profiles.for_url(&url)?,
    };
    Ok(match stored {
        Some((name, token)) => Target {
            url,
            token: Some(token),
            source: source(Some(name)),
        },
        None => Target {
            url,
            token: None,
            source: source(None),
        },
    })
}

fn named(name: &str) -> anyhow::Result<Target> {
    let profiles = Profiles::load()?;
    profiles
        .get(name)
        .ok_or_else(|| no_profile(name))?
        .target(name)
}

fn no_profile(name: &str) -> anyhow::Error {
    Failure::auth(format!(
        "no profile `{name}` in {}: `gust login --profile {name} --url URL` stores one",
        config_path_shown()
    ))
    .into()
}

/// `./gust-data/admin-token`, with the URL its host recorded beside it.
fn data_folder() -> anyhow::Result<Option<Target>> {
    let folder = Path::new(LOCAL_DATA);
    let Ok(token) = std::fs::read_to_string(folder.join("admin-token")) else {
        return Ok(None);
    };
    let token = token.trim();
    if token.is_empty() {
        return Ok(None);
    }
    let url = match std::fs::read_to_string(folder.join("url")) {
        Ok(url) => normalize(url.trim())?,
        Err(_) => DEFAULT_URL.to_owned(),
    };
    Ok(Some(Target {
        url,
        token: Some(token.to_owned()),
        source: Source::DataFolder,
    }))
}

/// The URL in one spelling (`HTTP://Host:80/` is `http://host`), or a usage error when it
/// is not an http(s) URL.
pub(crate) fn normalize(url: &str) -> anyhow::Result<String> {
    let parsed = url::Url::parse(url.trim()).map_err(|e| {
        Failure::usage(format!(
            "`{url}` is not a URL ({e}): give it whole, e.g. {DEFAULT_URL}"
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(Failure::usage(format!("`{url}` is not an http or https URL")).into());
    }
    Ok(parsed.as_str().trim_end_matches('/').to_owned())
}

/// The per-user file of `gust login`: `$XDG_CONFIG_HOME/gust/config.toml` (by default
/// `~/.config/gust/config.toml`), mode 0600 in a 0700 folder, since it holds tokens.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Profiles {
    /// The profile used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) default: Option<String>,
    #[serde(default)]
    pub(crate) profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Profile {
    pub(crate) url: String,
    pub(crate) token: String,
}

impl Profile {
    fn target(&self, name: &str) -> anyhow::Result<Target> {
        Ok(Target {
            url: normalize(&self.url)?,
            token: Some(self.token.clone()),
            source: Source::Profile(name.to_owned()),
        })
    }
}

pub(crate) fn config_path() -> anyhow::Result<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let base = match var("XDG_CONFIG_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(var("HOME").context(
            "neither XDG_CONFIG_HOME nor HOME is set: where should gust keep its profiles?",
        )?)
        .join(".config"),
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
    /// The stored profiles. A file (or its folder) others may write is refused, as ssh
    /// refuses such keys: whoever can change a profile's URL collects its token.
    pub(crate) fn load() -> anyhow::Result<Self> {
        let path = config_path()?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        for checked in [path.as_path(), path.parent().unwrap_or(Path::new("/"))] {
            let mode = std::fs::metadata(checked)?.permissions().mode();
            if mode & 0o022 != 0 {
                return Err(Failure::auth(format!(
                    "{} may be changed by other users (mode {:o}): `chmod go-w` it, then try \
                     again",
                    checked.display(),
                    mode & 0o777
                ))
                .into());
            }
        }
        // The parser's message only: its excerpt of the file could show a token.
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not valid: {}", path.display(), e.message().trim()))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    /// The profile stored for `url` (the default one first), as (name, token).
    fn for_url(&self, url: &str) -> anyhow::Result<Option<(String, String)>> {
        let default = self.default.as_deref();
        let mut found = None;
        for (name, profile) in &self.profiles {
            if normalize(&profile.url).ok().as_deref() == Some(url) {
                if Some(name.as_str()) == default {
                    return Ok(Some((name.clone(), profile.token.clone())));
                }
                found.get_or_insert_with(|| (name.clone(), profile.token.clone()));
            }
        }
        Ok(found)
    }

    /// The name of the profile stored for `url`, if any.
    pub(crate) fn name_for_url(&self, url: &str) -> Option<String> {
        self.for_url(url).ok().flatten().map(|(name, _)| name)
    }

    /// Changes the stored profiles under a lock (two `gust login` at once both land), and
    /// writes the file whole: a new private file renamed over the old one.
    pub(crate) fn update(change: impl FnOnce(&mut Self)) -> anyhow::Result<PathBuf> {
        let path = config_path()?;
        let dir = path.parent().context("the config path has no folder")?;
        if !dir.exists() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            // Only a folder made here is set private; an existing one is the user's.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("setting the mode of {}", dir.display()))?;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("config.toml.lock"))
            .with_context(|| format!("opening the lock in {}", dir.display()))?;
        lock.lock().context("locking the profiles")?;
        let mut profiles = Self::load()?;
        change(&mut profiles);
        let text = toml::to_string(&profiles).context("writing the profiles")?;
        // NamedTempFile is created 0600 with a name of its own.
        let mut file = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a file in {}", dir.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.as_file().sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
        file.persist(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// Reads one secret: a hidden prompt on a terminal, else the first line of standard input.
pub(crate) fn read_secret(prompt: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal as _;
    let secret = if std::io::stdin().is_terminal() {
        hidden(prompt)?
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the secret from standard input")?;
        line
    };
    let secret = secret.trim().to_owned();
    if secret.is_empty() {
        return Err(Failure::new(Code::Usage, "no secret was given").into());
    }
    Ok(secret)
}

/// Whether a hidden prompt is reading: see [`hidden`].
static PROMPTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reads a secret at a prompt that does not echo it.
///
/// rpassword turns the terminal's signals and echo off, and at Ctrl-C raises SIGINT itself
/// before it turns them back on (7.5): the default action ended the process there, leaving
/// the user's terminal without echo. So SIGINT is caught from the first prompt on (the
/// handler is installed here, once, before reading): during a prompt rpassword then returns
/// `Interrupted` with the terminal put back, and the command ends as Ctrl-C ends one, with
/// 130; outside a prompt the handler ends the process at once, with 130.
fn hidden(prompt: &str) -> anyhow::Result<String> {
    use std::sync::atomic::Ordering;
    static HANDLER: std::sync::Once = std::sync::Once::new();
    HANDLER.call_once(|| {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let _inside = runtime.enter();
        // Installed now, not when the task first runs: Ctrl-C may come at once.
        let Ok(mut interrupts) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        else {
            return;
        };
        runtime.spawn(async move {
            while interrupts.recv().await.is_some() {
                if !PROMPTING.load(Ordering::SeqCst) {
                    std::process::exit(130);
                }
            }
        });
    });
    PROMPTING.store(true, Ordering::SeqCst);
    let read = rpassword::prompt_password(prompt);
    PROMPTING.store(false, Ordering::SeqCst);
    match read {
        Ok(secret) => Ok(secret),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
            crate::output::note!("");
            std::process::exit(130);
        }
        Err(e) => Err(anyhow::Error::new(e).context("reading the secret from the terminal")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_have_one_spelling_and_must_be_http() {
        assert_eq!(
            normalize("http://a:1/").unwrap(),
            normalize("http://a:1").unwrap()
        );
        assert_eq!(normalize("HTTP://A:80/").unwrap(), "http://a");
        assert_ne!(
            normalize("http://a:1").unwrap(),
            normalize("http://a:2").unwrap()
        );
        for bad in ["127.0.0.1:8080", "ftp://a", "", "http://"] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_is_never_given_without_its_url() {
        let given = Given {
            flags: Pair {
                url: None,
                token: Some("t".into()),
            },
            ..Given::default()
        };
        let e = resolve(&given).unwrap_err();
        assert!(e.to_string().contains("--token needs --url"), "{e}");
        let given = Given {
            env: Pair {
                url: None,
                token: Some("t".into()),
            },
            ..Given::default()
        };
        assert!(
            resolve(&given)
                .unwrap_err()
                .to_string()
                .contains("GUST_TOKEN needs GUST_URL")
        );
    }

    #[test]
    fn profiles_round_trip_through_toml_and_tolerate_new_keys() {
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
        assert!(toml::from_str::<Profiles>("from_a_newer_gust = 1").is_ok());
        assert_eq!(
            back.for_url("https://agents.example.com").unwrap(),
            Some(("prod".to_owned(), "t0k".to_owned()))
        );
    }
}
