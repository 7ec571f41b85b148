// Browser builds: `vite build` makes the demo page (tools/web -> dist/demo);
// `vite build --mode lib` the ESM library (runtime + models -> dist/lib). Both refuse any
// Node built-in on the browser path, so a stray `node:fs` import fails the build.
import { builtinModules } from 'node:module';
import { resolve } from 'node:path';
import { defineConfig, type Plugin } from 'vite';

const nodeOnly = new Set([...builtinModules, ...builtinModules.map((m) => `node:${m}`)]);

function noNodeBuiltins(): Plugin {
  return {
    name: 'no-node-builtins',
    enforce: 'pre',
    resolveId(id, importer) {
      if (nodeOnly.has(id) || id.startsWith('node:') || id === 'webgpu')
        throw new Error(`browser build: ${importer ?? '?'} imports the Node-only module '${id}'`);
      return null;
    },
  };
}

export default defineConfig(({ mode }) => ({
  root: mode === 'lib' ? '.' : 'tools/web',
  base: './',
  plugins: [noNodeBuiltins()],
  resolve: { conditions: ['browser'] },
  build: mode === 'lib'
    ? {
        outDir: resolve('dist/lib'),
        emptyOutDir: true,
        target: 'es2022',
        lib: { entry: { runtime: resolve('runtime/index.ts'), models: resolve('models/index.ts') }, formats: ['es'] },
      }
    : { outDir: resolve('dist/demo'), emptyOutDir: true, target: 'es2022' },
}));
