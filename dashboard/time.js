// Time for the page: the server's clock as seen from the browser, dates shown in a wallet's
// own zone, countdowns, and local dates of a zone turned into instants for filters.
// It never guesses a zone from the browser when a wallet's zone is known.

/**
 * The server's "now". The browser clock may differ from the server's (a skewed laptop, or a
 * server on `--manual-clock`), so the offset comes from the balance stream: a SNAPSHOT's
 * `at` is the server's now when it was sent; later events' `at` are due instants, never
 * after the server's now, so they can only move our estimate forward.
 */
/** Without any event for this long (no live connection), trust the browser's clock. */
const CLOCK_FALLBACK_MS = 5000;

export const serverClock = {
  offsetMs: 0,
  known: false,
  since: Date.now(),
  now() {
    return Date.now() + this.offsetMs;
  },
  /** Known from the server, or waited long enough that the browser's clock must do. */
  ready() {
    return this.known || Date.now() - this.since > CLOCK_FALLBACK_MS;
  },
  observe(at, isSnapshot) {
    const offset = Date.parse(at) - Date.now();
    if (Number.isNaN(offset)) return;
    if (isSnapshot || !this.known) {
      this.offsetMs = offset;
      this.known = true;
    } else if (offset > this.offsetMs) {
      this.offsetMs = offset;
    }
  },
  reset() {
    this.offsetMs = 0;
    this.known = false;
    this.since = Date.now();
  },
};

const formatters = new Map();
/** What the page shows: the browser's own language. */
function formatter(timeZone, options) {
  return cachedFormatter(undefined, timeZone, options);
}

/**
 * What the page computes with: parts read back as numbers must be Gregorian with Latin
 * digits, whatever the browser's language (a Thai browser's calendar is Buddhist, a Persian
 * one writes ۱۴۰۵).
 */
function partsFormatter(timeZone, options) {
  return cachedFormatter('en-US', timeZone, { ...options, calendar: 'gregory', numberingSystem: 'latn' });
}

function cachedFormatter(locale, timeZone, options) {
  const key = `${locale}|${timeZone}|${JSON.stringify(options)}`;
  if (!formatters.has(key)) {
    try {
      formatters.set(key, new Intl.DateTimeFormat(locale, { ...options, timeZone }));
    } catch {
      // An IANA name this browser does not know: show UTC and say so.
      formatters.set(key, new Intl.DateTimeFormat(locale, { ...options, timeZone: 'UTC', timeZoneName: 'short' }));
    }
  }
  return formatters.get(key);
}

const DATE_TIME = {
  weekday: 'short', day: 'numeric', month: 'short', year: 'numeric',
  hour: '2-digit', minute: '2-digit', hourCycle: 'h23', timeZoneName: 'short',
};
const DATE_ONLY = { day: 'numeric', month: 'short', year: 'numeric' };

/** "Thu, 11 Mar 2027, 00:00 CET" in the given zone (the wallet's). */
export const formatDateTime = (iso, timeZone) => formatter(timeZone, DATE_TIME).format(new Date(iso));
export const formatDate = (iso, timeZone) => formatter(timeZone, DATE_ONLY).format(new Date(iso));
/** Short form for table cells: "10 Mar, 13:05". */
export const formatShort = (iso, timeZone) =>
  formatter(timeZone, { day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' })
    .format(new Date(iso));

/** Seconds left until `iso` by the server's clock, never negative. */
export const secondsUntil = (iso) => Math.max(0, Math.floor((Date.parse(iso) - serverClock.now()) / 1000));

/** 36000 -> "10:00:00"; 90061 -> "1d 01:01:01". */
export function formatCountdown(totalSeconds) {
  const days = Math.floor(totalSeconds / 86400);
  const rest = totalSeconds % 86400;
  const hh = String(Math.floor(rest / 3600)).padStart(2, '0');
  const mm = String(Math.floor((rest % 3600) / 60)).padStart(2, '0');
  const ss = String(rest % 60).padStart(2, '0');
  return `${days > 0 ? `${days}d ` : ''}${hh}:${mm}:${ss}`;
}

/** The local calendar date "YYYY-MM-DD" of an instant in a zone (as the DAY summary keys). */
export function localDate(epochMs, timeZone) {
  const parts = partsFormatter(timeZone, { year: 'numeric', month: '2-digit', day: '2-digit' })
    .formatToParts(new Date(epochMs));
  const get = (type) => parts.find((p) => p.type === type).value;
  return `${get('year')}-${get('month')}-${get('day')}`;
}

/** "2027-03-10" + n days, by the calendar (no zone involved). */
export function addDays(date, n) {
  const [y, m, d] = date.split('-').map(Number);
  return new Date(Date.UTC(y, m - 1, d + n)).toISOString().slice(0, 10);
}

/** Offset of a zone from UTC at an instant, in ms. */
function zoneOffsetMs(epochMs, timeZone) {
  const parts = partsFormatter(timeZone, {
    year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23',
  }).formatToParts(new Date(epochMs));
  const get = (type) => Number(parts.find((p) => p.type === type).value);
  const asUtc = Date.UTC(get('year'), get('month') - 1, get('day'), get('hour'), get('minute'), get('second'));
  return asUtc - Math.floor(epochMs / 1000) * 1000;
}

/**
 * The first instant of a local date in a zone, as RFC 3339 UTC: what a "from" date means.
 * Where midnight falls in a DST gap this lands on the first existing time after it.
 */
export function startOfLocalDate(date, timeZone) {
  const [y, m, d] = date.split('-').map(Number);
  const wall = Date.UTC(y, m - 1, d);
  let guess = wall - zoneOffsetMs(wall, timeZone);
  guess = wall - zoneOffsetMs(guess, timeZone);
  if (localDate(guess, timeZone) < date) guess += 3600_000; // inside a gap: step past it
  return new Date(guess).toISOString().replace('.000Z', 'Z');
}
