import { defineConfig } from 'vite';

// The bundle is embedded in the imageimport binary and served by the upload service under a
// strict Content-Security-Policy: no inline scripts or styles, no third-party requests.
export default defineConfig({
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    target: 'es2022',
    sourcemap: false,
  },
});
