// The per-day usage chart: credits per local day, stacked by model, drawn as inline SVG by
// hand (no library, no network). Heights use Numbers (a drawing, not a figure); the exact
// per-day totals are in each bar's tooltip and in the summary tables.

import { sum, display, approx } from './credits.js';

const SVG = 'http://www.w3.org/2000/svg';
const PALETTE = ['#2563eb', '#f59e0b', '#10b981', '#ef4444', '#8b5cf6', '#06b6d4', '#ec4899', '#84cc16', '#64748b'];

function el(name, attrs = {}, children = []) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const child of children) node.append(child);
  return node;
}

/** One colour per model, stable for a given list of models. */
function modelColours(models) {
  return new Map(models.map((m, i) => [m, PALETTE[i % PALETTE.length]]));
}

/** A tidy axis maximum: 1, 2 or 5 times a power of ten, at least `max`. */
function niceCeiling(max) {
  if (!(max > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 5, 10]) if (step * power >= max) return step * power;
  return 10 * power;
}

/**
 * days: ["YYYY-MM-DD", …] oldest first; groups: [{ key: day, subKey: model, credits }].
 * Drawn at the container's pixel width (text stays its size at any width).
 * Returns a <figure> with the SVG and a legend.
 */
export function stackedDailyChart(days, groups, pixelWidth = 720) {
  const models = [...new Set(groups.map((g) => g.subKey ?? ''))].sort();
  const colours = modelColours(models);
  const byDay = new Map(days.map((d) => [d, []]));
  for (const g of groups) byDay.get(g.key)?.push(g);

  const width = Math.max(280, Math.round(pixelWidth));
  const height = width < 500 ? 170 : 220;
  const pad = { left: 44, right: 8, top: 12, bottom: 28 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const max = niceCeiling(Math.max(0, ...days.map((d) => byDay.get(d).reduce((a, g) => a + approx(g.credits), 0))));
  const slot = plotW / Math.max(1, days.length);
  const barW = Math.max(2, slot * 0.7);

  const svg = el('svg', {
    viewBox: `0 0 ${width} ${height}`, width, height, class: 'chart', role: 'img',
    'aria-label': `Credits per day over the last ${days.length} days, stacked by model`,
  });
  // Grid lines and labels at 0, ½ and the top.
  for (const f of [0, 0.5, 1]) {
    const y = pad.top + plotH * (1 - f);
    svg.append(el('line', { x1: pad.left, x2: width - pad.right, y1: y, y2: y, class: 'chart-grid' }));
    const label = el('text', { x: pad.left - 6, y: y + 4, 'text-anchor': 'end', class: 'chart-label' });
    label.textContent = String(+(max * f).toPrecision(3));
    svg.append(label);
  }
  days.forEach((day, i) => {
    const x = pad.left + i * slot + (slot - barW) / 2;
    let y = pad.top + plotH;
    const dayGroups = byDay.get(day);
    const bar = el('g', { class: 'chart-bar', 'data-day': day });
    const title = el('title');
    title.textContent = dayGroups.length
      ? `${day}: ${display(sum(dayGroups.map((g) => g.credits)))} credits\n` +
        dayGroups.map((g) => `${g.subKey}: ${display(g.credits)}`).join('\n')
      : `${day}: no usage`;
    bar.append(title);
    // A transparent full-height hit area so the tooltip works on empty days too.
    bar.append(el('rect', { x, y: pad.top, width: barW, height: plotH, fill: 'transparent' }));
    for (const g of dayGroups) {
      const h = (approx(g.credits) / max) * plotH;
      y -= h;
      bar.append(el('rect', { x, y, width: barW, height: Math.max(0, h), fill: colours.get(g.subKey ?? '') }));
    }
    svg.append(bar);
    // Label the last day and every 7th before it (local dates, DD/MM to stay short).
    if ((days.length - 1 - i) % 7 === 0) {
      const label = el('text', { x: x + barW / 2, y: height - 8, 'text-anchor': 'middle', class: 'chart-label' });
      label.textContent = `${day.slice(8, 10)}/${day.slice(5, 7)}`;
      svg.append(label);
    }
  });

  const figure = document.createElement('figure');
  figure.className = 'chart-figure';
  figure.append(svg);
  const legend = document.createElement('figcaption');
  legend.className = 'legend';
  if (models.length === 0) legend.textContent = 'No usage in the last 30 days.';
  for (const m of models) {
    const item = document.createElement('span');
    const swatch = document.createElement('i');
    swatch.style.background = colours.get(m);
    item.append(swatch, m || '(none)');
    legend.append(item);
  }
  figure.append(legend);
  return figure;
}
