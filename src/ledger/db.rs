//! The two databases behind one interface.

use super::postgres::Postgres;
use super::records::{Row, TokenRecord, UserRecord, UserSeen};
use super::sql::{DbError, Search};
use super::sqlite::Sqlite;

pub enum Db {
    Sqlite(Sqlite),
    Postgres(Box<Postgres>),
}

impl Db {
    /// Opens the database and applies the migrations it lacks.
    pub async fn migrate(&self) -> Result<(), DbError> {
        match self {
            Self::Sqlite(db) => db.migrate().await,
            Self::Postgres(db) => db.migrate().await,
        }
    }

    /// Notices a database file that was deleted or replaced under the open connection, and
    /// opens (creating and migrating) the one at the path again: true when it had to.
    pub async fn reopen_if_replaced(&self) -> Result<bool, DbError> {
        match self {
            Self::Sqlite(db) => db.reopen_if_replaced().await,
            Self::Postgres(_) => Ok(false),
        }
    }

    /// Writes `rows` and upserts `users` (merged, sorted by id) in one transaction.
    pub async fn write(&self, rows: &[Row], users: &[(UserSeen, i64)]) -> Result<(), DbError> {
        match self {
            Self::Sqlite(db) => db.write(rows, users).await,
            Self::Postgres(db) => db.write(rows, users).await,
        }
    }

    /// Deletes up to `limit` records whose `exp` is before `before`; returns how many.
    pub async fn purge(&self, before: i64, limit: u32) -> Result<u64, DbError> {
        match self {
            Self::Sqlite(db) => db.purge(before, limit).await,
            Self::Postgres(db) => db.purge(before, limit).await,
        }
    }

    /// The newest record with this `jti`.
    pub async fn token(&self, jti: &str) -> Result<Option<TokenRecord>, DbError> {
        match self {
            Self::Sqlite(db) => db.token(jti).await,
            Self::Postgres(db) => db.token(jti).await,
        }
    }

    pub async fn search(&self, search: Search) -> Result<Vec<TokenRecord>, DbError> {
        match self {
            Self::Sqlite(db) => db.search(search).await,
            Self::Postgres(db) => db.search(search).await,
        }
    }

    pub async fn user(&self, id: &str) -> Result<Option<UserRecord>, DbError> {
        match self {
            Self::Sqlite(db) => db.user(id).await,
            Self::Postgres(db) => db.user(id).await,
        }
    }
}
