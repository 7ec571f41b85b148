# PyTorch model of the `vae` stage (tools/train/autoencoders.ts): diffusers' AutoencoderKL
# layout at VAE_CONFIG's sizes, the same loss, optimiser and schedule; prints held-out PSNR / SSIM.
#   /usr/bin/python3 vae.py --steps 900 [--lr 1e-3] [--batch 8] [--lat 4] [--ch 16,32] [--mse W] [--grad W] [--b2 0.99] [--kl 1e-6]
# (--mse: W x MSE, --grad: W x the L1 of the finite differences, as vq.py)
import sys, os, argparse
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from common import *
p = argparse.ArgumentParser(); p.add_argument('--ch', default='16,32'); p.add_argument('--lat', type=int, default=4); p.add_argument('--lr', type=float, default=1e-3)
p.add_argument('--steps', type=int, default=900); p.add_argument('--batch', type=int, default=8); p.add_argument('--G', type=int, default=8); p.add_argument('--ssim', type=float, default=0.2)
p.add_argument('--attn', type=int, default=1); p.add_argument('--mse', type=float, default=0.0); p.add_argument('--grad', type=float, default=0.0)
p.add_argument('--b2', type=float, default=0.99); p.add_argument('--kl', type=float, default=1e-6); p.add_argument('--seed', type=int, default=0)
p.add_argument('--minr', type=float, default=0.1); p.add_argument('--ema', type=float, default=0)  # the schedule's final lr ratio; EMA decay of the weights (0: none)
a = p.parse_args(); torch.manual_seed(a.seed)
ch = [int(x) for x in a.ch.split(',')]; G = a.G; L = a.lat
class VAE(nn.Module):
    def __init__(s):
        super().__init__()
        e = [nn.Conv2d(3, ch[0], 3, padding=1)]; prev = ch[0]
        for i, c in enumerate(ch):
            e.append(Res(prev, c, G)); prev = c
            if i < len(ch) - 1: e += [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(c, c, 3, stride=2)]
        e += [Mid(prev, G, a.attn), nn.GroupNorm(G, prev), nn.SiLU(), nn.Conv2d(prev, 2 * L, 3, padding=1), nn.Conv2d(2 * L, 2 * L, 1)]
        s.enc = nn.Sequential(*e)
        with torch.no_grad(): s.enc[-1].bias[L:] = -6
        d = [nn.Conv2d(L, L, 1), nn.Conv2d(L, ch[-1], 3, padding=1), Mid(ch[-1], G, a.attn)]; prev = ch[-1]
        rc = ch[::-1]
        for i, c in enumerate(rc):
            for j in range(2): d.append(Res(prev, c, G)); prev = c
            if i < len(rc) - 1: d += [nn.Upsample(scale_factor=2), nn.Conv2d(c, c, 3, padding=1)]
        d += [nn.GroupNorm(G, prev), nn.SiLU(), nn.Conv2d(prev, 3, 3, padding=1)]
        s.dec = nn.Sequential(*d)
    def forward(s, x):
        m, lv = s.enc(x).chunk(2, 1); z = m + torch.exp(0.5 * lv) * torch.randn_like(m)
        return s.dec(z), m, lv
vae = VAE(); opt = torch.optim.AdamW(vae.parameters(), lr=a.lr, betas=(0.9, a.b2), weight_decay=0); sc = sched(opt, a.lr, a.steps, 30, a.minr)
ema = [q.detach().clone() for q in vae.parameters()] if a.ema else None
t0 = time.time()
for i in range(a.steps):
    idx = torch.randint(0, 12000, (a.batch,)); x = TR32[idx]
    y, m, lv = vae(x); kl = 0.5 * (m ** 2 + lv.exp() - lv - 1).sum() / a.batch
    loss = pixloss(y, x, a.ssim) + a.mse * ((y - x) ** 2).mean() + kl * a.kl / 3072
    if a.grad: loss = loss + a.grad * edgeloss(y, x)
    opt.zero_grad(); loss.backward(); opt.step(); sc.step()
    if ema:
        with torch.no_grad():
            for e, q in zip(ema, vae.parameters()): e.mul_(a.ema).add_(q, alpha=1 - a.ema)
    if i % 200 == 0 or i == a.steps - 1:
        with torch.no_grad(): yh = vae.dec(vae.enc(HO32).chunk(2, 1)[0])
        e = ''
        if ema:
            live = [q.detach().clone() for q in vae.parameters()]
            with torch.no_grad():
                for q, w in zip(vae.parameters(), ema): q.copy_(w)
                ye = vae.dec(vae.enc(HO32).chunk(2, 1)[0]); e = f' ema psnr {psnr(ye, HO32):.2f} ssim {ssim_eval(ye, HO32):.3f}'
                for q, w in zip(vae.parameters(), live): q.copy_(w)
        print(f'{i} loss {loss.item():.4f} psnr {psnr(yh, HO32):.2f} ssim {ssim_eval(yh, HO32):.3f}{e} {time.time()-t0:.0f}s', flush=True)
print(vars(a))
