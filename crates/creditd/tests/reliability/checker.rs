//! The checker itself can fail: a lost acknowledgement, a receipt the ledger does not hold
//! and a refusal the workload cannot earn are all reported.

use std::panic::AssertUnwindSafe;

use credits_store::Store;
use futures::FutureExt;
use serde_json::json;

use crate::helpers::{App, Backend};
use crate::workload::{
    Identity, Kind, Op, Outcome, Rng, http_client, send, usage_body, verify, wallets,
};

/// The panic message of a `verify` that must fail.
async fn failure(store: &Store, app: &App, targets: &[crate::workload::Target], op: Op) -> String {
    let urls = [app.url("/graphql")];
    let result = AssertUnwindSafe(verify(store, &urls, &app.admin, targets, &[op]))
        .catch_unwind()
        .await;
    match result {
        Ok(tally) => panic!("the checker passed a broken history: {tally:?}"),
        Err(p) => p
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "a panic without a message".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_lost_and_a_misreported_operation() {
    let app = App::spawn(Backend::Sqlite).await;
    let targets = wallets(&app, 1).await;
    let store = Store::connect(&app.db.url).await.expect("open the store");
    let wallet = &targets[0];
    let mut rng = Rng::new(1);
    let body = usage_body(wallet, "real", &mut rng);
    let Outcome::Acked(receipt) =
        send(&http_client(), &app.url("/graphql"), &app.admin, &body).await
    else {
        panic!("recordUsage failed");
    };
    let op = |key: &str, body, receipt| Op {
        kind: Kind::Usage,
        identity: Identity::Key(wallet.id.clone(), key.to_owned()),
        body,
        outcome: Outcome::Acked(receipt),
        url: 0,
    };

    // The true history passes.
    let urls = [app.url("/graphql")];
    let real = op("real", body.clone(), receipt.clone());
    let tally = verify(&store, &urls, &app.admin, &targets, &[real]).await;
    assert_eq!((tally.acked, tally.lost, tally.doubled), (1, 0, 0));

    // An acknowledgement the ledger does not hold.
    let never = op(
        "never",
        usage_body(wallet, "never", &mut rng),
        receipt.clone(),
    );
    let msg = failure(&store, &app, &targets, never).await;
    assert!(msg.contains("acknowledged but not in the ledger"), "{msg}");

    // A receipt whose amount differs from the ledger's.
    let mut wrong = receipt.clone();
    wrong["recordUsage"]["usage"]["cost"] = json!("999");
    let msg = failure(&store, &app, &targets, op("real", body, wrong)).await;
    assert!(msg.contains("but the receipt said"), "{msg}");

    // A refusal this workload cannot earn (found by review: any code passed).
    let odd = Op {
        outcome: Outcome::Refused("PRICING_FAILED".into()),
        ..op("odd", usage_body(wallet, "odd", &mut rng), receipt.clone())
    };
    let msg = failure(&store, &app, &targets, odd).await;
    assert!(msg.contains("which it cannot earn"), "{msg}");
}
