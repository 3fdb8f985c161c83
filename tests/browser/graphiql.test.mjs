// GraphiQL at /graphql in Chromium against a real `creditd`, with no network but the
// server: every request to another host is aborted and recorded, and there must be none.
// GraphiQL must render from the binary's own files, run a query with a token typed into its
// headers editor, and run a subscription over the WebSocket authenticated by those headers.
//
//   cd tests/browser && npm ci && CREDITD_BIN=… CREDITD_PLUGINS=… node --test
//
// Steps run in order and share state; after the first failure the rest are skipped, so the
// first failure is the one to read.

import { describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { eventually, gql, launchChromium, startCreditd, steps } from './helpers.mjs';

/** Loading the page, a query or subscription round trip: generous, nothing is measured. */
const LOAD_MS = 15_000;
const STEP_TIMEOUT_MS = 60_000;

const QUERY_EDITOR = '.graphiql-query-editor .CodeMirror';
/** The open one of the two editors under the query (variables and headers). */
const TOOL_EDITOR = '.graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror';

let server = null;
const admin = (query, variables) => gql(server.base, server.adminToken, query, variables);

/** Replaces an editor's text as a person would: focus, select all, type. */
async function typeInto(page, selector, text) {
  await page.locator(selector).click();
  await page.keyboard.press('Control+A');
  // insertText, not type(): typed brackets would be closed again by the editor.
  await page.keyboard.insertText(text);
}

/**
 * Types a named operation and waits until GraphiQL has taken it in (the tab shows its
 * name), then runs it: GraphiQL reads the operation name a moment after the text changes.
 */
async function run(page, name, operation) {
  await typeInto(page, QUERY_EDITOR, operation);
  await eventually('the tab title', () => page.locator('.graphiql-tab-button').textContent(),
    (title) => title.trim() === name, LOAD_MS, JSON.stringify(name));
  await page.getByRole('button', { name: 'Execute query (Ctrl-Enter)' }).click();
}

/** Waits for the response pane to hold JSON for which `check` holds. */
async function expectResponse(page, what, check) {
  const { value } = await eventually(what,
    () => page.evaluate(() => JSON.parse(document.querySelector('.graphiql-response .CodeMirror').CodeMirror.getValue())),
    check, LOAD_MS, 'a matching response');
  return value;
}

const world = {};
const { step, failed } = steps({
  timeoutMs: STEP_TIMEOUT_MS, page: () => world.page, shotName: 'creditd-graphiql-failure.png',
});

describe('GraphiQL in Chromium against creditd, offline', () => {
  before(async () => {
    server = await startCreditd('graphiql');
    world.browser = await launchChromium();
  });

  after(async () => {
    await world.browser?.close().catch(() => {});
    if (failed()) process.stderr.write(`\n--- creditd output (last lines) ---\n${server?.log()}\n`);
    await server?.stop();
  });

  step('admin makes alice a token and a wallet', async () => {
    const { createApiToken } = await admin('mutation AliceToken { createApiToken(role: USER, ownerId: "alice") { token } }');
    world.aliceToken = createApiToken.token;
    const { createWallet } = await admin(`mutation AliceWallet($input: CreateWalletInput!) {
      createWallet(input: $input) { id balance { total } } }`,
    { input: { ownerId: 'alice', planId: 'pro', timezone: 'UTC' } });
    world.wallet = createWallet;
  });

  step('GraphiQL renders from the server alone, every other host unreachable', async () => {
    const context = await world.browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = world.page = await context.newPage();
    world.offOrigin = [];
    world.pageErrors = [];
    page.on('pageerror', (error) => world.pageErrors.push(error.message));
    await context.route('**/*', (route) => {
      const url = route.request().url();
      if (new URL(url).origin === server.base) return route.continue();
      world.offOrigin.push(url);
      return route.abort('internetdisconnected');
    });
    await page.goto(`${server.base}/graphql`);
    await page.locator('.graphiql-container').waitFor({ state: 'visible', timeout: LOAD_MS });
    await page.locator(QUERY_EDITOR).waitFor({ state: 'visible', timeout: LOAD_MS });
    assert.deepEqual(world.offOrigin, [], 'the page asked for other hosts');
  });

  step('alice runs a query with her token in the headers editor', async () => {
    const { page } = world;
    await page.getByRole('button', { name: 'Headers', exact: true }).click();
    await typeInto(page, TOOL_EDITOR, JSON.stringify({ Authorization: `Bearer ${world.aliceToken}` }));
    await run(page, 'WhoAmI', 'query WhoAmI { viewer { role ownerId wallets { id } } }');
    const response = await expectResponse(page, 'the viewer in the response pane',
      (r) => r.data?.viewer?.ownerId === 'alice');
    assert.deepEqual(response.data.viewer, { role: 'USER', ownerId: 'alice', wallets: [{ id: world.wallet.id }] });

    // The same headers load the schema: the docs list the subscription root.
    await page.getByRole('button', { name: 'Re-fetch GraphQL schema' }).click();
    await page.getByRole('button', { name: 'Show Documentation Explorer' }).click();
    await page.locator('.graphiql-doc-explorer').getByText('Subscription', { exact: true })
      .waitFor({ timeout: LOAD_MS });
  });

  step('a subscription runs over the WebSocket, authenticated by the same headers', async () => {
    const { page } = world;
    await run(page, 'Watch',
      `subscription Watch { balanceChanged(walletId: "${world.wallet.id}") { seq cause balance { total } } }`);
    await expectResponse(page, 'the snapshot', (r) => r.data?.balanceChanged?.cause === 'SNAPSHOT');
    await admin(`mutation Grant($input: GrantInput!) { grantCredits(input: $input) { id } }`,
      { input: { walletId: world.wallet.id, idempotencyKey: 'g-1', amount: '5', kind: 'PROMOTION', reason: 'graphiql test' } });
    const total = String(Number(world.wallet.balance.total) + 5);
    await expectResponse(page, `the grant's event (total ${total})`,
      (r) => r.data?.balanceChanged?.cause === 'GRANT' && r.data.balanceChanged.balance.total === total);
    assert.deepEqual(world.offOrigin, [], 'the page asked for other hosts');
    assert.deepEqual(world.pageErrors, [], 'uncaught errors in the page');
  });
});
