//! Mutations (SPEC 4–7, 10). Each checks the role (guard), then the input, then existence
//! and ownership, then calls the service, in SPEC 10's order of errors.

use async_graphql::{Context, ID, Object};
use credits_actors::ledger::parse_zone as parse_zone_name;
use credits_actors::{Receipt, ReservationView, UsageInput};
use credits_core::{Credits as CoreCredits, PlanId, ReservationId, WalletId};
use credits_store::{
    MemberRole, ReservationStatus as StoreReservationStatus, ReviewResolution, ReviewRow,
    ReviewStatus as StoreReviewStatus, TokenHash, TokenRole, TokenRow,
};

use crate::access::{
    ADMIN, ANY, PEOPLE, RoleGuard, STAFF, ledger, principal, team_access, wallet_access,
};
use crate::error::{ApiError, ApiResult};
use crate::objects::{ReviewObject, TeamMemberObject, TeamObject, WalletObject};
use crate::query::tokens;
use crate::scalars::{Credits, DateTime};
use crate::types::*;

/// Longest free text (reason, task description, note) and id-like string (SPEC 1).
pub(crate) const MAX_TEXT: usize = credits_core::wallet::MAX_TEXT_CHARS;
pub(crate) const MAX_KEY: usize = credits_core::wallet::MAX_KEY_CHARS;

pub(crate) fn text(name: &str, value: &str, max: usize, allow_empty: bool) -> ApiResult<()> {
    let n = value.chars().count();
    if n > max || (!allow_empty && n == 0) {
        return Err(ApiError::invalid(format!(
            "{name} must be {} to {max} characters",
            if allow_empty { 0 } else { 1 }
        )));
    }
    Ok(())
}

/// A plan or bundle id named by a mutation: one that cannot exist is INVALID_INPUT, which
/// SPEC 10 ranks before NOT_FOUND (SPEC 1: ids match `[a-z0-9][a-z0-9-]{0,62}`).
fn catalogue_id(name: &str, value: &str) -> ApiResult<()> {
    if PlanId::parse(value).is_none() {
        return Err(ApiError::invalid(format!(
            "{name} must match [a-z0-9][a-z0-9-]{{0,62}}"
        )));
    }
    Ok(())
}

/// An optional user id (`memberId`) is 1 to 128 characters when given (SPEC 1, 6).
pub(crate) fn member(value: Option<&String>) -> ApiResult<()> {
    value.map_or(Ok(()), |m| text("memberId", m, MAX_KEY, false))
}

fn receipt(r: Receipt) -> UsageReceipt {
    UsageReceipt {
        usage: (&r.usage).into(),
        balance: (&r.balance).into(),
        replayed: r.replayed,
    }
}

fn reservation(r: ReservationView) -> Reservation {
    Reservation {
        id: ID(r.id.0),
        wallet_id: ID(r.wallet_id.0),
        amount: r.amount.into(),
        status: match r.status {
            StoreReservationStatus::Active => ReservationStatus::Active,
            StoreReservationStatus::Settled => ReservationStatus::Settled,
            StoreReservationStatus::Released => ReservationStatus::Released,
            StoreReservationStatus::Expired => ReservationStatus::Expired,
        },
        expires_at: r.expires_at.into(),
    }
}

/// Team member configuration: ADMIN tokens, or a USER who administers the team.
async fn team_admin(ctx: &Context<'_>, team_id: &str) -> ApiResult<credits_store::TeamRow> {
    let p = principal(ctx)?;
    if p.role == Role::Service {
        return Err(ApiError::forbidden());
    }
    let team = ledger(ctx)
        .team(team_id)
        .await?
        .ok_or_else(|| ApiError::not_found("team"))?;
    if !team_access(ctx, &team).await?.administers() {
        return Err(ApiError::forbidden());
    }
    Ok(team)
}

/// A member row with their spend in the pool's current day and period.
async fn member_object(
    ctx: &Context<'_>,
    team: &credits_store::TeamRow,
    row: credits_store::MemberRow,
) -> ApiResult<TeamMemberObject> {
    let pool = ledger(ctx)
        .wallet(&WalletId(team.wallet_id.clone()))
        .await?
        .ok_or_else(|| ApiError::not_found("wallet"))?;
    Ok(TeamMemberObject::new(row, &pool))
}

/// Who may read a review: an admin or the service (SPEC 10: SERVICE may do everything but
/// a listed few, and `review`/`reviewUpdated` are not among them), its reporter, and a user
/// who sees all of its wallet: the owner, an admin of the pool's team. The contract's
/// `Wallet.reviews` ("a plain team member sees only their own") shows a team admin every
/// review of the pool, where SPEC 10 says "reviews they filed": the contract wins.
pub async fn check_review_reader(ctx: &Context<'_>, row: &ReviewRow) -> ApiResult<()> {
    review_reader(ctx, row).await.map(drop)
}

/// Why the caller may read a review (see [`check_review_reader`]): `Some((team, user))`
/// when only as an admin of the pool's team, a standing that can end while they watch it.
pub async fn review_reader(
    ctx: &Context<'_>,
    row: &ReviewRow,
) -> ApiResult<Option<(String, String)>> {
    let p = principal(ctx)?;
    match p.role {
        Role::Admin | Role::Service => return Ok(None),
        Role::User if p.owner_id.as_deref() == Some(row.reporter_id.as_str()) => return Ok(None),
        _ => {}
    }
    let wallet = ledger(ctx)
        .wallet(&WalletId(row.wallet_id.clone()))
        .await?
        .ok_or_else(ApiError::forbidden)?;
    match crate::access::wallet_access(ctx, &wallet).await? {
        crate::access::Access::Full => Ok(match (wallet.pool, p.user()) {
            (true, Some(user)) => Some((wallet.owner_id.clone(), user.to_owned())),
            _ => None,
        }),
        crate::access::Access::Member(_) => Err(ApiError::forbidden()),
    }
}

#[derive(Default)]
pub struct Mutation;

#[Object]
impl Mutation {
    #[graphql(guard = "RoleGuard::new(STAFF)")]
    async fn create_wallet(
        &self,
        ctx: &Context<'_>,
        input: CreateWalletInput,
    ) -> async_graphql::Result<WalletObject> {
        text("ownerId", &input.owner_id, MAX_KEY, false)?;
        catalogue_id("planId", &input.plan_id.0)?;
        let tz = parse_zone_name(&input.timezone).map_err(ApiError::from)?;
        let plan = PlanId(input.plan_id.0);
        let wallet = ledger(ctx)
            .create_wallet(
                &input.owner_id,
                &plan,
                tz,
                input.billing_anchor.map(DateTime::micros),
                input.idempotency_key,
            )
            .await
            .map_err(ApiError::from)?;
        Ok(WalletObject {
            wallet,
            access: crate::access::Access::Full,
        })
    }

    #[graphql(guard = "RoleGuard::new(ANY)")]
    async fn set_timezone(
        &self,
        ctx: &Context<'_>,
        wallet_id: ID,
        timezone: String,
    ) -> async_graphql::Result<WalletObject> {
        let tz = parse_zone_name(&timezone).map_err(ApiError::from)?;
        let id = WalletId(wallet_id.0);
        let wallet = ledger(ctx)
            .wallet(&id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found("wallet"))?;
        // A USER changes the zone of their own wallet, or of a pool they administer.
        if principal(ctx)?.is_user()
            && wallet_access(ctx, &wallet).await? != crate::access::Access::Full
        {
            return Err(ApiError::forbidden().into());
        }
        let wallet = ledger(ctx)
            .set_timezone(&id, tz)
            .await
            .map_err(ApiError::from)?;
        Ok(WalletObject {
            wallet,
            access: crate::access::Access::Full,
        })
    }

    #[graphql(guard = "RoleGuard::new(STAFF)")]
    async fn record_usage(
        &self,
        ctx: &Context<'_>,
        input: RecordUsageInput,
    ) -> async_graphql::Result<UsageReceipt> {
        let tokens = tokens(input.input_tokens, input.cached_tokens, input.output_tokens)?;
        text("idempotencyKey", &input.idempotency_key, MAX_KEY, false)?;
        text("threadId", &input.thread_id, MAX_KEY, false)?;
        member(input.member_id.as_ref())?;
        let r = ledger(ctx)
            .record_usage(UsageInput {
                wallet_id: WalletId(input.wallet_id.0),
                key: input.idempotency_key,
                thread_id: input.thread_id,
                model: input.model,
                tokens,
                member_id: input.member_id,
            })
            .await
            .map_err(ApiError::from)?;
        Ok(receipt(r))
    }

    #[graphql(guard = "RoleGuard::new(STAFF)")]
    async fn reserve_credits(
        &self,
        ctx: &Context<'_>,
        input: ReserveInput,
    ) -> async_graphql::Result<Reservation> {
        text("idempotencyKey", &input.idempotency_key, MAX_KEY, false)?;
        input.amount.0.positive().map_err(ApiError::from)?;
        member(input.member_id.as_ref())?;
        let r = ledger(ctx)
            .reserve(
                &WalletId(input.wallet_id.0),
                input.idempotency_key,
                input.amount.0,
                i64::from(input.ttl_seconds),
                input.member_id,
            )
            .await
            .map_err(ApiError::from)?;
        Ok(reservation(r))
    }

    #[graphql(guard = "RoleGuard::new(STAFF)")]
    async fn settle_reservation(
        &self,
        ctx: &Context<'_>,
        input: SettleInput,
    ) -> async_graphql::Result<UsageReceipt> {
        let tokens = tokens(input.input_tokens, input.cached_tokens, input.output_tokens)?;
        text("threadId", &input.thread_id, MAX_KEY, false)?;
        let r = ledger(ctx)
            .settle(
                &ReservationId(input.reservation_id.0),
                input.thread_id,
                input.model,
                tokens,
            )
            .await
            .map_err(ApiError::from)?;
        Ok(receipt(r))
    }

    #[graphql(guard = "RoleGuard::new(STAFF)")]
    async fn release_reservation(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Reservation> {
        Ok(reservation(
            ledger(ctx)
                .release(&ReservationId(id.0))
                .await
                .map_err(ApiError::from)?,
        ))
    }

    #[graphql(guard = "RoleGuard::new(STAFF)")]
    async fn grant_credits(
        &self,
        ctx: &Context<'_>,
        input: GrantInput,
    ) -> async_graphql::Result<Grant> {
        let p = principal(ctx)?;
        if p.role == Role::Service
            && matches!(input.kind, GrantKind::Admin | GrantKind::Compensation)
        {
            return Err(ApiError::forbidden().into());
        }
        if input.kind == GrantKind::Purchase {
            return Err(ApiError::invalid("PURCHASE lots come only from purchaseBundle").into());
        }
        text("idempotencyKey", &input.idempotency_key, MAX_KEY, false)?;
        text("reason", &input.reason, MAX_TEXT, true)?;
        input.amount.0.positive().map_err(ApiError::from)?;
        let kind: credits_core::GrantKind = input.kind.into();
        let expires_at = input.expires_at.map(DateTime::micros);
        if let Some(at) = expires_at {
            if !kind.may_expire() {
                return Err(
                    ApiError::invalid("PURCHASE and COMPENSATION grants never expire").into(),
                );
            }
            if at <= ledger(ctx).now() {
                return Err(ApiError::invalid("expiresAt must be in the future").into());
            }
        }
        let lot = ledger(ctx)
            .grant(
                &WalletId(input.wallet_id.0),
                input.idempotency_key,
                input.amount.0,
                kind,
                input.reason,
                expires_at,
            )
            .await
            .map_err(ApiError::from)?;
        Ok((&lot).into())
    }

    #[graphql(guard = "RoleGuard::new(STAFF)")]
    async fn purchase_bundle(
        &self,
        ctx: &Context<'_>,
        input: PurchaseBundleInput,
    ) -> async_graphql::Result<Grant> {
        text("paymentReference", &input.payment_reference, MAX_KEY, false)?;
        catalogue_id("bundleId", &input.bundle_id.0)?;
        let lot = ledger(ctx)
            .purchase_bundle(
                &WalletId(input.wallet_id.0),
                &input.bundle_id.0,
                input.payment_reference,
            )
            .await
            .map_err(ApiError::from)?;
        Ok((&lot).into())
    }

    #[graphql(guard = "RoleGuard::new(ADMIN)")]
    async fn upsert_plan(
        &self,
        ctx: &Context<'_>,
        input: PlanInput,
    ) -> async_graphql::Result<Plan> {
        let id = PlanId::parse(&input.id.0)
            .ok_or_else(|| ApiError::invalid("plan ids match [a-z0-9][a-z0-9-]{0,62}"))?;
        text("name", &input.name, MAX_TEXT, false)?;
        if input
            .model_tiers
            .iter()
            .any(|t| t.is_empty() || t.chars().count() > MAX_KEY)
        {
            return Err(
                ApiError::invalid(format!("model tiers are 1 to {MAX_KEY} characters")).into(),
            );
        }
        let plan = credits_core::Plan {
            id,
            name: input.name,
            daily_credits: input.daily_credits.0,
            subscription_credits: input.subscription_credits.0,
            interval: input.interval.into(),
            model_tiers: input.model_tiers,
            custom: true,
            retired: false,
            earlier: Vec::new(),
        };
        let plan = ledger(ctx)
            .upsert_plan(plan)
            .await
            .map_err(ApiError::from)?;
        Ok((&plan).into())
    }

    #[graphql(guard = "RoleGuard::new(STAFF)")]
    async fn change_plan(
        &self,
        ctx: &Context<'_>,
        wallet_id: ID,
        plan_id: ID,
    ) -> async_graphql::Result<WalletObject> {
        catalogue_id("planId", &plan_id.0)?;
        let wallet = ledger(ctx)
            .change_plan(&WalletId(wallet_id.0), &PlanId(plan_id.0))
            .await
            .map_err(ApiError::from)?;
        Ok(WalletObject {
            wallet,
            access: crate::access::Access::Full,
        })
    }

    #[graphql(guard = "RoleGuard::new(STAFF)")]
    async fn create_team(
        &self,
        ctx: &Context<'_>,
        input: CreateTeamInput,
    ) -> async_graphql::Result<TeamObject> {
        catalogue_id("planId", &input.plan_id.0)?;
        let tz = parse_zone_name(&input.timezone).map_err(ApiError::from)?;
        let team = ledger(ctx)
            .create_team(
                input.name,
                &PlanId(input.plan_id.0),
                tz,
                input.admin_user_ids,
            )
            .await
            .map_err(ApiError::from)?;
        Ok(TeamObject {
            team,
            access: crate::access::TeamAccess::Staff,
        })
    }

    #[graphql(guard = "RoleGuard::new(PEOPLE)")]
    async fn add_team_member(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        user_id: String,
        #[graphql(default_with = "TeamRole::Member")] role: TeamRole,
        daily_limit: Option<Credits>,
        period_limit: Option<Credits>,
    ) -> async_graphql::Result<TeamMemberObject> {
        text("userId", &user_id, MAX_KEY, false)?;
        let team = team_admin(ctx, &team_id.0).await?;
        let role = if role == TeamRole::Admin {
            MemberRole::Admin
        } else {
            MemberRole::Member
        };
        let l = ledger(ctx);
        let row = l
            .add_member(
                &team.id,
                user_id,
                role,
                daily_limit.map(|c| c.0),
                period_limit.map(|c| c.0),
            )
            .await
            .map_err(ApiError::from)?;
        Ok(member_object(ctx, &team, row).await?)
    }

    #[graphql(guard = "RoleGuard::new(PEOPLE)")]
    async fn set_member_limits(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        user_id: String,
        daily_limit: Option<Credits>,
        period_limit: Option<Credits>,
    ) -> async_graphql::Result<TeamMemberObject> {
        text("userId", &user_id, MAX_KEY, false)?;
        let team = team_admin(ctx, &team_id.0).await?;
        let l = ledger(ctx);
        let row = l
            .set_member_limits(
                &team.id,
                &user_id,
                daily_limit.map(|c| c.0),
                period_limit.map(|c| c.0),
            )
            .await
            .map_err(ApiError::from)?;
        Ok(member_object(ctx, &team, row).await?)
    }

    #[graphql(guard = "RoleGuard::new(PEOPLE)")]
    async fn remove_team_member(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        user_id: String,
    ) -> async_graphql::Result<bool> {
        text("userId", &user_id, MAX_KEY, false)?;
        let team = team_admin(ctx, &team_id.0).await?;
        Ok(ledger(ctx)
            .remove_member(&team.id, &user_id)
            .await
            .map_err(ApiError::from)?)
    }

    #[graphql(guard = "RoleGuard::new(ANY)")]
    async fn report_high_usage(
        &self,
        ctx: &Context<'_>,
        input: HighUsageReportInput,
    ) -> async_graphql::Result<ReviewObject> {
        Ok(ReviewObject::new(crate::reviews::report(ctx, input).await?))
    }

    #[graphql(guard = "RoleGuard::new(ADMIN)")]
    async fn resolve_review(
        &self,
        ctx: &Context<'_>,
        input: ResolveReviewInput,
    ) -> async_graphql::Result<ReviewObject> {
        Ok(ReviewObject::new(
            crate::reviews::resolve(ctx, input).await?,
        ))
    }

    /// Admins: revokes a token made by `createApiToken` or `creditd token create`; false
    /// when no such token is stored (the bootstrap admin token lives in
    /// `CREDITD_ADMIN_TOKEN`). Requests with it fail at once; a WebSocket opened with it is
    /// closed (4403) within one keepalive period.
    #[graphql(guard = "RoleGuard::new(ADMIN)")]
    async fn revoke_api_token(
        &self,
        ctx: &Context<'_>,
        token: String,
    ) -> async_graphql::Result<bool> {
        Ok(ledger(ctx)
            .store()
            .delete_token(&TokenHash::of_secret(token.trim()))
            .await
            .map_err(ApiError::from)?)
    }

    #[graphql(guard = "RoleGuard::new(ADMIN)")]
    async fn create_api_token(
        &self,
        ctx: &Context<'_>,
        role: Role,
        owner_id: Option<String>,
    ) -> async_graphql::Result<ApiToken> {
        let owner_id = match (role, owner_id) {
            (Role::User, Some(o)) => {
                text("ownerId", &o, MAX_KEY, false)?;
                Some(o)
            }
            (Role::User, None) => {
                return Err(ApiError::invalid("a USER token needs an ownerId").into());
            }
            (_, Some(_)) => {
                return Err(ApiError::invalid("only USER tokens have an ownerId").into());
            }
            (_, None) => None,
        };
        let token = credits_actors::ledger::new_token();
        let row = TokenRow {
            hash: TokenHash::of_secret(&token),
            role: match role {
                Role::Admin => TokenRole::Admin,
                Role::Service => TokenRole::Service,
                Role::User => TokenRole::User,
            },
            owner_id: owner_id.clone(),
            label: None,
            created_at: ledger(ctx).now(),
        };
        ledger(ctx)
            .store()
            .insert_token(&row)
            .await
            .map_err(ApiError::from)?;
        Ok(ApiToken {
            token,
            role,
            owner_id,
        })
    }

    #[graphql(guard = "RoleGuard::new(ADMIN)")]
    async fn reload_pricing(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Model>> {
        let l = ledger(ctx);
        let report = l.reload_pricing().await.map_err(ApiError::unavailable)?;
        for refused in &report.refused {
            tracing::warn!(%refused, "pricing plugin refused on reload");
        }
        Ok(crate::query::models(l))
    }

    /// Admins only; fails with FORBIDDEN unless the server runs on a manual clock.
    #[graphql(guard = "RoleGuard::new(ADMIN)")]
    async fn advance_clock(
        &self,
        ctx: &Context<'_>,
        seconds: i32,
    ) -> async_graphql::Result<DateTime> {
        if seconds < 0 {
            return Err(ApiError::invalid("seconds must not be negative").into());
        }
        match ledger(ctx)
            .advance_clock(i64::from(seconds))
            .await
            .map_err(ApiError::from)?
        {
            Some(now) => Ok(now.into()),
            None => Err(ApiError::new(
                crate::error::Code::Forbidden,
                "the server runs on the real clock",
            )
            .into()),
        }
    }
}

/// A recorded resolution or a fresh one for the store.
pub fn resolution(
    review: &ReviewRow,
    status: StoreReviewStatus,
    credited: Option<CoreCredits>,
    note: Option<String>,
    grant: Option<String>,
    now: chrono::DateTime<chrono::Utc>,
) -> ReviewResolution {
    ReviewResolution {
        review_id: review.id.clone(),
        status,
        credited_ucr: credited.map(CoreCredits::micro),
        note,
        grant_id: grant,
        resolved_at: now,
    }
}
