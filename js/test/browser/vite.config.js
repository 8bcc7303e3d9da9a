// Builds the test pages (one per map library) with the package as an app would import it:
// node_modules/tilewarm links to pkg/ (scripts/test-browser.sh makes the link).
import { resolve } from 'node:path';
import { defineConfig } from 'vite';

export default defineConfig({
  root: import.meta.dirname,
  base: './',
  logLevel: 'warn',
  build: {
    outDir: resolve(import.meta.dirname, '../../../target/browser-test'),
    emptyOutDir: true,
    rollupOptions: {
      input: {
        maplibre: resolve(import.meta.dirname, 'maplibre/index.html'),
        leaflet: resolve(import.meta.dirname, 'leaflet/index.html'),
        deckgl: resolve(import.meta.dirname, 'deckgl/index.html'),
        openlayers: resolve(import.meta.dirname, 'openlayers/index.html'),
        bench: resolve(import.meta.dirname, 'bench/index.html'),
      },
    },
  },
});
