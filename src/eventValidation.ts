import { InvalidEventError } from './errors.js';

/**
 * Text that PostgreSQL refuses to store, found before the insert. Refused in the database instead,
 * it would abort the caller's whole transaction (its business change included) with a raw error:
 * - NUL (U+0000): `text` cannot hold it ("invalid byte sequence for encoding UTF8: 0x00") and
 *   `jsonb` refuses the escape `\u0000` (22P05, "unsupported Unicode escape sequence");
 * - a lone UTF-16 surrogate (U+D800-U+DFFF without its pair): JSON.stringify writes it as an escape
 *   that `jsonb` refuses (22P02), and in a `text` column the driver would silently store U+FFFD
 *   instead, so the message would not be the one enqueued.
 */
const UNSTORABLE = /\0|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** The same characters as JSON.stringify writes them (it escapes NUL and lone surrogates). */
const UNSTORABLE_IN_JSON = /\\u0000|\\ud[89a-f][0-9a-f]{2}/i;

const FIX =
  'remove NUL characters and unpaired UTF-16 surrogates (e.g. a string cut in the middle of an emoji) ' +
  'from the field, or encode binary data as base64';

function describe(text: string): string {
  const match = UNSTORABLE.exec(text);
  if (!match) return '';
  const char = match[0];
  const code = `U+${(char.codePointAt(0) ?? 0).toString(16).toUpperCase().padStart(4, '0')}`;
  const what = char === '\0' ? 'a NUL character (U+0000)' : `an unpaired UTF-16 surrogate (${code})`;
  return `${what} at character ${match.index}`;
}

function member(path: string, key: string): string {
  return /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`;
}

/** The path and problem of the first unstorable string in a JSON value (keys included). */
function findInJson(value: unknown, path: string): { field: string; problem: string } | undefined {
  if (typeof value === 'string') {
    const problem = describe(value);
    return problem ? { field: path, problem } : undefined;
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = findInJson(value[i], `${path}[${i}]`);
      if (found) return found;
    }
    return undefined;
  }
  if (value !== null && typeof value === 'object') {
    for (const [key, inner] of Object.entries(value)) {
      const keyProblem = describe(key);
      if (keyProblem) return { field: `${member(path, key)} (the key)`, problem: keyProblem };
      const found = findInJson(inner, member(path, key));
      if (found) return found;
    }
  }
  return undefined;
}

/** The text fields of an event as `enqueue` stores them (topic and traceparent are pattern-checked). */
export interface EventText {
  readonly key?: string | undefined;
  readonly headers?: Readonly<Record<string, string>> | undefined;
  readonly correlationId?: string | undefined;
}

/**
 * Throws an InvalidEventError naming the field (e.g. `payload.items[3].name`) when an event holds
 * text PostgreSQL would refuse. `payloadJson` is the payload as it will be stored: checking that
 * text costs one regular-expression scan, and only a payload that fails it is parsed again to find
 * the field, so valid events pay almost nothing.
 */
export function assertStorableText(index: number, event: EventText, payloadJson: string): void {
  const fail = (field: string, problem: string): never => {
    throw new InvalidEventError(index, `${field}: contains ${problem}, which PostgreSQL cannot store`, FIX);
  };
  for (const [field, value] of [
    ['key', event.key],
    ['correlationId', event.correlationId],
  ] as const) {
    const problem = value === undefined ? '' : describe(value);
    if (problem) fail(field, problem);
  }
  for (const [name, value] of Object.entries(event.headers ?? {})) {
    const nameProblem = describe(name);
    if (nameProblem) fail(`${member('headers', name)} (the name)`, nameProblem);
    const problem = describe(value);
    if (problem) fail(member('headers', name), problem);
  }
  if (UNSTORABLE_IN_JSON.test(payloadJson)) {
    const found = findInJson(JSON.parse(payloadJson) as unknown, 'payload');
    if (found) fail(found.field, found.problem);
  }
}
