//! The plan and bundle catalogue: TOML embedded in the binary or given with `--catalogue`,
//! parsed into core types once and upserted at every start (SPEC 5).

use anyhow::{Context, bail};
use credits_core::wallet::{MAX_KEY_CHARS, MAX_TEXT_CHARS};
use credits_core::{BillingInterval, Credits, Plan, PlanId, plan::is_slug};
use serde::Deserialize;

pub const EMBEDDED: &str = include_str!("catalogue.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    plans: Vec<PlanEntry>,
    #[serde(default)]
    bundles: Vec<BundleEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanEntry {
    id: String,
    name: String,
    daily_credits: String,
    subscription_credits: String,
    interval: String,
    model_tiers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleEntry {
    id: String,
    credits: String,
    price_cents: i64,
    currency: String,
}

/// A bundle on sale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub id: String,
    pub credits: Credits,
    pub price_cents: i64,
    pub currency: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalogue {
    pub plans: Vec<Plan>,
    pub bundles: Vec<Bundle>,
}

pub fn parse(text: &str) -> anyhow::Result<Catalogue> {
    let file: File =
        toml::from_str(text).context("catalogue is not valid TOML of [[plans]] and [[bundles]]")?;
    let mut plans: Vec<Plan> = Vec::new();
    for p in file.plans {
        let id = PlanId::parse(&p.id)
            .with_context(|| format!("plan id {:?} must match [a-z0-9][a-z0-9-]{{0,62}}", p.id))?;
        if plans.iter().any(|q| q.id == id) {
            bail!("plan {} is listed twice", p.id);
        }
        // The same rules as upsertPlan's.
        if p.name.is_empty() || p.name.chars().count() > MAX_TEXT_CHARS {
            bail!(
                "plan {}: name must be 1 to {MAX_TEXT_CHARS} characters",
                p.id
            );
        }
        if p.model_tiers
            .iter()
            .any(|t| t.is_empty() || t.chars().count() > MAX_KEY_CHARS)
        {
            bail!(
                "plan {}: model tiers are 1 to {MAX_KEY_CHARS} characters",
                p.id
            );
        }
        let Some(interval) = BillingInterval::parse(&p.interval) else {
            bail!(
                "plan {}: interval {:?} is not MONTHLY or ANNUAL",
                p.id,
                p.interval
            );
        };
        let plan = Plan {
            id,
            name: p.name,
            daily_credits: Credits::parse_non_negative(&p.daily_credits)
                .with_context(|| format!("plan {}: daily_credits", p.id))?,
            subscription_credits: Credits::parse_non_negative(&p.subscription_credits)
                .with_context(|| format!("plan {}: subscription_credits", p.id))?,
            interval,
            model_tiers: p.model_tiers,
            custom: false,
            retired: false,
            earlier: Vec::new(),
        };
        if let Err(e) = plan.check_credits() {
            bail!("plan {}: {e}", p.id);
        }
        plans.push(plan);
    }
    let mut bundles = Vec::new();
    for b in file.bundles {
        if !is_slug(&b.id) {
            bail!("bundle id {:?} must match [a-z0-9][a-z0-9-]{{0,62}}", b.id);
        }
        if bundles.iter().any(|c: &Bundle| c.id == b.id) {
            bail!("bundle {} is listed twice", b.id);
        }
        // `priceCents` is a GraphQL Int.
        if !(0..=i64::from(i32::MAX)).contains(&b.price_cents) {
            bail!("bundle {}: price_cents must be 0 to {}", b.id, i32::MAX);
        }
        if !(b.currency.len() == 3 && b.currency.bytes().all(|c| c.is_ascii_uppercase())) {
            bail!(
                "bundle {}: currency {:?} must be a three-letter code such as USD",
                b.id,
                b.currency
            );
        }
        bundles.push(Bundle {
            credits: Credits::parse_positive(&b.credits)
                .with_context(|| format!("bundle {}: credits", b.id))?,
            id: b.id,
            price_cents: b.price_cents,
            currency: b.currency,
        });
    }
    Ok(Catalogue { plans, bundles })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_catalogue_is_the_specified_one() {
        let c = parse(EMBEDDED).unwrap();
        let ids: Vec<&str> = c.plans.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["free", "pro", "pro-annual", "max", "team"]);
        let pro = &c.plans[1];
        assert_eq!(
            (pro.daily_credits, pro.subscription_credits),
            (
                Credits::from_whole(20).unwrap(),
                Credits::from_whole(500).unwrap()
            )
        );
        assert_eq!(
            c.bundles
                .iter()
                .map(|b| (b.id.as_str(), b.price_cents))
                .collect::<Vec<_>>(),
            [
                ("credits-100", 1000),
                ("credits-500", 4500),
                ("credits-2000", 16000)
            ]
        );
    }

    #[test]
    fn bad_entries_are_refused_with_the_reason() {
        let bad = "[[plans]]\nid = \"Pro\"\nname = \"x\"\ndaily_credits = \"1\"\nsubscription_credits = \"1\"\ninterval = \"MONTHLY\"\nmodel_tiers = []\n";
        assert!(parse(bad).unwrap_err().to_string().contains("plan id"));
        let bad = "[[plans]]\nid = \"p\"\nname = \"x\"\ndaily_credits = \"1.0000001\"\nsubscription_credits = \"1\"\ninterval = \"MONTHLY\"\nmodel_tiers = []\n";
        assert!(format!("{:#}", parse(bad).unwrap_err()).contains("daily_credits"));
    }

    /// Found by review: the catalogue took what the API refuses, and prices a client
    /// cannot be shown.
    #[test]
    fn a_catalogue_the_api_would_refuse_is_refused() {
        let plan = |id: &str, name: &str, tiers: &str| {
            format!(
                "[[plans]]\nid = \"{id}\"\nname = \"{name}\"\ndaily_credits = \"1\"\nsubscription_credits = \"1\"\ninterval = \"MONTHLY\"\nmodel_tiers = [{tiers}]\n"
            )
        };
        let bundle = |id: &str, price: &str, currency: &str| {
            format!(
                "[[bundles]]\nid = \"{id}\"\ncredits = \"1\"\nprice_cents = {price}\ncurrency = \"{currency}\"\n"
            )
        };
        for (text, why) in [
            (plan("p", "P", "") + &plan("p", "Q", ""), "listed twice"),
            (plan("p", "", ""), "name must be"),
            (plan("p", "P", "\"\""), "model tiers"),
            (
                bundle("b", "1", "USD") + &bundle("b", "2", "USD"),
                "listed twice",
            ),
            (bundle("b", "-500", "USD"), "price_cents"),
            (bundle("b", "3000000000", "USD"), "price_cents"),
            (bundle("b", "100", ""), "currency"),
            (bundle("b", "100", "usd"), "currency"),
        ] {
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(err.contains(why), "{text}: {err}");
        }
        assert!(parse(&(plan("p", "P", "\"economy\"") + &bundle("b", "0", "EUR"))).is_ok());
    }
}
