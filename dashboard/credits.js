// Exact credit amounts for the page. `Credits` travel as decimal strings with at most six
// fractional digits (SPEC 1); here they become BigInt micro-credits, so sums and
// differences the page shows are exact. Floating point is only for drawing (chart heights,
// bar widths), never for a figure.

const MICRO = 1_000_000n;
const CREDITS_RE = /^(-?)([0-9]+)(?:\.([0-9]{1,6}))?$/;

/** "12.5" -> 12500000n; throws on anything that is not a Credits string. */
export function toMicro(text) {
  const match = CREDITS_RE.exec(String(text).trim());
  if (!match) throw new RangeError(`not a credit amount: ${JSON.stringify(text)}`);
  const [, sign, whole, fraction = ''] = match;
  const micro = BigInt(whole) * MICRO + BigInt(fraction.padEnd(6, '0'));
  return sign ? -micro : micro;
}

/** 12500000n -> "12.5" (the canonical form of SPEC 1). */
export function fromMicro(micro) {
  const negative = micro < 0n;
  const abs = negative ? -micro : micro;
  const whole = (abs / MICRO).toString();
  const fraction = (abs % MICRO).toString().padStart(6, '0').replace(/0+$/, '');
  return `${negative ? '-' : ''}${whole}${fraction ? `.${fraction}` : ''}`;
}

export const isCredits = (text) => CREDITS_RE.test(String(text).trim());

export const sub = (a, b) => fromMicro(toMicro(a) - toMicro(b));
export const sum = (list) => fromMicro(list.reduce((acc, x) => acc + toMicro(x), 0n));
export const compare = (a, b) => {
  const d = toMicro(a) - toMicro(b);
  return d < 0n ? -1 : d > 0n ? 1 : 0;
};

/** Display form: the exact digits, thousands grouped with a thin space ("10 000.25"). */
export function display(text) {
  const canonical = fromMicro(toMicro(text));
  const [whole, fraction] = canonical.replace('-', '').split('.');
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, '\u2009');
  return `${canonical.startsWith('-') ? '−' : ''}${grouped}${fraction ? `.${fraction}` : ''}`;
}

/** Share of `part` in `whole` as a number in [0, 1], for bar widths only. */
export function ratio(part, whole) {
  const w = toMicro(whole);
  if (w <= 0n) return 0;
  const p = toMicro(part);
  return Math.max(0, Math.min(1, Number((p * 10_000n) / w) / 10_000));
}

/** For chart heights only: a Number is fine there (issue 9, item 4). */
export const approx = (text) => Number(text);
