export * from './elementwise.ts';
export * from './reduce.ts';
export * from './shape.ts';
export * from './create.ts';
export * from './matmul.ts';
export * from './softmax.ts';
export { broadcastShapes, stridesOf } from './util.ts';
