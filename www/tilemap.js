// The data tiles around the view as a small grid in the panel, coloured by state, with the
// view drawn on top: the ring of prefetched tiles and the look-ahead show here, while the
// map itself only ever shows the tiles in view.
import { fitCanvas } from './chart.js';

export const STATE_COLOURS = {
  loaded: '#22c55e',
  prefetched: '#3b82f6',
  inflight: '#f59e0b',
  missing: '#ef4444',
  none: '#1e293b',
};

export class TileMap {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.last = null;
    new ResizeObserver(() => this.resize()).observe(canvas);
    this.resize();
  }

  /** Width over height of the drawing area. */
  aspect() {
    return this.w / this.h;
  }

  resize() {
    ({ w: this.w, h: this.h } = fitCanvas(this.canvas, this.ctx));
    if (this.last) this.draw(this.last);
  }

  /**
   * tiles: [{x, y, state}] of one zoom; view: fractional tile coordinates {x0, y0, x1, y1}
   * of the map's view (null below the data zoom).
   */
  draw(frame) {
    this.last = frame;
    const { ctx, w, h } = this;
    const { tiles, view } = frame;
    ctx.clearRect(0, 0, w, h);
    if (!tiles.length || !view) {
      ctx.fillStyle = '#94a3b8';
      ctx.font = '12px system-ui, sans-serif';
      ctx.textAlign = 'center';
      ctx.fillText('zoom in to see data tiles', w / 2, h / 2);
      ctx.textAlign = 'left';
      return;
    }
    const xs = tiles.map((t) => t.x), ys = tiles.map((t) => t.y);
    const gx0 = Math.min(...xs), gx1 = Math.max(...xs) + 1, gy0 = Math.min(...ys), gy1 = Math.max(...ys) + 1;
    const cell = Math.min((w - 4) / (gx1 - gx0), (h - 4) / (gy1 - gy0));
    const ox = (w - cell * (gx1 - gx0)) / 2, oy = (h - cell * (gy1 - gy0)) / 2;
    const px = (x) => ox + (x - gx0) * cell, py = (y) => oy + (y - gy0) * cell;
    for (const t of tiles) {
      ctx.fillStyle = STATE_COLOURS[t.state] ?? STATE_COLOURS.none;
      ctx.globalAlpha = t.state === 'none' ? 1 : 0.85;
      ctx.fillRect(px(t.x) + 1, py(t.y) + 1, cell - 2, cell - 2);
    }
    ctx.globalAlpha = 1;
    ctx.strokeStyle = '#f8fafc';
    ctx.lineWidth = 2;
    ctx.strokeRect(px(view.x0), py(view.y0), (view.x1 - view.x0) * cell, (view.y1 - view.y0) * cell);
  }
}
