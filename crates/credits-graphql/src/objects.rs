//! Objects whose fields need the service: wallets, teams, members, reviews, the viewer.

use async_graphql::{Context, ID, Object};
use chrono::{Duration, Utc};
use credits_core::{Credits as CoreCredits, PlanId, Wallet};
use credits_store::{
    GroupBy, MemberRole, MemberRow, ReviewRow, ReviewStatus as StoreReviewStatus, TeamRow, UsageRow,
};

use crate::access::{Access, TeamAccess, ledger, principal};
use crate::error::{ApiError, ApiResult};
use crate::limits::{list, listed};
use crate::scalars::{Credits, DateTime};
use crate::types::*;

/// Default and largest page of usage history (SPEC 8).
pub const DEFAULT_PAGE: i32 = 20;
pub const MAX_PAGE: i32 = 100;

/// The complexity limit counts each field once, however many rows a list returns; these
/// weigh the lists a USER can grow (found by review: 100 aliases of a 100-event page made
/// a small request answer 10,000 events). A page counts half its rows (so that one page
/// of 100 with every field, and more besides, fits under the limit); a summary, which
/// reads every usage event in its range, a fixed cost plus rows; other lists a few rows.
fn page_cost(first: Option<i32>, child_complexity: usize) -> usize {
    let rows = first.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE) as usize;
    rows.div_ceil(2) * child_complexity
}
const SUMMARY_COST: usize = 200;
const LISTED_ROWS: usize = 10;

pub struct WalletObject {
    pub wallet: Wallet,
    pub access: Access,
}

fn plan_of(ctx: &Context<'_>, id: &PlanId) -> ApiResult<Plan> {
    ledger(ctx)
        .plan(id)
        .map(|p| Plan::from(&p))
        .ok_or_else(|| ApiError::not_found("plan"))
}

pub fn usage_event(row: &UsageRow) -> UsageEvent {
    UsageEvent {
        id: ID(row.id.clone()),
        idempotency_key: row.idempotency_key.clone().unwrap_or_default(),
        thread_id: row.thread_id.clone(),
        model: row.model.clone(),
        member_id: row.member_id.clone(),
        input_tokens: i32::try_from(row.input_tokens).unwrap_or(i32::MAX),
        cached_tokens: i32::try_from(row.cached_tokens).unwrap_or(i32::MAX),
        output_tokens: i32::try_from(row.output_tokens).unwrap_or(i32::MAX),
        cost: CoreCredits::from_micro(row.cost_ucr).into(),
        charged: row
            .charged
            .iter()
            .map(|c| BucketCharge {
                bucket: match c.bucket {
                    credits_store::BucketKind::Daily => BucketKind::Daily,
                    credits_store::BucketKind::Subscription => BucketKind::Subscription,
                    credits_store::BucketKind::Bonus => BucketKind::Bonus,
                },
                grant_id: c.grant_id.clone().map(ID),
                amount: CoreCredits::from_micro(c.amount_ucr).into(),
            })
            .collect(),
        uncollected: CoreCredits::from_micro(row.uncollected_ucr).into(),
        priced_by: row.priced_by.clone(),
        at: row.at.into(),
    }
}

fn group_by(g: UsageGroupBy) -> GroupBy {
    match g {
        UsageGroupBy::Model => GroupBy::Model,
        UsageGroupBy::Thread => GroupBy::Thread,
        UsageGroupBy::Day => GroupBy::Day,
        UsageGroupBy::Member => GroupBy::Member,
    }
}

#[Object(name = "Wallet")]
impl WalletObject {
    async fn id(&self) -> ID {
        ID(self.wallet.id.0.clone())
    }

    async fn owner_id(&self) -> &str {
        &self.wallet.owner_id
    }

    async fn timezone(&self) -> &str {
        self.wallet.timezone.name()
    }

    async fn plan(&self, ctx: &Context<'_>) -> async_graphql::Result<Plan> {
        Ok(plan_of(ctx, &self.wallet.plan_id)?)
    }

    async fn scheduled_plan(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Plan>> {
        Ok(self
            .wallet
            .scheduled_plan_id
            .as_ref()
            .map(|id| plan_of(ctx, id))
            .transpose()?)
    }

    async fn balance(&self) -> Balance {
        (&self.wallet.balance()).into()
    }

    #[graphql(complexity = "page_cost(first, child_complexity)")]
    async fn usage(
        &self,
        ctx: &Context<'_>,
        filter: Option<UsageFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<UsageConnection> {
        let first = first.unwrap_or(DEFAULT_PAGE);
        if !(0..=MAX_PAGE).contains(&first) {
            return Err(ApiError::invalid(format!("first must be 0 to {MAX_PAGE}")).into());
        }
        let filter = filter.unwrap_or_default();
        if let Some(t) = &filter.thread_id {
            crate::mutation::text("threadId", t, crate::mutation::MAX_KEY, false)?;
        }
        if let Some(m) = &filter.model {
            crate::mutation::text("model", m, crate::mutation::MAX_KEY, false)?;
        }
        crate::mutation::member(filter.member_id.as_ref())?;
        if let Some(cursor) = &after {
            credits_store::check_cursor(cursor).map_err(ApiError::from)?;
        }
        // Filters combine with AND (SPEC 8): a plain member asking for another member's
        // usage gets none.
        if let (Access::Member(user), Some(m)) = (&self.access, &filter.member_id)
            && m != user
        {
            return Ok(UsageConnection {
                edges: Vec::new(),
                page_info: PageInfo {
                    has_next_page: false,
                    end_cursor: None,
                },
            });
        }
        let filter = self.filter(filter, None, None);
        let page = ledger(ctx)
            .store()
            .usage_history(&self.wallet.id.0, &filter, first as usize, after.as_deref())
            .await
            .map_err(ApiError::from)?;
        let edges = page
            .events
            .iter()
            .map(|row| UsageEdge {
                cursor: credits_store::cursor_of(row),
                node: usage_event(row),
            })
            .collect();
        Ok(UsageConnection {
            edges,
            page_info: PageInfo {
                has_next_page: page.has_next_page,
                end_cursor: page.end_cursor,
            },
        })
    }

    #[graphql(complexity = "SUMMARY_COST + LISTED_ROWS * child_complexity")]
    async fn usage_summary(
        &self,
        ctx: &Context<'_>,
        group_by: UsageGroupBy,
        from: Option<DateTime>,
        to: Option<DateTime>,
        then_by: Option<UsageGroupBy>,
    ) -> async_graphql::Result<Vec<UsageGroup>> {
        let filter = self.filter(UsageFilter::default(), from, to);
        let rows = ledger(ctx)
            .store()
            .usage_summary(
                &self.wallet.id.0,
                &filter,
                self::group_by(group_by),
                then_by.map(self::group_by),
                self.wallet.timezone,
            )
            .await
            .map_err(ApiError::from)?;
        Ok(listed(ctx, rows)
            .await?
            .into_iter()
            .map(|r| UsageGroup {
                key: r.key,
                sub_key: r.sub_key,
                credits: CoreCredits::from_micro(r.credits_ucr).into(),
                events: i32::try_from(r.events).unwrap_or(i32::MAX),
            })
            .collect())
    }

    /// High-usage reviews filed on this wallet, newest first; a plain team member sees only their own.
    #[graphql(complexity = "LISTED_ROWS * child_complexity")]
    async fn reviews(
        &self,
        ctx: &Context<'_>,
        status: Option<ReviewStatus>,
    ) -> async_graphql::Result<Vec<ReviewObject>> {
        let store = ledger(ctx).store();
        let status = status.map(store_status);
        let wallet_id = self.wallet.id.0.as_str();
        // Newest first, the newest MAX_LIST.
        // The contract: "a plain team member sees only their own"; the owner, a team admin
        // and staff see every review of the wallet (see `check_review_reader`).
        let reporter = match &self.access {
            Access::Member(user) => Some(user.as_str()),
            Access::Full => None,
        };
        let rows = list(ctx, crate::MAX_LIST, |limit| async move {
            match reporter {
                None => store.reviews_of_wallet(wallet_id, status, limit).await,
                Some(user) => {
                    store
                        .reviews_of_reporter(user, Some(wallet_id), status, limit)
                        .await
                }
            }
            .map_err(ApiError::from)
        })
        .await?;
        Ok(rows.into_iter().map(ReviewObject::new).collect())
    }
}

impl WalletObject {
    /// A plain member's view is filtered to their own usage.
    fn filter(
        &self,
        f: UsageFilter,
        from: Option<DateTime>,
        to: Option<DateTime>,
    ) -> credits_store::UsageFilter {
        let member = match &self.access {
            Access::Member(user) => Some(user.clone()),
            Access::Full => f.member_id,
        };
        credits_store::UsageFilter {
            thread_id: f.thread_id,
            model: f.model,
            member_id: member,
            from: from.or(f.from).map(|t| t.0),
            to: to.or(f.to).map(|t| t.0),
        }
    }
}

pub fn store_status(s: ReviewStatus) -> StoreReviewStatus {
    match s {
        ReviewStatus::Submitted => StoreReviewStatus::Submitted,
        ReviewStatus::Credited => StoreReviewStatus::Credited,
        ReviewStatus::Rejected => StoreReviewStatus::Rejected,
    }
}

pub struct TeamObject {
    pub team: TeamRow,
    pub access: TeamAccess,
}

#[Object(name = "Team")]
impl TeamObject {
    async fn id(&self) -> ID {
        ID(self.team.id.clone())
    }

    async fn name(&self) -> &str {
        &self.team.name
    }

    async fn wallet(&self, ctx: &Context<'_>) -> async_graphql::Result<WalletObject> {
        let id = credits_core::WalletId(self.team.wallet_id.clone());
        let wallet = ledger(ctx)
            .wallet(&id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found("wallet"))?;
        Ok(WalletObject {
            wallet,
            access: self.access.wallet_access(),
        })
    }

    async fn members(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<TeamMemberObject>> {
        let l = ledger(ctx);
        // A plain member's own row is read by key: a list of the first rows only could miss
        // it in a large team (found by review).
        let rows = match &self.access {
            TeamAccess::Member(user) => {
                let own = l.store().member(&self.team.id, user).await;
                own.map_err(ApiError::from)?.into_iter().collect()
            }
            _ => {
                let read = |limit| async move {
                    l.members(&self.team.id, limit)
                        .await
                        .map_err(ApiError::from)
                };
                list(ctx, credits_store::MAX_LIST, read).await?
            }
        };
        let id = credits_core::WalletId(self.team.wallet_id.clone());
        let wallet = l
            .wallet(&id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found("wallet"))?;
        Ok(rows
            .into_iter()
            .map(|row| TeamMemberObject::new(row, &wallet))
            .collect())
    }
}

pub struct TeamMemberObject {
    row: MemberRow,
    today: CoreCredits,
    period: CoreCredits,
}

impl TeamMemberObject {
    pub fn new(row: MemberRow, pool: &Wallet) -> TeamMemberObject {
        let (today, period, _) = pool.member_usage(&row.user_id);
        TeamMemberObject { row, today, period }
    }
}

#[Object(name = "TeamMember")]
impl TeamMemberObject {
    async fn user_id(&self) -> &str {
        &self.row.user_id
    }

    async fn role(&self) -> TeamRole {
        match self.row.role {
            MemberRole::Admin => TeamRole::Admin,
            MemberRole::Member => TeamRole::Member,
        }
    }

    async fn daily_limit(&self) -> Option<Credits> {
        self.row
            .daily_limit_ucr
            .map(|c| CoreCredits::from_micro(c).into())
    }

    async fn period_limit(&self) -> Option<Credits> {
        self.row
            .period_limit_ucr
            .map(|c| CoreCredits::from_micro(c).into())
    }

    async fn spent_today(&self) -> Credits {
        self.today.into()
    }

    async fn spent_this_period(&self) -> Credits {
        self.period.into()
    }
}

/// A review as callers see it (built by [`ReviewObject::new`]).
pub struct ReviewObject(ReviewRow);

impl ReviewObject {
    pub fn new(row: ReviewRow) -> Self {
        ReviewObject(Self::shown(row))
    }

    /// What callers may see of a review: an approval claimed on a SUBMITTED review (its
    /// amount, grant id and note are set before the lot is granted) shows only once it is
    /// CREDITED.
    pub fn shown(mut row: ReviewRow) -> ReviewRow {
        if row.status == StoreReviewStatus::Submitted {
            row.credited_ucr = None;
            row.grant_id = None;
            row.note = None;
        }
        row
    }
}

#[derive(async_graphql::SimpleObject)]
pub struct ReviewFindings {
    pub thread_credits: Credits,
    pub events: i32,
    pub retry_loop_events: i32,
    pub cost_percentile: Option<f64>,
    pub suggested_refund: Credits,
    pub tips: Vec<String>,
}

#[Object(name = "Review")]
impl ReviewObject {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }

    async fn wallet_id(&self) -> ID {
        ID(self.0.wallet_id.clone())
    }

    async fn thread_id(&self) -> &str {
        &self.0.thread_id
    }

    async fn status(&self) -> ReviewStatus {
        match self.0.status {
            StoreReviewStatus::Submitted => ReviewStatus::Submitted,
            StoreReviewStatus::Credited => ReviewStatus::Credited,
            StoreReviewStatus::Rejected => ReviewStatus::Rejected,
        }
    }

    async fn findings(&self) -> async_graphql::Result<ReviewFindings> {
        let f: credits_review::Findings = serde_json::from_str(&self.0.findings_json)
            .map_err(|e| ApiError::unavailable(format!("stored findings unreadable: {e}")))?;
        Ok(ReviewFindings {
            thread_credits: f.thread_credits.into(),
            events: i32::try_from(f.events).unwrap_or(i32::MAX),
            retry_loop_events: i32::try_from(f.retry_loop_events).unwrap_or(i32::MAX),
            cost_percentile: f.cost_percentile,
            suggested_refund: f.suggested_refund.into(),
            tips: f.tips,
        })
    }

    async fn credited_grant(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Grant>> {
        let Some(id) = self.0.grant_id.as_ref() else {
            return Ok(None);
        };
        let lot = ledger(ctx)
            .grant_by_id(&credits_core::GrantId(id.clone()))
            .await
            .map_err(ApiError::from)?;
        Ok(lot.as_ref().map(Grant::from))
    }

    async fn note(&self) -> Option<&str> {
        self.0.note.as_deref()
    }
}

pub struct Viewer;

#[Object(name = "Viewer")]
impl Viewer {
    async fn role(&self, ctx: &Context<'_>) -> async_graphql::Result<Role> {
        Ok(principal(ctx)?.role)
    }

    async fn owner_id(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        Ok(principal(ctx)?.owner_id.clone())
    }

    async fn wallets(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<WalletObject>> {
        let Some(user) = principal(ctx)?.user() else {
            return Ok(Vec::new());
        };
        let wallets = ledger(ctx)
            .wallets_of_owner(user)
            .await
            .map_err(ApiError::from)?;
        Ok(listed(ctx, wallets)
            .await?
            .into_iter()
            .map(|wallet| WalletObject {
                wallet,
                access: Access::Full,
            })
            .collect())
    }

    async fn teams(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<TeamObject>> {
        let Some(user) = principal(ctx)?.user() else {
            return Ok(Vec::new());
        };
        let l = ledger(ctx);
        let teams = l
            .store()
            .teams_of_user(user)
            .await
            .map_err(ApiError::from)?;
        let teams = listed(ctx, teams).await?;
        let mut out = Vec::with_capacity(teams.len());
        for team in teams {
            let access = crate::access::team_access(ctx, &team).await?;
            out.push(TeamObject { team, access });
        }
        Ok(out)
    }
}

/// The window the cost percentile compares against (SPEC 7).
pub fn percentile_window() -> Duration {
    Duration::days(30)
}

pub fn now(ctx: &Context<'_>) -> chrono::DateTime<Utc> {
    ledger(ctx).now()
}
