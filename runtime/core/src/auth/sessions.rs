//! Console sessions: signing in with the admin token gives the browser a random session id
//! in an HttpOnly cookie, so the token itself is never kept by the page.
//!
//! Only the SHA-256 of an id is held (a memory dump or a log of the map shows no usable
//! cookie); a session ends after [`IDLE`] without a request, [`LIFETIME`] after sign-in
//! however busy (an open page polls, which alone would keep it forever), at sign-out, and —
//! all of them — when the admin token is rotated. A single host keeps sessions in this
//! process: a restart signs everyone out, which costs a sign-in and keeps no credential on
//! disk. Hosts sharing a database keep them there (hashes only), since a load balancer may
//! send a browser's next request to any of them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gust_store::Store;
use gust_store::sessions::SessionTimes;
use sha2::{Digest, Sha256};

use crate::clock;
use crate::error::Error;

/// How long a session lasts without a request.
pub const IDLE: Duration = Duration::from_secs(30 * 60);

/// How long a session lasts at most.
pub const LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// When a session was opened, and when it was last used.
#[derive(Clone, Copy)]
struct Times {
    opened: Instant,
    seen: Instant,
}

/// More open sessions than anyone signs in with; past it, the least recently used ends, so
/// a script signing in in a loop cannot grow the map without bound.
const MAX_SESSIONS: usize = 1024;

/// See the module docs.
pub struct Sessions {
    by_hash: Mutex<HashMap<[u8; 32], Times>>,
    idle: Duration,
    lifetime: Duration,
    /// The database several hosts share, which keeps the sessions instead of the map.
    shared: Option<Store>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(IDLE, LIFETIME)
    }
}

impl Sessions {
    /// Sessions that end after `idle` without a request, or `lifetime` after they opened.
    pub fn new(idle: Duration, lifetime: Duration) -> Self {
        Self {
            by_hash: Mutex::new(HashMap::new()),
            idle,
            lifetime,
            shared: None,
        }
    }

    /// Sessions kept in `store`, which other hosts share.
    pub(crate) fn shared(store: Store) -> Self {
        Self {
            shared: Some(store),
            ..Self::default()
        }
    }

    fn times(&self) -> SessionTimes {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        SessionTimes {
            idle_ms: ms(self.idle),
            lifetime_ms: ms(self.lifetime),
            max: MAX_SESSIONS,
        }
    }

    fn open_at(&self, times: Times, now: Instant) -> bool {
        now.duration_since(times.seen) < self.idle
            && now.duration_since(times.opened) < self.lifetime
    }

    /// A new session; its id, returned here only, goes in the cookie.
    ///
    /// # Errors
    /// When the shared database cannot record it.
    pub async fn create(&self) -> Result<String, Error> {
        let id = format!("gust_session_{}", hex::encode(rand::random::<[u8; 32]>()));
        if let Some(store) = &self.shared {
            store
                .create_session(&hex::encode(hash(&id)), clock::now_ms(), self.times())
                .await?;
            return Ok(id);
        }
        let now = Instant::now();
        let mut sessions = self.lock();
        sessions.retain(|_, times| self.open_at(*times, now));
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, times)| times.seen)
                .map(|(h, _)| *h)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            hash(&id),
            Times {
                opened: now,
                seen: now,
            },
        );
        Ok(id)
    }

    /// Whether `id` is an open session; a valid one counts as used now. When the shared
    /// database cannot say, it is not (the console asks to sign in again).
    pub async fn touch(&self, id: &str) -> bool {
        let key = hash(id);
        if let Some(store) = &self.shared {
            return match store
                .touch_session(&hex::encode(key), clock::now_ms(), self.times())
                .await
            {
                Ok(open) => open,
                Err(e) => {
                    tracing::warn!("checking a console session: {e}");
                    false
                }
            };
        }
        let now = Instant::now();
        let mut sessions = self.lock();
        match sessions.get_mut(&key) {
            Some(times) if self.open_at(*times, now) => {
                times.seen = now;
                true
            }
            Some(_) => {
                sessions.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Ends one session (sign-out).
    ///
    /// # Errors
    /// When the shared database cannot record it.
    pub async fn end(&self, id: &str) -> Result<(), Error> {
        let key = hash(id);
        if let Some(store) = &self.shared {
            store.end_sessions(Some(&hex::encode(key))).await?;
        }
        self.lock().remove(&key);
        Ok(())
    }

    /// Ends every session (the admin token was rotated).
    pub async fn end_all(&self) {
        if let Some(store) = &self.shared
            && let Err(e) = store.end_sessions(None).await
        {
            // The token they stood in for no longer holds anywhere; what is left of them
            // lapses by itself (and a rotation elsewhere ends them again).
            tracing::warn!("ending the console sessions: {e}");
        }
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Times>> {
        self.by_hash.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_is_open_until_it_ends_or_idles_out() {
        let sessions = Sessions::new(Duration::from_millis(200), LIFETIME);
        let a = sessions.create().await.unwrap();
        let b = sessions.create().await.unwrap();
        assert_ne!(a, b);
        assert!(sessions.touch(&a).await && sessions.touch(&b).await);
        assert!(!sessions.touch("gust_session_forged").await);
        sessions.end(&a).await.unwrap();
        assert!(!sessions.touch(&a).await);
        assert!(sessions.touch(&b).await);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!sessions.touch(&b).await, "idle past the limit");
        let c = sessions.create().await.unwrap();
        sessions.end_all().await;
        assert!(!sessions.touch(&c).await);
    }

    #[tokio::test]
    async fn a_busy_session_still_ends_at_its_lifetime() {
        let sessions = Sessions::new(Duration::from_secs(60), Duration::from_millis(300));
        let id = sessions.create().await.unwrap();
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(100));
            assert!(sessions.touch(&id).await);
        }
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            !sessions.touch(&id).await,
            "used all along, but past its lifetime"
        );
    }

    #[tokio::test]
    async fn only_hashes_are_kept() {
        let sessions = Sessions::default();
        let id = sessions.create().await.unwrap();
        let kept = sessions.lock();
        assert!(kept.contains_key(&hash(&id)));
        assert!(!kept.keys().any(|k| hex::encode(k).contains(&id[13..])));
    }
}
