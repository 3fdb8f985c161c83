//! Usage history and summaries. This module owns the order of history (newest first by
//! (at, seq)), its opaque cursors, and the exact i64 totals of summaries; it must never
//! page by offset (offsets shift while new events arrive) nor sum amounts outside i64.

use chrono::{DateTime, Days, NaiveDate, Utc};
use chrono_tz::Tz;
use credits_core::calendar::{day_start, local_date};
use sea_orm::sea_query::Condition;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, Statement,
};

use crate::entity::usage_events::{self, Column};
use crate::error::{StoreError, corrupt};
use crate::rows::*;
use crate::sql::Sql;
use crate::time::{ceil_us, from_us, to_us};
use crate::wallet::usage_row;
use crate::{MAX_LIST, MAX_PAGE, MAX_SUMMARY_DAYS, MAX_SUMMARY_GROUPS, Store, bound};

/// Cursor format version, so a later format can reject (not misread) old cursors.
const CURSOR_PREFIX: &str = "u1:";

/// Encodes the (at, seq) position of an event as an opaque cursor.
pub(crate) fn encode_cursor(at_us: i64, seq: i64) -> String {
    let plain = format!("{CURSOR_PREFIX}{at_us}:{seq}");
    plain.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn decode_cursor(cursor: &str) -> Result<(i64, i64), StoreError> {
    // ASCII first: the pairs below are byte slices.
    if !cursor.is_ascii() || !cursor.len().is_multiple_of(2) || cursor.len() > 128 {
        return Err(StoreError::InvalidCursor);
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&cursor[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| StoreError::InvalidCursor)?;
    let plain = String::from_utf8(bytes).map_err(|_| StoreError::InvalidCursor)?;
    let rest = plain
        .strip_prefix(CURSOR_PREFIX)
        .ok_or(StoreError::InvalidCursor)?;
    let (at, seq) = rest.split_once(':').ok_or(StoreError::InvalidCursor)?;
    Ok((
        at.parse().map_err(|_| StoreError::InvalidCursor)?,
        seq.parse().map_err(|_| StoreError::InvalidCursor)?,
    ))
}

fn filter_condition(wallet_id: &str, filter: &UsageFilter) -> Condition {
    let mut cond = Condition::all().add(Column::WalletId.eq(wallet_id));
    if let Some(thread) = &filter.thread_id {
        cond = cond.add(Column::ThreadId.eq(thread.as_str()));
    }
    if let Some(model) = &filter.model {
        cond = cond.add(Column::Model.eq(model.as_str()));
    }
    if let Some(member) = &filter.member_id {
        cond = cond.add(Column::MemberId.eq(member.as_str()));
    }
    if let Some(from) = filter.from {
        cond = cond.add(Column::AtUs.gte(ceil_us(from)));
    }
    if let Some(to) = filter.to {
        cond = cond.add(Column::AtUs.lt(ceil_us(to)));
    }
    cond
}

/// The same filter as raw SQL, for the aggregates.
fn push_filter(sql: &mut Sql, wallet_id: &str, filter: &UsageFilter) {
    sql.push(" WHERE u.wallet_id = ").bind(wallet_id.to_owned());
    if let Some(thread) = &filter.thread_id {
        sql.push(" AND u.thread_id = ").bind(thread.clone());
    }
    if let Some(model) = &filter.model {
        sql.push(" AND u.model = ").bind(model.clone());
    }
    if let Some(member) = &filter.member_id {
        sql.push(" AND u.member_id = ").bind(member.clone());
    }
    if let Some(from) = filter.from {
        sql.push(" AND u.at_us >= ").bind(ceil_us(from));
    }
    if let Some(to) = filter.to {
        sql.push(" AND u.at_us < ").bind(ceil_us(to));
    }
}

/// One of the usage queries, named for [`Store::explain_usage`]: the plan printed is the
/// plan of the very statement the query method runs.
#[derive(Clone, Debug)]
pub enum UsageQuery<'a> {
    /// [`Store::usage_history`].
    History {
        wallet_id: &'a str,
        filter: &'a UsageFilter,
        first: usize,
        after: Option<&'a str>,
    },
    /// [`Store::usage_summary`]: the span look-up (DAY only) and the aggregate.
    Summary {
        wallet_id: &'a str,
        filter: &'a UsageFilter,
        by: GroupBy,
        then_by: Option<GroupBy>,
        zone: Tz,
    },
    /// [`Store::thread_usage`].
    ThreadEvents {
        wallet_id: &'a str,
        thread_id: &'a str,
        limit: usize,
    },
    /// [`Store::thread_rank`].
    ThreadRank {
        model: &'a str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
}

impl Store {
    /// The database's plan for a usage query (`EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN`
    /// on PostgreSQL), one line per plan node, for the benchmark and the index tests.
    pub async fn explain_usage(&self, query: &UsageQuery<'_>) -> Result<Vec<String>, StoreError> {
        let backend = self.db_backend();
        let statements = match query {
            UsageQuery::History {
                wallet_id,
                filter,
                first,
                after,
            } => vec![self.history_statement(wallet_id, filter, *first, *after)?],
            UsageQuery::Summary {
                wallet_id,
                filter,
                by,
                then_by,
                zone,
            } => {
                let wants_day = *by == GroupBy::Day || *then_by == Some(GroupBy::Day);
                let mut out = Vec::new();
                let mut days = Vec::new();
                if wants_day {
                    out.push(span_statement(backend, wallet_id, filter));
                    // Without usage in range the summary stops after the span.
                    if let Some((lo, hi)) = self.usage_span(wallet_id, filter).await? {
                        days = day_table(*zone, lo, hi)?;
                    }
                }
                if !wants_day || !days.is_empty() {
                    out.push(summary_sql(
                        backend, wallet_id, filter, *by, *then_by, &days,
                    ));
                }
                out
            }
            UsageQuery::ThreadEvents {
                wallet_id,
                thread_id,
                limit,
            } => vec![thread_statement(
                backend, wallet_id, thread_id, None, *limit,
            )],
            UsageQuery::ThreadRank { model, from, to } => {
                vec![rank_statement(backend, model, *from, *to, ("", ""), 0)]
            }
        };
        self.explain(statements).await
    }

    /// The database's plan for `statements`, one line per plan node.
    pub(crate) async fn explain(
        &self,
        statements: Vec<Statement>,
    ) -> Result<Vec<String>, StoreError> {
        let (prefix, column) = match self.db_backend() {
            DbBackend::Postgres => ("EXPLAIN ", "QUERY PLAN"),
            _ => ("EXPLAIN QUERY PLAN ", "detail"),
        };
        let mut lines = Vec::new();
        for statement in statements {
            let explained = Statement {
                sql: format!("{prefix}{}", statement.sql),
                ..statement
            };
            for row in self
                .db
                .query_all_raw(explained)
                .await
                .map_err(StoreError::Db)?
            {
                lines.push(row.try_get::<String>("", column).map_err(StoreError::Db)?);
            }
        }
        Ok(lines)
    }

    /// One page of a wallet's usage, newest first by (at, seq), `first` ≤ [`MAX_PAGE`],
    /// continuing after `after` (a cursor from an earlier page). Cursors name a position,
    /// so pages stay stable while new (later) events arrive.
    pub async fn usage_history(
        &self,
        wallet_id: &str,
        filter: &UsageFilter,
        first: usize,
        after: Option<&str>,
    ) -> Result<UsagePage, StoreError> {
        bound("usage page size", first, MAX_PAGE)?;
        let rows = usage_events::Entity::find()
            .from_raw_sql(self.history_statement(wallet_id, filter, first, after)?)
            .all(&self.db)
            .await
            .map_err(StoreError::Db)?;
        let mut rows = rows;
        let has_next_page = rows.len() > first;
        rows.truncate(first);
        let end_cursor = rows.last().map(|r| encode_cursor(r.at_us, r.seq));
        Ok(UsagePage {
            events: rows.into_iter().map(usage_row).collect::<Result<_, _>>()?,
            end_cursor,
            has_next_page,
        })
    }

    fn history_statement(
        &self,
        wallet_id: &str,
        filter: &UsageFilter,
        first: usize,
        after: Option<&str>,
    ) -> Result<Statement, StoreError> {
        let mut cond = filter_condition(wallet_id, filter);
        if let Some(cursor) = after {
            let (at_us, seq) = decode_cursor(cursor)?;
            // `at ≤ cursor` is implied by the disjunction, but stated alone it is what
            // lets the database start the index range at the cursor: without it a deep
            // page walks every newer entry first.
            cond = cond.add(Column::AtUs.lte(at_us)).add(
                Condition::any().add(Column::AtUs.lt(at_us)).add(
                    Condition::all()
                        .add(Column::AtUs.eq(at_us))
                        .add(Column::Seq.lt(seq)),
                ),
            );
        }
        Ok(usage_events::Entity::find()
            .filter(cond)
            .order_by_desc(Column::AtUs)
            .order_by_desc(Column::Seq)
            // One more than asked tells whether another page exists.
            .limit(first as u64 + 1)
            .build(self.db_backend()))
    }

    /// The newest `limit` (≤ [`MAX_LIST`]) usage events of one thread of a wallet (of one
    /// pool member's, if given), oldest first: the input of a high-usage review's analysis
    /// (its loops and its last events are where the refund comes from).
    pub async fn thread_usage(
        &self,
        wallet_id: &str,
        thread_id: &str,
        member_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UsageRow>, StoreError> {
        bound("thread events", limit, MAX_LIST)?;
        usage_events::Entity::find()
            .from_raw_sql(thread_statement(
                self.db_backend(),
                wallet_id,
                thread_id,
                member_id,
                limit,
            ))
            .all(&self.db)
            .await
            .map_err(StoreError::Db)?
            .into_iter()
            .rev()
            .map(usage_row)
            .collect()
    }

    /// Non-empty groups of a wallet's usage (cost summed exactly in i64), ordered by key
    /// then sub-key. DAY groups by the local date of `at` in `zone`; day boundaries are
    /// computed here (SQL has no portable zone arithmetic) and joined as a table of
    /// [start, end) instants, so every total is still one SQL sum.
    pub async fn usage_summary(
        &self,
        wallet_id: &str,
        filter: &UsageFilter,
        by: GroupBy,
        then_by: Option<GroupBy>,
        zone: Tz,
    ) -> Result<Vec<SummaryRow>, StoreError> {
        let wants_day = by == GroupBy::Day || then_by == Some(GroupBy::Day);
        let days = if wants_day {
            match self.usage_span(wallet_id, filter).await? {
                Some((lo, hi)) => day_table(zone, lo, hi)?,
                // No usage in range: no groups.
                None => return Ok(Vec::new()),
            }
        } else {
            Vec::new()
        };

        let sql = summary_sql(self.db_backend(), wallet_id, filter, by, then_by, &days);
        let rows = self.db.query_all_raw(sql).await.map_err(StoreError::Db)?;
        bound("summary groups", rows.len(), MAX_SUMMARY_GROUPS)?;
        let mut groups = rows
            .into_iter()
            .map(|row| {
                Ok(SummaryRow {
                    key: row.try_get("", "k").map_err(StoreError::Db)?,
                    sub_key: row.try_get("", "s").map_err(StoreError::Db)?,
                    credits_ucr: total(
                        row.try_get("", "hi").map_err(StoreError::Db)?,
                        row.try_get("", "lo").map_err(StoreError::Db)?,
                    ),
                    events: row.try_get("", "n").map_err(StoreError::Db)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        groups.sort_by(|a, b| (&a.key, &a.sub_key).cmp(&(&b.key, &b.sub_key)));
        Ok(groups)
    }

    /// Instants of the first and last usage matching the filter.
    async fn usage_span(
        &self,
        wallet_id: &str,
        filter: &UsageFilter,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let row = self
            .db
            .query_one_raw(span_statement(self.db_backend(), wallet_id, filter))
            .await
            .map_err(StoreError::Db)?;
        let Some(row) = row else { return Ok(None) };
        let lo: Option<i64> = row.try_get("", "lo").map_err(StoreError::Db)?;
        let hi: Option<i64> = row.try_get("", "hi").map_err(StoreError::Db)?;
        Ok(lo.zip(hi))
    }

    /// Where `cost_ucr` stands among the platform's threads (wallet, thread id) of
    /// `model` in [from, to): a thread's total is the sum of its usage of that model in
    /// the window (SPEC 7 `costPercentile`). Aggregated in SQL: no rows are returned.
    ///
    /// `thread` (wallet id, thread id) is the one being ranked, counted at `cost_ucr` (for a
    /// plain pool member, their share of it) and never at its stored total, so that it is
    /// always "at or below" itself.
    pub async fn thread_rank(
        &self,
        model: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        thread: (&str, &str),
        cost_ucr: i64,
    ) -> Result<ThreadRank, StoreError> {
        let statement = rank_statement(self.db_backend(), model, from, to, thread, cost_ucr);
        let row = self
            .db
            .query_one_raw(statement)
            .await
            .map_err(StoreError::Db)?
            .ok_or_else(|| corrupt("aggregate returned no row"))?;
        let threads: i64 = row.try_get("", "threads").map_err(StoreError::Db)?;
        let below: i64 = row.try_get("", "below").map_err(StoreError::Db)?;
        // The others, then the thread itself.
        Ok(ThreadRank {
            threads: u64::try_from(threads).map_err(corrupt)? + 1,
            at_or_below: u64::try_from(below).map_err(corrupt)? + 1,
        })
    }
}

fn thread_statement(
    backend: DbBackend,
    wallet_id: &str,
    thread_id: &str,
    member_id: Option<&str>,
    limit: usize,
) -> Statement {
    usage_events::Entity::find()
        .filter(Column::WalletId.eq(wallet_id))
        .filter(Column::ThreadId.eq(thread_id))
        .apply_if(member_id, |q, m| q.filter(Column::MemberId.eq(m)))
        .order_by_desc(Column::AtUs)
        .order_by_desc(Column::Seq)
        .limit(limit as u64)
        .build(backend)
}

/// First and last instant matching the filter, as two index probes: SQLite applies its
/// MIN/MAX shortcut only to a query with a single MIN or MAX, and otherwise reads every
/// matching entry.
fn span_statement(backend: DbBackend, wallet_id: &str, filter: &UsageFilter) -> Statement {
    let mut sql = Sql::new(backend);
    for (i, order) in ["ASC", "DESC"].into_iter().enumerate() {
        sql.push(if i == 0 { "SELECT (" } else { ", (" })
            .push("SELECT u.at_us FROM usage_events u");
        push_filter(&mut sql, wallet_id, filter);
        sql.push(" ORDER BY u.at_us ")
            .push(order)
            .push(" LIMIT 1)")
            .push(if i == 0 { " AS lo" } else { " AS hi" });
    }
    sql.build()
}

/// The covering index (see migration 4) a summary limited only by time reads: one range
/// of it, or the wallet's whole slice, without visiting the table. SQLite's planner
/// prefers an index that spares the GROUP BY a sort even when that costs a table lookup
/// per row (3× slower on 1M rows), so it is named there; PostgreSQL weighs this itself.
fn summary_index(backend: DbBackend, filter: &UsageFilter) -> &'static str {
    let time_only =
        filter.thread_id.is_none() && filter.model.is_none() && filter.member_id.is_none();
    match backend {
        DbBackend::Sqlite if time_only => " INDEXED BY usage_wallet_at_cover",
        _ => "",
    }
}

fn summary_sql(
    backend: DbBackend,
    wallet_id: &str,
    filter: &UsageFilter,
    by: GroupBy,
    then_by: Option<GroupBy>,
    days: &[(NaiveDate, i64, i64)],
) -> Statement {
    let wants_day = by == GroupBy::Day || then_by == Some(GroupBy::Day);
    let mut sql = Sql::new(backend);
    if wants_day {
        // Literals, not binds: dates and integers this function produced, and a
        // VALUES list of thousands of binds would hit parameter limits.
        sql.push("WITH days (day, lo, hi) AS (VALUES ");
        for (i, (day, lo, hi)) in days.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.push(&format!("('{day}', {lo}, {hi})"));
        }
        sql.push(") ");
    }
    let key = group_expr(by);
    let sub = then_by.map(group_expr);
    sql.push("SELECT ").push(key).push(" AS k, ");
    match sub {
        Some(sub) => sql.push(sub).push(" AS s, "),
        None => sql.push("NULL AS s, "),
    };
    sql.push(SUM_COST_PARTS)
        .push(", CAST(COUNT(*) AS BIGINT) AS n");
    sql.push(" FROM usage_events u")
        .push(summary_index(backend, filter));
    if wants_day {
        sql.push(" JOIN days d ON u.at_us >= d.lo AND u.at_us < d.hi");
    }
    push_filter(&mut sql, wallet_id, filter);
    sql.push(" GROUP BY ").push(key);
    if let Some(sub) = sub {
        sql.push(", ").push(sub);
    }
    // Sorted by the caller, by bytes: PostgreSQL's collation may order text differently
    // from SQLite's. The limit only detects an oversized answer.
    sql.push(&format!(" LIMIT {}", MAX_SUMMARY_GROUPS + 1));
    sql.build()
}

fn rank_statement(
    backend: DbBackend,
    model: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    (wallet_id, thread_id): (&str, &str),
    cost_ucr: i64,
) -> Statement {
    // A thread's total, hi * 2^32 + lo in two parts (see `SUM_COST_PARTS`), carried so that
    // lo < 2^32, compares with the cost's own parts without leaving i64.
    let (cost_hi, cost_lo) = (cost_ucr >> 32, cost_ucr & 0xffff_ffff);
    let mut sql = Sql::new(backend);
    sql.push("SELECT CAST(COUNT(*) AS BIGINT) AS threads, ")
        .push("CAST(COALESCE(SUM(CASE WHEN t.hi + t.lo / 4294967296 < ")
        .bind(cost_hi)
        .push(" OR (t.hi + t.lo / 4294967296 = ")
        .bind(cost_hi)
        .push(" AND t.lo % 4294967296 <= ")
        .bind(cost_lo)
        .push(") THEN 1 ELSE 0 END), 0) AS BIGINT) AS below FROM (")
        .push("SELECT u.wallet_id, u.thread_id, ")
        .push(SUM_COST_PARTS)
        .push(" FROM usage_events u")
        // SQLite's statistics can make it skip-scan (wallet, model, …) wallet by wallet.
        .push(match backend {
            DbBackend::Sqlite => " INDEXED BY usage_model_at_cover",
            _ => "",
        })
        .push(" WHERE u.model = ")
        .bind(model.to_owned())
        .push(" AND u.at_us >= ")
        .bind(ceil_us(from))
        .push(" AND u.at_us < ")
        .bind(ceil_us(to))
        .push(" GROUP BY u.wallet_id, u.thread_id) t WHERE NOT (t.wallet_id = ")
        .bind(wallet_id.to_owned())
        .push(" AND t.thread_id = ")
        .bind(thread_id.to_owned())
        .push(")");
    sql.build()
}

/// The sum of `u.cost_ucr` (never negative) as `hi` * 2^32 + `lo`, each part a sum that
/// stays within i64 for up to 2^31 rows, where the plain sum of costs near i64's largest
/// overflows after two (SQLite fails the query; PostgreSQL its cast to BIGINT).
const SUM_COST_PARTS: &str = "CAST(SUM(u.cost_ucr / 4294967296) AS BIGINT) AS hi, \
    CAST(SUM(u.cost_ucr % 4294967296) AS BIGINT) AS lo";

/// The total of [`SUM_COST_PARTS`]; one past i64 is shown at i64's largest.
fn total(hi: i64, lo: i64) -> i64 {
    let exact = (i128::from(hi) << 32) + i128::from(lo);
    i64::try_from(exact).unwrap_or(i64::MAX)
}

fn group_expr(by: GroupBy) -> &'static str {
    match by {
        GroupBy::Model => "u.model",
        GroupBy::Thread => "u.thread_id",
        GroupBy::Member => "COALESCE(u.member_id, '')",
        GroupBy::Day => "d.day",
    }
}

/// (date, start µs, end µs) of every local date from the one containing `lo_us` to the
/// one containing `hi_us`.
fn day_table(zone: Tz, lo_us: i64, hi_us: i64) -> Result<Vec<(NaiveDate, i64, i64)>, StoreError> {
    let first = local_date(zone, from_us(lo_us)?);
    let last = local_date(zone, from_us(hi_us)?);
    let span = (last - first).num_days().max(0) as usize + 1;
    bound("days in a summary", span, MAX_SUMMARY_DAYS)?;
    let mut starts = Vec::with_capacity(span + 1);
    let mut date = first;
    // One date past `last` closes its row; two, in case that one was skipped.
    while date
        <= last
            .checked_add_days(Days::new(2))
            .ok_or_else(|| corrupt("date"))?
    {
        starts.push((date, to_us(day_start(zone, date))));
        date = date
            .checked_add_days(Days::new(1))
            .ok_or_else(|| corrupt("date"))?;
    }
    // A date the zone skipped whole (Pacific/Apia, 2011-12-30) starts where the next one
    // does: it has no row.
    Ok(starts
        .windows(2)
        .filter(|w| w[0].0 <= last && w[0].1 < w[1].1)
        .map(|w| (w[0].0, w[0].1, w[1].1))
        .collect())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = encode_cursor(1_700_000_000_000_000, 42);
        assert_eq!(decode_cursor(&c).unwrap(), (1_700_000_000_000_000, 42));
        for bad in ["", "zz", "7531", &encode_cursor(1, 2)[2..]] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn day_table_handles_gaps_and_skipped_dates() {
        let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day).unwrap();
        // Santiago: clocks jump 00:00 -> 01:00 on 2024-09-08.
        let table = day_table(
            chrono_tz::America::Santiago,
            to_us(Utc.with_ymd_and_hms(2024, 9, 7, 12, 0, 0).unwrap()),
            to_us(Utc.with_ymd_and_hms(2024, 9, 8, 12, 0, 0).unwrap()),
        )
        .unwrap();
        assert_eq!(table[1].0, d(2024, 9, 8));
        assert_eq!(
            from_us(table[1].1).unwrap().to_rfc3339(),
            "2024-09-08T04:00:00+00:00"
        );
        // Apia skipped 2011-12-30 entirely.
        let table = day_table(
            chrono_tz::Pacific::Apia,
            to_us(Utc.with_ymd_and_hms(2011, 12, 29, 12, 0, 0).unwrap()),
            to_us(Utc.with_ymd_and_hms(2011, 12, 30, 12, 0, 0).unwrap()),
        )
        .unwrap();
        // 29th, then 31st: the rows tile time without gaps.
        assert_eq!(table.len(), 2);
        assert_eq!((table[0].0, table[1].0), (d(2011, 12, 29), d(2011, 12, 31)));
        assert_eq!(table[0].2, table[1].1);
    }
}
