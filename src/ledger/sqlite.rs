//! The SQLite ledger: one file, WAL journal, `synchronous=FULL` (a committed record survives a
//! crash of the process and of the machine). One writing connection, one reading connection,
//! both used from blocking threads.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::records::{Row, TokenRecord, UserRecord, UserSeen};
use super::sql::{json_column, DbError, Param, Search};

/// Versioned migrations, applied in order, each once (recorded in `tokengate_migrations`).
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE tokens (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        jti TEXT,
        route TEXT NOT NULL,
        token_name TEXT NOT NULL,
        kid TEXT NOT NULL,
        user_id TEXT,
        iat INTEGER NOT NULL,
        exp INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        token TEXT,
        claims TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX tokens_jti ON tokens (jti) WHERE jti IS NOT NULL;
    CREATE INDEX tokens_user ON tokens (user_id, id);
    CREATE INDEX tokens_route ON tokens (route, id);
    CREATE INDEX tokens_exp ON tokens (exp);
    CREATE INDEX tokens_sha256 ON tokens (sha256);
    CREATE TABLE token_claims (
        token_id INTEGER NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (name, value, token_id)
    ) WITHOUT ROWID;
    CREATE INDEX token_claims_token ON token_claims (token_id);
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        name TEXT,
        image TEXT,
        custom TEXT,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        tokens_issued INTEGER NOT NULL DEFAULT 0
    );",
)];

const INSERT_TOKEN: &str = "INSERT INTO tokens (jti, route, token_name, kid, user_id, iat, exp, sha256, token, claims)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
const INSERT_CLAIM: &str = "INSERT OR IGNORE INTO token_claims (token_id, name, value) VALUES (?1, ?2, ?3)";
const UPSERT_USER: &str = "INSERT INTO users (id, name, image, custom, first_seen, last_seen, tokens_issued)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
    ON CONFLICT (id) DO UPDATE SET
        name = COALESCE(excluded.name, users.name),
        image = COALESCE(excluded.image, users.image),
        custom = COALESCE(excluded.custom, users.custom),
        first_seen = MIN(users.first_seen, excluded.first_seen),
        last_seen = MAX(users.last_seen, excluded.last_seen),
        tokens_issued = users.tokens_issued + excluded.tokens_issued";
const COLUMNS: &str = "id, jti, route, token_name, kid, user_id, iat, exp, sha256, token, claims";
const SELECT_USER: &str =
    "SELECT id, name, image, custom, first_seen, last_seen, tokens_issued FROM users WHERE id = ?1";

/// How long a statement waits for a lock held by another process on the same file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Sqlite(Arc<Files>);

struct Files {
    path: PathBuf,
    writer: Mutex<Option<Connection>>,
    reader: Mutex<Option<Connection>>,
    /// The file (device, inode) the writer connection opened: a file deleted or replaced under
    /// it is noticed by comparing with what is at the path now.
    opened: Mutex<Option<(u64, u64)>>,
}

/// `ledger.path`'s directory must exist: SQLite creates the file, not the directories.
pub fn check_directory(path: &std::path::Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    if dir.is_dir() {
        Ok(())
    } else {
        Err(format!("the directory {} does not exist", dir.display()))
    }
}

/// The (device, inode) of the file at `path`, None when there is none.
#[cfg(unix)]
fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_path: &std::path::Path) -> Option<(u64, u64)> {
    None
}

/// Runs `f` on the connection in `slot`, opening it first if needed; a failure closes it, so
/// the next attempt starts from a fresh one (the file may have been replaced).
fn with<T>(
    slot: &Mutex<Option<Connection>>,
    open: impl FnOnce() -> Result<Connection, DbError>,
    f: impl FnOnce(&mut Connection) -> Result<T, DbError>,
) -> Result<T, DbError> {
    let mut guard: MutexGuard<'_, Option<Connection>> = slot.lock().unwrap_or_else(PoisonError::into_inner);
    let conn = match &mut *guard {
        Some(conn) => conn,
        empty => empty.insert(open()?),
    };
    let result = f(conn);
    if result.is_err() {
        *guard = None;
    }
    result
}

impl Sqlite {
    pub fn new(path: PathBuf) -> Self {
        Self(Arc::new(Files { path, writer: Mutex::new(None), reader: Mutex::new(None), opened: Mutex::new(None) }))
    }

    async fn write_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let files = self.0.clone();
        tokio::task::spawn_blocking(move || with(&files.writer, || files.open_writer(), f)).await?
    }

    /// See `Db::reopen_if_replaced`.
    pub async fn reopen_if_replaced(&self) -> Result<bool, DbError> {
        let files = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let opened = *files.opened.lock().unwrap_or_else(PoisonError::into_inner);
            match opened {
                Some(id) if file_id(&files.path) != Some(id) => {}
                // Not opened yet, or still the file it opened.
                _ => return Ok(false),
            }
            *files.writer.lock().unwrap_or_else(PoisonError::into_inner) = None;
            *files.reader.lock().unwrap_or_else(PoisonError::into_inner) = None;
            with(&files.writer, || files.open_writer(), migrate)?;
            Ok(true)
        })
        .await?
    }

    async fn read_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        let files = self.0.clone();
        tokio::task::spawn_blocking(move || with(&files.reader, || open_reader(&files.path), f)).await?
    }

    pub async fn migrate(&self) -> Result<(), DbError> {
        self.write_with(migrate).await
    }

    pub async fn write(&self, rows: &[Row], users: &[(UserSeen, i64)]) -> Result<(), DbError> {
        let (rows, users) = (rows.to_vec(), users.to_vec());
        self.write_with(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut insert = tx.prepare_cached(INSERT_TOKEN)?;
                let mut claim = tx.prepare_cached(INSERT_CLAIM)?;
                for r in &rows {
                    insert.execute(params![
                        r.jti,
                        r.route,
                        r.token_name,
                        r.kid,
                        r.user_id,
                        r.iat,
                        r.exp,
                        r.sha256,
                        r.token,
                        r.claims_json()
                    ])?;
                    let id = tx.last_insert_rowid();
                    for (name, value) in &r.claims {
                        claim.execute(params![id, name, value])?;
                    }
                }
                let mut upsert = tx.prepare_cached(UPSERT_USER)?;
                for (u, first_seen) in &users {
                    upsert.execute(params![u.id, u.name, u.image, u.custom, first_seen, u.seen, u.tokens])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub async fn purge(&self, before: i64, limit: u32) -> Result<u64, DbError> {
        self.write_with(move |conn| {
            let n = conn.execute(
                "DELETE FROM tokens WHERE id IN (SELECT id FROM tokens WHERE exp < ?1 ORDER BY exp LIMIT ?2)",
                params![before, limit],
            )?;
            Ok(n as u64)
        })
        .await
    }

    pub async fn token(&self, jti: &str) -> Result<Option<TokenRecord>, DbError> {
        let jti = jti.to_owned();
        self.read_with(move |conn| {
            let sql = format!("SELECT {COLUMNS} FROM tokens WHERE jti = ?1 ORDER BY id DESC LIMIT 1");
            Ok(conn.prepare_cached(&sql)?.query_row([jti], token_record).optional()?)
        })
        .await
    }

    pub async fn search(&self, search: Search) -> Result<Vec<TokenRecord>, DbError> {
        self.read_with(move |conn| {
            let (sql, params) = search.sql(COLUMNS, |n| format!("?{n}"));
            let values = params.into_iter().map(|p| match p {
                Param::Text(s) => rusqlite::types::Value::Text(s),
                Param::Int(i) => rusqlite::types::Value::Integer(i),
            });
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(values), token_record)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn user(&self, id: &str) -> Result<Option<UserRecord>, DbError> {
        let id = id.to_owned();
        self.read_with(move |conn| {
            let user = conn
                .prepare_cached(SELECT_USER)?
                .query_row([id], |r| {
                    Ok(UserRecord {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        image: r.get(2)?,
                        custom: json_column(r.get(3)?),
                        first_seen: r.get(4)?,
                        last_seen: r.get(5)?,
                        tokens_issued: r.get(6)?,
                    })
                })
                .optional()?;
            Ok(user)
        })
        .await
    }
}

impl Files {
    /// Opens the writer connection and remembers which file it opened.
    fn open_writer(&self) -> Result<Connection, DbError> {
        let conn = open_writer(&self.path)?;
        *self.opened.lock().unwrap_or_else(PoisonError::into_inner) = file_id(&self.path);
        Ok(conn)
    }
}

fn token_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        jti: r.get(1)?,
        route: r.get(2)?,
        token_name: r.get(3)?,
        kid: r.get(4)?,
        user: r.get(5)?,
        iat: r.get(6)?,
        exp: r.get(7)?,
        sha256: r.get(8)?,
        token: r.get(9)?,
        claims: json_column(r.get(10)?).unwrap_or_else(|| serde_json::json!({})),
    })
}

fn open_writer(path: &std::path::Path) -> Result<Connection, DbError> {
    owner_only(path).map_err(DbError::Permissions)?;
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// The ledger holds who was issued what (the Telesign job: phone numbers): its files are the
/// owner's alone whatever the umask. The database file is created 0600 before SQLite opens it,
/// and SQLite gives its `-wal` and `-shm` files the database file's mode; files an older
/// version left readable to others are tightened.
#[cfg(unix)]
fn owner_only(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path)?;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = std::path::PathBuf::from(name);
        match std::fs::metadata(&file) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
                tracing::info!(file = %file.display(), "ledger: file made readable by its owner only");
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn owner_only(_path: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}

fn open_reader(path: &std::path::Path) -> Result<Connection, DbError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS tokengate_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row("SELECT COALESCE(MAX(version), 0) FROM tokengate_migrations", [], |r| r.get(0))?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO tokengate_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, crate::clock::unix_now() as i64],
        )?;
        tracing::info!(version, "ledger: applied a migration");
    }
    tx.commit()?;
    super::sql::newer_schema(current, MIGRATIONS);
    Ok(())
}
