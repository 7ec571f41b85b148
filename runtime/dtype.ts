export type DType = 'f32' | 'f16' | 'i32' | 'u32';

export const dtypeBytes: Record<DType, number> = { f32: 4, f16: 2, i32: 4, u32: 4 };

export const isFloat = (d: DType): boolean => d === 'f32' || d === 'f16';

/** Host array type for readback and upload (f16 is converted to/from f32 on the host). */
export type HostArray<D extends DType = DType> = D extends 'i32' ? Int32Array : D extends 'u32' ? Uint32Array : Float32Array;
