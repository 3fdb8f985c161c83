//! High-usage reports: filing, reading, the admin's list and resolution.

use serde_json::json;

use crate::helpers::{App, Backend};
use crate::on_both;

on_both!(report_read_and_resolve_reviews);

pub const REPORT: &str = "mutation($w: ID!, $t: String!) { reportHighUsage(input: {walletId: $w, threadId: $t, taskDescription: \"refactor\", previewStatus: ERROR_LOOP, threadLength: 5}) { id walletId threadId status note findings { threadCredits events suggestedRefund tips } creditedGrant { id } } }";
pub const RESOLVE: &str = "mutation($i: ResolveReviewInput!) { resolveReview(input: $i) { id status note creditedGrant { kind amount remaining } } }";

async fn report_read_and_resolve_reviews(b: Backend) {
    let app = App::spawn(b).await;
    let w = app.wallet("alice", "pro").await;
    for key in ["a", "b", "c"] {
        app.record(&w, key, "loop", "standard-chat", 10_000, 1000)
            .await;
    }
    let alice = app.token("USER", Some("alice")).await;
    let bob = app.token("USER", Some("bob")).await;
    let d = app.ok(&alice, REPORT, json!({ "w": w, "t": "loop" })).await;
    let review = d["reportHighUsage"].clone();
    let id = review["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("rev_"));
    assert_eq!(review["status"], "SUBMITTED");
    assert_eq!(review["walletId"], w.as_str());
    assert_eq!(review["creditedGrant"], json!(null));
    // 3 × (10_000 × 30 + 1000 × 150) µcr = 1.35 credits.
    assert_eq!(review["findings"]["threadCredits"], "1.35");
    assert_eq!(review["findings"]["events"], 3);
    // One open review per thread: a new report returns it.
    let again = app.ok(&alice, REPORT, json!({ "w": w, "t": "loop" })).await;
    assert_eq!(again["reportHighUsage"]["id"], id.as_str());
    assert_eq!(
        app.code(&alice, REPORT, json!({ "w": w, "t": "no-usage" }))
            .await,
        "NOT_FOUND"
    );
    assert_eq!(
        app.code(&bob, REPORT, json!({ "w": w, "t": "loop" })).await,
        "FORBIDDEN"
    );

    let read = "query($id: ID!) { review(id: $id) { id status } }";
    let d = app.ok(&alice, read, json!({ "id": id })).await;
    assert_eq!(d["review"]["status"], "SUBMITTED");
    assert_eq!(app.code(&bob, read, json!({ "id": id })).await, "FORBIDDEN");
    let d = app.ok(&alice, read, json!({ "id": "rev_nope" })).await;
    assert_eq!(d["review"], json!(null));
    let list = "query($s: ReviewStatus) { reviews(status: $s) { id status } }";
    let d = app.ok(&app.admin, list, json!({})).await;
    assert_eq!(d["reviews"], json!([{ "id": id, "status": "SUBMITTED" }]));
    let d = app.ok(&app.admin, list, json!({ "s": "CREDITED" })).await;
    assert_eq!(d["reviews"], json!([]));
    assert_eq!(app.code(&alice, list, json!({})).await, "FORBIDDEN");
    let own = "query($w: ID!) { wallet(id: $w) { reviews { id status } } }";
    let d = app.ok(&alice, own, json!({ "w": w })).await;
    assert_eq!(
        d["wallet"]["reviews"],
        json!([{ "id": id, "status": "SUBMITTED" }])
    );

    // Only admins resolve; approval grants one COMPENSATION lot.
    let service = app.token("SERVICE", None).await;
    let approve = json!({ "i": { "reviewId": id, "decision": "APPROVE", "amount": "1.25", "note": "sorry" } });
    assert_eq!(
        app.code(&service, RESOLVE, approve.clone()).await,
        "FORBIDDEN"
    );
    let d = app.ok(&app.admin, RESOLVE, approve.clone()).await;
    assert_eq!(
        d["resolveReview"],
        json!({ "id": id, "status": "CREDITED", "note": "sorry",
            "creditedGrant": { "kind": "COMPENSATION", "amount": "1.25", "remaining": "1.25" } })
    );
    let bal = app.balance(&w).await;
    assert_eq!(bal["bonus"]["remaining"], "1.25");
    // The same decision again returns it unchanged and grants nothing; another conflicts.
    let d2 = app.ok(&app.admin, RESOLVE, approve).await;
    assert_eq!(d, d2);
    let reject = json!({ "i": { "reviewId": id, "decision": "REJECT" } });
    assert_eq!(
        app.code(&app.admin, RESOLVE, reject).await,
        "IDEMPOTENCY_CONFLICT"
    );
    assert_eq!(app.balance(&w).await["bonus"]["remaining"], "1.25");
    let d = app.ok(&alice, own, json!({ "w": w })).await;
    assert_eq!(
        d["wallet"]["reviews"],
        json!([{ "id": id, "status": "CREDITED" }])
    );
    let d = app.ok(&app.admin, list, json!({ "s": "CREDITED" })).await;
    assert_eq!(d["reviews"], json!([{ "id": id, "status": "CREDITED" }]));

    // A rejection carries its note and grants nothing.
    app.record(&w, "d", "other", "economy-mini", 10, 10).await;
    let d = app
        .ok(&alice, REPORT, json!({ "w": w, "t": "other" }))
        .await;
    let id2 = d["reportHighUsage"]["id"].as_str().unwrap().to_owned();
    let d = app
        .ok(
            &app.admin,
            RESOLVE,
            json!({ "i": { "reviewId": id2, "decision": "REJECT", "note": "as expected" } }),
        )
        .await;
    assert_eq!(
        d["resolveReview"],
        json!({ "id": id2, "status": "REJECTED", "note": "as expected", "creditedGrant": null })
    );
    // Both filed at the same (manual) instant: the admin's list is oldest first, the
    // wallet's newest first, in filing order.
    let d = app.ok(&app.admin, "{ reviews { id } }", json!({})).await;
    assert_eq!(d["reviews"], json!([{ "id": id }, { "id": id2 }]));
    let d = app
        .ok(
            &alice,
            "query($w: ID!) { wallet(id: $w) { reviews { id } } }",
            json!({ "w": w }),
        )
        .await;
    assert_eq!(d["wallet"]["reviews"], json!([{ "id": id2 }, { "id": id }]));
    assert_eq!(
        app.code(
            &app.admin,
            RESOLVE,
            json!({ "i": { "reviewId": "rev_nope", "decision": "REJECT" } })
        )
        .await,
        "NOT_FOUND"
    );
}
