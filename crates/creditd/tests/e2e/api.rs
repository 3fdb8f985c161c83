//! The server's other endpoints and the clock rule.

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn health_metrics_dashboard_and_the_real_clock() {
    let s = Server::start_in(tempfile::tempdir().unwrap(), false).await;
    let get = |p: &str| s.http.get(format!("{}{p}", s.base)).send();
    assert_eq!(get("/healthz").await.unwrap().text().await.unwrap(), "ok");
    let page = get("/").await.unwrap();
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let js = get("/app.js").await.unwrap();
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(
        get("/graphql")
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .to_lowercase()
            .contains("graphiql")
    );
    s.wallet("alice", "pro", "UTC").await;
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("credits_graphql_requests_total"),
        "{metrics}"
    );
    assert_eq!(
        s.code(ADMIN, "mutation { advanceClock(seconds: 60) }", json!({}))
            .await,
        "FORBIDDEN",
        "no manual clock"
    );
}
