// layton-webgpu runtime: the public entry point.
export { getDevice, device, Device, type DeviceInfo } from './device.ts';
export { Tensor, tidy, keep, withView, tensorCount, numel, type Shape } from './tensor.ts';
export { type DType, dtypeBytes, isFloat } from './dtype.ts';
export { noGrad, isGradEnabled, backward, record, needsGrad } from './autograd.ts';
export * from './ops/index.ts';
