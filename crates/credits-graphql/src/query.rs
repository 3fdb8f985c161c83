//! Queries (SPEC 8, 10).

use async_graphql::{Context, ID, Object};
use credits_core::{Tokens, WalletId};

use crate::access::{ADMIN, ANY, RoleGuard, ledger, principal, team_access, wallet_access};
use crate::error::ApiError;
use crate::objects::{ReviewObject, TeamObject, Viewer, WalletObject, store_status};
use crate::scalars::Credits;
use crate::types::*;

/// Largest list of reviews one query returns.
pub const MAX_REVIEWS: i32 = 1000;

pub fn tokens(input: i32, cached: Option<i32>, output: i32) -> Result<Tokens, ApiError> {
    let cached = cached.unwrap_or(0);
    if input < 0 || cached < 0 || output < 0 {
        return Err(ApiError::invalid("token counts must not be negative"));
    }
    if cached > input {
        return Err(ApiError::invalid(
            "cachedTokens must not exceed inputTokens",
        ));
    }
    Ok(Tokens {
        input: input as u64,
        cached: cached as u64,
        output: output as u64,
    })
}

/// Every loaded model with the tier and plugin version that prices it.
pub fn models(ledger: &credits_actors::Ledger) -> Vec<Model> {
    ledger
        .pricing()
        .models()
        .into_iter()
        .map(|m| Model {
            id: ID(m.id),
            tier: m.tier,
            plugin_version: m.plugin_version,
        })
        .collect()
}

#[derive(Default)]
pub struct Query;

#[Object]
impl Query {
    #[graphql(guard = "RoleGuard::new(ANY)")]
    async fn wallet(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Option<WalletObject>> {
        let Some(wallet) = ledger(ctx)
            .wallet(&WalletId(id.0))
            .await
            .map_err(ApiError::from)?
        else {
            return Ok(None);
        };
        let access = wallet_access(ctx, &wallet).await?;
        Ok(Some(WalletObject { wallet, access }))
    }

    #[graphql(guard = "RoleGuard::new(ANY)")]
    async fn team(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<TeamObject>> {
        let Some(team) = ledger(ctx).team(&id.0).await.map_err(ApiError::from)? else {
            return Ok(None);
        };
        let access = team_access(ctx, &team).await?;
        Ok(Some(TeamObject { team, access }))
    }

    /// The catalogue, then custom plans by id; a USER sees custom plans of wallets they may read.
    /// A plan the catalogue no longer lists is left out (wallets on it still show it).
    #[graphql(guard = "RoleGuard::new(ANY)")]
    async fn plans(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Plan>> {
        let l = ledger(ctx);
        let plans = l.plans();
        let visible: Option<Vec<String>> = match principal(ctx)?.user() {
            None => None,
            Some(user) => {
                // The plans their wallets are on, and those they move to at their next
                // renewal (`Wallet.scheduledPlan` shows them too).
                let plans_of = |w: credits_core::Wallet| {
                    std::iter::once(w.plan_id.0).chain(w.scheduled_plan_id.map(|p| p.0))
                };
                let mut ids: Vec<String> = l
                    .wallets_of_owner(user)
                    .await
                    .map_err(ApiError::from)?
                    .into_iter()
                    .flat_map(plans_of)
                    .collect();
                for team in l
                    .store()
                    .teams_of_user(user)
                    .await
                    .map_err(ApiError::from)?
                {
                    if let Some(w) = l
                        .wallet(&WalletId(team.wallet_id))
                        .await
                        .map_err(ApiError::from)?
                    {
                        ids.extend(plans_of(w));
                    }
                }
                Some(ids)
            }
        };
        Ok(plans
            .iter()
            .filter(|p| !p.retired)
            .filter(|p| !p.custom || visible.as_ref().is_none_or(|ids| ids.contains(&p.id.0)))
            .map(Plan::from)
            .collect())
    }

    #[graphql(guard = "RoleGuard::new(ANY)")]
    async fn models(&self, ctx: &Context<'_>) -> Vec<Model> {
        models(ledger(ctx))
    }

    #[graphql(guard = "RoleGuard::new(ANY)")]
    async fn bundles(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Bundle>> {
        let rows = ledger(ctx)
            .store()
            .bundles()
            .await
            .map_err(ApiError::from)?;
        Ok(rows
            .into_iter()
            .map(|b| Bundle {
                id: ID(b.id),
                credits: credits_core::Credits::from_micro(b.credits_ucr).into(),
                price_cents: i32::try_from(b.price_cents).unwrap_or(i32::MAX),
                currency: b.currency,
            })
            .collect())
    }

    /// What recordUsage would charge now, with its input, model and plan checks but not the balance or limits. Changes nothing.
    #[graphql(guard = "RoleGuard::new(ANY)")]
    async fn quote(
        &self,
        ctx: &Context<'_>,
        wallet_id: ID,
        model: String,
        input_tokens: i32,
        output_tokens: i32,
        cached_tokens: Option<i32>,
    ) -> async_graphql::Result<Credits> {
        let tokens = tokens(input_tokens, cached_tokens, output_tokens)?;
        let l = ledger(ctx);
        let id = WalletId(wallet_id.0);
        let wallet = l
            .wallet(&id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found("wallet"))?;
        wallet_access(ctx, &wallet).await?;
        Ok(l.quote(&id, &model, tokens)
            .await
            .map_err(ApiError::from)?
            .into())
    }

    #[graphql(guard = "RoleGuard::new(ANY)")]
    async fn review(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<Option<ReviewObject>> {
        let Some(row) = ledger(ctx)
            .store()
            .review(&id.0)
            .await
            .map_err(ApiError::from)?
        else {
            return Ok(None);
        };
        crate::mutation::check_review_reader(ctx, &row).await?;
        Ok(Some(ReviewObject::new(row)))
    }

    /// Admins: reviews oldest first, optionally of one status.
    #[graphql(guard = "RoleGuard::new(ADMIN)")]
    async fn reviews(
        &self,
        ctx: &Context<'_>,
        status: Option<ReviewStatus>,
        first: Option<i32>,
    ) -> async_graphql::Result<Vec<ReviewObject>> {
        let first = first.unwrap_or(100);
        if !(0..=MAX_REVIEWS).contains(&first) {
            return Err(ApiError::invalid(format!("first must be 0 to {MAX_REVIEWS}")).into());
        }
        let store = ledger(ctx).store();
        let statuses = match status {
            Some(s) => vec![store_status(s)],
            None => vec![
                store_status(ReviewStatus::Submitted),
                store_status(ReviewStatus::Credited),
                store_status(ReviewStatus::Rejected),
            ],
        };
        let mut rows = Vec::new();
        for s in statuses {
            rows.extend(
                store
                    .reviews_by_status(s, first as usize)
                    .await
                    .map_err(ApiError::from)?,
            );
        }
        rows.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        rows.truncate(first as usize);
        Ok(rows.into_iter().map(ReviewObject::new).collect())
    }

    /// Who the token belongs to. For USER: their own wallets and the teams they belong to; ADMIN and SERVICE get empty lists and read wallets by id.
    #[graphql(guard = "RoleGuard::new(ANY)")]
    async fn viewer(&self) -> Viewer {
        Viewer
    }
}
