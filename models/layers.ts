// The torch.nn layers the Layton graphs are made of, with torch's parameter names and
// default inits (so state dicts load by name and fresh models train like torch's).
import {
  Module, type Tensor, conv2d, embedding, groupNorm, layerNorm, permute, reshape, rmsNorm, type Padding,
} from '../runtime/index.ts';

export { Linear, Module, ModuleList } from '../runtime/index.ts';

export interface Conv2dOptions {
  stride?: number;
  padding?: Padding;
  bias?: boolean;
}

/** torch.nn.Conv2d (NCHW); init U(±1/sqrt(fan_in)) for weight and bias, as torch's kaiming_uniform(a=√5). */
export class Conv2d extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  readonly stride: number;
  readonly padding: Padding;

  constructor(readonly inChannels: number, readonly outChannels: number, readonly kernelSize: number, o: Conv2dOptions = {}) {
    super();
    const bound = { uniform: 1 / Math.sqrt(inChannels * kernelSize * kernelSize) };
    this.weight = this.param('weight', [outChannels, inChannels, kernelSize, kernelSize], bound);
    this.bias = o.bias === false ? null : this.param('bias', [outChannels], bound);
    this.stride = o.stride ?? 1;
    this.padding = o.padding ?? 0;
  }

  /** The convolution, then `residual` added and SiLU applied when asked (both fused). */
  forward(x: Tensor, epilogue: { residual?: Tensor; act?: 'silu' } = {}): Tensor {
    return conv2d(x, this.weight, this.bias ?? undefined, { stride: this.stride, padding: this.padding, ...epilogue });
  }
}

/** torch.nn.GroupNorm (affine: weight 1, bias 0); `silu` fuses the activation diffusers applies after it. */
export class GroupNorm extends Module {
  readonly weight: Tensor | null;
  readonly bias: Tensor | null;

  constructor(readonly numGroups: number, readonly numChannels: number, readonly eps = 1e-5, affine = true) {
    super();
    if (numChannels % numGroups !== 0) throw new Error(`GroupNorm: ${numChannels} channels do not split into ${numGroups} groups`);
    this.weight = affine ? this.param('weight', [numChannels], 'ones') : null;
    this.bias = affine ? this.param('bias', [numChannels], 'zeros') : null;
  }

  forward(x: Tensor, silu = false): Tensor {
    return groupNorm(x, this.numGroups, this.weight ?? undefined, this.bias ?? undefined, this.eps, { silu });
  }
}

/** torch.nn.LayerNorm over the last axis. */
export class LayerNorm extends Module {
  readonly weight: Tensor | null;
  readonly bias: Tensor | null;

  constructor(readonly dim: number, readonly eps = 1e-5, o: { affine?: boolean; bias?: boolean } = {}) {
    super();
    const affine = o.affine ?? true;
    this.weight = affine ? this.param('weight', [dim], 'ones') : null;
    this.bias = affine && o.bias !== false ? this.param('bias', [dim], 'zeros') : null;
  }

  forward(x: Tensor): Tensor {
    return layerNorm(x, this.weight ?? undefined, this.bias ?? undefined, this.eps);
  }
}

/** RMSNorm with a learned scale `weight` (LlamaGen's RMSNorm, T5's T5LayerNorm). */
export class RMSNorm extends Module {
  readonly weight: Tensor;

  constructor(readonly dim: number, readonly eps = 1e-5) {
    super();
    this.weight = this.param('weight', [dim], 'ones');
  }

  forward(x: Tensor): Tensor {
    return rmsNorm(x, this.weight, this.eps);
  }
}

/** torch.nn.Embedding (init N(0, 1)); ids are i32. */
export class Embedding extends Module {
  readonly weight: Tensor;

  constructor(readonly num: number, readonly dim: number, std = 1) {
    super();
    this.weight = this.param('weight', [num, dim], { normal: std });
  }

  forward(ids: Tensor): Tensor {
    return embedding(ids, this.weight);
  }
}

/** [B, L, H·D] -> [B, H, L, D], the layout attention() takes. */
export const splitHeads = (x: Tensor, heads: number): Tensor => {
  const [b, l, c] = x.shape;
  if (c % heads !== 0) throw new Error(`splitHeads: width ${c} does not split into ${heads} heads`);
  return permute(reshape(x, [b, l, heads, c / heads]), [0, 2, 1, 3]);
};

/** [B, H, L, D] -> [B, L, H·D]. */
export const mergeHeads = (x: Tensor): Tensor => {
  const [b, h, l, d] = x.shape;
  return reshape(permute(x, [0, 2, 1, 3]), [b, l, h * d]);
};
