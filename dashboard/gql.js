// GraphQL transport for the dashboard: one HTTP POST helper and a small hand-written
// `graphql-transport-ws` client (SPEC 8, 10). It owns the wire protocol and reconnection;
// it never touches the page.

/** An error from the API or the network, with the GraphQL errors when there are any. */
export class GqlError extends Error {
  constructor(message, { errors = [], code = null } = {}) {
    super(message);
    this.name = 'GqlError';
    this.errors = errors;
    // The first machine-readable code: what the page keys its wording on (SPEC 10).
    this.code = code ?? errors.find((e) => e?.extensions?.code)?.extensions.code ?? null;
  }
}

function errorFromGraphql(errors) {
  const message = errors.map((e) => e?.message || 'Unknown error').join('; ');
  return new GqlError(message, { errors });
}

/** How long an answer may take: one that never comes must not hold what waits for it
 * (found by review: a team card waited for ever behind a request the server never answered). */
export const REQUEST_TIMEOUT_MS = 30_000;

/** POSTs one operation to `/graphql`; resolves to `data`, rejects with a GqlError. */
export async function gqlFetch(token, query, variables = {}) {
  const signal = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
  const timedOut = () => new GqlError(`The server did not answer within ${REQUEST_TIMEOUT_MS / 1000} s`, { code: 'NETWORK' });
  let response;
  try {
    response = await fetch('/graphql', {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json',
        ...(token ? { authorization: `Bearer ${token}` } : {}),
      },
      body: JSON.stringify({ query, variables }),
      signal,
    });
  } catch (cause) {
    if (signal.aborted) throw timedOut();
    throw new GqlError(`Cannot reach the server (${cause.message})`, { code: 'NETWORK' });
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    if (signal.aborted) throw timedOut();
    // Not JSON: a proxy page or a crash; the status says enough.
  }
  if (body && Array.isArray(body.errors) && body.errors.length > 0) throw errorFromGraphql(body.errors);
  if (!response.ok || !body || body.data == null) {
    const code = { 401: 'UNAUTHENTICATED', 403: 'FORBIDDEN', 413: 'INVALID_INPUT', 503: 'UNAVAILABLE' }[response.status] ?? 'HTTP';
    throw new GqlError(`The server answered HTTP ${response.status}`, { code });
  }
  return body.data;
}

/** Reconnect delays: 0.5 s doubling to 30 s, with jitter so many tabs do not stampede. */
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30_000;
/** graphql-transport-ws close codes after which retrying cannot help. */
const FATAL_CLOSE_CODES = new Set([4400, 4401, 4403]);
/**
 * The client pings this often once the connection is acknowledged; a connection that has
 * said nothing (no pong, no event) through one whole period since is taken for dead and
 * replaced (a laptop that slept, a network that changed: the browser may keep such a socket
 * "open" for a long time, with no event ever coming).
 */
const PING_MS = 25_000;
/** A stream ended with this code may be subscribed again: UNAVAILABLE is never a
 * definite refusal (SPEC 10), and the next subscription starts with a fresh SNAPSHOT. */
const RETRYABLE_CODES = new Set(['UNAVAILABLE']);

/** A backoff delay for the `attempt`-th retry (0-based), with jitter. */
function backoff(attempt) {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** attempt);
  return Math.round(base / 2 + Math.random() * (base / 2));
}

/**
 * A `graphql-transport-ws` connection that survives drops: it reconnects with backoff and
 * re-subscribes every live subscription (the server then sends a fresh SNAPSHOT).
 *
 * onStatus(status, detail): status is 'connecting' | 'live' | 'retrying' | 'failed' | 'closed'.
 */
export class SubscriptionClient {
  constructor({ url, token, onStatus = () => {} }) {
    this.url = url;
    this.token = token;
    this.onStatus = onStatus;
    this.subs = new Map(); // id -> { payload, sink }
    this.nextId = 1;
    this.socket = null;
    this.acked = false;
    this.attempt = 0;
    this.timer = null;
    this.closed = false;
    this.watch = null;
  }

  /** Starts a subscription; returns a function that ends it. sink: { next(data), error(err) }. */
  subscribe(query, variables, sink) {
    const id = String(this.nextId++);
    this.subs.set(id, { payload: { query, variables }, sink });
    if (this.acked) this.send({ id, type: 'subscribe', payload: { query, variables } });
    else this.ensureSocket();
    return () => {
      const sub = this.subs.get(id);
      if (!sub) return;
      this.subs.delete(id);
      clearTimeout(sub.timer);
      if (this.acked && !sub.timer) this.send({ id, type: 'complete' });
    };
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.watch);
    for (const sub of this.subs.values()) clearTimeout(sub.timer);
    this.subs.clear();
    if (this.socket) this.socket.close(1000, 'signed out');
    this.socket = null;
    this.onStatus('closed');
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  ensureSocket() {
    if (this.closed || this.socket || this.timer) return;
    this.onStatus(this.attempt === 0 ? 'connecting' : 'retrying');
    let socket;
    try {
      socket = new WebSocket(this.url, 'graphql-transport-ws');
    } catch (cause) {
      this.scheduleReconnect(cause.message);
      return;
    }
    this.socket = socket;
    this.acked = false;
    socket.onopen = () => {
      socket.send(JSON.stringify({ type: 'connection_init', payload: { Authorization: `Bearer ${this.token}` } }));
    };
    socket.onmessage = (event) => this.onMessage(socket, event);
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      clearTimeout(this.watch);
      this.socket = null;
      this.acked = false;
      if (this.closed) return;
      if (FATAL_CLOSE_CODES.has(event.code)) {
        this.onStatus('failed', event.reason || `closed with code ${event.code}`);
        for (const { sink } of this.subs.values()) {
          sink.error?.(new GqlError(event.reason || 'The server refused the live connection', {
            // creditd closes with 4403 only for a token it refuses: unknown, or revoked
            // while the socket was open.
            code: event.code === 4401 || event.code === 4403 ? 'UNAUTHENTICATED' : 'INVALID_INPUT',
          }));
        }
        return;
      }
      this.scheduleReconnect(event.reason || `connection closed (${event.code})`);
    };
  }

  /** Pings every PING_MS; a socket silent through a whole period after a ping is dropped. */
  watchSocket(socket) {
    clearTimeout(this.watch);
    let pinged = false;
    const tick = () => {
      if (this.socket !== socket || this.closed) return;
      if (pinged && !this.heard) {
        this.drop(socket, 'the server stopped answering');
        return;
      }
      this.heard = false;
      pinged = true;
      this.send({ type: 'ping' });
      this.watch = setTimeout(tick, PING_MS);
    };
    this.watch = setTimeout(tick, PING_MS);
  }

  /** Gives up on a socket that may never report its own end, and connects again. */
  drop(socket, reason) {
    socket.onclose = null;
    socket.onmessage = null;
    try {
      socket.close(4499, 'Terminated');
    } catch {
      // Already closed.
    }
    if (this.socket !== socket) return;
    this.socket = null;
    this.acked = false;
    this.scheduleReconnect(reason);
  }

  scheduleReconnect(reason) {
    if (this.closed) return;
    const delay = backoff(this.attempt);
    this.attempt += 1;
    this.onStatus('retrying', `${reason}; retrying in ${Math.ceil(delay / 1000)} s`);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.subs.size > 0) this.ensureSocket();
    }, delay);
  }

  onMessage(socket, event) {
    if (this.socket === socket) this.heard = true;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    switch (message.type) {
      case 'connection_ack':
        this.acked = true;
        this.attempt = 0;
        this.onStatus('live');
        this.watchSocket(socket);
        for (const [id, sub] of this.subs) {
          clearTimeout(sub.timer);
          sub.timer = null;
          sub.retry = null;
          this.send({ id, type: 'subscribe', payload: sub.payload });
        }
        break;
      case 'ping':
        socket.send(JSON.stringify({ type: 'pong' }));
        break;
      case 'next': {
        const sub = this.subs.get(message.id);
        if (!sub) break;
        const { data, errors } = message.payload ?? {};
        if (errors?.length) {
          const error = errorFromGraphql(errors);
          // The server ends the stream next ('complete'); a retryable one is then resumed.
          if (RETRYABLE_CODES.has(error.code)) sub.retry = error;
          else sub.sink.error?.(error);
        } else if (data) {
          sub.attempt = 0;
          sub.sink.next(data);
        }
        break;
      }
      case 'error': {
        const sub = this.subs.get(message.id);
        if (!sub) break;
        const error = errorFromGraphql(Array.isArray(message.payload) ? message.payload : [message.payload]);
        if (RETRYABLE_CODES.has(error.code)) {
          this.resubscribe(message.id, sub);
        } else {
          this.subs.delete(message.id);
          sub.sink.error?.(error);
        }
        break;
      }
      case 'complete': {
        const sub = this.subs.get(message.id);
        if (!sub) break;
        if (sub.retry) {
          this.resubscribe(message.id, sub);
        } else {
          this.subs.delete(message.id);
          sub.sink.complete?.();
        }
        break;
      }
      default:
        break;
    }
  }

  /** Subscribes again, after a backoff, to a stream the server ended as unavailable. */
  resubscribe(id, sub) {
    sub.retry = null;
    const delay = backoff(sub.attempt ?? 0);
    sub.attempt = (sub.attempt ?? 0) + 1;
    sub.timer = setTimeout(() => {
      sub.timer = null;
      if (this.subs.get(id) === sub && this.acked) this.send({ id, type: 'subscribe', payload: sub.payload });
    }, delay);
  }
}

/** ws(s)://<host>/graphql for the page's own origin. */
export function websocketUrl(location = window.location) {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/graphql`;
}
