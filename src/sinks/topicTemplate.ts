/**
 * A sink's destination for a row's topic, from a template in which `{topic}` stands for the topic:
 * the Kafka topic, the AMQP 1.0 address, the Kinesis stream, the STOMP destination. The template is
 * split once, when the sink is made, not for every message.
 */
export function fromTopicTemplate(template: string): (topic: string) => string {
  const parts = template.split('{topic}');
  return parts.length === 1 ? () => template : (topic) => parts.join(topic);
}
