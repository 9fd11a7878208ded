/**
 * The one place that hides credentials before text reaches a log, an error message or a terminal.
 *
 * Credentials sit in two places of a URL: the password of the user-info (`//user:SECRET@host`) and
 * query parameters (`?user=u&password=SECRET`, which libpq and node-postgres read, as `?token=`
 * for brokers). Both are masked wherever a URL appears in the text, whether the text is a URL,
 * a URL that does not parse (a port of 99999, several hosts), or a library's error message that
 * quotes one. A library may also echo a password without its URL (an authentication error that
 * quotes the login): every URL passed in `from` has its secrets masked wherever they occur. Pass
 * `from` only for a library's own messages (the sinks do): a password that equals an ordinary word
 * would otherwise mask that word everywhere.
 *
 * It works on the text, not through `new URL()`: the URLs that most need it in messages are the
 * ones that do not parse, and a parse-and-reformat would also change what the operator typed.
 * Quotes and angle brackets end a URL, so a URL inside a JSON log line or a quoted message is
 * masked without touching the text around it.
 */

/** Query parameters whose value is a credential (libpq: password, sslpassword; brokers: token...). */
const SECRET_PARAMETER =
  /^(?:.*pass(?:word)?|pwd|.*secret|.*token|api[-_]?key|access[-_]?key|auth|sig|signature)$/i;

/** `scheme://user:password@`: the password runs to the last `@` before the host part ends. */
const USER_INFO = /(\b[a-z][a-z0-9+.-]*:\/\/[^\s"'`<>:/?#@]*:)[^\s"'`<>/?#]*(?=@)/gi;

/** NATS reads a user-info without a password as a token: `nats://TOKEN@host`. */
const NATS_TOKEN = /(\b(?:nats|tls):\/\/)([^\s"'`<>:/?#@]+)(?=@)/gi;

/**
 * `?name=value` or `&name=value` (also `;`, and libpq's space-separated `password=value`), up to
 * the next separator.
 */
const QUERY_PARAMETER = /(^|[?&;\s])([A-Za-z0-9_.%-]+)=([^&;#\s"'`<>]*)/g;

const MASK = '***';

/** The literal secrets of a URL (its password and credential parameters), decoded as given. */
function secretsOf(url: string): string[] {
  const secrets: string[] = [];
  for (const match of url.matchAll(new RegExp(USER_INFO.source, 'gi'))) {
    secrets.push(match[0].slice(match[1]?.length ?? 0));
  }
  for (const match of url.matchAll(new RegExp(NATS_TOKEN.source, 'gi'))) {
    if (match[2]) secrets.push(match[2]);
  }
  for (const match of url.matchAll(QUERY_PARAMETER)) {
    if (SECRET_PARAMETER.test(decode(match[2] ?? '')) && match[3]) secrets.push(match[3]);
  }
  // Shorter strings are not searched for in free text: masking every "ab" would garble messages
  // (the URL forms above are still masked at any length).
  return secrets.flatMap((s) => [s, decode(s)]).filter((s) => s.length >= 3);
}

function decode(text: string): string {
  try {
    return decodeURIComponent(text.replace(/\+/g, ' '));
  } catch {
    return text;
  }
}

/**
 * Returns `text` with every credential masked as `***`: passwords and credential query parameters
 * of any URL in it, and every occurrence of the secrets of the URLs in `from`.
 */
export function redact(text: string, ...from: readonly string[]): string {
  const out = text
    // The placeholder of an example ("use postgres://user:password@host/db") is no secret.
    .replace(USER_INFO, (whole, head: string) =>
      whole.slice(head.length) === 'password' ? whole : `${head}${MASK}`,
    )
    .replace(NATS_TOKEN, `$1${MASK}`)
    .replace(QUERY_PARAMETER, (whole, separator: string, name: string) =>
      SECRET_PARAMETER.test(decode(name)) ? `${separator}${name}=${MASK}` : whole,
    );
  return maskSecrets(out, from.flatMap(secretsOf));
}

/**
 * Returns `text` with every occurrence of each given secret (a password, a token, a key given
 * apart from any URL, as a sink's SASL password or AWS key) masked as `***`. Empty and undefined
 * secrets are skipped. Longest first, so a secret that contains another is masked whole.
 */
export function maskSecrets(text: string, secrets: readonly (string | undefined)[]): string {
  const given = [...new Set(secrets)].filter((s): s is string => typeof s === 'string' && s.length > 0);
  let out = text;
  for (const secret of given.sort((a, b) => b.length - a.length)) out = out.split(secret).join(MASK);
  return out;
}
