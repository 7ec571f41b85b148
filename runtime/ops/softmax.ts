// softmax / log-softmax over an axis (kernels/softmax.wgsl, rows of the last axis).
import { device } from '../device.ts';
import { record } from '../autograd.ts';
import { Tensor } from '../tensor.ts';
import { grid1d, normAxis } from './util.ts';
import { contiguous, transpose } from './shape.ts';

function rows(entry: 'forward' | 'backward', log: boolean, inputs: Tensor[]): Tensor {
  const x = inputs[0];
  const d = x.shape.at(-1) ?? 1;
  const r = x.size / Math.max(d, 1);
  const out = Tensor.empty(x.shape, x.dtype);
  if (out.size === 0) return out;
  const aligned = inputs.map((t) => (t.offset === 0 ? t : contiguous(t)));
  device().dispatch({
    kernel: 'softmax',
    entry,
    defines: { T: x.dtype },
    constants: { LOG: log ? 1 : 0 },
    buffers: [...aligned.map((t) => t.binding()), out.binding()],
    params: [r, d],
    workgroups: grid1d(r, 1),
  });
  aligned.forEach((t, i) => t !== inputs[i] && t.dispose());
  return out;
}

function softmaxLike(log: boolean, x: Tensor, axis: number): Tensor {
  const a = normAxis(axis, x.rank);
  if (a !== x.rank - 1) {
    const xt = transpose(x, a, -1);
    const yt = softmaxLike(log, xt, -1);
    const y = transpose(yt, a, -1);
    xt.dispose();
    yt.dispose();
    return y;
  }
  const y = rows('forward', log, [x]);
  return record(log ? 'logSoftmax' : 'softmax', y, [x], [y], (g, [ys]) => [rows('backward', log, [ys, g])]);
}

export const softmax = (x: Tensor, axis = -1): Tensor => softmaxLike(false, x, axis);
export const logSoftmax = (x: Tensor, axis = -1): Tensor => softmaxLike(true, x, axis);
