//! GraphQL over WebSocket: `graphql-transport-ws` and the legacy `graphql-ws`
//! (subscriptions-transport-ws). One task per socket reads the client's messages and
//! forwards the events of every subscription it opened.
//!
//! Our own loop rather than async-graphql's: that one polls every subscription of a socket
//! each time any of them (or the socket) wakes it, so a socket with n subscriptions paid
//! O(n) per event (a third of the server's CPU with 100 per socket, `docs/BENCHMARKS.md`,
//! "Server"). Here the subscriptions sit in a [`SelectAll`], which polls only the ones
//! that were woken. The messages and close codes are those of the two protocols.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::Poll;

use async_graphql::http::WebSocketProtocols as Protocol;
use async_graphql::parser::types::OperationType;
use async_graphql::{Request, Response};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::stream::{AbortHandle, Abortable, BoxStream, SelectAll};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};

use crate::server::{AppState, CONNECTION_INIT_TIMEOUT, MAX_SUBSCRIPTIONS_PER_SOCKET, Shared};
use credits_graphql::limits::{Listed, MAX_BODY_BYTES};
use credits_graphql::{Code, Principal};

/// Events written to a socket before one flush.
const SEND_BATCH: usize = 64;

/// graphql-transport-ws's close code for a message that is not one of the protocol's.
const INVALID_MESSAGE: u16 = 4400;

/// Longest operation id a client may use (ids are kept for as long as the operation runs;
/// clients send UUIDs or counters).
const MAX_ID_BYTES: usize = 128;

/// How often the legacy protocol's `ka` goes out at most.
const KA_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// RFC 6455 close codes: a message over the limit, and a server that cannot serve now.
const MESSAGE_TOO_BIG: u16 = 1009;
const TRY_AGAIN_LATER: u16 = 1013;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    ConnectionInit {
        payload: Option<serde_json::Value>,
    },
    #[serde(alias = "start")]
    Subscribe {
        id: String,
        payload: Box<Request>,
    },
    #[serde(alias = "stop")]
    Complete {
        id: String,
    },
    ConnectionTerminate,
    Ping {
        #[allow(dead_code)] // Read only to accept the message; the pong carries none.
        payload: Option<serde_json::Value>,
    },
    Pong {
        #[allow(dead_code)]
        payload: Option<serde_json::Value>,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage<'a> {
    ConnectionAck,
    ConnectionError {
        payload: ErrorPayload,
    },
    Next {
        id: &'a str,
        payload: &'a Response,
    },
    Data {
        id: &'a str,
        payload: &'a Response,
    },
    Complete {
        id: &'a str,
    },
    /// An operation refused before it ran (the socket stays open): graphql-transport-ws
    /// sends its errors, the legacy protocol one error.
    Error {
        id: &'a str,
        payload: ErrorList<'a>,
    },
    Pong,
    /// The legacy protocol's keepalive, sent after the ack and then every keepalive period,
    /// at most 10 s apart.
    Ka,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ErrorList<'a> {
    Many(&'a [async_graphql::ServerError]),
    One(&'a async_graphql::ServerError),
}

impl<'a> ServerMessage<'a> {
    /// The refusal of operation `id` before it ran, as `protocol` sends it.
    fn error(protocol: Protocol, id: &'a str, errors: &'a [async_graphql::ServerError]) -> Self {
        let payload = match (protocol, errors) {
            (Protocol::SubscriptionsTransportWS, [first, ..]) => ErrorList::One(first),
            _ => ErrorList::Many(errors),
        };
        ServerMessage::Error { id, payload }
    }
}

#[derive(Serialize)]
struct ErrorPayload {
    message: String,
}

/// A lookup of the socket's token, run at each keepalive ping.
type TokenCheck = futures::future::BoxFuture<'static, Result<Principal, credits_graphql::ApiError>>;

/// Why the loop stops: a close frame to send (code, reason), or nothing (the client left).
type Close = Option<(u16, String)>;

/// One event of a subscription, or its end (`event: None`), tagged with the subscription's
/// id and the generation of that id (an id may be reused once completed).
struct Tagged {
    id: Arc<str>,
    generation: u64,
    event: Option<Response>,
    /// Whether this is the operation's first result.
    first: bool,
    /// On the first result, the operation's in-flight guard (none when it was refused
    /// because the server is draining).
    guard: Option<InFlight>,
}

/// Held by an operation until its first result is written to the socket (see
/// `AppState::draining`).
type InFlight = tokio::sync::OwnedRwLockReadGuard<()>;

/// Serves one upgraded socket until either side closes it.
pub async fn serve(socket: WebSocket, state: Shared, protocol: Protocol) {
    let (mut sink, mut incoming) = socket.split();
    let close = match tokio::time::timeout(
        CONNECTION_INIT_TIMEOUT,
        init(&mut sink, &mut incoming, &state),
    )
    .await
    {
        Err(_) => Some((4408, "Connection initialisation timeout".to_owned())),
        Ok(Err(close)) => close,
        Ok(Ok(auth)) => match acknowledge(&mut sink, protocol).await {
            Ok(()) => {
                Connection::new(state, protocol, auth)
                    .run(&mut sink, &mut incoming)
                    .await
            }
            Err(()) => None,
        },
    };
    let Some((code, reason)) = close else {
        // The client closed (or left): its close frame is answered, which the library
        // queued but sends only on a flush.
        let _ = tokio::time::timeout(CLOSE_WAIT, sink.close()).await;
        return;
    };
    {
        if protocol == Protocol::SubscriptionsTransportWS && code != 4408 {
            // The legacy protocol reports errors in a message before closing.
            let error = ServerMessage::ConnectionError {
                payload: ErrorPayload {
                    message: reason.clone(),
                },
            };
            let _ = tokio::time::timeout(CLOSE_WAIT, send(&mut sink, &error)).await;
        }
        let frame = CloseFrame {
            code,
            reason: truncate(reason, MAX_CLOSE_REASON).into(),
        };
        let _ = tokio::time::timeout(CLOSE_WAIT, sink.send(Message::Close(Some(frame)))).await;
    }
}

/// How long a closing socket waits for its last frame to be written.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// `connection_ack`, then, on the legacy protocol, its first keepalive.
async fn acknowledge(sink: &mut Outgoing, protocol: Protocol) -> Result<(), ()> {
    feed(sink, &ServerMessage::ConnectionAck).await?;
    if protocol == Protocol::SubscriptionsTransportWS {
        feed(sink, &ServerMessage::Ka).await?;
    }
    sink.flush().await.map_err(|_| ())
}

/// A close frame's reason fits in a control frame's 125 bytes, after the 2-byte code.
const MAX_CLOSE_REASON: usize = 123;

/// `text` cut to at most `max` bytes, at a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let cut = (0..=max)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(cut);
    }
    text
}

type Incoming = futures::stream::SplitStream<WebSocket>;
type Outgoing = futures::stream::SplitSink<WebSocket, Message>;

/// Waits for `connection_init` and authenticates its `Authorization` payload, which each
/// operation then looks up again (see [`Connection::subscribe`]). A ping before
/// it is answered (graphql-transport-ws allows pings at any time), a pong skipped; anything
/// else first closes the socket.
async fn init(
    sink: &mut Outgoing,
    incoming: &mut Incoming,
    state: &AppState,
) -> Result<Option<String>, Close> {
    loop {
        match read(incoming).await? {
            ClientMessage::ConnectionInit { payload } => {
                let auth = payload.as_ref().and_then(|p| {
                    p.get("Authorization")
                        .or_else(|| p.get("authorization"))
                        .and_then(|v| v.as_str())
                });
                // A store that cannot be asked is no refusal (SPEC 10): 1013 "try again
                // later", which graphql-ws clients retry (they give up on 4500).
                return crate::server::principal_from(state, auth)
                    .await
                    .map(|_| auth.map(str::to_owned))
                    .map_err(|e| match e.code {
                        Code::Unavailable => Some((TRY_AGAIN_LATER, e.message)),
                        _ => Some((4403, e.message)),
                    });
            }
            ClientMessage::Ping { .. } => {
                send(sink, &ServerMessage::Pong).await.map_err(|()| None)?;
            }
            ClientMessage::Pong { .. } => {}
            ClientMessage::ConnectionTerminate => return Err(None),
            ClientMessage::Subscribe { .. } | ClientMessage::Complete { .. } => {
                return Err(Some((4401, "Unauthorized".to_owned())));
            }
        }
    }
}

/// The next protocol message; `Err` closes the socket (with a frame when it is the
/// client's fault).
async fn read(incoming: &mut Incoming) -> Result<ClientMessage, Close> {
    loop {
        if let Some(message) = read_frame(incoming).await? {
            return Ok(message);
        }
    }
}

/// The next frame: a protocol message, or `None` for a WebSocket ping or pong (which
/// only shows the peer is there; the library answers pings itself).
async fn read_frame(incoming: &mut Incoming) -> Result<Option<ClientMessage>, Close> {
    let parsed = match incoming.next().await {
        None | Some(Ok(Message::Close(_))) => return Err(None),
        Some(Err(e)) => return Err(unreadable(e)),
        Some(Ok(Message::Text(text))) if text.len() > MAX_BODY_BYTES => return Err(too_big()),
        Some(Ok(Message::Binary(bytes))) if bytes.len() > MAX_BODY_BYTES => return Err(too_big()),
        Some(Ok(Message::Text(text))) => serde_json::from_str(text.as_str()),
        Some(Ok(Message::Binary(bytes))) => serde_json::from_slice(&bytes),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(None),
    };
    match parsed {
        Ok(ClientMessage::Subscribe { id, .. } | ClientMessage::Complete { id })
            if id.len() > MAX_ID_BYTES =>
        {
            let why = format!("invalid message: an id is at most {MAX_ID_BYTES} bytes");
            Err(Some((INVALID_MESSAGE, why)))
        }
        parsed => parsed
            .map(Some)
            .map_err(|e| Some((INVALID_MESSAGE, format!("invalid message: {e}")))),
    }
}

/// A message over the body limit (SPEC 10) closes the socket with 1009.
fn too_big() -> Close {
    Some((
        MESSAGE_TOO_BIG,
        format!("a message is at most {MAX_BODY_BYTES} bytes"),
    ))
}

/// A frame the library refused: one over even its own bound (see [`MAX_READ_BYTES`]) is
/// still told why; a broken connection or a protocol violation just ends.
fn unreadable(e: axum::Error) -> Close {
    match e.into_inner().downcast::<tungstenite::Error>().map(|e| *e) {
        Ok(tungstenite::Error::Capacity(_)) => too_big(),
        _ => None,
    }
}

/// What the library reads of one message before refusing it. Above [`MAX_BODY_BYTES`], so
/// that a message a little over the limit is read whole and refused with a close frame the
/// client gets (one refused from its header leaves its payload unread, and the socket may
/// be reset before the client reads the frame).
pub const MAX_READ_BYTES: usize = 4 * MAX_BODY_BYTES;

async fn send(sink: &mut Outgoing, message: &ServerMessage<'_>) -> Result<(), ()> {
    feed(sink, message).await?;
    sink.flush().await.map_err(|_| ())
}

/// Queues a message without flushing; the caller flushes.
async fn feed(sink: &mut Outgoing, message: &ServerMessage<'_>) -> Result<(), ()> {
    let text = serde_json::to_string(message).expect("protocol messages serialize");
    sink.feed(Message::Text(text.into())).await.map_err(|_| ())
}

/// An authenticated socket and its open subscriptions.
struct Connection {
    state: Shared,
    protocol: Protocol,
    /// The `connection_init` credentials, looked up again at every keepalive ping: a token
    /// revoked meanwhile closes the socket.
    auth: Option<String>,
    /// Open subscriptions by id: their generation and the handle that ends them.
    open: HashMap<String, (u64, AbortHandle)>,
    events: SelectAll<BoxStream<'static, Tagged>>,
    generation: u64,
}

impl Connection {
    fn new(state: Shared, protocol: Protocol, auth: Option<String>) -> Self {
        Connection {
            state,
            protocol,
            auth,
            open: HashMap::new(),
            events: SelectAll::new(),
            generation: 0,
        }
    }

    async fn run(mut self, sink: &mut Outgoing, incoming: &mut Incoming) -> Close {
        let every = self.state.ws_keepalive;
        // A peer silent this long is gone; a write that cannot finish this long is to a
        // peer that stopped reading (its buffers are full): either way the socket closes.
        let gone_after = 2 * every;
        let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The legacy protocol's keepalive, well within its clients' usual 30 s timeout
        // (found by review: sent at each 30 s ping, it could come just too late).
        let legacy = self.protocol == Protocol::SubscriptionsTransportWS;
        let ka_every = every.min(KA_EVERY);
        let mut kas = tokio::time::interval_at(tokio::time::Instant::now() + ka_every, ka_every);
        kas.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = tokio::time::Instant::now();
        let mut token_check: Option<TokenCheck> = None;
        loop {
            let written = tokio::select! {
                frame = read_frame(incoming) => {
                    heard = tokio::time::Instant::now();
                    let message = match frame {
                        Ok(Some(m)) => m,
                        Ok(None) => continue,
                        // The legacy protocol reports a message it cannot read and reads on
                        // (graphql-transport-ws closes the socket).
                        Err(Some((INVALID_MESSAGE, why)))
                            if self.protocol == Protocol::SubscriptionsTransportWS =>
                        {
                            let error = ServerMessage::ConnectionError {
                                payload: ErrorPayload { message: why },
                            };
                            let sent = send(sink, &error);
                            match tokio::time::timeout(gone_after, sent).await {
                                Ok(Ok(())) => continue,
                                _ => return None,
                            }
                        }
                        Err(close) => return close,
                    };
                    match tokio::time::timeout(gone_after, self.handle(sink, message)).await {
                        Ok(Err(close)) => return close,
                        handled => handled.is_ok(),
                    }
                }
                _ = pings.tick() => {
                    // Silent through two pings: the peer is gone (no pong, no message).
                    if heard.elapsed() >= gone_after {
                        tracing::debug!("closing a WebSocket whose peer stopped answering");
                        return None;
                    }
                    // The token is looked up again beside the socket's work, not in its way.
                    if token_check.is_none() {
                        let (state, auth) = (self.state.clone(), self.auth.clone());
                        token_check = Some(Box::pin(async move {
                            crate::server::principal_from(&state, auth.as_deref()).await
                        }));
                    }
                    let ping = sink.send(Message::Ping(Default::default()));
                    matches!(tokio::time::timeout(gone_after, ping).await, Ok(Ok(())))
                }
                _ = kas.tick(), if legacy => {
                    let ka = send(sink, &ServerMessage::Ka);
                    matches!(tokio::time::timeout(gone_after, ka).await, Ok(Ok(())))
                }
                checked = async { token_check.as_mut().expect("guarded").await }, if token_check.is_some() => {
                    token_check = None;
                    // Revoked since: closed as `connection_init` would have been refused.
                    // A store that cannot be asked now is no refusal: the socket stays.
                    if let Err(e) = checked
                        && e.code == Code::Unauthenticated
                    {
                        return Some((4403, e.message));
                    }
                    true
                }
                Some(event) = self.events.next(), if !self.events.is_empty() => {
                    let delivered = self.deliver_ready(sink, event);
                    matches!(tokio::time::timeout(gone_after, delivered).await, Ok(Ok(())))
                }
            };
            if !written {
                return None;
            }
        }
    }

    async fn handle(&mut self, sink: &mut Outgoing, message: ClientMessage) -> Result<(), Close> {
        match message {
            ClientMessage::Subscribe { id, payload } => {
                // Past the bound, this operation is refused; the others go on.
                if self.open.len() >= MAX_SUBSCRIPTIONS_PER_SOCKET && !self.open.contains_key(&id) {
                    metrics::counter!("credits_websocket_subscriptions_refused_total").increment(1);
                    let error = [async_graphql::ServerError::from(
                        credits_graphql::ApiError::invalid(format!(
                            "at most {MAX_SUBSCRIPTIONS_PER_SOCKET} subscriptions on one WebSocket: complete one first"
                        )),
                    )];
                    let message = ServerMessage::error(self.protocol, &id, &error);
                    return send(sink, &message).await.map_err(|()| None);
                }
                self.subscribe(id, *payload)
            }
            ClientMessage::Complete { id } => {
                if let Some((_, handle)) = self.open.remove(&id) {
                    handle.abort();
                    // The legacy protocol confirms a `stop`; graphql-transport-ws sends
                    // nothing more about the id, which the client may reuse at once.
                    if self.protocol == Protocol::SubscriptionsTransportWS {
                        send(sink, &ServerMessage::Complete { id: &id })
                            .await
                            .map_err(|()| None)?;
                    }
                }
                Ok(())
            }
            ClientMessage::Ping { .. } => send(sink, &ServerMessage::Pong).await.map_err(|()| None),
            ClientMessage::Pong { .. } => Ok(()),
            ClientMessage::ConnectionTerminate => Err(None),
            ClientMessage::ConnectionInit { .. } => {
                Err(Some((4429, "Too many initialisation requests".to_owned())))
            }
        }
    }

    fn subscribe(&mut self, id: String, request: Request) -> Result<(), Close> {
        if self.open.contains_key(&id) {
            if self.protocol == Protocol::GraphQLWS {
                return Err(Some((4409, format!("Subscriber for {id} already exists"))));
            }
            // The legacy protocol replaces it.
            if let Some((_, handle)) = self.open.remove(&id) {
                handle.abort();
            }
        }
        self.generation += 1;
        let generation = self.generation;
        let (handle, registration) = AbortHandle::new_pair();
        // The first result carries the in-flight guard to the socket; an operation refused
        // because the server is shutting down, or at capacity, is refused UNAVAILABLE.
        let kind = operation_type(&request);
        let slot = if kind == Some(OperationType::Subscription) {
            Ok(None)
        } else {
            metrics::counter!("credits_graphql_requests_total").increment(1);
            self.state.in_flight.clone().try_acquire_owned().map(Some)
        };
        let admitted = match (self.state.draining.clone().try_read_owned(), slot) {
            (Err(_), _) => Err("the server is shutting down"),
            (_, Err(_)) => {
                metrics::counter!("credits_graphql_shed_total").increment(1);
                Err("the server is at capacity; retry later")
            }
            (Ok(guard), Ok(slot)) => Ok((guard, slot)),
        };
        // A query or mutation takes one of the `--max-in-flight` slots HTTP requests take
        // while it runs, so that those sent over sockets are shed as POSTs are; the slot is
        // freed once its result is produced, not when a slow reader has taken it (found by
        // review). A subscription takes none: its first result is a cheap snapshot, and a
        // client opening many at once must not be refused for it.
        // Each operation looks its token up again, as each POST does: one revoked since
        // `connection_init` runs nothing more on this socket (the next ping closes it).
        let (state, auth) = (self.state.clone(), self.auth.clone());
        let (stream, mut in_flight) = match admitted {
            Ok((guard, slot)) => {
                let run = async move {
                    match crate::server::principal_from(&state, auth.as_deref()).await {
                        Ok(principal) => {
                            let request = request.data(principal).data(Listed::new());
                            state.schema.execute_stream(request)
                        }
                        Err(e) => {
                            let refused = Response::from_errors(vec![e.into()]);
                            futures::stream::once(async move { refused }).boxed()
                        }
                    }
                };
                let stream = match slot {
                    // A query or mutation runs on a task of its own, which frees its slot
                    // once its result is produced, whether or not this socket's loop is
                    // free to take it (found by review: behind a client that stopped
                    // reading, the loop waits on its writes, and the operations it had read
                    // held their slots until the socket was closed, 60 s). Once started, it
                    // also runs to its end when the client completes it or leaves.
                    Some(slot) => {
                        let done = tokio::spawn(async move {
                            let result = run.await.next().await;
                            drop(slot);
                            result
                        });
                        // A query the client completes, or whose socket closes, stops (so
                        // the per-socket bound holds what runs, found by review); a
                        // mutation runs to its end.
                        let stop = (kind != Some(OperationType::Mutation))
                            .then(|| AbortOnDrop(done.abort_handle()));
                        futures::stream::once(async move {
                            let _stop = stop;
                            done.await.ok().flatten().unwrap_or_else(|| {
                                let failed = credits_graphql::ApiError::unavailable(
                                    "the operation ended without a result",
                                );
                                Response::from_errors(vec![failed.into()])
                            })
                        })
                        .boxed()
                    }
                    None => futures::stream::once(run).flatten().boxed(),
                };
                (stream, Some(guard))
            }
            Err(why) => {
                let error =
                    async_graphql::ServerError::from(credits_graphql::ApiError::unavailable(why));
                let once = futures::stream::once(async move { Response::from_errors(vec![error]) });
                (once.boxed(), None)
            }
        };
        let tag: Arc<str> = id.as_str().into();
        let end = tag.clone();
        let mut first = true;
        let events = Abortable::new(stream, registration)
            .map(move |r| Tagged {
                id: tag.clone(),
                generation,
                event: Some(r),
                first: std::mem::take(&mut first),
                guard: in_flight.take(),
            })
            .chain(futures::stream::once(async move {
                Tagged {
                    id: end,
                    generation,
                    event: None,
                    first: false,
                    guard: None,
                }
            }));
        self.open.insert(id, (generation, handle));
        self.events.push(events.boxed());
        Ok(())
    }

    /// Queues `first` and every other event already waiting (at most [`SEND_BATCH`]), then
    /// flushes them together: one group commit wakes many subscriptions of a socket at once,
    /// and one write for all of them spares a syscall per event.
    async fn deliver_ready(&mut self, sink: &mut Outgoing, first: Tagged) -> Result<(), ()> {
        // Guards are released once the results are written (shutdown waits for them).
        let mut written: Vec<InFlight> = Vec::new();
        let mut tagged = first;
        for sent in 1.. {
            written.extend(tagged.guard.take());
            self.deliver(sink, tagged).await?;
            if sent == SEND_BATCH {
                break;
            }
            match futures::poll!(self.events.next()) {
                Poll::Ready(Some(t)) => tagged = t,
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        let flushed = sink.flush().await.map_err(|_| ());
        drop(written);
        flushed
    }

    /// Queues one event of a subscription that is still open, or its `complete` when it
    /// ended by itself (not when the client completed it). An operation refused before it
    /// ran (its document invalid, the server draining) gets an `error` message instead,
    /// and nothing after it.
    async fn deliver(&mut self, sink: &mut Outgoing, tagged: Tagged) -> Result<(), ()> {
        let Tagged {
            id,
            generation,
            event,
            first,
            ..
        } = tagged;
        let id = &*id;
        if self.open.get(id).map(|(g, _)| *g) != Some(generation) {
            return Ok(()); // Completed by the client, maybe reopened under the same id.
        }
        match event {
            Some(refused) if first && refused_before_running(&refused) => {
                if let Some((_, handle)) = self.open.remove(id) {
                    handle.abort();
                }
                feed(
                    sink,
                    &ServerMessage::error(self.protocol, id, &refused.errors),
                )
                .await
            }
            Some(payload) => {
                let message = match self.protocol {
                    Protocol::GraphQLWS => ServerMessage::Next {
                        id,
                        payload: &payload,
                    },
                    Protocol::SubscriptionsTransportWS => ServerMessage::Data {
                        id,
                        payload: &payload,
                    },
                };
                feed(sink, &message).await
            }
            None => {
                self.open.remove(id);
                feed(sink, &ServerMessage::Complete { id }).await
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the request's operation is, if its document parses and names one. (One that does
/// not is refused by the schema; it is counted as a query here.) Parsed within the limits'
/// bound on nesting (found by review: a deeply nested list crashed the server here, before
/// the limits ran).
fn operation_type(request: &Request) -> Option<OperationType> {
    use async_graphql::parser::types::DocumentOperations;
    let document = credits_graphql::limits::parse(&request.query).ok()?;
    let operation = match &document.operations {
        DocumentOperations::Single(op) => Some(op),
        DocumentOperations::Multiple(ops) => match &request.operation_name {
            Some(name) => ops.get(name.as_str()),
            None if ops.len() == 1 => ops.values().next(),
            None => None,
        },
    };
    operation.map(|op| op.node.ty)
}

/// A response with no data whose errors belong to no field: the request was refused as a
/// whole (parse, validation, limits, a draining server), not by a resolver.
fn refused_before_running(response: &Response) -> bool {
    response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty())
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn close_reasons_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("short".into(), 123), "short");
        assert_eq!(truncate("é".repeat(100), 123).len(), 122);
        assert_eq!(truncate("x".repeat(200), 123).len(), 123);
    }
}
