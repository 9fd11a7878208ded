import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { fromTopicTemplate } from '../../src/sinks/topicTemplate.js';

describe('fromTopicTemplate', () => {
  it('puts the topic wherever {topic} stands, as often as it stands', () => {
    assert.equal(fromTopicTemplate('{topic}')('orders.created'), 'orders.created');
    assert.equal(fromTopicTemplate('/queue/{topic}')('orders'), '/queue/orders');
    assert.equal(fromTopicTemplate('{topic}-{topic}.dlq')('a'), 'a-a.dlq');
  });

  it('gives a template without {topic} as it is, for every topic', () => {
    const fixed = fromTopicTemplate('shardrelay');
    assert.equal(fixed('orders'), 'shardrelay');
    assert.equal(fixed('invoices'), 'shardrelay');
  });

  it('takes the topic literally ($ patterns are not special)', () => {
    assert.equal(fromTopicTemplate('x-{topic}')("$&$'"), "x-$&$'");
  });
});
