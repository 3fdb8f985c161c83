//! The GraphQL the documentation shows — every operation of `graphql/examples/` and every
//! block of the README — is valid against the server's schema: sent as an admin with
//! placeholder variables, it may be refused by a resolver (an unknown id), never by parsing
//! or validation (an error without a `path`).

use serde_json::{Map, Value, json};

use crate::helpers::{App, Backend, Init, Ws};

fn repo(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The top-level operations of a document (comments dropped), split where their outermost
/// braces close.
fn operations(doc: &str) -> Vec<String> {
    let (mut ops, mut current, mut depth, mut in_string) = (Vec::new(), String::new(), 0, false);
    for line in doc.lines() {
        let line = if line.trim_start().starts_with('#') {
            ""
        } else {
            line
        };
        for c in line.chars().chain(['\n']) {
            current.push(c);
            match c {
                '"' => in_string = !in_string,
                '{' if !in_string => depth += 1,
                '}' if !in_string => {
                    depth -= 1;
                    if depth == 0 {
                        ops.push(std::mem::take(&mut current).trim().to_owned());
                    }
                }
                _ => {}
            }
        }
    }
    assert!(current.trim().is_empty(), "unclosed operation: {current}");
    ops
}

/// Placeholder values for the variables an operation declares.
fn placeholders(op: &str) -> Value {
    let header = op.split('{').next().unwrap_or("");
    let mut vars = Map::new();
    for part in header.split('$').skip(1) {
        let (name, ty) = part.split_once(':').expect("a typed variable");
        let ty = ty.trim().trim_start_matches('[');
        let value = match ty.split([']', '!', ')', ',', ' ']).next().unwrap_or("") {
            "Int" => json!(1),
            "Boolean" => json!(true),
            "Credits" => json!("1"),
            "DateTime" => json!("2030-01-01T00:00:00Z"),
            _ => json!("placeholder"),
        };
        vars.insert(name.trim().to_owned(), value);
    }
    Value::Object(vars)
}

fn not_from_a_resolver(resp: &Value) -> Vec<Value> {
    resp.get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("path").is_none_or(Value::is_null))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_operations_are_valid() {
    let app = App::spawn(Backend::Sqlite).await;
    let mut docs: Vec<(String, String)> = Vec::new();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../graphql/examples");
    let mut names: Vec<String> = std::fs::read_dir(examples)
        .expect("graphql/examples")
        .map(|e| {
            e.expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".graphql"))
        .collect();
    names.sort();
    assert!(names.len() >= 4, "{names:?}");
    for name in names {
        let path = format!("graphql/examples/{name}");
        docs.push((path.clone(), repo(&path)));
    }
    let readme = repo("README.md");
    for (i, block) in readme.split("```graphql").skip(1).enumerate() {
        let block = block.split("```").next().unwrap_or("");
        docs.push((format!("README.md block {}", i + 1), block.to_owned()));
    }
    let mut checked = 0;
    for (source, doc) in &docs {
        let ops = operations(doc);
        // Found by review: a README block of three anonymous mutations, which no server
        // accepts as one document (GraphQL's lone anonymous operation rule).
        if ops.len() > 1 {
            for op in &ops {
                let head = op.split(['{', '(']).next().unwrap_or("");
                assert_eq!(
                    head.split_whitespace().count(),
                    2,
                    "{source}: a document of several operations names each one: {op}"
                );
            }
        }
        for op in ops {
            let vars = placeholders(&op);
            let resp = if op.starts_with("subscription") {
                let (mut ws, init) = Ws::connect(&app, "graphql-transport-ws", &app.admin).await;
                assert!(
                    matches!(init, Init::Ack),
                    "{source}: the socket was not acknowledged"
                );
                ws.subscribe("1", &op, vars).await;
                ws.next("1").await
            } else {
                app.gql(&app.admin, &op, vars).await
            };
            let invalid = not_from_a_resolver(&resp);
            assert!(invalid.is_empty(), "{source}: {op}\n{invalid:#?}");
            checked += 1;
        }
    }
    assert!(checked >= 25, "{checked} operations found");
}

/// The operations of an example file, by name.
fn named_operations(path: &str) -> std::collections::HashMap<String, String> {
    operations(&repo(path))
        .into_iter()
        .map(|op| {
            let name = op
                .split(['{', '('])
                .next()
                .and_then(|head| head.split_whitespace().nth(1))
                .unwrap_or_else(|| panic!("{path}: an example without a name: {op}"))
                .to_owned();
            (name, op)
        })
        .collect()
}

/// Found by review: the examples were only checked against the schema, and the backend's
/// `Settle` asked for a model its own wallet's plan does not allow (MODEL_NOT_ALLOWED).
/// Each file now runs in order, as the client its header names, and every operation
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_run_as_their_clients() {
    let app = App::spawn(Backend::Sqlite).await;
    let service = app.token("SERVICE", None).await;
    let alice = app.token("USER", Some("alice")).await;

    let backend = named_operations("graphql/examples/platform-backend.graphql");
    let run = |token: &str, ops: &std::collections::HashMap<String, String>, name: &str, vars| {
        let (app, token, op) = (&app, token.to_owned(), ops[name].clone());
        async move { app.ok(&token, &op, vars).await }
    };
    let d = run(
        &service,
        &backend,
        "OpenWallet",
        json!({ "owner": "alice", "key": "open-1" }),
    )
    .await;
    let w = d["createWallet"]["id"].as_str().unwrap().to_owned();
    run(&service, &backend, "Quote", json!({ "wallet": w })).await;
    // Three identical charges on one thread: a retry loop, for the review below.
    for key in ["c1", "c2", "c3"] {
        run(
            &service,
            &backend,
            "Charge",
            json!({ "wallet": w, "key": key, "thread": "t1" }),
        )
        .await;
    }
    let hold = |key: &'static str| {
        let run = &run;
        let (service, backend, w) = (&service, &backend, &w);
        async move {
            let d = run(service, backend, "Hold", json!({ "wallet": w, "key": key })).await;
            d["reserveCredits"]["id"].as_str().unwrap().to_owned()
        }
    };
    let r = hold("h1").await;
    let d = run(
        &service,
        &backend,
        "Settle",
        json!({ "reservation": r, "thread": "t2" }),
    )
    .await;
    assert_eq!(d["settleReservation"]["replayed"], false);
    let r = hold("h2").await;
    let d = run(&service, &backend, "Release", json!({ "reservation": r })).await;
    assert_eq!(d["releaseReservation"]["status"], "RELEASED");
    run(
        &service,
        &backend,
        "Buy",
        json!({ "wallet": w, "payment": "pay-1" }),
    )
    .await;

    let dashboard = named_operations("graphql/examples/dashboard.graphql");
    let d = run(&alice, &dashboard, "Me", json!({})).await;
    assert_eq!(d["viewer"]["wallets"][0]["id"], w.as_str());
    run(&alice, &dashboard, "Wallet", json!({ "id": w })).await;
    let (mut ws, init) = Ws::connect(&app, "graphql-transport-ws", &alice).await;
    assert!(matches!(init, Init::Ack), "{init:?}");
    ws.subscribe("live", &dashboard["Live"], json!({ "id": w }))
        .await;
    assert_eq!(
        ws.next_data("live").await["balanceChanged"]["cause"],
        "SNAPSHOT"
    );
    let d = run(
        &alice,
        &dashboard,
        "Report",
        json!({ "wallet": w, "thread": "t1" }),
    )
    .await;
    let review = d["reportHighUsage"]["id"].as_str().unwrap().to_owned();
    drop(ws);
    let (mut ws, _) = Ws::connect(&app, "graphql-transport-ws", &alice).await;
    ws.subscribe(
        "review",
        &dashboard["ReviewStatus"],
        json!({ "review": review }),
    )
    .await;
    assert_eq!(
        ws.next_data("review").await["reviewUpdated"]["status"],
        "SUBMITTED"
    );

    let admin = named_operations("graphql/examples/pricing-admin.graphql");
    let token = app.admin.clone();
    for name in ["Models", "Reload", "CustomPlan"] {
        run(&token, &admin, name, json!({})).await;
    }
    let d = run(&token, &admin, "Team", json!({})).await;
    let team = d["createTeam"]["id"].as_str().unwrap().to_owned();
    run(&token, &admin, "Grant", json!({ "wallet": w })).await;
    let d = run(&token, &admin, "Open", json!({})).await;
    assert_eq!(d["reviews"][0]["id"], review.as_str());
    let d = run(&token, &admin, "Approve", json!({ "review": review })).await;
    assert_eq!(d["resolveReview"]["status"], "CREDITED");
    assert_eq!(
        ws.next_data("review").await["reviewUpdated"]["status"],
        "CREDITED"
    );
    run(&token, &admin, "Token", json!({})).await;

    // alice administers the team the admin created.
    let team_admin = named_operations("graphql/examples/team-admin.graphql");
    run(&alice, &team_admin, "Team", json!({ "id": team })).await;
    for name in ["AddMember", "Limits", "Remove"] {
        run(&alice, &team_admin, name, json!({ "team": team })).await;
    }
}
