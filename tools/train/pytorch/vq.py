# PyTorch model of the `vq` stage (tools/train/autoencoders.ts): LlamaGen's VQ encoder / l2
# codebook / decoder at VQ_CONFIG's sizes (16 px in, 16 px out; --dec32 1: the former recipe's
# decoder, one level deeper, to the 32 px image), the same losses (L1 + 0.2 (1 - SSIM) + --mse
# MSE, vq + commitment + --ent entropy) and optimiser. --kmeans seeds the codebook by spherical
# k-means of the initial encoder's features of --kn training images (--pp: k-means++ seeding);
# --noq 1 decodes the encoder's output unquantized, --grad W adds W x the L1 of the finite
# differences (the project's edge term), --G sets the GroupNorm groups (LlamaGen's 32).
# Prints held-out PSNR / SSIM (a 16 px output is scored resized bicubic to 32 px) / code usage,
# the mean-colour error and the codes' synonym entropy in flat regions; SAVE=file.png writes 8
# held-out images over their reconstructions, DUMP=file.u8 all 256 (scored by the GenEval
# checker: geneval-dump.ts).
#   /usr/bin/python3 vq.py --steps 1900 --ch 16 --grad 0.3          # the recipe (config ch 32, 1800 steps there)
#   /usr/bin/python3 vq.py --steps 300 --mse 0 --dec32 1            # the former recipe
import sys, os, argparse
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); from common import *
p = argparse.ArgumentParser(); A = p.add_argument
A('--lr', type=float, default=1e-3); A('--steps', type=int, default=400); A('--batch', type=int, default=8); A('--seed', type=int, default=0)
A('--K', type=int, default=1024); A('--D', type=int, default=8); A('--ch', type=int, default=32); A('--beta', type=float, default=0.25)
A('--ent', type=float, default=0.0); A('--mse', type=float, default=1.0); A('--dec32', type=int, default=0); A('--cblr', type=float, default=1.0)
A('--noq', type=int, default=0); A('--grad', type=float, default=0.0); A('--kmeans', type=int, default=0); A('--kn', type=int, default=2048); A('--pp', type=int, default=0)
A('--G', type=int, default=32)
a = p.parse_args(); torch.manual_seed(a.seed); G = a.G  # LlamaGen's GroupNorm(32)
ch = a.ch
enc = nn.Sequential(nn.Conv2d(3, 2 * ch, 3, padding=1), Res(2 * ch, 2 * ch, G), nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(2 * ch, 2 * ch, 3, stride=2),
                    Res(2 * ch, 4 * ch, G), Attn(4 * ch, G), Mid(4 * ch, G), nn.GroupNorm(G, 4 * ch), nn.SiLU(), nn.Conv2d(4 * ch, 64, 3, padding=1), nn.Conv2d(64, a.D, 1))
def up(c): return [nn.Upsample(scale_factor=2), nn.Conv2d(c, c, 3, padding=1)]
top = [nn.Conv2d(a.D, 64, 1), nn.Conv2d(64, 4 * ch, 3, padding=1), Mid(4 * ch, G), Res(4 * ch, 4 * ch, G), Attn(4 * ch, G), Res(4 * ch, 4 * ch, G), Attn(4 * ch, G), *up(4 * ch),
       Res(4 * ch, 2 * ch, G), Res(2 * ch, 2 * ch, G)]
if a.dec32: net = nn.Sequential(*top, *up(2 * ch), Res(2 * ch, ch, G), Res(ch, ch, G), nn.GroupNorm(G, ch), nn.SiLU(), nn.Conv2d(ch, 3, 3, padding=1))
else: net = nn.Sequential(*top, nn.GroupNorm(G, 2 * ch), nn.SiLU(), nn.Conv2d(2 * ch, 3, 3, padding=1))
def dec(zq, score=False):  # score: a 16 px output resized to the 32 px image, as eval reconstruction does
    y = net(zq)
    return F.interpolate(y, size=32, mode='bicubic', align_corners=False) if score and y.shape[-1] != 32 else y
cb = nn.Parameter(torch.empty(a.K, a.D).uniform_(-1 / a.K, 1 / a.K))
def quant(z):
    if a.noq: return z, 0, torch.zeros(1)
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
params = [{'params': list(enc.parameters()) + list(net.parameters())}, {'params': [cb], 'lr': a.lr * a.cblr}]
opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.95), weight_decay=0); sc = sched(opt, a.lr, a.steps, 30)
t0 = time.time()
for i in range(a.steps):
    idx = torch.randint(0, 12000, (a.batch,))
    zq, ql, ids = quant(enc(TR16[idx])); y = dec(zq); T = TR32[idx] if a.dec32 else TR16[idx]
    loss = pixloss(y, T) + a.mse * ((y - T) ** 2).mean() + ql
    if a.grad: loss = loss + a.grad * edgeloss(y, T)
    opt.zero_grad(); loss.backward(); opt.step(); sc.step()
    if i % 200 == 0 or i == a.steps - 1:
        with torch.no_grad(): zq, _, ids = quant(enc(HO16)); yh = dec(zq, True)
        print(f'{i} loss {loss.item():.4f} psnr {psnr(yh, HO32):.2f} ssim {ssim_eval(yh, HO32):.3f} usage {len(ids.unique())/a.K:.2f} {time.time()-t0:.0f}s', flush=True)
with torch.no_grad():
    zq, _, ids = quant(enc(HO16)); yh = dec(zq, True).clamp(-1, 1)
    print(f'mean-colour error {((yh.mean((2, 3)) - HO32.mean((2, 3))) * 127.5).abs().mean().item():.1f} levels of 255')
    # synonyms: the codes of tokens inside flat regions (the 4x4 pixels around the token's 2x2
    # all one colour), grouped by that colour: H(code | colour) is what a GPT must guess that
    # the image does not decide
    g = ids.view(len(HO16), 8, 8); P = F.pad(HO16, (1, 1, 1, 1), value=9.0); groups = {}
    for i in range(8):
        for j in range(8):
            w = P[:, :, 2 * i:2 * i + 4, 2 * j:2 * j + 4].reshape(len(HO16), 3, -1)
            flat = (w.amax(2) - w.amin(2)).amax(1) < 1e-3
            for n in flat.nonzero().flatten().tolist():
                groups.setdefault(tuple((w[n, :, 0] * 127.5).round().int().tolist()), []).append(g[n, i, j].item())
    tot = sum(len(v) for v in groups.values())
    def H(v):
        c = torch.tensor(v).unique(return_counts=True)[1].float() / len(v); return -(c * c.log()).sum().item()
    print(f'flat tokens {tot} in {len(groups)} colours: H(code | colour) {sum(len(v) / tot * H(v) for v in groups.values()):.2f} nats, '
          f'{sum(len(set(v)) for v in groups.values()) / len(groups):.0f} codes a colour')
    if os.environ.get('DUMP'):  # the 256 held-out reconstructions, uint8 HWC, for tools/train/pytorch/geneval-dump.ts
        open(os.environ['DUMP'], 'wb').write(((yh * .5 + .5) * 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy().tobytes())
    if os.environ.get('SAVE'):
        from PIL import Image
        im = torch.cat([torch.cat(list(HO32[:8]), 2), torch.cat(list(yh[:8]), 2)], 1)
        Image.fromarray(((im * .5 + .5) * 255).round().byte().permute(1, 2, 0).numpy()).resize((8 * 32 * 4, 64 * 4), Image.NEAREST).save(os.environ['SAVE'])
print(vars(a))
