//! Console sessions shared by every host: the hash of each session id, when it was opened
//! and when it was last used. Every check is one statement, so a sign-out or the end of all
//! sessions (a token rotation) holds on every host at once.

use super::{Postgres, exec, row};
use crate::StoreError;
use crate::sessions::SessionTimes;

impl Postgres {
    pub(crate) async fn create_session(
        &self,
        hash: &str,
        now: i64,
        times: SessionTimes,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        // Ended sessions go first, then — past the bound — the least recently used, so a
        // script signing in in a loop cannot grow the table without bound.
        exec(
            &client,
            "DELETE FROM console_sessions WHERE seen_at <= $1 OR opened_at <= $2",
            &[&(now - times.idle_ms), &(now - times.lifetime_ms)],
        )
        .await?;
        exec(
            &client,
            "INSERT INTO console_sessions (hash, opened_at, seen_at) VALUES ($1, $2, $2)
             ON CONFLICT (hash) DO NOTHING",
            &[&hash, &now],
        )
        .await?;
        let max = i64::try_from(times.max).unwrap_or(i64::MAX);
        exec(
            &client,
            "DELETE FROM console_sessions WHERE hash IN (
                SELECT hash FROM console_sessions ORDER BY seen_at DESC OFFSET $1)",
            &[&max],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn touch_session(
        &self,
        hash: &str,
        now: i64,
        times: SessionTimes,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let found = row(
            &client,
            "UPDATE console_sessions SET seen_at = GREATEST(seen_at, $2)
             WHERE hash = $1 AND seen_at > $3 AND opened_at > $4
             RETURNING 1",
            &[
                &hash,
                &now,
                &(now - times.idle_ms),
                &(now - times.lifetime_ms),
            ],
        )
        .await?;
        Ok(found.is_some())
    }

    pub(crate) async fn end_sessions(&self, hash: Option<&str>) -> Result<(), StoreError> {
        let client = self.client().await?;
        match hash {
            Some(hash) => {
                exec(
                    &client,
                    "DELETE FROM console_sessions WHERE hash = $1",
                    &[&hash],
                )
                .await?
            }
            None => exec(&client, "DELETE FROM console_sessions", &[]).await?,
        };
        Ok(())
    }
}
