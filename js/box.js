// A map's view as the one box TileCache.setViewport takes, for the map adapters (maplibre.js,
// deckgl.js, openlayers.js): longitudes folded into -180..180 (west > east across the
// antimeridian; the whole world when more than one world is in view), latitudes clamped.

export function wrapBox(west, south, east, north) {
  south = Math.max(-90, south);
  north = Math.min(90, north);
  if (!(east - west < 360)) return { west: -180, south, east: 180, north };
  const wrap = (x) => ((((x + 180) % 360) + 360) % 360) - 180;
  west = wrap(west);
  east = wrap(east);
  if (east === -180 && west !== -180) east = 180;
  return { west, south, east, north };
}
