// The Target repository field's offers for cluster policy patterns. Run with `npm test`.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { patternPrefix } from '../src/archive/refs.js';

test('policy patterns become the prefix before their first *', () => {
  assert.equal(patternPrefix('registry.internal:5000/shop/*'), 'registry.internal:5000/shop/');
  assert.equal(patternPrefix('registry.internal:5000/mirror/**'), 'registry.internal:5000/mirror/');
  assert.equal(patternPrefix('registry.internal:5000/team-*/app'), 'registry.internal:5000/team-');
  assert.equal(patternPrefix('registry.internal:5000/mirror'), 'registry.internal:5000/mirror');
});
