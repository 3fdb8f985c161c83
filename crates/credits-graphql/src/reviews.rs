//! High-usage reports and their resolution (SPEC 7): the evidence comes from the service's
//! own usage records, judged by `credits-review`; approval grants one COMPENSATION lot,
//! keyed by the review so that racing approvals grant once.

use std::collections::HashSet;

use async_graphql::Context;
use chrono::{DateTime, Duration, Utc};
use credits_actors::Ledger;
use credits_core::{
    Charge, Credits as CoreCredits, GrantId, ReservationId, Source, Tokens, UsageId, UsageRecord,
    WalletId,
};
use credits_review::{PreviewStatus as ReviewPreview, Report};
use credits_store::{
    GroupBy, ReviewInsert, ReviewRow, ReviewStatus as StoreStatus, UsageFilter, UsageRow,
};

use crate::access::{Access, ledger, principal, wallet_access};
use crate::error::{ApiError, ApiResult};
use crate::types::{HighUsageReportInput, PreviewStatus, ResolveReviewInput, ReviewDecision};

/// The reporter of a review filed with an ADMIN or SERVICE token: no user. User ids are 1–128
/// characters (SPEC 1), so no USER can read such a review as one they filed (a role name
/// here was also a valid user id).
pub const TOKEN_REPORTER: &str = "";

/// Usage events of one thread read for an analysis, at most.
pub const MAX_THREAD_EVENTS: usize = 10_000;

fn record(row: &UsageRow) -> UsageRecord {
    UsageRecord {
        id: UsageId(row.id.clone()),
        key: row.idempotency_key.clone().unwrap_or_default(),
        thread_id: row.thread_id.clone(),
        model: row.model.clone(),
        tier: row.tier.clone(),
        member: row.member_id.clone(),
        tokens: Tokens {
            input: row.input_tokens.max(0) as u64,
            cached: row.cached_tokens.max(0) as u64,
            output: row.output_tokens.max(0) as u64,
        },
        cost: CoreCredits::from_micro(row.cost_ucr),
        charged: row
            .charged
            .iter()
            .map(|c| Charge {
                source: match (&c.bucket, &c.grant_id) {
                    (credits_store::BucketKind::Daily, _) => Source::Daily,
                    (credits_store::BucketKind::Subscription, _) => Source::Subscription,
                    (credits_store::BucketKind::Bonus, id) => {
                        Source::Lot(GrantId(id.clone().unwrap_or_default()))
                    }
                },
                amount: CoreCredits::from_micro(c.amount_ucr),
            })
            .collect(),
        uncollected: CoreCredits::from_micro(row.uncollected_ucr),
        priced_by: row.priced_by.clone(),
        reservation_id: row.reservation_id.clone().map(ReservationId),
        at: row.at,
    }
}

/// The events of a thread a CREDITED review judged.
struct Coverage {
    /// Up to this ledger seq; reviews filed before it was recorded: up to their filing.
    through: Result<u64, DateTime<Utc>>,
    /// Only this member's events (a plain member's review).
    member: Option<String>,
}

impl Coverage {
    fn of(review: &ReviewRow) -> Coverage {
        let findings = serde_json::from_str::<credits_review::Findings>(&review.findings_json).ok();
        let (seq, member) = findings.map_or((None, None), |f| (f.covers_seq, f.member));
        Coverage {
            through: seq.ok_or(review.created_at),
            member,
        }
    }

    fn covers(&self, row: &UsageRow) -> bool {
        let judged = match self.through {
            Ok(seq) => row.seq <= seq,
            Err(filed) => row.at <= filed,
        };
        judged
            && self
                .member
                .as_ref()
                .is_none_or(|m| row.member_id.as_ref() == Some(m))
    }
}

fn preview(p: PreviewStatus) -> ReviewPreview {
    match p {
        PreviewStatus::Ok => ReviewPreview::Ok,
        PreviewStatus::Failing => ReviewPreview::Failing,
        PreviewStatus::ErrorLoop => ReviewPreview::ErrorLoop,
        PreviewStatus::Unknown => ReviewPreview::Unknown,
    }
}

fn preview_name(p: PreviewStatus) -> &'static str {
    match p {
        PreviewStatus::Ok => "OK",
        PreviewStatus::Failing => "FAILING",
        PreviewStatus::ErrorLoop => "ERROR_LOOP",
        PreviewStatus::Unknown => "UNKNOWN",
    }
}

/// Files a report (or returns the open one) with its findings.
pub async fn report(ctx: &Context<'_>, input: HighUsageReportInput) -> ApiResult<ReviewRow> {
    let p = principal(ctx)?;
    let l = ledger(ctx);
    use crate::mutation::{MAX_KEY, MAX_TEXT, text};
    text("threadId", &input.thread_id, MAX_KEY, false)?;
    text("taskDescription", &input.task_description, MAX_TEXT, true)?;
    if input.thread_length.is_some_and(|v| v < 0) || input.context_size.is_some_and(|v| v < 0) {
        return Err(ApiError::invalid(
            "threadLength and contextSize must not be negative",
        ));
    }
    let wallet_id = WalletId(input.wallet_id.0.clone());
    let wallet = l
        .wallet(&wallet_id)
        .await?
        .ok_or_else(|| ApiError::not_found("wallet"))?;
    let access = wallet_access(ctx, &wallet).await?;
    // A plain member reports only pool threads they spent in, and sees only their own
    // pool usage (SPEC 10): the findings come from their events alone.
    let member = match &access {
        Access::Member(user) => Some(user.clone()),
        _ => None,
    };
    let store = l.store();
    let rows = store
        .thread_usage(
            &wallet_id.0,
            &input.thread_id,
            member.as_deref(),
            MAX_THREAD_EVENTS,
        )
        .await?;
    if rows.is_empty() {
        let exists = member.is_some()
            && !store
                .thread_usage(&wallet_id.0, &input.thread_id, None, 1)
                .await?
                .is_empty();
        return Err(if exists {
            ApiError::forbidden()
        } else {
            ApiError::not_found("thread")
        });
    }
    if let Some(open) = l
        .store()
        .open_review(&wallet_id.0, &input.thread_id)
        .await?
    {
        return open_review(ctx, open).await;
    }
    let thread: Vec<UsageRecord> = rows.iter().map(record).collect();
    let report = Report {
        thread_id: input.thread_id.clone(),
        task_description: input.task_description.clone(),
        model: input.model.clone(),
        preview_status: preview(input.preview_status),
        thread_length: input.thread_length.map(|v| v as u32),
        context_size: input.context_size.map(|v| v as u64),
    };
    // Events a CREDITED review already judged are never refunded again: those of the
    // thread up to the last one it analysed (by ledger seq, which no clock can reorder),
    // only its member's when a plain member filed it.
    let covered: Vec<Coverage> = l
        .store()
        .credited_reviews_of_thread(&wallet_id.0, &input.thread_id)
        .await?
        .iter()
        .map(Coverage::of)
        .collect();
    let already: HashSet<UsageId> = thread
        .iter()
        .zip(&rows)
        .filter(|(_, row)| covered.iter().any(|c| c.covers(row)))
        .map(|(e, _)| e.id.clone())
        .collect();
    // The analysis reads the thread's newest events; its totals, and the costliest model
    // its percentile is taken on, come from all of them.
    let everything = UsageFilter {
        thread_id: Some(input.thread_id.clone()),
        member_id: member.clone(),
        ..UsageFilter::default()
    };
    let by_model = store
        .usage_summary(
            &wallet_id.0,
            &everything,
            GroupBy::Model,
            None,
            chrono_tz::UTC,
        )
        .await?;
    let costs = by_model
        .iter()
        .map(|g| (g.key.as_str(), i128::from(g.credits_ucr)));
    let model = report
        .model
        .as_deref()
        .or_else(|| credits_review::costliest_model(costs));
    let now = l.now();
    let percentile = match model {
        Some(model) => {
            // Measured as its peers are: the thread's cost on that model in the window.
            let (from, to) = (now - Duration::days(30), now + Duration::seconds(1));
            let window = UsageFilter {
                model: Some(model.to_owned()),
                from: Some(from),
                to: Some(to),
                ..everything.clone()
            };
            let of_model = store
                .usage_summary(&wallet_id.0, &window, GroupBy::Model, None, chrono_tz::UTC)
                .await?;
            let total = of_model.iter().map(|g| g.credits_ucr).sum();
            let thread = (wallet_id.0.as_str(), input.thread_id.as_str());
            let mut rank = store.thread_rank(model, from, to, thread, total).await?;
            // A thread that did not use the model in the window is not one of its threads
            // (a report may name a model the thread never used). A plain member's share may
            // be none where the thread's is not: then the thread is one, ranked at their
            // share (found by review: it was one whatever the thread had used).
            let used = !of_model.is_empty()
                || (member.is_some()
                    && !store
                        .usage_summary(
                            &wallet_id.0,
                            &UsageFilter {
                                member_id: None,
                                ..window.clone()
                            },
                            GroupBy::Model,
                            None,
                            chrono_tz::UTC,
                        )
                        .await?
                        .is_empty());
            if !used {
                rank.threads -= 1;
                rank.at_or_below -= 1;
            }
            credits_review::percentile_from_counts(rank.threads, rank.at_or_below)
        }
        None => None,
    };
    let mut findings =
        credits_review::analyse_with_percentile(&report, &thread, &already, percentile);
    findings.thread_credits = CoreCredits::from_micro(
        by_model
            .iter()
            .map(|g| g.credits_ucr)
            .fold(0, i64::saturating_add),
    );
    findings.events =
        u32::try_from(by_model.iter().map(|g| g.events).sum::<i64>()).unwrap_or(u32::MAX);
    findings.member = member;
    findings.covers_seq = rows.iter().map(|r| r.seq).max();
    let row = ReviewRow {
        id: credits_actors::ledger::new_ordered_id("rev"),
        wallet_id: wallet_id.0.clone(),
        thread_id: input.thread_id,
        reporter_id: p.user().unwrap_or(TOKEN_REPORTER).to_owned(),
        task_description: input.task_description,
        model: input.model,
        preview_status: preview_name(input.preview_status).to_owned(),
        thread_length: input.thread_length.map(i64::from),
        context_size: input.context_size.map(i64::from),
        status: StoreStatus::Submitted,
        findings_json: serde_json::to_string(&findings)
            .map_err(|e| ApiError::unavailable(e.to_string()))?,
        suggested_refund_ucr: findings.suggested_refund.micro(),
        credited_ucr: None,
        note: None,
        grant_id: None,
        created_at: now,
        resolved_at: None,
    };
    match l.store().insert_review(&row).await? {
        ReviewInsert::New => Ok(row),
        ReviewInsert::Open(open) => open_review(ctx, *open).await,
    }
}

/// The thread's open review, answered to a new report (SPEC 7) only when the caller may
/// read it (its reporter, a team admin of the pool); another member's stays theirs until
/// it is resolved.
async fn open_review(ctx: &Context<'_>, open: ReviewRow) -> ApiResult<ReviewRow> {
    match crate::mutation::check_review_reader(ctx, &open).await {
        Ok(()) => Ok(open),
        Err(e) if e.code == crate::error::Code::Forbidden => Err(ApiError::new(
            crate::error::Code::Forbidden,
            "this thread already has an open review filed by someone else",
        )),
        Err(e) => Err(e),
    }
}

/// Approves (one COMPENSATION lot) or rejects a review; the same decision again returns it.
pub async fn resolve(ctx: &Context<'_>, input: ResolveReviewInput) -> ApiResult<ReviewRow> {
    let l = ledger(ctx);
    if input
        .note
        .as_ref()
        .is_some_and(|n| n.chars().count() > 4096)
    {
        return Err(ApiError::invalid("note must be at most 4096 characters"));
    }
    if input.amount.as_ref().is_some_and(|a| !a.0.is_positive()) {
        return Err(ApiError::invalid(
            "an approved amount must be greater than zero",
        ));
    }
    let too_much = || {
        ApiError::invalid(format!(
            "an approved amount must be at most {}",
            CoreCredits::MAX_HOLDING
        ))
    };
    // Input checks before the review is looked up (SPEC 10: INVALID_INPUT first).
    if input
        .amount
        .as_ref()
        .is_some_and(|a| a.0 > CoreCredits::MAX_HOLDING)
    {
        return Err(too_much());
    }
    let review = l
        .store()
        .review(&input.review_id.0)
        .await?
        .ok_or_else(|| ApiError::not_found("review"))?;
    let amount = match input.decision {
        ReviewDecision::Approve => {
            let a = input
                .amount
                .map(|c| c.0)
                .unwrap_or(CoreCredits::from_micro(review.suggested_refund_ucr));
            if !a.is_positive() {
                return Err(ApiError::invalid(
                    "an approved amount must be greater than zero",
                ));
            }
            // Refused before the review is claimed: a claim is only for a grant that can be.
            if a > CoreCredits::MAX_HOLDING {
                return Err(too_much());
            }
            Some(a)
        }
        ReviewDecision::Reject => None,
    };
    let wanted = if amount.is_some() {
        StoreStatus::Credited
    } else {
        StoreStatus::Rejected
    };
    // One decision wins however many admins race (SPEC 7): an approval first claims the
    // SUBMITTED review (amount, grant id, note), then grants the lot keyed by the review,
    // then marks it CREDITED; a rejection only applies to an unclaimed review. Each step
    // is conditional, so the loser of a step reads the review again and answers from it.
    let mut review = review;
    let amount_ucr = amount.map(CoreCredits::micro);
    if review.status == StoreStatus::Submitted && review.grant_id.is_none() {
        let now = l.now();
        let changed = match amount {
            Some(a) => {
                // Refused before the claim if the wallet could not take the lot now.
                l.check_compensation(&WalletId(review.wallet_id.clone()), &review.id, a)
                    .await?;
                let grant = credits_actors::ledger::new_ordered_id("grt");
                l.store()
                    .claim_review_approval(&review.id, a.micro(), &grant, input.note.as_deref())
                    .await?;
                false
            }
            None => {
                let resolution = crate::mutation::resolution(
                    &review,
                    StoreStatus::Rejected,
                    None,
                    input.note,
                    None,
                    now,
                );
                l.store().resolve_review(&resolution).await?
            }
        };
        review = reread(l, &review.id).await?;
        if changed {
            crate::subscription::review_changed(ctx, &review);
        }
    }
    if review.status == StoreStatus::Submitted {
        // Claimed for approval (by this caller or another): complete it if it is ours.
        let (Some(claimed), Some(_)) = (review.credited_ucr, review.grant_id.as_ref()) else {
            return Err(ApiError::unavailable("review claimed without an amount"));
        };
        if amount_ucr != Some(claimed) {
            return Err(ApiError::new(
                crate::error::Code::IdempotencyConflict,
                "the review is being approved with another amount (approving again with \
                 that amount completes it)",
            ));
        }
        l.complete_approval(&review).await?;
        review = reread(l, &review.id).await?;
    }
    // Resolved: the same decision and amount returns it unchanged, anything else conflicts.
    if review.status == wanted && review.credited_ucr == amount_ucr {
        Ok(review)
    } else {
        Err(conflict())
    }
}

fn conflict() -> ApiError {
    ApiError::new(
        crate::error::Code::IdempotencyConflict,
        "the review is already resolved differently",
    )
}

async fn reread(l: &Ledger, id: &str) -> ApiResult<ReviewRow> {
    l.store()
        .review(id)
        .await?
        .ok_or_else(|| ApiError::not_found("review"))
}
