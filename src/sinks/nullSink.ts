import { confirmed, type OutboxMessage, type SendOutcome, type Sink } from './sink.js';

/** Confirms every message at once without sending it anywhere: measures the relay's own cost. */
export function createNullSink(): Sink {
  return {
    name: 'null',
    start: async () => {},
    sendBatch: async (messages: readonly OutboxMessage[]): Promise<SendOutcome[]> =>
      messages.map(() => confirmed),
    close: async () => {},
  };
}
