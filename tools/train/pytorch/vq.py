# PyTorch model of the `vq` stage (tools/train/autoencoders.ts): LlamaGen's VQ encoder / l2
# codebook / decoder at VQ_TRAIN_CONFIG's sizes (16 px in, 32 px out), the same losses and
# optimiser; --kmeans seeds the codebook by spherical k-means of the initial encoder's features
# of --kn training images (--pp: k-means++ seeding). Prints held-out PSNR / SSIM / code usage.
#   /usr/bin/python3 vq.py --steps 300 [--lr 1e-3] [--kmeans 1 --kn 2048] [--ent 0.1] [--cblr 10]
import sys, os, argparse
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from common import *
p = argparse.ArgumentParser(); p.add_argument('--lr', type=float, default=1e-3); p.add_argument('--steps', type=int, default=200); p.add_argument('--batch', type=int, default=8)
p.add_argument('--K', type=int, default=1024); p.add_argument('--D', type=int, default=8); p.add_argument('--ent', type=float, default=0.0); p.add_argument('--kmeans', type=int, default=0)
p.add_argument('--ch', type=int, default=32); p.add_argument('--beta', type=float, default=0.25); p.add_argument('--cblr', type=float, default=1.0); p.add_argument('--kn', type=int, default=2048); p.add_argument('--pp', type=int, default=0)
a = p.parse_args(); torch.manual_seed(0); G = 32 if a.ch >= 32 else 16
ch = a.ch
enc = nn.Sequential(nn.Conv2d(3, 2 * ch, 3, padding=1), Res(2 * ch, 2 * ch, G), nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(2 * ch, 2 * ch, 3, stride=2),
                    Res(2 * ch, 4 * ch, G), Attn(4 * ch, G), Mid(4 * ch, G), nn.GroupNorm(G, 4 * ch), nn.SiLU(), nn.Conv2d(4 * ch, 64, 3, padding=1), nn.Conv2d(64, a.D, 1))
def up(c): return [nn.Upsample(scale_factor=2), nn.Conv2d(c, c, 3, padding=1)]
dec = nn.Sequential(nn.Conv2d(a.D, 64, 1), nn.Conv2d(64, 4 * ch, 3, padding=1), Mid(4 * ch, G), Res(4 * ch, 4 * ch, G), Attn(4 * ch, G), Res(4 * ch, 4 * ch, G), Attn(4 * ch, G), *up(4 * ch),
                    Res(4 * ch, 2 * ch, G), Res(2 * ch, 2 * ch, G), *up(2 * ch), Res(2 * ch, ch, G), Res(ch, ch, G), nn.GroupNorm(G, ch), nn.SiLU(), nn.Conv2d(ch, 3, 3, padding=1))
cb = nn.Parameter(torch.empty(a.K, a.D).uniform_(-1 / a.K, 1 / a.K))
def quant(z):
    z = F.normalize(z.permute(0, 2, 3, 1), dim=-1); e = F.normalize(cb, dim=-1)
    d = -z.reshape(-1, a.D) @ e.t(); idx = d.argmin(1); zq = e[idx].view(z.shape)
    vq = ((zq - z.detach()) ** 2).mean(); cm = a.beta * ((zq.detach() - z) ** 2).mean()
    ent = 0
    if a.ent:
        aff = -d / 0.01; pr = F.softmax(aff, 1); lp = F.log_softmax(aff, 1)
        ent = a.ent * ((-(pr * lp).sum(1)).mean() - (-(pr.mean(0) * torch.log(pr.mean(0) + 1e-5)).sum()))
    zq = z + (zq - z).detach()
    return zq.permute(0, 3, 1, 2), vq + cm + ent, idx
if a.kmeans:
    with torch.no_grad():
        z = F.normalize(enc(TR16[:a.kn]).permute(0, 2, 3, 1).reshape(-1, a.D), dim=-1)
        c = z[torch.randperm(len(z))[:a.K]].clone()
        if a.pp:
            g0 = torch.Generator().manual_seed(0); c = [z[torch.randint(0, len(z), (1,), generator=g0)].squeeze(0)]; near = torch.full((len(z),), float('inf'))
            for q in range(a.K - 1):
                near = torch.minimum(near, (1 - z @ c[-1]) ** 2); c.append(z[torch.multinomial(near / near.sum(), 1, generator=g0)].squeeze(0))
            c = torch.stack(c)
        for it in range(20):
            idx = (z @ c.t()).argmax(1)
            for k in range(a.K):
                m = z[idx == k]
                if len(m): c[k] = F.normalize(m.mean(0), dim=0)
        cb.data.copy_(c)
params = [{'params': list(enc.parameters()) + list(dec.parameters())}, {'params': [cb], 'lr': a.lr * a.cblr}]
opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.95), weight_decay=0); sc = sched(opt, a.lr, a.steps, 30)
t0 = time.time()
for i in range(a.steps):
    idx = torch.randint(0, 12000, (a.batch,))
    zq, ql, ids = quant(enc(TR16[idx])); y = dec(zq)
    loss = pixloss(y, TR32[idx]) + ql
    opt.zero_grad(); loss.backward(); opt.step(); sc.step()
    if i % 200 == 0 or i == a.steps - 1:
        with torch.no_grad(): zq, _, ids = quant(enc(HO16)); yh = dec(zq)
        print(f'{i} loss {loss.item():.4f} psnr {psnr(yh, HO32):.2f} ssim {ssim_eval(yh, HO32):.3f} usage {len(ids.unique())/a.K:.2f} {time.time()-t0:.0f}s', flush=True)
print(vars(a))
