// Image files: PNG/JPEG decoding and encoding (pngjs, jpeg-js) and reading/writing files, on
// top of tools/pixels.ts (the pixel types, conversions, Pillow-exact resizing and LlamaGen's
// centre crop, re-exported here). Decoding and encoding take and return bytes; only readImage
// and writeImage touch the file system (node:fs is imported lazily inside them).
import pngjs from 'pngjs';
import jpeg from 'jpeg-js';
import { type Rgb8, type RgbImage, centerCrop, checkRgb8, toImage, toRgb8 } from './pixels.ts';

export * from './pixels.ts';

// ---- decode / encode -----------------------------------------------------------------------

const isPng = (b: Uint8Array) => b.length >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47;
const isJpeg = (b: Uint8Array) => b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff;

/** Decodes PNG or JPEG bytes to 8-bit RGB (alpha dropped, grey replicated, as PIL's
 *  convert("RGB")). `name` (a path or label) prefixes every error. */
export function decodeImage(bytes: Uint8Array, name = 'image'): Rgb8 {
  let rgba: Uint8Array;
  let width: number;
  let height: number;
  let channels: number;
  if (isPng(bytes)) {
    try {
      const png = pngjs.PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
      ({ width, height } = png);
      rgba = png.data;
      channels = 4;
    } catch (e) {
      throw new Error(`${name}: cannot decode PNG image (${(e as Error).message})`);
    }
  } else if (isJpeg(bytes)) {
    try {
      const img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: false });
      ({ width, height } = img);
      rgba = img.data;
      channels = 3;
    } catch (e) {
      throw new Error(`${name}: cannot decode JPEG image (${(e as Error).message})`);
    }
  } else {
    throw new Error(`${name}: not a PNG or JPEG image`);
  }
  if (width < 1 || height < 1) throw new Error(`${name}: empty image (${width}x${height})`);
  if (channels === 3) return { width, height, data: rgba };
  const data = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < data.length; i += 3, j += 4) {
    data[i] = rgba[j];
    data[i + 1] = rgba[j + 1];
    data[i + 2] = rgba[j + 2];
  }
  return { width, height, data };
}

export function encodePng(img: Rgb8): Uint8Array {
  checkRgb8(img, 'encodePng');
  const png = new pngjs.PNG({ width: img.width, height: img.height, colorType: 2, inputColorType: 2, inputHasAlpha: false });
  png.data = Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength);
  return new Uint8Array(pngjs.PNG.sync.write(png, { colorType: 2, inputColorType: 2, inputHasAlpha: false }));
}

export function encodeJpeg(img: Rgb8, quality = 95): Uint8Array {
  checkRgb8(img, 'encodeJpeg');
  const rgba = new Uint8Array(img.width * img.height * 4);
  for (let i = 0, j = 0; j < rgba.length; i += 3, j += 4) {
    rgba[j] = img.data[i];
    rgba[j + 1] = img.data[i + 1];
    rgba[j + 2] = img.data[i + 2];
    rgba[j + 3] = 255;
  }
  return new Uint8Array(jpeg.encode({ width: img.width, height: img.height, data: rgba }, quality).data);
}

// ---- files (Node) --------------------------------------------------------------------------

/** Reads a PNG or JPEG file; errors name the path ("<path>: no such file", "<path>: not a PNG
 *  or JPEG image", ...). */
export async function readImage(path: string): Promise<Rgb8> {
  const { readFile } = await import('node:fs/promises');
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a directory, not an image' : `cannot read (${code ?? (e as Error).message})`;
    throw new Error(`${path}: ${why}`);
  }
  return decodeImage(bytes, path);
}

/** Writes PNG (.png) or JPEG (.jpg / .jpeg, quality 95) atomically, chosen by extension. */
export async function writeImage(path: string, img: Rgb8 | RgbImage): Promise<void> {
  const px = img.data instanceof Uint8Array ? (img as Rgb8) : toRgb8(img as RgbImage);
  const ext = path.toLowerCase().match(/\.(png|jpe?g)$/)?.[1];
  if (!ext) throw new Error(`${path}: unsupported image extension (use .png, .jpg or .jpeg)`);
  const bytes = ext === 'png' ? encodePng(px) : encodeJpeg(px);
  const { writeFileAtomic } = await import('../runtime/platform/node-fs.ts');
  await writeFileAtomic(path, [bytes]);
}

/** Reads a file and brings it to size x size as the reference pipeline does. */
export async function loadImage(path: string, size: number): Promise<RgbImage> {
  return toImage(centerCrop(await readImage(path), size));
}
