//! One named test per rule of SPEC 3–5, driven through the reference `Journal`.

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use credits_core::testing::{Journal, Outcome, catalogue};
use credits_core::{
    BillingInterval, Cause, Credits, EarlierCredits, EntryKind, GrantId, GrantKind, GrantOp,
    LotOrigin, Member, NewWallet, Op, OpError, Plan, PlanId, ReservationId, ReserveOp, SettleOp,
    Source, Tokens, UsageId, UsageOp, WalletId,
};

fn at(s: &str) -> DateTime<Utc> {
    s.parse().expect("RFC 3339 instant")
}

fn cr(s: &str) -> Credits {
    Credits::parse(s).expect("amount")
}

fn open(plan: &str, zone: &str, created: &str, anchor: Option<&str>) -> Journal {
    open_with(catalogue(), plan, zone, created, anchor, false)
}

fn open_with(
    plans: Vec<Plan>,
    plan: &str,
    zone: &str,
    created: &str,
    anchor: Option<&str>,
    pool: bool,
) -> Journal {
    let new = NewWallet {
        id: WalletId::from("wal_1"),
        owner_id: "u1".into(),
        pool,
        timezone: zone.parse::<Tz>().unwrap(),
        plan_id: PlanId::from(plan),
        billing_anchor: anchor.map(at),
    };
    Journal::create(new, plans, at(created)).expect("wallet")
}

fn usage(key: &str, cost: &str) -> Op {
    usage_on("standard", key, cost, None)
}

fn usage_on(tier: &str, key: &str, cost: &str, member: Option<Member>) -> Op {
    Op::Usage(UsageOp {
        id: UsageId(format!("use_{key}")),
        key: key.into(),
        thread_id: "thread-1".into(),
        model: format!("{tier}-model"),
        tier: tier.into(),
        tokens: Tokens {
            input: 1000,
            cached: 100,
            output: 50,
        },
        cost: cr(cost),
        priced_by: format!("{tier}@1.0.0"),
        member,
    })
}

fn grant(id: &str, amount: &str, kind: GrantKind, expires_at: Option<&str>) -> Op {
    Op::Grant(GrantOp {
        id: GrantId::from(id),
        key: Some(format!("key-{id}")),
        amount: cr(amount),
        kind,
        reason: Some("because".into()),
        expires_at: expires_at.map(at),
        origin: None,
    })
}

/// A purchase of 100 credits as `purchaseBundle` sends it (no key: the payment reference
/// makes it unique).
fn purchase(id: &str, bundle: &str, reference: &str) -> Op {
    credits_core::testing::purchase(id, bundle, reference, cr("100"))
}

fn reserve(key: &str, amount: &str, ttl_seconds: u32) -> Op {
    reserve_as(key, amount, ttl_seconds, None)
}

fn reserve_as(key: &str, amount: &str, ttl_seconds: u32, member: Option<Member>) -> Op {
    Op::Reserve(ReserveOp {
        id: ReservationId(format!("res_{key}")),
        key: key.into(),
        amount: cr(amount),
        ttl_seconds,
        member,
    })
}

fn settle(key: &str, cost: &str) -> Op {
    Op::Settle(SettleOp {
        reservation_id: ReservationId(format!("res_{key}")),
        usage_id: UsageId(format!("use_settle_{key}")),
        thread_id: "thread-1".into(),
        model: "standard-model".into(),
        tier: "standard".into(),
        tokens: Tokens {
            input: 10,
            cached: 0,
            output: 10,
        },
        cost: cr(cost),
        priced_by: "standard@1.0.0".into(),
    })
}

fn ok(j: &mut Journal, t: &str, op: &Op) -> credits_core::Entry {
    match j.run(at(t), op) {
        Ok(Outcome::Applied(e)) => {
            j.check_invariants().unwrap();
            e
        }
        other => panic!("expected the call to apply, got {other:?}"),
    }
}

fn refused(j: &mut Journal, t: &str, op: &Op) -> OpError {
    j.advance_to(at(t));
    let before = (j.wallet.clone(), j.entries.len());
    let err = j.run(at(t), op).expect_err("expected a refusal");
    assert_eq!(
        (j.wallet.clone(), j.entries.len()),
        before,
        "a refused call changes nothing"
    );
    err
}

/// (daily, subscription, bonus) remaining.
fn buckets(j: &Journal) -> (Credits, Credits, Credits) {
    let b = j.wallet.balance();
    (
        b.daily.remaining,
        b.subscription.remaining,
        b.bonus_remaining,
    )
}

fn charged(e: &credits_core::Entry) -> Vec<(Source, Credits)> {
    e.usage()
        .unwrap()
        .charged
        .iter()
        .map(|c| (c.source.clone(), c.amount))
        .collect()
}

fn lot(id: &str) -> Source {
    Source::Lot(GrantId::from(id))
}

fn causes_between(j: &Journal, from_seq: usize) -> Vec<(Cause, DateTime<Utc>)> {
    j.entries[from_seq..]
        .iter()
        .map(|e| (e.cause(), e.at))
        .collect()
}

// ---- burn-down -----------------------------------------------------------------------------

#[test]
fn debit_spends_daily_then_subscription_then_bonus() {
    let mut j = open("pro", "UTC", "2027-03-10T12:00:00Z", None);
    ok(
        &mut j,
        "2027-03-10T12:00:00Z",
        &grant("g1", "10", GrantKind::Admin, None),
    );
    let e = ok(&mut j, "2027-03-10T12:00:00Z", &usage("a", "525"));
    assert_eq!(
        charged(&e),
        vec![
            (Source::Daily, cr("20")),
            (Source::Subscription, cr("500")),
            (lot("g1"), cr("5"))
        ]
    );
    assert_eq!(buckets(&j), (cr("0"), cr("0"), cr("5")));
}

#[test]
fn lots_spend_soonest_expiry_first_and_no_expiry_last() {
    let mut j = open("free", "UTC", "2027-03-10T12:00:00Z", None);
    ok(
        &mut j,
        "2027-03-10T12:00:00Z",
        &grant("never", "1", GrantKind::Admin, None),
    );
    ok(
        &mut j,
        "2027-03-10T12:00:00Z",
        &grant(
            "late",
            "1",
            GrantKind::Promotion,
            Some("2027-05-01T00:00:00Z"),
        ),
    );
    ok(
        &mut j,
        "2027-03-10T12:00:00Z",
        &grant(
            "soon",
            "1",
            GrantKind::Community,
            Some("2027-04-01T00:00:00Z"),
        ),
    );
    let e = ok(
        &mut j,
        "2027-03-10T12:00:00Z",
        &usage_on("economy", "a", "7.5", None),
    );
    assert_eq!(
        charged(&e),
        vec![
            (Source::Daily, cr("5")),
            (lot("soon"), cr("1")),
            (lot("late"), cr("1")),
            (lot("never"), cr("0.5"))
        ]
    );
}

#[test]
fn lots_with_equal_expiry_are_spent_oldest_first_by_grant_order_not_id() {
    let mut j = open("free", "UTC", "2027-03-10T12:00:00Z", None);
    ok(
        &mut j,
        "2027-03-10T12:00:00Z",
        &grant(
            "zz-first",
            "2",
            GrantKind::Admin,
            Some("2027-04-01T00:00:00Z"),
        ),
    );
    ok(
        &mut j,
        "2027-03-10T12:00:01Z",
        &grant(
            "aa-second",
            "2",
            GrantKind::Admin,
            Some("2027-04-01T00:00:00Z"),
        ),
    );
    let e = ok(
        &mut j,
        "2027-03-10T12:00:02Z",
        &usage_on("economy", "a", "8", None),
    );
    assert_eq!(
        charged(&e),
        vec![
            (Source::Daily, cr("5")),
            (lot("zz-first"), cr("2")),
            (lot("aa-second"), cr("1"))
        ]
    );
}

#[test]
fn debit_is_all_or_nothing() {
    let mut j = open("pro", "UTC", "2027-03-10T12:00:00Z", None);
    let err = refused(&mut j, "2027-03-10T12:00:00Z", &usage("a", "520.000001"));
    assert_eq!(
        err,
        OpError::InsufficientCredits {
            needed: cr("520.000001"),
            available: cr("520")
        }
    );
    ok(&mut j, "2027-03-10T12:00:00Z", &usage("b", "520"));
    assert_eq!(j.wallet.spendable(), Credits::ZERO);
}

#[test]
fn model_tier_must_be_allowed_by_the_plan() {
    let mut j = open("free", "UTC", "2027-03-10T12:00:00Z", None);
    let err = refused(
        &mut j,
        "2027-03-10T12:00:00Z",
        &usage_on("premium", "a", "1", None),
    );
    assert!(matches!(err, OpError::ModelNotAllowed { .. }));
}

// ---- daily resets ----------------------------------------------------------------------------

#[test]
fn daily_resets_at_local_midnight_without_rollover() {
    let mut j = open("free", "Asia/Kolkata", "2027-03-10T12:00:00Z", None);
    ok(
        &mut j,
        "2027-03-10T12:00:00Z",
        &usage_on("economy", "a", "2", None),
    );
    // Kolkata is +05:30: local midnight of Mar 11 is 18:30Z on Mar 10.
    assert_eq!(j.wallet.daily.next_reset, at("2027-03-10T18:30:00Z"));
    let due = j.advance_to(at("2027-03-10T18:30:00Z"));
    assert_eq!(due.len(), 1);
    assert!(
        matches!(due[0].kind, EntryKind::DailyReset { expired, allowance, .. } if expired == cr("3") && allowance == cr("5"))
    );
    assert_eq!(j.wallet.daily.remaining, cr("5"));
    assert_eq!(j.wallet.daily.next_reset, at("2027-03-11T18:30:00Z"));
}

fn reset_instants(zone: &str, from: &str, until: &str) -> Vec<DateTime<Utc>> {
    let mut j = open("free", zone, from, None);
    j.advance_to(at(until));
    j.entries
        .iter()
        .filter(|e| e.cause() == Cause::DailyReset)
        .map(|e| e.at)
        .collect()
}

#[test]
fn havana_reset_without_local_midnight_is_the_first_existing_instant() {
    // 2026-03-08: clocks jump from 00:00 to 01:00 CDT; the day starts at 01:00 (05:00Z).
    let r = reset_instants(
        "America/Havana",
        "2026-03-07T12:00:00Z",
        "2026-03-09T12:00:00Z",
    );
    assert_eq!(
        r,
        vec![at("2026-03-08T05:00:00Z"), at("2026-03-09T04:00:00Z")]
    );
}

#[test]
fn havana_double_midnight_resets_once_at_the_earlier() {
    // 2026-11-01: at 01:00 CDT clocks go back to 00:00 CST; midnight happens at 04:00Z and 05:00Z.
    let r = reset_instants(
        "America/Havana",
        "2026-10-31T12:00:00Z",
        "2026-11-02T12:00:00Z",
    );
    assert_eq!(
        r,
        vec![at("2026-11-01T04:00:00Z"), at("2026-11-02T05:00:00Z")]
    );
}

#[test]
fn extreme_offsets_reset_at_their_local_midnight() {
    assert_eq!(
        reset_instants(
            "Pacific/Kiritimati",
            "2027-06-01T00:00:00Z",
            "2027-06-02T00:00:00Z"
        ),
        vec![at("2027-06-01T10:00:00Z")]
    );
    assert_eq!(
        reset_instants(
            "Pacific/Pago_Pago",
            "2027-06-01T00:00:00Z",
            "2027-06-02T00:00:00Z"
        ),
        vec![at("2027-06-01T11:00:00Z")]
    );
    assert_eq!(
        reset_instants(
            "Asia/Kolkata",
            "2027-06-01T00:00:00Z",
            "2027-06-02T00:00:00Z"
        ),
        vec![at("2027-06-01T18:30:00Z")]
    );
}

#[test]
fn a_new_wallet_resets_at_the_next_local_midnight_even_if_soon() {
    let r = reset_instants("UTC", "2027-06-01T23:59:00Z", "2027-06-02T00:00:00Z");
    assert_eq!(r, vec![at("2027-06-02T00:00:00Z")]);
}

#[test]
fn idle_wallet_catches_up_each_reset_at_its_own_instant() {
    let mut j = open("free", "UTC", "2027-06-01T12:00:00Z", None);
    let before = j.entries.len();
    j.advance_to(at("2027-06-08T12:00:00Z"));
    let resets: Vec<_> = causes_between(&j, before)
        .into_iter()
        .filter(|(c, _)| *c == Cause::DailyReset)
        .map(|(_, t)| t)
        .collect();
    let expected: Vec<_> = (2..=8)
        .map(|d| at(&format!("2027-06-0{d}T00:00:00Z")))
        .collect();
    assert_eq!(resets, expected);
}

#[test]
fn operation_at_exactly_the_reset_instant_sees_the_reset() {
    let mut j = open("free", "UTC", "2027-06-01T12:00:00Z", None);
    ok(
        &mut j,
        "2027-06-01T12:00:00Z",
        &usage_on("economy", "a", "5", None),
    );
    let e = ok(
        &mut j,
        "2027-06-02T00:00:00Z",
        &usage_on("economy", "b", "5", None),
    );
    assert_eq!(charged(&e), vec![(Source::Daily, cr("5"))]);
}

#[test]
fn zone_change_west_right_after_a_reset_grants_no_extra_allowance() {
    // Reset in Tokyo (+9) at 15:00Z; Los Angeles (−7) midnight comes 7 hours later: too soon.
    let mut j = open("free", "Asia/Tokyo", "2027-06-01T00:00:00Z", None);
    j.advance_to(at("2027-06-01T15:00:00Z"));
    let e = ok(
        &mut j,
        "2027-06-01T15:30:00Z",
        &Op::SetTimezone("America/Los_Angeles".parse().unwrap()),
    );
    assert_eq!(e.cause(), Cause::TimezoneChange);
    assert_eq!(j.wallet.daily.next_reset, at("2027-06-03T07:00:00Z"));
    let before = j.entries.len();
    j.advance_to(at("2027-06-04T00:00:00Z"));
    let resets: Vec<_> = causes_between(&j, before)
        .into_iter()
        .filter(|(c, _)| *c == Cause::DailyReset)
        .map(|(_, t)| t)
        .collect();
    assert_eq!(resets, vec![at("2027-06-03T07:00:00Z")]);
}

#[test]
fn zone_change_east_never_yields_two_resets_within_23_hours() {
    // Reset in Los Angeles at 07:00Z; Tokyo midnight is 15:00Z the same day: too soon, skipped.
    let mut j = open("free", "America/Los_Angeles", "2027-06-01T00:00:00Z", None);
    j.advance_to(at("2027-06-01T07:00:00Z"));
    ok(
        &mut j,
        "2027-06-01T08:00:00Z",
        &Op::SetTimezone("Asia/Tokyo".parse().unwrap()),
    );
    assert_eq!(j.wallet.daily.next_reset, at("2027-06-02T15:00:00Z"));
    j.advance_to(at("2027-06-10T00:00:00Z"));
    let resets: Vec<_> = j
        .entries
        .iter()
        .filter(|e| e.cause() == Cause::DailyReset)
        .map(|e| e.at)
        .collect();
    assert!(
        resets
            .windows(2)
            .all(|w| w[1] - w[0] >= Duration::hours(23)),
        "{resets:?}"
    );
}

#[test]
fn zone_change_leaves_the_daily_bucket_as_it_is() {
    let mut j = open("free", "UTC", "2027-06-01T10:00:00Z", None);
    ok(
        &mut j,
        "2027-06-01T10:00:00Z",
        &usage_on("economy", "a", "1.5", None),
    );
    ok(
        &mut j,
        "2027-06-01T11:00:00Z",
        &Op::SetTimezone("Asia/Kolkata".parse().unwrap()),
    );
    assert_eq!(j.wallet.daily.remaining, cr("3.5"));
}

#[test]
fn zone_change_before_any_reset_counts_23_hours_from_creation() {
    let mut j = open("free", "UTC", "2027-06-01T20:00:00Z", None);
    ok(
        &mut j,
        "2027-06-01T20:30:00Z",
        &Op::SetTimezone("Asia/Tokyo".parse().unwrap()),
    );
    // Tokyo midnights: 2027-06-01T15:00Z (past), 06-02T15:00Z (19h after creation: too soon), 06-03T15:00Z.
    assert_eq!(j.wallet.daily.next_reset, at("2027-06-03T15:00:00Z"));
}

/// Found by review: setting the zone the wallet already has applied the 23-hour rule and
/// skipped a local date: here a new wallet at 23:30 local, whose first reset is 30 minutes
/// away.
#[test]
fn setting_the_same_zone_changes_no_reset() {
    let mut j = open("free", "Europe/Paris", "2027-06-01T21:30:00Z", None);
    assert_eq!(j.wallet.daily.next_reset, at("2027-06-01T22:00:00Z"));
    let e = ok(
        &mut j,
        "2027-06-01T21:40:00Z",
        &Op::SetTimezone("Europe/Paris".parse().unwrap()),
    );
    assert_eq!(e.cause(), Cause::TimezoneChange);
    assert_eq!(j.wallet.daily.next_reset, at("2027-06-01T22:00:00Z"));
    // Antarctica/Troll: the 22-hour day after the switch to summer time still resets.
    let mut j = open("free", "Antarctica/Troll", "2027-03-27T12:00:00Z", None);
    j.advance_to(at("2027-03-28T12:00:00Z"));
    ok(
        &mut j,
        "2027-03-28T12:00:00Z",
        &Op::SetTimezone("Antarctica/Troll".parse().unwrap()),
    );
    assert_eq!(j.wallet.daily.next_reset, at("2027-03-28T22:00:00Z"));
}

// ---- billing periods -------------------------------------------------------------------------

fn renewal_instants(plan: &str, anchor: &str, from: &str, until: &str) -> Vec<DateTime<Utc>> {
    let mut j = open(plan, "UTC", from, Some(anchor));
    j.advance_to(at(until));
    j.entries
        .iter()
        .filter(|e| e.cause() == Cause::Renewal)
        .map(|e| e.at)
        .collect()
}

#[test]
fn jan_31_monthly_anchor_clamps_in_february_and_returns_to_the_31st() {
    let leap = renewal_instants(
        "pro",
        "2028-01-31T10:00:00Z",
        "2028-01-31T10:00:00Z",
        "2028-04-01T00:00:00Z",
    );
    assert_eq!(
        leap,
        vec![at("2028-02-29T10:00:00Z"), at("2028-03-31T10:00:00Z")]
    );
    let common = renewal_instants(
        "pro",
        "2027-01-31T10:00:00Z",
        "2027-01-31T10:00:00Z",
        "2027-04-01T00:00:00Z",
    );
    assert_eq!(
        common,
        vec![at("2027-02-28T10:00:00Z"), at("2027-03-31T10:00:00Z")]
    );
}

#[test]
fn feb_29_annual_anchor_renews_on_feb_28_in_common_years() {
    let r = renewal_instants(
        "pro-annual",
        "2028-02-29T08:00:00Z",
        "2028-02-29T08:00:00Z",
        "2032-03-01T00:00:00Z",
    );
    assert_eq!(
        r,
        vec![
            at("2029-02-28T08:00:00Z"),
            at("2030-02-28T08:00:00Z"),
            at("2031-02-28T08:00:00Z"),
            at("2032-02-29T08:00:00Z")
        ]
    );
}

#[test]
fn anchor_in_the_past_gives_the_period_containing_now_with_full_allowance() {
    let j = open(
        "pro",
        "UTC",
        "2027-06-20T00:00:00Z",
        Some("2027-01-31T10:00:00Z"),
    );
    assert_eq!(
        (
            j.wallet.subscription.period_start,
            j.wallet.subscription.period_end
        ),
        (at("2027-05-31T10:00:00Z"), at("2027-06-30T10:00:00Z"))
    );
    assert_eq!(buckets(&j), (cr("20"), cr("500"), cr("0")));
}

#[test]
fn anchor_after_now_is_invalid() {
    let new = NewWallet {
        id: WalletId::from("wal_1"),
        owner_id: "u1".into(),
        pool: false,
        timezone: Tz::UTC,
        plan_id: PlanId::from("pro"),
        billing_anchor: Some(at("2027-06-20T00:00:01Z")),
    };
    assert!(matches!(
        Journal::create(new.clone(), catalogue(), at("2027-06-20T00:00:00Z")),
        Err(OpError::InvalidInput(_))
    ));
    // SPEC 10: INVALID_INPUT comes before NOT_FOUND.
    let unknown_plan = NewWallet {
        plan_id: PlanId::from("nosuch"),
        ..new
    };
    assert!(matches!(
        Journal::create(unknown_plan, catalogue(), at("2027-06-20T00:00:00Z")),
        Err(OpError::InvalidInput(_))
    ));
}

#[test]
fn renewal_expires_the_unused_subscription() {
    let mut j = open("pro", "UTC", "2027-06-01T00:00:00Z", None);
    ok(&mut j, "2027-06-01T00:00:00Z", &usage("a", "100"));
    let due = j.advance_to(at("2027-07-01T00:00:00Z"));
    let renewal = due.iter().find(|e| e.cause() == Cause::Renewal).unwrap();
    assert!(
        matches!(renewal.kind, EntryKind::Renewed { expired, allowance, .. } if expired == cr("420") && allowance == cr("500"))
    );
    assert_eq!(j.wallet.subscription.remaining, cr("500"));
}

#[test]
fn due_events_at_one_instant_apply_in_spec_order() {
    // Reservation, lot, renewal and reset all due at 2027-07-01T00:00Z.
    let mut j = open("pro", "UTC", "2027-06-01T00:00:00Z", None);
    ok(
        &mut j,
        "2027-06-30T23:00:00Z",
        &grant("g", "3", GrantKind::Promotion, Some("2027-07-01T00:00:00Z")),
    );
    ok(&mut j, "2027-06-30T23:00:00Z", &reserve("r", "1", 3600));
    let before = j.entries.len();
    j.advance_to(at("2027-07-01T00:00:00Z"));
    let t = at("2027-07-01T00:00:00Z");
    assert_eq!(
        causes_between(&j, before),
        vec![
            (Cause::Release, t),
            (Cause::Expiry, t),
            (Cause::Renewal, t),
            (Cause::DailyReset, t)
        ]
    );
}

#[test]
fn lot_expiring_at_t_is_not_spendable_at_t() {
    let mut j = open("free", "UTC", "2027-06-01T00:00:00Z", None);
    ok(
        &mut j,
        "2027-06-01T00:00:00Z",
        &usage_on("economy", "a", "5", None),
    );
    ok(
        &mut j,
        "2027-06-01T00:00:00Z",
        &grant("g", "3", GrantKind::Admin, Some("2027-06-01T12:00:00Z")),
    );
    refused(
        &mut j,
        "2027-06-01T12:00:00Z",
        &usage_on("economy", "b", "1", None),
    );
    assert!(
        j.entries
            .iter()
            .any(|e| matches!(&e.kind, EntryKind::LotExpired { amount, .. } if *amount == cr("3")))
    );
}

#[test]
fn custom_plan_edit_applies_daily_at_next_reset_and_subscription_at_next_renewal() {
    let mut plans = catalogue();
    plans.push(acme(Vec::new()));
    let mut j = open_with(plans, "acme", "UTC", "2027-06-15T12:00:00Z", None, false);
    let p = j
        .plans
        .iter_mut()
        .find(|p| p.id.as_str() == "acme")
        .unwrap();
    p.daily_credits = cr("11");
    p.subscription_credits = cr("111");
    assert_eq!(
        buckets(&j),
        (cr("10"), cr("100"), cr("0")),
        "an edit moves no credits now"
    );
    j.advance_to(at("2027-06-16T00:00:00Z"));
    assert_eq!(buckets(&j), (cr("11"), cr("100"), cr("0")));
    j.advance_to(at("2027-07-15T12:00:00Z"));
    assert_eq!(j.wallet.subscription.remaining, cr("111"));
}

// ---- reservations ----------------------------------------------------------------------------

#[test]
fn reservation_holds_credits_out_of_every_bucket() {
    let mut j = open("pro", "UTC", "2027-06-01T10:00:00Z", None);
    ok(&mut j, "2027-06-01T10:00:00Z", &reserve("r", "30", 600));
    let b = j.wallet.balance();
    assert_eq!(
        (
            b.daily.remaining,
            b.subscription.remaining,
            b.reserved,
            b.total
        ),
        (cr("0"), cr("490"), cr("30"), cr("490"))
    );
}

#[test]
fn reservation_ttl_is_1_to_3600_seconds() {
    let mut j = open("pro", "UTC", "2027-06-01T10:00:00Z", None);
    assert!(matches!(
        refused(&mut j, "2027-06-01T10:00:00Z", &reserve("r", "1", 0)),
        OpError::InvalidInput(_)
    ));
    assert!(matches!(
        refused(&mut j, "2027-06-01T10:00:00Z", &reserve("r", "1", 3601)),
        OpError::InvalidInput(_)
    ));
    assert!(matches!(
        refused(&mut j, "2027-06-01T10:00:00Z", &reserve("r", "0", 60)),
        OpError::InvalidInput(_)
    ));
    ok(&mut j, "2027-06-01T10:00:00Z", &reserve("r", "1", 3600));
}

/// Found by review: PostgreSQL cannot store U+0000 in text (SQLite can), so a key or
/// thread holding one reached the commit and failed there.
#[test]
fn text_holding_nul_is_invalid_input() {
    let mut j = open("pro", "UTC", "2027-06-01T10:00:00Z", None);
    let before = j.wallet.clone();
    for op in [usage("k\0", "1"), reserve("r\0", "1", 60)] {
        assert!(matches!(
            refused(&mut j, "2027-06-01T10:00:00Z", &op),
            OpError::InvalidInput(m) if m.contains("U+0000")
        ));
    }
    assert_eq!(j.wallet, before);
    ok(&mut j, "2027-06-01T10:00:00Z", &usage("k\t", "1"));
}

#[test]
fn reservation_is_active_only_before_its_expiry() {
    let mut j = open("pro", "UTC", "2027-06-01T10:00:00Z", None);
    ok(&mut j, "2027-06-01T10:00:00Z", &reserve("r", "5", 60));
    assert_eq!(
        refused(&mut j, "2027-06-01T10:01:00Z", &settle("r", "1")),
        OpError::ReservationNotActive
    );
    assert_eq!(
        j.wallet.daily.remaining,
        cr("20"),
        "expired hold returned to the same day"
    );
}

#[test]
fn settle_pays_from_held_then_balance_and_writes_off_the_rest() {
    let mut j = open("pro", "UTC", "2027-06-01T10:00:00Z", None);
    ok(&mut j, "2027-06-01T10:00:00Z", &usage("spend", "515"));
    ok(
        &mut j,
        "2027-06-01T10:00:00Z",
        &grant("g", "2", GrantKind::Admin, None),
    );
    ok(&mut j, "2027-06-01T10:00:00Z", &reserve("r", "4", 600));
    let e = ok(&mut j, "2027-06-01T10:05:00Z", &settle("r", "10"));
    let u = e.usage().unwrap();
    // Held: 4 subscription. Then the balance: 1 subscription, 2 from the lot. 3 uncollected.
    assert_eq!(
        charged(&e),
        vec![(Source::Subscription, cr("5")), (lot("g"), cr("2"))]
    );
    assert_eq!(u.uncollected, cr("3"));
    assert_eq!(
        u.cost,
        u.charged.iter().map(|c| c.amount).sum::<Credits>() + u.uncollected
    );
    assert_eq!(j.wallet.spendable(), Credits::ZERO);
}

#[test]
fn settle_returns_unused_held_credits_to_their_bucket() {
    let mut j = open("pro", "UTC", "2027-06-01T10:00:00Z", None);
    ok(&mut j, "2027-06-01T10:00:00Z", &reserve("r", "30", 600));
    ok(&mut j, "2027-06-01T10:05:00Z", &settle("r", "12"));
    assert_eq!(buckets(&j), (cr("8"), cr("500"), cr("0")));
    assert_eq!(j.wallet.reserved(), Credits::ZERO);
}

#[test]
fn held_credits_of_a_past_day_expire_when_freed() {
    let mut j = open("pro", "UTC", "2027-06-01T23:50:00Z", None);
    ok(&mut j, "2027-06-01T23:50:00Z", &reserve("r", "10", 1200));
    j.advance_to(at("2027-06-02T00:00:00Z"));
    assert_eq!(
        j.wallet.daily.remaining,
        cr("20"),
        "a reset does not touch held credits"
    );
    let e = ok(
        &mut j,
        "2027-06-02T00:01:00Z",
        &Op::Release(ReservationId::from("res_r")),
    );
    assert!(
        matches!(&e.kind, EntryKind::Released { returned, expired, .. } if returned.is_empty() && expired[0].amount == cr("10"))
    );
    assert_eq!(j.wallet.daily.remaining, cr("20"));
}

#[test]
fn settle_and_release_are_idempotent_by_reservation() {
    let mut j = open("pro", "UTC", "2027-06-01T10:00:00Z", None);
    ok(&mut j, "2027-06-01T10:00:00Z", &reserve("a", "5", 600));
    let first = ok(&mut j, "2027-06-01T10:01:00Z", &settle("a", "2"));
    assert_eq!(
        j.run(at("2027-06-01T10:02:00Z"), &settle("a", "2"))
            .unwrap(),
        Outcome::Replayed(first)
    );
    // The price may change between retries; the input may not.
    assert!(matches!(
        j.run(at("2027-06-01T10:02:00Z"), &settle("a", "3")),
        Ok(Outcome::Replayed(_))
    ));
    let Op::Settle(mut other) = settle("a", "2") else {
        unreachable!()
    };
    other.tokens.output += 1;
    assert_eq!(
        refused(&mut j, "2027-06-01T10:02:00Z", &Op::Settle(other)),
        OpError::IdempotencyConflict
    );
    assert_eq!(
        refused(
            &mut j,
            "2027-06-01T10:02:00Z",
            &Op::Release(ReservationId::from("res_a"))
        ),
        OpError::ReservationNotActive
    );

    ok(&mut j, "2027-06-01T10:00:00Z", &reserve("b", "5", 600));
    let released = ok(
        &mut j,
        "2027-06-01T10:03:00Z",
        &Op::Release(ReservationId::from("res_b")),
    );
    assert_eq!(
        j.run(
            at("2027-06-01T10:04:00Z"),
            &Op::Release(ReservationId::from("res_b"))
        )
        .unwrap(),
        Outcome::Replayed(released)
    );
    assert_eq!(
        refused(&mut j, "2027-06-01T10:04:00Z", &settle("b", "1")),
        OpError::ReservationNotActive
    );
    assert_eq!(
        refused(&mut j, "2027-06-01T10:04:00Z", &settle("nope", "1")),
        OpError::NotFound("reservation")
    );
}

#[test]
fn settle_refused_by_the_plan_leaves_the_reservation_active() {
    let mut j = open("free", "UTC", "2027-06-01T10:00:00Z", None);
    ok(&mut j, "2027-06-01T10:00:00Z", &reserve("r", "1", 600));
    assert!(matches!(
        refused(&mut j, "2027-06-01T10:00:00Z", &settle("r", "1")),
        OpError::ModelNotAllowed { .. }
    ));
    assert!(
        j.wallet
            .reservation(&ReservationId::from("res_r"))
            .is_some()
    );
}

// ---- idempotency -----------------------------------------------------------------------------

#[test]
fn a_key_names_one_operation_across_mutations() {
    let mut j = open("pro", "UTC", "2027-06-01T10:00:00Z", None);
    let e = ok(&mut j, "2027-06-01T10:00:00Z", &usage("k", "1"));
    assert_eq!(
        j.run(at("2027-06-01T11:00:00Z"), &usage("k", "1")).unwrap(),
        Outcome::Replayed(e)
    );
    assert_eq!(
        refused(&mut j, "2027-06-01T11:00:00Z", &reserve("k", "1", 60)),
        OpError::IdempotencyConflict
    );
}

#[test]
fn a_replay_is_answered_even_when_the_call_would_now_be_refused() {
    let mut j = open("pro", "UTC", "2027-06-01T10:00:00Z", None);
    let e = ok(&mut j, "2027-06-01T10:00:00Z", &usage("k", "520"));
    assert_eq!(
        j.run(at("2027-06-01T10:00:00Z"), &usage("k", "520"))
            .unwrap(),
        Outcome::Replayed(e)
    );
}

#[test]
fn a_refused_call_records_no_key() {
    let mut j = open("pro", "UTC", "2027-06-01T10:00:00Z", None);
    refused(&mut j, "2027-06-01T10:00:00Z", &usage("k", "9999"));
    ok(&mut j, "2027-06-01T10:00:00Z", &usage("k", "1"));
}

// ---- plans -----------------------------------------------------------------------------------

#[test]
fn upgrade_prorates_subscription_rounding_down_to_the_micro_credit() {
    // June has 2,592,000 s; 1,000,001 s remain: (2000 − 500) × 1,000,001 / 2,592,000 credits.
    let mut j = open("pro", "UTC", "2027-06-01T00:00:00Z", None);
    ok(&mut j, "2027-06-01T00:00:00Z", &usage("a", "30"));
    let now = at("2027-07-01T00:00:00Z") - Duration::seconds(1_000_001);
    j.advance_to(now);
    let e = j.run(now, &Op::ChangePlan(PlanId::from("max"))).unwrap();
    let expected_micro = (1_500_000_000i128 * 1_000_001 / 2_592_000) as i64; // floor of a positive quotient
    assert!(
        matches!(&e, Outcome::Applied(entry) if matches!(&entry.kind, EntryKind::PlanChanged { subscription_added, daily_added, .. }
        if subscription_added.micro() == expected_micro && *daily_added == cr("30")))
    );
    assert_eq!(expected_micro, 578_704_282);
    assert_eq!(j.wallet.subscription.allowance, cr("2000"));
    assert_eq!(j.wallet.daily.allowance, cr("50"));
    assert_eq!(j.wallet.plan_id, PlanId::from("max"));
}

/// Found by review: after an edit of the wallet's custom plan (which moves no credits
/// until the renewal), the upgrade test compared the new plan with the edited plan while
/// the amount came from the wallet's allowance: a change was scheduled though it adds
/// credits now, or applied at once adding nothing. Both use the allowance this period
/// runs on.
#[test]
fn upgrade_after_a_custom_plan_edit_is_judged_on_the_allowance_of_the_period() {
    let acme = |subscription: &str| Plan {
        id: PlanId::from("acme"),
        name: "Acme".into(),
        daily_credits: cr("10"),
        subscription_credits: cr(subscription),
        interval: BillingInterval::Monthly,
        model_tiers: vec!["economy".into()],
        custom: true,
        retired: false,
        earlier: Vec::new(),
    };
    let edit = |j: &mut credits_core::testing::Journal, subscription: &str| {
        let p = j
            .plans
            .iter_mut()
            .find(|p| p.id.as_str() == "acme")
            .unwrap();
        *p = acme(subscription);
    };
    // 100 a period, edited to 1,000: `pro` (500) still adds 400 × remaining / period now.
    let mut plans = catalogue();
    plans.push(acme("100"));
    let mut j = open_with(
        plans.clone(),
        "acme",
        "UTC",
        "2027-06-01T00:00:00Z",
        None,
        false,
    );
    edit(&mut j, "1000");
    let e = ok(
        &mut j,
        "2027-06-16T00:00:00Z",
        &Op::ChangePlan(PlanId::from("pro")),
    );
    assert!(
        matches!(&e.kind, EntryKind::PlanChanged { subscription_added, .. } if *subscription_added == cr("200")),
        "{e:?}"
    );
    assert_eq!(j.wallet.subscription.remaining, cr("300"));
    // 1,000 a period, edited to 100: `pro` (500) gives less than this period's 1,000, so
    // it waits for the renewal and changes nothing now.
    let mut plans = catalogue();
    plans.push(acme("1000"));
    let mut j = open_with(plans, "acme", "UTC", "2027-06-01T00:00:00Z", None, false);
    edit(&mut j, "100");
    ok(
        &mut j,
        "2027-06-16T00:00:00Z",
        &Op::ChangePlan(PlanId::from("pro")),
    );
    assert_eq!(j.wallet.plan_id, PlanId::from("acme"));
    assert_eq!(j.wallet.scheduled_plan_id, Some(PlanId::from("pro")));
    assert_eq!(j.wallet.subscription.allowance, cr("1000"));
}

/// Found by review: each upgrade adds max(0, new daily − old daily) to the daily bucket,
/// and an upgrade to a plan with a smaller daily allowance (`max` → `team`) leaves the
/// bucket as it is, so upgrades alternating between plans with large and zero daily
/// allowances stacked the bucket without bound: past `MAX_HOLDING`, the wallet's sum
/// overflowed and panicked on every load. The bucket now stops at `MAX_HOLDING`.
#[test]
fn upgrades_on_one_day_never_stack_the_daily_bucket_past_what_a_wallet_holds() {
    let custom = |id: &str, daily: Credits, subscription: i64| Plan {
        id: PlanId::from(id),
        name: id.into(),
        daily_credits: daily,
        subscription_credits: Credits::from_micro(subscription),
        interval: BillingInterval::Monthly,
        model_tiers: vec!["economy".into()],
        custom: true,
        retired: false,
        earlier: Vec::new(),
    };
    // SPEC 5's formula as written: max → team adds nothing and shows team's 0; team → ent
    // then adds ent's 100 over team's 0.
    let mut plans = catalogue();
    plans.push(custom("ent", cr("100"), 20_000_000_000));
    let mut j = open_with(plans, "max", "UTC", "2027-06-01T06:00:00Z", None, false);
    ok(
        &mut j,
        "2027-06-01T07:00:00Z",
        &Op::ChangePlan(PlanId::from("team")),
    );
    assert_eq!(
        (j.wallet.daily.remaining, j.wallet.daily.allowance),
        (cr("50"), cr("0"))
    );
    ok(
        &mut j,
        "2027-06-01T08:00:00Z",
        &Op::ChangePlan(PlanId::from("ent")),
    );
    assert_eq!(
        (j.wallet.daily.remaining, j.wallet.daily.allowance),
        (cr("150"), cr("100"))
    );
    // Seven plans alternating MAX_HOLDING and 0 daily credits, each with 1 µcr more
    // subscription credits (so each change is an upgrade that adds none of those).
    let max = Credits::MAX_HOLDING;
    let ladder: Vec<Plan> = (0..7)
        .map(|i| {
            custom(
                &format!("p{i}"),
                if i % 2 == 0 { max } else { Credits::ZERO },
                i,
            )
        })
        .collect();
    let mut plans = catalogue();
    plans.extend(ladder);
    let mut j = open_with(plans, "p0", "UTC", "2027-06-01T06:00:00Z", None, false);
    for i in 1..7 {
        ok(
            &mut j,
            "2027-06-01T07:00:00Z",
            &Op::ChangePlan(PlanId::from(format!("p{i}").as_str())),
        );
    }
    assert_eq!(j.wallet.daily.remaining, max);
    // The renewal and the reset after it still add up.
    j.advance_to(at("2027-07-02T00:00:00Z"));
    assert_eq!(j.wallet.subscription.remaining, Credits::from_micro(6));
    assert!(j.wallet.balance().total > Credits::ZERO);
}

/// Found by review (Session 13): the cap above counted only the daily credits left in the
/// bucket, not today's daily credits held by reservations, which go back to it. Reserving
/// the bucket before each pair of upgrades stacked held credits past i64, and returning
/// them (a release, or an expiry applied on every later load) panicked.
#[test]
fn daily_credits_held_by_reservations_count_against_the_daily_cap() {
    let custom = |i: i64, daily: Credits| Plan {
        id: PlanId::from(format!("p{i}").as_str()),
        name: format!("p{i}"),
        daily_credits: daily,
        subscription_credits: Credits::from_micro(i),
        interval: BillingInterval::Monthly,
        model_tiers: vec!["economy".into()],
        custom: true,
        retired: false,
        earlier: Vec::new(),
    };
    let max = Credits::MAX_HOLDING;
    let mut plans = catalogue();
    plans.extend((0..9).map(|i| custom(i, if i % 2 == 0 { max } else { Credits::ZERO })));
    let mut j = open_with(plans, "p0", "UTC", "2027-06-01T06:00:00Z", None, false);
    let t = "2027-06-01T07:00:00Z";
    let mut held = Vec::new();
    for i in 0..4 {
        let key = format!("r{i}");
        // Refused once the cap leaves nothing to hold: then there is nothing to stack.
        if j.run(at(t), &reserve(&key, &max.to_string(), 3600)).is_ok() {
            held.push(key);
        }
        for step in [2 * i + 1, 2 * i + 2] {
            ok(
                &mut j,
                t,
                &Op::ChangePlan(PlanId::from(format!("p{step}").as_str())),
            );
        }
    }
    // The first one is held at least, or nothing stacks here at all.
    assert!(!held.is_empty());
    for key in &held {
        ok(&mut j, t, &Op::Release(ReservationId(format!("res_{key}"))));
    }
    assert!(j.wallet.daily.remaining <= max);
    // Expiries applied later add up too.
    j.run(at(t), &reserve("late", "1", 60)).unwrap();
    j.advance_to(at("2027-06-01T07:05:00Z"));
    j.check_invariants().unwrap();
}

#[test]
fn downgrade_is_scheduled_for_the_period_end_and_daily_waits_for_the_next_reset() {
    let mut j = open("max", "UTC", "2027-06-01T06:00:00Z", None);
    let e = ok(
        &mut j,
        "2027-06-10T00:00:00Z",
        &Op::ChangePlan(PlanId::from("pro")),
    );
    assert_eq!(e.cause(), Cause::PlanChange);
    assert_eq!(j.wallet.scheduled_plan_id, Some(PlanId::from("pro")));
    assert_eq!(buckets(&j).1, cr("2000"), "nothing changes now");
    ok(
        &mut j,
        "2027-06-30T12:00:00Z",
        &usage_on("premium", "a", "10", None),
    );
    j.advance_to(at("2027-07-01T06:00:00Z"));
    assert_eq!(j.wallet.plan_id, PlanId::from("pro"));
    assert_eq!(j.wallet.scheduled_plan_id, None);
    assert_eq!(j.wallet.subscription.remaining, cr("500"));
    assert_eq!(
        j.wallet.daily.remaining,
        cr("50"),
        "the daily bucket keeps its remaining until the next reset"
    );
    j.advance_to(at("2027-07-02T00:00:00Z"));
    assert_eq!(j.wallet.daily.remaining, cr("20"));
    assert!(matches!(
        refused(
            &mut j,
            "2027-07-02T00:00:00Z",
            &usage_on("premium", "b", "1", None)
        ),
        OpError::ModelNotAllowed { .. }
    ));
}

#[test]
fn change_to_the_current_plan_clears_the_scheduled_one() {
    let mut j = open("max", "UTC", "2027-06-01T06:00:00Z", None);
    ok(
        &mut j,
        "2027-06-10T00:00:00Z",
        &Op::ChangePlan(PlanId::from("pro")),
    );
    ok(
        &mut j,
        "2027-06-11T00:00:00Z",
        &Op::ChangePlan(PlanId::from("max")),
    );
    assert_eq!(j.wallet.scheduled_plan_id, None);
    j.advance_to(at("2027-07-02T00:00:00Z"));
    assert_eq!(j.wallet.plan_id, PlanId::from("max"));
}

/// A plan the catalogue no longer lists: a wallet on it keeps it and renews on it, may
/// clear a scheduled change by asking for it, but no wallet is created on it or moves to
/// it (INVALID_INPUT, nothing changes).
#[test]
fn a_retired_plan_keeps_its_wallets_and_takes_no_new_ones() {
    let retire = |plans: &mut Vec<Plan>, id: &str| {
        plans.iter_mut().find(|p| p.id.0 == id).unwrap().retired = true;
    };
    let mut j = open("pro", "UTC", "2027-06-01T06:00:00Z", None);
    retire(&mut j.plans, "pro");
    retire(&mut j.plans, "max");
    assert!(matches!(
        refused(&mut j, "2027-06-02T00:00:00Z", &Op::ChangePlan(PlanId::from("max"))),
        OpError::InvalidInput(m) if m.contains("no longer offered")
    ));
    ok(
        &mut j,
        "2027-06-02T00:00:00Z",
        &Op::ChangePlan(PlanId::from("free")),
    );
    ok(
        &mut j,
        "2027-06-03T00:00:00Z",
        &Op::ChangePlan(PlanId::from("pro")),
    );
    assert_eq!(j.wallet.scheduled_plan_id, None);
    j.advance_to(at("2027-07-02T00:00:00Z"));
    assert_eq!(j.wallet.plan_id, PlanId::from("pro"));
    assert_eq!(j.wallet.balance().subscription.remaining, cr("500"));

    let mut plans = catalogue();
    retire(&mut plans, "pro");
    let new = NewWallet {
        id: WalletId::from("wal_2"),
        owner_id: "u1".into(),
        pool: false,
        timezone: Tz::UTC,
        plan_id: PlanId::from("pro"),
        billing_anchor: None,
    };
    assert!(matches!(
        Journal::create(new, plans, at("2027-06-01T00:00:00Z")),
        Err(OpError::InvalidInput(_))
    ));
}

#[test]
fn interval_change_takes_effect_at_the_period_end_with_the_new_interval() {
    let mut j = open("pro", "UTC", "2027-06-15T00:00:00Z", None);
    ok(
        &mut j,
        "2027-06-20T00:00:00Z",
        &Op::ChangePlan(PlanId::from("pro-annual")),
    );
    j.advance_to(at("2027-07-15T00:00:00Z"));
    let s = &j.wallet.subscription;
    assert_eq!(
        (s.remaining, s.period_start, s.period_end),
        (
            cr("6000"),
            at("2027-07-15T00:00:00Z"),
            at("2028-06-15T00:00:00Z")
        )
    );
    assert_eq!(j.wallet.interval, BillingInterval::Annual);
}

// ---- grants ----------------------------------------------------------------------------------

#[test]
fn grant_rules_for_kinds_amounts_and_expiry() {
    let mut j = open("free", "UTC", "2027-06-01T10:00:00Z", None);
    let t = "2027-06-01T10:00:00Z";
    assert!(matches!(
        refused(&mut j, t, &grant("a", "-1", GrantKind::Admin, None)),
        OpError::InvalidInput(_)
    ));
    assert!(matches!(
        refused(&mut j, t, &grant("a", "0", GrantKind::Admin, None)),
        OpError::InvalidInput(_)
    ));
    assert!(matches!(
        refused(&mut j, t, &grant("a", "1", GrantKind::Admin, Some(t))),
        OpError::InvalidInput(_)
    ));
    assert!(matches!(
        refused(
            &mut j,
            t,
            &grant(
                "a",
                "1",
                GrantKind::Compensation,
                Some("2030-01-01T00:00:00Z")
            )
        ),
        OpError::InvalidInput(_)
    ));
    assert!(matches!(
        refused(&mut j, t, &grant("a", "1", GrantKind::Purchase, None)),
        OpError::InvalidInput(_)
    ));
    ok(&mut j, t, &purchase("p", "credits-100", "pay-1"));
    ok(&mut j, t, &grant("b", "1", GrantKind::Compensation, None));
    assert_eq!(j.wallet.balance().grants.len(), 2);
    // A lot id is taken once (another key, same id): refused, nothing changes.
    let mut again = grant("b", "5", GrantKind::Admin, None);
    if let Op::Grant(g) = &mut again {
        g.key = Some("another-key".into());
    }
    assert!(matches!(
        refused(&mut j, t, &again),
        OpError::InvalidInput(_)
    ));
    assert_eq!(j.wallet.balance().grants.len(), 2);
}

/// SPEC 1: amounts are checked i64. A grant may not make a wallet's parts too large to
/// add up: the sum of its buckets and lots (every balance, every reset) always fits.
#[test]
fn grants_cannot_grow_a_wallet_past_what_its_sum_can_hold() {
    let mut j = open("free", "UTC", "2027-06-01T10:00:00Z", None);
    let t = "2027-06-01T10:00:00Z";
    ok(&mut j, t, &reserve("r", "5", 3600));
    assert!(matches!(
        refused(
            &mut j,
            t,
            &grant("max", "9223372036854.775807", GrantKind::Admin, None)
        ),
        OpError::InvalidInput(_)
    ));
    let most = Credits::MAX_HOLDING;
    let big = Op::Grant(GrantOp {
        id: GrantId::from("big"),
        key: Some("key-big".into()),
        amount: most,
        kind: GrantKind::Admin,
        reason: None,
        expires_at: None,
        origin: None,
    });
    ok(&mut j, t, &big);
    assert!(matches!(
        refused(
            &mut j,
            t,
            &grant("more", "0.000001", GrantKind::Admin, None)
        ),
        OpError::InvalidInput(_)
    ));
    // The reservation's credits go back and the next midnight refills the day: the
    // wallet still adds up.
    ok(
        &mut j,
        "2027-06-01T10:30:00Z",
        &Op::Release(ReservationId("res_r".into())),
    );
    j.advance_to(at("2027-06-03T00:00:00Z"));
    j.check_invariants().unwrap();
    let b = j.wallet.balance();
    assert_eq!(b.total, b.daily.remaining + b.subscription.remaining + most);
}

/// Found by review: held credits outlive the lot, day or period they came from (SPEC 4), so
/// a lot that expired while reserved let another of `MAX_HOLDING` be granted and reserved,
/// and again: the fourth reservation overflowed the wallet's reserved sum, a panic on
/// valid input. What a wallet's reservations hold now stays within what its sum can hold.
#[test]
fn reservations_cannot_hold_more_than_the_wallet_sum_can() {
    let mut j = open("free", "UTC", "2027-06-01T10:00:00Z", None);
    let most = Credits::MAX_HOLDING;
    let bound = i128::from(most.micro()) * 3;
    let mut held = 0i128;
    // Three rounds reach the bound (four overflowed; the journal's own totals stop at
    // three, since it sums what was ever granted).
    for i in 0..3 {
        let t = format!("2027-06-01T10:00:0{i}Z");
        let until = format!("2027-06-01T10:00:0{}Z", i + 1);
        ok(
            &mut j,
            &t,
            &grant(
                &format!("g{i}"),
                &most.to_string(),
                GrantKind::Promotion,
                Some(&until),
            ),
        );
        let amount = j.wallet.balance().total;
        let op = reserve(&format!("r{i}"), &amount.to_string(), 3600);
        if held + i128::from(amount.micro()) <= bound {
            ok(&mut j, &t, &op);
            held += i128::from(amount.micro());
        } else {
            assert!(matches!(refused(&mut j, &t, &op), OpError::InvalidInput(_)));
            // What fits is still taken.
            let rest = Credits::from_micro(i64::try_from(bound - held).unwrap());
            ok(
                &mut j,
                &t,
                &reserve(&format!("r{i}-rest"), &rest.to_string(), 3600),
            );
            held = bound;
        }
    }
    assert_eq!(i128::from(j.wallet.balance().reserved.micro()), bound);
    // More than the wallet has is short of credits first (SPEC 4), the bound or not.
    let more = (j.wallet.balance().total + Credits::from_micro(1)).to_string();
    assert!(matches!(
        refused(&mut j, "2027-06-01T10:00:02Z", &reserve("over", &more, 60)),
        OpError::InsufficientCredits { .. }
    ));
    j.advance_to(at("2027-06-01T12:00:00Z"));
    j.check_invariants().unwrap();
    assert_eq!(j.wallet.balance().reserved, Credits::ZERO);
}

/// SPEC 5: one payment buys one lot. The same payment reference again on the wallet
/// (a double submit decided before the first is stored) is refused, never a second lot.
#[test]
fn one_payment_reference_buys_one_lot() {
    let mut j = open("free", "UTC", "2027-06-01T10:00:00Z", None);
    let t = "2027-06-01T10:00:00Z";
    ok(&mut j, t, &purchase("p1", "credits-100", "pay-1"));
    for (id, bundle) in [("p2", "credits-100"), ("p3", "credits-500")] {
        assert_eq!(
            refused(&mut j, t, &purchase(id, bundle, "pay-1")),
            OpError::IdempotencyConflict
        );
    }
    assert_eq!(j.wallet.balance().grants.len(), 1);
}

/// A review's COMPENSATION lot as an approval sends it: no key (keys are the clients'),
/// the review makes it unique.
fn compensation(id: &str, review: &str) -> Op {
    Op::Grant(GrantOp {
        id: GrantId::from(id),
        key: None,
        amount: cr("3"),
        kind: GrantKind::Compensation,
        reason: Some("high usage".into()),
        expires_at: None,
        origin: Some(LotOrigin::Review {
            review_id: review.into(),
        }),
    })
}

/// SPEC 7: an approved review is one COMPENSATION lot. The same approval completed again
/// (by a caller decided before the first lot is stored) is refused, never a second lot;
/// another review, or a purchase whose payment reference is spelled like the review id,
/// is its own lot.
#[test]
fn one_review_is_compensated_once() {
    let mut j = open("free", "UTC", "2027-06-01T10:00:00Z", None);
    let t = "2027-06-01T10:00:00Z";
    ok(&mut j, t, &compensation("c1", "rev_1"));
    for id in ["c1", "c2"] {
        assert_eq!(
            refused(&mut j, t, &compensation(id, "rev_1")),
            OpError::IdempotencyConflict
        );
    }
    ok(&mut j, t, &compensation("c3", "rev_2"));
    ok(&mut j, t, &purchase("p1", "credits-100", "rev_1"));
    let lots = j.wallet.balance().grants;
    assert_eq!(lots.len(), 3);
    assert_eq!(
        lots.iter()
            .filter(|l| l.kind == GrantKind::Compensation)
            .count(),
        2
    );
}

#[test]
fn grant_remaining_is_amount_minus_spent_held_and_expired() {
    let mut j = open("free", "UTC", "2027-06-01T10:00:00Z", None);
    ok(
        &mut j,
        "2027-06-01T10:00:00Z",
        &usage_on("economy", "a", "5", None),
    );
    ok(
        &mut j,
        "2027-06-01T10:00:00Z",
        &grant("g", "10", GrantKind::Admin, Some("2027-06-05T00:00:00Z")),
    );
    ok(
        &mut j,
        "2027-06-01T10:00:00Z",
        &usage_on("economy", "b", "2", None),
    );
    ok(&mut j, "2027-06-01T10:00:00Z", &reserve("r", "3", 600));
    let l = j.wallet.lot(&GrantId::from("g")).unwrap();
    assert_eq!((l.remaining, l.spent, l.held), (cr("5"), cr("2"), cr("3")));
}

// ---- team pools ------------------------------------------------------------------------------

/// A team's pool wallet on `team`, in UTC, made at 2027-06-01T10:00Z.
fn team_pool() -> Journal {
    open_with(
        catalogue(),
        "team",
        "UTC",
        "2027-06-01T10:00:00Z",
        None,
        true,
    )
}

fn limited(daily: Option<&str>, period: Option<&str>) -> Option<Member> {
    Some(Member {
        id: "m".into(),
        daily_limit: daily.map(cr),
        period_limit: period.map(cr),
        limits_version: 0,
    })
}

#[test]
fn pool_spends_need_a_member_and_personal_wallets_refuse_one() {
    let mut pool = team_pool();
    assert!(matches!(
        refused(
            &mut pool,
            "2027-06-01T10:00:00Z",
            &usage_on("economy", "a", "1", None)
        ),
        OpError::InvalidInput(_)
    ));
    let mut personal = open("pro", "UTC", "2027-06-01T10:00:00Z", None);
    assert!(matches!(
        refused(
            &mut personal,
            "2027-06-01T10:00:00Z",
            &usage_on("economy", "a", "1", limited(None, None))
        ),
        OpError::InvalidInput(_)
    ));
}

/// Found by review: a settle's cost is the plugin's price (any non-negative i64), and a
/// member's spend counts it whole, uncollected part included, so two huge settles on a
/// pool overflowed the member's counter: a panic in the wallet, on every replay too. The
/// counters saturate; a limit compares with them just the same.
#[test]
fn member_spend_saturates_instead_of_overflowing() {
    let mut pool = team_pool();
    let t = "2027-06-01T10:00:00Z";
    for key in ["r1", "r2"] {
        ok(
            &mut pool,
            t,
            &reserve_as(key, "1", 600, limited(None, None)),
        );
    }
    // i64::MAX µcr each.
    for key in ["r1", "r2"] {
        ok(&mut pool, t, &settle(key, "9223372036854.775807"));
    }
    assert!(matches!(
        refused(
            &mut pool,
            t,
            &usage_on("economy", "a", "0.000001", limited(Some("1000000"), None))
        ),
        OpError::MemberLimitExceeded { .. }
    ));
    assert_eq!(credits_core::replay(&pool.entries).unwrap(), pool.wallet);
}

#[test]
fn member_limits_allow_reaching_exactly_and_count_active_reservations() {
    let mut pool = team_pool();
    let t = "2027-06-01T10:00:00Z";
    ok(
        &mut pool,
        t,
        &reserve_as("1", "4", 600, limited(Some("10"), None)),
    );
    ok(
        &mut pool,
        t,
        &usage_on("economy", "a", "6", limited(Some("10"), None)),
    );
    assert!(matches!(
        refused(
            &mut pool,
            t,
            &usage_on("economy", "b", "0.000001", limited(Some("10"), None))
        ),
        OpError::MemberLimitExceeded { .. }
    ));
    // A settle is never refused by limits.
    let settle = Op::Settle(SettleOp {
        reservation_id: ReservationId::from("res_1"),
        usage_id: UsageId::from("use_s"),
        thread_id: "t".into(),
        model: "economy-model".into(),
        tier: "economy".into(),
        tokens: Tokens::default(),
        cost: cr("9"),
        priced_by: "economy@1.0.0".into(),
    });
    ok(&mut pool, t, &settle);
    assert_eq!(pool.wallet.member_usage("m"), (cr("15"), cr("15"), cr("0")));
    // The pool's next day starts the daily count again; the period count stays.
    pool.advance_to(at("2027-06-02T00:00:00Z"));
    assert_eq!(pool.wallet.member_usage("m"), (cr("0"), cr("15"), cr("0")));
    assert!(matches!(
        refused(
            &mut pool,
            "2027-06-02T00:00:00Z",
            &usage_on("economy", "c", "1", limited(None, Some("15")))
        ),
        OpError::MemberLimitExceeded { .. }
    ));
    assert!(matches!(
        refused(
            &mut pool,
            "2027-06-02T00:00:00Z",
            &usage_on("economy", "d", "0.000001", limited(Some("0"), None))
        ),
        OpError::MemberLimitExceeded { .. }
    ));
}

// ---- time and replay -------------------------------------------------------------------------

#[test]
fn wallet_time_never_moves_backwards() {
    let mut j = open("pro", "UTC", "2027-06-01T10:00:00Z", None);
    j.advance_to(at("2027-06-02T10:00:00Z"));
    let e = ok(&mut j, "2027-06-01T11:00:00Z", &usage("a", "1"));
    assert_eq!(e.at, at("2027-06-02T10:00:00Z"));
}

#[test]
fn replay_rejects_gaps_and_missing_creation() {
    let mut j = open("pro", "UTC", "2027-06-01T10:00:00Z", None);
    ok(&mut j, "2027-06-01T10:00:00Z", &usage("a", "1"));
    ok(&mut j, "2027-06-01T10:00:00Z", &usage("b", "1"));
    let gap = [j.entries[0].clone(), j.entries[2].clone()];
    assert_eq!(
        credits_core::replay(&gap),
        Err(credits_core::ReplayError::Gap {
            previous: 0,
            found: 2
        })
    );
    assert_eq!(
        credits_core::replay(&j.entries[1..]),
        Err(credits_core::ReplayError::NotCreated)
    );
    assert_eq!(
        credits_core::replay([]),
        Err(credits_core::ReplayError::Empty)
    );
}

#[test]
fn wallet_and_ledger_survive_a_serde_round_trip() {
    let mut j = open("max", "America/Havana", "2027-06-01T10:00:00Z", None);
    ok(
        &mut j,
        "2027-06-01T10:00:00Z",
        &grant(
            "g",
            "10",
            GrantKind::Promotion,
            Some("2027-08-01T00:00:00Z"),
        ),
    );
    ok(&mut j, "2027-06-01T10:00:00Z", &reserve("r", "60", 600));
    let wallet: credits_core::Wallet =
        serde_json::from_str(&serde_json::to_string(&j.wallet).unwrap()).unwrap();
    assert_eq!(wallet, j.wallet);
    let entries: Vec<credits_core::Entry> =
        serde_json::from_str(&serde_json::to_string(&j.entries).unwrap()).unwrap();
    assert_eq!(entries, j.entries);
}

/// Custom plan `acme`, 10 a day and 100 a month now, with `earlier` credits before edits.
fn acme(earlier: Vec<EarlierCredits>) -> Plan {
    Plan {
        id: PlanId::from("acme"),
        name: "Acme".into(),
        daily_credits: cr("10"),
        subscription_credits: cr("100"),
        interval: BillingInterval::Monthly,
        model_tiers: vec!["economy".into()],
        custom: true,
        retired: false,
        earlier,
    }
}

/// SPEC 5: an edit of a plan's credits counts from each wallet's next reset or renewal. A
/// wallet that applies resets and renewals due before an edit only after it (idle, or on a
/// node that has not heard of the edit) takes the credits its plan gave at each instant,
/// from the plan's history, not those of today.
#[test]
fn resets_and_renewals_applied_late_take_the_credits_of_their_own_instant() {
    let edit = |until: &str, daily: &str, subscription: &str| EarlierCredits {
        until: at(until),
        daily: cr(daily),
        subscription: cr(subscription),
    };
    let acme = acme(vec![
        edit("2027-06-03T12:00:00Z", "5", "50"),
        edit("2027-06-05T12:00:00Z", "7", "70"),
        edit("2027-07-02T00:00:00Z", "9", "80"),
    ]);
    let mut plans = catalogue();
    plans.push(acme);
    let mut j = open_with(plans, "acme", "UTC", "2027-06-01T06:00:00Z", None, false);
    let applied = j.advance_to(at("2027-07-03T01:00:00Z"));
    let credits = |day: &str| {
        applied.iter().find_map(|e| match &e.kind {
            EntryKind::DailyReset { allowance, .. } if e.at == at(day) => Some(*allowance),
            _ => None,
        })
    };
    for (day, daily) in [
        ("2027-06-02T00:00:00Z", "5"),
        ("2027-06-03T00:00:00Z", "5"),
        ("2027-06-04T00:00:00Z", "7"),
        ("2027-06-05T00:00:00Z", "7"),
        ("2027-06-06T00:00:00Z", "9"),
        ("2027-07-01T00:00:00Z", "9"),
        // A reset at an edit's own instant still takes the credits before it (the edit
        // counts from the next one).
        ("2027-07-02T00:00:00Z", "9"),
        ("2027-07-03T00:00:00Z", "10"),
    ] {
        assert_eq!(credits(day), Some(cr(daily)), "{day}");
    }
    let renewal = applied.iter().find_map(|e| match &e.kind {
        EntryKind::Renewed { allowance, .. } => Some((e.at, *allowance)),
        _ => None,
    });
    assert_eq!(renewal, Some((at("2027-07-01T06:00:00Z"), cr("80"))));
    // Replayed, the records give the same wallet (the ledger holds what each took).
    j.check_invariants().unwrap();
}

/// Found by review: a wallet opened with its plan's newest credits whatever the instant, so
/// a node whose clock was behind the node that edited the plan opened it with the edit's
/// credits before the edit's instant, which the store refuses (it was refused until the
/// node's clock passed the edit). A wallet opens with the credits in force at its instant,
/// as a plan change takes them (an edit at that very instant counts).
#[test]
fn a_wallet_opens_with_the_credits_its_plan_gives_at_its_instant() {
    let acme = acme(vec![EarlierCredits {
        until: at("2027-06-03T12:00:00Z"),
        daily: cr("5"),
        subscription: cr("50"),
    }]);
    let mut plans = catalogue();
    plans.push(acme);
    for (instant, daily, subscription) in [
        ("2027-06-03T11:59:59Z", "5", "50"),
        ("2027-06-03T12:00:00Z", "10", "100"),
        ("2027-06-04T00:00:00Z", "10", "100"),
    ] {
        let j = open_with(plans.clone(), "acme", "UTC", instant, None, false);
        assert_eq!(j.wallet.daily.allowance, cr(daily), "{instant}");
        assert_eq!(j.wallet.daily.remaining, cr(daily), "{instant}");
        assert_eq!(
            j.wallet.subscription.allowance,
            cr(subscription),
            "{instant}"
        );
    }
}

/// Found by review: a bounded step stopped only between due instants, so thousands of lots
/// expiring at one instant made one batch past the store's bound, refused every time (the
/// wallet stuck). A step now stops inside an instant, in SPEC 3's order, and the records
/// are those of one call.
#[test]
fn a_bounded_step_stops_inside_a_crowded_instant() {
    let mut whole = open("pro", "UTC", "2027-06-01T06:00:00Z", None);
    for i in 0..5 {
        let op = grant(
            &format!("g{i}"),
            "1",
            GrantKind::Promotion,
            Some("2027-06-02T00:00:00Z"),
        );
        ok(&mut whole, "2027-06-01T07:00:00Z", &op);
    }
    let mut stepped = whole.clone();
    let t = at("2027-06-02T00:00:00Z");
    whole.advance_to(t);
    // Five lot expiries and a daily reset at midnight, two records a step.
    let mut steps = Vec::new();
    while stepped.wallet.behind(t) {
        let step = stepped.wallet.advance_at_most(t, &stepped.plans, 2);
        assert!(!step.is_empty() && step.len() <= 2, "{}", step.len());
        steps.push(step.len());
        stepped.entries.extend(step.into_iter().map(|(e, _)| e));
    }
    assert_eq!(steps, [2, 2, 2]);
    assert_eq!(stepped.entries, whole.entries);
    assert_eq!(stepped.wallet, whole.wallet);
    // A clock behind the wallet's (another node's) still sees the instant unfinished, and
    // finishes it.
    let mut behind = whole.clone();
    behind.wallet = stepped_start(&whole, t);
    let earlier = t - Duration::milliseconds(2);
    assert!(behind.wallet.behind(earlier));
    let rest = behind.wallet.advance_at_most(earlier, &behind.plans, 100);
    assert_eq!(rest.len(), 4);
    assert!(!behind.wallet.behind(earlier));
    assert_eq!(behind.wallet, whole.wallet);
    assert!(matches!(
        stepped.entries.last().unwrap().kind,
        EntryKind::DailyReset { .. }
    ));
}

/// The wallet of `j` before `t`, advanced by one step of two records into `t`'s instant.
fn stepped_start(j: &Journal, t: DateTime<Utc>) -> credits_core::Wallet {
    let mut wallet = credits_core::ledger::replay(&j.entries[..j.entries.len() - 6]).unwrap();
    wallet.advance_at_most(t, &j.plans, 2);
    wallet
}
