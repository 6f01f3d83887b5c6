//! Host settings in SQLite: the same table as PostgreSQL's, so the interface is one. With
//! one host per file there is no race to settle; the statements are still the atomic ones.

use rusqlite::{OptionalExtension, params};

use super::{Sqlite, internal};
use crate::StoreError;

impl Sqlite {
    pub(crate) fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.with(|conn| {
            conn.query_row("SELECT value FROM settings WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(internal)
        })
    }

    pub(crate) fn put_setting_if_absent(
        &self,
        name: &str,
        value: &str,
    ) -> Result<String, StoreError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
                params![name, value],
            )
            .map_err(internal)?;
            tx.query_row("SELECT value FROM settings WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .map_err(internal)
        })
    }

    pub(crate) fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO settings (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![name, value],
            )
            .map(drop)
            .map_err(internal)
        })
    }
}
