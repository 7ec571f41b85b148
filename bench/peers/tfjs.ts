// TensorFlow.js's WebGPU backend as a peer on the same adapter: Dawn's navigator.gpu (the npm
// `webgpu` package our runtime uses) is installed as globalThis.navigator before the backend
// loads. The backend opens its own GPUDevice on the adapter.
import type { Peer, PeerRun } from '../harness.ts';
import { getGPU } from '#platform';

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

/** tf.matMul of [M, K] x [K, N] (f32; tfjs has no f16 tensors), transposes as in our op. */
export function tfjsMatmul(m: number, n: number, k: number, transB = false): Peer {
  return {
    name: 'tfjs-webgpu',
    async setup(): Promise<PeerRun> {
      const tf = await loadTf();
      const a = tf.randomNormal([m, k]);
      const b = tf.randomNormal(transB ? [n, k] : [k, n]);
      const backend = tf.backend() as unknown as WebGPUBackendLike;
      const pending: import('@tensorflow/tfjs-core').Tensor[] = [];
      return {
        run: () => void pending.push(tf.matMul(a, b, false, transB)),
        async sync() {
          backend.endComputePassEncoder();
          backend.submitQueue();
          await backend.queue.onSubmittedWorkDone();
          pending.splice(0).forEach((t) => t.dispose());
        },
        dispose: () => tf.dispose([a, b, ...pending.splice(0)]),
      };
    },
  };
}
