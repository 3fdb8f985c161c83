// What the browser tests share: a real `creditd` on a free loopback port with a fresh SQLite
// file, GraphQL calls to it, Debian's Chromium, polling, and steps that stop at the first
// failure.

import { it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const SERVER_START_MS = 60_000;

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];

/** Debian's Chromium (never a downloaded browser), or the one named by CHROMIUM. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: CHROMIUM_ARGS,
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `probe` until `check(value)` holds or `timeoutMs` passes; then fails with `what`,
 * the expectation and the last value seen.
 */
export async function eventually(what, probe, check, timeoutMs, expectation) {
  const start = Date.now();
  let last;
  let lastError;
  for (;;) {
    try {
      last = await probe();
      lastError = undefined;
      if (check(last)) return { value: last, elapsedMs: Date.now() - start };
    } catch (error) {
      lastError = error;
    }
    if (Date.now() - start > timeoutMs) {
      const seen = lastError ? `error ${lastError.message}` : JSON.stringify(last);
      assert.fail(`${what}: expected ${expectation} within ${timeoutMs} ms, last saw ${seen}`);
    }
    await sleep(50);
  }
}

/**
 * Starts the binary named by CREDITD_BIN on a free loopback port with a fresh SQLite file
 * (in a temporary directory named after `name`), a random admin token and, if given, a
 * manual clock; resolves once `/readyz` answers. Returns `{ base, adminToken, log(), stop() }`.
 */
export async function startCreditd(name, { manualClock, wsKeepalive } = {}) {
  const bin = process.env.CREDITD_BIN;
  if (!bin) {
    throw new Error('CREDITD_BIN is not set: point it at the built creditd binary, e.g. '
      + 'CREDITD_BIN=$PWD/../../target/debug/creditd (see docs/DASHBOARD.md)');
  }
  await fs.access(bin).catch(() => { throw new Error(`CREDITD_BIN=${bin} does not exist`); });
  // Where the pricing plugins are; creditd's own default is the binary's directory.
  const plugins = process.env.CREDITD_PLUGINS || path.dirname(path.resolve(bin));
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), `creditd-${name}-`));
  const adminToken = crypto.randomBytes(24).toString('hex');
  // Port 0: creditd binds a free port itself and names it in its first stdout line
  // (picking one here and handing it over could lose it to another process meanwhile).
  const args = [
    'serve',
    '--listen', '127.0.0.1:0',
    '--database', `sqlite://${tmp}/t.db?mode=rwc`,
    '--plugins', plugins,
  ];
  if (manualClock) args.push('--manual-clock', manualClock);
  if (wsKeepalive) args.push('--ws-keepalive', String(wsKeepalive));
  const env = { ...process.env, CREDITD_ADMIN_TOKEN: adminToken };
  for (const variable of ['CREDITD_LISTEN', 'CREDITD_DATABASE_URL']) delete env[variable];
  const child = spawn(bin, args, { cwd: tmp, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const lines = [];
  const keep = (chunk) => {
    lines.push(chunk.toString());
    if (lines.length > 200) lines.shift();
  };
  let base = null;
  child.stdout.on('data', (chunk) => {
    keep(chunk);
    const bound = /listening on (\S+)/.exec(lines.join(''));
    if (bound && !base) base = `http://${bound[1]}`;
  });
  child.stderr.on('data', keep);
  let exited = null;
  child.on('exit', (code, signal) => { exited = { code, signal }; });
  const log = () => lines.join('').split('\n').slice(-40).join('\n');

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await gone;
      clearTimeout(timer);
    }
    await fs.rm(tmp, { recursive: true, force: true });
  };

  const start = Date.now();
  for (;;) {
    if (exited) {
      await stop();
      throw new Error(`creditd exited (${JSON.stringify(exited)}) before /readyz answered; `
        + `command: ${bin} ${args.join(' ')}\n--- its output ---\n${log()}`);
    }
    try {
      const res = base && await fetch(`${base}/readyz`);
      if (res?.ok) return { base, adminToken, log, stop };
    } catch {
      // not listening yet
    }
    if (Date.now() - start > SERVER_START_MS) {
      await stop();
      throw new Error(`creditd did not answer /readyz within ${SERVER_START_MS} ms\n--- its output ---\n${log()}`);
    }
    await sleep(100);
  }
}

/** One GraphQL call over HTTP; fails with the operation and the errors' codes. */
export async function gql(base, token, query, variables = {}) {
  const res = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ query, variables }),
  });
  const text = await res.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    assert.fail(`GraphQL answered HTTP ${res.status} with non-JSON: ${text.slice(0, 300)}`);
  }
  const name = /(query|mutation)\s+(\w+)/.exec(query)?.[2] ?? query.trim().slice(0, 40);
  if (body.errors?.length) {
    assert.fail(`GraphQL ${name} failed: ${body.errors.map((e) => `${e.message} [${e.extensions?.code}]`).join('; ')}`);
  }
  return body.data;
}

/**
 * Steps that run in order and share state: after the first failure the rest are skipped,
 * so the first failure is the one to read; `page()` (if any) is screenshotted to
 * `<tmp>/<shotName>` when a step fails. Returns `{ step, failed() }`.
 */
export function steps({ timeoutMs, page, shotName }) {
  let failed = null;
  const step = (name, fn) => it(name, { timeout: timeoutMs }, async (t) => {
    if (failed) {
      t.skip(`skipped: the step "${failed}" failed`);
      return;
    }
    try {
      await fn(t);
    } catch (error) {
      failed = name;
      const current = page();
      if (current) {
        const shot = path.join(os.tmpdir(), shotName);
        await current.screenshot({ path: shot, fullPage: true })
          .then(() => t.diagnostic(`the page at the failure: ${shot}`))
          .catch(() => {});
      }
      throw error;
    }
  });
  return { step, failed: () => failed };
}
