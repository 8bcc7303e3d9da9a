// The packaging matrix: the package as npm would publish it (npm pack), installed offline
// into a new project, then bundled for the browser by Vite, webpack 5 and esbuild (every
// browser entry: tilewarm, tilewarm/raw and the map adapters; esbuild also with
// tilewarm/inline, the .wasm inside), each bundle run with `fetch`
// answering from disk as a browser fetches the .wasm; and loaded by Node as an ES module
// and with require(), with and without require(esm). The types of every entry under
// `tsc --strict` are checked by js/test/package.test.mjs (js/test/types/).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { root } from './support.mjs';

const here = import.meta.dirname;
const ENTRIES = ['tilewarm', 'tilewarm/inline', 'tilewarm/raw', 'tilewarm/maplibre', 'tilewarm/leaflet', 'tilewarm/deckgl', 'tilewarm/openlayers'];
const MAIN = [
  "import { TileCache, tileForPoint } from 'tilewarm';",
  "import { parentTile } from 'tilewarm/raw';",
  "import { attach } from 'tilewarm/maplibre';",
  "import { createLayer } from 'tilewarm/leaflet';",
  "import { extendTileLayer } from 'tilewarm/deckgl';",
  "import { createSource, follow } from 'tilewarm/openlayers';",
  'export const tile = tileForPoint(-122.3321, 47.6062, 14);',
  "export const parent = parentTile('14/2624/5721', 12);",
  'export const fns = [TileCache.create, attach, createLayer, extendTileLayer, createSource, follow].map((f) => typeof f);',
].join('\n');
const FNS = Array(6).fill('function');

/** Runs `code` (an ES module) in a fresh Node from `cwd`; returns stdout. */
function node(cwd, flags, code, input = '--input-type=module') {
  const r = spawnSync(process.execPath, [...flags, input, '-e', code], { cwd, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim();
}

/** Imports bundle `file` in Node with `fetch` answering file: URLs from disk, as a browser
 * fetches the .wasm; returns [tile, parent, fns, the URLs fetched]. */
function runBundle(cwd, file) {
  return JSON.parse(node(cwd, [], `
    import { readFileSync } from 'node:fs';
    const fetched = [];
    globalThis.fetch = async (url) => {
      fetched.push(String(url));
      return new Response(readFileSync(new URL(url)), { headers: { 'content-type': 'application/wasm' } });
    };
    const m = await import(${JSON.stringify(pathToFileURL(file).href)});
    console.log(JSON.stringify([m.tile, m.parent, m.fns, fetched]));`));
}

function files(dir, re) {
  return readdirSync(dir, { recursive: true }).filter((f) => re.test(f)).map((f) => join(dir, f));
}

describe('packaging: npm pack, installed and bundled', { timeout: 180_000 }, () => {
  let dir, app;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'tilewarm-packaging-'));
    const [{ filename }] = JSON.parse(execFileSync(
      'npm', ['pack', '--json', '--loglevel=error', '--pack-destination', dir], { cwd: join(root, 'pkg'), encoding: 'utf8' },
    ));
    app = join(dir, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
    // The tarball has no dependencies, so installing it needs no registry.
    execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', '--loglevel=error', join(dir, filename)], { cwd: app });
    writeFileSync(join(app, 'main.js'), MAIN);
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  it('Vite: the .wasm is emitted as an asset and fetched from beside the bundle', async () => {
    const { build } = await import(join(here, 'node_modules/vite/dist/node/index.js'));
    const out = join(app, 'dist-vite');
    await build({
      root: app, base: './', logLevel: 'silent', configFile: false,
      build: { outDir: out, emptyOutDir: true, target: 'es2022', rollupOptions: { input: join(app, 'main.js'), preserveEntrySignatures: 'exports-only', output: { entryFileNames: 'main.js' } } },
    });
    const wasm = files(out, /\.wasm$/);
    assert.equal(wasm.length, 1, 'one .wasm emitted');
    assert.deepEqual(runBundle(app, join(out, 'main.js')), ['14/2624/5721', '12/656/1430', FNS, [pathToFileURL(wasm[0]).href]]);
  });

  it('webpack 5: the .wasm is emitted as an asset and fetched from beside the bundle', async () => {
    const { default: webpack } = await import(join(here, 'node_modules/webpack/lib/index.js'));
    const out = join(app, 'dist-webpack');
    const stats = await new Promise((ok, fail) => webpack({
      mode: 'production', context: app, entry: './main.js', target: 'web', devtool: false,
      experiments: { outputModule: true },
      output: { path: out, filename: 'main.js', module: true, library: { type: 'module' }, clean: true },
    }, (err, s) => (err ? fail(err) : ok(s))));
    assert.ok(!stats.hasErrors(), stats.toString('errors-only'));
    const wasm = files(out, /\.wasm$/);
    assert.equal(wasm.length, 1, 'one .wasm emitted');
    assert.deepEqual(runBundle(app, join(out, 'main.js')), ['14/2624/5721', '12/656/1430', FNS, [pathToFileURL(wasm[0]).href]]);
  });

  it('esbuild: the bundle fetches the .wasm from beside it, where the app copies it (js/README.md)', async () => {
    const esbuild = await import(join(root, 'node_modules/esbuild/lib/main.js'));
    const out = join(app, 'dist-esbuild');
    await esbuild.build({
      entryPoints: [join(app, 'main.js')], bundle: true, format: 'esm', platform: 'browser', target: 'es2022',
      outfile: join(out, 'main.js'), absWorkingDir: app, logLevel: 'silent',
    });
    // esbuild has no asset step for `new URL('./x.wasm', import.meta.url)`: it emits no
    // .wasm, and the bundle asks for it beside itself.
    assert.deepEqual(files(out, /\.wasm$/), []);
    copyFileSync(join(app, 'node_modules/tilewarm/tilewarm_bg.wasm'), join(out, 'tilewarm_bg.wasm'));
    assert.deepEqual(runBundle(app, join(out, 'main.js')), ['14/2624/5721', '12/656/1430', FNS, [pathToFileURL(join(out, 'tilewarm_bg.wasm')).href]]);
  });

  it('esbuild with tilewarm/inline: the .wasm is inside the bundle, nothing fetched', async () => {
    const esbuild = await import(join(root, 'node_modules/esbuild/lib/main.js'));
    const out = join(app, 'dist-inline');
    writeFileSync(join(app, 'inline.js'), MAIN.replace("from 'tilewarm';", "from 'tilewarm/inline';"));
    await esbuild.build({
      entryPoints: [join(app, 'inline.js')], bundle: true, format: 'esm', platform: 'browser', target: 'es2022',
      outfile: join(out, 'main.js'), absWorkingDir: app, logLevel: 'silent',
    });
    assert.deepEqual(readdirSync(out), ['main.js']);
    assert.deepEqual(runBundle(app, join(out, 'main.js')), ['14/2624/5721', '12/656/1430', FNS, []]);
  });

  it('Node: import, and require() with and without require(esm), every entry resolves', () => {
    const esm = node(app, [], "import { tileForPoint } from 'tilewarm'; console.log(tileForPoint(-122.3321, 47.6062, 14), import.meta.resolve('tilewarm').split('/').pop());");
    assert.equal(esm, '14/2624/5721 node.js');
    const cjs = "const t = require('tilewarm'); console.log(t.tileForPoint(-122.3321, 47.6062, 14), typeof t.TileCache.create, require.resolve('tilewarm').split('/').pop());";
    // Node with require(esm) (20.19+, 22.12+): the ES module, one copy with import's.
    assert.equal(node(app, [], cjs, '--input-type=commonjs'), '14/2624/5721 function node.js');
    // Node without it (18, older 20 and 22; here by flag): the CommonJS build.
    assert.equal(node(app, ['--no-experimental-require-module'], cjs, '--input-type=commonjs'), '14/2624/5721 function node.cjs');
    // Every entry resolves from the installed package.
    const resolved = JSON.parse(node(app, [], `console.log(JSON.stringify(${JSON.stringify(ENTRIES)}.map((e) => import.meta.resolve(e).split('/node_modules/')[1])))`));
    assert.deepEqual(resolved, ['tilewarm/node.js', 'tilewarm/inline.js', 'tilewarm/raw.js', 'tilewarm/maplibre.js', 'tilewarm/leaflet.js', 'tilewarm/deckgl.js', 'tilewarm/openlayers.js']);
  });
});
