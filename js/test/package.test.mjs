// The built package as a whole: package.json, the files npm would publish, each entry point
// (node, browser, workerd, raw; the map adapters and live, each loaded on its own) and the
// TypeScript declarations.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

// js/node_modules/tilewarm links to pkg/; Node resolves modules to their real path.
const pkgDir = realpathSync(fileURLToPath(new URL('../node_modules/tilewarm', import.meta.url)));
const pkgUrl = pathToFileURL(`${pkgDir}/`);
const pkg = JSON.parse(readFileSync(new URL('package.json', pkgUrl), 'utf8'));
const root = fileURLToPath(new URL('../../', import.meta.url));
const API = ['TileCache', 'neighbourTiles', 'parentTile', 'tileForPoint', 'tilesForBbox'];

/** Runs an ES module snippet in a fresh Node process from js/test/ (its own module graph). */
function runNode(flags, code) {
  const r = spawnSync(process.execPath, [...flags, '--input-type=module', '-e', code], {
    cwd: fileURLToPath(new URL('.', import.meta.url)),
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim();
}

/**
 * Imports `url` in a fresh Node process with `fetch` answering file: URLs from disk (as a
 * browser would fetch the .wasm), and returns `[...JSON of expr over the module m, the URLs
 * fetched]`.
 */
function importFetchingFiles(url, expr) {
  const out = runNode(
    [],
    `import { readFileSync } from 'node:fs';
     const fetched = [];
     globalThis.fetch = async (url) => {
       fetched.push(String(url));
       return new Response(readFileSync(new URL(url)), { headers: { 'content-type': 'application/wasm' } });
     };
     const m = await import(${JSON.stringify(url)});
     console.log(JSON.stringify([...${expr}, fetched]));`,
  );
  return JSON.parse(out);
}

function targets(node) {
  return typeof node === 'string' ? [node] : Object.values(node).flatMap(targets);
}

test('package.json matches Cargo.toml and is an ES module package', () => {
  const cargo = readFileSync(new URL('Cargo.toml', `file://${root}`), 'utf8');
  const version = cargo.match(/^\[package\][^[]*?^version\s*=\s*"([^"]+)"/ms)[1];
  assert.equal(pkg.name, 'tilewarm');
  assert.equal(pkg.version, version);
  assert.equal(pkg.type, 'module');
  assert.equal(pkg.types, './index.d.ts');
  assert.deepEqual(Object.keys(pkg.exports['.']), ['types', 'workerd', 'node', 'browser', 'default']);
  // Entry points have side effects (they instantiate the module), so they must be listed.
  assert.deepEqual(pkg.sideEffects, ['./index.js', './inline.js', './node.js', './node.cjs', './workerd.js']);
});

test('every export target exists and is in the published file list', () => {
  const packed = JSON.parse(
    execFileSync('npm', ['pack', '--dry-run', '--json', '--loglevel=error'], { cwd: pkgDir, encoding: 'utf8' }),
  )[0].files.map((f) => f.path);
  for (const t of [...targets(pkg.exports), pkg.main, pkg.module, pkg.types]) {
    assert.ok(existsSync(new URL(t, pkgUrl)), `${t} exists`);
    assert.ok(packed.includes(t.replace(/^\.\//, '')), `${t} is published`);
  }
  for (const f of ['tilewarm_bg.wasm', 'tilewarm.js', 'tilewarm.d.ts', 'README.md', 'gen/types.d.ts']) {
    assert.ok(packed.includes(f), `${f} is published`);
  }
});

// The map adapters and tilewarm/live share modules of the package (report.js, redraw.js,
// box.js, retry-after.js) that no export names: each entry must load on its own, from
// what npm publishes.
test('each adapter entry and tilewarm/live loads on its own, every module it imports published', () => {
  const packed = new Set(JSON.parse(
    execFileSync('npm', ['pack', '--dry-run', '--json', '--loglevel=error'], { cwd: pkgDir, encoding: 'utf8' }),
  )[0].files.map((f) => f.path));
  for (const f of packed) {
    if (!f.endsWith('.js')) continue;
    const src = readFileSync(new URL(f, pkgUrl), 'utf8');
    for (const [, dep] of src.matchAll(/(?:\bfrom|\bimport)\s*\(?\s*["']\.\/([^"']+)["']/g)) {
      assert.ok(packed.has(dep), `${f} imports ./${dep}, which is not published`);
    }
  }
  const names = {
    maplibre: 'attach,boxOf', leaflet: 'createLayer', deckgl: 'extendTileLayer,viewportOf',
    openlayers: 'createSource,follow,toLonLat,toMercator', live: 'follow',
  };
  for (const [entry, want] of Object.entries(names)) {
    // A fresh process each: nothing else of the package loaded before it.
    const got = runNode([], `const m = await import('tilewarm/${entry}'); console.log(Object.keys(m).sort().join())`);
    assert.equal(got, want, `tilewarm/${entry}`);
  }
});

test('the boundary generated from the Rust: bundled into cache.js, its types shipped', () => {
  // js/gen/boundary.js is inlined (no module of its own for a page to load); cache.js
  // imports nothing but the wasm-bindgen glue.
  const cache = readFileSync(new URL('cache.js', pkgUrl), 'utf8');
  const imports = [...cache.matchAll(/\bfrom\s*["']([^"']+)["']/g)].map((m) => m[1]);
  assert.deepEqual(imports, ['./tilewarm.js']);
  assert.ok(!existsSync(new URL('gen/boundary.js', pkgUrl)));
  // index.d.ts re-exports the generated types, which are published.
  assert.match(readFileSync(new URL('index.d.ts', pkgUrl), 'utf8'), /from '\.\/gen\/types\.js'/);
  assert.ok(existsSync(new URL('gen/types.d.ts', pkgUrl)));
  assert.ok(pkg.files.includes('gen'));
});

test('the node entry is what `import "tilewarm"` resolves to in Node', async () => {
  assert.equal(import.meta.resolve('tilewarm'), new URL('node.js', pkgUrl).href);
  const m = await import('tilewarm');
  assert.deepEqual(Object.keys(m).sort(), API);
});

test('the browser entry fetches the .wasm by URL (fetch stubbed for file: URLs)', () => {
  const browser = new URL(pkg.exports['.'].browser, pkgUrl).href;
  const got = importFetchingFiles(browser, '[Object.keys(m).sort(), m.tileForPoint(-122.3321, 47.6062, 14)]');
  assert.deepEqual(got, [API, '14/2624/5721', [new URL('tilewarm_bg.wasm', pkgUrl).href]]);
});

test('npm pack, installed into a new project and bundled for the browser by esbuild', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tilewarm-bundle-'));
  try {
    const [{ filename }] = JSON.parse(execFileSync(
      'npm', ['pack', '--json', '--loglevel=error', '--pack-destination', dir], { cwd: pkgDir, encoding: 'utf8' },
    ));
    const app = join(dir, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
    // The tarball has no dependencies, so installing it needs no registry.
    execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', '--loglevel=error', join(dir, filename)], { cwd: app });
    writeFileSync(join(app, 'main.js'), [
      "import { TileCache, tileForPoint } from 'tilewarm';",
      "import { parentTile } from 'tilewarm/raw';",
      'export const tile = tileForPoint(-122.3321, 47.6062, 14);',
      "export const parent = parentTile('14/2624/5721', 12);",
      "export const hasCache = typeof TileCache.create === 'function';",
    ].join('\n'));
    const esbuild = await import('esbuild');
    const result = await esbuild.build({
      entryPoints: [join(app, 'main.js')], bundle: true, format: 'esm', platform: 'browser',
      outfile: join(app, 'dist', 'main.js'), absWorkingDir: app, metafile: true, logLevel: 'silent',
    });
    // The "browser" condition picked the entry that fetches the .wasm, not the node or workerd one.
    const inputs = Object.keys(result.metafile.inputs);
    assert.ok(inputs.includes('node_modules/tilewarm/index.js'), inputs.join(' '));
    assert.ok(!inputs.some((i) => /tilewarm\/(node|workerd)\.js$/.test(i)), inputs.join(' '));
    const code = readFileSync(join(app, 'dist', 'main.js'), 'utf8');
    assert.ok(!code.includes('node:fs'));
    // esbuild keeps `new URL('./tilewarm_bg.wasm', import.meta.url)` as it is (no asset
    // step): the .wasm is deployed beside the bundle, and the bundle fetches it from there.
    copyFileSync(join(app, 'node_modules', 'tilewarm', 'tilewarm_bg.wasm'), join(app, 'dist', 'tilewarm_bg.wasm'));
    const bundle = pathToFileURL(join(app, 'dist', 'main.js')).href;
    const got = importFetchingFiles(bundle, '[m.tile, m.parent, m.hasCache]');
    const wasmUrl = pathToFileURL(join(app, 'dist', 'tilewarm_bg.wasm')).href;
    assert.deepEqual(got, ['14/2624/5721', '12/656/1430', true, [wasmUrl]]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the workerd entry works when the .wasm is imported as a WebAssembly.Module', () => {
  // Node with the "workerd" condition and hooks that import .wasm the way workerd does.
  const hooks = fileURLToPath(new URL('fixtures/wasm-as-module.mjs', import.meta.url));
  const out = runNode(
    ['--conditions=workerd', '--import', hooks],
    `const m = await import('tilewarm');
     console.log(import.meta.resolve('tilewarm'), m.tileForPoint(-122.3321, 47.6062, 14));`,
  );
  assert.equal(out, `${new URL('workerd.js', pkgUrl).href} 14/2624/5721`);
});

test('tilewarm/raw is the plain glue, initialised by the caller', async () => {
  const raw = await import('tilewarm/raw');
  assert.equal(typeof raw.default, 'function');
  assert.equal(typeof raw.initSync, 'function');
  const wasm = readFileSync(fileURLToPath(import.meta.resolve('tilewarm/tilewarm_bg.wasm')));
  assert.ok(WebAssembly.validate(wasm));
  // Initialised here: the test must not depend on an earlier one having imported
  // `tilewarm` (whose node entry initialises this glue: one module instance per process).
  // After that, initSync hands back the instance it made.
  const instance = raw.initSync({ module: wasm });
  assert.equal(raw.initSync({ module: wasm }), instance);
  assert.equal(raw.parentTile('14/2624/5721', 12), '12/656/1430');
});

test('tilewarm/raw: init() and initSync() without the .wasm say what they need, until it has run', () => {
  // A fresh process that imports only tilewarm/raw (nothing has initialised the glue).
  const out = runNode([], `
    import { readFileSync } from 'node:fs';
    import { fileURLToPath } from 'node:url';
    const raw = await import('tilewarm/raw');
    const got = [];
    try { raw.parentTile('14/2624/5721', 12); } catch (e) { got.push(e.message); }
    await raw.default().catch((e) => got.push(e.name, e.code, e.message));
    try { raw.initSync(); } catch (e) { got.push(e.name, e.code, e.message); }
    const bytes = readFileSync(fileURLToPath(import.meta.resolve('tilewarm/tilewarm_bg.wasm')));
    const instance = raw.initSync({ module: bytes });
    got.push(raw.parentTile('14/2624/5721', 12), raw.initSync() === instance, (await raw.default()) === instance);
    console.log(JSON.stringify(got));`);
  const [before, n1, c1, m1, n2, c2, m2, ...rest] = JSON.parse(out);
  // The tile functions, called first, say what they need (not the glue's error about undefined).
  assert.equal(before, 'parentTile() works once the .wasm is instantiated: await init({ module_or_path }) or call initSync({ module }) first');
  assert.deepEqual([n1, c1, n2, c2], ['TypeError', 'ERR_INVALID_ARG_TYPE', 'TypeError', 'ERR_INVALID_ARG_TYPE']);
  assert.match(m1, /^init\(\) needs the \.wasm: \{ module_or_path \}/);
  assert.match(m2, /^initSync\(\) needs the \.wasm: \{ module \}/);
  assert.deepEqual(rest, ['12/656/1430', true, true]);
});

test('the TypeScript declarations type-check against real use', () => {
  const tsc = fileURLToPath(new URL('node_modules/typescript/bin/tsc', `file://${root}`));
  const project = fileURLToPath(new URL('types/tsconfig.json', import.meta.url));
  const r = spawnSync(process.execPath, [tsc, '-p', project], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});
