/**
 * HTTP webhook sink: POSTs each outbox row as a structured-mode CloudEvent
 * (`content-type: application/cloudevents+json`) with Node's built-in fetch. A 2xx answer is the
 * confirm.
 *
 * Outcomes, per message:
 * - 2xx                                        → confirmed
 * - 408, 429, 5xx, a network error, no answer  → failed retryable (the receiver may come back)
 *   within `timeoutMs`                           with its `Retry-After` (seconds or an HTTP date)
 *                                                as the earliest retry, within the retry cap
 * - connection refused, name not resolved      → deferred: nothing sent, no attempt counted
 * - no answer by the batch deadline            → unknown (the receiver may have processed it)
 * - not started by the batch deadline (waiting → deferred: nothing was sent; the row goes back
 *   for a request slot, or too little time left   as claimed, no attempt counted
 *   for the receiver's recent answer time)
 * - 3xx                                        → failed permanent: redirects are not followed,
 *                                                since re-POSTing an event to wherever a server
 *                                                points is not what the operator configured
 * - any other 4xx                              → failed permanent, with the status and the start
 *                                                of the response body
 * Receivers see each event at least once and must deduplicate on the CloudEvent `id`.
 *
 * At most `concurrency` requests are in flight per sink, across all concurrent batches, so a
 * burst of batches cannot open hundreds of sockets to the receiver. A request whose batch has less
 * than 1.5 times the receiver's recent answer time left is not started (deferred, nothing sent):
 * it would likely be cut off at the deadline after the receiver took it (answerTime.ts).
 * The first request of a batch always starts, so the answer time stays current.
 */
import { ConfigError, toError } from '../errors.js';
import { redact } from '../redact.js';
import { parseBrokerUrl } from './brokerUrl.js';
import { parseRetryAfter } from './retryAfter.js';
import { AnswerTime } from './answerTime.js';
import {
  STRUCTURED_CONTENT_TYPE,
  eventSource,
  structuredJson,
  writeApplicationHeaders,
} from './cloudEvent.js';
import { settleByDeadline } from './deadline.js';
import {
  confirmed,
  deferred,
  heldBySink,
  permanent,
  retryable,
  unknown,
  type OutboxMessage,
  type SendContext,
  type SendOutcome,
  type Sink,
} from './sink.js';

export interface HttpSinkOptions {
  /** Where events are POSTed. Credentials do not belong in it: pass `headers.authorization`. */
  readonly url: string;
  /** Per-request limit; a request without an answer by then fails as retryable. Default 10 000 ms. */
  readonly timeoutMs?: number;
  /** Requests in flight at most, across all batches. Default 16. */
  readonly concurrency?: number;
  /** Sent with every request (e.g. authorization); they take precedence over a row's own headers. */
  readonly headers?: Readonly<Record<string, string>>;
  /** CloudEvents `source` attribute. Default `shardrelay`. */
  readonly source?: string;
}

const DEFAULTS = { timeoutMs: 10_000, concurrency: 16 } as const;

const WAITED_PAST_DEADLINE = heldBySink(
  'not sent: the batch deadline passed while waiting for a free request slot',
);
const NO_ANSWER = unknown('no confirm before the batch deadline');

/** How much of an error response's body goes into the outcome (and so into `last_error`). */
const BODY_EXCERPT_CHARS = 200;

/**
 * Headers a row may not set: fetch manages framing and connection headers itself (undici throws on
 * some of them), and the envelope owns the content type.
 */
const RESERVED_HEADERS = new Set([
  'connection',
  'content-length',
  'content-type',
  'expect',
  'host',
  'keep-alive',
  'transfer-encoding',
  'upgrade',
]);

function isReservedHeader(lowerCaseName: string): boolean {
  return RESERVED_HEADERS.has(lowerCaseName);
}

export function createHttpSink(options: HttpSinkOptions): Sink {
  const url = validateUrl(options.url);
  const where = redact(options.url);
  const source = eventSource(options.source);
  const sourceJson = JSON.stringify(source);
  const timeoutMs = positiveInteger('http timeoutMs', options.timeoutMs ?? DEFAULTS.timeoutMs, 'e.g. 10000');
  const limit = createLimiter(
    positiveInteger('http concurrency', options.concurrency ?? DEFAULTS.concurrency, 'e.g. 16'),
  );
  const fixedHeaders = lowerCaseKeys(options.headers ?? {});
  const answerTime = new AnswerTime();
  let closed = false;

  async function post(
    message: OutboxMessage,
    deadline: number,
    batch: { started: boolean; requested: boolean[] },
    index: number,
  ): Promise<SendOutcome> {
    let body: Buffer;
    let headers: Record<string, string>;
    try {
      body = Buffer.from(structuredJson(message, source, sourceJson), 'utf8');
      headers = {};
      writeApplicationHeaders(headers, message, isReservedHeader);
      Object.assign(headers, fixedHeaders);
      headers['content-type'] = STRUCTURED_CONTENT_TYPE;
    } catch (error) {
      return permanent(`cannot encode the event: ${toError(error).message}`);
    }
    const remaining = deadline - Date.now();
    // Queued behind the concurrency limit until the deadline: nothing was sent.
    if (remaining <= 0) return WAITED_PAST_DEADLINE;
    const tooLate = batch.started ? answerTime.tooLate(remaining, "the receiver's") : undefined;
    if (tooLate !== undefined) return heldBySink(tooLate);
    batch.started = true;
    batch.requested[index] = true;
    const startedAt = performance.now();
    // Whichever comes first: the per-request timeout (retryable) or the batch deadline (unknown,
    // the same verdict settleByDeadline gives; aborting also frees the socket at once).
    const byDeadline = remaining <= timeoutMs;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), Math.min(remaining, timeoutMs));
    try {
      const response = await fetch(url, {
        method: 'POST',
        headers,
        body,
        redirect: 'manual',
        signal: controller.signal,
      });
      answerTime.record(performance.now() - startedAt);
      if (response.status >= 200 && response.status < 300) {
        // Read the body to the end so undici can reuse the connection.
        await response.arrayBuffer().catch(() => undefined);
        return confirmed;
      }
      const excerpt = await bodyExcerpt(response);
      const detail = `${where} answered ${response.status} ${response.statusText}${excerpt ? `: ${excerpt}` : ''}`;
      if (response.status === 408 || response.status === 429 || response.status >= 500) {
        const retryAfterMs = parseRetryAfter(response.headers.get('retry-after'));
        return retryable(
          retryAfterMs === undefined
            ? detail
            : `${detail} (Retry-After ${Math.round(retryAfterMs / 1000)} s)`,
          retryAfterMs,
        );
      }
      if (response.status >= 300 && response.status < 400) {
        const location = response.headers.get('location');
        return permanent(
          `${detail} (redirect${location ? ` to ${location}` : ''} not followed; configure the final URL)`,
        );
      }
      return permanent(detail);
    } catch (error) {
      if (controller.signal.aborted) {
        return byDeadline
          ? unknown(`no answer from ${where} before the batch deadline`)
          : retryable(`no answer from ${where} within ${timeoutMs} ms`);
      }
      // Refused or unresolvable before a connection existed: the receiver cannot have the event.
      // Any other failure (a reset or close mid-request) may come after the receiver took it.
      return neverConnected(error)
        ? deferred(`request to ${where} failed: ${networkReason(error)}`)
        : unknown(`request to ${where} failed mid-request: ${networkReason(error)}`);
    } finally {
      clearTimeout(timer);
    }
  }

  return {
    name: 'http',

    async start() {
      // Nothing to open: connections are made per request (and pooled by fetch). The receiver's
      // availability shows in the outcomes, not as a start failure that would stop the relay.
    },

    async sendBatch(messages: readonly OutboxMessage[], context: SendContext): Promise<SendOutcome[]> {
      if (closed) return messages.map(() => retryable('the HTTP sink is closed'));
      const batch = { started: false, requested: new Array<boolean>(messages.length).fill(false) };
      return settleByDeadline(
        messages.map((message, i) => limit(() => post(message, context.deadline, batch, i))),
        context.deadline,
        // Still queued for a slot at the deadline: never sent (post() sends nothing once it passed).
        (i) => (batch.requested[i] ? NO_ANSWER : WAITED_PAST_DEADLINE),
      );
    },

    async close() {
      closed = true;
    },
  };
}

/** Runs at most `max` tasks at once; the rest wait in FIFO order. */
function createLimiter(max: number): <T>(task: () => Promise<T>) => Promise<T> {
  let active = 0;
  const waiting: (() => void)[] = [];
  const release = (): void => {
    active -= 1;
    waiting.shift()?.();
  };
  return async (task) => {
    if (active >= max) await new Promise<void>((resolve) => waiting.push(resolve));
    active += 1;
    try {
      return await task();
    } finally {
      release();
    }
  };
}

async function bodyExcerpt(response: Response): Promise<string> {
  try {
    const text = (await response.text()).replace(/\s+/g, ' ').trim();
    return text.length > BODY_EXCERPT_CHARS ? `${text.slice(0, BODY_EXCERPT_CHARS)}…` : text;
  } catch {
    return '';
  }
}

/** fetch reports every network failure as "fetch failed"; the useful part is in `cause`. */
/** Error codes of a request that failed before any connection to the receiver existed. */
const NEVER_CONNECTED = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'UND_ERR_CONNECT_TIMEOUT',
]);

function neverConnected(error: unknown): boolean {
  const code = (toError(error).cause as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && NEVER_CONNECTED.has(code);
}

function networkReason(error: unknown): string {
  const outer = toError(error);
  const cause = outer.cause === undefined ? undefined : toError(outer.cause);
  const code = (outer.cause as { code?: unknown } | undefined)?.code;
  if (!cause) return outer.message;
  return typeof code === 'string' && !cause.message.includes(code)
    ? `${code} ${cause.message}`
    : cause.message;
}

function validateUrl(raw: string): URL {
  const url = parseBrokerUrl(raw, 'http url', ['http:', 'https:'], 'https://receiver.example/events');
  if (url.username || url.password) {
    // fetch refuses URLs with credentials; say how to pass them instead.
    throw new ConfigError(
      'http url',
      `${redact(raw)} contains credentials`,
      'remove them from the URL and pass an authorization header (headers: { authorization: ... })',
    );
  }
  return url;
}

function positiveInteger(setting: string, value: number, example: string): number {
  if (!Number.isInteger(value) || value <= 0) {
    throw new ConfigError(setting, `${value} is not a positive whole number`, `use ${example}`);
  }
  return value;
}

function lowerCaseKeys(headers: Readonly<Record<string, string>>): Record<string, string> {
  return Object.fromEntries(Object.entries(headers).map(([name, value]) => [name.toLowerCase(), value]));
}
