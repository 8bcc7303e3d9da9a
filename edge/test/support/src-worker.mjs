// The edge worker from its source (js/edge.js) under Node, with the core's wasm and its glue
// from the built package (pkg/tilewarm_edge_bg.wasm, pkg/tilewarm_edge.js): a test of the
// worker's JavaScript runs on what is in js/ without rebuilding pkg/edge.js. The hook
// (src-worker-hook.mjs) gives `import wasm from './x.wasm'` a compiled WebAssembly.Module,
// as workerd and wrangler do.
import { register } from 'node:module';

register('./src-worker-hook.mjs', import.meta.url);

export const { createWorker } = await import('../../../js/edge.js');
