//! The PostgreSQL ledger, for a fleet: one writing and one reading connection per replica
//! (tokio-postgres pipelines concurrent queries on one connection), reconnected after a
//! failure; TLS through rustls with libpq's `sslmode` meanings (see `pg_tls`).
//! A batch is one transaction of two statements whatever its size (`UNNEST` of arrays).

use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::records::{Row, TokenRecord, UserRecord, UserSeen};
use super::sql::{json_column, DbError, Param, Search};
use crate::config::FieldError;

/// Versioned migrations, applied in order, each once (recorded in `tokengate_migrations`),
/// under an advisory lock so that replicas starting together do not race.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE tokens (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        jti TEXT,
        route TEXT NOT NULL,
        token_name TEXT NOT NULL,
        kid TEXT NOT NULL,
        user_id TEXT,
        iat BIGINT NOT NULL,
        exp BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        token TEXT,
        claims JSONB NOT NULL DEFAULT '{}'
    );
    CREATE INDEX tokens_jti ON tokens (jti) WHERE jti IS NOT NULL;
    CREATE INDEX tokens_user ON tokens (user_id, id);
    CREATE INDEX tokens_route ON tokens (route, id);
    CREATE INDEX tokens_exp ON tokens (exp);
    CREATE INDEX tokens_sha256 ON tokens (sha256);
    CREATE TABLE token_claims (
        token_id BIGINT NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (name, value, token_id)
    );
    CREATE INDEX token_claims_token ON token_claims (token_id);
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        name TEXT,
        image TEXT,
        custom JSONB,
        first_seen BIGINT NOT NULL,
        last_seen BIGINT NOT NULL,
        tokens_issued BIGINT NOT NULL DEFAULT 0
    );",
)];

/// Every token of a batch, and the claims each records, in one statement.
const INSERT_TOKENS: &str = "WITH t AS (
        INSERT INTO tokens (jti, route, token_name, kid, user_id, iat, exp, sha256, token, claims)
        SELECT j, r, n, k, u, ia, ex, sh, tk, cl::jsonb
        FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[],
                    $8::text[], $9::text[], $10::text[]) AS x(j, r, n, k, u, ia, ex, sh, tk, cl)
        RETURNING id, claims
    )
    INSERT INTO token_claims (token_id, name, value)
    SELECT t.id, c.key, c.value FROM t, jsonb_each_text(t.claims) AS c
    ON CONFLICT DO NOTHING";
const UPSERT_USERS: &str = "INSERT INTO users (id, name, image, custom, first_seen, last_seen, tokens_issued)
    SELECT i, n, im, c::jsonb, f, l, t
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::int8[])
        AS x(i, n, im, c, f, l, t)
    ON CONFLICT (id) DO UPDATE SET
        name = COALESCE(EXCLUDED.name, users.name),
        image = COALESCE(EXCLUDED.image, users.image),
        custom = COALESCE(EXCLUDED.custom, users.custom),
        first_seen = LEAST(users.first_seen, EXCLUDED.first_seen),
        last_seen = GREATEST(users.last_seen, EXCLUDED.last_seen),
        tokens_issued = users.tokens_issued + EXCLUDED.tokens_issued";
const COLUMNS: &str = "id, jti, route, token_name, kid, user_id, iat, exp, sha256, token, claims::text";

/// The advisory lock the migrations hold: "tokengate" in ASCII, as a number.
const MIGRATION_LOCK: i64 = 0x746f_6b65_6e67_6174;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses a `postgres://` URL (or libpq `key=value` text). The reason never quotes it.
pub fn parse(url: &str) -> Result<Config, String> {
    let (url, _) = super::pg_tls::split_sslmode(url)?;
    let config: Config = url.parse().map_err(|_| {
        "not a valid PostgreSQL URL: expected postgres://user:password@host:port/database?sslmode=disable|prefer|require|verify-full"
            .to_owned()
    })?;
    if config.get_hosts().is_empty() {
        return Err("names no host".to_owned());
    }
    Ok(config)
}

pub struct Postgres {
    config: Config,
    tls: MakeRustlsConnect,
    writer: Mutex<Option<Client>>,
    reader: Mutex<Option<Client>>,
}

impl Postgres {
    pub fn new(url: &str, ca_file: Option<&std::path::Path>) -> Result<Self, FieldError> {
        let mut config = parse(url).map_err(|reason| FieldError::new("ledger.url", reason))?;
        let (_, verify) = super::pg_tls::split_sslmode(url).map_err(|reason| FieldError::new("ledger.url", reason))?;
        let tls = super::pg_tls::client_config(verify, ca_file)
            .map_err(|e| FieldError::new("ledger.ca_file", crate::logging::chain(&e)))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("tokengate");
        }
        Ok(Self { config, tls: MakeRustlsConnect::new(tls), writer: Mutex::new(None), reader: Mutex::new(None) })
    }

    async fn connect(&self) -> Result<Client, DbError> {
        let connecting = self.config.connect(self.tls.clone());
        let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| DbError::Timeout(CONNECT_TIMEOUT))??;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %crate::logging::chain(&e), "ledger: PostgreSQL connection closed");
            }
        });
        Ok(client)
    }

    /// Runs `f` on the connection in `slot`, connecting first if needed, within
    /// `QUERY_TIMEOUT`; a failure drops the connection so the next attempt reconnects.
    async fn with<T>(
        &self,
        slot: &Mutex<Option<Client>>,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut guard = slot.lock().await;
        if guard.as_ref().is_some_and(Client::is_closed) {
            *guard = None;
        }
        let client = match &mut *guard {
            Some(client) => client,
            empty => empty.insert(self.connect().await?),
        };
        let result = match tokio::time::timeout(QUERY_TIMEOUT, f(client)).await {
            Ok(result) => result,
            Err(_) => Err(DbError::Timeout(QUERY_TIMEOUT)),
        };
        if result.is_err() {
            *guard = None;
        }
        result
    }

    pub async fn migrate(&self) -> Result<(), DbError> {
        self.with(&self.writer, async |client| {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS tokengate_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .await?;
            let current: i32 = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM tokengate_migrations", &[]).await?.try_get(0)?;
            for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > i64::from(current)) {
                tx.batch_execute(sql).await?;
                let version = i32::try_from(*version).unwrap_or(i32::MAX);
                let now = crate::clock::unix_now() as i64;
                tx.execute("INSERT INTO tokengate_migrations (version, applied_at) VALUES ($1, $2)", &[&version, &now])
                    .await?;
                tracing::info!(version, "ledger: applied a migration");
            }
            tx.commit().await?;
            super::sql::newer_schema(i64::from(current), MIGRATIONS);
            Ok(())
        })
        .await
    }

    pub async fn write(&self, rows: &[Row], users: &[(UserSeen, i64)]) -> Result<(), DbError> {
        let text = |f: fn(&Row) -> Option<&str>| rows.iter().map(f).collect::<Vec<_>>();
        let jti = text(|r| r.jti.as_deref());
        let route = text(|r| Some(&r.route));
        let name = text(|r| Some(&r.token_name));
        let kid = text(|r| Some(&r.kid));
        let user = text(|r| r.user_id.as_deref());
        let iat: Vec<i64> = rows.iter().map(|r| r.iat).collect();
        let exp: Vec<i64> = rows.iter().map(|r| r.exp).collect();
        let sha = text(|r| Some(&r.sha256));
        let token = text(|r| r.token.as_deref());
        let claims: Vec<String> = rows.iter().map(Row::claims_json).collect();
        let ids: Vec<&str> = users.iter().map(|(u, _)| u.id.as_str()).collect();
        let names: Vec<Option<&str>> = users.iter().map(|(u, _)| u.name.as_deref()).collect();
        let images: Vec<Option<&str>> = users.iter().map(|(u, _)| u.image.as_deref()).collect();
        let customs: Vec<Option<&str>> = users.iter().map(|(u, _)| u.custom.as_deref()).collect();
        let firsts: Vec<i64> = users.iter().map(|(_, first)| *first).collect();
        let lasts: Vec<i64> = users.iter().map(|(u, _)| u.seen).collect();
        let counts: Vec<i64> = users.iter().map(|(u, _)| u.tokens).collect();
        self.with(&self.writer, async |client| {
            let tx = client.transaction().await?;
            if !rows.is_empty() {
                tx.execute(INSERT_TOKENS, &[&jti, &route, &name, &kid, &user, &iat, &exp, &sha, &token, &claims])
                    .await?;
            }
            if !users.is_empty() {
                tx.execute(UPSERT_USERS, &[&ids, &names, &images, &customs, &firsts, &lasts, &counts]).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub async fn purge(&self, before: i64, limit: u32) -> Result<u64, DbError> {
        let limit = i64::from(limit);
        self.with(&self.writer, async |client| {
            let sql = "DELETE FROM tokens WHERE id IN (SELECT id FROM tokens WHERE exp < $1 ORDER BY exp LIMIT $2)";
            Ok(client.execute(sql, &[&before, &limit]).await?)
        })
        .await
    }

    pub async fn token(&self, jti: &str) -> Result<Option<TokenRecord>, DbError> {
        self.with(&self.reader, async |client| {
            let sql = format!("SELECT {COLUMNS} FROM tokens WHERE jti = $1 ORDER BY id DESC LIMIT 1");
            Ok(client.query_opt(&sql, &[&jti]).await?.as_ref().map(token_record).transpose()?)
        })
        .await
    }

    pub async fn search(&self, search: Search) -> Result<Vec<TokenRecord>, DbError> {
        let (sql, params) = search.sql(COLUMNS, |n| format!("${n}"));
        let params: Vec<Box<dyn ToSql + Sync + Send>> = params
            .into_iter()
            .map(|p| -> Box<dyn ToSql + Sync + Send> {
                match p {
                    Param::Text(s) => Box::new(s),
                    Param::Int(i) => Box::new(i),
                }
            })
            .collect();
        self.with(&self.reader, async |client| {
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            Ok(client.query(&sql, &refs).await?.iter().map(token_record).collect::<Result<_, _>>()?)
        })
        .await
    }

    pub async fn user(&self, id: &str) -> Result<Option<UserRecord>, DbError> {
        self.with(&self.reader, async |client| {
            let sql =
                "SELECT id, name, image, custom::text, first_seen, last_seen, tokens_issued FROM users WHERE id = $1";
            let Some(r) = client.query_opt(sql, &[&id]).await? else {
                return Ok(None);
            };
            Ok(Some(UserRecord {
                id: r.try_get(0)?,
                name: r.try_get(1)?,
                image: r.try_get(2)?,
                custom: json_column(r.try_get(3)?),
                first_seen: r.try_get(4)?,
                last_seen: r.try_get(5)?,
                tokens_issued: r.try_get(6)?,
            }))
        })
        .await
    }
}

fn token_record(r: &tokio_postgres::Row) -> Result<TokenRecord, tokio_postgres::Error> {
    Ok(TokenRecord {
        id: r.try_get(0)?,
        jti: r.try_get(1)?,
        route: r.try_get(2)?,
        token_name: r.try_get(3)?,
        kid: r.try_get(4)?,
        user: r.try_get(5)?,
        iat: r.try_get(6)?,
        exp: r.try_get(7)?,
        sha256: r.try_get(8)?,
        token: r.try_get(9)?,
        claims: json_column(r.try_get(10)?).unwrap_or_else(|| serde_json::json!({})),
    })
}
