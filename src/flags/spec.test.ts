// Unleash's client specification, every case of every file listed in its index.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import { z } from 'zod';
import { applyDeltaEvents, createFlagEngine } from './engine.ts';
import { type ClientFeatures, clientFeaturesSchema, deltaEventSchema } from './types.ts';

const specDir = new URL(
  '../../../shared/testdata/unleash-client-specification/specifications/',
  import.meta.url,
);
const load = (file: string): unknown => JSON.parse(readFileSync(new URL(file, specDir), 'utf8'));

const contextSchema = z.record(z.string(), z.unknown());
const specSchema = z.object({
  name: z.string(),
  state: z.union([z.object({ events: z.array(deltaEventSchema) }), clientFeaturesSchema]),
  tests: z
    .array(
      z.object({
        description: z.string(),
        context: contextSchema,
        toggleName: z.string(),
        expectedResult: z.boolean(),
      }),
    )
    .default([]),
  variantTests: z
    .array(
      z.object({
        description: z.string(),
        context: contextSchema,
        toggleName: z.string(),
        expectedResult: z.record(z.string(), z.unknown()),
      }),
    )
    .default([]),
});

const files = z.array(z.string()).parse(load('index.json'));
const counted = { isEnabled: 0, getVariant: 0 };

for (const file of files) {
  const spec = specSchema.parse(load(file));
  const state: ClientFeatures =
    'events' in spec.state ? applyDeltaEvents({ features: [] }, spec.state.events) : spec.state;
  const engine = createFlagEngine(state);

  describe(file, () => {
    for (const t of spec.tests) {
      counted.isEnabled++;
      it(`isEnabled: ${t.description}`, () => {
        assert.equal(engine.isEnabled(t.toggleName, t.context), t.expectedResult);
      });
    }
    for (const t of spec.variantTests) {
      counted.getVariant++;
      it(`getVariant: ${t.description}`, () => {
        assert.deepEqual({ ...engine.getVariant(t.toggleName, t.context) }, t.expectedResult);
      });
    }
  });
}

// Guards against a file silently contributing nothing (a renamed key, a dropped file).
after(() => {
  assert.deepEqual(counted, { isEnabled: 227, getVariant: 52 });
});
