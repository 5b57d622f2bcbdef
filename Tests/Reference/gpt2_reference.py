#!/usr/bin/env python3
"""Independent reference for FedLM's GPT-2: loss and gradients by JAX autodiff.

Written from Hugging Face GPT2LMHeadModel's semantics, not from FedLM's Swift code. Reads a
FedLM checkpoint directory (model.safetensors + config.json) and a batch file (safetensors with
I32 tensors "inputs" and "targets", shape [B, T]; negative targets are ignored), computes in
float64, and writes "loss" and every parameter's gradient (same names) to --out.

    python gpt2_reference.py --checkpoint DIR --batch batch.safetensors --out grads.safetensors
"""
import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

jax.config.update("jax_enable_x64", True)


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + jnp.tanh(jnp.sqrt(2.0 / jnp.pi) * (x + 0.044715 * x ** 3)))


def forward_loss(p, inputs, targets, cfg):
    n_layer, n_head, eps = cfg["n_layer"], cfg["n_head"], cfg["layer_norm_epsilon"]
    B, T = inputs.shape
    x = p["transformer.wte.weight"][inputs] + p["transformer.wpe.weight"][jnp.arange(T)][None]
    C = x.shape[-1]
    hd = C // n_head
    causal = jnp.tril(jnp.ones((T, T), dtype=bool))
    for l in range(n_layer):
        h = f"transformer.h.{l}."
        a = layer_norm(x, p[h + "ln_1.weight"], p[h + "ln_1.bias"], eps)
        qkv = a @ p[h + "attn.c_attn.weight"] + p[h + "attn.c_attn.bias"]  # Conv1D: [in, out]
        q, k, v = jnp.split(qkv, 3, axis=-1)
        q, k, v = (t.reshape(B, T, n_head, hd).transpose(0, 2, 1, 3) for t in (q, k, v))
        att = (q @ k.transpose(0, 1, 3, 2)) / jnp.sqrt(hd)
        att = jnp.where(causal, att, -jnp.inf)
        att = jax.nn.softmax(att, axis=-1)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + y @ p[h + "attn.c_proj.weight"] + p[h + "attn.c_proj.bias"]
        a = layer_norm(x, p[h + "ln_2.weight"], p[h + "ln_2.bias"], eps)
        m = gelu_tanh(a @ p[h + "mlp.c_fc.weight"] + p[h + "mlp.c_fc.bias"])
        x = x + m @ p[h + "mlp.c_proj.weight"] + p[h + "mlp.c_proj.bias"]
    x = layer_norm(x, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], eps)
    head = p["transformer.wte.weight"] if cfg.get("tie_word_embeddings", True) else p["lm_head.weight"]
    logits = x @ head.T  # nn.Linear weight is [out, in]
    logp = jax.nn.log_softmax(logits, axis=-1)
    mask = targets >= 0
    picked = jnp.take_along_axis(logp, jnp.where(mask, targets, 0)[..., None], axis=-1)[..., 0]
    return -(picked * mask).sum() / mask.sum()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--batch", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    cfg = json.load(open(f"{a.checkpoint}/config.json"))
    params = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in load_file(f"{a.checkpoint}/model.safetensors").items()}
    batch = load_file(a.batch)
    inputs, targets = jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"])
    loss, grads = jax.value_and_grad(forward_loss)(params, inputs, targets, cfg)
    out = {k: np.asarray(g, dtype=np.float32) for k, g in grads.items()}
    out["loss"] = np.asarray([loss], dtype=np.float32)
    save_file(out, a.out)
    print(f"jax reference: loss {float(loss):.6f}, {len(grads)} gradients")


if __name__ == "__main__":
    main()
