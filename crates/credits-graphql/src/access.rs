//! Who a token is and what it may read (SPEC 10). Roles are checked by guards on every
//! field; ownership — a USER's own wallets, the teams they belong to, the reviews they
//! filed — is checked here, with the data the check needs.

use async_graphql::{Context, Guard, Result};
use credits_actors::Ledger;
use credits_core::Wallet;
use credits_store::{MemberRole, TeamRow};

use crate::error::{ApiError, ApiResult};
use crate::types::Role;

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub role: Role,
    /// The user a USER token belongs to.
    pub owner_id: Option<String>,
}

impl Principal {
    pub fn is_user(&self) -> bool {
        self.role == Role::User
    }

    pub fn user(&self) -> Option<&str> {
        if self.is_user() {
            self.owner_id.as_deref()
        } else {
            None
        }
    }
}

pub fn principal<'a>(ctx: &Context<'a>) -> ApiResult<&'a Principal> {
    ctx.data_opt::<Principal>().ok_or_else(|| {
        ApiError::new(
            crate::error::Code::Unauthenticated,
            "a bearer token is required",
        )
    })
}

pub fn ledger<'a>(ctx: &Context<'a>) -> &'a Ledger {
    ctx.data_unchecked::<Ledger>()
}

/// Lets a field run only for the listed roles.
pub struct RoleGuard(&'static [Role]);

impl RoleGuard {
    pub const fn new(roles: &'static [Role]) -> RoleGuard {
        RoleGuard(roles)
    }
}

pub const ANY: &[Role] = &[Role::Admin, Role::Service, Role::User];
pub const STAFF: &[Role] = &[Role::Admin, Role::Service];
pub const ADMIN: &[Role] = &[Role::Admin];
/// Team member configuration: ADMIN tokens and USERs (who must administer the team).
pub const PEOPLE: &[Role] = &[Role::Admin, Role::User];

impl Guard for RoleGuard {
    async fn check(&self, ctx: &Context<'_>) -> Result<()> {
        let p = principal(ctx)?;
        if self.0.contains(&p.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden().into())
        }
    }
}

/// How much of a wallet a caller sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// ADMIN, SERVICE, the owner, or an admin of the team that owns the pool.
    Full,
    /// A plain member of the pool's team: only their own usage and reviews.
    Member(String),
}

/// A team and the caller's place in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TeamAccess {
    Staff,
    Admin(String),
    Member(String),
}

impl TeamAccess {
    pub fn administers(&self) -> bool {
        matches!(self, TeamAccess::Staff | TeamAccess::Admin(_))
    }

    pub fn wallet_access(&self) -> Access {
        match self {
            TeamAccess::Member(u) => Access::Member(u.clone()),
            _ => Access::Full,
        }
    }
}

/// The caller's standing in a team; FORBIDDEN for a USER who is not a member.
pub async fn team_access(ctx: &Context<'_>, team: &TeamRow) -> ApiResult<TeamAccess> {
    let p = principal(ctx)?;
    let Some(user) = p.user() else {
        return Ok(TeamAccess::Staff);
    };
    let member = ledger(ctx).store().member(&team.id, user).await?;
    match member.map(|m| m.role) {
        Some(MemberRole::Admin) => Ok(TeamAccess::Admin(user.to_owned())),
        Some(MemberRole::Member) => Ok(TeamAccess::Member(user.to_owned())),
        None => Err(ApiError::forbidden()),
    }
}

/// What the caller may see of a wallet; FORBIDDEN when nothing.
pub async fn wallet_access(ctx: &Context<'_>, wallet: &Wallet) -> ApiResult<Access> {
    let p = principal(ctx)?;
    let Some(user) = p.user() else {
        return Ok(Access::Full);
    };
    if !wallet.pool {
        return if wallet.owner_id == user {
            Ok(Access::Full)
        } else {
            Err(ApiError::forbidden())
        };
    }
    // A pool's owner is its team.
    let team = ledger(ctx)
        .team(&wallet.owner_id)
        .await
        .map_err(crate::error::service)?
        .ok_or_else(ApiError::forbidden)?;
    Ok(team_access(ctx, &team).await?.wallet_access())
}
