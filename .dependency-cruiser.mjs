/**
 * Layers of src/, lowest first. A module may import from its own layer and the layers below it,
 * never from a layer above: `npm run deps:check` (part of `npm run lint`) fails on such an import,
 * and `npm run deps:graph` prints the folder-level graph shown in the README's layout section.
 * Claims and leases still live in relay/ (relay/claims.ts, relay/shardLeases.ts); when they move
 * to folders of their own, they become a layer between sinks and relay.
 * Within the relay layer, relay/, observability/ and maintenance/ do not import each other: the
 * process wiring (wiring/) builds them and hands each what it needs.
 */
const LAYERS = [
  { name: 'shared', path: '^src/(errors|redact|logger|eventValidation|backoff|raceDeadline)\\.ts$' },
  { name: 'db', path: '^src/db/' },
  { name: 'lanes and settings', path: '^src/(lanes/|config\\.ts$|enqueue\\.ts$|executor\\.ts$)' },
  { name: 'sinks', path: '^src/sinks/' },
  { name: 'routing', path: '^src/routing/' },
  { name: 'relay, observability and maintenance', path: '^src/(relay|observability|maintenance)/' },
  {
    name: 'wiring',
    path: '^src/(wiring/|(demo|status|replicaStatus|deadLetters|events|synthetic|index)\\.ts$)',
  },
  { name: 'cli', path: '^src/cli/' },
];

const upward = LAYERS.slice(0, -1).map((layer, i) => ({
  name: `no-import-up-from-${layer.name.replace(/\W+/g, '-')}`,
  comment: `${layer.name} may not import from a layer above it (${LAYERS.slice(i + 1)
    .map((l) => l.name)
    .join(', ')})`,
  severity: 'error',
  from: { path: layer.path },
  to: {
    path: LAYERS.slice(i + 1).map((l) => l.path),
  },
}));

/** @type {import('dependency-cruiser').IConfiguration} */
export default {
  forbidden: [
    ...upward,
    ...[
      ['relay', 'observability'],
      ['relay', 'maintenance'],
      ['observability', 'relay'],
      ['observability', 'maintenance'],
      ['maintenance', 'relay'],
      ['maintenance', 'observability'],
    ].map(([from, to]) => ({
      name: `${from}-does-not-import-${to}`,
      comment:
        from === 'observability' && to === 'relay'
          ? 'the observer is handed what it observes (ObservedBatch, ObservedShards in observability/observer.ts); it does not import the relay'
          : `${from}/ and ${to}/ share a layer but not code: the process wiring (wiring/relay.ts) builds both`,
      severity: 'error',
      from: { path: `^src/${from}/` },
      to: { path: `^src/${to}/` },
    })),
    {
      name: 'every-module-has-a-layer',
      comment: 'a new file in src/ must be placed in a layer in .dependency-cruiser.mjs',
      severity: 'error',
      from: { path: '^src/', pathNot: LAYERS.map((l) => l.path) },
      to: {},
    },
    {
      name: 'no-circular',
      comment: 'modules import each other in a cycle',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    includeOnly: '^src/',
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
  },
};
