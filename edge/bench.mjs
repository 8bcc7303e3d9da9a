// The edge benchmark (`scripts/bench.sh edge`): hit-path latency of a 16-tile batch through
// the edge worker under workerd, against the same request sent straight to tilewarm-server
// (its in-process tier already holding the tiles), in one run, requests interleaved, one at
// a time over keep-alive connections on loopback. Also the same worker verifying the caller's
// token on every request (`jwtCacheSize: 0`), GET /healthz through workerd (the runtime's own
// floor), the CPU time each answering process spent per request (Linux: /proc), the CPU cost of the wasm proxy alone for a hit and for a miss (the
// same EdgeProxy in Node: what counts against a worker's CPU-time limit), and the size of
// the edge wasm.
//
//   node edge/bench.mjs --server-bin target/server/tilewarm-server --workerd edge/node_modules/.bin/workerd \
//     [--iterations 1000] [--md target/bench/edge.md]
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { gzipSync } from 'node:zlib';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { post, root, startServer, startWorkerd, serverAuthArgs } from './test/support/stack.mjs';
import { SECRET, hsToken, serviceToken } from './test/support/tokens.mjs';

const { values: args } = parseArgs({
  options: {
    'server-bin': { type: 'string' },
    workerd: { type: 'string' },
    iterations: { type: 'string', default: '1000' },
    md: { type: 'string' },
  },
});
if (args['server-bin']) process.env.TILEWARM_SERVER = args['server-bin'];
if (args.workerd) process.env.WORKERD = args.workerd;
const n = Number(args.iterations);

const tiles = [];
for (let y = 5719; y < 5723; y++) for (let x = 2622; x < 2626; x++) tiles.push(`14/${x}/${y}`);
const request = JSON.stringify({ tiles, access: 'registered' });

function pct(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function timed(fn) {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

// Callers hold a registered token (the edge verifies it on every request, hit or miss: that
// cost is in the edge's figures); the edge asks the origin with its own agent token.
const token = await hsToken({ tilewarm_access: 'registered' }, { exp: 3600 });
const headers = { 'content-type': 'application/json', authorization: `Bearer ${token}` };
const server = await startServer(await serverAuthArgs(SECRET));
const edgeEnv = { TILEWARM_JWT_SECRET: SECRET, TILEWARM_ORIGIN_TOKEN: await serviceToken('agent') };
const edge = await startWorkerd(server.batch, { warmRing: 0 }, edgeEnv);
// The same worker answering hits through the general path (no spliced tiles), same run.
const edgeGeneral = await startWorkerd(server.batch, { warmRing: 0, splicedHits: false }, edgeEnv);
// The same worker verifying the caller's token on every request (no verified-token cache).
const edgeVerify = await startWorkerd(server.batch, { warmRing: 0, jwtCacheSize: 0 }, edgeEnv);
// GET /healthz on a workerd of its own, so each process's CPU time is one path's.
const edgeHealth = await startWorkerd(server.batch, { warmRing: 0 }, edgeEnv);

/** CPU time (user + system) a process has used so far, in ms; NaN where /proc is absent. */
function cpuMs(pid) {
  const f = `/proc/${pid}/stat`;
  if (!existsSync(f)) return NaN;
  const fields = readFileSync(f, 'utf8').split(') ')[1].split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // USER_HZ = 100 on Linux
}
try {
  const first = await post(edge.batch, request, headers);
  if (first.status !== 200 || first.cache !== 'miss') throw new Error(`first edge request: ${first.status} ${first.cache}`);
  const again = await post(edge.batch, request, headers);
  if (again.cache !== 'hit') throw new Error(`second edge request was ${again.cache}, not a hit`);
  const items = again.json.items.length;
  const bytes = Buffer.byteLength(JSON.stringify(again.json));

  const viaEdge = () => fetch(edge.batch, { method: 'POST', headers, body: request })
    .then(async (r) => {
      if (r.headers.get('x-tilewarm-cache') !== 'hit') throw new Error('not a hit');
      await r.arrayBuffer();
    });
  await post(edgeGeneral.batch, request, headers);
  const viaGeneral = () => fetch(edgeGeneral.batch, { method: 'POST', headers, body: request })
    .then(async (r) => {
      if (r.headers.get('x-tilewarm-cache') !== 'hit') throw new Error('not a hit');
      await r.arrayBuffer();
    });
  await post(edgeVerify.batch, request, headers);
  const viaVerify = () => fetch(edgeVerify.batch, { method: 'POST', headers, body: request })
    .then(async (r) => {
      if (r.headers.get('x-tilewarm-cache') !== 'hit') throw new Error('not a hit');
      await r.arrayBuffer();
    });
  const direct = () => fetch(server.batch, { method: 'POST', headers, body: request })
    .then((r) => r.arrayBuffer());
  const health = () => fetch(`${edgeHealth.url}/healthz`).then((r) => r.arrayBuffer());

  for (let i = 0; i < 50; i++) {
    await viaEdge();
    await viaGeneral();
    await viaVerify();
    await direct();
    await health();
  }
  // Each path is answered by a process of its own (the server's change feed polls and the
  // workers' own polls are all the other work they do), so its CPU time over the run is
  // that path's.
  const pids = { edge: edge.child.pid, general: edgeGeneral.child.pid, verify: edgeVerify.child.pid, direct: server.child.pid, health: edgeHealth.child.pid };
  const cpu0 = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuMs(pid)]));
  const runs = { edge: [], general: [], verify: [], direct: [], health: [] };
  for (let i = 0; i < n; i++) {
    runs.edge.push(await timed(viaEdge));
    runs.general.push(await timed(viaGeneral));
    runs.verify.push(await timed(viaVerify));
    runs.direct.push(await timed(direct));
    runs.health.push(await timed(health));
  }
  const cpuPer = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, (cpuMs(pid) - cpu0[k]) / n]));
  for (const v of Object.values(runs)) v.sort((a, b) => a - b);
  const stat = (v) => ({ p50: pct(v, 50), p99: pct(v, 99), mean: v.reduce((a, b) => a + b, 0) / v.length });
  const s = Object.fromEntries(Object.entries(runs).map(([k, v]) => [k, stat(v)]));

  // The wasm proxy alone, in Node: a hit (begin) and a miss (complete with the origin's
  // answer, into a fresh proxy), same batch.
  const glue = await import(pathToFileURL(resolve(root, 'pkg/tilewarm_edge.js')).href);
  glue.initSync({ module: new WebAssembly.Module(readFileSync(resolve(root, 'pkg/tilewarm_edge_bg.wasm'))) });
  const reqBytes = new TextEncoder().encode(request);
  const originReq = (() => {
    const p = new glue.EdgeProxy('{"warmRing":0}');
    const st = p.begin(reqBytes, 'registered', Date.now());
    const body = st.origin;
    st.free();
    p.free();
    return body;
  })();
  const originBytes = new Uint8Array(await (await fetch(server.batch, { method: 'POST', headers, body: originReq })).arrayBuffer());
  const cpu = { hit: [], general: [], miss: [] };
  const m = Math.max(50, Math.floor(n / 5));
  // The same hit through the general path (splicedHits off), interleaved.
  const general = new glue.EdgeProxy('{"warmRing":0,"splicedHits":false}');
  {
    const st = general.begin(reqBytes, 'registered', Date.now());
    const done = general.complete(st.handle, 200, originBytes, -1, Date.now());
    st.free();
    done.free();
  }
  for (let i = 0; i < m + 10; i++) {
    const t1 = performance.now();
    const g = general.begin(reqBytes, 'registered', Date.now());
    if (g.cache !== 'hit') throw new Error('wasm proxy (general path): the repeat was not a hit');
    void g.body;
    const generalMs = performance.now() - t1;
    g.free();
    const p = new glue.EdgeProxy('{"warmRing":0}');
    const st = p.begin(reqBytes, 'registered', Date.now());
    let t0 = performance.now();
    const done = p.complete(st.handle, 200, originBytes, -1, Date.now());
    void done.body;
    const miss = performance.now() - t0;
    t0 = performance.now();
    // The first hit serialises the tiles; a second one is what a hot tile costs.
    p.begin(reqBytes, 'registered', Date.now()).free();
    t0 = performance.now();
    const hit = p.begin(reqBytes, 'registered', Date.now());
    if (hit.cache !== 'hit') throw new Error('wasm proxy: the repeat was not a hit');
    void hit.body;
    const hitMs = performance.now() - t0;
    if (i >= 10) {
      cpu.miss.push(miss);
      cpu.hit.push(hitMs);
      cpu.general.push(generalMs);
    }
    for (const x of [st, done, hit, p]) x.free();
  }
  for (const v of Object.values(cpu)) v.sort((a, b) => a - b);

  const size = (f) => {
    const buf = readFileSync(resolve(root, 'pkg', f));
    return { raw: buf.length, gz: gzipSync(buf, { level: 9 }).length };
  };
  const files = ['tilewarm_edge_bg.wasm', 'tilewarm_edge.js', 'edge.js'].map((f) => [f, size(f)]);
  const total = files.reduce((a, [, z]) => ({ raw: a.raw + z.raw, gz: a.gz + z.gz }), { raw: 0, gz: 0 });
  const ms = (x) => x.toFixed(3);
  const row = (label, k) => {
    const c = Number.isNaN(cpuPer[k]) ? 'n/a' : `${cpuPer[k].toFixed(3)} | ${(cpuPer[k] / cpuPer.direct).toFixed(2)}`;
    return `| ${label} | ${ms(s[k].p50)} | ${ms(s[k].p99)} | ${ms(s[k].mean)} | ${(s[k].p50 / s.direct.p50).toFixed(2)} | ${(s[k].p99 / s.direct.p99).toFixed(2)} | ${c} |`;
  };
  const lines = [
    `Hit path of a 16-tile batch (\`${tiles[0]}\` … \`${tiles.at(-1)}\`, ${items} items, ${bytes} bytes of JSON),`,
    `${n} requests each, interleaved, one at a time over keep-alive on loopback (Node fetch client).`,
    'CPU: user + system time of the process answering the path (workerd, or tilewarm-server), per request.',
    '',
    '| path | p50 ms | p99 ms | mean ms | p50 / direct | p99 / direct | CPU ms | CPU / direct |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    row('edge worker under workerd, cache hit', 'edge'),
    row('edge worker, every token verified (`jwtCacheSize: 0`)', 'verify'),
    row('edge worker, hits through the general path (`splicedHits: false`)', 'general'),
    row('tilewarm-server directly (in-process tier hit)', 'direct'),
    row('GET /healthz through workerd (runtime floor)', 'health'),
    '',
    `CPU cost of the wasm proxy alone for the same batch (\`EdgeProxy\` in Node, ${cpu.hit.length} runs; what counts`,
    'against a worker\'s CPU-time limit, besides the runtime\'s own HTTP work):',
    '',
    '| step | p50 ms | p99 ms |',
    '| --- | ---: | ---: |',
    `| hit: decode request, splice the 16 serialised tiles (src/proxy/wire.rs) | ${ms(pct(cpu.hit, 50))} | ${ms(pct(cpu.hit, 99))} |`,
    `| hit through the general path (\`splicedHits: false\`): read 16 tiles, write the answer | ${ms(pct(cpu.general, 50))} | ${ms(pct(cpu.general, 99))} |`,
    `| miss: decode the origin's answer, fill the cache, merge, write | ${ms(pct(cpu.miss, 50))} | ${ms(pct(cpu.miss, 99))} |`,
    '',
    'Edge worker code (what a deployment uploads besides worker.js):',
    '',
    '| file | raw bytes | gzipped bytes |',
    '| --- | ---: | ---: |',
    ...files.map(([f, z]) => `| \`${f}\` | ${z.raw} | ${z.gz} |`),
    `| **total** | ${total.raw} | ${total.gz} |`,
  ];
  const md = lines.join('\n') + '\n';
  process.stdout.write(md);
  if (args.md) {
    mkdirSync(dirname(args.md), { recursive: true });
    writeFileSync(args.md, md);
  }
} finally {
  await edgeHealth.stop();
  await edgeVerify.stop();
  await edgeGeneral.stop();
  await edge.stop();
  await server.stop();
}
