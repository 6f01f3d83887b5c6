//! Host settings: named text values every host on the database shares (the admin token's
//! hash, so a token set on one host signs in on all of them).

use crate::{Backend, Store, StoreError, blocking, detached};

impl Store {
    /// The value of setting `name`, if it was set.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_owned();
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.setting(&name)).await,
            Backend::Postgres(db) => {
                detached(db, move |db| async move { db.setting(&name).await }).await
            }
        }
    }

    /// Sets `name` to `value` unless it has a value already, and answers the value stored:
    /// of hosts starting together, the first one's value wins and every host gets it.
    ///
    /// # Errors
    /// When the database fails.
    pub async fn put_setting_if_absent(
        &self,
        name: &str,
        value: &str,
    ) -> Result<String, StoreError> {
        let (name, value) = (name.to_owned(), value.to_owned());
        match &self.backend {
            Backend::Sqlite(db) => {
                blocking(db, move |db| db.put_setting_if_absent(&name, &value)).await
            }
            Backend::Postgres(db) => {
                detached(db, move |db| async move {
                    db.put_setting_if_absent(&name, &value).await
                })
                .await
            }
        }
    }

    /// Sets `name` to `value`, replacing any value (other hosts hear of it:
    /// [`crate::Change::Setting`]).
    ///
    /// # Errors
    /// When the database fails.
    pub async fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let (name, value) = (name.to_owned(), value.to_owned());
        match &self.backend {
            Backend::Sqlite(db) => blocking(db, move |db| db.set_setting(&name, &value)).await,
            Backend::Postgres(db) => {
                detached(
                    db,
                    move |db| async move { db.set_setting(&name, &value).await },
                )
                .await
            }
        }
    }
}
