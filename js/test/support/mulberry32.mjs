/**
 * mulberry32: a small seeded generator, so a failing random run replays from its seed.
 * `mulberry32(seed)` returns a function giving the next number in [0, 1). Shared by the
 * package's and the edge worker's seeded tests.
 */
export function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
