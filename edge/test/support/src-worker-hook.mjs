// A Node module hook (src-worker.mjs): js/edge.js's imports of the core's wasm and its glue,
// which only the built package holds, resolved to pkg/; a .wasm loaded as a compiled
// WebAssembly.Module.
const PKG = new URL('../../../pkg/', import.meta.url);
const JS = new URL('../../../js/', import.meta.url).href;

export async function resolve(specifier, context, nextResolve) {
  if (context.parentURL?.startsWith(JS) && /^\.\/tilewarm_edge(_bg\.wasm|\.js)$/.test(specifier)) {
    return { url: new URL(specifier, PKG).href, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}

// A .wasm as a compiled WebAssembly.Module, as node-worker.mjs's hook does.
export { load } from './wasm-module-hook.mjs';
