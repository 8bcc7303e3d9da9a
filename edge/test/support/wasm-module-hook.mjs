// A Node module hook (node-worker.mjs): `import wasm from './x.wasm'` gives a compiled
// WebAssembly.Module, as workerd and wrangler's CompiledWasm rule do.
export async function load(url, context, nextLoad) {
  if (!url.endsWith('.wasm')) return nextLoad(url, context);
  return {
    format: 'module',
    shortCircuit: true,
    source: `import { readFileSync } from 'node:fs';\nexport default new WebAssembly.Module(readFileSync(new URL(${JSON.stringify(url)})));\n`,
  };
}
