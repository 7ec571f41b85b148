// layton-webgpu runtime: the public entry point.
export { getDevice, device, Device, type DeviceInfo } from './device.ts';
export { Tensor, tidy, keep, withView, tensorCount, numel, type Shape } from './tensor.ts';
export { type DType, dtypeBytes, isFloat } from './dtype.ts';
export { noGrad, isGradEnabled, backward, record, needsGrad } from './autograd.ts';
export * from './ops/index.ts';
export { Module, ModuleList, Linear, withBuild, buildMeta, buildOptions, type BuildOptions, type Init } from './nn.ts';
export { safetensorsWeights, torchWeights, renameWeights, type WeightSource } from './weights.ts';
export * from './optim.ts';
export {
  SafetensorsFile, SafetensorsError, bufferSource, blobSource, serializeSafetensors, f16ToF32, f32ToF16, bf16ToF32,
  type ByteSource, type StDtype, type TensorInfo, type TensorToWrite,
} from './safetensors.ts';
export { loadTorchCheckpoint, readPtTensor, PtTensor, TorchCheckpointError } from './torch-pt.ts';
export { loadTensor, defaultDType } from './load.ts';
export { assertGradcheck, gradcheck, seededRandom } from './gradcheck.ts';
export { KVCache } from './kvcache.ts';
