//! Subscriptions over a real WebSocket, in both protocols.

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::*;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(s: &Server, protocol: &str, token: &str) -> Ws {
    let mut req = s.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text(
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}})
            .to_string(),
    ))
    .await
    .unwrap();
    ws
}

/// The next JSON message that is not a keep-alive, within a bound.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] != "ka" && v["type"] != "ping" {
                    return v;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return json!({"type": "closed", "frame": format!("{frame:?}")});
            }
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn balance_changed_streams_a_snapshot_usage_and_a_reset_in_seq_order() {
    let s = Server::start().await;
    let w = s.wallet("alice", "pro", "UTC").await;
    let alice = s.token("USER", Some("alice")).await;
    let mut ws = connect(&s, "graphql-transport-ws", &alice).await;
    assert_eq!(next(&mut ws).await["type"], "connection_ack");
    let sub = "subscription($w: ID!) { balanceChanged(walletId: $w) { seq cause at balance { total daily { remaining } } } }";
    ws.send(Message::text(
        json!({"id": "1", "type": "subscribe", "payload": {"query": sub, "variables": {"w": w}}})
            .to_string(),
    ))
    .await
    .unwrap();
    let snap = next(&mut ws).await;
    assert_eq!(
        snap["payload"]["data"]["balanceChanged"]["cause"], "SNAPSHOT",
        "{snap}"
    );
    let seq0 = snap["payload"]["data"]["balanceChanged"]["seq"]
        .as_u64()
        .unwrap();
    s.usage(&w, "k1", "economy-mini").await;
    let used = next(&mut ws).await["payload"]["data"]["balanceChanged"].clone();
    assert_eq!(
        (used["cause"].as_str(), used["seq"].as_u64()),
        (Some("USAGE"), Some(seq0 + 1))
    );
    // 12:00 → past midnight UTC.
    s.gql(
        ADMIN,
        "mutation { advanceClock(seconds: 43200) }",
        json!({}),
    )
    .await;
    let reset = next(&mut ws).await["payload"]["data"]["balanceChanged"].clone();
    assert_eq!(
        (reset["cause"].as_str(), reset["seq"].as_u64()),
        (Some("DAILY_RESET"), Some(seq0 + 2))
    );
    assert_eq!(reset["at"], "2027-03-11T00:00:00Z");
    assert_eq!(reset["balance"]["daily"]["remaining"], "20");
}

#[tokio::test]
async fn legacy_protocol_and_a_refused_token() {
    let s = Server::start().await;
    let w = s.wallet("alice", "pro", "UTC").await;
    let mut ws = connect(&s, "graphql-ws", ADMIN).await;
    assert_eq!(next(&mut ws).await["type"], "connection_ack");
    let sub = "subscription($w: ID!) { balanceChanged(walletId: $w) { seq cause } }";
    ws.send(Message::text(
        json!({"id": "1", "type": "start", "payload": {"query": sub, "variables": {"w": w}}})
            .to_string(),
    ))
    .await
    .unwrap();
    let snap = next(&mut ws).await;
    assert_eq!(
        snap["payload"]["data"]["balanceChanged"]["cause"], "SNAPSHOT",
        "{snap}"
    );

    let mut bad = connect(&s, "graphql-transport-ws", "wrong-token").await;
    let answer = next(&mut bad).await;
    assert_ne!(
        answer["type"], "connection_ack",
        "a bad token is refused: {answer}"
    );
}
