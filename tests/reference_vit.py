"""An independent float64 numpy implementation of the original ViT forward pass.

Written from the semantics of the original JAX release (DESIGN.md), working directly on an
original-layout checkpoint dict, sharing no code with keras_vit. Also writes random
checkpoints in that layout.
"""
import numpy as np
from scipy import ndimage


def make_checkpoint(rng, *, patch=8, dim=32, mlp=64, heads=4, layers=2, grid=(4, 4),
                    num_classes=5, representation=None, classifier="token",
                    resnet_stages=None, channels=3, scale=0.2):
    """Random parameters with the original key names and shapes."""
    def r(*shape):
        return rng.normal(0.0, scale, shape).astype(np.float32)

    p = {}
    embed_in = channels
    if resnet_stages:
        p["conv_root/kernel"] = r(7, 7, channels, 64)
        p["gn_root/scale"], p["gn_root/bias"] = 1 + r(1, 1, 1, 64), r(1, 1, 1, 64)
        cin = 64
        for s, units in enumerate(resnet_stages):
            mid = 64 * 2 ** s
            for u in range(units):
                pre = f"block{s + 1}/unit{u + 1}"
                p[f"{pre}/conv1/kernel"] = r(1, 1, cin, mid)
                p[f"{pre}/conv2/kernel"] = r(3, 3, mid, mid)
                p[f"{pre}/conv3/kernel"] = r(1, 1, mid, 4 * mid)
                for gn, c in (("gn1", mid), ("gn2", mid), ("gn3", 4 * mid)):
                    p[f"{pre}/{gn}/scale"], p[f"{pre}/{gn}/bias"] = 1 + r(1, 1, 1, c), r(1, 1, 1, c)
                if u == 0:
                    p[f"{pre}/conv_proj/kernel"] = r(1, 1, cin, 4 * mid)
                    p[f"{pre}/gn_proj/scale"] = 1 + r(1, 1, 1, 4 * mid)
                    p[f"{pre}/gn_proj/bias"] = r(1, 1, 1, 4 * mid)
                cin = 4 * mid
        embed_in, patch = cin, 1
    p["embedding/kernel"] = r(patch, patch, embed_in, dim)
    p["embedding/bias"] = r(dim)
    prefix = 1 if classifier == "token" else 0
    if prefix:
        p["cls"] = r(1, 1, dim)
    p["Transformer/posembed_input/pos_embedding"] = r(1, prefix + grid[0] * grid[1], dim)
    hd = dim // heads
    for i in range(layers):
        b = f"Transformer/encoderblock_{i}"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            p[f"{b}/{ln}/scale"], p[f"{b}/{ln}/bias"] = 1 + r(dim), r(dim)
        for n in ("query", "key", "value"):
            p[f"{b}/MultiHeadDotProductAttention_1/{n}/kernel"] = r(dim, heads, hd)
            p[f"{b}/MultiHeadDotProductAttention_1/{n}/bias"] = r(heads, hd)
        p[f"{b}/MultiHeadDotProductAttention_1/out/kernel"] = r(heads, hd, dim)
        p[f"{b}/MultiHeadDotProductAttention_1/out/bias"] = r(dim)
        p[f"{b}/MlpBlock_3/Dense_0/kernel"], p[f"{b}/MlpBlock_3/Dense_0/bias"] = r(dim, mlp), r(mlp)
        p[f"{b}/MlpBlock_3/Dense_1/kernel"], p[f"{b}/MlpBlock_3/Dense_1/bias"] = r(mlp, dim), r(dim)
    p["Transformer/encoder_norm/scale"] = 1 + r(dim)
    p["Transformer/encoder_norm/bias"] = r(dim)
    head_in = dim
    if representation:
        p["pre_logits/kernel"], p["pre_logits/bias"] = r(dim, representation), r(representation)
        head_in = representation
    p["head/kernel"], p["head/bias"] = r(head_in, num_classes), r(num_classes)
    return p


def _layer_norm(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def _same_pads(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _conv_same(x, w, stride=1):
    k = w.shape[0]
    (t, b), (l, rr) = _same_pads(x.shape[1], k, stride), _same_pads(x.shape[2], k, stride)
    x = np.pad(x, ((0, 0), (t, b), (l, rr), (0, 0)))
    oh, ow = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[-1]))
    for i in range(k):
        for j in range(k):
            patch = x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
            out += patch @ w[i, j]
    return out


def _std(w):
    w = w.astype(np.float64)
    mu = w.mean(axis=(0, 1, 2), keepdims=True)
    return (w - mu) / (w.std(axis=(0, 1, 2), keepdims=True) + 1e-5)


def _group_norm(x, scale, bias, groups=32, eps=1e-6):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mu = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    g = (g - mu) / np.sqrt(var + eps)
    return g.reshape(b, h, w, c) * scale.reshape(c) + bias.reshape(c)


def _max_pool_same(x, k=3, s=2):
    (t, b), (l, r) = _same_pads(x.shape[1], k, s), _same_pads(x.shape[2], k, s)
    x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=-np.inf)
    oh, ow = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    out = np.full((x.shape[0], oh, ow, x.shape[3]), -np.inf)
    for i in range(k):
        for j in range(k):
            out = np.maximum(out, x[:, i:i + s * oh:s, j:j + s * ow:s, :])
    return out


def _resnet(p, x, stages):
    relu = lambda t: np.maximum(t, 0)
    x = _conv_same(x, _std(p["conv_root/kernel"]), 2)
    x = relu(_group_norm(x, p["gn_root/scale"], p["gn_root/bias"]))
    x = _max_pool_same(x)
    for s, units in enumerate(stages):
        for u in range(units):
            pre = f"block{s + 1}/unit{u + 1}"
            stride = 2 if s > 0 and u == 0 else 1
            gn = lambda t, n: _group_norm(t, p[f"{pre}/{n}/scale"], p[f"{pre}/{n}/bias"])
            residual = x
            if u == 0:
                residual = gn(_conv_same(x, _std(p[f"{pre}/conv_proj/kernel"]), stride), "gn_proj")
            y = relu(gn(_conv_same(x, _std(p[f"{pre}/conv1/kernel"])), "gn1"))
            y = relu(gn(_conv_same(y, _std(p[f"{pre}/conv2/kernel"]), stride), "gn2"))
            y = gn(_conv_same(y, _std(p[f"{pre}/conv3/kernel"])), "gn3")
            x = relu(residual + y)
    return x


def forward(p, images, *, heads, classifier="token", use_pre_logits=True, features=False,
            resnet_stages=None):
    """Logits (or pooled features) for raw-pixel images, in float64."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    x = np.asarray(images, np.float64) / 127.5 - 1.0
    if resnet_stages:
        x = _resnet(p, x, resnet_stages)
    k = p["embedding/kernel"]
    patch, dim = k.shape[0], k.shape[-1]
    b, h, w, c = x.shape
    gh, gw = h // patch, w // patch
    patches = x.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5)
    tokens = patches.reshape(b, gh * gw, -1) @ k.reshape(-1, dim) + p["embedding/bias"]
    prefix = 1 if classifier == "token" else 0
    if prefix:
        tokens = np.concatenate([np.broadcast_to(p["cls"], (b, 1, dim)), tokens], axis=1)
    pos = p["Transformer/posembed_input/pos_embedding"]
    if pos.shape[1] - prefix != gh * gw:  # the original's scipy zoom, order 1
        side = int(round(np.sqrt(pos.shape[1] - prefix)))
        grid = pos[0, prefix:].reshape(side, side, dim)
        grid = ndimage.zoom(grid, (gh / side, gw / side, 1), order=1)
        pos = np.concatenate([pos[:, :prefix], grid.reshape(1, -1, dim)], axis=1)
    x = tokens + pos
    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in p:
        pre = f"Transformer/encoderblock_{i}"
        att = f"{pre}/MultiHeadDotProductAttention_1"
        y = _layer_norm(x, p[f"{pre}/LayerNorm_0/scale"], p[f"{pre}/LayerNorm_0/bias"])
        q, kk, v = (np.einsum("bnd,dhk->bhnk", y, p[f"{att}/{n}/kernel"])
                    + p[f"{att}/{n}/bias"][None, :, None, :] for n in ("query", "key", "value"))
        q = q / np.sqrt(q.shape[-1])
        logits = q @ kk.transpose(0, 1, 3, 2)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        o = np.einsum("bhnk,hkd->bnd", probs @ v, p[f"{att}/out/kernel"]) + p[f"{att}/out/bias"]
        x = x + o
        y = _layer_norm(x, p[f"{pre}/LayerNorm_2/scale"], p[f"{pre}/LayerNorm_2/bias"])
        y = _gelu_tanh(y @ p[f"{pre}/MlpBlock_3/Dense_0/kernel"]
                       + p[f"{pre}/MlpBlock_3/Dense_0/bias"])
        x = x + y @ p[f"{pre}/MlpBlock_3/Dense_1/kernel"] + p[f"{pre}/MlpBlock_3/Dense_1/bias"]
        i += 1
    x = _layer_norm(x, p["Transformer/encoder_norm/scale"], p["Transformer/encoder_norm/bias"])
    x = x[:, 0] if classifier == "token" else x.mean(axis=1)
    if use_pre_logits and "pre_logits/kernel" in p:
        x = np.tanh(x @ p["pre_logits/kernel"] + p["pre_logits/bias"])
    if features:
        return x
    return x @ p["head/kernel"] + p["head/bias"]
