/**
 * Amazon Kinesis Data Streams sink, over `@aws-sdk/client-kinesis` `PutRecords`: up to 500
 * records (and 5 MiB) per call; the response carries one result per record, in order, so each
 * row gets the outcome of its own record.
 *
 * Wire format: Kinesis records have no headers, so the event travels in CloudEvents' structured
 * mode: each record's data is one `application/cloudevents+json` document whose `id` is the
 * event id (the key consumers deduplicate on), `type` the topic, `data` the payload.
 *
 * Partition key: the row's key (so a key's records stay on one shard, in order), else its event
 * id (spreading key-less rows evenly, and sending a re-sent row to the same shard as before).
 *
 * Outcomes:
 * - record has a SequenceNumber                     → confirmed
 * - record ErrorCode ProvisionedThroughputExceeded-  → failed retryable: the shard was over its
 *   Exception, KMSThrottlingException                  write limit; not stored
 * - record ErrorCode InternalFailure or any other    → failed retryable: Kinesis says the record
 *   (KMS key disabled, access denied ...)              was not stored; the reason is in the error
 * - record larger than 1 MiB (data + partition key), → failed permanent, before sending: Kinesis
 *   partition key over 256 characters                  refuses it every time
 * - the whole call throttled or refused (4xx:         → failed retryable: nothing was stored
 *   ProvisionedThroughputExceeded, LimitExceeded,
 *   ResourceNotFound, AccessDenied ...)
 * - connection refused, name not resolved             → deferred: nothing sent, no attempt counted
 * - the call failed after it was sent (5xx, reset,    → unknown: Kinesis may have stored any of
 *   timeout, the batch deadline)                        its records
 * - the call not started by the batch deadline       → deferred: nothing sent; the row goes back
 *   (more calls than `concurrency` in one batch), or    as claimed, no attempt counted
 *   not started because the batch has less than 1.5
 *   times Kinesis's recent answer time left
 *   (answerTime.ts; a batch's first call always starts)
 *
 * HTTP: the SDK's NodeHttpHandler (HTTP/1.1 with keep-alive). Kinesis endpoints also speak HTTP/2,
 * which the SDK would otherwise pick, and which fails against HTTP/1.1-only emulators such as
 * kinesalite (`ERR_HTTP2_ERROR`).
 */
import {
  DescribeStreamSummaryCommand,
  KinesisClient,
  PutRecordsCommand,
  type PutRecordsRequestEntry,
  type PutRecordsResultEntry,
} from '@aws-sdk/client-kinesis';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import http from 'node:http';
import https from 'node:https';
import { maskSecrets } from '../redact.js';
import { ConfigError, ShardRelayError, toError } from '../errors.js';
import { silentLogger, type Logger } from '../logger.js';
import { AnswerTime } from './answerTime.js';
import { parseBrokerUrl } from './brokerUrl.js';
import { fromTopicTemplate } from './topicTemplate.js';
import { eventSource, structuredJson } from './cloudEvent.js';
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

/** The subset of the client the sink uses: tests wrap it to inject per-record failures. */
export interface KinesisApi {
  send(
    command: PutRecordsCommand,
    options?: { abortSignal?: AbortSignal },
  ): Promise<{
    readonly Records?: readonly PutRecordsResultEntry[] | undefined;
    readonly FailedRecordCount?: number | undefined;
  }>;
  send(
    command: DescribeStreamSummaryCommand,
    options?: { abortSignal?: AbortSignal },
  ): Promise<{
    readonly StreamDescriptionSummary?: { readonly StreamStatus?: string | undefined } | undefined;
  }>;
  destroy(): void;
}

export interface KinesisSinkOptions {
  /** The stream; `{topic}` is replaced by the outbox topic. Default `shardrelay`. */
  readonly stream?: string;
  /** AWS region. Default: the SDK's (AWS_REGION, the profile), else `us-east-1`. */
  readonly region?: string;
  /** Endpoint URL, for emulators, VPC endpoints or FIPS endpoints. Default: the region's. */
  readonly endpoint?: string;
  /** Explicit credentials; default: the SDK's provider chain (environment, profile, instance role). */
  readonly credentials?: {
    readonly accessKeyId: string;
    readonly secretAccessKey: string;
    readonly sessionToken?: string;
  };
  /** Records per PutRecords call, 1..500. Default 500. */
  readonly recordsPerCall?: number;
  /**
   * Attempts the SDK makes per call (its standard retry mode, which retries throttling and
   * connection errors with back-off within the batch deadline). Default 3; 1 leaves every retry to
   * the relay.
   */
  readonly maxAttempts?: number;
  /** PutRecords calls of one batch in flight at once. Default 4. */
  readonly concurrency?: number;
  /** CloudEvents `source` attribute. Default `shardrelay`. */
  readonly source?: string;
  /** Upper bound of `start()`'s stream check. Default 10 000 ms. */
  readonly connectTimeoutMs?: number;
  /** A client to use instead of building one (tests wrap the real one); `region`, `endpoint`, `credentials` are then ignored. */
  readonly client?: KinesisApi;
  /** Pass the relay's logger; default silent. */
  readonly log?: Logger;
}

export const DEFAULT_KINESIS_STREAM = 'shardrelay';

/** Kinesis limits (PutRecords API reference). */
const LIMITS = {
  recordsPerCall: 500,
  bytesPerCall: 5 * 1024 * 1024,
  /** Data plus partition key of one record. */
  bytesPerRecord: 1024 * 1024,
  partitionKeyChars: 256,
} as const;

const DEFAULTS = { concurrency: 4, connectTimeoutMs: 10_000, region: 'us-east-1' } as const;

/** Per-record codes that mean "over the write limit": retry later. */
const THROTTLED = new Set(['ProvisionedThroughputExceededException', 'KMSThrottlingException']);

/** Whole-call errors that mean nothing was stored (the request was refused before any write). */
const REFUSED_CALL = new Set([
  'ProvisionedThroughputExceededException',
  'LimitExceededException',
  'ResourceNotFoundException',
  'ResourceInUseException',
  'AccessDeniedException',
  'KMSThrottlingException',
  'KMSAccessDeniedException',
  'KMSDisabledException',
  'KMSInvalidStateException',
  'KMSNotFoundException',
  'KMSOptInRequired',
  'ValidationException',
  'InvalidArgumentException',
  'ExpiredIteratorException',
  'UnrecognizedClientException',
  'InvalidSignatureException',
  'ExpiredTokenException',
]);

/** Socket errors raised before a request was written: nothing reached Kinesis. */
const NOT_CONNECTED = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);

/** The outcome of one record of a PutRecords response. */
export function kinesisRecordOutcome(result: PutRecordsResultEntry | undefined, stream: string): SendOutcome {
  if (result?.SequenceNumber && !result.ErrorCode) return confirmed;
  if (!result) return unknown(`Kinesis returned no result for the record (stream ${stream})`);
  const reason = `${result.ErrorCode ?? 'no error code'}: ${result.ErrorMessage ?? 'no message'}`;
  if (THROTTLED.has(result.ErrorCode ?? '')) {
    return retryable(`Kinesis throttled the record (stream ${stream}): ${reason}`);
  }
  return retryable(`Kinesis did not store the record (stream ${stream}): ${reason}`);
}

/** The outcome of every record of a PutRecords call that threw. */
export function kinesisCallOutcome(
  error: unknown,
  stream: string,
  scrub: (text: string) => string,
): SendOutcome {
  const e = error as { name?: unknown; code?: unknown; $metadata?: { httpStatusCode?: number } } | null;
  const name = typeof e?.name === 'string' ? e.name : '';
  const code = typeof e?.code === 'string' ? e.code : '';
  const status = e?.$metadata?.httpStatusCode;
  const text = `Kinesis PutRecords failed (stream ${stream}): ${name ? `${name}: ` : ''}${scrub(toError(error).message)}`;
  // Kinesis unreachable: nothing was sent, and an outage must not spend the rows' attempts.
  if (NOT_CONNECTED.has(code)) return deferred(text);
  if (REFUSED_CALL.has(name) || (status !== undefined && status >= 400 && status < 500)) {
    return retryable(text);
  }
  return unknown(text);
}

export function createKinesisSink(options: KinesisSinkOptions): Sink {
  const streamTemplate = options.stream ?? DEFAULT_KINESIS_STREAM;
  const recordsPerCall = options.recordsPerCall ?? LIMITS.recordsPerCall;
  const concurrency = options.concurrency ?? DEFAULTS.concurrency;
  const connectTimeoutMs = options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs;
  const source = eventSource(options.source);
  const sourceJson = JSON.stringify(source);
  const log = (options.log ?? silentLogger).child({ sink: 'kinesis' });
  validate(streamTemplate, recordsPerCall, concurrency);
  const streamOf = fromTopicTemplate(streamTemplate);
  const endpoint = options.endpoint
    ? parseBrokerUrl(
        options.endpoint,
        'kinesis endpoint',
        ['http:', 'https:'],
        'https://kinesis.eu-west-1.amazonaws.com',
      ).toString()
    : undefined;
  const secrets = [options.credentials?.secretAccessKey, options.credentials?.sessionToken];
  const scrub = (text: string): string => maskSecrets(text, secrets);
  const where = endpoint ?? `region ${options.region ?? process.env.AWS_REGION ?? DEFAULTS.region}`;

  const client: KinesisApi =
    options.client ??
    (new KinesisClient({
      region: options.region ?? process.env.AWS_REGION ?? DEFAULTS.region,
      ...(endpoint ? { endpoint } : {}),
      ...(options.credentials ? { credentials: options.credentials } : {}),
      maxAttempts: options.maxAttempts ?? 3,
      requestHandler: new NodeHttpHandler({
        connectionTimeout: connectTimeoutMs,
        httpAgent: new http.Agent({ keepAlive: true, maxSockets: 64 }),
        httpsAgent: new https.Agent({ keepAlive: true, maxSockets: 64 }),
      }),
    }) as unknown as KinesisApi);

  async function checkStream(stream: string): Promise<void> {
    const signal = AbortSignal.timeout(connectTimeoutMs);
    let status: string | undefined;
    try {
      const described = await client.send(new DescribeStreamSummaryCommand({ StreamName: stream }), {
        abortSignal: signal,
      });
      status = described.StreamDescriptionSummary?.StreamStatus;
    } catch (error) {
      if ((error as { name?: unknown }).name === 'ResourceNotFoundException') {
        throw new ConfigError(
          'kinesis stream',
          `stream '${stream}' does not exist at ${where}`,
          'create it (aws kinesis create-stream), or name an existing one',
        );
      }
      throw new ShardRelayError(
        'SINK_UNAVAILABLE',
        `cannot reach Kinesis at ${where}: ${scrub(toError(error).message)}`,
        {
          context: { sink: 'kinesis', endpoint: where, stream },
          fix: /credential|signature|token|security/i.test(toError(error).message)
            ? 'check the AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile or role) and their kinesis:PutRecords permission'
            : 'check the region, the endpoint and the network path to Kinesis',
        },
      );
    }
    if (status !== 'ACTIVE' && status !== 'UPDATING') {
      log.warn({ stream, status }, 'Kinesis stream is not ACTIVE; writes fail until it is');
    }
  }

  /** The record of a message and its size against Kinesis's limits, or why it cannot be sent. */
  function entryOf(message: OutboxMessage): { entry: PutRecordsRequestEntry; bytes: number } | string {
    const partitionKey = message.key ?? message.eventId;
    if (partitionKey.length === 0 || partitionKey.length > LIMITS.partitionKeyChars) {
      return `partition key of ${partitionKey.length} characters; Kinesis takes 1 to ${LIMITS.partitionKeyChars}`;
    }
    let data: Buffer;
    try {
      data = Buffer.from(structuredJson(message, source, sourceJson), 'utf8');
    } catch (error) {
      return `cannot encode the event: ${scrub(toError(error).message)}`;
    }
    const bytes = data.length + Buffer.byteLength(partitionKey, 'utf8');
    if (bytes > LIMITS.bytesPerRecord) {
      return `record of ${bytes} bytes (data + partition key) exceeds Kinesis's ${LIMITS.bytesPerRecord}`;
    }
    return { entry: { Data: data, PartitionKey: partitionKey }, bytes };
  }

  /**
   * PutRecords' recent answer time. A call still in flight at the batch deadline ends `unknown` for
   * all its records (up to 500), although Kinesis may store them a moment later: all re-sent. A call
   * the deadline would likely cut off is not started (its rows are deferred), as the HTTP sink does.
   */
  const answerTime = new AnswerTime();

  async function put(
    stream: string,
    entries: readonly { entry: PutRecordsRequestEntry; index: number }[],
    outcomes: SendOutcome[],
    signal: AbortSignal,
  ): Promise<void> {
    const startedAt = performance.now();
    try {
      const response = await client.send(
        new PutRecordsCommand({ StreamName: stream, Records: entries.map((e) => e.entry) }),
        { abortSignal: signal },
      );
      answerTime.record(performance.now() - startedAt);
      entries.forEach((e, i) => {
        outcomes[e.index] = kinesisRecordOutcome(response.Records?.[i], stream);
      });
      if ((response.FailedRecordCount ?? 0) > 0) {
        log.debug(
          { stream, failed: response.FailedRecordCount, records: entries.length },
          'Kinesis refused some records',
        );
      }
    } catch (error) {
      if (!signal.aborted) answerTime.record(performance.now() - startedAt);
      const outcome = signal.aborted
        ? unknown(`no PutRecords answer from Kinesis before the batch deadline (stream ${stream})`)
        : kinesisCallOutcome(error, stream, scrub);
      for (const e of entries) outcomes[e.index] = outcome;
    }
  }

  return {
    name: 'kinesis',

    async start() {
      if (!streamTemplate.includes('{topic}')) await checkStream(streamTemplate);
      log.info({ endpoint: where, stream: streamTemplate }, 'Kinesis sink ready');
    },

    async sendBatch(messages: readonly OutboxMessage[], context: SendContext): Promise<SendOutcome[]> {
      const outcomes: SendOutcome[] = new Array<SendOutcome>(messages.length);
      /** Calls to make: per stream, chunks within the record and byte limits of one call. */
      const calls: { stream: string; entries: { entry: PutRecordsRequestEntry; index: number }[] }[] = [];
      const open = new Map<
        string,
        { stream: string; entries: { entry: PutRecordsRequestEntry; index: number }[]; bytes: number }
      >();
      messages.forEach((message, index) => {
        const record = entryOf(message);
        if (typeof record === 'string') {
          outcomes[index] = permanent(record);
          return;
        }
        const { entry, bytes } = record;
        const stream = streamOf(message.topic);
        let call = open.get(stream);
        if (!call || call.entries.length >= recordsPerCall || call.bytes + bytes > LIMITS.bytesPerCall) {
          call = { stream, entries: [], bytes: 0 };
          open.set(stream, call);
          calls.push(call);
        }
        call.entries.push({ entry, index });
        call.bytes += bytes;
      });
      const signal = AbortSignal.timeout(Math.max(1, context.deadline - Date.now()));
      let next = 0;
      let started = false;
      const worker = async (): Promise<void> => {
        while (next < calls.length) {
          const call = calls[next++] as (typeof calls)[number];
          const notSent = signal.aborted
            ? 'not sent: the batch deadline passed before its PutRecords call'
            : started
              ? answerTime.tooLate(context.deadline - Date.now(), "Kinesis's")
              : undefined;
          if (notSent !== undefined) {
            for (const e of call.entries) outcomes[e.index] = heldBySink(notSent);
            continue;
          }
          started = true;
          await put(call.stream, call.entries, outcomes, signal);
        }
      };
      await Promise.all(Array.from({ length: Math.min(concurrency, calls.length) }, worker));
      return outcomes;
    },

    async close() {
      client.destroy();
    },
  };
}

function validate(stream: string, recordsPerCall: number, concurrency: number): void {
  if (stream.length === 0 || stream.length > 128) {
    throw new ConfigError(
      'kinesis stream',
      `'${stream}' is not 1 to 128 characters`,
      'give a stream name such as shardrelay',
    );
  }
  if (!Number.isInteger(recordsPerCall) || recordsPerCall < 1 || recordsPerCall > LIMITS.recordsPerCall) {
    throw new ConfigError(
      'kinesis recordsPerCall',
      `${recordsPerCall} is out of range`,
      `use 1 to ${LIMITS.recordsPerCall}`,
    );
  }
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new ConfigError(
      'kinesis concurrency',
      `${concurrency} is not a positive whole number`,
      'use e.g. 4',
    );
  }
}
