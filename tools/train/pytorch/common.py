# Shared parts of the PyTorch models of the recipe's autoencoder stages (see README.md): the
# world images written by dump-world.ts, the stage's loss (L1 + 0.2 (1 - SSIM), the SSIM of
# tools/train/stage.ts) and its edge term, PSNR as tools/metrics.ts computes it, the warmup +
# cosine schedule of stageAdamW, and diffusers' ResnetBlock2D / single-head attention block / mid block.
import torch, torch.nn as nn, torch.nn.functional as F, numpy as np, math, time, sys, os
torch.set_num_threads(int(os.environ.get('NT', '2')))  # NT=1 runs two models side by side on 2 cores
DATA = os.environ.get('WORLD_DIR', '/tmp/world')
def load(split, size):
    n = {'train': 12000, 'heldout': 256}[split]
    a = np.fromfile(f'{DATA}/{split}_{size}.u8', dtype=np.uint8).reshape(n, size, size, 3)
    return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1
TR32, TR16, HO32, HO16 = load('train', 32), load('train', 16), load('heldout', 32), load('heldout', 16)
g = torch.tensor([math.exp(-((i - 5) ** 2) / (2 * 1.5 ** 2)) for i in range(11)]); g = g / g.sum()
def ssim(a, b):
    n, c, h, w = a.shape
    x = (a * .5 + .5).reshape(n * c, 1, h, w); y = (b * .5 + .5).reshape(n * c, 1, h, w)
    s = torch.cat([x, y, x * x, y * y, x * y])
    s = F.conv2d(F.conv2d(s, g.view(1, 1, 1, 11)), g.view(1, 1, 11, 1))
    mx, my, exx, eyy, exy = s.chunk(5)
    num = (2 * mx * my + 1e-4) * (2 * (exy - mx * my) + 9e-4)
    den = (mx * mx + my * my + 1e-4) * (exx + eyy - mx * mx - my * my + 9e-4)
    return (num / den).mean()
def pixloss(p, t, w=0.2): return (p - t).abs().mean() + w * (1 - ssim(p, t))
def edgeloss(p, t): return sum((p.diff(dim=d) - t.diff(dim=d)).abs().mean() for d in (2, 3))  # stage.ts edgeLoss
def psnr(p, t):
    p = ((p.clamp(-1, 1) * .5 + .5) * 255).round(); t = ((t * .5 + .5) * 255).round()
    mse = ((p - t) ** 2).flatten(1).mean(1)
    return (10 * torch.log10(255 ** 2 / mse.clamp(min=1e-10))).mean().item()
def ssim_eval(p, t): return ssim(p.clamp(-1, 1), t).item()
def sched(opt, lr, steps, warmup, minr=0.1):
    def f(i):
        if i < warmup: return (i + 1) / warmup
        q = (i - warmup) / max(1, steps - warmup); return minr + (1 - minr) * 0.5 * (1 + math.cos(math.pi * q))
    return torch.optim.lr_scheduler.LambdaLR(opt, f)
class Res(nn.Module):
    def __init__(s, i, o, G):
        super().__init__(); s.n1 = nn.GroupNorm(G, i); s.c1 = nn.Conv2d(i, o, 3, padding=1); s.n2 = nn.GroupNorm(G, o); s.c2 = nn.Conv2d(o, o, 3, padding=1)
        s.sc = nn.Conv2d(i, o, 1) if i != o else None
    def forward(s, x):
        h = s.c2(F.silu(s.n2(s.c1(F.silu(s.n1(x))))))
        return (s.sc(x) if s.sc is not None else x) + h
class Attn(nn.Module):
    def __init__(s, c, G):
        super().__init__(); s.n = nn.GroupNorm(G, c); s.q = nn.Linear(c, c); s.k = nn.Linear(c, c); s.v = nn.Linear(c, c); s.o = nn.Linear(c, c)
    def forward(s, x):
        b, c, h, w = x.shape; t = s.n(x).flatten(2).transpose(1, 2)
        a = F.softmax(s.q(t) @ s.k(t).transpose(1, 2) / math.sqrt(c), -1) @ s.v(t)
        return x + s.o(a).transpose(1, 2).reshape(b, c, h, w)
class Mid(nn.Module):
    def __init__(s, c, G, attn=True):
        super().__init__(); s.r1 = Res(c, c, G); s.at = Attn(c, G) if attn else nn.Identity(); s.r2 = Res(c, c, G)
    def forward(s, x): return s.r2(s.at(s.r1(x)))
