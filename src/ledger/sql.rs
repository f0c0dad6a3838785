//! What both databases share: their error, the search and its SQL, column helpers.

/// Most records one search returns (the admin API asks for one more than a page).
pub const MAX_LIMIT: u32 = 1001;

/// A failed database operation. The message never holds a URL or a password.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("sqlite")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres: no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the database task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("ledger schema: {0}")]
    Schema(String),
    #[error("the ledger file's permissions")]
    Permissions(#[source] std::io::Error),
}

/// `GET /admin/tokens?…`: every filter must match; newest first, `limit` at most, older than
/// `before` (the cursor) when given.
#[derive(Clone, Debug, Default)]
pub struct Search {
    pub claims: Vec<(String, String)>,
    pub user: Option<String>,
    pub route: Option<String>,
    /// The SHA-256 of a token (lowercase hex): which record a token someone holds is.
    pub sha256: Option<String>,
    pub before: Option<i64>,
    pub limit: u32,
}

/// A bound value of a built query.
#[derive(Clone, Debug)]
pub enum Param {
    Text(String),
    Int(i64),
}

impl Search {
    /// The search as SQL selecting `columns`, with its parameters; `placeholder(n)` spells
    /// the n-th (1-based).
    pub fn sql(&self, columns: &str, placeholder: fn(usize) -> String) -> (String, Vec<Param>) {
        let mut sql = format!("SELECT {columns} FROM tokens WHERE TRUE");
        let mut params = Vec::new();
        let mut bind = |sql: &mut String, clause: &str, p: Param| {
            params.push(p);
            sql.push_str(&clause.replace('?', &placeholder(params.len())));
        };
        if let Some(user) = &self.user {
            bind(&mut sql, " AND user_id = ?", Param::Text(user.clone()));
        }
        if let Some(route) = &self.route {
            bind(&mut sql, " AND route = ?", Param::Text(route.clone()));
        }
        if let Some(sha256) = &self.sha256 {
            bind(&mut sql, " AND sha256 = ?", Param::Text(sha256.clone()));
        }
        if let Some(before) = self.before {
            bind(&mut sql, " AND id < ?", Param::Int(before));
        }
        for (name, value) in &self.claims {
            bind(&mut sql, " AND id IN (SELECT token_id FROM token_claims WHERE name = ?", Param::Text(name.clone()));
            bind(&mut sql, " AND value = ?)", Param::Text(value.clone()));
        }
        bind(&mut sql, " ORDER BY id DESC LIMIT ?", Param::Int(i64::from(self.limit.clamp(1, MAX_LIMIT))));
        (sql, params)
    }
}

/// Warns when the database was migrated by a newer tokengate: its migrations only add, so this
/// one goes on writing what it knows.
pub fn newer_schema(current: i64, known: &[(i64, &str)]) {
    let latest = known.last().map_or(0, |(v, _)| *v);
    if current > latest {
        tracing::warn!(
            current,
            latest,
            "ledger schema is newer than this tokengate knows; writing the columns it knows"
        );
    }
}

/// Parses a `claims` / `custom` column (JSON text).
pub fn json_column(text: Option<String>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_binds_every_filter_in_order() {
        let s = Search {
            claims: vec![("xid".into(), "x1".into())],
            user: Some("u".into()),
            route: None,
            sha256: None,
            before: Some(10),
            limit: 5000,
        };
        let (sql, params) = s.sql("id", |n| format!("${n}"));
        assert!(sql.contains("user_id = $1") && sql.contains("id < $2") && sql.contains("name = $3"), "{sql}");
        assert!(sql.ends_with("LIMIT $5"), "{sql}");
        assert!(matches!(params.last(), Some(Param::Int(1001))), "limit clamped");
    }
}
