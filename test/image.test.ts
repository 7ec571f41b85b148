// Image I/O and resizing against Pillow 9.4 (test/fixtures/gen_image.py): PNG decoding (RGB,
// grey, RGBA -> convert("RGB")), JPEG decoding (jpeg-js vs libjpeg), Pillow's BOX / BICUBIC
// resampling on 8-bit and float images, LlamaGen's center_crop_arr; PNG/JPEG round trips,
// [-1, 1] tensor conversion, and the one-line errors for bad paths and non-images.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getDevice } from '../runtime/index.ts';
import { openSafetensors } from '../runtime/platform/node-fs.ts';
import type { SafetensorsFile } from '../runtime/safetensors.ts';
import {
  type Rgb8, centerCrop, decodeImage, encodeJpeg, encodePng, imagesToTensor, loadImage, readImage, resizeImage, resizeRgb8,
  tensorToImages, toImage, toRgb8, writeImage,
} from '../tools/image.ts';

const fixture = (name: string) => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));

let ref: SafetensorsFile;
let input: Rgb8;
let dir: string;
beforeAll(async () => {
  ref = await openSafetensors(fixture('image_resize.safetensors'));
  input = await readImage(fixture('image_input.png'));
  dir = mkdtempSync(join(tmpdir(), 'layton-image-'));
});
afterAll(async () => {
  await ref.close();
  rmSync(dir, { recursive: true, force: true });
});

async function expected(name: string): Promise<Rgb8> {
  const [height, width] = ref.info(name).shape;
  return { width, height, data: await ref.readRaw(name) };
}

/** Largest absolute difference in 8-bit levels (and the count of differing bytes). */
function diff8(got: Rgb8, want: Rgb8): { max: number; count: number } {
  expect([got.width, got.height]).toEqual([want.width, want.height]);
  let max = 0;
  let count = 0;
  for (let i = 0; i < want.data.length; i++) {
    const d = Math.abs(got.data[i] - want.data[i]);
    max = Math.max(max, d);
    if (d) count++;
  }
  return { max, count };
}

describe('decoding', () => {
  it('decodes JPEG close to libjpeg', async () => {
    expect([input.width, input.height]).toEqual([203, 157]);
    const meanDiff = (a: Rgb8, b: Rgb8) => a.data.reduce((s, v, i) => s + Math.abs(v - b.data[i]), 0) / a.data.length;
    // Full-resolution chroma: only IDCT / colour-conversion rounding differs.
    const j444 = await readImage(fixture('image_444.jpg'));
    const p444 = await expected('jpeg444_pil');
    const d444 = diff8(j444, p444);
    // 4:2:0: jpeg-js replicates chroma samples where libjpeg interpolates ("fancy upsampling"),
    // so colour edges differ; the mean stays small.
    const j420 = await readImage(fixture('image_input.jpg'));
    const p420 = await expected('jpeg_pil');
    const d420 = diff8(j420, p420);
    console.log(`jpeg-js vs libjpeg: 4:4:4 max ${d444.max} mean ${meanDiff(j444, p444).toFixed(3)} levels; ` +
      `4:2:0 max ${d420.max} mean ${meanDiff(j420, p420).toFixed(3)} levels`);
    expect(d444.max).toBeLessThanOrEqual(3);
    expect(meanDiff(j444, p444)).toBeLessThan(1);
    expect(meanDiff(j420, p420)).toBeLessThan(4);
  });

  it('greyscale and RGBA PNGs become RGB like convert("RGB")', async () => {
    expect(diff8(await readImage(fixture('image_gray.png')), await expected('gray_rgb')).max).toBe(0);
    expect(diff8(await readImage(fixture('image_rgba.png')), await expected('rgba_rgb')).max).toBe(0);
  });

  it('PNG round trip is exact, JPEG round trip is close', () => {
    expect(diff8(decodeImage(encodePng(input)), input).max).toBe(0);
    const back = decodeImage(encodeJpeg(input, 95));
    let se = 0;
    for (let i = 0; i < input.data.length; i++) se += ((back.data[i] - input.data[i]) / 255) ** 2;
    const psnr = 10 * Math.log10(input.data.length / se);
    expect(psnr).toBeGreaterThan(30);
  });

  it('errors name the path', async () => {
    const missing = join(dir, 'nope.png');
    await expect(readImage(missing)).rejects.toThrow(`${missing}: no such file`);
    const text = join(dir, 'notes.png');
    writeFileSync(text, 'hello, not an image');
    await expect(readImage(text)).rejects.toThrow(`${text}: not a PNG or JPEG image`);
    const truncated = join(dir, 'cut.png');
    writeFileSync(truncated, encodePng(input).subarray(0, 200));
    await expect(readImage(truncated)).rejects.toThrow(`${truncated}: cannot decode PNG image`);
    await expect(readImage(dir)).rejects.toThrow(`${dir}: is a directory`);
    await expect(writeImage(join(dir, 'x.gif'), input)).rejects.toThrow('x.gif: unsupported image extension');
    expect(() => decodeImage(new Uint8Array([0xff, 0xd8, 0xff, 0, 1, 2]), 'bytes.jpg')).toThrow('bytes.jpg: cannot decode JPEG image');
  });

  it('writeImage picks the format from the extension', async () => {
    await writeImage(join(dir, 'a.png'), toImage(input));
    expect(diff8(await readImage(join(dir, 'a.png')), input).max).toBe(0);
    await writeImage(join(dir, 'a.jpeg'), input);
    expect(diff8(await readImage(join(dir, 'a.jpeg')), input).max).toBeLessThan(60);
  });
});

describe('Pillow resampling', () => {
  const cases: [string, number, number, 'box' | 'bicubic'][] = [
    ['bicubic_50x71', 50, 71, 'bicubic'],
    ['box_50x71', 50, 71, 'box'],
    ['bicubic_300x40', 300, 40, 'bicubic'],
  ];
  for (const [name, w, h, filter] of cases) {
    it(`8-bit ${name} equals Image.resize`, async () => {
      const d = diff8(resizeRgb8(input, w, h, filter), await expected(name));
      console.log(`${name}: max |diff| ${d.max} levels (${d.count} bytes differ)`);
      expect(d.max).toBe(0);
    });
  }

  it('float bicubic equals mode "F" Image.resize', async () => {
    const got = resizeImage(toImage(input), 50, 71, 'bicubic');
    const want = await ref.readF32('float_bicubic_50x71');
    let max = 0;
    for (let i = 0; i < want.length; i++) max = Math.max(max, Math.abs(got.data[i] - want[i]));
    console.log(`float bicubic 50x71: max |diff| ${max.toExponential(2)}`);
    expect(max).toBeLessThan(1e-6);
  });

  for (const size of [64, 96, 160]) {
    it(`centerCrop(${size}) equals LlamaGen's center_crop_arr`, async () => {
      const d = diff8(centerCrop(input, size), await expected(`crop${size}`));
      console.log(`crop${size}: max |diff| ${d.max} levels (${d.count} bytes differ)`);
      expect(d.max).toBe(0);
    });
  }

  it('loadImage reads and centre-crops', async () => {
    const img = await loadImage(fixture('image_input.png'), 64);
    expect(toRgb8(img).data).toEqual((await expected('crop64')).data);
  });

  it('identity sizes copy, bad sizes throw', () => {
    const same = resizeRgb8(input, input.width, input.height, 'bicubic');
    expect(diff8(same, input).max).toBe(0);
    expect(same.data).not.toBe(input.data);
    expect(() => resizeRgb8(input, 0, 5, 'box')).toThrow('resizeRgb8: bad target size 0x5');
    expect(() => centerCrop(input, 2.5)).toThrow('centerCrop: bad size 2.5');
  });
});

describe('tensor conversion', () => {
  it('images -> [-1, 1] tensor -> images', async () => {
    await getDevice();
    const a = toImage(centerCrop(input, 16));
    const b = toImage(resizeRgb8(input, 16, 16, 'box'));
    const t = imagesToTensor([a, b]);
    expect(t.shape).toEqual([2, 3, 16, 16]);
    const v = (await t.data()) as Float32Array;
    expect(v[5]).toBeCloseTo(a.data[5] * 2 - 1, 6);
    expect(v[3 * 256 + 7]).toBeCloseTo(b.data[7] * 2 - 1, 6);
    const back = await tensorToImages(t);
    // with a size: each image resized bicubic (Pillow's, tested above), an unchanged size copied
    const big = await tensorToImages(t, 40);
    expect(big.map((i) => Array.from(i.data))).toEqual(back.map((i) => Array.from(resizeImage(i, 40, 40, 'bicubic').data)));
    expect((await tensorToImages(t, 16)).map((i) => Array.from(i.data))).toEqual(back.map((i) => Array.from(i.data)));
    t.dispose();
    expect(toRgb8(back[1]).data).toEqual(toRgb8(b).data);
    expect(() => imagesToTensor([a, toImage(input)])).toThrow('imagesToTensor: image 1 is 203x157, image 0 is 16x16');
  });
});
