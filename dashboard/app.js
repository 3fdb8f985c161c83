// The account dashboard (issue 9): signs in with an API token, shows the viewer's wallets
// and team pools live, their usage, plan, reviews and member limits. It talks only to the
// public GraphQL API (ops.js) and never does arithmetic on credit amounts with floats.

import { gqlFetch, GqlError, SubscriptionClient, websocketUrl } from './gql.js';
import * as ops from './ops.js';
import { display, compare, ratio, sub, isCredits } from './credits.js';
import {
  serverClock, formatDateTime, formatDate, formatShort, secondsUntil, formatCountdown,
  localDate, addDays, startOfLocalDate,
} from './time.js';
import { stackedDailyChart } from './chart.js';

const TOKEN_KEY = 'creditd.token';
const WALLET_KEY = 'creditd.wallet';
const USAGE_PAGE_SIZE = 20;
const CHART_DAYS = 30;
/** Live usage refreshes are coalesced: a burst of events costs one query. */
const REFRESH_DEBOUNCE_MS = 200;
/** Open reviews followed live, newest first; the server allows 256 subscriptions a socket,
 * and the balance streams need theirs (found by review: a pool with hundreds of open
 * reviews filled the socket). The others show their status as the list was loaded. */
const MAX_FOLLOWED_REVIEWS = 50;

const $ = (selector, root = document) => root.querySelector(selector);

/** Builds an element; strings become text nodes (never HTML), `on*` attributes listeners. */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'class') node.className = value;
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) if (child != null && child !== false) node.append(child);
  return node;
}

/** An amount as the page shows it; `data-value` keeps the canonical string for tests. */
function setAmount(node, credits) {
  node.textContent = display(credits);
  node.dataset.value = credits;
}
const amount = (credits, testid) => {
  const node = h('span', { class: 'amount', 'data-testid': testid });
  setAmount(node, credits);
  return node;
};

// ---------------------------------------------------------------- errors in words

const CODE_WORDS = {
  UNAUTHENTICATED: 'The token was not accepted.',
  FORBIDDEN: 'This token is not allowed to do that.',
  NOT_FOUND: 'Not found.',
  INVALID_INPUT: 'Some of the input is not valid.',
  INSUFFICIENT_CREDITS: 'There are not enough credits.',
  MODEL_NOT_ALLOWED: 'The plan does not include this model.',
  UNKNOWN_MODEL: 'No pricing tier knows this model.',
  MEMBER_LIMIT_EXCEEDED: 'A member limit would be exceeded.',
  IDEMPOTENCY_CONFLICT: 'This conflicts with an earlier request.',
  RESERVATION_NOT_ACTIVE: 'The reservation is no longer active.',
  PRICING_FAILED: 'Pricing this model failed.',
  UNAVAILABLE: 'The service is busy or could not confirm the change; try again.',
  NETWORK: 'The server cannot be reached.',
  HTTP: 'The server answered with an error.',
};

function describeError(error) {
  if (!(error instanceof GqlError)) return `Something went wrong in the page: ${error?.message ?? error}`;
  const words = CODE_WORDS[error.code] ?? 'The request failed.';
  return `${words} ${error.message}${error.code ? ` (${error.code})` : ''}`;
}

/** Shows an error in the element next to what caused it; null hides it. */
function showError(node, error) {
  if (!node) return;
  delete node.dataset.source;
  node.hidden = !error;
  node.textContent = error ? describeError(error) : '';
  if (error) node.dataset.code = error.code ?? '';
  else delete node.dataset.code;
}

// ---------------------------------------------------------------- state

const state = {
  token: null,
  viewer: null,
  client: null,
  catalogue: { plans: [], models: [] },
  /** walletId -> { wallet?, balance, lastSeq, applied, unsubscribe, teamId? } for every live wallet. */
  live: new Map(),
  selectedId: null,
  usage: { filter: {}, cursors: [null], timer: null },
  /** The per-day chart's data and the width it was drawn at. */
  chart: null,
  chartWidth: 0,
  /** teamId -> { team, isAdmin, rows: Map<userId, rowRefs> } */
  teams: new Map(),
  /** teamId -> { busy, again, dropped }: one team request on its way at a time */
  teamLoads: new Map(),
  /** reviewId -> { review, unsubscribe } for the selected wallet */
  reviews: new Map(),
};

async function api(query, variables) {
  // An answer to a request sent before a sign-out (or another sign-in) never reaches the
  // page: it belongs to the last user (found by review: one arriving after the next
  // user's sign-in passed the newest-answer checks, whose counters had started again,
  // and showed the pool's whole usage, or the last user's reviews, to a plain member).
  const session = state.signIns;
  const stale = () => state.signIns !== session;
  try {
    const answer = await gqlFetch(state.token, query, variables);
    if (stale()) return new Promise(() => {});
    return answer;
  } catch (error) {
    if (stale()) return new Promise(() => {});
    if (error.code === 'UNAUTHENTICATED' && state.token) signOut(error);
    throw error;
  }
}

// ---------------------------------------------------------------- sign in / out

function showSignIn(error) {
  $('#sign-in').hidden = false;
  $('#app').hidden = true;
  $('#who').hidden = true;
  showError($('[data-testid="sign-in-error"]'), error);
  $('#token').focus();
}

async function signIn(token) {
  // Only the newest attempt signs in (found by review: a double submit opened two live
  // connections, and signing out closed only one of them).
  const attempt = (state.signIns = (state.signIns ?? 0) + 1);
  state.token = token;
  let data;
  try {
    data = await gqlFetch(token, ops.VIEWER);
    if (state.signIns !== attempt) return;
  } catch (error) {
    if (state.signIns !== attempt) return;
    state.token = null;
    // Only a refused token is forgotten: a restart or a busy server (a network error,
    // UNAVAILABLE) leaves it for the next try.
    if (error.code === 'UNAUTHENTICATED') sessionStorage.removeItem(TOKEN_KEY);
    showSignIn(error);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  state.viewer = data.viewer;
  $('#sign-in').hidden = true;
  $('#app').hidden = false;
  $('#who').hidden = false;
  $('[data-testid="viewer-owner"]').textContent = data.viewer.ownerId ?? '(no owner)';
  $('[data-testid="viewer-role"]').textContent = data.viewer.role;
  serverClock.reset();
  state.client?.close();
  state.client = new SubscriptionClient({ url: websocketUrl(), token, onStatus: renderLiveStatus });

  loadCatalogue(attempt);

  renderAccounts();
  for (const wallet of data.viewer.wallets) watchWallet(wallet.id);
  for (const team of data.viewer.teams) watchWallet(team.wallet.id, team.id);
  renderTeams();

  const remembered = sessionStorage.getItem(WALLET_KEY);
  const candidates = [...data.viewer.wallets.map((w) => w.id), ...data.viewer.teams.map((t) => t.wallet.id)];
  const first = candidates.includes(remembered) ? remembered : candidates[0];
  $('#open-wallet-form').hidden = data.viewer.role === 'USER';
  if (first) selectWallet(first);
}

/** Plans and models, for this sign-in; one that met a passing error is asked for again
 * (found by review: the plan section stayed without the catalogue for the session). */
function loadCatalogue(attempt, wait = 0) {
  if (state.signIns !== attempt) return;
  const slot = $('#wallet-error');
  api(ops.CATALOGUE).then((catalogue) => {
    if (state.signIns !== attempt) return;
    state.catalogue = catalogue;
    $('#model-list').replaceChildren(...catalogue.models.map((m) => h('option', { value: m.id }, `${m.tier}`)));
    const selected = state.live.get(state.selectedId)?.wallet;
    if (selected) renderPlan(selected);
    if (slot.dataset.source === 'catalogue') showError(slot, null);
  }).catch((error) => {
    if (state.signIns !== attempt) return;
    showError(slot, error);
    slot.dataset.source = 'catalogue';
    if (passing(error)) {
      const next = backoff(wait);
      state.catalogueTimer = setTimeout(() => loadCatalogue(attempt, next), next);
    }
  });
}

/** Errors that may pass: asked for again, each time waiting twice as long, up to 30 s. */
function passing(error) {
  return ['UNAVAILABLE', 'NETWORK', 'HTTP'].includes(error.code);
}

function backoff(wait) {
  return Math.min(wait ? wait * 2 : WALLET_RETRY_MS, 30_000);
}

function signOut(error) {
  state.signIns = (state.signIns ?? 0) + 1; // an attempt still waiting signs no one in
  state.client?.close();
  for (const entry of state.live.values()) clearTimeout(entry.refetchTimer);
  clearTimeout(state.catalogueTimer);
  for (const { unsubscribe } of state.reviews.values()) unsubscribe?.();
  clearTimeout(state.usage.timer);
  Object.assign(state, {
    token: null, viewer: null, client: null, selectedId: null,
    live: new Map(), teams: new Map(), teamLoads: new Map(), reviews: new Map(),
    usage: { filter: {}, cursors: [null], timer: null }, chart: null,
  });
  serverClock.reset();
  resetPager();
  // A report on its way when the session ended never answers (its promise never settles).
  $('#report-submit').disabled = false;
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(WALLET_KEY);
  $('#wallet-view').hidden = true;
  $('#teams').hidden = true;
  // What the last user saw leaves the page too, not only the view (a shared computer).
  for (const list of ['#accounts', '#team-list', ...WALLET_CONTENT]) $(list).replaceChildren();
  for (const text of ['[data-testid="viewer-owner"]', '[data-testid="viewer-role"]']) $(text).textContent = '';
  // The balance cards' figures and dates, and the wallet's title (found by review: they
  // stayed, hidden, and the countdown kept ticking on the last user's reset).
  clearWalletFigures();
  $('#model-list').replaceChildren();
  $('#open-wallet-id').value = '';
  $('#token').value = '';
  $('#usage-filter').reset();
  // A report being written goes too (found by review: a forced sign-out left the dialog,
  // with the last user's thread and words, on top of the sign-in form).
  $('#report-form').reset();
  if ($('#report-dialog').open) $('#report-dialog').close();
  showSignIn(error);
}

function renderLiveStatus(status, detail) {
  const node = $('#live');
  const words = {
    connecting: 'Connecting…', live: 'Live', retrying: 'Reconnecting…', failed: 'Live updates off', closed: '',
  }[status];
  node.textContent = words;
  node.dataset.status = status;
  node.title = detail ?? '';
}

// ---------------------------------------------------------------- wallets and live balance

function renderAccounts() {
  const { viewer } = state;
  const button = (walletId, label, sublabel) => h('button', {
    type: 'button', class: 'account', 'data-wallet': walletId,
    'aria-pressed': String(walletId === state.selectedId), onclick: () => selectWallet(walletId),
  }, h('span', {}, label), h('small', {}, sublabel));
  const nav = $('#accounts');
  nav.replaceChildren();
  if (viewer.wallets.length) {
    nav.append(h('h2', { class: 'nav-title' }, 'Your wallets'),
      h('div', { class: 'account-list' }, viewer.wallets.map((w) => button(w.id, w.plan.name, `${w.id} · ${w.timezone}`))));
  }
  if (viewer.teams.length) {
    nav.append(h('h2', { class: 'nav-title' }, 'Team pools'),
      h('div', { class: 'account-list' }, viewer.teams.map((t) => button(t.wallet.id, t.name, `pool ${t.wallet.id}`))));
  }
  if (!viewer.wallets.length && !viewer.teams.length) {
    nav.append(h('p', { class: 'muted', 'data-testid': 'no-wallets' },
      viewer.role === 'USER'
        ? 'This account has no wallet and belongs to no team yet.'
        : `${viewer.role === 'ADMIN' ? 'An' : 'A'} ${viewer.role} token owns no wallets; open one by id below.`));
  }
}

/** A personal wallet's entry in the account list, after its plan or zone changed. */
function renderAccount(wallet) {
  const known = state.viewer?.wallets.find((w) => w.id === wallet.id);
  const button = document.querySelector(`#accounts [data-wallet="${CSS.escape(wallet.id)}"]`);
  if (!known || !button) return;
  Object.assign(known, { plan: wallet.plan, timezone: wallet.timezone });
  button.querySelector('span').textContent = wallet.plan.name;
  button.querySelector('small').textContent = `${wallet.id} · ${wallet.timezone}`;
}

/** Subscribes to a wallet's balance stream (personal wallet or team pool). */
function watchWallet(walletId, teamId = null) {
  const known = state.live.get(walletId);
  // A stream the server ended (FORBIDDEN, say) is asked for again when the wallet is
  // opened again (found by review: it never was, and its figures stayed as they were).
  if (known && !known.failed) return;
  if (known) clearTimeout(known.refetchTimer);
  const entry = {
    walletId, teamId: teamId ?? known?.teamId ?? null, wallet: null, balance: null, lastSeq: null, applied: 0,
    refetchTimer: null, failed: null,
  };
  state.live.set(walletId, entry);
  entry.unsubscribe = state.client.subscribe(ops.BALANCE_CHANGED, { walletId }, {
    next: (data) => onBalanceEvent(entry, data.balanceChanged),
    error: (error) => {
      // A token revoked while the page is open: the server closes the live connection.
      if (error.code === 'UNAUTHENTICATED' && state.token) {
        signOut(error);
        return;
      }
      entry.failed = error;
      if (walletId === state.selectedId) showError($('#wallet-error'), error);
      // A team's card says why its pool stopped (a member removed, say).
      if (entry.teamId) refreshTeam(entry.teamId);
    },
  });
}

function onBalanceEvent(entry, event) {
  const snapshot = event.cause === 'SNAPSHOT';
  serverClock.observe(event.at, snapshot);
  // A SNAPSHOT (after a reconnect, or a resync when this subscriber fell behind) that
  // moved past the last seq seen also skipped events.
  const gap = entry.lastSeq != null && event.seq !== entry.lastSeq + (snapshot ? 0 : 1);
  entry.lastSeq = event.seq;
  if (gap) {
    // Missed events: the stream's balance is still the newest, but the plan or zone may
    // have changed in between; reload the wallet to be sure (issue 9, item 3).
    refetchWallet(entry.walletId);
  }
  entry.balance = event.balance;
  entry.applied += 1;
  if (entry.wallet) entry.wallet.balance = event.balance;

  if (entry.walletId === state.selectedId && entry.wallet) renderBalance(entry.wallet);
  if (entry.teamId) renderPoolBalance(entry.teamId, event.balance);

  // What else an event can change besides the balance.
  const selected = entry.walletId === state.selectedId;
  if (['PLAN_CHANGE', 'RENEWAL', 'TIMEZONE_CHANGE'].includes(event.cause)) refetchWallet(entry.walletId);
  // New usage, or a new day for the chart; a SNAPSHOT (also after a reconnect) may follow
  // missed events, and is the first moment the server's clock is known.
  if (selected && (['USAGE', 'SETTLEMENT', 'SNAPSHOT', 'DAILY_RESET'].includes(event.cause) || gap)) {
    scheduleUsageRefresh();
  }
  // Member spend moves with usage and restarts with the pool's day and period.
  if (entry.teamId && (!snapshot || gap) && event.cause !== 'GRANT') refreshTeam(entry.teamId);
  if (selected && (event.cause === 'GRANT' || gap)) loadReviews(entry.walletId);
}

async function refetchWallet(walletId) {
  const entry = state.live.get(walletId);
  const appliedBefore = entry?.applied;
  // Only the newest request's answer is used (found by review: two quick plan or zone
  // changes answered in reverse order left the superseded plan or zone shown).
  const request = entry ? (entry.requests = (entry.requests ?? 0) + 1) : 0;
  try {
    const { wallet } = await api(ops.WALLET, { id: walletId });
    if (!wallet) throw new GqlError(`No wallet ${walletId}.`, { code: 'NOT_FOUND' });
    if (!entry || state.live.get(walletId) !== entry || entry.requests !== request) return;
    clearTimeout(entry.refetchTimer);
    entry.retryWait = 0;
    // An event applied while we fetched carries a newer balance than this answer may.
    if (entry.applied !== appliedBefore && entry.balance) wallet.balance = entry.balance;
    const zoneChanged = entry.wallet && entry.wallet.timezone !== wallet.timezone;
    entry.wallet = wallet;
    renderAccount(wallet);
    if (walletId === state.selectedId) {
      showError($('#wallet-error'), null);
      renderWallet(wallet);
      if (zoneChanged) scheduleUsageRefresh(); // DAY keys are local dates of the new zone
    }
  } catch (error) {
    if (!entry || state.live.get(walletId) !== entry || entry.requests !== request) return;
    if (walletId === state.selectedId) showError($('#wallet-error'), error);
    // A first load that met a passing error is tried again: without the wallet the view
    // shows nothing, and events alone never bring it (found by review).
    if (!entry.wallet && passing(error)) {
      clearTimeout(entry.refetchTimer);
      entry.retryWait = backoff(entry.retryWait);
      entry.refetchTimer = setTimeout(async () => {
        await refetchWallet(walletId);
        // What `selectWallet` loads once the wallet is in.
        if (state.selectedId === walletId && entry.wallet) {
          loadUsage();
          loadReviews(walletId);
        }
      }, entry.retryWait);
    }
  }
}

/** How long a first load that failed waits before it is asked for again, at first. */
const WALLET_RETRY_MS = 2000;

/** What the wallet view lists of the selected wallet. */
const WALLET_CONTENT = ['#grants', '#plan-current', '#plan-catalogue', '#usage-rows', '#summary-thread',
  '#summary-model', '#usage-chart', '#review-list'];

/** Empties the balance cards and the wallet's title, as before any wallet was shown. */
function clearWalletFigures() {
  const view = $('#wallet-view');
  for (const node of view.querySelectorAll('[data-value], [data-countdown-to]')) {
    node.textContent = '';
    node.dataset.value = '';
    delete node.dataset.countdownTo;
    delete node.dataset.seconds;
  }
  for (const meter of ['#daily-meter', '#subscription-meter']) $(meter).style.width = '0%';
  $('#wallet-title').textContent = 'Wallet';
  $('#wallet-meta').textContent = '';
  delete view.dataset.walletId;
}

/** Whether the viewer's list shows this wallet (their own, or a team pool). */
function listed(walletId) {
  const { viewer } = state;
  return Boolean(viewer?.wallets.some((w) => w.id === walletId) || viewer?.teams.some((t) => t.wallet.id === walletId));
}

async function selectWallet(walletId) {
  // A wallet opened by id (ADMIN, SERVICE) stops streaming once another is opened (found
  // by review: each kept one of the connection's 256 subscriptions, until none was left).
  const previous = state.selectedId;
  const entry = state.live.get(previous);
  if (previous !== walletId && entry && !listed(previous)) {
    clearTimeout(entry.refetchTimer);
    entry.unsubscribe?.();
    state.live.delete(previous);
  }
  state.selectedId = walletId;
  sessionStorage.setItem(WALLET_KEY, walletId);
  for (const b of document.querySelectorAll('#accounts [data-wallet]')) {
    b.setAttribute('aria-pressed', String(b.dataset.wallet === walletId));
  }
  for (const { unsubscribe } of state.reviews.values()) unsubscribe?.();
  state.reviews = new Map();
  state.usage.cursors = [null];
  state.usage.asked = null;
  state.chart = null;
  resetPager();
  for (const slot of ['#wallet-error', '#usage-error', '#reviews-error']) showError($(slot), null);
  // Until this wallet has loaded, show none of the previous one's figures, and none of
  // its usage or reviews once it has (they load after it).
  for (const list of WALLET_CONTENT) $(list).replaceChildren();
  const view = $('#wallet-view');
  view.hidden = false;
  view.classList.add('loading');
  $('#wallet-title').textContent = 'Wallet';
  $('#wallet-meta').textContent = `${walletId} · loading…`;
  watchWallet(walletId);
  await refetchWallet(walletId);
  if (state.selectedId !== walletId) return;
  loadUsage();
  loadReviews(walletId);
}

/** The usage pager as for a wallet not loaded yet (found by review: the last wallet's Next
 * and its cursor stayed clickable, and paged the next wallet from the old one's place). */
function resetPager() {
  $('#usage-prev').disabled = true;
  $('#usage-next').disabled = true;
  $('#usage-next').dataset.cursor = '';
  $('#usage-page').textContent = '';
}

function renderWallet(wallet) {
  const team = state.viewer?.teams.find((t) => t.wallet.id === wallet.id);
  $('#wallet-title').textContent = team ? `${team.name} (team pool)` : `Wallet of ${wallet.ownerId}`;
  $('#wallet-meta').textContent = `${wallet.id} · plan ${wallet.plan.name} · time zone ${wallet.timezone}`;
  $('#wallet-view').dataset.walletId = wallet.id;
  $('#wallet-view').classList.remove('loading');
  renderBalance(wallet);
  renderPlan(wallet);
}

function renderBalance(wallet) {
  const { balance, timezone } = wallet;
  const view = $('#wallet-view');
  const testid = (id) => view.querySelector(`[data-testid="${id}"]`);
  setAmount(testid('total'), balance.total);
  setAmount(testid('reserved'), balance.reserved);
  setAmount(testid('daily-remaining'), balance.daily.remaining);
  setAmount(testid('daily-allowance'), balance.daily.allowance);
  $('#daily-meter').style.width = `${ratio(balance.daily.remaining, balance.daily.allowance) * 100}%`;
  const countdown = testid('daily-countdown');
  countdown.dataset.countdownTo = balance.daily.nextResetAt;
  testid('daily-reset-at').textContent = `${formatDateTime(balance.daily.nextResetAt, timezone)} (${timezone})`;
  testid('daily-reset-at').dataset.value = balance.daily.nextResetAt;
  setAmount(testid('subscription-remaining'), balance.subscription.remaining);
  setAmount(testid('subscription-allowance'), balance.subscription.allowance);
  $('#subscription-meter').style.width = `${ratio(balance.subscription.remaining, balance.subscription.allowance) * 100}%`;
  testid('subscription-period-end').textContent = formatDateTime(balance.subscription.periodEnd, timezone);
  testid('subscription-period-end').dataset.value = balance.subscription.periodEnd;
  setAmount(testid('bonus-remaining'), balance.bonus.remaining);
  $('#grants').replaceChildren(renderGrants(balance.bonus.grants, timezone));
  tickCountdowns();
}

function renderGrants(grants, timezone) {
  if (!grants.length) return h('p', { class: 'muted' }, 'No bonus grants.');
  return h('ul', { class: 'grants', 'aria-label': 'Bonus grants, in the order they are spent' },
    grants.map((g) => h('li', { 'data-testid': 'grant-row', 'data-grant-id': g.id, 'data-kind': g.kind },
      h('span', { class: `badge kind-${g.kind.toLowerCase()}` }, g.kind),
      h('span', { class: 'grant-left' }, amount(g.remaining, 'grant-remaining'),
        h('small', { class: 'muted' }, ` of ${display(g.amount)} left`)),
      h('span', { class: 'grant-meta' },
        // The instant, not only the day: a lot stops being spendable at it.
        g.expiresAt ? `expires ${formatDateTime(g.expiresAt, timezone)}` : 'never expires',
        g.reason ? ` · ${g.reason}` : ''))));
}

/** Every countdown on the page, once a second, against the server's clock. */
function tickCountdowns() {
  for (const node of document.querySelectorAll('[data-countdown-to]')) {
    if (!serverClock.ready()) {
      node.textContent = '…';
      delete node.dataset.seconds;
      continue;
    }
    const seconds = secondsUntil(node.dataset.countdownTo);
    node.textContent = formatCountdown(seconds);
    node.dataset.seconds = String(seconds);
  }
}
setInterval(tickCountdowns, 1000);

// ---------------------------------------------------------------- plan

function planFacts(plan) {
  return h('dl', { class: 'facts' },
    h('dt', {}, 'Daily'), h('dd', {}, `${display(plan.dailyCredits)} credits`),
    h('dt', {}, 'Subscription'), h('dd', {}, `${display(plan.subscriptionCredits)} credits / ${plan.interval === 'ANNUAL' ? 'year' : 'month'}`),
    h('dt', {}, 'Model tiers'), h('dd', {}, plan.modelTiers.join(', ') || 'none'));
}

function renderPlan(wallet) {
  const current = h('div', { class: 'plan-current' },
    h('p', {}, 'Current plan: ', h('strong', { 'data-testid': 'plan-name', 'data-value': wallet.plan.id }, wallet.plan.name),
      wallet.plan.custom ? h('span', { class: 'badge' }, 'custom') : null));
  if (wallet.scheduledPlan) {
    current.append(h('p', { class: 'notice', 'data-testid': 'plan-scheduled', 'data-value': wallet.scheduledPlan.id },
      `Changes to ${wallet.scheduledPlan.name} on ${formatDate(wallet.balance.subscription.periodEnd, wallet.timezone)}, at the end of this billing period.`));
  }
  $('#plan-current').replaceChildren(current);
  const plans = state.catalogue.plans.some((p) => p.id === wallet.plan.id)
    ? state.catalogue.plans
    : [...state.catalogue.plans, wallet.plan];
  $('#plan-catalogue').replaceChildren(...plans.map((plan) => {
    const isCurrent = plan.id === wallet.plan.id;
    const isScheduled = plan.id === wallet.scheduledPlan?.id;
    return h('article', {
      class: `plan-card${isCurrent ? ' current' : ''}`, 'data-testid': 'plan-card', 'data-plan-id': plan.id,
      'aria-current': isCurrent ? 'true' : null,
    },
    h('h4', {}, plan.name, isCurrent ? h('span', { class: 'badge current-badge' }, 'current') : null,
      isScheduled ? h('span', { class: 'badge' }, 'scheduled') : null),
    planFacts(plan));
  }));
}

// ---------------------------------------------------------------- usage

/** The filter form as applied: local dates, read as instants only when a page loads. */
function usageFilter() {
  const form = $('#usage-filter');
  const value = (name) => form.elements[name].value.trim();
  const filter = {};
  for (const name of ['threadId', 'model', 'from', 'to']) if (value(name)) filter[name] = value(name);
  return filter;
}

/**
 * The applied filter for a wallet: its dates are local dates of that wallet's zone, like
 * the DAY summary ("to" included), so they are read in the zone of the wallet shown now
 * (found by review: read once in the zone of the wallet open when Apply was pressed, they
 * covered the wrong hours after a switch or a zone change).
 */
function filterIn(applied, zone) {
  const filter = {};
  if (applied.threadId) filter.threadId = applied.threadId;
  if (applied.model) filter.model = applied.model;
  if (applied.from) filter.from = startOfLocalDate(applied.from, zone);
  if (applied.to) filter.to = startOfLocalDate(addDays(applied.to, 1), zone);
  return filter;
}

/**
 * One refresh for a burst of events, at most REFRESH_DEBOUNCE_MS after the first of them:
 * events that keep coming (a busy pool) do not put it off for ever.
 */
function scheduleUsageRefresh() {
  if (state.usage.timer) return;
  state.usage.timer = setTimeout(() => {
    state.usage.timer = null;
    // A load on its way is not made stale by a live refresh (found by review: on a busy
    // wallet each refresh dropped the answer before it, and none was ever shown); one
    // more follows it.
    if (state.usage.loading) {
      state.usage.again = true;
      return;
    }
    // The page last asked for: a refresh while a page turn is on its way asks for that
    // page, not the one still shown (found by review: on a busy wallet the refresh's
    // newer answer won, and Next and Previous did nothing).
    loadUsage(state.usage.asked ?? state.usage.cursors);
  }, REFRESH_DEBOUNCE_MS);
}

/** Loads the page at the end of `cursors` (the pages before it, the first one's `null`),
 * which become the page shown only once it has loaded: a page turn that failed leaves the
 * page shown as it was (found by review: a second click then skipped a page). */
async function loadUsage(cursors = state.usage.cursors) {
  const walletId = state.selectedId;
  const wallet = state.live.get(walletId)?.wallet;
  if (!walletId || !wallet) return;
  const after = cursors[cursors.length - 1];
  const filter = filterIn(state.usage.filter, wallet.timezone);
  // Only the newest request's answer is shown: a live refresh that answers after a page
  // turn or a new filter must not put its rows under them.
  const generation = (state.usage.generation ?? 0) + 1;
  state.usage.generation = generation;
  state.usage.loading = true;
  state.usage.asked = cursors;
  const today = localDate(serverClock.now(), wallet.timezone);
  const firstDay = addDays(today, -(CHART_DAYS - 1));
  try {
    // Each shown as it can be: a summary refused (one over the row bound, say, on a long
    // history) leaves the page of events shown (found by review).
    const [usage, summary] = await Promise.allSettled([
      api(ops.USAGE, { id: walletId, filter, first: USAGE_PAGE_SIZE, after }),
      api(ops.SUMMARY, {
        id: walletId, from: filter.from ?? null, to: filter.to ?? null,
        chartFrom: startOfLocalDate(firstDay, wallet.timezone),
      }),
    ]);
    if (state.selectedId !== walletId || state.usage.generation !== generation) return;
    if (usage.status === 'fulfilled') {
      state.usage.cursors = cursors;
      renderUsage(wallet, usage.value.wallet.usage);
    } else {
      state.usage.asked = state.usage.cursors;
    }
    if (summary.status === 'fulfilled') {
      renderSummaries(summary.value.wallet);
      state.chart = { days: Array.from({ length: CHART_DAYS }, (_, i) => addDays(firstDay, i)), groups: summary.value.wallet.perDay };
      renderChart();
    }
    showError($('#usage-error'), [usage, summary].find((r) => r.status === 'rejected')?.reason ?? null);
  } finally {
    if (state.usage.generation === generation) {
      state.usage.loading = false;
      if (state.usage.again) {
        state.usage.again = false;
        scheduleUsageRefresh();
      }
    }
  }
}

function renderChart() {
  const node = $('#usage-chart');
  if (!state.chart) return;
  node.replaceChildren(stackedDailyChart(state.chart.days, state.chart.groups, node.clientWidth || 720));
  state.chartWidth = node.clientWidth;
}
// Redrawn at the new width rather than scaled, so its text keeps its size.
new ResizeObserver(() => {
  if ($('#usage-chart').clientWidth !== state.chartWidth) renderChart();
}).observe($('#usage-chart'));

/** A Report button; `focusKey` names it across the live refreshes that rebuild its row. */
function reportButton(threadId, model, focusKey) {
  return h('button', {
    type: 'button', class: 'small secondary', 'data-testid': 'report-button', 'data-focus-key': focusKey,
    'aria-label': `Report high usage on thread ${threadId}`,
    onclick: () => openReport(threadId, model, focusKey),
  }, 'Report');
}

/**
 * Replaces `container`'s children, keeping the keyboard focus on the button of the same
 * name if it had it (found by review: each live refresh sent a keyboard or screen-reader
 * user back to the top of the page).
 */
function replaceKeepingFocus(container, children) {
  const active = document.activeElement;
  const key = container.contains(active) ? active.dataset.focusKey : undefined;
  container.replaceChildren(...children);
  if (key !== undefined) focusByKey(container, key);
}

function focusByKey(container, key) {
  container.querySelector(`[data-focus-key="${CSS.escape(key)}"]`)?.focus();
}

function renderUsage(wallet, connection) {
  const rows = connection.edges.map(({ node: u }) => h('tr', { 'data-testid': 'usage-row', 'data-usage-id': u.id, 'data-thread': u.threadId },
    h('td', { 'data-label': 'Time' }, h('time', { datetime: u.at, title: formatDateTime(u.at, wallet.timezone) }, formatShort(u.at, wallet.timezone))),
    h('td', { 'data-label': 'Thread', class: 'mono' }, u.threadId),
    h('td', { 'data-label': 'Model', class: 'mono' }, u.model),
    h('td', { 'data-label': 'Member' }, u.memberId ?? '—'),
    h('td', { 'data-label': 'Tokens' }, `${u.inputTokens.toLocaleString()} in`,
      u.cachedTokens ? ` (${u.cachedTokens.toLocaleString()} cached)` : '', ` · ${u.outputTokens.toLocaleString()} out`),
    h('td', { 'data-label': 'Cost', class: 'num' }, amount(u.cost, 'usage-cost'),
      compare(u.uncollected, '0') > 0 ? h('small', { class: 'muted' }, ` (${display(u.uncollected)} uncollected)`) : null),
    h('td', { 'data-label': 'Priced by', class: 'mono' }, u.pricedBy),
    h('td', { class: 'actions' }, reportButton(u.threadId, u.model, `usage:${u.id}`))));
  const body = $('#usage-rows');
  replaceKeepingFocus(body, rows);
  if (!rows.length) {
    body.append(h('tr', {}, h('td', { colspan: 8, class: 'muted empty' },
      Object.keys(state.usage.filter).length ? 'No usage matches these filters.' : 'No usage yet.')));
  }
  const page = state.usage.cursors.length;
  $('#usage-prev').disabled = page === 1;
  $('#usage-next').disabled = !connection.pageInfo.hasNextPage;
  $('#usage-next').dataset.cursor = connection.pageInfo.endCursor ?? '';
  $('#usage-page').textContent = `Page ${page}`;
}

function renderSummaries(wallet) {
  const byCredits = (list) => [...list].sort((a, b) => compare(b.credits, a.credits) || a.key.localeCompare(b.key));
  const row = (g, extra) => h('tr', { 'data-key': g.key },
    h('td', { class: 'mono' }, g.key || '(none)'), h('td', { class: 'num' }, String(g.events)),
    h('td', { class: 'num' }, amount(g.credits, 'summary-credits')), extra);
  const empty = (cols) => h('tr', {}, h('td', { colspan: cols, class: 'muted empty' }, 'No usage.'));
  const threads = byCredits(wallet.byThread);
  replaceKeepingFocus($('#summary-thread'), threads.length
    ? threads.map((g) => row(g, h('td', { class: 'actions' }, reportButton(g.key, '', `thread:${g.key}`))))
    : [empty(4)]);
  const models = byCredits(wallet.byModel);
  $('#summary-model').replaceChildren(...(models.length ? models.map((g) => row(g)) : [empty(3)]));
}

// ---------------------------------------------------------------- reviews

async function loadReviews(walletId, wait = 0) {
  const filed = state.filed ?? 0;
  const session = state.signIns;
  try {
    const data = await api(ops.REVIEWS, { id: walletId });
    if (state.selectedId !== walletId || !data.wallet) return;
    showError($('#reviews-error'), null);
    // In the answer's order, newest first (found by review: a review new to the page went
    // last, behind 50 older open ones, and was not followed).
    const answered = new Map();
    for (const review of data.wallet.reviews) {
      const entry = state.reviews.get(review.id) ?? { review };
      entry.review = review;
      answered.set(review.id, entry);
    }
    // A review filed while this answer was on its way is newer than it: nothing is
    // removed then, and what the answer lacks stays first (found by review: the review
    // just filed disappeared).
    const filedSince = (state.filed ?? 0) !== filed;
    const kept = [];
    for (const [id, entry] of state.reviews) {
      if (answered.has(id)) continue;
      if (filedSince) kept.push([id, entry]);
      else entry.unsubscribe?.();
    }
    state.reviews = new Map([...kept, ...answered]);
    followReviews();
    renderReviews();
  } catch (error) {
    if (state.signIns !== session || state.selectedId !== walletId) return;
    showError($('#reviews-error'), error);
    // Asked for again while the wallet is open (found by review: a list whose load met
    // a passing error stayed empty until a GRANT event, which a rejection never sends).
    if (passing(error)) {
      const next = backoff(wait);
      clearTimeout(state.reviewsTimer);
      state.reviewsTimer = setTimeout(() => {
        if (state.signIns === session && state.selectedId === walletId) loadReviews(walletId, next);
      }, next);
    }
  }
}

/** Records a review, then follows the newest open reviews live. */
function upsertReview(review) {
  let entry = state.reviews.get(review.id);
  if (!entry) {
    entry = { review };
    state.reviews.set(review.id, entry);
  }
  entry.review = review;
  followReviews();
}

/**
 * Follows live the newest MAX_FOLLOWED_REVIEWS open reviews (the list is newest first, a
 * report just filed first of all) and no other: a place freed by a resolved review, or
 * taken by a new report from the oldest followed, moves at once (found by review: a report
 * filed with every place taken was not followed, and its rejection never showed).
 */
function followReviews() {
  let open = 0;
  for (const entry of state.reviews.values()) {
    const follow = entry.review.status === 'SUBMITTED' && open++ < MAX_FOLLOWED_REVIEWS;
    if (follow && !entry.unsubscribe) {
      followReview(entry);
    } else if (!follow && entry.unsubscribe) {
      entry.unsubscribe();
      entry.unsubscribe = null;
    }
  }
}

function followReview(entry) {
  const { id } = entry.review;
  entry.unsubscribe = state.client.subscribe(ops.REVIEW_UPDATED, { reviewId: id }, {
    next: (data) => {
      upsertReview(data.reviewUpdated);
      renderReviews();
    },
    error: (error) => showError($('#reviews-error'), error),
  });
  // The review may have been resolved before the subscription started: look once more.
  api(ops.REVIEW_BY_ID, { id }).then((data) => {
    if (data.review && state.reviews.get(id) === entry && data.review.status !== entry.review.status) {
      upsertReview(data.review);
      renderReviews();
    }
  }).catch(() => {});
}

function renderReview(review, timezone) {
  const f = review.findings;
  const status = { SUBMITTED: 'Submitted, waiting for review', CREDITED: 'Credited', REJECTED: 'Rejected' }[review.status];
  return h('article', { class: `review status-${review.status.toLowerCase()}`, 'data-testid': 'review', 'data-review-id': review.id },
    h('header', {},
      h('h4', {}, 'Thread ', h('span', { class: 'mono' }, review.threadId)),
      h('span', { class: 'badge status', 'data-testid': 'review-status', 'data-value': review.status }, status)),
    h('dl', { class: 'facts' },
      h('dt', {}, 'Thread cost'), h('dd', {}, amount(f.threadCredits, 'review-thread-credits'), ' credits'),
      h('dt', {}, 'Events'), h('dd', {}, String(f.events)),
      h('dt', {}, 'In retry loops'), h('dd', { 'data-testid': 'review-retry-events' }, String(f.retryLoopEvents)),
      h('dt', {}, 'Cost percentile'), h('dd', {}, f.costPercentile == null
        ? 'not enough similar threads'
        : `${Math.round(f.costPercentile)}: costlier than ${Math.round(f.costPercentile)}% of threads on this model`),
      h('dt', {}, 'Suggested refund'), h('dd', {}, amount(f.suggestedRefund, 'review-suggested'), ' credits')),
    f.tips.length ? h('ul', { class: 'tips', 'aria-label': 'Tips' }, f.tips.map((t) => h('li', {}, t))) : null,
    review.creditedGrant ? h('p', { class: 'credited', 'data-testid': 'review-credited' },
      'Credited ', amount(review.creditedGrant.amount, 'review-credited-amount'),
      ` credits as a ${review.creditedGrant.kind} grant`,
      review.creditedGrant.expiresAt ? ` (expires ${formatDateTime(review.creditedGrant.expiresAt, timezone)})` : '', '.') : null,
    review.note ? h('p', { class: 'note' }, 'Note from the reviewer: ', review.note) : null);
}

function renderReviews() {
  const timezone = state.live.get(state.selectedId)?.wallet?.timezone ?? 'UTC';
  const list = [...state.reviews.values()].map((e) => e.review);
  $('#review-list').replaceChildren(...(list.length
    ? list.map((r) => renderReview(r, timezone))
    : [h('p', { class: 'muted' }, 'No reviews on this wallet.')]));
}

// ---------------------------------------------------------------- the report form

function openReport(threadId, model, focusKey) {
  state.reportOpener = focusKey;
  state.reportOpens = (state.reportOpens ?? 0) + 1;
  const form = $('#report-form');
  form.reset();
  form.elements.threadId.value = threadId;
  form.elements.model.value = model ?? '';
  showError(form.querySelector('[data-testid="report-error"]'), null);
  $('#report-dialog').showModal();
  form.elements.taskDescription.focus();
}

async function submitReport(event) {
  event.preventDefault();
  const form = $('#report-form');
  const errorNode = form.querySelector('[data-testid="report-error"]');
  const value = (name) => form.elements[name].value.trim();
  const int = (name) => (value(name) === '' ? null : Number.parseInt(value(name), 10));
  if (!value('threadId') || !value('taskDescription')) {
    errorNode.hidden = false;
    errorNode.textContent = 'Please give the thread id and say what you were trying to do.';
    return;
  }
  const input = {
    walletId: state.selectedId,
    threadId: value('threadId'),
    taskDescription: value('taskDescription'),
    model: value('model') || null,
    previewStatus: value('previewStatus'),
    threadLength: int('threadLength'),
    contextSize: int('contextSize'),
  };
  const button = $('#report-submit');
  button.disabled = true;
  const opened = state.reportOpens;
  try {
    const { reportHighUsage: review } = await api(ops.REPORT_HIGH_USAGE, { input });
    // Shown only where it was sent from (found by review: an answer arriving after the
    // user had moved to another wallet went into that wallet's list, or closed a report
    // being written there). Another wallet's list shows it when that wallet is opened.
    if (state.selectedId !== input.walletId) return;
    state.filed = (state.filed ?? 0) + 1;
    if (state.reportOpens === opened) $('#report-dialog').close();
    // Newest first, like wallet.reviews; a report on an open review returns that review.
    const entry = state.reviews.get(review.id) ?? { review };
    const rest = [...state.reviews].filter(([id]) => id !== review.id);
    state.reviews = new Map([[review.id, entry], ...rest]);
    upsertReview(review);
    renderReviews();
    const card = document.querySelector(`[data-review-id="${CSS.escape(review.id)}"]`);
    card?.scrollIntoView({ block: 'nearest' });
    card?.classList.add('flash');
  } catch (error) {
    showError(errorNode, error);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- teams

function renderTeams() {
  const teams = state.viewer.teams;
  $('#teams').hidden = teams.length === 0;
  $('#team-list').replaceChildren(...teams.map((t) => h('article', {
    class: 'team card', 'data-testid': 'team', 'data-team-id': t.id,
  }, h('h3', {}, t.name), h('p', { class: 'muted' }, 'Loading…'))));
  for (const t of teams) refreshTeam(t.id);
}

/**
 * Loads a team card, one request at a time: an event while one is on its way asks for one
 * more once it is answered (found by review: each event made the answer on its way stale,
 * so on a pool with an event per round trip no answer was ever shown). `fresh` (after a
 * limit save) also drops the answer on its way, which was asked for before the save.
 */
async function refreshTeam(teamId, { fresh = false } = {}) {
  const loads = state.teamLoads;
  const load = loads.get(teamId) ?? { busy: false, again: false, dropped: false };
  loads.set(teamId, load);
  if (load.busy) {
    load.again = true;
    load.dropped ||= fresh;
    return;
  }
  clearTimeout(load.timer); // this load stands for a retry waiting
  load.busy = true;
  let failed = false;
  try {
    failed = await loadTeam(teamId, () => load.dropped);
  } finally {
    Object.assign(load, { busy: false, dropped: false });
    if (state.teamLoads === loads && load.again) {
      load.again = false;
      refreshTeam(teamId);
    } else if (state.teamLoads === loads && failed) {
      // Asked for again, as the wallet is (found by review: a card whose load met a
      // passing error waited for the pool's next event, on a quiet pool for good).
      load.wait = backoff(load.wait);
      load.timer = setTimeout(() => state.teamLoads === loads && refreshTeam(teamId), load.wait);
    } else {
      load.wait = 0;
    }
  }
}

/** Loads a team card; true when it met an error that may pass. */
async function loadTeam(teamId, dropped) {
  const node = document.querySelector(`[data-team-id="${CSS.escape(teamId)}"]`);
  try {
    const { team } = await api(ops.TEAM, { id: teamId });
    if (!team || !node || dropped()) return;
    const stale = node.querySelector('.team-error');
    if (stale) showError(stale, null);
    const me = team.members.find((m) => m.userId === state.viewer.ownerId);
    const isAdmin = me?.role === 'ADMIN';
    const known = state.teams.get(teamId);
    const sameMembers = known && known.isAdmin === isAdmin &&
      known.team.members.map((m) => m.userId).join('\n') === team.members.map((m) => m.userId).join('\n');
    if (sameMembers) {
      // Update figures in place so a half-typed limit is not wiped by a live refresh.
      known.team = team;
      // A plan or zone changed meanwhile shows in the header too.
      const meta = node.querySelector('.team-meta');
      if (meta) meta.textContent = teamMeta(team);
      for (const m of team.members) fillMemberRow(known.rows.get(m.userId), m);
      const entry = state.live.get(team.wallet.id);
      renderPoolBalance(teamId, entry?.balance ?? team.wallet.balance);
      return;
    }
    const rows = new Map();
    state.teams.set(teamId, { team, isAdmin, rows });
    node.replaceChildren(
      h('header', { class: 'team-head' },
        h('h3', {}, team.name),
        h('span', { class: 'badge', 'data-testid': 'team-role' }, isAdmin ? 'you are an admin' : 'member')),
      h('p', { class: 'muted team-meta', 'data-testid': 'team-meta' }, teamMeta(team)),
      h('div', { class: 'pool-balance' }),
      h('h4', {}, isAdmin ? 'Members and their limits' : 'Your spending from this pool'),
      h('div', { class: 'member-list' }, team.members.map((m) => {
        const refs = memberRow(team, m, isAdmin);
        rows.set(m.userId, refs);
        return refs.root;
      })));
    renderPoolBalance(teamId, state.live.get(team.wallet.id)?.balance ?? team.wallet.balance);
  } catch (error) {
    if (node && !dropped()) {
      let errorNode = node.querySelector('.team-error');
      if (!errorNode) node.append(errorNode = h('p', { class: 'error team-error', role: 'alert' }));
      showError(errorNode, error);
      return passing(error);
    }
  }
  return false;
}

function teamMeta(team) {
  return `Pool ${team.wallet.id} · plan ${team.wallet.plan.name} · ${team.wallet.timezone}`;
}

function renderPoolBalance(teamId, balance) {
  const node = document.querySelector(`[data-team-id="${CSS.escape(teamId)}"] .pool-balance`);
  const team = state.teams.get(teamId)?.team;
  if (!node || !team || !balance) return;
  node.replaceChildren(h('dl', { class: 'facts pool' },
    h('dt', {}, 'Spendable'), h('dd', {}, amount(balance.total, 'pool-total'), ' credits'),
    h('dt', {}, 'Daily'), h('dd', {}, amount(balance.daily.remaining, 'pool-daily-remaining'), ` / ${display(balance.daily.allowance)}`),
    h('dt', {}, 'Subscription'), h('dd', {}, amount(balance.subscription.remaining, 'pool-subscription-remaining'),
      ` / ${display(balance.subscription.allowance)}, period ends ${formatDate(balance.subscription.periodEnd, team.wallet.timezone)}`),
    h('dt', {}, 'Bonus'), h('dd', {}, amount(balance.bonus.remaining, 'pool-bonus-remaining')),
    compare(balance.reserved, '0') > 0 ? [h('dt', {}, 'Reserved'), h('dd', {}, amount(balance.reserved))] : null));
}

function limitText(spent, limit) {
  if (limit == null) return `${display(spent)} spent, no limit`;
  if (compare(limit, '0') === 0) return `${display(spent)} spent, no spending allowed`;
  const left = compare(limit, spent) > 0 ? sub(limit, spent) : '0';
  return `${display(spent)} of ${display(limit)} (${display(left)} left)`;
}

function memberRow(team, member, isAdmin) {
  const refs = {
    root: h('div', { class: 'member', 'data-testid': 'member-row', 'data-user': member.userId }),
    role: h('span', { class: 'badge' }),
    today: h('span', { 'data-testid': 'member-today' }),
    period: h('span', { 'data-testid': 'member-period' }),
    todayMeter: h('span'),
    periodMeter: h('span'),
  };
  refs.root.append(
    h('div', { class: 'member-head' }, h('strong', { class: 'mono' }, member.userId), refs.role),
    h('dl', { class: 'facts' },
      h('dt', {}, 'Today'), h('dd', {}, refs.today, h('div', { class: 'meter small', 'aria-hidden': 'true' }, refs.todayMeter)),
      h('dt', {}, 'This period'), h('dd', {}, refs.period, h('div', { class: 'meter small', 'aria-hidden': 'true' }, refs.periodMeter))));
  if (isAdmin) refs.root.append(limitForm(team, member, refs));
  fillMemberRow(refs, member);
  return refs;
}

function fillMemberRow(refs, m) {
  if (!refs) return;
  refs.role.textContent = m.role;
  refs.today.textContent = limitText(m.spentToday, m.dailyLimit);
  refs.period.textContent = limitText(m.spentThisPeriod, m.periodLimit);
  refs.root.dataset.dailyLimit = m.dailyLimit ?? '';
  refs.root.dataset.periodLimit = m.periodLimit ?? '';
  refs.root.dataset.spentToday = m.spentToday;
  refs.root.dataset.spentThisPeriod = m.spentThisPeriod;
  refs.todayMeter.style.width = used(m.spentToday, m.dailyLimit);
  refs.periodMeter.style.width = used(m.spentThisPeriod, m.periodLimit);
  // A limit box the admin has not typed in follows the server (found by review: one left
  // at a limit another admin has since changed was sent back with the next save, since a
  // save sets both limits); a box being typed in is left alone.
  for (const [input, value] of [[refs.dailyInput, m.dailyLimit], [refs.periodInput, m.periodLimit]]) {
    if (!input || input.value !== input.dataset.shown) continue;
    input.value = value ?? '';
    input.dataset.shown = input.value;
  }
}

/** How full a member's limit meter is: empty with no limit, full at a limit of 0. */
function used(spent, limit) {
  if (limit == null) return '0%';
  if (compare(limit, '0') === 0) return '100%';
  return `${ratio(spent, limit) * 100}%`;
}

/** Numbers the limit forms' inputs: ids made from user ids could collide (found by
 * review: `j.doe` and `j_doe` shared theirs, and a label focused the other's box). */
let limitForms = 0;

function limitForm(team, member, refs) {
  const number = ++limitForms;
  const id = (name) => `limit-${number}-${name}`;
  const daily = h('input', { id: id('daily'), name: 'dailyLimit', inputmode: 'decimal', placeholder: 'no limit', value: member.dailyLimit ?? '' });
  const period = h('input', { id: id('period'), name: 'periodLimit', inputmode: 'decimal', placeholder: 'no limit', value: member.periodLimit ?? '' });
  daily.dataset.shown = daily.value;
  period.dataset.shown = period.value;
  refs.dailyInput = daily;
  refs.periodInput = period;
  const error = h('p', { class: 'error', role: 'alert', 'data-testid': 'limit-error', hidden: true });
  const saved = h('span', { class: 'muted saved', role: 'status' });
  const button = h('button', { type: 'submit', class: 'small' }, 'Save limits');
  const form = h('form', { class: 'limit-form', 'aria-label': `Limits for ${member.userId}` },
    h('div', {}, h('label', { for: id('daily') }, 'Daily limit'), daily),
    h('div', {}, h('label', { for: id('period') }, 'Period limit'), period),
    h('div', { class: 'limit-buttons' }, button, saved),
    error);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    saved.textContent = '';
    const limits = { dailyLimit: daily.value.trim() || null, periodLimit: period.value.trim() || null };
    const bad = Object.entries(limits).find(([, v]) => v != null && !isCredits(v));
    if (bad) {
      error.hidden = false;
      error.textContent = `${bad[0] === 'dailyLimit' ? 'Daily' : 'Period'} limit: write an amount like 10 or 2.5 (up to six decimals), or leave it empty for no limit.`;
      return;
    }
    button.disabled = true;
    try {
      // A save sets both limits: a box the admin has not typed in keeps the limit the
      // server has now (found by review: it sent back the one this page last saw, and so
      // removed a limit another admin had set since; nothing tells a page of that).
      const untouched = [['dailyLimit', daily], ['periodLimit', period]]
        .filter(([, input]) => input.value === input.dataset.shown);
      if (untouched.length) {
        const { team: now } = await api(ops.TEAM, { id: team.id });
        const current = now?.members.find((m) => m.userId === member.userId);
        for (const [name] of untouched) if (current) limits[name] = current[name] ?? null;
      }
      const { setMemberLimits: m } = await api(ops.SET_MEMBER_LIMITS, { teamId: team.id, userId: member.userId, ...limits });
      // A team answer asked for before the save is older than it (found by review: one
      // landing after it put the old limits back); the newer one is asked for now.
      refreshTeam(team.id, { fresh: true });
      showError(error, null);
      daily.value = daily.dataset.shown = m.dailyLimit ?? '';
      period.value = period.dataset.shown = m.periodLimit ?? '';
      fillMemberRow(refs, m);
      saved.textContent = 'Saved.';
    } catch (err) {
      showError(error, err);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

// ---------------------------------------------------------------- wiring

function wire() {
  $('#sign-in-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('#token').value.trim();
    if (!token) {
      showError($('[data-testid="sign-in-error"]'), new GqlError('Paste a token first.', { code: 'INVALID_INPUT' }));
      return;
    }
    signIn(token);
  });
  $('#sign-out').addEventListener('click', () => signOut(null));
  $('#open-wallet-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const id = $('#open-wallet-id').value.trim();
    if (id) selectWallet(id);
  });
  $('#usage-filter').addEventListener('submit', (event) => {
    event.preventDefault();
    state.usage.filter = usageFilter();
    state.usage.cursors = [null];
    state.usage.asked = null;
    loadUsage();
  });
  $('#usage-filter').addEventListener('reset', () => {
    state.usage.filter = {};
    state.usage.cursors = [null];
    state.usage.asked = null;
    setTimeout(loadUsage); // after the form has cleared its fields
  });
  $('#usage-next').addEventListener('click', () => {
    const cursor = $('#usage-next').dataset.cursor;
    if (!cursor) return;
    loadUsage([...state.usage.cursors, cursor]);
  });
  $('#usage-prev').addEventListener('click', () => {
    const { cursors } = state.usage;
    loadUsage(cursors.length > 1 ? cursors.slice(0, -1) : cursors);
  });
  $('#report-form').addEventListener('submit', submitReport);
  $('#report-cancel').addEventListener('click', () => $('#report-dialog').close());
  // The dialog gives the focus back to the button that opened it, or to the button that
  // replaced it when a live refresh rebuilt its row meanwhile.
  $('#report-dialog').addEventListener('close', () => {
    const key = state.reportOpener;
    if (key !== undefined && !$('#wallet-view').contains(document.activeElement)) {
      focusByKey($('#wallet-view'), key);
    }
  });

  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
  else showSignIn(null);
}

wire();
