// Node-only file access for safetensors: positioned reads (never the whole file) and
// atomic writes. Browsers use bufferSource / blobSource from ../safetensors.ts instead.
import { randomBytes } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import { SafetensorsError, SafetensorsFile, serializeSafetensors, type ByteSource, type TensorToWrite } from '../safetensors.ts';

/** Node refuses single reads/writes above 2^31 - 1 bytes, so big ranges go in pieces. */
const IO_CHUNK = 1 << 30;

/** A ByteSource over an open file handle; each read is a pread of just that range. */
export async function fileSource(path: string): Promise<ByteSource> {
  const handle = await open(path, 'r');
  let size: number;
  try {
    size = (await handle.stat()).size;
  } catch (e) {
    await handle.close();
    throw e;
  }
  return {
    name: path,
    size,
    async read(offset, length) {
      const buf = new Uint8Array(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await handle.read(buf, got, Math.min(length - got, IO_CHUNK), offset + got);
        if (bytesRead === 0) break; // end of file: the caller sees the short result
        got += bytesRead;
      }
      return got === length ? buf : buf.subarray(0, got);
    },
    close: () => handle.close(),
  };
}

/** Opens and validates a safetensors file; the handle stays open until `close()`. */
export async function openSafetensors(path: string): Promise<SafetensorsFile> {
  const src = await fileSource(path);
  try {
    return await SafetensorsFile.open(src);
  } catch (e) {
    await src.close!();
    throw e;
  }
}

/** Writes the chunks to a temporary file beside `path`, fsyncs it and renames it over `path`,
 *  so readers see the old file or the complete new one. On any error (including one thrown
 *  by the chunk iterator) the temporary file is removed and `path` is left untouched. */
export async function writeFileAtomic(path: string, chunks: Iterable<Uint8Array> | AsyncIterable<Uint8Array>): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
  const handle = await open(tmp, 'wx');
  let closed = false;
  try {
    for await (const chunk of chunks) {
      for (let done = 0; done < chunk.byteLength; ) {
        const { bytesWritten } = await handle.write(chunk, done, Math.min(chunk.byteLength - done, IO_CHUNK));
        done += bytesWritten;
      }
    }
    await handle.sync();
    closed = true;
    await handle.close();
    await rename(tmp, path);
  } catch (e) {
    if (!closed) await handle.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw e;
  }
}

export async function saveSafetensors(path: string, tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>): Promise<void> {
  let chunks: Uint8Array[];
  try {
    chunks = serializeSafetensors(tensors, metadata);
  } catch (e) {
    throw e instanceof SafetensorsError ? new SafetensorsError(`${path}: ${e.message}`) : e;
  }
  await writeFileAtomic(path, chunks);
}
