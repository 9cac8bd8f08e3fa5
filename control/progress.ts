/**
 * A one-line terminal progress indicator on stderr for long operations
 * (attach scan, detach restore, benchmark runs).
 *
 * It redraws in place with `\r` and stays completely quiet when stderr is not
 * a terminal, so logs captured by CI or a file never fill with half-lines.
 * Log lines written through {@linkcode suspendProgress} (the logging sink
 * does this) erase the line first and redraw it after, so the two do not
 * interleave.
 *
 * @module
 */

/** Where the line is drawn; `Deno.stderr` by default. */
export interface ProgressWriter {
  /** Writes some bytes, returning how many were written. */
  writeSync(p: Uint8Array): number;
}

/** Options of {@linkcode Progress}. */
export interface ProgressOptions {
  /** The amount that means done (e.g. pages to restore); omit for an open-ended count. */
  total?: number;
  /** Unit shown after the count, e.g. `pages`; empty by default. */
  unit?: string;
  /** Force drawing on or off; by default drawn only when stderr is a terminal. */
  enabled?: boolean;
  /** Destination; `Deno.stderr` by default. */
  writer?: ProgressWriter;
  /** Line width to stay within; by default the terminal's, or 80. */
  columns?: number;
  /** Minimum milliseconds between redraws (default 100): drawing is not free. */
  intervalMs?: number;
}

const encoder = new TextEncoder();
/** Carriage return + "erase entire line". */
const CLEAR = "\r\x1b[2K";
const SPINNER = "|/-\\";

/** The progress line currently on screen, if any (there is only one line). */
let active: Progress | undefined;

function writeAll(w: ProgressWriter, text: string): void {
  const bytes = encoder.encode(text);
  let off = 0;
  while (off < bytes.length) off += w.writeSync(bytes.subarray(off));
}

function stderrIsTerminal(): boolean {
  try {
    return Deno.stderr.isTerminal();
  } catch {
    return false;
  }
}

function formatSeconds(s: number): string {
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m}m${String(Math.floor(s % 60)).padStart(2, "0")}s`;
}

/**
 * A progress line. Create it, call {@linkcode Progress.update} as work
 * proceeds, and {@linkcode Progress.finish} at the end (or declare it with
 * `using` and let disposal finish it).
 *
 * @example
 * ```ts
 * using p = new Progress("restoring", { total: pages, unit: "pages" });
 * for (let i = 0; i < pages; i++) { restore(i); p.update(i + 1); }
 * ```
 */
export class Progress {
  /** Whether anything is drawn at all. */
  readonly enabled: boolean;
  readonly #label: string;
  readonly #total?: number;
  readonly #unit: string;
  readonly #writer: ProgressWriter;
  readonly #columns?: number;
  readonly #intervalMs: number;
  readonly #start = performance.now();
  #done = 0;
  #detail = "";
  #lastDraw = -Infinity;
  #frame = 0;
  #finished = false;

  /**
   * Starts a progress line (drawn on the first update).
   *
   * @param label What is happening, e.g. `attach scan`.
   * @param opts Total, unit and output options.
   */
  constructor(label: string, opts: ProgressOptions = {}) {
    this.#label = label;
    this.#total = opts.total;
    this.#unit = opts.unit ? ` ${opts.unit}` : "";
    this.#writer = opts.writer ?? Deno.stderr;
    this.#columns = opts.columns;
    this.#intervalMs = opts.intervalMs ?? 100;
    this.enabled = opts.enabled ?? stderrIsTerminal();
    if (this.enabled) {
      if (active) active.#clear();
      active = this;
    }
  }

  /**
   * Sets the amount done (and an optional short detail), redrawing at most
   * every `intervalMs`.
   *
   * @param done Units done so far.
   * @param detail A few words shown after the count, e.g. a rate.
   */
  update(done: number, detail?: string): void {
    this.#done = done;
    if (detail !== undefined) this.#detail = detail;
    if (!this.enabled || this.#finished) return;
    const now = performance.now();
    if (now - this.#lastDraw < this.#intervalMs && done !== this.#total) return;
    this.#lastDraw = now;
    this.#draw();
  }

  /**
   * Adds `n` to the amount done.
   *
   * @param n Units just finished (1 by default).
   */
  tick(n = 1): void {
    this.update(this.#done + n);
  }

  /**
   * Removes the line. With `message`, prints it as a normal line in its place
   * (only on a terminal: elsewhere the caller logs the outcome itself).
   *
   * @param message A closing line such as `restored 4096 pages in 1.2 s`.
   */
  finish(message?: string): void {
    if (this.#finished) return;
    this.#finished = true;
    if (!this.enabled) return;
    this.#clear();
    if (message) writeAll(this.#writer, `${this.#label}: ${message}\n`);
    if (active === this) active = undefined;
  }

  /** Finishes without a message; lets `using p = new Progress(...)` clean up. */
  [Symbol.dispose](): void {
    this.finish();
  }

  /** The line as it would be drawn now (without control characters). */
  render(): string {
    const elapsed = (performance.now() - this.#start) / 1000;
    const parts = [this.#label];
    if (this.#total !== undefined && this.#total > 0) {
      const frac = Math.min(1, Math.max(0, this.#done / this.#total));
      const width = 20;
      const filled = Math.round(frac * width);
      parts.push(`[${"#".repeat(filled)}${".".repeat(width - filled)}]`);
      parts.push(`${(frac * 100).toFixed(0).padStart(3)}%`);
      parts.push(`${this.#done}/${this.#total}${this.#unit}`);
      parts.push(formatSeconds(elapsed));
      if (frac > 0.02 && frac < 1) {
        parts.push(`eta ${formatSeconds((elapsed / frac) * (1 - frac))}`);
      }
    } else {
      parts.push(SPINNER[this.#frame++ % SPINNER.length]);
      parts.push(`${this.#done}${this.#unit}`);
      parts.push(formatSeconds(elapsed));
    }
    if (this.#detail) parts.push(this.#detail);
    return parts.join("  ");
  }

  #width(): number {
    if (this.#columns) return this.#columns;
    try {
      return Deno.consoleSize().columns;
    } catch {
      return 80;
    }
  }

  #draw(): void {
    // A line longer than the terminal wraps, and `\r` then only returns to
    // the start of the last row: cut it to fit instead.
    const line = this.render().slice(0, Math.max(10, this.#width() - 1));
    writeAll(this.#writer, CLEAR + line);
  }

  #clear(): void {
    writeAll(this.#writer, CLEAR);
  }

  /** Used by {@linkcode suspendProgress}. */
  static suspend<T>(fn: () => T): T {
    const p = active;
    if (!p || p.#finished) return fn();
    p.#clear();
    try {
      return fn();
    } finally {
      if (!p.#finished) p.#draw();
    }
  }
}

/**
 * Runs `fn` (which writes whole lines to the terminal) with the progress line
 * erased, then redraws it. A no-op wrapper when no line is showing.
 *
 * @param fn Writes output.
 * @returns What `fn` returns.
 */
export function suspendProgress<T>(fn: () => T): T {
  return Progress.suspend(fn);
}
