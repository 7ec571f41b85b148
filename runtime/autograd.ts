// Reverse-mode autograd. Each differentiable op that sees an input requiring grad records a
// GradNode on its output: the inputs, the tensors its backward needs (retained views), and
// the backward function. Nodes are reference counted by their output tensor and by the
// nodes that consume it, so disposing the outputs of an unused graph frees what it saved.
import { keep, type Tensor } from './tensor.ts';
import { add, onesLike } from './ops/index.ts';

let gradEnabled = true;

export const isGradEnabled = (): boolean => gradEnabled;

/** Runs fn without recording gradients. */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

export type BackwardFn = (grad: Tensor, saved: Tensor[]) => (Tensor | null)[];

export class GradNode {
  refs = 1;
  saved: Tensor[];
  freed = false;
  /** per input: the node that produced it (captured now: disposing a tensor drops its .node) */
  readonly parents: (GradNode | null)[];
  /** per input: the leaf whose .grad receives the gradient */
  readonly leaves: (Tensor | null)[];
  readonly shapes: (number[] | null)[];

  constructor(
    readonly name: string,
    inputs: (Tensor | null)[],
    saved: Tensor[],
    readonly backward: BackwardFn,
  ) {
    // Own handles on saved tensors, outside any tidy scope, so the user's handles may go.
    this.saved = saved.map((t) => keep(t.view(t.shape)));
    this.parents = inputs.map((t) => t?.node ?? null);
    this.leaves = inputs.map((t) => (t && !t.node && t.requiresGrad ? t : null));
    this.shapes = inputs.map((t) => (t ? [...t.shape] : null));
    for (const p of this.parents) p?.ref();
  }

  ref(): void {
    this.refs++;
  }

  unref(): void {
    if (--this.refs > 0) return;
    this.free();
    for (const p of this.parents) p?.unref();
  }

  free(): void {
    for (const t of this.saved) t.dispose();
    this.saved = [];
    this.freed = true;
  }
}

export const needsGrad = (...xs: (Tensor | null | undefined)[]): boolean =>
  gradEnabled && xs.some((x) => x != null && (x.requiresGrad || x.node !== null));

/**
 * Records how to differentiate `out` (when any input needs grad). `inputs` are in the
 * order the backward returns their gradients; null entries need none.
 */
export function record(name: string, out: Tensor, inputs: (Tensor | null)[], saved: Tensor[], backward: BackwardFn): Tensor {
  if (!needsGrad(...inputs)) return out;
  out.node = new GradNode(name, inputs.map((t) => (t && (t.requiresGrad || t.node) ? t : null)), saved, backward);
  return out;
}

/**
 * Back-propagates from `root` (a scalar unless `grad` is given), accumulating into the
 * .grad of every leaf that requires grad. Frees the graph's saved tensors as it goes.
 */
export function backward(root: Tensor, grad?: Tensor): void {
  if (!root.node) {
    if (root.requiresGrad) throw new Error('backward() on a leaf: nothing to differentiate');
    throw new Error('backward() on a tensor with no gradient graph (created under noGrad, or from inputs that do not require grad)');
  }
  if (!grad && root.size !== 1) throw new Error(`backward() without a gradient needs a scalar, got [${root.shape.join(', ')}]`);
  // Topological order of nodes reachable from the root.
  const order: GradNode[] = [];
  const seen = new Set<GradNode>();
  const stack: [GradNode, number][] = [[root.node, 0]];
  while (stack.length) {
    const top = stack[stack.length - 1];
    const [n, i] = top;
    if (i === 0 && seen.has(n)) { stack.pop(); continue; }
    seen.add(n);
    if (i < n.parents.length) {
      top[1]++;
      const c = n.parents[i];
      if (c && !seen.has(c)) stack.push([c, 0]);
    } else {
      order.push(n);
      stack.pop();
    }
  }
  for (const n of order) if (n.freed) throw new Error(`backward through ${n.name} whose graph was already freed by an earlier backward()`);

  noGrad(() => {
    const grads = new Map<GradNode, Tensor>();
    grads.set(root.node!, grad ? grad.view(grad.shape) : onesLike(root));
    for (let k = order.length - 1; k >= 0; k--) {
      const n = order[k];
      const g = grads.get(n);
      grads.delete(n);
      if (!g) { n.free(); continue; }
      const gin = n.backward(g, n.saved);
      g.dispose();
      n.free();
      n.parents.forEach((parent, j) => {
        const gi = gin[j];
        const leaf = n.leaves[j];
        if (!gi) return;
        if (!parent && !leaf) { gi.dispose(); return; }
        if (gi.shape.join() !== n.shapes[j]!.join())
          throw new Error(`${n.name} backward produced a gradient of shape [${gi.shape}] for an input of shape [${n.shapes[j]}]`);
        if (parent) {
          const prev = grads.get(parent);
          grads.set(parent, prev ? accumulate(prev, gi) : gi);
        } else if (leaf && !leaf.isDisposed) {
          leaf.grad = keep(leaf.grad ? accumulate(leaf.grad, gi) : gi);
        } else {
          gi.dispose(); // a leaf disposed since the forward: its .grad would leak
        }
      });
    }
  });
}

function accumulate(a: Tensor, b: Tensor): Tensor {
  const s = add(a, b);
  a.dispose();
  b.dispose();
  return s;
}
