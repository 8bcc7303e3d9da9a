// The edge worker of the built package (pkg/edge.js) under Node, for what a test cannot make
// workerd do: a fetch that never settles, as one of a request the runtime cancelled (its
// continuations dropped). pkg/edge.js imports its .wasm as a WebAssembly.Module (the rule of
// workerd and wrangler); the module hook below gives it one.
import { register } from 'node:module';

register('./wasm-module-hook.mjs', import.meta.url);

export const { createWorker } = await import('../../../pkg/edge.js');
