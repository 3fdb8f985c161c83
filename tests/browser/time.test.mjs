// The dashboard's time helpers (dashboard/time.js) under browser languages whose calendar
// or digits differ from the ISO dates the server speaks. Node takes its default locale
// from LC_ALL, so each language runs in a child process of its own.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const time = fileURLToPath(new URL('../../dashboard/time.js', import.meta.url));

/** What the helpers compute in a child node whose default locale is `locale`. */
function computed(locale) {
  const script = `
    const t = await import(${JSON.stringify(time)});
    const at = Date.parse('2027-03-10T23:30:00Z');
    console.log(JSON.stringify({
      locale: Intl.DateTimeFormat().resolvedOptions().locale,
      paris: t.localDate(at, 'Europe/Paris'),
      tokyo: t.localDate(at, 'Asia/Tokyo'),
      next: t.addDays(t.localDate(at, 'Europe/Paris'), 1),
      start: t.startOfLocalDate('2027-03-28', 'Europe/Paris'),
      santiago: t.startOfLocalDate('2027-03-14', 'America/Santiago'),
    }));`;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
    env: { ...process.env, LC_ALL: locale, LANG: locale },
  });
  return JSON.parse(out.toString());
}

describe('local dates whatever the browser language', () => {
  // Found by review: local dates were read back from the browser's own calendar and
  // digits, so a Thai browser asked for usage of the year 2570 and a Persian one threw
  // on ۱۴۰۵. Dates are computed in the Gregorian calendar with Latin digits.
  const expected = {
    paris: '2027-03-11',
    tokyo: '2027-03-11',
    next: '2027-03-12',
    start: '2027-03-27T23:00:00Z',
    santiago: '2027-03-14T03:00:00Z',
  };
  for (const locale of ['en_GB.UTF-8', 'th_TH.UTF-8', 'fa_IR.UTF-8', 'ar_EG.UTF-8']) {
    it(locale, () => {
      const got = computed(locale);
      const { locale: resolved, ...dates } = got;
      // The child runs in that language (found by review: were it to fall back to
      // English, every case would test English).
      assert.equal(resolved.slice(0, 2), locale.slice(0, 2), `default locale ${resolved}`);
      assert.deepEqual(dates, expected, `default locale ${resolved}`);
    });
  }
});
