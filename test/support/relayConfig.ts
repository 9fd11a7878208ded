import { loadConfig, type ConfigOverrides, type RelayConfig } from '../../src/config.js';

/** A relay configuration for tests: defaults plus fast retries, overridable per test. */
export function testConfig(databaseUrl: string, overrides: ConfigOverrides = {}): RelayConfig {
  return loadConfig(
    {
      databaseUrl,
      sink: 'null',
      retryBaseMs: 20,
      retryCapMs: 200,
      shutdownTimeoutMs: 5_000,
      logLevel: 'silent',
      // No synthetic canary rows unless a test asks for them: tests count rows exactly.
      canaryIntervalSeconds: 0,
      ...overrides,
    },
    {},
  );
}
