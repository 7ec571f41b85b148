// A tiny training stage run in a child process by test/train-loop.test.ts, so the test can
// SIGKILL it mid-run and resume. Args: DIR STEPS [--resume]. Prints the summary JSON.
import { AdamW, Generator, Linear, Module, type Tensor, gelu, getDevice, mean, randn, square, sub, tidy, withBuild } from '../../runtime/index.ts';
import { runStage } from '../../tools/train/loop.ts';

class Net extends Module {
  readonly a = this.module('a', new Linear(4, 32));
  readonly b = this.module('b', new Linear(32, 1));
  forward(x: Tensor): Tensor {
    return this.b.forward(gelu(this.a.forward(x)));
  }
}

const [dir, steps] = [process.argv[2], Number(process.argv[3])];
await getDevice();
const net = withBuild({ generator: new Generator(7) }, () => new Net());
const opt = new AdamW(net, { lr: 3e-3 });
const target = withBuild({ generator: new Generator(8) }, () => new Linear(4, 1));
const summary = await runStage({
  name: 'toy',
  dir,
  steps,
  seed: 11,
  checkpointEvery: 5,
  modules: { net },
  optimizer: opt,
  resume: process.argv.includes('--resume'),
  log: () => {},
  async step(_i, gen) {
    const loss = tidy(() => {
      const x = randn([64, 4], { generator: gen });
      const l = mean(square(sub(net.forward(x), target.forward(x))));
      l.backward();
      return l;
    });
    opt.step();
    opt.zeroGrad();
    const v = await loss.item();
    loss.dispose();
    // slow enough for the parent to kill us between checkpoints
    await new Promise((r) => setTimeout(r, 20));
    return { loss: v };
  },
});
process.stdout.write(JSON.stringify(summary) + '\n');
