/**
 * pg-boss, in the test file's own database: a pg-boss schema per destination (so queues and the
 * canary queue never mix between scenarios) and a consumer's own pg-boss working the topic's queue
 * and the canary queue, counting job ids (= event ids). The secret is the URL's password, which the
 * test server's trust authentication ignores and the sink must still never show.
 *
 * Not applicable: the link scenarios. The sink inserts jobs through the relay's claim transaction,
 * so it has no link of its own whose loss could leave a confirm pending: a lost database
 * connection aborts the claim and the rows stay claimed until their lease ends (the relay's crash
 * tests cover that). Oversized: PostgreSQL takes a jsonb up to 255 MiB, beyond any outbox row.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import PgBoss from 'pg-boss';
import { CANARY_TOPIC } from '../../../../src/observability/canary.js';
import { createPgBossSink } from '../../../../src/sinks/pgBossSink.js';
import { ReceivedIds, hostAndPort, uniqueName } from '../../../support/brokers.js';
import type { ConformanceTarget, Destination, Endpoint } from '../target.js';

const NO_LINK =
  'pg-boss inserts through the claim transaction: no link of its own to lose (a lost connection aborts the claim)';

export const pgbossTarget: ConformanceTarget = {
  name: 'pgboss',
  oversized: { notApplicable: 'PostgreSQL stores a jsonb payload up to 255 MiB; no outbox row reaches it' },
  notApplicable: { brokerDown: NO_LINK, linkCut: NO_LINK, stall: NO_LINK },
  async start({ databaseUrl }) {
    const secret = `pg-${randomBytes(8).toString('hex')}`;
    // A server that checks passwords (the embedded one; the machine's trusts loopback) takes the
    // secret only as a real role's: a role of this run's own, dropped at the end.
    const role = new URL(databaseUrl).password ? `conf_pgboss_${randomBytes(4).toString('hex')}` : undefined;
    if (role) await adminQuery(databaseUrl, `CREATE ROLE ${role} LOGIN SUPERUSER PASSWORD '${secret}'`);
    const withSecret = (password: string, via?: Endpoint): string => {
      const url = new URL(databaseUrl);
      if (role) url.username = role;
      url.password = password;
      if (via) {
        url.hostname = via.host;
        url.port = String(via.port);
      }
      return url.toString();
    };
    return {
      endpoint: hostAndPort(databaseUrl, 5432),
      secret,
      async destination(): Promise<Destination> {
        const schema = uniqueName('pgboss_conf');
        const topic = uniqueName('orders');
        const consumer = new PgBoss({ connectionString: withSecret(secret), schema, max: 2 });
        consumer.on('error', () => undefined);
        await consumer.start();
        const received = new ReceivedIds();
        for (const queue of [topic, CANARY_TOPIC]) {
          await consumer.createQueue(queue);
          await consumer.work(queue, { batchSize: 500, pollingIntervalSeconds: 0.5 }, async (jobs) => {
            for (const job of jobs) received.add(job.id);
          });
        }
        return {
          topic,
          received,
          createSink: ({ via, secret: password, log }) =>
            createPgBossSink({
              connectionString: withSecret(password, via),
              schema,
              onError: (error) => log.error({ err: error }, 'pg-boss error'),
            }),
          async close() {
            await consumer.stop({ graceful: false, wait: true, close: true });
          },
        };
      },
      async stop() {
        if (role) await adminQuery(databaseUrl, `DROP OWNED BY ${role}; DROP ROLE ${role}`);
      },
    };
  },
};

/** Runs `statement` over a connection of its own to `databaseUrl` (as the test server's user). */
async function adminQuery(databaseUrl: string, statement: string): Promise<void> {
  const client = new pg.Client(databaseUrl);
  await client.connect();
  try {
    await client.query(statement);
  } finally {
    await client.end();
  }
}
