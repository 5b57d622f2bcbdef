"""The PyTorch side of `scripts/bench-vs-pytorch`: training throughput of the same GPT-2 that
`fedlm bench train` trains, on the CPU.

The model is Hugging Face's GPT-2 layout written out in plain PyTorch: learned token and position
embeddings, pre-LayerNorm blocks (eps 1e-5), causal multi-head attention with fused c_attn and
c_proj, a 4x MLP with tanh-approximated GELU, a final LayerNorm and a head tied to the token
embedding (unless the config unties it). One step is what FedLM's step is: forward, cross-entropy,
backward, global gradient-norm clipping and AdamW with decay on the linear layers' weights only,
on random tokens, with the config's shape, batch and optimizer settings.

Attention: "eager" computes softmax(QK^T / sqrt(d)) V with an explicit causal mask, as Hugging
Face's eager attention does; "sdpa" calls torch's scaled_dot_product_attention.

    python scripts/torch_gpt_bench.py --configs tiny,small --modes eager,sdpa [--reps 3] [--rep-seconds 6]

prints, per repetition, "<config> <mode> rep <i>: <steps> steps in <s> s -> <rate> tok/s".
"""
import argparse
import math
import pathlib
import time
import tomllib

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "Config"


def load_config(name):
    path = pathlib.Path(name) if name.endswith(".toml") else CONFIG_DIR / f"{name}.toml"
    with open(path, "rb") as f:
        c = tomllib.load(f)
    return c["model"], c.get("training", {})


class Block(nn.Module):
    def __init__(self, d, heads, mode):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads, self.mode = heads, mode

    def attention(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        if self.mode == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
            mask = torch.ones(t, t, dtype=torch.bool).tril()
            y = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, m, mode):
        super().__init__()
        d = m["n_embd"]
        self.wte, self.wpe = nn.Embedding(m["vocab_size"], d), nn.Embedding(m["n_positions"], d)
        self.h = nn.ModuleList(Block(d, m["n_head"], mode) for _ in range(m["n_layer"]))
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        self.lm_head = nn.Linear(d, m["vocab_size"], bias=False)
        if m.get("tie_word_embeddings", True):
            self.lm_head.weight = self.wte.weight
        for p in self.parameters():
            nn.init.normal_(p, std=0.02) if p.dim() > 1 else nn.init.zeros_(p)

    def forward(self, tokens):
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def optimizer(model, t):
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith(("wte", "wpe"))]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and not n.startswith(("wte", "wpe")))]
    return torch.optim.AdamW([{"params": decay, "weight_decay": t.get("weight_decay", 0.1)}, {"params": rest, "weight_decay": 0.0}],
                             lr=t.get("learning_rate", 1e-3), betas=(t.get("beta1", 0.9), t.get("beta2", 0.95)), foreach=True)


def run(name, mode, reps, rep_seconds):
    m, t = load_config(name)
    torch.manual_seed(t.get("seed", 1234))
    model = GPT2(m, mode)
    opt = optimizer(model, t)
    batch, sequence = t.get("batch_size", 16), t.get("sequence_length", m["n_positions"])
    batches = [torch.randint(0, m["vocab_size"], (batch, sequence + 1)) for _ in range(4)]

    def step(i):
        data = batches[i % 4]
        logits = model(data[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), data[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.get("grad_clip", 1.0))
        opt.step()

    for i in range(3):  # warm-up
        step(i)
    for r in range(reps):
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < rep_seconds:
            step(steps)
            steps += 1
        seconds = time.perf_counter() - start
        print(f"{name} {mode} rep {r}: {steps} steps in {seconds:.2f} s -> {steps * batch * sequence / seconds:.0f} tok/s", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="tiny,small")
    ap.add_argument("--modes", default="eager,sdpa")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rep-seconds", type=float, default=6)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for name in a.configs.split(","):
        for mode in a.modes.split(","):
            run(name, mode, a.reps, a.rep_seconds)


if __name__ == "__main__":
    main()
