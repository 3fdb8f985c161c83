//! Plans and the identifiers of things a wallet holds. A plan is data the core reads when a
//! reset, renewal or plan change happens; the ledger records the amounts it granted, so replay
//! never reads a plan.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::amount::Credits;
use crate::calendar::BillingInterval;

/// Longest plan or bundle id (SPEC 1: `[a-z0-9][a-z0-9-]{0,62}`).
pub const MAX_PLAN_ID_LEN: usize = 63;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_owned())
            }
        }
    };
}

id_type!(
    /// A wallet (`wal_…`).
    WalletId
);
id_type!(
    /// A grant lot (`grt_…`).
    GrantId
);
id_type!(
    /// A reservation (`res_…`).
    ReservationId
);
id_type!(
    /// A usage event (`use_…`).
    UsageId
);
id_type!(
    /// A plan: `[a-z0-9][a-z0-9-]{0,62}`.
    PlanId
);

impl PlanId {
    /// Plan and bundle ids match `[a-z0-9][a-z0-9-]{0,62}`.
    pub fn parse(s: &str) -> Option<PlanId> {
        is_slug(s).then(|| PlanId(s.to_owned()))
    }
}

/// `[a-z0-9][a-z0-9-]{0,62}`: the form of plan and bundle ids.
pub fn is_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_PLAN_ID_LEN
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// What a plan gives a wallet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub id: PlanId,
    pub name: String,
    pub daily_credits: Credits,
    pub subscription_credits: Credits,
    pub interval: BillingInterval,
    pub model_tiers: Vec<String>,
    pub custom: bool,
    /// A catalogue plan the current catalogue no longer lists: wallets on it keep it, and
    /// no wallet is created on it or asks to move onto it (a change scheduled while it was
    /// offered still takes effect at the renewal).
    #[serde(default)]
    pub retired: bool,
    /// The credits it gave up to each edit of them, oldest first (SPEC 5: an edit counts
    /// from each wallet's next reset or renewal, so a reset due before an edit, applied
    /// late, takes the credits of its own instant). Empty: the credits never changed, or
    /// their history is not known here.
    #[serde(default)]
    pub earlier: Vec<EarlierCredits>,
}

/// A plan's credits up to an edit at `until`: a reset or renewal at `until` itself still
/// takes them (what fell due by the edit's instant is applied before the edit is written).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlierCredits {
    pub until: DateTime<Utc>,
    pub daily: Credits,
    pub subscription: Credits,
}

impl EarlierCredits {
    /// Of a plan's `earlier` credits (oldest first), those given at `at`: up to the first
    /// edit at or after it. `None`: the plan's current credits.
    pub fn in_force(earlier: &[EarlierCredits], at: DateTime<Utc>) -> Option<&EarlierCredits> {
        earlier.iter().find(|e| at <= e.until)
    }
}

impl Plan {
    /// The daily credits a reset at `at` gives.
    pub fn daily_credits_at(&self, at: DateTime<Utc>) -> Credits {
        self.credits_at(at).0
    }

    /// The subscription credits a renewal at `at` gives.
    pub fn subscription_credits_at(&self, at: DateTime<Utc>) -> Credits {
        self.credits_at(at).1
    }

    fn credits_at(&self, at: DateTime<Utc>) -> (Credits, Credits) {
        match EarlierCredits::in_force(&self.earlier, at) {
            Some(e) => (e.daily, e.subscription),
            None => (self.daily_credits, self.subscription_credits),
        }
    }

    /// The (daily, subscription) credits a plan change onto this plan at `at` takes: with
    /// every edit up to `at` in, one at `at` itself included (the edit's caller was answered
    /// first). By the instant, not the newest row, so that a node whose clock is behind
    /// the editing node's decides as the commit check does.
    pub fn credits_after(&self, at: DateTime<Utc>) -> (Credits, Credits) {
        match self.earlier.iter().find(|e| at < e.until) {
            Some(e) => (e.daily, e.subscription),
            None => (self.daily_credits, self.subscription_credits),
        }
    }

    /// Whether a wallet may be created on this plan or move onto it.
    pub fn check_offered(&self) -> Result<(), String> {
        if self.retired {
            return Err(format!("plan {} is no longer offered", self.id));
        }
        Ok(())
    }

    /// Its credits are at most [`Credits::MAX_HOLDING`] each, so that a wallet's buckets
    /// and lots always add up (SPEC 1: checked arithmetic).
    pub fn check_credits(&self) -> Result<(), String> {
        for (name, credits) in [
            ("dailyCredits", self.daily_credits),
            ("subscriptionCredits", self.subscription_credits),
        ] {
            if credits > Credits::MAX_HOLDING {
                return Err(format!("{name} must be at most {}", Credits::MAX_HOLDING));
            }
        }
        Ok(())
    }

    pub fn allows_tier(&self, tier: &str) -> bool {
        self.model_tiers.iter().any(|t| t == tier)
    }
}

/// Where the core reads the current definition of a plan.
pub trait Plans {
    fn plan(&self, id: &PlanId) -> Option<&Plan>;
}

impl Plans for HashMap<PlanId, Plan> {
    fn plan(&self, id: &PlanId) -> Option<&Plan> {
        self.get(id)
    }
}

impl Plans for BTreeMap<PlanId, Plan> {
    fn plan(&self, id: &PlanId) -> Option<&Plan> {
        self.get(id)
    }
}

impl Plans for [Plan] {
    fn plan(&self, id: &PlanId) -> Option<&Plan> {
        self.iter().find(|p| &p.id == id)
    }
}

impl Plans for Vec<Plan> {
    fn plan(&self, id: &PlanId) -> Option<&Plan> {
        self.as_slice().plan(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_rules() {
        for ok in ["free", "pro-annual", "0", "a-", &"a".repeat(63)] {
            assert!(is_slug(ok), "{ok}");
        }
        for bad in ["", "-a", "Pro", "a_b", "a b", &"a".repeat(64), "é"] {
            assert!(!is_slug(bad), "{bad}");
        }
    }
}
