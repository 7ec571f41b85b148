// Model roots without a file system: a root's files as URLs (fetch) or as Blobs (files a user
// picked or dropped), handed to the same loaders as a folder on disk (ModelFiles), so loading
// validates and fails the same way; only the file names in messages are URLs or picked paths.
//
// A URL root is listed by its files.json, {"files": {"vq/config.json": 812, …}} (every file's
// '/'-separated path under the root and its size in bytes): a static host cannot list a folder.
// tools/web/serve.ts answers it for the root it serves (`--files-json DIR` prints one for any
// other host). Reads are HTTP Range requests, so a safetensors file streams tensor by tensor;
// a server that ignores Range answers the whole file once, kept for the file's later reads.
import { type ByteSource, blobSource } from '../runtime/index.ts';
import type { ModelFiles } from './checkpoint.ts';

/** Called after every read: `loaded` of the file's `size` bytes have been read so far. */
export type LoadProgress = (file: string, loaded: number, size: number) => void;

export interface ModelRoot {
  /** the root (a URL, or the picked folder's name), for messages */
  readonly name: string;
  /** every file's path under the root ('/'-separated) and its size */
  readonly files: ReadonlyMap<string, number>;
  /** the files directly in a subfolder ('' the root itself); an error names a folder holding no file */
  folder(sub: string): Promise<ModelFiles>;
}

type Opener = (path: string, size: number) => ByteSource;

function listedRoot(name: string, files: Map<string, number>, open: Opener, onProgress?: LoadProgress): ModelRoot {
  const progressed = (path: string, src: ByteSource): ByteSource => {
    if (!onProgress) return src;
    let loaded = 0;
    return {
      ...src,
      read: async (offset, length) => {
        const bytes = await src.read(offset, length);
        loaded = Math.min(src.size, loaded + bytes.byteLength);
        onProgress(path, loaded, src.size);
        return bytes;
      },
    };
  };
  return {
    name,
    files,
    async folder(sub) {
      const prefix = sub ? `${sub.replace(/\/+$/, '')}/` : '';
      const here = [...files.keys()].filter((p) => p.startsWith(prefix) && !p.slice(prefix.length).includes('/')).map((p) => p.slice(prefix.length));
      const dir = prefix ? `${name}/${prefix.slice(0, -1)}` : name;
      if (prefix && !here.length) throw new Error(`${dir}: no such model folder`);
      return {
        name: dir,
        list: async () => here,
        open: async (file) => {
          const size = files.get(prefix + file);
          return size === undefined ? null : progressed(prefix + file, open(prefix + file, size));
        },
      };
    },
  };
}

/** A file at a URL, read by HTTP Range requests (or whole, once, where the server ignores Range). */
function urlSource(url: string, size: number, fetchFn: typeof fetch): ByteSource {
  let whole: Promise<Uint8Array> | undefined;
  const get = async (init?: RequestInit): Promise<Response> => {
    let r: Response;
    try {
      r = await fetchFn(url, init);
    } catch (e) {
      throw new Error(`${url}: cannot fetch (${(e as Error).message})`);
    }
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}${r.statusText ? ` ${r.statusText}` : ''}`);
    return r;
  };
  const bytesOf = async (r: Response, want: number): Promise<Uint8Array> => {
    const b = new Uint8Array(await r.arrayBuffer());
    if (b.byteLength !== want) throw new Error(`${url}: got ${b.byteLength} bytes where files.json and the request mean ${want} (the file changed on the server?)`);
    return b;
  };
  return {
    name: url,
    size,
    async read(offset, length) {
      const end = Math.min(size, offset + length);
      if (end <= offset) return new Uint8Array(0);
      if (!whole) {
        const r = await get({ headers: { Range: `bytes=${offset}-${end - 1}` } });
        if (r.status === 206) return bytesOf(r, end - offset);
        whole ??= bytesOf(r, size);
      }
      return (await whole).slice(offset, end);
    },
  };
}

/**
 * The model root at `base` (a folder URL; relative ones resolve against the page), listed by
 * its files.json. `fetch` defaults to the global one.
 */
export async function urlRoot(base: string, o: { onProgress?: LoadProgress; fetch?: typeof fetch } = {}): Promise<ModelRoot> {
  const fetchFn = o.fetch ?? globalThis.fetch.bind(globalThis);
  const root = new URL(base.endsWith('/') ? base : `${base}/`, globalThis.location?.href).href;
  const listing = `${root}files.json`;
  let r: Response;
  try {
    r = await fetchFn(listing);
  } catch (e) {
    throw new Error(`${listing}: cannot fetch (${(e as Error).message})`);
  }
  if (r.status === 404) throw new Error(`${listing}: not found (a model root served over HTTP lists its files in files.json: {"files": {"<path>": <bytes>, …}})`);
  if (!r.ok) throw new Error(`${listing}: HTTP ${r.status}${r.statusText ? ` ${r.statusText}` : ''}`);
  let files: unknown;
  try {
    files = (await r.json()).files;
  } catch (e) {
    throw new Error(`${listing}: not JSON (${(e as Error).message})`);
  }
  if (!files || typeof files !== 'object' || Array.isArray(files) || !Object.entries(files).every(([p, n]) => p && !p.startsWith('/') && !p.split('/').includes('..') && Number.isSafeInteger(n) && (n as number) >= 0))
    throw new Error(`${listing}: "files" must map relative paths (no '..') to sizes in bytes`);
  const name = root.slice(0, -1);
  return listedRoot(name, new Map(Object.entries(files as Record<string, number>)), (path, size) => urlSource(root + path.split('/').map(encodeURIComponent).join('/'), size, fetchFn), o.onProgress);
}

/**
 * A root of files the user picked: a folder from `<input type="file" webkitdirectory>` (each
 * File's webkitRelativePath starts with the folder's name, which names the root), or
 * [path, Blob] pairs with paths relative to the root.
 */
export function blobRoot(files: Iterable<File> | Iterable<[string, Blob]>, o: { name?: string; onProgress?: LoadProgress } = {}): ModelRoot {
  const blobs = new Map<string, Blob>();
  let folder: string | undefined;
  for (const f of files) {
    let [path, blob] = Array.isArray(f) ? f : [f.webkitRelativePath || f.name, f];
    if (!Array.isArray(f) && f.webkitRelativePath) {
      const cut = path.indexOf('/');
      folder ??= path.slice(0, cut);
      path = path.slice(cut + 1);
    }
    blobs.set(path, blob);
  }
  const name = o.name ?? folder ?? '<picked files>';
  const sizes = new Map([...blobs].map(([p, b]) => [p, b.size]));
  return listedRoot(name, sizes, (path) => blobSource(blobs.get(path)!, `${name}/${path}`), o.onProgress);
}
