// TensorFlow.js's WebGPU backend as a peer on the same adapter: Dawn's navigator.gpu (the npm
// `webgpu` package our runtime uses) is installed as globalThis.navigator before the backend
// loads. The backend opens its own GPUDevice on the adapter.
import type { Peer, PeerRun } from '../harness.ts';
import { getGPU } from '#platform';
import type { Tensor as TfTensor, Tensor4D } from '@tensorflow/tfjs-core';

type TF = typeof import('@tensorflow/tfjs-core');
interface WebGPUBackendLike {
  endComputePassEncoder(): void;
  submitQueue(): void;
  queue: GPUQueue;
}

let loading: Promise<TF> | null = null;

function loadTf(): Promise<TF> {
  loading ??= (async () => {
    const gpu = await getGPU();
    Object.defineProperty(globalThis, 'navigator', { value: { gpu, userAgent: 'node' }, configurable: true, writable: true });
    let tf: TF;
    try {
      tf = await import('@tensorflow/tfjs-core');
      await import('@tensorflow/tfjs-backend-webgpu');
    } catch (e) {
      throw new Error(`@tensorflow/tfjs-core + @tensorflow/tfjs-backend-webgpu not installed (npm install): ${(e as Error).message}`);
    }
    if (!(await tf.setBackend('webgpu'))) throw new Error('tfjs could not initialise its webgpu backend on this adapter');
    await tf.ready();
    return tf;
  })();
  return loading;
}

/** A peer that builds its inputs with `inputs` (untimed) and launches `op` on them. */
function tfjsPeer(inputs: (tf: TF) => TfTensor[], op: (tf: TF, x: TfTensor[]) => TfTensor): Peer {
  return {
    name: 'tfjs-webgpu',
    async setup(): Promise<PeerRun> {
      const tf = await loadTf();
      const x = inputs(tf);
      const backend = tf.backend() as unknown as WebGPUBackendLike;
      const pending: TfTensor[] = [];
      return {
        run: () => void pending.push(op(tf, x)),
        async sync() {
          backend.endComputePassEncoder();
          backend.submitQueue();
          await backend.queue.onSubmittedWorkDone();
          pending.splice(0).forEach((t) => t.dispose());
        },
        dispose: () => tf.dispose([...x, ...pending.splice(0)]),
      };
    },
  };
}

/** tf.matMul of [M, K] x [K, N] (f32; tfjs has no f16 tensors), transposes as in our op. */
export const tfjsMatmul = (m: number, n: number, k: number, transB = false): Peer =>
  tfjsPeer(
    (tf) => [tf.randomNormal([m, k]), tf.randomNormal(transB ? [n, k] : [k, n])],
    (tf, [a, b]) => tf.matMul(a, b, false, transB),
  );

/**
 * tf.fused.conv2d with bias of x [N, C, H, W] by w [O, C, KH, KW] (stride 1, padding 'same'
 * for odd kernels, as our padding (K - 1) / 2), f32. tfjs is channels-last: the inputs are
 * made as NHWC and [KH, KW, C, O] in setup, so only the convolution is timed.
 */
export const tfjsConv2d = (n: number, c: number, h: number, w: number, o: number, k: number): Peer =>
  tfjsPeer(
    (tf) => [tf.randomNormal([n, h, w, c]), tf.randomNormal([k, k, c, o], 0, 0.02), tf.randomNormal([o])],
    (tf, [x, filter, bias]) => tf.fused.conv2d({ x: x as Tensor4D, filter: filter as Tensor4D, bias, strides: 1, pad: 'same' }),
  );
