// Writes web/tests/webdriver.json to OUT with the browser the other suites use ($CHROMIUM,
// else /usr/bin/chromium; scripts/setup.sh chromium checks it), for test-web.sh and
// bench-web.sh (wasm-bindgen-test-runner reads it from WASM_BINDGEN_TEST_WEBDRIVER_JSON).
//   node scripts/webdriver-json.mjs OUT
import { readFileSync, writeFileSync } from 'node:fs';

const out = process.argv[2];
if (!out) {
  console.error('usage: node scripts/webdriver-json.mjs OUT');
  process.exit(2);
}
const caps = JSON.parse(readFileSync(new URL('../web/tests/webdriver.json', import.meta.url), 'utf8'));
caps['goog:chromeOptions'].binary = process.env.CHROMIUM || '/usr/bin/chromium';
writeFileSync(out, JSON.stringify(caps, null, 2));
