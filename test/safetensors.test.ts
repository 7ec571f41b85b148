import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import {
  bf16ToF32, blobSource, bufferSource, f16ToF32, f32ToF16, SafetensorsError, SafetensorsFile, serializeSafetensors,
  type ByteSource, type TensorToWrite,
} from '../runtime/safetensors.ts';
import { openSafetensors, saveSafetensors, writeFileAtomic } from '../runtime/platform/node-fs.ts';

const dir = mkdtempSync(join(tmpdir(), 'st-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const concat = (chunks: Uint8Array[]) => {
  const out = new Uint8Array(chunks.reduce((a, c) => a + c.byteLength, 0));
  let o = 0;
  for (const c of chunks) (out.set(c, o), (o += c.byteLength));
  return out;
};
const u64 = (n: number | bigint) => {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
  return b;
};
const bytesOf = (v: ArrayBufferView) => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
const f16bits = (...x: number[]) => Array.from(f32ToF16(Float32Array.from(x)));

describe('float conversions', () => {
  it('f32 -> f16 rounds to nearest even and handles specials', () => {
    expect(f16bits(0, -0, 1, 65504, 6.1e-5, Infinity, -Infinity)).toEqual([0x0000, 0x8000, 0x3c00, 0x7bff, 0x03ff, 0x7c00, 0xfc00]);
    const [nan] = f16bits(NaN);
    expect(nan & 0x7c00).toBe(0x7c00);
    expect(nan & 0x3ff).not.toBe(0);
    // ties go to the even neighbour, in the normal and the subnormal range
    expect(f16bits(1 + 2 ** -11, 1 + 3 * 2 ** -11, 2 ** -25, 3 * 2 ** -25, 2 ** -24)).toEqual([0x3c00, 0x3c02, 0x0000, 0x0002, 0x0001]);
    expect(f16bits(65519, 65520, 1e6, -1e6, 2 ** -14 - 2 ** -25)).toEqual([0x7bff, 0x7c00, 0x7c00, 0xfc00, 0x0400]);
  });

  it('f16 -> f32 is exact and every half value survives f32ToF16(f16ToF32(h))', () => {
    const f = f16ToF32(Uint16Array.of(0x0000, 0x8000, 0x3c00, 0x7bff, 0x03ff, 0x0001, 0x7c00, 0xfc00, 0x7e00));
    expect(Array.from(f.subarray(0, 8))).toEqual([0, -0, 1, 65504, 1023 * 2 ** -24, 2 ** -24, Infinity, -Infinity]);
    expect(Object.is(f[1], -0)).toBe(true);
    expect(f[8]).toBeNaN();
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const back = f32ToF16(f16ToF32(all));
    for (let h = 0; h < 65536; h++) {
      const isNan = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      if (isNan ? (back[h] & 0x7fff) <= 0x7c00 : back[h] !== h) expect.fail(`half 0x${h.toString(16)} -> 0x${back[h].toString(16)}`);
    }
  });

  it('bf16 -> f32', () => {
    const f = bf16ToF32(Uint16Array.of(0x3f80, 0xc000, 0x4049, 0x7f80, 0xff80, 0x0001, 0x7fc0));
    expect(Array.from(f.subarray(0, 6))).toEqual([1, -2, 3.140625, Infinity, -Infinity, 2 ** -133]);
    expect(f[6]).toBeNaN();
  });
});

describe('round trip', () => {
  const tensors: Record<string, TensorToWrite> = {
    f64: { dtype: 'F64', shape: [2, 2], data: Float64Array.of(1.5, -2.25, 1e-3, 1e300) },
    f32: { dtype: 'F32', shape: [3], data: Float32Array.of(0.5, -1, 3.25) },
    f32_scalar: { dtype: 'F32', shape: [], data: Float32Array.of(7.5) },
    f16: { dtype: 'F16', shape: [2, 3], data: f32ToF16(Float32Array.of(0, -0, 1, 65504, 6.1e-5, -Infinity)) },
    bf16: { dtype: 'BF16', shape: [3], data: Uint16Array.of(0x3f80, 0xc020, 0x4049) },
    i64: { dtype: 'I64', shape: [4], data: BigInt64Array.of(-5n, 0n, 2n ** 31n - 1n, -(2n ** 31n)) },
    i64_big: { dtype: 'I64', shape: [2], data: BigInt64Array.of(1n, -(2n ** 40n)) },
    i32: { dtype: 'I32', shape: [1, 3], data: Int32Array.of(-2147483648, 0, 2147483647) },
    i16: { dtype: 'I16', shape: [2], data: Int16Array.of(-32768, 32767) },
    i8: { dtype: 'I8', shape: [3], data: Int8Array.of(-128, 5, 127) },
    u8: { dtype: 'U8', shape: [2, 2], data: Uint8Array.of(0, 1, 128, 255) },
    bool: { dtype: 'BOOL', shape: [3], data: Uint8Array.of(1, 0, 1) },
    bool_scalar: { dtype: 'BOOL', shape: [], data: Uint8Array.of(1) },
    empty_f32: { dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
    empty_i64: { dtype: 'I64', shape: [3, 0], data: new BigInt64Array(0) },
    // a view into a larger buffer at an odd offset: only its own bytes are written
    u8_view: { dtype: 'U8', shape: [2], data: new Uint8Array([9, 8, 7, 6]).subarray(1, 3) },
  };
  const metadata = { format: 'pt', note: 'ünïcode ✓', __proto__: 'kept as a key' } as Record<string, string>;
  const expectF32: Record<string, number[]> = {
    f64: [1.5, -2.25, Math.fround(1e-3), Infinity], f32: [0.5, -1, 3.25], f32_scalar: [7.5],
    f16: [0, -0, 1, 65504, 1023 * 2 ** -24, -Infinity], bf16: [1, -2.5, 3.140625],
    i64: [-5, 0, 2 ** 31, -(2 ** 31)], i64_big: [1, -(2 ** 40)], i32: [-(2 ** 31), 0, 2 ** 31],
    i16: [-32768, 32767], i8: [-128, 5, 127], u8: [0, 1, 128, 255], bool: [1, 0, 1], bool_scalar: [1],
    empty_f32: [], empty_i64: [], u8_view: [8, 7],
  };
  const expectI32: Record<string, number[]> = {
    i64: [-5, 0, 2 ** 31 - 1, -(2 ** 31)], i32: [-(2 ** 31), 0, 2 ** 31 - 1], i16: [-32768, 32767], i8: [-128, 5, 127],
    u8: [0, 1, 128, 255], bool: [1, 0, 1], bool_scalar: [1], empty_i64: [], u8_view: [8, 7],
  };

  const check = async (f: SafetensorsFile) => {
    expect(f.keys()).toEqual(Object.keys(tensors).sort());
    expect(f.metadata).toEqual(metadata);
    expect(Object.getPrototypeOf(f.metadata)).toBe(Object.prototype);
    for (const [name, t] of Object.entries(tensors)) {
      const info = f.info(name);
      expect([info.dtype, info.shape], name).toEqual([t.dtype, t.shape]);
      expect(await f.readRaw(name), name).toEqual(bytesOf(t.data).slice());
      expect(Array.from(await f.readF32(name)), name).toEqual(expectF32[name]);
      if (expectI32[name]) expect(Array.from(await f.readI32(name)), name).toEqual(expectI32[name]);
    }
    await expect(f.readI32('i64_big')).rejects.toThrow(/tensor "i64_big".*-1099511627776 at index 1/);
    await expect(f.readI32('f32')).rejects.toThrow(/tensor "f32".*readF32/);
    expect(() => f.info('nope')).toThrow(/no tensor "nope"; available: "bf16", "bool"/);
  };

  it('writes the layout the format asks for', () => {
    const chunks = serializeSafetensors(tensors, metadata);
    const all = concat(chunks);
    const n = Number(new DataView(all.buffer).getBigUint64(0, true));
    expect((8 + n) % 8).toBe(0);
    const header = JSON.parse(new TextDecoder().decode(all.subarray(8, 8 + n)));
    const spans = Object.keys(tensors).sort().map((k) => header[k].data_offsets as number[]);
    spans.forEach(([b, e], i) => {
      expect(b).toBe(i === 0 ? 0 : spans[i - 1][1]);
      expect(e).toBeGreaterThanOrEqual(b);
    });
    expect(all.byteLength).toBe(8 + n + spans[spans.length - 1][1]);
    // tensor data is not copied into the chunks
    expect(chunks.some((c) => c.buffer === tensors.f64.data.buffer)).toBe(true);
  });

  it('through a file', async () => {
    const path = join(dir, 'all.safetensors');
    await saveSafetensors(path, tensors, metadata);
    const f = await openSafetensors(path);
    await check(f);
    await f.close();
    await f.close(); // idempotent
    await expect(f.readRaw('f32')).rejects.toThrow(/closed/);
  });

  it('through bufferSource and blobSource', async () => {
    const bytes = concat(serializeSafetensors(tensors, metadata));
    await check(await SafetensorsFile.open(bufferSource(bytes, 'mem.safetensors')));
    // a Node Buffer at an offset into a larger allocation, as readFileSync may return
    const buf = Buffer.concat([Buffer.alloc(3), bytes]).subarray(3);
    const src = bufferSource(buf, 'node-buffer');
    await check(await SafetensorsFile.open(src));
    (await src.read(0, 8)).fill(0xff); // reads are copies: the caller may scribble on them
    expect(buf.subarray(0, 8)).toEqual(Buffer.from(bytes.subarray(0, 8)));
    // a zero-copy source at an odd byteOffset hands out unaligned views: readers must copy, not fail
    const shifted = new Uint8Array(bytes.byteLength + 1);
    shifted.set(bytes, 1);
    const unaligned: ByteSource = { name: 'views', size: bytes.byteLength, read: async (o, l) => shifted.subarray(1 + o, 1 + o + l) };
    await check(await SafetensorsFile.open(unaligned));
    await check(await SafetensorsFile.open(blobSource(new Blob([bytes]), 'blob.safetensors')));
  });

  it('rejects bad input to the writer', () => {
    const bad = (t: Record<string, TensorToWrite>, m?: Record<string, string>) => () => serializeSafetensors(t, m);
    expect(bad({ x: { dtype: 'F32', shape: [3], data: new Float32Array(2) } })).toThrow(/tensor "x".*8 bytes.*needs 12/);
    expect(bad({ '': { dtype: 'U8', shape: [0], data: new Uint8Array(0) } })).toThrow(/name is empty/);
    expect(bad({ __metadata__: { dtype: 'U8', shape: [0], data: new Uint8Array(0) } })).toThrow(/reserved/);
    expect(bad({ x: { dtype: 'F8' as 'F32', shape: [0], data: new Uint8Array(0) } })).toThrow(/tensor "x".*unknown dtype/);
    expect(bad({ x: { dtype: 'U8', shape: [-1], data: new Uint8Array(0) } })).toThrow(/tensor "x".*shape/);
    expect(bad({}, { a: 1 as unknown as string })).toThrow(/metadata value for "a"/);
    expect(bad({ x: { dtype: 'U8', shape: [2], data: Uint8Array.of(1, 2) } })).not.toThrow();
  });
});

describe('PyTorch fixture', () => {
  const path = fileURLToPath(new URL('./fixtures/st_roundtrip.safetensors', import.meta.url));

  it('reads what PyTorch wrote and rounds to f16 as PyTorch does', async () => {
    const f = await openSafetensors(path);
    try {
      expect(f.metadata.producer).toBe('gen_safetensors_fixture.py');
      expect(f.info('f32').shape).toEqual([2, 3]);
      expect(Array.from(await f.readF32('f32'))).toEqual([1.5, -2, 3.25, 0, 0.125, -7]);
      expect(Array.from(await f.readF32('bf16'))).toEqual([1, -2.5, 3.140625, -0, Infinity]);
      expect(Array.from(new Uint16Array((await f.readRaw('bf16_round')).buffer))).toEqual([0x4049, 0x714a, 0x8da2]);
      expect(Array.from(await f.readI32('i64'))).toEqual([-3, 0, 2 ** 31 - 1, -(2 ** 31)]);
      expect(Array.from(await f.readF32('i64_big'))).toEqual([2 ** 40]);
      await expect(f.readI32('i64_big')).rejects.toThrow(/st_roundtrip\.safetensors: tensor "i64_big"/);
      expect(Array.from(await f.readI32('u8'))).toEqual([0, 51, 102, 153, 204, 255]);
      expect(Array.from(await f.readI32('bool'))).toEqual([1, 0, 1]);
      expect(f.info('scalar')).toMatchObject({ dtype: 'F64', shape: [] });
      expect(Array.from(await f.readF32('scalar'))).toEqual([2.5]);
      expect(f.info('empty')).toMatchObject({ dtype: 'F32', shape: [0, 3] });
      expect((await f.readF32('empty')).length).toBe(0);

      const src = await f.readF32('f16_src');
      const torchBits = new Uint16Array((await f.readRaw('f16')).buffer);
      const ours = f32ToF16(src);
      for (let i = 0; i < src.length; i++) {
        if (Number.isNaN(src[i])) expect(f16ToF32(ours.subarray(i, i + 1))[0]).toBeNaN();
        else expect(ours[i], `f16 of ${src[i]}`).toBe(torchBits[i]);
      }
      const back = await f.readF32('f16');
      for (let i = 0; i < src.length; i++) if (!Number.isNaN(src[i])) expect(back[i]).toBe(f16ToF32(ours.subarray(i, i + 1))[0]);
    } finally {
      await f.close();
    }
  });
});

describe('malformed files', () => {
  /** length prefix + header (object, or raw string/bytes) + data; `len` overrides the prefix. */
  const build = (header: unknown, data = new Uint8Array(0), len?: number | bigint) => {
    const h = header instanceof Uint8Array ? header : new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
    return concat([u64(len ?? h.byteLength), h, data]);
  };
  const t = (dtype: unknown, shape: unknown, offs: unknown) => ({ dtype, shape, data_offsets: offs });

  const cases: [string, Uint8Array, string | undefined, RegExp][] = [
    ['shorter than 8 bytes', new Uint8Array(5), undefined, /5 bytes/],
    ['header length 0', u64(0), undefined, /header length is 0/],
    ['header past end of file', build('{}', new Uint8Array(0), 50), undefined, /runs past the end/],
    ['header not UTF-8', build(Uint8Array.of(0x7b, 0xff, 0xfe, 0x7d)), undefined, /not UTF-8 JSON/],
    ['header not JSON', build('{"a": '), undefined, /not UTF-8 JSON/],
    ['header an array', build('[1, 2]'), undefined, /not a JSON object/],
    ['header null', build('null'), undefined, /not a JSON object/],
    ['entry not an object', build({ w: 3 }), 'w', /not an object/],
    ['missing dtype', build({ w: { shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4)), 'w', /missing dtype/],
    ['missing shape', build({ w: { dtype: 'F32', data_offsets: [0, 4] } }, new Uint8Array(4)), 'w', /missing shape/],
    ['missing data_offsets', build({ w: { dtype: 'F32', shape: [1] } }, new Uint8Array(4)), 'w', /missing data_offsets/],
    ['dtype not a string', build({ w: t(5, [1], [0, 4]) }, new Uint8Array(4)), 'w', /unknown dtype 5/],
    ['unknown dtype', build({ w: t('Q4', [1], [0, 4]) }, new Uint8Array(4)), 'w', /unknown dtype "Q4"/],
    ['shape not an array', build({ w: t('F32', '1', [0, 4]) }, new Uint8Array(4)), 'w', /shape "1" is not an array/],
    ['negative dim', build({ w: t('F32', [-1], [0, 0]) }), 'w', /non-negative integer/],
    ['fractional dim', build({ w: t('F32', [1.5], [0, 6]) }, new Uint8Array(6)), 'w', /non-negative integer/],
    ['offsets not a pair', build({ w: t('F32', [1], [0]) }, new Uint8Array(4)), 'w', /data_offsets \[0\]/],
    ['offsets not integers', build({ w: t('F32', [1], ['0', 4]) }, new Uint8Array(4)), 'w', /data_offsets/],
    ['byte length mismatch', build({ w: t('F32', [2, 2], [0, 12]) }, new Uint8Array(16)), 'w', /span 12 bytes but F32 \[2,2\] needs 16/],
    ['end past data', build({ w: t('F32', [2], [0, 8]) }, new Uint8Array(4)), 'w', /outside the 4-byte data region/],
    ['begin after end', build({ w: t('U8', [0], [4, 0]) }, new Uint8Array(4)), 'w', /outside/],
    ['overlap', build({ a: t('F32', [2], [0, 8]), b: t('F32', [1], [4, 8]) }, new Uint8Array(8)), 'b', /overlap those of tensor "a"/],
    ['metadata not an object', build({ __metadata__: ['x'] }), undefined, /__metadata__ is not an object/],
    ['metadata value not a string', build({ __metadata__: { epoch: 3 } }), undefined, /"epoch" is 3, not a string/],
  ];

  it.each(cases)('%s', async (label, bytes, tensor, why) => {
    const name = `broken-${label.replace(/\W+/g, '_')}.safetensors`;
    const path = join(dir, name);
    writeFileSync(path, bytes);
    for (const open of [() => openSafetensors(path), () => SafetensorsFile.open(bufferSource(bytes, name))]) {
      const err = await open().then(() => undefined, (e: unknown) => e);
      expect(err, label).toBeInstanceOf(SafetensorsError);
      const msg = (err as Error).message;
      expect(msg).toContain(name);
      if (tensor) expect(msg).toContain(`tensor "${tensor}"`);
      expect(msg).toMatch(why);
    }
  });

  it('accepts unaligned offsets, gaps and empty tensors anywhere', async () => {
    const bytes = build({ a: t('U8', [3], [0, 3]), b: t('F32', [1], [5, 9]), e: t('F32', [0], [1, 1]) }, Uint8Array.of(1, 2, 3, 0, 0, 0, 0, 0x80, 0x3f));
    const f = await SafetensorsFile.open(bufferSource(bytes, 'odd.safetensors'));
    expect(Array.from(await f.readF32('b'))).toEqual([1]);
    expect(Array.from(await f.readI32('a'))).toEqual([1, 2, 3]);
  });

  it('refuses a huge header length before reading it', async () => {
    const reads: [number, number][] = [];
    const head = u64(200_000_000);
    const src: ByteSource = {
      name: 'huge.safetensors',
      size: 300_000_000,
      read: async (o, l) => (reads.push([o, l]), head.slice(o, o + l)),
    };
    await expect(SafetensorsFile.open(src)).rejects.toThrow(/huge\.safetensors: header length 200000000 exceeds the 100000000-byte limit/);
    expect(reads).toEqual([[0, 8]]);
  });

  it('reports a file that shrank after opening', async () => {
    const good = concat(serializeSafetensors({ w: { dtype: 'F32', shape: [4], data: new Float32Array(4) } }));
    const path = join(dir, 'shrinks.safetensors');
    writeFileSync(path, good);
    const f = await openSafetensors(path);
    truncateSync(path, good.byteLength - 4);
    await expect(f.readF32('w')).rejects.toThrow(/shrinks\.safetensors: tensor "w": short read/);
    await f.close();
  });
});

describe('large files', () => {
  it('reads a tensor past 2 GiB of a sparse file without loading the rest', async () => {
    const path = join(dir, 'sparse.safetensors');
    const big = 2 ** 31;
    const header = new TextEncoder().encode(
      JSON.stringify({ big: { dtype: 'F32', shape: [2 ** 29], data_offsets: [0, big] }, small: { dtype: 'F32', shape: [3], data_offsets: [big, big + 12] } }).padEnd(160),
    );
    const dataStart = 8 + header.byteLength;
    try {
      writeFileSync(path, concat([u64(header.byteLength), header]));
      truncateSync(path, dataStart + big + 12);
      const fd = openSync(path, 'r+');
      writeSync(fd, Float32Array.of(1.5, -2, 1e-3), 0, 12, dataStart + big);
      closeSync(fd);

      const rss0 = process.memoryUsage().rss;
      const f = await openSafetensors(path);
      expect(f.info('small').begin).toBe(dataStart + big);
      expect(Array.from(await f.readF32('small'))).toEqual([1.5, -2, Math.fround(1e-3)]);
      await f.close();
      expect(process.memoryUsage().rss - rss0).toBeLessThan(200 * 2 ** 20);
    } finally {
      rmSync(path, { force: true });
    }
  });
});

describe('writeFileAtomic', () => {
  const leftovers = (d: string) => readdirSync(d).filter((n) => n.includes('.tmp-'));
  async function* failing() {
    yield Uint8Array.of(1, 2, 3);
    throw new Error('serializer broke');
  }

  it('leaves neither target nor temp file when writing fails', async () => {
    const d = mkdtempSync(join(dir, 'atomic-'));
    const path = join(d, 'out.bin');
    await expect(writeFileAtomic(path, failing())).rejects.toThrow('serializer broke');
    expect(existsSync(path)).toBe(false);
    expect(leftovers(d)).toEqual([]);
    await expect(saveSafetensors(path, { w: { dtype: 'F32', shape: [2], data: new Float32Array(3) } })).rejects.toThrow(/out\.bin: .*tensor "w"/);
    expect(readdirSync(d)).toEqual([]);
  });

  it('replaces an existing target only on success', async () => {
    const d = mkdtempSync(join(dir, 'atomic-'));
    const path = join(d, 'out.bin');
    writeFileSync(path, 'old');
    await expect(writeFileAtomic(path, failing())).rejects.toThrow('serializer broke');
    expect(readFileSync(path, 'utf8')).toBe('old');
    await writeFileAtomic(path, [new TextEncoder().encode('ne'), new TextEncoder().encode('w')]);
    expect(readFileSync(path, 'utf8')).toBe('new');
    expect(leftovers(d)).toEqual([]);
  });
});
