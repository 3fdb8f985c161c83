//! The HTTP server: GraphQL over HTTP and WebSocket at `/graphql` (GraphiQL on a plain
//! GET, its files under `/graphql/assets/`), the dashboard at `/`, `/healthz`, `/readyz`
//! and Prometheus `/metrics`. Every GraphQL request is authenticated before it runs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql::{BatchRequest, BatchResponse};
use async_graphql_axum::{GraphQLBatchRequest, GraphQLResponse};
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State, WebSocketUpgrade};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use credits_actors::Ledger;
use credits_graphql::limits::{Listed, MAX_BATCH, MAX_BODY_BYTES};
use credits_graphql::{ApiError, Code, CreditsSchema, Principal};
use credits_store::TokenHash;
use futures::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;

/// How long a new WebSocket may take to send `connection_init`.
pub const CONNECTION_INIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Subscriptions one WebSocket may have open at once (each holds a wallet's event channel
/// and keeps the wallet active); one more is refused on its own.
pub const MAX_SUBSCRIPTIONS_PER_SOCKET: usize = 256;

/// What every handler shares, behind one `Arc` (see [`Shared`]).
pub struct AppState {
    pub schema: CreditsSchema,
    pub ledger: Ledger,
    pub admin_token: Option<Arc<TokenHash>>,
    pub metrics: Option<PrometheusHandle>,
    /// One permit per GraphQL-over-HTTP request being served (`Settings::max_in_flight`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// One permit per open WebSocket (`--max-websockets`).
    pub websockets: Arc<tokio::sync::Semaphore>,
    /// Time between pings on a WebSocket (`--ws-keepalive`).
    pub ws_keepalive: Duration,
    /// Read-held by each WebSocket operation until its first result (a mutation's only
    /// one; a subscription's snapshot). Shutdown takes it for writing, so it waits for
    /// them (SIGTERM finishes in-flight operations), and one started after is refused.
    pub draining: Arc<tokio::sync::RwLock<()>>,
    /// Listening on a loopback address only: requests must name a loopback host or one of
    /// `allowed_hosts` (see [`loopback_hosts_only`]).
    pub loopback: bool,
    pub allowed_hosts: Vec<String>,
}

/// The state as handlers receive it: one reference count per request, where cloning
/// `AppState` itself would touch a dozen shared counters.
pub type Shared = Arc<AppState>;

pub fn router(state: AppState) -> Router {
    let state: Shared = Arc::new(state);
    let routes = Router::new()
        .route(
            "/graphql",
            get(graphql_get)
                .post(graphql_post)
                .route_layer(middleware::from_fn_with_state(state.clone(), shed_load)),
        )
        .route(
            &format!("{}{{name}}", crate::graphiql::ASSETS_PREFIX),
            get(crate::graphiql::asset),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(get(asset))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            loopback_hosts_only,
        ))
        .with_state(state);
    guarded(routes)
}

/// On a server listening on loopback only, a request whose `Host` is not a loopback name
/// (`localhost`, `*.localhost`, a loopback address) is refused (421) before anything runs,
/// and one from a browser page of another origin (`Origin`) too (403).
/// A web page the user visits can point a hostname of its own at 127.0.0.1 (DNS
/// rebinding) and so call the local service as its own origin; it cannot make the browser
/// send a loopback `Host` (found by review: the README's server could be driven so, with
/// its admin token guessed). A server listening on other addresses is reached through
/// names this one cannot know. `--allowed-host` adds names (a reverse proxy passing its own).
async fn loopback_hosts_only(
    State(state): State<Shared>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    if !state.loopback {
        return next.run(req).await;
    }
    let allowed =
        |host: &str| is_loopback_host(host) || state.allowed_hosts.contains(&host_name(host));
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host());
    if host.is_some_and(|h| !allowed(h)) {
        return error_response(
            StatusCode::MISDIRECTED_REQUEST,
            ApiError::new(
                Code::Forbidden,
                "this server listens on loopback only: address it as localhost, 127.0.0.1 or [::1]",
            ),
        );
    }
    // A page of another site may still open a WebSocket to 127.0.0.1 (browsers do not
    // hold WebSockets to the same origin), or post to it: the browser names the page's
    // origin (found by review); clients that are not browsers send none. A loopback origin
    // must be this server's own, its port too (another local app's page is another
    // origin); an allowed name is the proxy's, on whatever port it serves.
    let own_port = host.map_or(80, |h| {
        h.rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or(80)
    });
    let origin_ok = |origin: &url::Url| {
        origin.host_str().is_some_and(|h| {
            state.allowed_hosts.contains(&host_name(h))
                || (is_loopback_host(h) && origin.port_or_known_default() == Some(own_port))
        })
    };
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .map(|o| o.to_str().ok().and_then(|o| url::Url::parse(o).ok()));
    if let Some(origin) = origin
        && !origin.as_ref().is_some_and(origin_ok)
    {
        return error_response(
            StatusCode::FORBIDDEN,
            ApiError::new(
                Code::Forbidden,
                "this server listens on loopback only and answers pages of its own names only",
            ),
        );
    }
    next.run(req).await
}

/// Whether a `Host` value (with or without a port) names this machine's loopback.
pub fn is_loopback_host(host: &str) -> bool {
    let name = host_name(host);
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The name a `Host` value carries: without its port, lowercase, no final dot.
pub fn host_name(host: &str) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        return host.to_ascii_lowercase(); // An IPv6 address without brackets (and port).
    }
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// What every route gets: the body limit, a panic answered instead of a dropped
/// connection, and the browser's safety headers.
fn guarded(routes: Router) -> Router {
    routes
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            answer_panic,
        ))
        .layer(middleware::map_response(browser_safety))
}

/// The dashboard's policy: its own scripts, styles and API only (no inline script, no
/// other origin), never framed. GraphiQL's page has its own (`graphiql::page_policy`).
const DASHBOARD_CSP: &str = "default-src 'self'; img-src 'self' data:; connect-src 'self'; \
    frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Every response: no content sniffing, no framing (the pages hold a live token), no
/// referrer sent elsewhere.
async fn browser_safety(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

/// A handler that panicked (a bug) answers UNAVAILABLE, 500: its outcome is unknown to
/// the caller, who may retry with the same idempotency key. Without this the connection
/// would drop, taking the other requests of its batch with it.
fn answer_panic(panic: Box<dyn std::any::Any + Send>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    tracing::error!(panic = what, "a request handler panicked");
    metrics::counter!("credits_http_panics_total").increment(1);
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        ApiError::unavailable("the server failed on this request; its outcome is unknown"),
    )
}

fn error_response(status: StatusCode, e: ApiError) -> Response {
    let body = serde_json::json!({ "errors": [{ "message": e.message, "extensions": { "code": e.code.as_str() } }] });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Bound on receiving a GraphQL request's body once its headers are in.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Past `max_in_flight` GraphQL POSTs at once, answers at once with `UNAVAILABLE` (503,
/// `Retry-After: 1`) rather than queueing: before the body is read and before the token
/// is looked up, so a shed request costs next to nothing and changes nothing. Then the
/// caller is authenticated (the [`Principal`] goes into the request's extensions) before
/// the body is looked at, and the body read: one that takes longer than [`BODY_TIMEOUT`]
/// is answered 408 and frees its slot. WebSocket upgrades and GraphiQL (GETs) pass
/// through.
async fn shed_load(
    State(state): State<Shared>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    metrics::counter!("credits_graphql_requests_total").increment(1);
    let Ok(permit) = state.in_flight.clone().try_acquire_owned() else {
        metrics::counter!("credits_graphql_shed_total").increment(1);
        let mut response = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiError::unavailable("the server is at capacity; retry later"),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    // Authenticated before the body is used (SPEC 10: UNAUTHENTICATED comes first).
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = principal_from(&state, auth).await;
    // A slot is held until the body has arrived: one that never comes must not hold it
    // for ever (a few stalled clients would otherwise shut everyone out).
    let (mut parts, body) = req.into_parts();
    let principal = match principal {
        Ok(p) => p,
        Err(e) => {
            // Read (and dropped) first, as a body over the limit is: a client still
            // writing it then reads the refusal instead of a broken pipe. Not on a slot:
            // a caller without a token must not hold one. Not when the client waits to be
            // told to send it (`Expect: 100-continue`): it is then told no at once.
            drop(permit);
            // Nothing of it is kept (found by review: it was read as a body to use, 256 KiB
            // held per connection, with no slot bounding how many).
            if !parts.headers.contains_key(header::EXPECT) {
                let mut stream = body.into_data_stream();
                let _ = tokio::time::timeout(BODY_TIMEOUT, drain(&mut stream, 0)).await;
            }
            let status = match e.code {
                Code::Unauthenticated => StatusCode::UNAUTHORIZED,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            return error_response(status, e);
        }
    };
    parts.extensions.insert(principal);
    let body = match tokio::time::timeout(BODY_TIMEOUT, read_body(body)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                ApiError::invalid(format!(
                    "the body is unreadable or over {MAX_BODY_BYTES} bytes: {e}"
                )),
            );
        }
        Err(_) => {
            return error_response(
                StatusCode::REQUEST_TIMEOUT,
                ApiError::invalid(format!(
                    "the body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                )),
            );
        }
    };
    next.run(axum::extract::Request::from_parts(parts, body.into()))
        .await
}

/// How much of a body over [`MAX_BODY_BYTES`] is read and dropped before the refusal.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;

/// Reads a body of at most [`MAX_BODY_BYTES`]. Past that it reads on and drops the rest, up
/// to [`DRAIN_BYTES`], before refusing: a client still writing a large body then reads the
/// 413 and its code, where closing at once would leave it a broken pipe and no answer.
async fn read_body(body: axum::body::Body) -> Result<axum::body::Bytes, String> {
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if kept.len() + chunk.len() > MAX_BODY_BYTES {
            drain(&mut stream, kept.len() + chunk.len()).await;
            return Err("length limit exceeded".to_owned());
        }
        kept.extend_from_slice(&chunk);
    }
    Ok(kept.into())
}

/// Reads on and drops what arrives until the body ends or [`DRAIN_BYTES`] in all (`seen`
/// of them already) have come.
async fn drain(stream: &mut axum::body::BodyDataStream, mut seen: usize) {
    while seen <= DRAIN_BYTES {
        match stream.next().await {
            Some(Ok(chunk)) => seen += chunk.len(),
            Some(Err(_)) | None => break,
        }
    }
}

pub(crate) async fn principal_from(
    state: &AppState,
    auth: Option<&str>,
) -> Result<Principal, ApiError> {
    let token = auth
        .and_then(credits_graphql::bearer)
        .ok_or_else(|| ApiError::new(Code::Unauthenticated, "a bearer token is required"))?;
    credits_graphql::authenticate(&state.ledger, state.admin_token.as_deref(), token)
        .await?
        .ok_or_else(|| ApiError::new(Code::Unauthenticated, "unknown or revoked token"))
}

/// Runs behind [`shed_load`], which authenticated the caller.
async fn graphql_post(
    State(state): State<Shared>,
    axum::Extension(principal): axum::Extension<Principal>,
    request: Result<GraphQLBatchRequest, async_graphql_axum::rejection::GraphQLRejection>,
) -> Response {
    let batch = match request {
        Ok(r) => r.into_inner(),
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                ApiError::invalid(format!("not a GraphQL request: {}", e.0)),
            );
        }
    };
    let response: BatchResponse = match batch {
        BatchRequest::Single(r) => {
            let r = r.data(principal).data(Listed::new());
            state.schema.execute(r).await.into()
        }
        BatchRequest::Batch(rs) if rs.len() > MAX_BATCH => {
            return error_response(
                StatusCode::BAD_REQUEST,
                ApiError::invalid(format!("at most {MAX_BATCH} operations per batch")),
            );
        }
        BatchRequest::Batch(rs) => {
            // The batch's operations share one bound on the rows their lists answer.
            let listed = Listed::new();
            let rs = rs
                .into_iter()
                .map(|r| r.data(principal.clone()).data(listed.clone()))
                .collect();
            state.schema.execute_batch(BatchRequest::Batch(rs)).await
        }
    };
    GraphQLResponse::from(response).into_response()
}

/// A WebSocket upgrade serves subscriptions; a plain GET serves GraphiQL.
async fn graphql_get(State(state): State<Shared>, req: axum::extract::Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let Ok(upgrade) = WebSocketUpgrade::from_request_parts(&mut parts, &state).await else {
        // GraphQL over GET is not served (a mutation must not run from a link): a client
        // trying it gets a refusal it can read, not the GraphiQL page.
        let asks_graphql = parts
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("query=")));
        if asks_graphql {
            let mut response = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                ApiError::invalid("GraphQL requests are POSTs (or a WebSocket)"),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        // Revalidated each time: a new binary may name new asset versions.
        return (
            [
                (header::CACHE_CONTROL, "no-cache"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    crate::graphiql::page_policy(),
                ),
            ],
            Html(crate::graphiql::PAGE),
        )
            .into_response();
    };
    // The protocol the handshake agrees is the one the socket speaks.
    let upgrade = upgrade.protocols(ALL_WEBSOCKET_PROTOCOLS);
    let protocol = upgrade
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .and_then(|p| p.parse().ok());
    let Some(protocol) = protocol else {
        return (StatusCode::BAD_REQUEST, "unsupported WebSocket subprotocol").into_response();
    };
    // Refused before the upgrade, so a flood costs no task and no buffers.
    let Ok(permit) = state.websockets.clone().try_acquire_owned() else {
        metrics::counter!("credits_websocket_refused_total").increment(1);
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            ApiError::new(Code::Unavailable, "too many WebSocket connections"),
        );
    };
    upgrade
        // A message is a request: the HTTP body limit holds here too (SPEC 10), checked
        // by the socket's loop on what the library reads.
        .max_message_size(crate::ws::MAX_READ_BYTES)
        .max_frame_size(crate::ws::MAX_READ_BYTES)
        .on_upgrade(move |socket| async move {
            metrics::gauge!("credits_websocket_connections").increment(1.0);
            crate::ws::serve(socket, state, protocol).await;
            metrics::gauge!("credits_websocket_connections").decrement(1.0);
            drop(permit);
        })
}

/// Ready while the database answers and at least one pricing tier serves. Tiers disabled
/// after a stalled call are named (a reload brings them back); they do not make the node
/// unready while another tier serves, since every node loads the same files.
async fn readyz(State(state): State<Shared>) -> Response {
    if let Err(e) = state.ledger.store().ping().await {
        // The database's own text goes to the log: this endpoint needs no token.
        tracing::warn!(error = %e, "readiness: the database did not answer");
        return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response();
    }
    let pricing = state.ledger.pricing();
    let loaded = pricing.tiers().len();
    let stalled: Vec<String> = pricing
        .stalled_tiers()
        .into_iter()
        .map(|t| t.tier)
        .collect();
    let disabled = if stalled.is_empty() {
        String::new()
    } else {
        format!(
            "; disabled after a stalled call until a reload loads it afresh (a new file, or the same one once the call has returned): {}",
            stalled.join(", ")
        )
    };
    let serving = loaded.saturating_sub(stalled.len());
    if serving == 0 {
        let why = if loaded == 0 {
            "no pricing tiers loaded".to_owned()
        } else {
            format!("no pricing tier serves{disabled}")
        };
        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    }
    (
        StatusCode::OK,
        format!("ready: database reachable, {serving} pricing tiers serving{disabled}"),
    )
        .into_response()
}

/// Starts every event-driven series at zero, so that a rate or an alert on one sees it
/// before its first event (Prometheus cannot tell "none yet" from "not exported").
pub fn register_metrics() {
    for name in [
        "credits_graphql_requests_total",
        "credits_graphql_shed_total",
        "credits_http_panics_total",
        "credits_websocket_refused_total",
        "credits_websocket_subscriptions_refused_total",
        "credits_subscription_catch_up_reads_total",
        "credits_subscription_resyncs_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for outcome in ["ok", "error", "stalled"] {
        metrics::counter!("credits_plugin_calls_total", "outcome" => outcome).absolute(0);
    }
    metrics::gauge!("credits_websocket_connections").set(0.0);
}

async fn metrics(State(state): State<Shared>) -> Response {
    let dir = state.ledger.directory();
    let m = dir.metrics();
    let count = |name: &'static str, n: &std::sync::atomic::AtomicU64| {
        metrics::counter!(name).absolute(n.load(Ordering::Relaxed));
    };
    metrics::gauge!("credits_active_wallets").set(dir.active_wallets() as f64);
    count("credits_wallet_activations_total", &m.activations);
    // Wallet batches made durable, the ledger records they carried, and the store
    // transactions that carried them: batches ÷ transactions is the group-commit size.
    count("credits_commits_total", &m.commits);
    count("credits_ledger_records_total", &m.records);
    count("credits_store_transactions_total", &m.groups);
    count(
        "credits_store_transaction_batches_total",
        &m.grouped_batches,
    );
    match &state.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are off").into_response(),
    }
}

async fn asset(uri: Uri) -> Response {
    match crate::assets::find(uri.path()) {
        Some((content_type, body)) if content_type.starts_with("text/html") => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP),
            ],
            body,
        )
            .into_response(),
        Some((content_type, body)) => {
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_told_from_others() {
        for host in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "app.localhost:3000",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:9",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        assert_eq!(host_name("fd00::1"), "fd00::1");
        assert_eq!(host_name("[FD00::1]:8443"), "fd00::1");
        assert_eq!(host_name("Proxy.Example.:8443"), "proxy.example");
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "[::2]:8080",
            "127.0.0.1.nip.io",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    /// A bug that panics in a handler answers UNAVAILABLE (500), and the server goes on
    /// serving.
    #[tokio::test]
    async fn a_panicking_handler_answers_unavailable() {
        async fn boom() -> &'static str {
            panic!("a bug")
        }
        let routes = Router::new()
            .route("/boom", get(boom))
            .route("/ok", get(|| async { "fine" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, guarded(routes)).await });
        let client = reqwest::Client::new();
        let boom = client.get(format!("{url}/boom")).send().await.unwrap();
        assert_eq!(boom.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body: serde_json::Value = boom.json().await.unwrap();
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAVAILABLE");
        let ok = client.get(format!("{url}/ok")).send().await.unwrap();
        assert_eq!(ok.headers()["x-frame-options"], "DENY");
        assert_eq!(ok.text().await.unwrap(), "fine");
    }

    /// Found by review: no response carried the browser's safety headers, though the
    /// pages hold a live token. The dashboard also gets its content policy.
    #[tokio::test]
    async fn pages_carry_the_browsers_safety_headers() {
        let page = browser_safety(asset(Uri::from_static("/")).await).await;
        let headers = page.headers();
        assert_eq!(headers[header::CONTENT_SECURITY_POLICY], DASHBOARD_CSP);
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
        let script = asset(Uri::from_static("/app.js")).await;
        assert_eq!(script.status(), StatusCode::OK);
        assert!(
            !script
                .headers()
                .contains_key(header::CONTENT_SECURITY_POLICY)
        );
    }
}
