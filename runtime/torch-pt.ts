// Reader for PyTorch checkpoints (`torch.save`, zip format since PyTorch 1.6: the LlamaGen
// and LaCTok releases). The pickle in `<archive>/data.pkl` is interpreted by a restricted
// machine that knows only containers, scalars and tensor rebuilding; any other global is
// refused before anything is built, so a hostile file cannot make us run code. Tensor bytes
// stay on disk (`<archive>/data/<key>` entries) and are read lazily, one tensor at a time.
import type { ByteSource, StDtype } from './safetensors.ts';

export class TorchCheckpointError extends Error {}

/** A tensor in a checkpoint: where its bytes are, not the bytes. */
export class PtTensor {
  constructor(
    readonly dtype: StDtype,
    readonly shape: number[],
    readonly stride: number[],
    /** element offset into the storage */
    readonly storageOffset: number,
    readonly storage: PtStorage,
  ) {}

  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  /** True when the elements are the dense row-major range the shape implies. */
  get isContiguous(): boolean {
    let expect = 1;
    for (let i = this.shape.length - 1; i >= 0; i--) {
      if (this.shape[i] !== 1 && this.stride[i] !== expect) return false;
      expect *= this.shape[i];
    }
    return true;
  }
}

export interface PtStorage {
  key: string;
  dtype: StDtype;
  /** absolute offset of the storage's bytes in the file */
  begin: number;
  bytes: number;
}

const ELEM: Record<string, StDtype> = {
  FloatStorage: 'F32', HalfStorage: 'F16', BFloat16Storage: 'BF16', DoubleStorage: 'F64', LongStorage: 'I64',
  IntStorage: 'I32', ShortStorage: 'I16', CharStorage: 'I8', ByteStorage: 'U8', BoolStorage: 'BOOL',
};
const ELEM_BYTES: Record<StDtype, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

// ---- zip (stored entries, as torch.save writes them; zip64 for > 4 GiB) ----------------
interface ZipEntry {
  name: string;
  dataBegin: number;
  size: number;
}

async function readZipEntries(src: ByteSource): Promise<Map<string, ZipEntry>> {
  const fail = (m: string): never => {
    throw new TorchCheckpointError(`${src.name}: ${m}`);
  };
  if (src.size < 22) fail('too small to be a PyTorch zip checkpoint');
  const tailLen = Math.min(src.size, 65557);
  const tail = await src.read(src.size - tailLen, tailLen);
  const dv = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
  let eocd = -1;
  for (let i = tailLen - 22; i >= 0; i--) if (dv.getUint32(i, true) === 0x06054b50) { eocd = i; break; }
  if (eocd < 0) {
    const head = await src.read(0, Math.min(2, src.size));
    if (head[0] === 0x80) fail('legacy (pre-1.6, non-zip) torch.save format; re-save it with a current PyTorch or convert to safetensors');
    fail('not a zip archive (no end-of-central-directory record)');
  }
  let count = dv.getUint16(eocd + 10, true);
  let cdSize = dv.getUint32(eocd + 12, true);
  let cdOffset = dv.getUint32(eocd + 16, true);
  if (cdOffset === 0xffffffff || count === 0xffff) {
    // zip64: locator just before the EOCD points at the zip64 EOCD record
    const loc = eocd - 20;
    if (loc < 0 || dv.getUint32(loc, true) !== 0x07064b50) fail('zip64 locator missing');
    const z64 = Number(dv.getBigUint64(loc + 8, true));
    const rec = await src.read(z64, 56);
    const rv = new DataView(rec.buffer, rec.byteOffset, 56);
    if (rv.getUint32(0, true) !== 0x06064b50) fail('bad zip64 end-of-central-directory record');
    count = Number(rv.getBigUint64(32, true));
    cdSize = Number(rv.getBigUint64(40, true));
    cdOffset = Number(rv.getBigUint64(48, true));
  }
  if (cdOffset + cdSize > src.size) fail('central directory lies beyond the end of the file (truncated?)');
  const cd = await src.read(cdOffset, cdSize);
  const cv = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
  const entries = new Map<string, ZipEntry>();
  let p = 0;
  for (let n = 0; n < count; n++) {
    if (p + 46 > cdSize || cv.getUint32(p, true) !== 0x02014b50) fail('corrupt central directory');
    const method = cv.getUint16(p + 10, true);
    let size = cv.getUint32(p + 24, true);
    const nameLen = cv.getUint16(p + 28, true);
    const extraLen = cv.getUint16(p + 30, true);
    const commentLen = cv.getUint16(p + 32, true);
    let local = cv.getUint32(p + 42, true);
    const name = new TextDecoder().decode(cd.subarray(p + 46, p + 46 + nameLen));
    // zip64 extra field (id 1) carries the 64-bit sizes/offset that overflowed
    let e = p + 46 + nameLen;
    const eEnd = e + extraLen;
    while (e + 4 <= eEnd) {
      const id = cv.getUint16(e, true);
      const len = cv.getUint16(e + 2, true);
      if (id === 1) {
        let q = e + 4;
        if (cv.getUint32(p + 24, true) === 0xffffffff) { size = Number(cv.getBigUint64(q, true)); q += 8; }
        if (cv.getUint32(p + 20, true) === 0xffffffff) q += 8;
        if (cv.getUint32(p + 42, true) === 0xffffffff) local = Number(cv.getBigUint64(q, true));
      }
      e += 4 + len;
    }
    if (method !== 0) fail(`entry ${name} is compressed (method ${method}); torch.save stores entries uncompressed`);
    const lh = await src.read(local, 30);
    const lv = new DataView(lh.buffer, lh.byteOffset, 30);
    if (lv.getUint32(0, true) !== 0x04034b50) fail(`entry ${name}: bad local header`);
    const dataBegin = local + 30 + lv.getUint16(26, true) + lv.getUint16(28, true);
    if (dataBegin + size > src.size) fail(`entry ${name} runs past the end of the file (truncated?)`);
    entries.set(name, { name, dataBegin, size });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

// ---- the restricted unpickler ----------------------------------------------------------
const MARK = Symbol('mark');
type Global = { global: string };
class Reduced {
  constructor(readonly fn: string, readonly args: unknown[]) {}
}

/** Globals a checkpoint may name. Everything else is refused. */
const ALLOWED = new Set([
  'collections.OrderedDict',
  'torch._utils._rebuild_tensor_v2',
  'torch._utils._rebuild_parameter',
  'torch.storage.UntypedStorage',
  ...Object.keys(ELEM).map((s) => `torch.${s}`),
  // training scripts pickle their argparse arguments; a Namespace becomes a plain object
  'argparse.Namespace',
]);

export interface PtLoadResult {
  source: ByteSource;
  /** the unpickled object: dicts become Map-free plain objects, tensors PtTensor */
  root: unknown;
  /** every tensor found, by its dotted path from the root (e.g. "model.tok_embeddings.weight") */
  tensors: Map<string, PtTensor>;
}

function unpickle(bytes: Uint8Array, file: string, storageOf: (key: string, storageType: string, numel: number) => PtStorage): unknown {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const stack: unknown[] = [];
  const memo = new Map<number, unknown>();
  let p = 0;
  const fail = (m: string): never => {
    throw new TorchCheckpointError(`${file}: data.pkl ${m} (at byte ${p})`);
  };
  const need = (n: number) => {
    if (p + n > bytes.length) fail('is truncated');
  };
  const u8 = () => (need(1), bytes[p++]);
  const u16 = () => (need(2), (p += 2), dv.getUint16(p - 2, true));
  const u32 = () => (need(4), (p += 4), dv.getUint32(p - 4, true));
  const str = (n: number) => (need(n), (p += n), new TextDecoder().decode(bytes.subarray(p - n, p)));
  const line = () => {
    const e = bytes.indexOf(0x0a, p);
    if (e < 0) fail('is truncated');
    const s = new TextDecoder().decode(bytes.subarray(p, e));
    p = e + 1;
    return s;
  };
  const popMark = (): unknown[] => {
    const i = stack.lastIndexOf(MARK);
    if (i < 0) fail('has no MARK');
    return stack.splice(i).slice(1);
  };
  const pop = () => (stack.length ? stack.pop() : fail('stack underflow'));
  const global = (mod: string, name: string): Global => {
    const g = `${mod}.${name}`;
    if (!ALLOWED.has(g)) fail(`names the global ${g}, which is not a tensor-rebuilding function; refusing to load it`);
    return { global: g };
  };
  const setItems = (d: unknown, kv: unknown[]) => {
    if (!(d instanceof Object) || Array.isArray(d)) fail('SETITEM on a non-dict');
    for (let i = 0; i + 1 < kv.length; i += 2) (d as Record<string, unknown>)[String(kv[i])] = kv[i + 1];
  };
  const call = (fn: unknown, args: unknown[]): unknown => {
    if (!fn || typeof fn !== 'object' || !('global' in fn)) fail('calls something that is not an allowed global');
    const g = (fn as Global).global;
    if (g === 'collections.OrderedDict') return {};
    if (g === 'argparse.Namespace') return {};
    if (g === 'torch._utils._rebuild_tensor_v2') {
      const [storage, offset, size, stride] = args as [PtStorage, number, number[], number[]];
      if (!storage || typeof storage !== 'object' || !('key' in storage)) fail('rebuilds a tensor without a storage');
      return new PtTensor(storage.dtype, [...size], [...stride], offset, storage);
    }
    if (g === 'torch._utils._rebuild_parameter') return args[0];
    return fail(`calls ${g} in an unsupported way`);
  };

  for (;;) {
    const op = u8();
    switch (op) {
      case 0x80: u8(); break; // PROTO
      case 0x95: p += 8; break; // FRAME
      case 0x2e: return pop(); // STOP
      case 0x28: stack.push(MARK); break;
      case 0x7d: stack.push({}); break; // EMPTY_DICT
      case 0x5d: stack.push([]); break; // EMPTY_LIST
      case 0x29: stack.push([]); break; // EMPTY_TUPLE
      case 0x64: { const kv = popMark(); const d = {}; setItems(d, kv); stack.push(d); break; } // DICT
      case 0x6c: case 0x74: stack.push(popMark()); break; // LIST, TUPLE
      case 0x85: stack.push([pop()]); break; // TUPLE1
      case 0x86: { const b = pop(); stack.push([pop(), b]); break; }
      case 0x87: { const c = pop(); const b = pop(); stack.push([pop(), b, c]); break; }
      case 0x4e: stack.push(null); break; // NONE
      case 0x88: stack.push(true); break;
      case 0x89: stack.push(false); break;
      case 0x4b: stack.push(u8()); break; // BININT1
      case 0x4d: stack.push(u16()); break; // BININT2
      case 0x4a: need(4); stack.push(dv.getInt32(p, true)); p += 4; break; // BININT
      case 0x8a: { // LONG1
        const n = u8();
        need(n);
        let v = 0n;
        for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[p + i]);
        if (n && bytes[p + n - 1] & 0x80) v -= 1n << BigInt(8 * n);
        p += n;
        stack.push(Number(v));
        break;
      }
      case 0x47: need(8); stack.push(dv.getFloat64(p, false)); p += 8; break; // BINFLOAT (big-endian)
      case 0x8c: stack.push(str(u8())); break; // SHORT_BINUNICODE
      case 0x58: stack.push(str(u32())); break; // BINUNICODE
      case 0x43: { const n = u8(); need(n); stack.push(bytes.slice(p, p + n)); p += n; break; } // SHORT_BINBYTES
      case 0x42: { const n = u32(); need(n); stack.push(bytes.slice(p, p + n)); p += n; break; } // BINBYTES
      case 0x71: memo.set(u8(), stack.at(-1)); break; // BINPUT
      case 0x72: memo.set(u32(), stack.at(-1)); break; // LONG_BINPUT
      case 0x94: memo.set(memo.size, stack.at(-1)); break; // MEMOIZE
      case 0x68: { const k = u8(); if (!memo.has(k)) fail(`BINGET of unknown memo ${k}`); stack.push(memo.get(k)); break; }
      case 0x6a: { const k = u32(); if (!memo.has(k)) fail(`LONG_BINGET of unknown memo ${k}`); stack.push(memo.get(k)); break; }
      case 0x63: { const mod = line(); stack.push(global(mod, line())); break; } // GLOBAL
      case 0x93: { const name = pop(); const mod = pop(); stack.push(global(String(mod), String(name))); break; } // STACK_GLOBAL
      case 0x51: { // BINPERSID: ('storage', storage_type, key, location, numel)
        const pid = pop() as unknown[];
        if (!Array.isArray(pid) || pid[0] !== 'storage') fail('has a persistent id that is not a storage');
        const st = pid[1] as Global;
        stack.push(storageOf(String(pid[2]), st.global, Number(pid[4])));
        break;
      }
      case 0x52: { const args = pop() as unknown[]; const fn = pop(); stack.push(call(fn, args)); break; } // REDUCE
      case 0x81: { const args = pop() as unknown[]; const cls = pop(); stack.push(call(cls, args)); break; } // NEWOBJ
      case 0x62: { // BUILD: state onto the object (Namespace attributes; tensor state is ignored)
        const state = pop();
        const obj = stack.at(-1);
        if (obj && typeof obj === 'object' && !(obj instanceof PtTensor) && state && typeof state === 'object' && !Array.isArray(state)) Object.assign(obj, state);
        break;
      }
      case 0x73: { const v = pop(); const k = pop(); setItems(stack.at(-1), [k, v]); break; } // SETITEM
      case 0x75: { const kv = popMark(); setItems(stack.at(-1), kv); break; } // SETITEMS
      case 0x61: { const v = pop(); (stack.at(-1) as unknown[]).push(v); break; } // APPEND
      case 0x65: { const vs = popMark(); (stack.at(-1) as unknown[]).push(...vs); break; } // APPENDS
      default:
        fail(`uses pickle opcode 0x${op.toString(16)}, which a tensor checkpoint does not need; refusing to load it`);
    }
  }
}

function collectTensors(x: unknown, prefix: string, out: Map<string, PtTensor>): void {
  if (x instanceof PtTensor) out.set(prefix, x);
  else if (Array.isArray(x)) x.forEach((v, i) => collectTensors(v, prefix ? `${prefix}.${i}` : String(i), out));
  else if (x && typeof x === 'object' && !(x instanceof Uint8Array))
    for (const [k, v] of Object.entries(x)) collectTensors(v, prefix ? `${prefix}.${k}` : k, out);
}

/** Opens a torch.save zip checkpoint without executing anything in it. */
export async function loadTorchCheckpoint(src: ByteSource): Promise<PtLoadResult> {
  const entries = await readZipEntries(src);
  const pkl = [...entries.values()].find((e) => e.name.endsWith('/data.pkl') || e.name === 'data.pkl');
  if (!pkl) throw new TorchCheckpointError(`${src.name}: no data.pkl in the archive; not a torch.save checkpoint`);
  const prefix = pkl.name.slice(0, pkl.name.length - 'data.pkl'.length);
  const bytes = await src.read(pkl.dataBegin, pkl.size);
  const storages = new Map<string, PtStorage>();
  const root = unpickle(bytes, src.name, (key, storageType, numel) => {
    let s = storages.get(key);
    if (s) return s;
    const dtype = ELEM[storageType.replace(/^torch\./, '')];
    if (!dtype) throw new TorchCheckpointError(`${src.name}: storage ${key} has type ${storageType}, which is not supported`);
    const e = entries.get(`${prefix}data/${key}`);
    if (!e) throw new TorchCheckpointError(`${src.name}: storage ${key} has no data/${key} entry (truncated archive?)`);
    if (e.size < numel * ELEM_BYTES[dtype]) throw new TorchCheckpointError(`${src.name}: storage ${key} holds ${e.size} bytes, fewer than its ${numel} ${dtype} elements need`);
    s = { key, dtype, begin: e.dataBegin, bytes: e.size };
    storages.set(key, s);
    return s;
  });
  const tensors = new Map<string, PtTensor>();
  collectTensors(root, '', tensors);
  for (const [name, t] of tensors) {
    const last = t.storageOffset + t.shape.reduce((a, d, i) => a + (d - 1) * t.stride[i], 0);
    if (t.numel > 0 && (last + 1) * ELEM_BYTES[t.dtype] > t.storage.bytes)
      throw new TorchCheckpointError(`${src.name}: tensor ${name} [${t.shape}] reaches past the end of its storage`);
  }
  return { source: src, root, tensors };
}

/**
 * The bytes of one tensor, row-major. Contiguous tensors are one read; strided views
 * (rare in state dicts) are gathered from their storage.
 */
export async function readPtTensor(src: ByteSource, t: PtTensor): Promise<Uint8Array> {
  const eb = ELEM_BYTES[t.dtype];
  if (t.isContiguous) return src.read(t.storage.begin + t.storageOffset * eb, t.numel * eb);
  const all = await src.read(t.storage.begin, t.storage.bytes);
  const out = new Uint8Array(t.numel * eb);
  const idx = new Array<number>(t.shape.length).fill(0);
  for (let n = 0; n < t.numel; n++) {
    let off = t.storageOffset;
    for (let d = 0; d < idx.length; d++) off += idx[d] * t.stride[d];
    out.set(all.subarray(off * eb, off * eb + eb), n * eb);
    for (let d = idx.length - 1; d >= 0 && ++idx[d] === t.shape[d]; d--) idx[d] = 0;
  }
  return out;
}
