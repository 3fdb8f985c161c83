//! Commit notices between nodes. On PostgreSQL every transaction that moves wallets also
//! sends one `NOTIFY` on [`CHANNEL`] naming each wallet and the seq it reached; PostgreSQL
//! delivers it to every listening connection when the transaction commits, and never if it
//! rolls back. A node that holds one of those wallets reloads it and publishes what it
//! missed. Changes of a team member, of custom plans and of reviews are announced the
//! same way. On SQLite there is one process, so there is nobody to tell.

use sea_orm::sqlx::postgres::PgListener;
use sea_orm::{ConnectionTrait, DbBackend, DbErr};

use crate::sql::Sql;
use crate::{Backend, Store, StoreError};

/// The PostgreSQL channel commit notices travel on.
pub const CHANNEL: &str = "credits_commits";
/// PostgreSQL refuses payloads of 8,000 bytes or more; larger groups are split.
const MAX_PAYLOAD: usize = 7_900;

/// What a [`CommitListener`] hears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// These wallets' ledgers reached these seqs in a committed transaction (on any node,
    /// this one included).
    Committed(Vec<(String, u64)>),
    /// A team member's limits or membership changed (team id, user id).
    Member(String, String),
    /// A custom plan was created or changed: read the plans again.
    Plans,
    /// A review was resolved (its id).
    Review(String),
    /// The listening connection was lost and re-established: notices sent in between are
    /// gone, so every wallet held may be behind.
    Gap,
    /// A node's keepalive ([`Store::ping_listeners`]): the connection still delivers.
    Ping,
}

/// Sends one notice naming `moved` (wallet id, new seq) inside the caller's transaction.
pub(crate) async fn notify<C: ConnectionTrait>(
    conn: &C,
    backend: Backend,
    moved: &[(&str, u64)],
) -> Result<(), DbErr> {
    if backend != Backend::Postgres || moved.is_empty() {
        return Ok(());
    }
    for payload in payloads(moved) {
        send(conn, payload).await?;
    }
    Ok(())
}

/// One `pg_notify` on [`CHANNEL`], delivered when the caller's transaction commits.
async fn send<C: ConnectionTrait>(conn: &C, payload: String) -> Result<(), DbErr> {
    let mut sql = Sql::new(DbBackend::Postgres);
    sql.push("SELECT pg_notify(")
        .bind(CHANNEL)
        .push(", ")
        .bind(payload)
        .push(")");
    conn.execute_raw(sql.build()).await?;
    Ok(())
}

/// Sends one notice that a team member's limits or membership changed, inside the
/// caller's transaction.
pub(crate) async fn notify_member<C: ConnectionTrait>(
    conn: &C,
    backend: Backend,
    team_id: &str,
    user_id: &str,
) -> Result<(), DbErr> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    send(
        conn,
        serde_json::json!({ "member": [team_id, user_id] }).to_string(),
    )
    .await
}

#[derive(serde::Deserialize)]
struct MemberNotice {
    member: (String, String),
}

/// Sends one notice that the plans changed, inside the caller's transaction.
pub(crate) async fn notify_plans<C: ConnectionTrait>(
    conn: &C,
    backend: Backend,
) -> Result<(), DbErr> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    send(conn, PLANS_NOTICE.to_owned()).await
}

const PLANS_NOTICE: &str = r#"{"plans":true}"#;
const PING_NOTICE: &str = r#"{"ping":true}"#;

/// Sends one notice that a review changed, inside the caller's transaction.
pub(crate) async fn notify_review<C: ConnectionTrait>(
    conn: &C,
    backend: Backend,
    review_id: &str,
) -> Result<(), DbErr> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    send(conn, serde_json::json!({ "review": review_id }).to_string()).await
}

#[derive(serde::Deserialize)]
struct ReviewNotice {
    review: String,
}

/// JSON arrays of `[wallet id, seq]` pairs, each under [`MAX_PAYLOAD`] bytes.
fn payloads(moved: &[(&str, u64)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Vec<(&str, u64)> = Vec::new();
    let mut size = 2;
    for &(id, seq) in moved {
        // Generous per pair: quotes, escapes of a hostile id, the number, separators.
        let pair = 2 * id.len() + 30;
        if !current.is_empty() && size + pair > MAX_PAYLOAD {
            out.push(serde_json::to_string(&current).expect("pairs serialize"));
            current.clear();
            size = 2;
        }
        current.push((id, seq));
        size += pair;
    }
    if !current.is_empty() {
        out.push(serde_json::to_string(&current).expect("pairs serialize"));
    }
    out
}

/// A dedicated connection listening for commit notices.
#[derive(Debug)]
pub struct CommitListener {
    inner: PgListener,
}

impl CommitListener {
    /// The next notice. A payload this crate did not write is skipped.
    pub async fn next(&mut self) -> Result<Notice, StoreError> {
        loop {
            let Some(n) = self.inner.try_recv().await.map_err(db)? else {
                return Ok(Notice::Gap);
            };
            if let Ok(moved) = serde_json::from_str::<Vec<(String, u64)>>(n.payload()) {
                return Ok(Notice::Committed(moved));
            }
            if let Ok(m) = serde_json::from_str::<MemberNotice>(n.payload()) {
                return Ok(Notice::Member(m.member.0, m.member.1));
            }
            if let Ok(r) = serde_json::from_str::<ReviewNotice>(n.payload()) {
                return Ok(Notice::Review(r.review));
            }
            if n.payload() == PLANS_NOTICE {
                return Ok(Notice::Plans);
            }
            if n.payload() == PING_NOTICE {
                return Ok(Notice::Ping);
            }
        }
    }
}

fn db(e: sea_orm::sqlx::Error) -> StoreError {
    StoreError::Db(DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e.into())))
}

impl Store {
    /// Starts listening for other transactions' commits; `None` on SQLite.
    pub async fn listen_commits(&self) -> Result<Option<CommitListener>, StoreError> {
        if self.backend() != Backend::Postgres {
            return Ok(None);
        }
        let pool = self.connection().get_postgres_connection_pool();
        let mut inner = PgListener::connect_with(pool).await.map_err(db)?;
        inner.listen(CHANNEL).await.map_err(db)?;
        Ok(Some(CommitListener { inner }))
    }

    /// Sends a keepalive notice to every listening node, this one included. A listening
    /// connection that a network device dropped without a word hears nothing: a node that
    /// hears no notice for a while listens again (and the traffic keeps idle NAT entries
    /// alive). Nothing on SQLite.
    pub async fn ping_listeners(&self) -> Result<(), StoreError> {
        if self.backend() != Backend::Postgres {
            return Ok(());
        }
        send(self.connection(), PING_NOTICE.to_owned())
            .await
            .map_err(StoreError::Db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_split_under_the_limit_and_keep_every_pair() {
        let ids: Vec<String> = (0..2_000).map(|i| format!("wallet-{i:08}")).collect();
        let moved: Vec<(&str, u64)> = ids.iter().map(|s| (s.as_str(), 7)).collect();
        let out = payloads(&moved);
        assert!(out.len() > 1);
        let mut back = Vec::new();
        for p in &out {
            assert!(p.len() < MAX_PAYLOAD, "{} bytes", p.len());
            back.extend(serde_json::from_str::<Vec<(String, u64)>>(p).unwrap());
        }
        let expected: Vec<(String, u64)> = ids.into_iter().map(|s| (s, 7)).collect();
        assert_eq!(back, expected);
    }
}
