// The browser page's size, and the ratchet on it.
//
// The page is what a browser loads for `import 'tilewarm'`: pkg/index.js and every module it
// imports, followed through the import graph (static `from "./x.js"`, dynamic `import("./x.js")`),
// plus every `.wasm` they name with `new URL("./x.wasm", import.meta.url)`. Each file is
// compressed on its own, as a server sends it: gzip level 9 and brotli quality 11 (what CDNs
// serve). Prints a markdown table of every shipped .js/.wasm with the page's files marked.
//
// With --check, compares the page's gzipped total with the figure recorded in
// bench/page-size.txt and fails when it is more than SLACK bytes above it (the change must
// raise the recorded figure in the same commit and say why, in the commit message and in
// docs/BENCHMARKS.md) or more than SLACK bytes below it (the change must lower the figure, so
// the ratchet keeps what was won).
//
// Usage: node scripts/page-size.mjs [--check] [PKG_DIR]   (default pkg/)
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { join, dirname, posix } from 'node:path';
import { gzipSync, brotliCompressSync, constants } from 'node:zlib';
import { fileURLToPath } from 'node:url';

const SLACK = 1024;
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const check = args.includes('--check');
const dir = args.find((a) => !a.startsWith('--')) ?? join(root, 'pkg');
const recordFile = join(root, 'bench/page-size.txt');

if (!existsSync(join(dir, 'index.js'))) {
  console.error(`page-size: ${dir}/index.js is missing: build the package first (make pkg)`);
  process.exit(1);
}

/** The page's files: index.js and its import graph, and the .wasm files they fetch. */
function pageFiles() {
  const seen = new Set();
  const todo = ['index.js'];
  while (todo.length > 0) {
    const name = todo.pop();
    if (seen.has(name)) continue;
    seen.add(name);
    if (!name.endsWith('.js')) continue;
    const text = readFileSync(join(dir, name), 'utf8');
    const refs = [
      ...text.matchAll(/\bfrom\s*["'](\.{1,2}\/[^"']+)["']/g),
      ...text.matchAll(/\bimport\s*\(\s*["'](\.{1,2}\/[^"']+)["']\s*\)/g),
      ...text.matchAll(/\bimport\s*["'](\.{1,2}\/[^"']+)["']/g),
      ...text.matchAll(/new URL\(\s*["'](\.{1,2}\/[^"']+\.wasm)["']/g),
    ];
    for (const [, ref] of refs) {
      const target = posix.normalize(posix.join(posix.dirname(name), ref));
      if (!existsSync(join(dir, target))) {
        console.error(`page-size: ${name} refers to ${ref}, which is not in ${dir}/`);
        process.exit(1);
      }
      todo.push(target);
    }
  }
  return seen;
}

function sizes(name) {
  const bytes = readFileSync(join(dir, name));
  return {
    raw: bytes.length,
    gz: gzipSync(bytes, { level: 9 }).length,
    br: brotliCompressSync(bytes, {
      params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: bytes.length },
    }).length,
  };
}

const page = pageFiles();
const shipped = readdirSync(dir).filter((f) => f.endsWith('.js') || f.endsWith('.wasm')).sort();
const total = { raw: 0, gz: 0, br: 0 };
const pageTotal = { raw: 0, gz: 0, br: 0 };
const rows = ['| file | raw bytes | gzip -9 | brotli 11 | loaded by a browser page |', '| --- | ---: | ---: | ---: | :---: |'];
for (const f of shipped) {
  const s = sizes(f);
  for (const k of Object.keys(total)) total[k] += s[k];
  const onPage = page.has(f);
  if (onPage) for (const k of Object.keys(total)) pageTotal[k] += s[k];
  rows.push(`| \`${f}\` | ${s.raw} | ${s.gz} | ${s.br} | ${onPage ? 'yes' : ''} |`);
}
rows.push(`| **all .wasm + .js** | ${total.raw} | ${total.gz} | ${total.br} | |`);
rows.push(`| **browser page** | ${pageTotal.raw} | ${pageTotal.gz} | ${pageTotal.br} | |`);

const recorded = readRecorded();
rows.push('');
const diff = pageTotal.gz - recorded;
rows.push(`Size ratchet: the page is ${pageTotal.gz} bytes gzipped; recorded in bench/page-size.txt: ${recorded} (${diff >= 0 ? '+' : ''}${diff}; allowed: ±${SLACK}).`);
console.log(rows.join('\n'));

if (check) {
  if (diff > SLACK) {
    console.error(`page-size: the browser page grew to ${pageTotal.gz} bytes gzipped, ${diff} above the recorded ${recorded} (more than ${SLACK} allowed). ` +
      `If the growth is worth it, raise the figure in bench/page-size.txt to ${pageTotal.gz} in the same commit and say why in the commit message and docs/BENCHMARKS.md.`);
    process.exit(1);
  }
  if (diff < -SLACK) {
    console.error(`page-size: the browser page shrank to ${pageTotal.gz} bytes gzipped, ${-diff} below the recorded ${recorded}: ` +
      `lower the figure in bench/page-size.txt to ${pageTotal.gz} in the same commit, so the ratchet keeps the gain.`);
    process.exit(1);
  }
  console.error(`page-size: ${pageTotal.gz} bytes gzipped, within ${SLACK} of the recorded ${recorded}`);
}

function readRecorded() {
  let text;
  try {
    text = readFileSync(recordFile, 'utf8');
  } catch {
    console.error(`page-size: ${recordFile} is missing: it records the page's gzipped size in bytes`);
    process.exit(1);
  }
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'));
  const n = Number(lines[0]);
  if (lines.length !== 1 || !Number.isSafeInteger(n) || n <= 0) {
    console.error(`page-size: ${recordFile} must hold one positive whole number of bytes (besides # comments), got ${JSON.stringify(lines)}`);
    process.exit(1);
  }
  return n;
}
