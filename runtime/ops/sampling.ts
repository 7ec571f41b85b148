// Next-token sampling on the GPU (kernels/sampling.wgsl): classifier-free guidance,
// temperature, top-k, top-p and a seeded multinomial draw in one dispatch, so a decode loop
// reads back only the token ids, or nothing when they are written straight into its buffer.
import { device, f32 } from '../device.ts';
import { Tensor } from '../tensor.ts';
import { bindRange, grid1d } from './util.ts';
import { type Generator, defaultGenerator } from './create.ts';

export interface SampleOptions {
  /**
   * Classifier-free guidance scale. When given, logits are [2B, V]: B conditional rows then
   * B unconditional ones, combined as uncond + (cond - uncond)·cfgScale (LlamaGen).
   */
  cfgScale?: number;
  /** Divides the logits (LlamaGen: by max(temperature, 1e-5)); 0 samples greedily. Default 1. */
  temperature?: number;
  /** Keeps the k largest logits (and ties with the k-th); 0 or absent: all. 1: greedy. */
  topK?: number;
  /** Nucleus: keeps the fewest largest tokens holding at least this probability; 1 or absent: all. */
  topP?: number;
  /** The Philox stream: its seed, and a step that each call consumes (default: the global generator). */
  generator?: Generator;
  /** Writes token b to out.tensor[offset + b·stride] (an i32 tensor, e.g. a decode loop's token buffer) instead of a new tensor. */
  out?: { tensor: Tensor; offset?: number; stride?: number };
}

/** Threads per row: a power of two from 32 to 256, about one per 8 tokens. */
const threadsFor = (v: number): number => Math.min(256, Math.max(32, 2 ** Math.ceil(Math.log2(Math.ceil(v / 8)))));

/**
 * Samples one token id per row of logits [B, V] (f32 or f16; [2B, V] with cfgScale).
 * Greedy (temperature 0 or topK 1) takes the lowest index of the maximum. Returns an i32 [B]
 * tensor, or opts.out.tensor after writing into it. Same generator state, same tokens.
 */
export function sample(logits: Tensor, opts: SampleOptions = {}): Tensor {
  logits.assertLive('sample: logits');
  if (logits.dtype !== 'f32' && logits.dtype !== 'f16') throw new Error(`sample: logits are ${logits.dtype}; they must be f32 or f16`);
  if (logits.rank !== 2 || logits.shape[1] < 1) throw new Error(`sample: logits [${logits.shape.join(', ')}] must be [rows, V] with V >= 1`);
  const cfg = opts.cfgScale !== undefined;
  if (cfg && (logits.shape[0] % 2 !== 0 || !Number.isFinite(opts.cfgScale)))
    throw new Error(`sample: with cfgScale (${opts.cfgScale}) logits [${logits.shape.join(', ')}] must hold an even number of rows (conditional, then unconditional) and the scale must be finite`);
  const temperature = opts.temperature ?? 1;
  const topK = opts.topK ?? 0;
  const topP = opts.topP ?? 1;
  if (!(temperature >= 0) || !Number.isFinite(temperature)) throw new Error(`sample: temperature ${temperature} must be a finite number >= 0`);
  if (!Number.isInteger(topK) || topK < 0) throw new Error(`sample: topK ${topK} must be an integer >= 0`);
  if (!(topP >= 0)) throw new Error(`sample: topP ${topP} must be a number >= 0`);
  const [rows, v] = [cfg ? logits.shape[0] / 2 : logits.shape[0], logits.shape[1]];

  let out: Tensor;
  let outOff = 0;
  let stride = 1;
  if (opts.out) {
    out = opts.out.tensor;
    out.assertLive('sample: out.tensor');
    outOff = opts.out.offset ?? 0;
    stride = opts.out.stride ?? 1;
    if (out.dtype !== 'i32') throw new Error(`sample: out.tensor is ${out.dtype}; it must be i32`);
    if (!Number.isInteger(outOff) || !Number.isInteger(stride) || outOff < 0 || stride < 0 || (rows > 0 && outOff + (rows - 1) * stride >= out.size))
      throw new Error(`sample: out offset ${outOff} + b·stride ${stride} for ${rows} rows does not fit out.tensor [${out.shape.join(', ')}]`);
  } else {
    out = Tensor.empty([rows], 'i32');
  }
  const gen = opts.generator ?? defaultGenerator;
  const step = gen.counter++;
  if (rows === 0) return out;
  const seed = BigInt.asUintN(64, BigInt(gen.seed));
  const rl = bindRange(logits);
  const ro = bindRange(out);
  device().dispatch({
    kernel: 'sampling',
    defines: { T: logits.dtype },
    constants: { CFG: cfg ? 1 : 0, GREEDY: temperature === 0 || topK === 1 ? 1 : 0, WG: threadsFor(v) },
    buffers: [rl.binding, ro.binding],
    params: [
      rows, v, rl.elemOffset, f32(opts.cfgScale ?? 1), f32(Math.max(temperature, 1e-5)), topK, f32(topP),
      Number(seed & 0xffffffffn), Number(seed >> 32n), step >>> 0, Math.floor(step / 2 ** 32), ro.elemOffset + outOff, stride,
    ],
    workgroups: grid1d(rows, 1),
  });
  return out;
}
