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
        for op in operations(doc) {
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
