// Invalidate-to-visible latency through the change feed (issue 19), `scripts/bench.sh live`:
// a page (TileCache + tilewarm/live's follow) shows a 2 x 2-tile view served by
// tilewarm-server, whose origin is the node test backend; each round changes one visible
// item's price at the origin, POSTs /v1/invalidate, and times until the page's onUpdate
// shows the new price. Split: POST answered, feed event applied at the page, new value shown.
// Setups: one server, in-process tier; two servers on one Redis, the POST to A and the page
// on B (needs redis-server; skipped with a note otherwise).
//
//   node js/bench/live.mjs [--server-bin PATH] [--rounds N] [--md FILE]
import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { performance } from 'node:perf_hooks';
import { SignJWT } from 'jose';
import { TileCache } from 'tilewarm';
import { follow } from 'tilewarm/live';
import { startBackend, viewOf, SEATTLE } from '../test/support/backend.mjs';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const BIN = arg('--server-bin', 'target/debug/tilewarm-server');
const ROUNDS = Number(arg('--rounds', '100'));
const MD = arg('--md');
const SECRET = 'tilewarm-live-bench-secret-0123456789abcdef';
const children = [];
process.on('exit', () => { for (const c of children) c.kill(); });

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => ok(port)); });
  });
}

async function up(url, child, what) {
  const end = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${what} exited`);
    try { if ((await fetch(url)).ok) return; } catch { /* not yet */ }
    if (Date.now() > end) throw new Error(`${what} did not come up`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function server(origin, extra = []) {
  const port = await freePort();
  const child = spawn(BIN, ['--listen', `127.0.0.1:${port}`, '--log-level', 'error', '--origin', origin,
    '--jwt-secret', SECRET, '--caller-rate', '0', '--warmup-ring', '0', ...extra], { stdio: 'ignore' });
  children.push(child);
  const url = `http://127.0.0.1:${port}`;
  await up(`${url}/healthz`, child, 'tilewarm-server');
  return url;
}

async function redis() {
  if (spawnSync('redis-server', ['--version']).status !== 0) return null;
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  children.push(child);
  for (let i = 0; i < 100; i++) {
    if (spawnSync('redis-cli', ['-p', String(port), 'ping']).stdout?.toString().includes('PONG')) return `redis://127.0.0.1:${port}/0`;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('redis-server did not come up');
}

function pct(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

async function run(backend, postTo, pageOn) {
  const token = await new SignJWT({ tilewarm_admin: true, tilewarm_access: 'agent' })
    .setProtectedHeader({ alg: 'HS256' }).setExpirationTime('1h').sign(new TextEncoder().encode(SECRET));
  const cache = await TileCache.create({ endpoint: `${pageOn}/v1/batch` });
  let shown = new Map(), waiter = null, evAt = 0;
  cache.onUpdate((items) => { shown = new Map(items.map((it) => [it.id, it.data])); waiter?.(); });
  const stop = new AbortController();
  let ready = false;
  follow(cache, `${pageOn}/v1/changes`, { signal: stop.signal, onEvent: (e) => { if (e.type === 'ready') ready = true; else evAt = performance.now(); } });
  while (!ready) await new Promise((r) => setTimeout(r, 10));
  cache.setViewport(viewOf(SEATTLE[1], SEATTLE[2]));
  await cache.whenComplete();
  const ids = [...shown.keys()];
  const total = [], post = [], feed = [];
  for (let i = 0; i < ROUNDS; i++) {
    const id = ids[i % ids.length];
    const item = backend.byId.get(id);
    item.data.price += 1;
    const want = item.data.price;
    const t0 = performance.now();
    const r = await fetch(`${postTo}/v1/invalidate`, {
      method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ ids: [id] }),
    });
    if (r.status !== 200) throw new Error(`invalidate: ${r.status} ${await r.text()}`);
    await r.arrayBuffer();
    const t1 = performance.now();
    while (shown.get(id)?.price !== want) await new Promise((ok) => { waiter = ok; setTimeout(ok, 1000); });
    const t2 = performance.now();
    total.push(t2 - t0); post.push(t1 - t0); feed.push(evAt - t0);
  }
  stop.abort();
  cache.dispose();
  const row = (xs) => `${pct(xs, 50).toFixed(1)} | ${pct(xs, 99).toFixed(1)}`;
  return { total: row(total), post: row(post), feed: row(feed) };
}

const backend = await startBackend();
const rows = [];
const single = await server(backend.url);
rows.push(['one server, in-process tier', await run(backend, single, single)]);
const r = await redis();
let note = '';
if (r) {
  const a = await server(backend.url, ['--redis', r]);
  const b = await server(backend.url, ['--redis', r]);
  rows.push(['two servers on one Redis: POST to A, page on B', await run(backend, a, b)]);
} else {
  note = '\nredis-server is not installed: the two-instance row was not run.\n';
}
await backend.close();
const md = `Invalidate-to-visible latency at the client through the change feed (\`js/bench/live.mjs\`,
${ROUNDS} rounds per setup, ${BIN}, loopback): each round changes one visible item's price at the
origin (the node test backend), POSTs \`/v1/invalidate\`, and waits for the page's \`onUpdate\`
to show the new price. Columns are milliseconds from sending the POST: its answer, the feed
event applied at the page (\`follow\`'s \`onEvent\`), and the new value shown (the refetch
through the server and the origin included).

| setup | POST answered p50 | p99 | feed event at the page p50 | p99 | new value shown p50 | p99 |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
${rows.map(([name, x]) => `| ${name} | ${x.post} | ${x.feed} | ${x.total} |`).join('\n')}
${note}`;
if (MD) writeFileSync(MD, md);
console.log(md);
process.exit(0);
