//! The admin token: compared in constant time on every control-plane request, never logged,
//! and rotated through the API when it is kept in the data folder.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::sessions::Sessions;
use crate::error::Error;
use crate::tasks::blocking;

/// See the module docs.
pub struct AdminToken {
    current: ArcSwap<String>,
    /// Where a rotated token is stored; `None` when the token was given on the command line
    /// or in the environment (then it is changed there, not rotated).
    file: Option<PathBuf>,
    /// Held while the token is rotated, so two rotations cannot leave one token in memory
    /// and another on disk.
    rotation: tokio::sync::Mutex<()>,
    /// Console sessions signed in with this token; a rotation ends them all.
    sessions: Sessions,
}

impl AdminToken {
    /// `token`, stored in `file` when it came from the data folder.
    pub fn new(token: String, file: Option<PathBuf>) -> Self {
        Self {
            current: ArcSwap::from_pointee(token),
            file,
            rotation: tokio::sync::Mutex::new(()),
            sessions: Sessions::default(),
        }
    }

    /// The console sessions opened with this token.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Whether `presented` is the admin token.
    pub fn matches(&self, presented: &[u8]) -> bool {
        super::constant_time_eq(presented, self.current.load().as_bytes())
    }

    /// A new admin token, effective at once (the old one stops working), stored in the data
    /// folder; returned to be shown this once.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the token was given on the command line or in the
    /// environment.
    pub async fn rotate(&self) -> Result<String, Error> {
        let Some(file) = self.file.clone() else {
            return Err(Error::Conflict(
                "the admin token was given with --admin-token, --admin-token-file or GUST_ADMIN_TOKEN; change it there"
                    .into(),
            ));
        };
        let _rotating = self.rotation.lock().await;
        let token = new_admin_token();
        let stored = token.clone();
        blocking(move || gust_model::fs::write_atomic(&file, stored.as_bytes()))
            .await?
            .map_err(|e| Error::Internal(e.into()))?;
        self.current.store(Arc::new(token.clone()));
        // A session is the token's stand-in: whoever signed in with the old token is out.
        self.sessions.end_all();
        tracing::info!("the admin token was rotated; console sessions ended");
        Ok(token)
    }
}

/// A new random admin token.
pub fn new_admin_token() -> String {
    format!("gust_admin_{}", hex::encode(rand::random::<[u8; 32]>()))
}
