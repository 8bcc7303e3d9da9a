// Entry point for Node.js >= 18 (and runtimes that take the "node" condition: Bun, Deno's
// npm: imports, Vitest): reads the .wasm from disk and instantiates it synchronously.
import { readFileSync } from 'node:fs';
import { initSync } from './tilewarm.js';

initSync({ module: readFileSync(new URL('./tilewarm_bg.wasm', import.meta.url)) });

export * from './api.js';
