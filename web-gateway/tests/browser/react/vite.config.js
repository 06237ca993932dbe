import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

export default defineConfig({
  root: new URL('.', import.meta.url).pathname,
  plugins: [react()],
  // The component lives in web-gateway/web/, outside this package: resolve React
  // from here for it too.
  resolve: { dedupe: ['react', 'react-dom'] },
  logLevel: 'warn',
  build: { outDir: 'dist', emptyOutDir: true },
});
