// Source of node.cjs, the CommonJS entry for Node without require(esm) (18, 20 before 20.19,
// 22 before 22.12), built by scripts/build-pkg.sh: this file, api.js, cache.js and the glue
// bundled by esbuild into one CommonJS module (`__dirname` is CommonJS's). Nodes with
// require(esm) take node.js for require() too (the "module-sync" condition), so a process
// that both imports and requires tilewarm loads one copy. Not shipped as it is.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { initSync } from './tilewarm.js';

// eslint-disable-next-line no-undef
initSync({ module: readFileSync(join(__dirname, 'tilewarm_bg.wasm')) });

export * from './api.js';
