// tilewarm/inline: the browser entry with the .wasm inside the JavaScript (base64), for
// bundlers that do not emit `new URL('./x.wasm', import.meta.url)` as an asset (esbuild):
// nothing to copy beside the bundle, at the cost of about a third more bytes than the .wasm
// fetched on its own. scripts/build-pkg.sh writes the .wasm in place of the marker below.
import init from './tilewarm.js';

const text = atob('__TILEWARM_WASM_BASE64__');
const bytes = new Uint8Array(text.length);
for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
await init({ module_or_path: bytes });

export * from './api.js';
