/**
 * The deploy stack, checked offline (no Docker engine or cluster here): the Kubernetes manifests
 * against the Kubernetes API schemas bundled in `kubernetes-models`, and what the compose stack,
 * Prometheus, Grafana and the Dockerfile must agree on (ports, probes, targets, mounts). CI also
 * runs `docker-compose config` and `promtool check config` on the same files (.ci/run).
 */
import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import ts from 'typescript';
import { parse, parseAllDocuments } from 'yaml';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const read = (file: string) => readFile(path.join(ROOT, file), 'utf8');

/** The model class of each kind the manifests use; `validate()` checks a document against the API schema. */
const MODELS: Record<string, new (data: never) => { validate(): void }> = {
  'apps/v1 Deployment': Deployment,
  'policy/v1 PodDisruptionBudget': PodDisruptionBudget,
  'v1 ConfigMap': ConfigMap,
  'v1 Secret': Secret,
  'v1 Service': Service,
};

interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  // The manifests' own shapes; each is validated against the API schema before it is read.
  spec?: Record<string, unknown>;
  data?: Record<string, string>;
}

async function manifests(): Promise<Manifest[]> {
  const dir = path.join(ROOT, 'deploy/kubernetes');
  const files = (await readdir(dir)).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml');
  const all: Manifest[] = [];
  for (const file of files.sort()) {
    for (const doc of parseAllDocuments(await readFile(path.join(dir, file), 'utf8'))) {
      if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors[0]?.message}`);
      all.push(doc.toJS() as Manifest);
    }
  }
  return all;
}

/** The TypeScript interface of each kind, for the excess-property check. */
const TYPES: Record<string, [string, string]> = {
  'apps/v1 Deployment': ['IDeployment', 'kubernetes-models/apps/v1/Deployment'],
  'policy/v1 PodDisruptionBudget': [
    'IPodDisruptionBudget',
    'kubernetes-models/policy/v1/PodDisruptionBudget',
  ],
  'v1 ConfigMap': ['IConfigMap', 'kubernetes-models/v1/ConfigMap'],
  'v1 Secret': ['ISecret', 'kubernetes-models/v1/Secret'],
  'v1 Service': ['IService', 'kubernetes-models/v1/Service'],
};

/**
 * Unknown fields: the API's JSON schemas allow any extra property (a misspelt `replica: 3` passes
 * `validate()` and the cluster silently uses 1), so each document is also type-checked as an
 * object literal against its kubernetes-models interface, where TypeScript refuses every property
 * the type does not declare, at any depth. Returns the compiler's messages.
 */
function unknownFields(docs: readonly Manifest[]): string[] {
  const file = path.join(ROOT, 'test/deploy/__manifests__.ts');
  const lines = docs.map((m, i) => {
    const [type, from] = TYPES[`${m.apiVersion} ${m.kind}`] ?? [];
    assert.ok(type && from, `no type for ${m.apiVersion} ${m.kind}`);
    return `import type { ${type} as T${i} } from '${from}';\nexport const m${i}: T${i} = ${JSON.stringify(m)};`;
  });
  const text = lines.join('\n');
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile.bind(host);
  host.getSourceFile = (name, version, ...rest) =>
    path.resolve(name) === file
      ? ts.createSourceFile(name, text, version)
      : getSourceFile(name, version, ...rest);
  const fileExists = host.fileExists.bind(host);
  host.fileExists = (name) => path.resolve(name) === file || fileExists(name);
  const program = ts.createProgram([file], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n'));
}

function validate(m: Manifest): void {
  const Model = MODELS[`${m.apiVersion} ${m.kind}`];
  assert.ok(Model, `no schema for ${m.apiVersion} ${m.kind} (${m.metadata.name})`);
  new Model(m as never).validate();
}

describe('Kubernetes manifests', () => {
  it('every document validates against the Kubernetes API schema', async () => {
    const all = await manifests();
    assert.deepEqual(all.map((m) => m.kind).sort(), [
      'ConfigMap',
      'Deployment',
      'PodDisruptionBudget',
      'Secret',
      'Service',
    ]);
    for (const m of all) validate(m);
  });

  it('no document has a field its Kubernetes type does not declare', async () => {
    assert.deepEqual(unknownFields(await manifests()), []);
  });

  it('the unknown-field check is live: a misspelt field deep in a Deployment is refused', async () => {
    const deployment = (await manifests()).find((m) => m.kind === 'Deployment') as Manifest;
    const broken = structuredClone(deployment) as Manifest & {
      spec: { template: { spec: { containers: Record<string, unknown>[] } } };
    };
    (broken.spec.template.spec.containers[0] as Record<string, unknown>).readinesProbe = {};
    const messages = unknownFields([broken]);
    assert.equal(messages.length, 1, messages.join('\n'));
    assert.match(messages[0] ?? '', /"readinesProbe"' does not exist in type 'IContainer'/);
  });

  it('the validator is live: a Deployment with a wrong field type is refused', async () => {
    const deployment = (await manifests()).find((m) => m.kind === 'Deployment') as Manifest;
    const broken = structuredClone(deployment);
    (broken.spec as Record<string, unknown>).replicas = 'three';
    assert.throws(() => validate(broken), /replicas must be integer/);
  });

  it('the Deployment: replicas, probes on /healthz and /readyz, resources, scrape annotations, a PDB', async () => {
    const all = await manifests();
    const byKind = (kind: string) => all.find((m) => m.kind === kind) as Manifest;
    const deployment = new Deployment(byKind('Deployment') as never);
    const spec = deployment.spec!;
    assert.equal(spec.replicas, 3);
    const labels = spec.template.metadata?.labels ?? {};
    assert.deepEqual(spec.selector.matchLabels, labels);
    const relay = spec.template.spec!.containers.find((c) => c.name === 'relay')!;
    const port = relay.ports?.find((p) => p.name === 'metrics')?.containerPort;
    assert.equal(port, 9464);
    assert.equal(relay.livenessProbe?.httpGet?.path, '/healthz');
    assert.equal(relay.readinessProbe?.httpGet?.path, '/readyz');
    assert.equal(relay.livenessProbe?.httpGet?.port, 'metrics');
    assert.equal(relay.readinessProbe?.httpGet?.port, 'metrics');
    assert.ok(
      relay.resources?.requests?.cpu && relay.resources.requests.memory && relay.resources.limits?.memory,
    );
    const annotations = spec.template.metadata?.annotations ?? {};
    assert.equal(annotations['prometheus.io/scrape'], 'true');
    assert.equal(annotations['prometheus.io/port'], String(port));
    assert.equal(spec.template.spec!.initContainers?.[0]?.args?.[0], 'migrate');

    const config = byKind('ConfigMap').data ?? {};
    assert.equal(config.SHARDRELAY_METRICS_PORT, String(port), 'the relay serves metrics on the probed port');
    assert.equal(config.SHARDRELAY_METRICS_HOST, '0.0.0.0', 'probes reach the pod address');
    for (const source of relay.envFrom ?? []) {
      const name = source.configMapRef?.name ?? source.secretRef?.name;
      assert.ok(
        all.some((m) => m.metadata.name === name),
        `envFrom ${name} is defined`,
      );
    }

    const pdb = new PodDisruptionBudget(byKind('PodDisruptionBudget') as never);
    assert.deepEqual(pdb.spec?.selector?.matchLabels, labels);
    assert.ok(Number(pdb.spec?.maxUnavailable ?? 0) < spec.replicas!, 'a drain never takes every replica');
    const service = new Service(byKind('Service') as never);
    assert.deepEqual(service.spec?.selector, labels);
  });
});

describe('compose stack', () => {
  it('three replicas with restart policies and /readyz checks, the broker of their sink, Prometheus and Grafana', async () => {
    const compose = parse(await read('docker-compose.yml'), { merge: true }) as {
      services: Record<
        string,
        {
          restart?: string;
          healthcheck?: { test: string[] };
          environment?: Record<string, string>;
          ports?: string[];
          volumes?: string[];
        }
      >;
    };
    const relays = Object.keys(compose.services).filter((name) => name.startsWith('relay-'));
    assert.deepEqual(relays, ['relay-1', 'relay-2', 'relay-3']);
    for (const name of relays) {
      const relay = compose.services[name]!;
      assert.equal(relay.restart, 'unless-stopped');
      assert.match(relay.healthcheck?.test.join(' ') ?? '', /\/readyz/);
      assert.equal(relay.environment?.SHARDRELAY_REPLICA_ID, name);
      assert.equal(relay.environment?.SHARDRELAY_METRICS_PORT, '9464');
      assert.equal(relay.environment?.SHARDRELAY_SINK, 'jetstream');
      const broker = new URL(relay.environment?.NATS_URL ?? '').hostname;
      assert.ok(compose.services[broker], `the sink's broker ${broker} is in the stack`);
    }
    for (const name of ['postgres', 'nats', 'prometheus', 'grafana']) {
      assert.equal(compose.services[name]?.restart, 'unless-stopped', name);
      assert.ok(compose.services[name]?.healthcheck, `${name} has a health check`);
    }

    const prometheus = parse(await read('deploy/prometheus/prometheus.yml')) as {
      rule_files: string[];
      scrape_configs: { job_name: string; static_configs: { targets: string[] }[] }[];
    };
    assert.deepEqual(prometheus.rule_files, ['alerts.yml']);
    const job = prometheus.scrape_configs.find((j) => j.job_name === 'shardrelay');
    assert.deepEqual(
      job?.static_configs.flatMap((c) => c.targets),
      relays.map((r) => `${r}:9464`),
      'Prometheus scrapes every replica',
    );
    assert.ok(compose.services.prometheus?.volumes?.includes('./deploy/prometheus:/etc/prometheus:ro'));

    const grafana = compose.services.grafana?.volumes ?? [];
    assert.ok(grafana.some((v) => v.startsWith('./deploy/grafana/provisioning:/etc/grafana/provisioning')));
    const dashboardMount = grafana.find((v) => v.startsWith('./deploy/grafana/shardrelay.json:'));
    const providers = parse(await read('deploy/grafana/provisioning/dashboards/dashboards.yml')) as {
      providers: { options: { path: string } }[];
    };
    assert.ok(dashboardMount?.includes(`:${providers.providers[0]?.options.path}/shardrelay.json`));
    const sources = parse(await read('deploy/grafana/provisioning/datasources/datasources.yml')) as {
      datasources: { type: string; url: string }[];
    };
    assert.deepEqual(sources.datasources.map((d) => d.type).sort(), [
      'grafana-postgresql-datasource',
      'prometheus',
    ]);
    assert.ok(sources.datasources.some((d) => d.url === 'http://prometheus:9090'));
  });

  it('the image has a HEALTHCHECK on /healthz', async () => {
    assert.match(await read('Dockerfile'), /^HEALTHCHECK [^\n]*\\\n\s+CMD [^\n]*\/healthz/m);
  });
});
