//! The admin token: compared in constant time on every control-plane request, never logged,
//! and rotated through the API.
//!
//! Only the token's SHA-256 is kept in memory. With one host the token itself lives in the
//! data folder (or comes from a flag, file or variable). With several hosts on one database
//! the hash stored there is the truth: the first host stores its token's hash, a host whose
//! token does not match refuses to start, and a rotation on any host replaces the stored
//! hash, which every other host reloads when the database announces the change.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use gust_store::Store;

use super::digest;
use super::sessions::Sessions;
use crate::error::Error;
use crate::tasks::blocking;

/// The setting (in a shared database) that holds the admin token's hash, hex.
pub const ADMIN_TOKEN_SETTING: &str = "admin_token_sha256";

/// See the module docs.
pub struct AdminToken {
    current: ArcSwap<[u8; 32]>,
    /// Where a rotated token is stored; `None` when the token was given on the command line
    /// or in the environment (then it is changed there, not rotated — unless `shared`).
    file: Option<PathBuf>,
    /// The database several hosts share, which holds the token's hash for all of them.
    shared: Option<Store>,
    /// Held while the token is rotated, so two rotations cannot leave one token in memory
    /// and another on disk.
    rotation: tokio::sync::Mutex<()>,
    /// Console sessions signed in with this token; a rotation ends them all.
    sessions: Sessions,
}

impl AdminToken {
    /// `token`, stored in `file` when it came from the data folder.
    pub fn new(token: &str, file: Option<PathBuf>) -> Self {
        Self {
            current: ArcSwap::from_pointee(digest(token.as_bytes())),
            file,
            shared: None,
            rotation: tokio::sync::Mutex::new(()),
            sessions: Sessions::default(),
        }
    }

    /// `token` on a host that shares `store` with others: the first host to start records
    /// the token's hash there; every later one must present the same token.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the database holds another token's hash.
    pub async fn shared(token: &str, file: Option<PathBuf>, store: Store) -> Result<Self, Error> {
        let hash = Self::hash_of(token);
        let stored = store
            .put_setting_if_absent(ADMIN_TOKEN_SETTING, &hash)
            .await?;
        if stored != hash {
            return Err(Error::Conflict(
                "the database belongs to hosts with another admin token (it was set by the first \
                 host, or rotated since): start this host with the current token \
                 (--admin-token-file, GUST_ADMIN_TOKEN or --admin-token)"
                    .into(),
            ));
        }
        let mut admin = Self::new(token, file);
        admin.sessions = Sessions::shared(store.clone());
        admin.shared = Some(store);
        Ok(admin)
    }

    /// A host sharing `store` that was given no token: it checks requests against the hash
    /// the database holds (`hash`, hex), and has no token file of its own.
    ///
    /// # Errors
    /// [`Error::Internal`] when the stored hash is malformed.
    pub fn from_hash(hash: &str, store: Store) -> Result<Self, Error> {
        let hash = parse_hash(hash)
            .ok_or_else(|| Error::internal("the database holds a malformed admin token hash"))?;
        Ok(Self {
            current: ArcSwap::from_pointee(hash),
            file: None,
            sessions: Sessions::shared(store.clone()),
            shared: Some(store),
            rotation: tokio::sync::Mutex::new(()),
        })
    }

    /// The hash (hex) the database keeps for `token`.
    pub fn hash_of(token: &str) -> String {
        hex::encode(digest(token.as_bytes()))
    }

    /// Whether `token` is the one whose hash (hex) this is.
    pub fn hashes_to(token: &str, hash: &str) -> bool {
        parse_hash(hash).is_some_and(|h| super::constant_time_eq(&digest(token.as_bytes()), &h))
    }

    /// The console sessions opened with this token.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Whether `presented` is the admin token.
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.matches_digest(&digest(presented))
    }

    /// Whether a credential whose [`digest`](super::digest) this is, is the admin token.
    pub fn matches_digest(&self, digest: &[u8; 32]) -> bool {
        super::constant_time_eq(digest, self.current.load().as_slice())
    }

    /// A new admin token, effective at once (the old one stops working), stored in the data
    /// folder and, with several hosts, in the database for all of them; returned to be
    /// shown this once.
    ///
    /// # Errors
    /// [`Error::Conflict`] when a single host's token was given on the command line or in
    /// the environment.
    pub async fn rotate(&self) -> Result<String, Error> {
        if self.file.is_none() && self.shared.is_none() {
            return Err(Error::Conflict(
                "the admin token was given with --admin-token, --admin-token-file or GUST_ADMIN_TOKEN; change it there"
                    .into(),
            ));
        }
        let _rotating = self.rotation.lock().await;
        let token = new_admin_token();
        let hash = digest(token.as_bytes());
        if let Some(store) = &self.shared {
            // The sessions opened with the old token end first (if that fails, nothing has
            // changed), then the database's hash, which every host checks against, then
            // the sessions again: one opened with the old token in between ends too. Should
            // the file below fail, the new token still holds everywhere, and it is returned.
            store.end_sessions(None).await?;
            store
                .set_setting(ADMIN_TOKEN_SETTING, &hex::encode(hash))
                .await?;
            self.sessions.end_all().await;
        }
        if let Some(file) = self.file.clone() {
            let stored = token.clone();
            let written =
                blocking(move || gust_model::fs::write_atomic(&file, stored.as_bytes())).await?;
            match (written, &self.shared) {
                (Ok(()), _) => {}
                (Err(e), Some(_)) => {
                    tracing::error!(
                        "the rotated admin token is in effect, but the data folder's copy could not be written: {e}"
                    );
                }
                (Err(e), None) => return Err(Error::Internal(e.into())),
            }
        }
        self.current.store(Arc::new(hash));
        if self.shared.is_none() {
            // A session is the token's stand-in: whoever signed in with the old token is out.
            self.sessions.end_all().await;
        }
        tracing::info!("the admin token was rotated; console sessions ended");
        Ok(token)
    }

    /// Takes the token's hash from the shared database again, after another host may have
    /// rotated it. A no-op for a single host.
    pub async fn reload(&self) {
        let Some(store) = &self.shared else { return };
        // Not beside a rotation here: a read from before it must not bring the old hash back.
        let _rotating = self.rotation.lock().await;
        let stored = match store.setting(ADMIN_TOKEN_SETTING).await {
            Ok(Some(stored)) => stored,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("reading the admin token's hash: {e}");
                return;
            }
        };
        let Some(hash) = parse_hash(&stored) else {
            tracing::error!(
                "the database holds a malformed admin token hash; keeping the current token"
            );
            return;
        };
        // The rotating host ended the sessions, in the database they live in; ending them
        // here too could end ones signed in with the new token since.
        if hash != **self.current.load() {
            self.current.store(Arc::new(hash));
            tracing::info!("the admin token was rotated on another host");
        }
    }
}

fn parse_hash(hex_text: &str) -> Option<[u8; 32]> {
    hex::decode(hex_text)
        .ok()
        .and_then(|h| <[u8; 32]>::try_from(h).ok())
}

/// A new random admin token.
pub fn new_admin_token() -> String {
    format!("gust_admin_{}", hex::encode(rand::random::<[u8; 32]>()))
}
