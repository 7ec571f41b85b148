// A static file server on 127.0.0.1 for the built demo (dist/demo) and, under /model/, a model
// root with its files.json listing (models/webfiles.ts) and HTTP Range reads, so the page
// streams weights tensor by tensor. `npm run demo:web [-- DIR]` builds the page and serves it
// with DIR (default: the shipped models/default); the browser test starts one on a free port.
// `tsx tools/web/serve.ts --files-json DIR` prints DIR's files.json, for serving it elsewhere.
import { createReadStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import { extname, join, normalize, relative, resolve, sep } from 'node:path';

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.css': 'text/css', '.json': 'application/json',
  '.png': 'image/png', '.jpg': 'image/jpeg', '.safetensors': 'application/octet-stream', '.wasm': 'application/wasm',
};

/** files.json of a model root: every file under it ('/'-separated, dot files and atomic writes' temporaries left out) and its size. */
export async function filesJson(dir: string): Promise<{ files: Record<string, number> }> {
  const files: Record<string, number> = {};
  const walk = async (d: string): Promise<void> => {
    for (const e of (await readdir(d, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      if (e.name.startsWith('.') || e.name.includes('.tmp-')) continue;
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) files[relative(dir, p).split(sep).join('/')] = (await stat(p)).size;
    }
  };
  await walk(dir);
  return { files };
}

/** [start, end] (inclusive) of a single-range `Range: bytes=…` header; null: serve the whole file; 'bad': unsatisfiable. */
function byteRange(header: string | undefined, size: number): [number, number] | null | 'bad' {
  const m = header?.match(/^bytes=(\d*)-(\d*)$/);
  if (!m || (!m[1] && !m[2])) return null;
  const [start, end] = m[1] ? [Number(m[1]), m[2] ? Math.min(Number(m[2]), size - 1) : size - 1] : [Math.max(0, size - Number(m[2])), size - 1];
  return start > end || start >= size ? 'bad' : [start, end];
}

export interface ServeOptions {
  port?: number;
  /** a model root served under /model/ */
  model?: string;
}

export async function serveStatic(dir: string, o: ServeOptions = {}): Promise<{ url: string; close: () => Promise<void> }> {
  const mounts: [string, string][] = [...(o.model ? [['/model/', resolve(o.model)] as [string, string]] : []), ['/', resolve(dir)]];
  const server = createServer(async (req, res) => {
    const url = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    const [prefix, root] = mounts.find(([p]) => url.startsWith(p)) ?? mounts[mounts.length - 1];
    const path = normalize(join(root, url.slice(prefix.length)));
    if (path !== root && !path.startsWith(root + sep)) return void res.writeHead(403).end();
    const file = url.endsWith('/') ? join(path, 'index.html') : path;
    try {
      if (prefix === '/model/' && file === join(root, 'files.json') && !(await stat(file).catch(() => null))) {
        const body = JSON.stringify(await filesJson(root));
        return void res.writeHead(200, { 'content-type': TYPES['.json'], 'cache-control': 'no-store' }).end(body);
      }
      const s = await stat(file);
      if (!s.isFile()) throw new Error('not a file');
      const headers = { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream', 'accept-ranges': 'bytes', 'cache-control': 'no-cache' };
      const range = byteRange(req.headers.range, s.size);
      if (range === 'bad') return void res.writeHead(416, { 'content-range': `bytes */${s.size}` }).end();
      if (!range) {
        res.writeHead(200, { ...headers, 'content-length': s.size });
        return void createReadStream(file).pipe(res);
      }
      const [start, end] = range;
      res.writeHead(206, { ...headers, 'content-length': end - start + 1, 'content-range': `bytes ${start}-${end}/${s.size}` });
      createReadStream(file, { start, end }).pipe(res);
    } catch {
      res.writeHead(404).end('not found');
    }
  });
  await new Promise<void>((ok) => server.listen(o.port ?? 0, '127.0.0.1', ok));
  const addr = server.address();
  if (!addr || typeof addr === 'string') throw new Error('serveStatic: no TCP address');
  return { url: `http://127.0.0.1:${addr.port}/`, close: () => new Promise((ok) => server.close(() => ok())) };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = process.argv.slice(2);
  if (args[0] === '--files-json') {
    if (!args[1]) throw new Error('usage: tsx tools/web/serve.ts --files-json DIR');
    process.stdout.write(JSON.stringify(await filesJson(args[1]), null, 1) + '\n');
  } else {
    const model = args[0] ?? 'models/default';
    const found = await stat(join(model, 'layton.json')).then(() => true, () => false);
    const { url } = await serveStatic('dist/demo', { port: Number(process.env.PORT ?? 5173), model: found ? model : undefined });
    process.stdout.write(found
      ? `demo at ${url}?model=model/ with ${model} (Ctrl-C to stop)\n`
      : `demo at ${url} (Ctrl-C to stop); no model at ${model} (no layton.json): pick a model folder on the page, or pass one: npm run demo:web -- DIR\n`);
  }
}
