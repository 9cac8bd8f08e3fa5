/**
 * Two small SVG chart kinds, written by hand so the report needs no library:
 * a CDF with a log-scaled x axis, and a line chart with error bars.
 *
 * @module
 */

/** A series of a chart. */
export interface Series {
  /** Legend label. */
  name: string;
  /** CSS colour. */
  color: string;
  /** Dashed line (used for "pager-side" as opposed to "application-side"). */
  dashed?: boolean;
  /** Points; `lo`/`hi` (optional) draw an error bar. */
  pts: { x: number; y: number; lo?: number; hi?: number }[];
}

/** A fixed palette, one colour per configuration, stable across charts. */
export const PALETTE = [
  "#444444",
  "#d62728",
  "#ff7f0e",
  "#1f77b4",
  "#2ca02c",
  "#9467bd",
  "#8c564b",
  "#e377c2",
];

const W = 720, H = 420, L = 70, R = 200, T = 40, B = 55;

function esc(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function fmt(v: number): string {
  if (v >= 1000) return `${+(v / 1000).toPrecision(3)}k`;
  return `${+v.toPrecision(3)}`;
}

/** Decades (1, 10, 100, ...) covering [lo, hi]. */
function decades(lo: number, hi: number): number[] {
  const out = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) out.push(10 ** e);
  return out;
}

interface Axis {
  map(v: number): number;
  ticks: number[];
}

function logAxis(lo: number, hi: number, a: number, b: number): Axis {
  const ticks = decades(lo, hi);
  const l0 = Math.log10(ticks[0]), l1 = Math.log10(ticks[ticks.length - 1]);
  const span = l1 - l0 || 1;
  return { map: (v) => a + (b - a) * (Math.log10(Math.max(v, 1e-9)) - l0) / span, ticks };
}

function linAxis(lo: number, hi: number, a: number, b: number, n = 5): Axis {
  const span = hi - lo || 1;
  const ticks = Array.from({ length: n + 1 }, (_, i) => lo + (span * i) / n);
  return { map: (v) => a + (b - a) * (v - lo) / span, ticks };
}

function frame(title: string, xl: string, yl: string, xa: Axis, ya: Axis, xFmt = fmt): string[] {
  const o: string[] = [];
  o.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
      `font-family="sans-serif" font-size="12">`,
  );
  o.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  o.push(`<text x="${L}" y="22" font-size="15" font-weight="bold">${esc(title)}</text>`);
  for (const t of xa.ticks) {
    const x = xa.map(t);
    o.push(`<line x1="${x}" y1="${T}" x2="${x}" y2="${H - B}" stroke="#e5e5e5"/>`);
    o.push(`<text x="${x}" y="${H - B + 16}" text-anchor="middle">${esc(xFmt(t))}</text>`);
  }
  for (const t of ya.ticks) {
    const y = ya.map(t);
    o.push(`<line x1="${L}" y1="${y}" x2="${W - R}" y2="${y}" stroke="#e5e5e5"/>`);
    o.push(`<text x="${L - 6}" y="${y + 4}" text-anchor="end">${esc(fmt(t))}</text>`);
  }
  o.push(
    `<rect x="${L}" y="${T}" width="${W - L - R}" height="${
      H - T - B
    }" fill="none" stroke="#888"/>`,
  );
  o.push(`<text x="${(L + W - R) / 2}" y="${H - 14}" text-anchor="middle">${esc(xl)}</text>`);
  o.push(
    `<text transform="translate(16 ${(T + H - B) / 2}) rotate(-90)" text-anchor="middle">${
      esc(yl)
    }</text>`,
  );
  return o;
}

function legend(series: Series[]): string[] {
  return series.map((s, i) => {
    const y = T + 12 + i * 18;
    return `<line x1="${W - R + 12}" y1="${y}" x2="${W - R + 36}" y2="${y}" stroke="${s.color}" ` +
      `stroke-width="2.5"${s.dashed ? ' stroke-dasharray="5 3"' : ""}/>` +
      `<text x="${W - R + 42}" y="${y + 4}">${esc(s.name)}</text>`;
  });
}

/** CDF chart: x log scale (µs), y from 0 to 1, drawn as steps. */
export function cdfChart(title: string, xLabel: string, series: Series[]): string {
  const xs = series.flatMap((s) => s.pts.map((p) => p.x)).filter((x) => x > 0);
  const xa = logAxis(xs.length ? Math.min(...xs) : 1, xs.length ? Math.max(...xs) : 10, L, W - R);
  const ya = linAxis(0, 1, H - B, T, 4);
  const o = frame(title, xLabel, "fraction of faults ≤ x", xa, ya);
  for (const s of series) {
    if (s.pts.length === 0) continue;
    let d = `M${xa.map(s.pts[0].x).toFixed(1)},${ya.map(s.pts[0].y).toFixed(1)}`;
    for (const p of s.pts.slice(1)) d += ` L${xa.map(p.x).toFixed(1)},${ya.map(p.y).toFixed(1)}`;
    o.push(
      `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2"${
        s.dashed ? ' stroke-dasharray="5 3"' : ""
      }/>`,
    );
  }
  o.push(...legend(series), "</svg>");
  return o.join("\n") + "\n";
}

/** Line chart with min-max error bars; x linear (given ticks), y log scale. */
export function lineChart(
  title: string,
  xLabel: string,
  yLabel: string,
  xTicks: number[],
  series: Series[],
  xFmt: (v: number) => string = fmt,
): string {
  const ys = series.flatMap((s) => s.pts.flatMap((p) => [p.y, p.lo ?? p.y, p.hi ?? p.y]))
    .filter((y) => Number.isFinite(y) && y > 0);
  const xa0 = linAxis(Math.min(...xTicks), Math.max(...xTicks), L + 20, W - R - 20);
  const xa: Axis = { map: xa0.map, ticks: xTicks };
  const ya = logAxis(ys.length ? Math.min(...ys) : 1, ys.length ? Math.max(...ys) : 10, H - B, T);
  const o = frame(title, xLabel, yLabel, xa, ya, xFmt);
  for (const s of series) {
    const pts = s.pts.filter((p) => Number.isFinite(p.y) && p.y > 0).sort((a, b) => a.x - b.x);
    if (pts.length === 0) continue;
    const d = pts.map((p, i) =>
      `${i ? "L" : "M"}${xa.map(p.x).toFixed(1)},${ya.map(p.y).toFixed(1)}`
    )
      .join(" ");
    o.push(
      `<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2"${
        s.dashed ? ' stroke-dasharray="5 3"' : ""
      }/>`,
    );
    for (const p of pts) {
      const x = xa.map(p.x);
      o.push(
        `<circle cx="${x.toFixed(1)}" cy="${ya.map(p.y).toFixed(1)}" r="3" fill="${s.color}"/>`,
      );
      if (p.lo !== undefined && p.hi !== undefined && p.hi > p.lo) {
        o.push(
          `<line x1="${x.toFixed(1)}" y1="${ya.map(p.lo).toFixed(1)}" x2="${x.toFixed(1)}" ` +
            `y2="${ya.map(p.hi).toFixed(1)}" stroke="${s.color}" stroke-width="1.2"/>`,
        );
      }
    }
  }
  o.push(...legend(series), "</svg>");
  return o.join("\n") + "\n";
}
