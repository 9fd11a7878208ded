import { ConfigError } from '../errors.js';
import { redact } from '../redact.js';

/**
 * Parses the URL of a broker or endpoint setting, or throws a ConfigError that names the setting,
 * the problem and an example. The message shows the URL with its password redacted, and the
 * error has no cause: Node's own URL error carries the input, password included.
 */
export function parseBrokerUrl(
  raw: string,
  setting: string,
  protocols: readonly `${string}:`[],
  example: string,
): URL {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(setting, `${redact(raw)} is not a URL`, `use e.g. ${example}`);
  }
  if (!protocols.includes(url.protocol as `${string}:`)) {
    throw new ConfigError(
      setting,
      `protocol ${url.protocol} is not ${protocols.join(' or ')}`,
      `use e.g. ${example}`,
    );
  }
  return url;
}
