// A small live chart on a 2D canvas: foreground and prefetch requests per second (stacked
// bars) and the hit rate (a line, 0..100 %) over the last minute, one sample every 500 ms.
const SAMPLES = 120;
const PERIOD_S = 0.5;

/**
 * Sizes a canvas's backing store to its laid-out size at the device pixel ratio, scales the
 * context so drawing uses CSS pixels, and returns that size (at least 50 x 40).
 */
export function fitCanvas(canvas, ctx) {
  const r = canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(50, r.width);
  const h = Math.max(40, r.height);
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return { w, h };
}

export class Chart {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.restart();
    this.resize();
    new ResizeObserver(() => this.resize()).observe(canvas);
  }

  /** New counters (a new cache): keep the history, take a new baseline. */
  restart() {
    this.prev = null;
    this.points ??= [];
  }

  resize() {
    ({ w: this.w, h: this.h } = fitCanvas(this.canvas, this.ctx));
    this.draw();
  }

  sample(s) {
    const fg = s.requests - s.prefetchRequests;
    const cur = { fg, pf: s.prefetchRequests, hits: s.hits, lookups: s.hits + s.misses };
    const p = this.prev;
    this.prev = cur;
    const d = (k) => (p ? Math.max(0, cur[k] - p[k]) : 0);
    const lookups = d('lookups');
    this.points.push({
      fg: d('fg') / PERIOD_S,
      pf: d('pf') / PERIOD_S,
      // Hit rate of the lookups in this period; carried over when there were none.
      hit: lookups > 0 ? d('hits') / lookups : (this.points.at(-1)?.hit ?? null),
    });
    if (this.points.length > SAMPLES) this.points.shift();
    this.draw();
  }

  draw() {
    const { ctx, w, h } = this;
    const top = 16, bottom = h - 4, plotH = bottom - top;
    ctx.clearRect(0, 0, w, h);
    const maxRate = Math.max(4, ...this.points.map((q) => q.fg + q.pf));
    const bw = w / SAMPLES;
    ctx.strokeStyle = '#334155';
    ctx.lineWidth = 1;
    for (const f of [0.5, 1]) {
      ctx.beginPath();
      ctx.moveTo(0, bottom - plotH * f + 0.5);
      ctx.lineTo(w, bottom - plotH * f + 0.5);
      ctx.stroke();
    }
    const x0 = w - this.points.length * bw;
    this.points.forEach((q, i) => {
      const x = x0 + i * bw;
      const hf = (q.fg / maxRate) * plotH;
      const hp = (q.pf / maxRate) * plotH;
      ctx.fillStyle = '#f59e0b';
      ctx.fillRect(x, bottom - hf, Math.max(1, bw - 0.5), hf);
      ctx.fillStyle = '#3b82f6';
      ctx.fillRect(x, bottom - hf - hp, Math.max(1, bw - 0.5), hp);
    });
    ctx.strokeStyle = '#22c55e';
    ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    this.points.forEach((q, i) => {
      if (q.hit == null) return;
      const x = x0 + i * bw + bw / 2;
      const y = bottom - q.hit * plotH;
      if (started) ctx.lineTo(x, y);
      else ctx.moveTo(x, y);
      started = true;
    });
    ctx.stroke();
    ctx.fillStyle = '#94a3b8';
    ctx.font = '10px system-ui, sans-serif';
    ctx.textBaseline = 'top';
    // The scale of the top line, not a current value.
    ctx.fillText(`top line: ${maxRate.toFixed(0)} req/s, 100 % hit rate`, 4, 2);
    ctx.textAlign = 'right';
    ctx.fillText('last 60 s', w - 4, 2);
    ctx.textAlign = 'left';
  }
}
