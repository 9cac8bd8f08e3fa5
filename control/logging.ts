/**
 * Logging setup for remora with LogTape: every record goes to stderr (stdout
 * belongs to the target program), as text, colored on a terminal, or as one
 * JSON object per line with `--log-json` for log shippers.
 *
 * Modules log under categories starting with `remora`, e.g.
 * `getLogger(["remora", "pager"])`.
 *
 * @module
 */

import {
  configure,
  getAnsiColorFormatter,
  getJsonLinesFormatter,
  getTextFormatter,
  type LogRecord,
  type Sink,
  type TextFormatter,
} from "@logtape/logtape";
import { suspendProgress } from "./progress.ts";

/** Log levels accepted by `--log-level`. */
export const LOG_LEVELS = ["debug", "info", "warning", "error"] as const;

/** One of {@linkcode LOG_LEVELS}. */
export type LogLevelName = typeof LOG_LEVELS[number];

/** Options of {@linkcode setupLogging}. */
export interface LoggingOptions {
  /** Lowest level written. */
  level: LogLevelName;
  /** One JSON object per line instead of text. */
  json: boolean;
  /** Where lines go; stderr by default (tests pass a collector). */
  writer?: { writeSync(p: Uint8Array): number };
  /** Force or forbid ANSI colors; by default only when stderr is a terminal. */
  color?: boolean;
}

/**
 * Checks a `--log-level` value.
 *
 * @param text The value as typed (case-insensitive; `warn` means `warning`).
 * @returns The level.
 * @throws {RangeError} Naming the accepted levels.
 */
export function parseLogLevelName(text: string): LogLevelName {
  const t = text.trim().toLowerCase();
  const level = t === "warn" ? "warning" : t;
  if ((LOG_LEVELS as readonly string[]).includes(level)) return level as LogLevelName;
  throw new RangeError(`invalid --log-level "${text}": use one of ${LOG_LEVELS.join(", ")}`);
}

const encoder = new TextEncoder();

/**
 * A sink writing formatted lines synchronously, so that a line logged just
 * before the process exits is not lost, and around the progress line.
 */
function lineSink(
  formatter: TextFormatter,
  writer: { writeSync(p: Uint8Array): number },
): Sink {
  return (record: LogRecord) => {
    let line = formatter(record);
    if (!line.endsWith("\n")) line += "\n";
    const bytes = encoder.encode(line);
    suspendProgress(() => {
      let off = 0;
      while (off < bytes.length) off += writer.writeSync(bytes.subarray(off));
    });
  };
}

/**
 * Renders the message for JSON lines the way a person reads it: strings bare
 * (LogTape would quote them), an `Error` as `Name: message` (it would print
 * `{}`), anything else as JSON. The values stay typed in the flattened
 * properties for machines; the message is for people.
 */
function readableMessage(inner: TextFormatter): TextFormatter {
  return (record: LogRecord) => {
    if (record.message.length === 1) return inner(record);
    let text = "";
    record.message.forEach((part, i) => {
      if (i % 2 === 0) text += part as string;
      else if (typeof part === "string") text += part;
      else if (part instanceof Error) text += `${part.name}: ${part.message}`;
      else {
        try {
          text += JSON.stringify(part) ?? String(part);
        } catch {
          text += String(part);
        }
      }
    });
    return inner({ ...record, message: [text] });
  };
}

/**
 * Configures LogTape for the `remora` categories. Call once at start; calling
 * again replaces the configuration (`reset`).
 *
 * @param opts Level and format.
 *
 * @example
 * ```ts
 * await setupLogging({ level: "info", json: false });
 * getLogger(["remora", "pager"]).info("attached to {pid}", { pid });
 * ```
 */
export async function setupLogging(opts: LoggingOptions): Promise<void> {
  const writer = opts.writer ?? Deno.stderr;
  let color = opts.color;
  if (color === undefined) {
    // Deno.noColor honours NO_COLOR without needing --allow-env.
    color = writer === Deno.stderr && Deno.stderr.isTerminal() && !Deno.noColor;
  }
  const textOptions = {
    timestamp: "time" as const,
    level: "ABBR" as const,
    category: ".",
    // Strings as typed, not quoted: log values are mostly paths and addresses.
    value: "bare" as const,
  };
  const formatter: TextFormatter = opts.json
    ? readableMessage(
      getJsonLinesFormatter({ categorySeparator: ".", message: "rendered", properties: "flatten" }),
    )
    : color
    ? getAnsiColorFormatter(textOptions)
    : getTextFormatter(textOptions);
  await configure({
    reset: true,
    sinks: { stderr: lineSink(formatter, writer) },
    loggers: [
      { category: ["remora"], lowestLevel: opts.level, sinks: ["stderr"] },
      // LogTape's own warnings (e.g. a sink that threw) are worth seeing.
      { category: ["logtape", "meta"], lowestLevel: "warning", sinks: ["stderr"] },
    ],
  });
}
