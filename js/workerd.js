// Entry point for Cloudflare Workers / workerd, which forbid compiling wasm from bytes at run
// time: the .wasm import below is resolved by wrangler (or a workerd config listing it as a
// wasm module) to a precompiled WebAssembly.Module.
import wasm from './tilewarm_bg.wasm';
import { initSync } from './tilewarm.js';

initSync({ module: wasm });

export * from './api.js';
