// safetensors reader and writer, platform-neutral (bytes come through a ByteSource, so the
// same code reads a Node file handle, an in-memory buffer or a browser Blob/File).
// Format: u64 LE header length N, N bytes of UTF-8 JSON header, then the data region;
// every data_offsets pair is relative to the start of the data region.
// Typed-array views assume a little-endian host, as safetensors data is little-endian
// (every platform WebGPU runs on is).

export type StDtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

const DTYPE_BYTES: Record<StDtype, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

const isDtype = (d: unknown): d is StDtype => typeof d === 'string' && Object.hasOwn(DTYPE_BYTES, d);

/** Random access to bytes. `read` returns a fresh array the caller may keep and modify;
 *  it may be shorter than asked only at end of data. */
export interface ByteSource {
  readonly name: string;
  readonly size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
  close?(): Promise<void>;
}

export interface TensorInfo {
  name: string;
  dtype: StDtype;
  shape: number[];
  /** absolute file offsets of the tensor's bytes, [begin, end) */
  begin: number;
  end: number;
}

export class SafetensorsError extends Error {
  override name = 'SafetensorsError';
}

/** Largest header we accept; the reference implementation uses the same cap. */
const MAX_HEADER = 100_000_000;
const METADATA_KEY = '__metadata__';

const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export class SafetensorsFile {
  private closed = false;

  private constructor(
    readonly source: ByteSource,
    readonly metadata: Record<string, string>,
    readonly tensors: Map<string, TensorInfo>,
  ) {}

  /** Reads and validates the header; tensor bytes are read only on demand. */
  static async open(src: ByteSource): Promise<SafetensorsFile> {
    const fail = (msg: string, tensor?: string): never => {
      throw new SafetensorsError(`${src.name}: ${tensor === undefined ? '' : `tensor ${JSON.stringify(tensor)}: `}${msg}`);
    };
    if (src.size < 8) fail(`file is ${src.size} bytes, shorter than the 8-byte header length`);
    const lenBytes = await readExact(src, 0, 8);
    const n64 = new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true);
    if (n64 === 0n) fail('header length is 0');
    if (n64 > BigInt(MAX_HEADER)) fail(`header length ${n64} exceeds the ${MAX_HEADER}-byte limit (not a safetensors file?)`);
    const n = Number(n64);
    if (8 + n > src.size) fail(`header length ${n} runs past the end of the ${src.size}-byte file`);

    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(await readExact(src, 8, n)));
    } catch (e) {
      if (e instanceof SafetensorsError) throw e;
      fail(`header is not UTF-8 JSON (${(e as Error).message})`);
    }
    if (!isPlainObject(header)) fail('header is not a JSON object');
    const h = header as Record<string, unknown>;

    const dataStart = 8 + n;
    const dataSize = src.size - dataStart;
    let metadata: Record<string, string> = {};
    const tensors = new Map<string, TensorInfo>();
    for (const [name, entry] of Object.entries(h)) {
      if (name === METADATA_KEY) {
        if (!isPlainObject(entry)) fail(`${METADATA_KEY} is not an object`);
        for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
          if (typeof v !== 'string') fail(`${METADATA_KEY} value for ${JSON.stringify(k)} is ${JSON.stringify(v)}, not a string`);
        }
        // fromEntries keeps a key named "__proto__" an own key instead of setting the prototype
        metadata = Object.fromEntries(Object.entries(entry as Record<string, string>));
        continue;
      }
      if (!isPlainObject(entry)) fail('entry is not an object', name);
      const { dtype, shape, data_offsets: offs } = entry as Record<string, unknown>;
      for (const [k, v] of [['dtype', dtype], ['shape', shape], ['data_offsets', offs]]) if (v === undefined) fail(`missing ${k}`, name);
      if (!isDtype(dtype)) fail(`unknown dtype ${JSON.stringify(dtype)} (known: ${Object.keys(DTYPE_BYTES).join(', ')})`, name);
      if (!Array.isArray(shape)) fail(`shape ${JSON.stringify(shape)} is not an array`, name);
      for (const d of shape as unknown[]) {
        if (!Number.isSafeInteger(d) || (d as number) < 0) fail(`shape ${JSON.stringify(shape)} has a dimension that is not a non-negative integer`, name);
      }
      if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0)) {
        fail(`data_offsets ${JSON.stringify(offs)} is not a pair of non-negative integers`, name);
      }
      const [b, e] = offs as [number, number];
      const dims = shape as number[];
      const want = numel(dims) * DTYPE_BYTES[dtype as StDtype];
      if (!Number.isSafeInteger(want)) fail(`shape ${JSON.stringify(dims)} is too large`, name);
      if (e < b || e > dataSize) fail(`data_offsets [${b}, ${e}] are outside the ${dataSize}-byte data region`, name);
      if (e - b !== want) fail(`data_offsets [${b}, ${e}] span ${e - b} bytes but ${dtype} ${JSON.stringify(dims)} needs ${want}`, name);
      tensors.set(name, { name, dtype: dtype as StDtype, shape: [...dims], begin: dataStart + b, end: dataStart + e });
    }

    // Empty tensors occupy no bytes, so they cannot overlap anything.
    const placed = [...tensors.values()].filter((t) => t.end > t.begin).sort((a, b) => a.begin - b.begin);
    for (let i = 1; i < placed.length; i++) {
      const prev = placed[i - 1], cur = placed[i];
      if (cur.begin < prev.end) fail(`bytes overlap those of tensor ${JSON.stringify(prev.name)}`, cur.name);
    }
    return new SafetensorsFile(src, metadata, tensors);
  }

  /** Tensor names, sorted. */
  keys(): string[] {
    return [...this.tensors.keys()].sort();
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (t) return t;
    const keys = this.keys();
    const shown = keys.slice(0, 8).map((k) => JSON.stringify(k)).join(', ');
    const more = keys.length > 8 ? `, ... (${keys.length} in all)` : '';
    throw new SafetensorsError(`${this.source.name}: no tensor ${JSON.stringify(name)}; available: ${keys.length ? shown + more : '(none)'}`);
  }

  /** The tensor's bytes as stored (little-endian), nothing else is read. */
  async readRaw(name: string): Promise<Uint8Array> {
    const t = this.info(name);
    if (this.closed) throw this.error(t, 'file is closed');
    return t.end === t.begin ? new Uint8Array(0) : readExact(this.source, t.begin, t.end - t.begin, t.name);
  }

  /** Any dtype as float32 (F64 and large I64 lose precision; BOOL is 0/1). */
  async readF32(name: string): Promise<Float32Array> {
    const t = this.info(name);
    const raw = await this.readRaw(name);
    switch (t.dtype) {
      case 'F32': return view(raw, Float32Array);
      case 'F16': return f16ToF32(view(raw, Uint16Array));
      case 'BF16': return bf16ToF32(view(raw, Uint16Array));
      case 'BOOL': return Float32Array.from(raw, (v) => (v ? 1 : 0));
      case 'I64': {
        const w = view(raw, Int32Array), out = new Float32Array(w.length / 2);
        for (let i = 0; i < out.length; i++) out[i] = w[2 * i + 1] * 4294967296 + (w[2 * i] >>> 0);
        return out;
      }
      default: {
        // F64 and the narrow integers: TypedArray#set converts element values
        const out = new Float32Array(raw.byteLength / DTYPE_BYTES[t.dtype]);
        out.set(view(raw, NUMERIC_VIEW[t.dtype as keyof typeof NUMERIC_VIEW]));
        return out;
      }
    }
  }

  /** Integer and BOOL dtypes as int32; I64 values must fit in int32. */
  async readI32(name: string): Promise<Int32Array> {
    const t = this.info(name);
    if (t.dtype === 'F64' || t.dtype === 'F32' || t.dtype === 'F16' || t.dtype === 'BF16') {
      throw this.error(t, `readI32 needs an integer or BOOL tensor, this one is ${t.dtype} (use readF32)`);
    }
    const raw = await this.readRaw(name);
    switch (t.dtype) {
      case 'I32': return view(raw, Int32Array);
      case 'BOOL': return Int32Array.from(raw, (v) => (v ? 1 : 0));
      case 'I64': {
        const w = view(raw, Int32Array), out = new Int32Array(w.length / 2);
        for (let i = 0; i < out.length; i++) {
          const lo = w[2 * i], hi = w[2 * i + 1];
          // fits in int32 exactly when the high word is the sign extension of the low word
          if (hi !== lo >> 31) {
            const v = (BigInt(hi) << 32n) | BigInt(lo >>> 0);
            throw this.error(t, `I64 value ${v} at index ${i} is outside the int32 range`);
          }
          out[i] = lo;
        }
        return out;
      }
      default: {
        const out = new Int32Array(raw.byteLength / DTYPE_BYTES[t.dtype]);
        out.set(view(raw, NUMERIC_VIEW[t.dtype as keyof typeof NUMERIC_VIEW]));
        return out;
      }
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.source.close?.();
  }

  private error(t: TensorInfo, msg: string): SafetensorsError {
    return new SafetensorsError(`${this.source.name}: tensor ${JSON.stringify(t.name)}: ${msg}`);
  }
}

async function readExact(src: ByteSource, offset: number, length: number, tensor?: string): Promise<Uint8Array> {
  const bytes = await src.read(offset, length);
  if (bytes.byteLength !== length) {
    const what = tensor === undefined ? '' : `tensor ${JSON.stringify(tensor)}: `;
    throw new SafetensorsError(`${src.name}: ${what}short read at offset ${offset}: got ${bytes.byteLength} of ${length} bytes (file truncated or changed?)`);
  }
  return bytes;
}

type TypedCtor<T> = { new (buffer: ArrayBuffer, byteOffset: number, length: number): T; new (buffer: ArrayBuffer): T; BYTES_PER_ELEMENT: number };

/** Dtypes whose elements TypedArray#set converts to f32 / i32 directly. */
const NUMERIC_VIEW: Record<'F64' | 'I32' | 'I16' | 'I8' | 'U8', TypedCtor<ArrayLike<number>>> = {
  F64: Float64Array, I32: Int32Array, I16: Int16Array, I8: Int8Array, U8: Uint8Array,
};

/** Typed view of bytes, copying only when the bytes are not aligned for the element type. */
function view<T>(bytes: Uint8Array, Ctor: TypedCtor<T>): T {
  const k = Ctor.BYTES_PER_ELEMENT;
  if (bytes.byteOffset % k === 0) return new Ctor(bytes.buffer as ArrayBuffer, bytes.byteOffset, bytes.byteLength / k);
  return new Ctor(new Uint8Array(bytes).buffer);
}

export function bufferSource(data: ArrayBuffer | Uint8Array, name = '<buffer>'): ByteSource {
  // a plain Uint8Array view: on a Node Buffer, slice() would not copy
  const bytes = data instanceof Uint8Array ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : new Uint8Array(data);
  return {
    name,
    size: bytes.byteLength,
    read: async (offset, length) => bytes.slice(offset, offset + length),
  };
}

/** A Blob or File (browser file input, fetch response blob); only the asked range is read. */
export function blobSource(blob: Blob, name = (blob as { name?: string }).name ?? '<blob>'): ByteSource {
  return {
    name,
    size: blob.size,
    read: async (offset, length) => new Uint8Array(await blob.slice(offset, offset + length).arrayBuffer()),
  };
}

// ---- writer ------------------------------------------------------------------------------

export interface TensorToWrite {
  dtype: StDtype;
  shape: number[];
  data: ArrayBufferView;
}

/** The file as chunks: the 8-byte length plus header (padded with spaces so the data region
 *  starts 8-byte aligned), then each tensor's bytes in name order, without copying them. */
export function serializeSafetensors(tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>): Uint8Array[] {
  const fail = (msg: string, tensor?: string): never => {
    throw new SafetensorsError(`safetensors writer: ${tensor === undefined ? '' : `tensor ${JSON.stringify(tensor)}: `}${msg}`);
  };
  const entries: [string, unknown][] = [];
  if (metadata !== undefined) {
    if (!isPlainObject(metadata)) fail('metadata is not an object');
    for (const [k, v] of Object.entries(metadata)) if (typeof v !== 'string') fail(`metadata value for ${JSON.stringify(k)} is not a string`);
    entries.push([METADATA_KEY, metadata]);
  }
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const name of Object.keys(tensors).sort()) {
    if (name === '') fail('tensor name is empty');
    if (name === METADATA_KEY) fail(`${METADATA_KEY} is reserved`, name);
    const { dtype, shape, data } = tensors[name];
    if (!isDtype(dtype)) fail(`unknown dtype ${JSON.stringify(dtype)}`, name);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) fail(`shape ${JSON.stringify(shape)} is not a list of non-negative integers`, name);
    if (!ArrayBuffer.isView(data)) fail('data is not an ArrayBufferView', name);
    const want = numel(shape) * DTYPE_BYTES[dtype];
    if (data.byteLength !== want) fail(`data has ${data.byteLength} bytes but ${dtype} ${JSON.stringify(shape)} needs ${want}`, name);
    entries.push([name, { dtype, shape, data_offsets: [offset, offset + want] }]);
    if (want > 0) chunks.push(new Uint8Array(data.buffer, data.byteOffset, want));
    offset += want;
  }
  // fromEntries keeps a tensor named "__proto__" an own key, so it is serialized
  const json = new TextEncoder().encode(JSON.stringify(Object.fromEntries(entries)));
  const n = Math.ceil(json.byteLength / 8) * 8;
  const head = new Uint8Array(8 + n).fill(0x20, 8 + json.byteLength);
  new DataView(head.buffer).setBigUint64(0, BigInt(n), true);
  head.set(json, 8);
  return [head, ...chunks];
}

// ---- float conversions ---------------------------------------------------------------------

let f16Table: Float32Array | undefined;

/** All 65536 half values, so conversion is one lookup per element. */
function buildF16Table(): Float32Array {
  const table = new Float32Array(65536);
  const bits = new Uint32Array(table.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e === 0) table[h] = (sign ? -m : m) * 2 ** -24; // zero and subnormals (exact in f32)
    else if (e === 31) bits[h] = (sign | 0x7f800000 | (m << 13)) >>> 0; // inf, nan (payload kept)
    else bits[h] = (sign | ((e + 112) << 23) | (m << 13)) >>> 0; // rebias 15 -> 127
  }
  return table;
}

export function f16ToF32(bits: Uint16Array): Float32Array {
  const table = (f16Table ??= buildF16Table());
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = table[bits[i]];
  return out;
}

/** float32 -> float16 bits, round to nearest even; overflow gives inf, nan stays nan. */
export function f32ToF16(x: Float32Array): Uint16Array {
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const out = new Uint16Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const f = u[i], sign = (f >>> 16) & 0x8000, a = f & 0x7fffffff;
    let h: number;
    if (a > 0x7f800000) h = 0x7e00; // nan -> quiet nan
    else if (a >= 0x477ff000) h = 0x7c00; // >= 65520 (halfway past 65504) and inf
    else if (a < 0x38800000) {
      // below 2^-14: subnormal half, value = round(|x| * 2^24) ulps; exact in float64
      const v = Math.abs(x[i]) * 2 ** 24;
      h = Math.floor(v);
      const r = v - h;
      if (r > 0.5 || (r === 0.5 && h & 1)) h++;
    } else {
      const m = a - 0x38000000; // rebias 127 -> 15; a mantissa carry rolls into the exponent
      h = m >>> 13;
      const r = m & 0x1fff;
      if (r > 0x1000 || (r === 0x1000 && h & 1)) h++;
    }
    out[i] = sign | h;
  }
  return out;
}

export function bf16ToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const u = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) u[i] = bits[i] << 16;
  return out;
}
