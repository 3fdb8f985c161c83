// The dashboard's `graphql-transport-ws` client (dashboard/gql.js) against a scripted
// server: no browser and no creditd, so each protocol turn is exact.

import { describe, it, beforeEach, afterEach, mock } from 'node:test';
import assert from 'node:assert/strict';
import { SubscriptionClient } from '../../dashboard/gql.js';

/** A WebSocket the test plays the server side of: it records what the client sends. */
class ScriptedSocket {
  static OPEN = 1;
  static last = null;

  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.sent = [];
    ScriptedSocket.last = this;
  }

  send(text) {
    this.sent.push(JSON.parse(text));
  }

  close() {
    this.readyState = 3;
  }

  open() {
    this.readyState = ScriptedSocket.OPEN;
    this.onopen?.();
  }

  deliver(message) {
    this.onmessage?.({ data: JSON.stringify(message) });
  }

  /** The client's messages of one type, in order. */
  sentOf(type) {
    return this.sent.filter((m) => m.type === type);
  }
}

const QUERY = 'subscription($walletId: ID!) { balanceChanged(walletId: $walletId) { seq } }';
const failure = (code) => ({ message: code.toLowerCase(), extensions: { code } });
/** Time passes on the client's timers only (mocked): exact, and no real waiting. */
const pass = (ms) => mock.timers.tick(ms);
/** Longer than the first retry's backoff (at most 0.5 s). */
const FIRST_RETRY_MS = 700;
/** Longer than any backoff (at most 30 s): what has not happened by then never will. */
const EVER_MS = 120_000;

describe('SubscriptionClient', () => {
  let socket;
  let client;
  let seen;

  afterEach(() => mock.timers.reset());

  beforeEach(() => {
    mock.timers.enable({ apis: ['setTimeout'] });
    globalThis.WebSocket = ScriptedSocket;
    seen = { next: [], error: [], complete: 0 };
    client = new SubscriptionClient({ url: 'ws://creditd.test/graphql', token: 'tok' });
    client.subscribe(QUERY, { walletId: 'wal_1' }, {
      next: (data) => seen.next.push(data),
      error: (error) => seen.error.push(error.code),
      complete: () => { seen.complete += 1; },
    });
    socket = ScriptedSocket.last;
    socket.open();
    assert.deepEqual(socket.sent[0], { type: 'connection_init', payload: { Authorization: 'Bearer tok' } });
    socket.deliver({ type: 'connection_ack' });
    assert.equal(socket.sentOf('subscribe').length, 1);
  });

  it('subscribes again after the server ends a stream as UNAVAILABLE', async () => {
    const [first] = socket.sentOf('subscribe');
    socket.deliver({ id: first.id, type: 'next', payload: { data: { balanceChanged: { seq: 1 } } } });
    socket.deliver({ id: first.id, type: 'next', payload: { errors: [failure('UNAVAILABLE')] } });
    socket.deliver({ id: first.id, type: 'complete' });
    assert.deepEqual(seen.error, [], 'a retryable end is not shown as a failure');
    assert.equal(seen.complete, 0);
    pass(FIRST_RETRY_MS);
    const again = socket.sentOf('subscribe');
    assert.equal(again.length, 2, 'the same stream is requested again');
    assert.deepEqual(again[1], first);
    socket.deliver({ id: first.id, type: 'next', payload: { data: { balanceChanged: { seq: 1 } } } });
    assert.equal(seen.next.length, 2);

    // An `error` message with the same code is resumed too.
    socket.deliver({ id: first.id, type: 'error', payload: [failure('UNAVAILABLE')] });
    pass(FIRST_RETRY_MS);
    assert.equal(socket.sentOf('subscribe').length, 3);
    client.close();
  });

  it('ends a stream the server refused for good', async () => {
    const [first] = socket.sentOf('subscribe');
    socket.deliver({ id: first.id, type: 'next', payload: { errors: [failure('FORBIDDEN')] } });
    socket.deliver({ id: first.id, type: 'complete' });
    assert.deepEqual(seen.error, ['FORBIDDEN']);
    assert.equal(seen.complete, 1);
    pass(EVER_MS);
    assert.equal(socket.sentOf('subscribe').length, 1, 'not requested again');
    client.close();
  });

  it('replaces a connection that stopped answering its pings', async () => {
    // Found by review: a socket the browser kept "open" after a sleep or a network change
    // showed "Live" for ever, with no event coming.
    const PING_MS = 25_000;
    pass(PING_MS);
    assert.equal(socket.sentOf('ping').length, 1, 'the client pings');
    socket.deliver({ type: 'pong' });
    pass(PING_MS);
    assert.equal(socket.sentOf('ping').length, 2, 'an answered ping keeps the socket');
    assert.equal(ScriptedSocket.last, socket);
    pass(PING_MS); // no answer through a whole period
    assert.equal(socket.readyState, 3, 'the silent socket is closed');
    pass(FIRST_RETRY_MS);
    const next = ScriptedSocket.last;
    assert.notEqual(next, socket, 'a new connection');
    next.open();
    next.deliver({ type: 'connection_ack' });
    assert.equal(next.sentOf('subscribe').length, 1, 'the stream is requested again');
    client.close();
  });

  it('does not subscribe twice when the connection comes back during a retry wait', async () => {
    const [first] = socket.sentOf('subscribe');
    socket.deliver({ id: first.id, type: 'next', payload: { errors: [failure('UNAVAILABLE')] } });
    socket.deliver({ id: first.id, type: 'complete' });
    socket.readyState = 3;
    socket.onclose({ code: 1006, reason: '' });
    pass(FIRST_RETRY_MS);
    const next = ScriptedSocket.last;
    assert.notEqual(next, socket, 'a new connection');
    next.open();
    next.deliver({ type: 'connection_ack' });
    pass(EVER_MS);
    assert.equal(next.sentOf('subscribe').length, 1, 'one subscribe per id (a second is 4409)');
    client.close();
  });
});
