# PyTorch model of the `laytongen` stage (tools/laytongen/train.ts): LlamaGen's t2i GPT at
# GPT_CONFIG's sizes (caption MLP, uncond_embedding, RMSNorm, fused wqkv, SwiGLU, 2D RoPE whose
# caption rows are zero, causal attention hiding padded caption keys) on a model root's cached
# tokens (<root>/train/laytongen/tokens.safetensors) and its text_encoder/ (T5 encoder, loaded
# by name: frozen as the recipe has it, or --t5train 1 trained with the GPT). Same loss, caption
# dropout, optimiser and schedule. Prints the held-out CE with the captions and with the uncond
# embedding in their place: their difference is what the caption tells the GPT, in nats a token.
#   /usr/bin/python3 gpt.py --root /tmp/exH [--steps 960] [--lr 1e-3] [--t5train 0] [--save ROOT2/gpt]
# (--save: the trained GPT as a gpt/ folder with LlamaGen's key names, for `layton-run eval geneval --model ROOT2`)
import sys, os, argparse, json, struct
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch, torch.nn as nn, torch.nn.functional as F, numpy as np, math, time
from common import sched
torch.set_num_threads(int(os.environ.get('NT', '2')))
p = argparse.ArgumentParser(); A = p.add_argument
A('--root', required=True); A('--steps', type=int, default=960); A('--batch', type=int, default=32); A('--lr', type=float, default=1e-3)
A('--wd', type=float, default=0.05); A('--warmup', type=int, default=40); A('--t5train', type=int, default=0); A('--t5lr', type=float, default=1.0)
A('--dim', type=int, default=128); A('--layers', type=int, default=4); A('--heads', type=int, default=4); A('--drop', type=float, default=0.1)
A('--seed', type=int, default=0); A('--every', type=int, default=240)
A('--save', default='')  # a gpt/ folder (the root's config.json, LlamaGen's key names) for `layton-run eval geneval --model`
A('--caprope', default='zero', choices=['zero', 'identity'])  # the caption rows of the 2D RoPE: LlamaGen's zeros (q, k of the caption = 0), or no rotation
a = p.parse_args(); torch.manual_seed(a.seed)

def safetensors(path):
    b = open(path, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8 + n]); meta = h.pop('__metadata__', {})
    dt = {'F32': np.float32, 'I32': np.int32, 'F16': np.float16}
    out = {k: torch.from_numpy(np.frombuffer(b[8 + n + v['data_offsets'][0]:8 + n + v['data_offsets'][1]], dtype=dt[v['dtype']]).reshape(v['shape']).copy()) for k, v in h.items()}
    return out, meta

# ---- data: cached image tokens, captions tokenised as the world tokenizer does (a word a piece, then </s>)
tok, meta = safetensors(f'{a.root}/train/laytongen/tokens.safetensors')
tj = json.load(open(f'{a.root}/text_encoder/tokenizer.json')); vocab = {w: i for i, (w, _) in enumerate(tj['model']['vocab'])}
L = 16
def caption_ids(caps):
    ids = torch.zeros(len(caps), L, dtype=torch.long); m = torch.zeros(len(caps), L, dtype=torch.bool)
    for i, c in enumerate(caps):
        t = [vocab.get('\u2581' + w, 2) for w in c.lower().split()][:L - 1] + [1]; ids[i, :len(t)] = torch.tensor(t); m[i, :len(t)] = True
    return ids, m
TR, HO = tok['train'].long(), tok['heldout'].long()
TRc, TRm = caption_ids(json.loads(meta['train_captions'])); HOc, HOm = caption_ids(json.loads(meta['heldout_captions']))

# ---- T5 encoder (transformers' T5EncoderModel names), weights from text_encoder/model.safetensors
t5w, _ = safetensors(f'{a.root}/text_encoder/model.safetensors'); t5c = json.load(open(f'{a.root}/text_encoder/config.json'))
t5 = nn.ParameterDict({k.replace('.', '/'): nn.Parameter(v.float()) for k, v in t5w.items()})
def W(k): return t5[k.replace('.', '/')]
def rms(x, w, eps): return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
def bucket(rel, nb=t5c['relative_attention_num_buckets'], md=t5c['relative_attention_max_distance']):
    nb //= 2; ret = (rel > 0).long() * nb; n = rel.abs(); me = nb // 2
    large = me + (torch.log(n.float().clamp(min=1) / me) / math.log(md / me) * (nb - me)).long()
    return ret + torch.where(n < me, n, large.clamp(max=nb - 1))
def encode_t5(ids, m):
    H, dk, eps = t5c['num_heads'], t5c['d_kv'], t5c['layer_norm_epsilon']; B = ids.shape[0]
    x = F.embedding(ids, W('shared.weight')); pos = torch.arange(L)
    bias = F.embedding(bucket(pos[None, :] - pos[:, None]), W('encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight')).permute(2, 0, 1)
    bias = bias[None] + torch.where(m, 0.0, -1e9)[:, None, None, :]
    for i in range(t5c['num_layers']):
        P = f'encoder.block.{i}.layer.'
        h = rms(x, W(P + '0.layer_norm.weight'), eps)
        q, k, v = (F.linear(h, W(P + f'0.SelfAttention.{n}.weight')).view(B, L, H, dk).transpose(1, 2) for n in 'qkv')
        att = torch.softmax(q @ k.transpose(-1, -2) + bias, -1) @ v  # T5 does not scale by sqrt(d_kv)
        x = x + F.linear(att.transpose(1, 2).reshape(B, L, H * dk), W(P + '0.SelfAttention.o.weight'))
        h = rms(x, W(P + '1.layer_norm.weight'), eps)
        x = x + F.linear(F.gelu(F.linear(h, W(P + '1.DenseReluDense.wi_0.weight')), approximate='tanh') * F.linear(h, W(P + '1.DenseReluDense.wi_1.weight')), W(P + '1.DenseReluDense.wo.weight'))
    return rms(x, W('encoder.final_layer_norm.weight'), eps)
def caption_features(ids, m):  # right-aligned with zero rows in front (tools/laytongen/captions.ts)
    h = encode_t5(ids, m); n = m.sum(1); out = torch.zeros_like(h); mask = torch.zeros_like(m)
    for b in range(len(h)): out[b, L - n[b]:] = h[b, :n[b]]; mask[b, L - n[b]:] = True
    return out, mask

# ---- the GPT (LlamaGen t2i)
D, NL, NH = a.dim, a.layers, a.heads; HD = D // NH; V = 1024; G = 8; CD = t5c['d_model']
FF = 256 * ((int(2 * 4 * D / 3) + 255) // 256)
def freqs_2d():
    half = HD // 2; f = 1.0 / (10000 ** (torch.arange(0, half, 2)[:half // 2].float() / half)); t = torch.arange(G).float(); f = torch.outer(t, f)
    grid = torch.cat([f[:, None, :].expand(-1, G, -1), f[None, :, :].expand(G, -1, -1)], -1)
    c = torch.stack([grid.cos(), grid.sin()], -1).flatten(0, 1); cap = torch.zeros(L, half, 2)
    if a.caprope == 'identity': cap[..., 0] = 1
    return torch.cat([cap, c])
FC = freqs_2d()
def rope(x, fc):  # x [B, T, H, HD]
    xs = x.float().reshape(*x.shape[:-1], -1, 2); fc = fc.view(1, xs.size(1), 1, xs.size(3), 2)
    return torch.stack([xs[..., 0] * fc[..., 0] - xs[..., 1] * fc[..., 1], xs[..., 1] * fc[..., 0] + xs[..., 0] * fc[..., 1]], -1).flatten(3)
class Block(nn.Module):
    def __init__(s):
        super().__init__(); s.w1 = nn.Parameter(torch.ones(D)); s.w2 = nn.Parameter(torch.ones(D))
        s.wqkv = nn.Linear(D, 3 * D, bias=False); s.wo = nn.Linear(D, D, bias=False)
        s.f1 = nn.Linear(D, FF, bias=False); s.f3 = nn.Linear(D, FF, bias=False); s.f2 = nn.Linear(FF, D, bias=False)
    def forward(s, x, fc, mask):
        B, T, _ = x.shape; h = rms(x, s.w1, 1e-5)
        q, k, v = s.wqkv(h).view(B, T, 3, NH, HD).unbind(2); q, k = rope(q, fc), rope(k, fc)
        att = torch.softmax((q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2)) / math.sqrt(HD) + mask, -1) @ v.transpose(1, 2)
        x = x + s.wo(att.transpose(1, 2).reshape(B, T, D)); h = rms(x, s.w2, 1e-5)
        return x + s.f2(F.silu(s.f1(h)) * s.f3(h))
class GPT(nn.Module):
    def __init__(s):
        super().__init__(); s.fc1 = nn.Linear(CD, D, bias=False); s.fc2 = nn.Linear(D, D, bias=False)
        s.register_buffer('uncond', torch.randn(120, CD) / CD ** 0.5)
        s.tok = nn.Embedding(V, D); s.blocks = nn.ModuleList(Block() for _ in range(NL)); s.wn = nn.Parameter(torch.ones(D)); s.out = nn.Linear(D, V, bias=False)
        for m in s.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)): nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(s.out.weight)
    def forward(s, cap, cmask, tokens, drop=None):
        if drop is not None: cap = torch.where(drop[:, None, None], s.uncond[:L], cap)
        c = s.fc2(F.gelu(s.fc1(cap), approximate='tanh'))
        x = torch.cat([c, s.tok(tokens[:, :-1])], 1); B, T, _ = x.shape
        keep = torch.cat([cmask, torch.ones(B, T - L, dtype=torch.bool)], 1)[:, None, :] & torch.ones(T, T, dtype=torch.bool).tril()[None]
        keep = keep | torch.eye(T, dtype=torch.bool)[None]
        mask = torch.where(keep, 0.0, -1e30)[:, None]
        for b in s.blocks: x = b(x, FC[:T], mask)
        return s.out(rms(x, s.wn, 1e-5))[:, L - 1:]
gpt = GPT()
decay = [q for n, q in gpt.named_parameters() if q.dim() >= 2]; nodecay = [q for n, q in gpt.named_parameters() if q.dim() < 2]
groups = [{'params': decay, 'weight_decay': a.wd}, {'params': nodecay, 'weight_decay': 0.0}]
if a.t5train: groups.append({'params': list(t5.parameters()), 'weight_decay': 0.0, 'lr': a.lr * a.t5lr})
else:
    for q in t5.parameters(): q.requires_grad_(False)
opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95)); sc = sched(opt, a.lr, a.steps, a.warmup)
def heldout():
    with torch.no_grad():
        cap, cm = caption_features(HOc, HOm); out = []
        for drop in (None, torch.ones(len(HO), dtype=torch.bool)):
            lg = gpt(cap, cm, HO, drop); out.append(F.cross_entropy(lg.reshape(-1, V), HO.reshape(-1)).item())
    return out
t0 = time.time(); g = torch.Generator().manual_seed(a.seed)
for i in range(a.steps):
    idx = torch.randint(0, len(TR), (a.batch,), generator=g)
    cap, cm = caption_features(TRc[idx], TRm[idx]); drop = torch.rand(a.batch, generator=g) < a.drop
    loss = F.cross_entropy(gpt(cap, cm, TR[idx], drop).reshape(-1, V), TR[idx].reshape(-1))
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_([q for gr in groups for q in gr['params']], 1.0); opt.step(); sc.step()
    if (i + 1) % a.every == 0 or i == a.steps - 1:
        c, u = heldout(); print(f'{i + 1} loss {loss.item():.3f} held-out CE {c:.3f} uncond {u:.3f} caption {u - c:.3f} nats/token {time.time() - t0:.0f}s', flush=True)
def save(d):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '../../../test/fixtures')); import st  # the fixtures' safetensors writer
    names = {'fc1': 'cls_embedding.cap_proj.fc1', 'fc2': 'cls_embedding.cap_proj.fc2', 'tok': 'tok_embeddings', 'wn': 'norm', 'out': 'output',
             'w1': 'attention_norm', 'w2': 'ffn_norm', 'wqkv': 'attention.wqkv', 'wo': 'attention.wo', 'f1': 'feed_forward.w1', 'f2': 'feed_forward.w2', 'f3': 'feed_forward.w3'}
    sd = {'cls_embedding.uncond_embedding': gpt.uncond.float()}
    for n, q in gpt.named_parameters():
        parts = n.split('.'); last = parts[-1] if parts[-1] != 'weight' else parts[-2]
        sd[(f'layers.{parts[1]}.' if parts[0] == 'blocks' else '') + names[last] + '.weight'] = q.float()
    os.makedirs(d, exist_ok=True); st.save(f'{d}/model.safetensors', sd)
    cfg = json.load(open(f'{a.root}/gpt/config.json')); cfg.update(dim=D, n_layer=NL, n_head=NH, n_kv_head=NH, token_dropout_p=0, resid_dropout_p=0, ffn_dropout_p=0)
    with open(f'{d}/config.json.tmp', 'w') as f: json.dump(cfg, f, indent=2)
    os.replace(f'{d}/config.json.tmp', f'{d}/config.json')
if a.save: save(a.save)
print(vars(a))
