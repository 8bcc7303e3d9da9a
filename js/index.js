// Entry point for browsers (no bundler needed) and bundlers (Vite, webpack, Rollup, esbuild):
// fetches tilewarm_bg.wasm from beside this file. Bundlers recognise
// `new URL('…', import.meta.url)` and emit the .wasm as an asset.
import init from './tilewarm.js';

await init({ module_or_path: new URL('./tilewarm_bg.wasm', import.meta.url) });

export * from './api.js';
