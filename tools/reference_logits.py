#!/usr/bin/env python3
"""Reference logits of the bundled tinylm models, recomputed from the fp16 weights as shipped.

The `tinylm-X.reference.safetensors` files that came with the models were computed by train.py from the fp32
weights *before* they were rounded to fp16 (train.py: `ref = model(prompt)` precedes `v.half()`), so no forward pass
over the shipped weights matches them closer than ~1e-2. This script is an independent forward pass of the three
architectures, written from the model definitions in train.py (naive MLA with decompressed keys and values, the
sliding-window mask of YOCO's self-decoder as a dense mask), in float64 numpy over the fp16 weights upcast. It writes
`tinylm-X.reference-fp16.safetensors` next to each model, with the same prompt (the first 64 bytes of the
validation text, read from the shipped reference) and logits [64, 256] (F32).

    python3 tools/reference_logits.py [examples/models]

It checks itself against the shipped references (max abs difference printed; expect ~1e-2 from the rounding).
"""
import json
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop('__metadata__', {})
    kinds = {'F16': np.float16, 'F32': np.float32, 'I32': np.int32, 'BF16': None}
    out = {}
    for name, t in header.items():
        b, e = t['data_offsets']
        if t['dtype'] == 'BF16':
            raw = np.frombuffer(data[b:e], dtype=np.uint16).astype(np.uint32) << 16
            arr = raw.view(np.float32)
        else:
            arr = np.frombuffer(data[b:e], dtype=kinds[t['dtype']])
        out[name] = arr.reshape(t['shape'])
    return out, meta


def write_safetensors(path, tensors, meta):
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        dtype = {np.dtype(np.float32): 'F32', np.dtype(np.int32): 'I32'}[arr.dtype]
        header[name] = {'dtype': dtype, 'shape': list(arr.shape), 'data_offsets': [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header['__metadata__'] = meta
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * (-len(h) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h + b''.join(blobs))


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, theta):
    """x: [..., T, dim], rotate-half, positions 0..T-1."""
    T, dim = x.shape[-2], x.shape[-1]
    inv = theta ** (-np.arange(0, dim, 2) / dim)
    f = np.outer(np.arange(T), inv)
    cos, sin = np.cos(np.concatenate([f, f], -1)), np.sin(np.concatenate([f, f], -1))
    h = dim // 2
    rot = np.concatenate([-x[..., h:], x[..., :h]], -1)
    return x * cos + rot * sin


def attend(q, k, v, mask, scale):
    """q [H, T, d], k, v [Hkv, S, d] (GQA: query head h reads KV head h // (H / Hkv)); mask [T, S] bool."""
    r = q.shape[0] // k.shape[0]
    k, v = np.repeat(k, r, 0), np.repeat(v, r, 0)
    s = q @ k.transpose(0, 2, 1) * scale
    s = np.where(mask, s, -np.inf)
    s = np.exp(s - s.max(-1, keepdims=True))
    return (s / s.sum(-1, keepdims=True)) @ v


def mlp(x, W, p):
    g, u = x @ W[p + 'mlp.gate_proj.weight'].T, x @ W[p + 'mlp.up_proj.weight'].T
    return (g / (1 + np.exp(-g)) * u) @ W[p + 'mlp.down_proj.weight'].T


def forward(W, c, tokens):
    T, eps, theta = len(tokens), c['norm_eps'], c['rope_theta']
    x = W['embed_tokens.weight'][tokens]
    causal = np.tril(np.ones((T, T), dtype=bool))
    heads = lambda y, n, d: y.reshape(T, n, d).transpose(1, 0, 2)  # [T, n*d] -> [n, T, d]
    merge = lambda o: o.transpose(1, 0, 2).reshape(T, -1)

    def gqa_block(x, p, mask):
        h = rms_norm(x, W[p + 'input_layernorm.weight'], eps)
        H, Hk, hd = c['n_heads'], c['n_kv_heads'], c['head_dim']
        q = rope(heads(h @ W[p + 'self_attn.q_proj.weight'].T, H, hd), theta)
        k = rope(heads(h @ W[p + 'self_attn.k_proj.weight'].T, Hk, hd), theta)
        v = heads(h @ W[p + 'self_attn.v_proj.weight'].T, Hk, hd)
        x = x + merge(attend(q, k, v, mask, hd ** -0.5)) @ W[p + 'self_attn.o_proj.weight'].T
        return x + mlp(rms_norm(x, W[p + 'post_attention_layernorm.weight'], eps), W, p)

    def mla_block(x, p):
        h = rms_norm(x, W[p + 'input_layernorm.weight'], eps)
        a = p + 'self_attn.'
        H, nope, rd, vd, rank = c['n_heads'], c['qk_nope_head_dim'], c['qk_rope_head_dim'], c['v_head_dim'], c['kv_lora_rank']
        q = heads(h @ W[a + 'q_proj.weight'].T, H, nope + rd)
        ckv = h @ W[a + 'kv_a_proj_with_mqa.weight'].T
        latent = rms_norm(ckv[:, :rank], W[a + 'kv_a_layernorm.weight'], eps)
        kv = heads(latent @ W[a + 'kv_b_proj.weight'].T, H, nope + vd)  # decompressed: every head's k_nope and v
        k_rope = rope(ckv[None, :, rank:], theta)
        k = np.concatenate([kv[..., :nope], np.repeat(k_rope, H, 0)], -1)
        q = np.concatenate([q[..., :nope], rope(q[..., nope:], theta)], -1)
        o = attend(q, k, kv[..., nope:], causal, (nope + rd) ** -0.5)
        x = x + merge(o) @ W[a + 'o_proj.weight'].T
        return x + mlp(rms_norm(x, W[p + 'post_attention_layernorm.weight'], eps), W, p)

    if c['attention'] == 'gqa':
        for l in range(c['n_layers']):
            x = gqa_block(x, f'layers.{l}.', causal)
    elif c['attention'] == 'mla':
        for l in range(c['n_layers']):
            x = mla_block(x, f'layers.{l}.')
    else:
        i = np.arange(T)
        window = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < c['sliding_window'])
        for l in range(c['n_self_layers']):
            x = gqa_block(x, f'layers.{l}.', window)
        Hk, hd, H = c['n_kv_heads'], c['head_dim'], c['n_heads']
        g = rms_norm(x, W['global_norm.weight'], eps)
        k = rope(heads(g @ W['global_k_proj.weight'].T, Hk, hd), theta)
        v = heads(g @ W['global_v_proj.weight'].T, Hk, hd)
        for l in range(c['n_layers'] - c['n_self_layers']):
            p = f'cross_layers.{l}.'
            h = rms_norm(x, W[p + 'input_layernorm.weight'], eps)
            q = rope(heads(h @ W[p + 'cross_attn.q_proj.weight'].T, H, hd), theta)
            x = x + merge(attend(q, k, v, causal, hd ** -0.5)) @ W[p + 'cross_attn.o_proj.weight'].T
            x = x + mlp(rms_norm(x, W[p + 'post_attention_layernorm.weight'], eps), W, p)
    return rms_norm(x, W['norm.weight'], eps) @ W['lm_head.weight'].T


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else 'examples/models'
    for name in ('gqa', 'mla', 'yoco'):
        weights, meta = read_safetensors(f'{root}/tinylm-{name}.safetensors')
        W = {k: v.astype(np.float64) for k, v in weights.items()}
        c = json.loads(meta['config'])
        shipped, _ = read_safetensors(f'{root}/tinylm-{name}.reference.safetensors')
        prompt = shipped['prompt'].astype(np.int64)
        logits = forward(W, c, prompt)
        diff = np.abs(logits - shipped['logits']).max()
        print(f'tinylm-{name}: max |recomputed - shipped reference| = {diff:.4g}')
        write_safetensors(f'{root}/tinylm-{name}.reference-fp16.safetensors',
                          {'prompt': prompt.astype(np.int32), 'logits': logits.astype(np.float32)},
                          {'note': 'float64 numpy forward (tools/reference_logits.py) of the fp16 weights as shipped; '
                                   'logits[t] predicts byte t+1'})


if __name__ == '__main__':
    main()
