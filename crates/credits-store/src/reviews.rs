//! High-usage reviews. This module owns their rows and the "one open review per thread"
//! rule as a unique index; it never analyses usage or grants credits. An approval is
//! claimed on the review row first, then granted (the wallet's fenced commit: one lot per
//! review), then marked CREDITED, so one decision wins however many admins race.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use crate::entity::reviews;
use crate::error::StoreError;
use crate::rows::*;
use crate::time::{from_us, opt_from_us, to_us};
use crate::{MAX_LIST, Store, bound};

fn review_model(r: &ReviewRow) -> reviews::Model {
    reviews::Model {
        id: r.id.clone(),
        wallet_id: r.wallet_id.clone(),
        thread_id: r.thread_id.clone(),
        reporter_id: r.reporter_id.clone(),
        task_description: r.task_description.clone(),
        model: r.model.clone(),
        preview_status: r.preview_status.clone(),
        thread_length: r.thread_length,
        context_size: r.context_size,
        status: r.status.as_str().to_owned(),
        findings: r.findings_json.clone(),
        suggested_refund_ucr: r.suggested_refund_ucr,
        credited_ucr: r.credited_ucr,
        note: r.note.clone(),
        grant_id: r.grant_id.clone(),
        created_us: to_us(r.created_at),
        resolved_us: r.resolved_at.map(to_us),
    }
}

pub(crate) fn review_row(m: reviews::Model) -> Result<ReviewRow, StoreError> {
    Ok(ReviewRow {
        status: ReviewStatus::parse(&m.status)?,
        created_at: from_us(m.created_us)?,
        resolved_at: opt_from_us(m.resolved_us)?,
        id: m.id,
        wallet_id: m.wallet_id,
        thread_id: m.thread_id,
        reporter_id: m.reporter_id,
        task_description: m.task_description,
        model: m.model,
        preview_status: m.preview_status,
        thread_length: m.thread_length,
        context_size: m.context_size,
        findings_json: m.findings,
        suggested_refund_ucr: m.suggested_refund_ucr,
        credited_ucr: m.credited_ucr,
        note: m.note,
        grant_id: m.grant_id,
    })
}

impl Store {
    /// Stores a new review, unless the thread already has a SUBMITTED one: then that one
    /// is returned and nothing is written (SPEC 7).
    pub async fn insert_review(&self, review: &ReviewRow) -> Result<ReviewInsert, StoreError> {
        let inserted = reviews::Entity::insert_many(crate::entity::active([review_model(review)]))
            .exec_without_returning(&self.db)
            .await
            .map_err(StoreError::from_db);
        match inserted {
            Ok(_) => Ok(ReviewInsert::New),
            // The partial unique index caught a racing report: answer with the winner.
            Err(StoreError::Duplicate(what)) => {
                match self
                    .open_review(&review.wallet_id, &review.thread_id)
                    .await?
                {
                    Some(open) => Ok(ReviewInsert::Open(Box::new(open))),
                    None => Err(StoreError::Duplicate(what)),
                }
            }
            Err(err) => Err(err),
        }
    }

    pub async fn review(&self, id: &str) -> Result<Option<ReviewRow>, StoreError> {
        reviews::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?
            .map(review_row)
            .transpose()
    }

    /// The SUBMITTED review of a thread, if any.
    pub async fn open_review(
        &self,
        wallet_id: &str,
        thread_id: &str,
    ) -> Result<Option<ReviewRow>, StoreError> {
        reviews::Entity::find()
            .filter(reviews::Column::WalletId.eq(wallet_id))
            .filter(reviews::Column::ThreadId.eq(thread_id))
            .filter(reviews::Column::Status.eq(ReviewStatus::Submitted.as_str()))
            .one(&self.db)
            .await
            .map_err(StoreError::Db)?
            .map(review_row)
            .transpose()
    }

    /// The CREDITED reviews of a thread (a refund never covers events one of them already
    /// covered), newest first, at most [`MAX_LIST`]: the newest cover the most, so those
    /// are the ones kept (found by review: the oldest were, and with more than the bound
    /// the events the newest had refunded were suggested again).
    pub async fn credited_reviews_of_thread(
        &self,
        wallet_id: &str,
        thread_id: &str,
    ) -> Result<Vec<ReviewRow>, StoreError> {
        let wanted = Condition::all()
            .add(reviews::Column::WalletId.eq(wallet_id))
            .add(reviews::Column::ThreadId.eq(thread_id))
            .add(reviews::Column::Status.eq(ReviewStatus::Credited.as_str()));
        self.reviews_where(wanted, MAX_LIST, true).await
    }

    /// Reviews matching `wanted`, at most `limit` (≤ [`MAX_LIST`]): the oldest, oldest
    /// first, or the newest, newest first.
    pub(crate) async fn reviews_where(
        &self,
        wanted: Condition,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<ReviewRow>, StoreError> {
        bound("reviews", limit, MAX_LIST)?;
        let order = if newest_first {
            sea_orm::Order::Desc
        } else {
            sea_orm::Order::Asc
        };
        reviews::Entity::find()
            .filter(wanted)
            .order_by(reviews::Column::CreatedUs, order.clone())
            .order_by(reviews::Column::Id, order)
            .limit(limit as u64)
            .all(&self.db)
            .await
            .map_err(StoreError::Db)?
            .into_iter()
            .map(review_row)
            .collect()
    }

    /// Reviews with `status`, oldest first, at most `limit` (≤ [`MAX_LIST`]).
    pub async fn reviews_by_status(
        &self,
        status: ReviewStatus,
        limit: usize,
    ) -> Result<Vec<ReviewRow>, StoreError> {
        let wanted = Condition::all().add(reviews::Column::Status.eq(status.as_str()));
        self.reviews_where(wanted, limit, false).await
    }

    /// Reviews claimed for approval and not finished (SUBMITTED with a grant id), oldest
    /// first, at most `limit` (≤ [`MAX_LIST`]), starting after `after` (a review of the
    /// previous page), so a caller can read them all page by page.
    pub async fn claimed_reviews(
        &self,
        after: Option<&ReviewRow>,
        limit: usize,
    ) -> Result<Vec<ReviewRow>, StoreError> {
        let later = after.map(|r| {
            let (at, id) = (reviews::Column::CreatedUs, reviews::Column::Id);
            crate::after_in_order(at, id, to_us(r.created_at), &r.id)
        });
        let wanted = Condition::all()
            .add(reviews::Column::Status.eq(ReviewStatus::Submitted.as_str()))
            .add(reviews::Column::GrantId.is_not_null())
            .add_option(later);
        self.reviews_where(wanted, limit, false).await
    }

    /// Reviews filed by `reporter_id`, optionally on one wallet and of one status, the
    /// newest `limit` (≤ [`MAX_LIST`]), newest first.
    pub async fn reviews_of_reporter(
        &self,
        reporter_id: &str,
        wallet_id: Option<&str>,
        status: Option<ReviewStatus>,
        limit: usize,
    ) -> Result<Vec<ReviewRow>, StoreError> {
        let wanted = Condition::all()
            .add(reviews::Column::ReporterId.eq(reporter_id))
            .add_option(wallet_id.map(|w| reviews::Column::WalletId.eq(w)))
            .add_option(status.map(|s| reviews::Column::Status.eq(s.as_str())));
        self.reviews_where(wanted, limit, true).await
    }

    /// Claims a SUBMITTED review for approval before its COMPENSATION lot is granted:
    /// records the amount, the grant id to use and the note, while the review stays
    /// SUBMITTED (callers show none of them until it is CREDITED). Exactly one decision
    /// wins: false when the review is claimed or resolved already. The grant and the
    /// claim are in different transactions (the grant is the wallet's fenced commit), so
    /// the claim comes first: a rejection can then never race a grant, and an approval
    /// interrupted between the two is completed by approving again with the same amount.
    pub async fn claim_review_approval(
        &self,
        review_id: &str,
        credited_ucr: i64,
        grant_id: &str,
        note: Option<&str>,
    ) -> Result<bool, StoreError> {
        let res = reviews::Entity::update_many()
            .col_expr(reviews::Column::CreditedUcr, Expr::value(credited_ucr))
            .col_expr(reviews::Column::GrantId, Expr::value(grant_id))
            .col_expr(reviews::Column::Note, Expr::value(note.map(str::to_owned)))
            .filter(reviews::Column::Id.eq(review_id))
            .filter(reviews::Column::Status.eq(ReviewStatus::Submitted.as_str()))
            .filter(reviews::Column::GrantId.is_null())
            .exec(&self.db)
            .await
            .map_err(StoreError::Db)?;
        Ok(res.rows_affected > 0)
    }

    /// Marks a claimed review CREDITED once its lot is durable, announcing it to the other
    /// nodes; false when it is not a claimed SUBMITTED review (another caller finished it).
    pub async fn finish_review_approval(
        &self,
        review_id: &str,
        resolved_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let txn = self.begin_write().await?;
        let res = reviews::Entity::update_many()
            .col_expr(
                reviews::Column::Status,
                Expr::value(ReviewStatus::Credited.as_str()),
            )
            .col_expr(reviews::Column::ResolvedUs, Expr::value(to_us(resolved_at)))
            .filter(reviews::Column::Id.eq(review_id))
            .filter(reviews::Column::Status.eq(ReviewStatus::Submitted.as_str()))
            .filter(reviews::Column::GrantId.is_not_null())
            .exec(&txn)
            .await
            .map_err(StoreError::Db)?;
        self.announce_review(txn, review_id, res.rows_affected > 0)
            .await
    }

    /// Resolves a SUBMITTED, unclaimed review without a grant (a rejection), announcing it
    /// to the other nodes; false when it is resolved or claimed for approval already. An
    /// approval goes through [`Store::claim_review_approval`] instead.
    pub async fn resolve_review(&self, resolution: &ReviewResolution) -> Result<bool, StoreError> {
        let txn = self.begin_write().await?;
        let res = reviews::Entity::update_many()
            .col_expr(
                reviews::Column::Status,
                Expr::value(resolution.status.as_str()),
            )
            .col_expr(
                reviews::Column::CreditedUcr,
                Expr::value(resolution.credited_ucr),
            )
            .col_expr(reviews::Column::Note, Expr::value(resolution.note.clone()))
            .col_expr(
                reviews::Column::GrantId,
                Expr::value(resolution.grant_id.clone()),
            )
            .col_expr(
                reviews::Column::ResolvedUs,
                Expr::value(to_us(resolution.resolved_at)),
            )
            .filter(reviews::Column::Id.eq(resolution.review_id.as_str()))
            .filter(reviews::Column::Status.eq(ReviewStatus::Submitted.as_str()))
            .filter(reviews::Column::GrantId.is_null())
            .exec(&txn)
            .await
            .map_err(StoreError::Db)?;
        self.announce_review(txn, &resolution.review_id, res.rows_affected > 0)
            .await
    }

    /// Commits a review's resolution, announcing it to the other nodes (PostgreSQL) when
    /// `changed`; returns `changed`.
    async fn announce_review(
        &self,
        txn: DatabaseTransaction,
        review_id: &str,
        changed: bool,
    ) -> Result<bool, StoreError> {
        if changed {
            crate::feed::notify_review(&txn, self.backend(), review_id)
                .await
                .map_err(StoreError::Db)?;
        }
        txn.commit().await.map_err(StoreError::from_db)?;
        Ok(changed)
    }
}
