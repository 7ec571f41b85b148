// The gradient of one parameter under a scalar loss, with every parameter's grad cleared after,
// so successive calls compare the gradients of different losses.
import { type Module, type Tensor, tidy } from '../../runtime/index.ts';

export function paramGrad(module: Module, key: string, loss: () => Tensor): Tensor {
  const w = module.stateDict()[key];
  const l = tidy(loss);
  l.backward();
  l.dispose();
  const g = w.grad!;
  w.grad = null;
  for (const p of module.parameters()) (p.grad?.dispose(), (p.grad = null));
  return g;
}
