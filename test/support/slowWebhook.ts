import http from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A webhook that answers 204 to every request `answerAfterMs` after it arrived, counting the
 * structured CloudEvents it receives by `id`.
 */
export async function startSlowWebhook(answerAfterMs: number) {
  const counts = new Map<string, number>();
  const server = http.createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const id = String((JSON.parse(Buffer.concat(chunks).toString('utf8')) as { id?: unknown }).id);
      counts.set(id, (counts.get(id) ?? 0) + 1);
      setTimeout(() => response.writeHead(204).end(), answerAfterMs);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/events`,
    counts,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
