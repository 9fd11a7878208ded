/**
 * A STOMP subscriber for tests and the bench: a consumer of the broker as an application would
 * run it (@stomp/stompjs over TCP), subscribed before it returns (the SUBSCRIBE's receipt).
 */
import { randomBytes } from 'node:crypto';
import { Client, type IMessage } from '@stomp/stompjs';
import { TCPWrapper } from '@stomp/tcp-wrapper';

export interface StompSubscriber {
  close(): Promise<void>;
}

export async function subscribeStomp(
  host: string,
  port: number,
  destination: string,
  onMessage: (message: IMessage) => void,
  prefetch = 1000,
): Promise<StompSubscriber> {
  const client = new Client({
    webSocketFactory: () => new TCPWrapper(host, port),
    reconnectDelay: 0,
    heartbeatIncoming: 0,
    heartbeatOutgoing: 0,
    debug: () => {},
  });
  await new Promise<void>((resolve, reject) => {
    client.onConnect = () => resolve();
    client.onStompError = (frame) => reject(new Error(frame.headers.message ?? 'STOMP ERROR'));
    client.onWebSocketClose = () => reject(new Error('the subscriber connection closed'));
    client.activate();
  });
  const receipt = `sub-${randomBytes(4).toString('hex')}`;
  await new Promise<void>((resolve) => {
    client.watchForReceipt(receipt, () => resolve());
    client.subscribe(destination, onMessage, {
      receipt,
      // Many messages on their way at once (ActiveMQ's default for STOMP is 1: a round trip each).
      'activemq.prefetchSize': String(prefetch),
    });
  });
  return { close: () => client.deactivate({ force: true }) };
}
