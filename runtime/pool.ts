// Buffer pool keyed by size class. A released buffer is reused by the next request of the
// same class; since every use is recorded in one ordered command stream (and host writes
// flush first), reuse inside a batch is safe without waiting for the GPU.

export interface PoolStats {
  /** bytes held by live tensors (size-class bytes) */
  inUseBytes: number;
  /** bytes sitting in free lists */
  pooledBytes: number;
  liveBuffers: number;
  pooledBuffers: number;
  /** buffers ever created (a growing number in a steady loop means the pool is not reusing) */
  created: number;
  reused: number;
}

/** Size classes: powers of two and 1.5x steps between them, at least 256 bytes, so waste stays < 50%. */
export function sizeClass(bytes: number): number {
  if (bytes <= 256) return 256;
  const p = 2 ** Math.ceil(Math.log2(bytes));
  return bytes <= p * 0.75 ? p * 0.75 : p;
}

export class BufferPool {
  private free = new Map<number, GPUBuffer[]>();
  private stats: PoolStats = { inUseBytes: 0, pooledBytes: 0, liveBuffers: 0, pooledBuffers: 0, created: 0, reused: 0 };

  constructor(private gpu: GPUDevice) {}

  acquire(bytes: number): GPUBuffer {
    const size = sizeClass(bytes);
    const list = this.free.get(size);
    let buf = list?.pop();
    if (buf) {
      this.stats.reused++;
      this.stats.pooledBytes -= size;
      this.stats.pooledBuffers--;
    } else {
      if (size > this.gpu.limits.maxBufferSize)
        throw new Error(`buffer of ${bytes} bytes exceeds this adapter's maxBufferSize (${this.gpu.limits.maxBufferSize})`);
      buf = this.gpu.createBuffer({ size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
      this.stats.created++;
    }
    this.stats.inUseBytes += size;
    this.stats.liveBuffers++;
    return buf;
  }

  release(buf: GPUBuffer): void {
    const size = buf.size;
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(buf);
    this.stats.inUseBytes -= size;
    this.stats.liveBuffers--;
    this.stats.pooledBytes += size;
    this.stats.pooledBuffers++;
  }

  /** Destroys every pooled (free) buffer. */
  trim(): void {
    for (const list of this.free.values()) for (const b of list) b.destroy();
    this.free.clear();
    this.stats.pooledBytes = 0;
    this.stats.pooledBuffers = 0;
  }

  getStats(): PoolStats {
    return { ...this.stats };
  }
}
