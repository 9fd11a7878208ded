/**
 * The JetStream sink's stream: checks the stream settings, finds the stream at connect and, when
 * asked to, creates it. What is published into the stream, and what an ack means for a row, is the
 * sink's (jetStreamSink.ts).
 *
 * Creating is racy by nature (several replicas start at once), and NATS refuses a stream whose
 * subjects overlap another stream's; both cases are handled here so that the sink sees either a
 * usable stream or a ConfigError that says what to change.
 */
import { StorageType, RetentionPolicy, nanos, type NatsConnection, type StreamInfo } from 'nats';
import { ConfigError } from '../errors.js';
import type { Logger } from '../logger.js';

/** NATS server error codes (nats-server errors.json) this sink reacts to. */
const JS_STREAM_NOT_FOUND = 10059;
const JS_STREAM_NAME_IN_USE = 10058;
const JS_STREAM_SUBJECT_OVERLAP = 10065;

export type Streams = Awaited<ReturnType<NatsConnection['jetstreamManager']>>['streams'];

export interface StreamSettings {
  /** Stream name. */
  readonly stream: string;
  /** Events go to `<prefix>.<topic>`; a created stream captures `<prefix>.>`. */
  readonly prefix: string;
  /** Duplicate window of a created stream; an existing stream keeps its own. */
  readonly duplicateWindowMs: number;
  /** Create the stream when it is missing (else a missing stream is a ConfigError). */
  readonly ensureStream: boolean;
  /** The servers, credentials redacted, for error messages. */
  readonly where: string;
  readonly log: Logger;
}

/** Throws a ConfigError for a stream name, subject prefix or duplicate window NATS would refuse. */
export function validateStreamSettings(stream: string, prefix: string, duplicateWindowMs: number): void {
  if (!/^[A-Za-z0-9_-]+$/.test(stream)) {
    throw new ConfigError(
      'jetstream stream',
      `'${stream}' is not a valid stream name`,
      'use letters, digits, _ and -',
    );
  }
  if (prefix === '' || prefix.split('.').some((t) => t === '' || t === '*' || t === '>' || /\s/.test(t))) {
    throw new ConfigError(
      'jetstream subjectPrefix',
      `'${prefix}' is not a valid subject prefix`,
      'use dot-separated tokens without wildcards or whitespace, e.g. shardrelay',
    );
  }
  if (!Number.isFinite(duplicateWindowMs) || duplicateWindowMs <= 0) {
    throw new ConfigError(
      'jetstream duplicateWindowMs',
      `${duplicateWindowMs} is not a positive duration`,
      'use milliseconds, e.g. 120000 (2 minutes)',
    );
  }
}

/**
 * The stream the sink publishes into: created when missing and `ensureStream` is set, else looked
 * up. Settings of an existing stream that differ from the sink's are logged, never changed.
 */
export async function provisionStream(streams: Streams, settings: StreamSettings): Promise<StreamInfo> {
  const info = await (settings.ensureStream
    ? createOrInspect(streams, settings)
    : inspect(streams, settings));
  checkExisting(info, settings);
  return info;
}

async function inspect(streams: Streams, { stream, prefix, where }: StreamSettings): Promise<StreamInfo> {
  try {
    return await streams.info(stream);
  } catch (error) {
    if (apiErrorCode(error) === JS_STREAM_NOT_FOUND) {
      throw new ConfigError(
        'jetstream stream',
        `stream ${stream} does not exist on ${where}`,
        `create it with subjects "${prefix}.>", or let shardrelay create it (ensureStream: true)`,
      );
    }
    throw error;
  }
}

async function createOrInspect(streams: Streams, settings: StreamSettings): Promise<StreamInfo> {
  const { stream, prefix, duplicateWindowMs, log } = settings;
  try {
    return await streams.info(stream);
  } catch (error) {
    if (apiErrorCode(error) !== JS_STREAM_NOT_FOUND) throw error;
  }
  try {
    const created = await streams.add({
      name: stream,
      subjects: [`${prefix}.>`],
      // File storage: a stored event survives a server restart, which is what an ack promises.
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
      duplicate_window: nanos(duplicateWindowMs),
    });
    log.info({ stream, duplicateWindowMs }, 'created JetStream stream');
    return created;
  } catch (error) {
    // Another replica created it between our info and add: use theirs.
    if (apiErrorCode(error) === JS_STREAM_NAME_IN_USE) return streams.info(stream);
    if (apiErrorCode(error) === JS_STREAM_SUBJECT_OVERLAP) throw await overlapError(streams, settings);
    throw error;
  }
}

/**
 * A subject belongs to at most one stream, so NATS refuses a stream on `<prefix>.>` while
 * another stream captures any subject under it. Which one: the server's stream lookup by subject.
 */
async function overlapError(streams: Streams, { stream, prefix }: StreamSettings): Promise<ConfigError> {
  const other = await streams.find(`${prefix}.>`).catch(() => undefined);
  const owner = other ? `stream ${other}` : 'another stream';
  return new ConfigError(
    'jetstream stream',
    `cannot create stream ${stream} on "${prefix}.>": ${owner} already captures subjects under it`,
    other
      ? `publish into that stream (SHARDRELAY_NATS_STREAM=${other}, if it captures "${prefix}.>"), or give shardrelay a subject prefix that no other stream captures (SHARDRELAY_NATS_SUBJECT_PREFIX), or remove the overlapping subjects from ${other}`
      : `give shardrelay a subject prefix of its own (SHARDRELAY_NATS_SUBJECT_PREFIX) or remove the overlapping subjects from the other stream`,
  );
}

function checkExisting(info: StreamInfo, { stream, prefix, duplicateWindowMs, log }: StreamSettings): void {
  const subjects = info.config.subjects ?? [];
  if (!subjects.some((s) => s === `${prefix}.>` || s === '>')) {
    log.warn(
      { stream, subjects, expected: `${prefix}.>` },
      'the stream may not capture every event subject; publishes to uncaptured subjects fail as retryable',
    );
  }
  const windowMs = Math.round(info.config.duplicate_window / 1e6);
  if (windowMs !== duplicateWindowMs) {
    log.warn(
      { stream, streamWindowMs: windowMs, configuredWindowMs: duplicateWindowMs },
      'the existing stream has another duplicate window; it is left as it is',
    );
  }
}

function apiErrorCode(error: unknown): number | undefined {
  return (error as { api_error?: { err_code?: number } } | null)?.api_error?.err_code;
}
