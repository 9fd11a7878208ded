/**
 * The JetStream sink's connection settings: the client options built from the URL list, with the
 * credentials moved out of the URLs, the servers as they may appear in logs and errors (credentials
 * redacted), and the diagnosis of a failed start. Opening, watching and closing the connection is
 * the sink's (jetStreamSink.ts).
 */
import { ErrorCode, type ConnectionOptions } from 'nats';
import { ShardRelayError } from '../errors.js';
import { redact } from '../redact.js';
import { parseBrokerUrl } from './brokerUrl.js';

/** Client options from the URL list: credentials move out of the URLs into user/pass (or token). */
export function connectionOptions(url: string, timeout: number, pingInterval: number): ConnectionOptions {
  const servers: string[] = [];
  let user: string | undefined;
  let pass: string | undefined;
  for (const raw of url.split(',').map((u) => u.trim())) {
    const parsed = parseBrokerUrl(raw, 'nats url', ['nats:', 'tls:'], 'nats://host:4222');
    if (parsed.username) user = decodeURIComponent(parsed.username);
    if (parsed.password) pass = decodeURIComponent(parsed.password);
    servers.push(`${parsed.protocol}//${parsed.host}`);
  }
  const credentials =
    user !== undefined && pass === undefined ? { token: user } : user !== undefined ? { user, pass } : {};
  return {
    servers,
    ...credentials,
    name: 'shardrelay',
    timeout,
    pingInterval,
    maxPingOut: 2,
    // Reconnect forever: the relay keeps its rows pending meanwhile, and a closed client would need
    // the sink to rebuild it.
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
  };
}

/** The URL list with each URL's credentials redacted: what logs and error messages show. */
export function redactedServers(url: string): string {
  return url
    .split(',')
    .map((u) => redact(u.trim()))
    .join(',');
}

/** The error `start()` throws when connecting or the stream check failed with a client error. */
export function startError(error: unknown, where: string, message: string): ShardRelayError {
  const code = (error as { code?: unknown } | null)?.code;
  const fix =
    code === ErrorCode.AuthorizationViolation || code === ErrorCode.BadAuthentication
      ? 'check the credentials in the NATS URL'
      : code === ErrorCode.JetStreamNotEnabled || code === ErrorCode.NoResponders
        ? 'enable JetStream on the server (nats-server -js) or in the account'
        : 'check that nats-server is running and reachable at that address';
  return new ShardRelayError('SINK_UNAVAILABLE', `cannot use NATS JetStream at ${where}: ${message}`, {
    context: { sink: 'jetstream', url: where },
    fix,
  });
}
