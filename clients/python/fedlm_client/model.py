"""The model and local training a FedLM config describes, in PyTorch.

A FedLM config (`Config/*.toml`) has a `[model]` table (GPT-2's n_layer, n_embd, n_head,
n_positions, vocab_size, tie_word_embeddings, layer_norm_epsilon) and a `[training]` table
(batch_size, sequence_length, learning_rate, min_learning_rate, warmup_steps, max_steps,
weight_decay, beta1, beta2, eps, grad_clip, seed). The WELCOME does not carry the model config:
every member of a federation is given the same file.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODEL_KEYS = {"n_layer", "n_embd", "n_head", "n_positions", "vocab_size", "tie_word_embeddings", "layer_norm_epsilon"}
TRAINING_KEYS = {"batch_size", "sequence_length", "optimizer", "learning_rate", "min_learning_rate", "warmup_steps",
                 "max_steps", "weight_decay", "beta1", "beta2", "eps", "momentum", "grad_clip", "seed"}


class ConfigError(Exception):
    pass


@dataclass
class Training:
    batch_size: int = 16
    sequence_length: int | None = None
    learning_rate: float = 6e-4
    min_learning_rate: float = 6e-5
    warmup_steps: int = 100
    max_steps: int = 5000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 1234

    def rate(self, step: int) -> float:
        """FedLM's schedule: linear warmup, cosine decay to the minimum at max_steps."""
        if step < self.warmup_steps:
            return self.learning_rate * (step + 1) / self.warmup_steps
        if step >= self.max_steps:
            return self.min_learning_rate
        progress = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps)
        return self.min_learning_rate + 0.5 * (1 + math.cos(math.pi * progress)) * (self.learning_rate - self.min_learning_rate)


def load_config(path: str):
    """(transformers.GPT2Config, Training) of a FedLM config file; unknown keys are refused by name."""
    from transformers import GPT2Config
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror} (give the path of a FedLM config, e.g. Config/small.toml)")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}")
    m = doc.get("model")
    if not isinstance(m, dict):
        raise ConfigError(f"{path}: no [model] table")
    for key in set(m) - MODEL_KEYS:
        raise ConfigError(f"{path}: unknown key 'model.{key}'")
    for key in ("n_layer", "n_embd", "n_head", "n_positions", "vocab_size"):
        if not isinstance(m.get(key), int) or m[key] <= 0:
            raise ConfigError(f"{path}: 'model.{key}' must be a positive integer")
    config = GPT2Config(n_layer=m["n_layer"], n_embd=m["n_embd"], n_head=m["n_head"], n_positions=m["n_positions"],
                        vocab_size=m["vocab_size"], tie_word_embeddings=m.get("tie_word_embeddings", True),
                        layer_norm_epsilon=m.get("layer_norm_epsilon", 1e-5), activation_function="gelu_new",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)
    t = doc.get("training", {})
    for key in set(t) - TRAINING_KEYS:
        raise ConfigError(f"{path}: unknown key 'training.{key}'")
    if t.get("optimizer", "adamw") != "adamw":
        raise ConfigError(f"{path}: 'training.optimizer' is {t['optimizer']!r}; this client trains with adamw")
    training = Training(**{k: v for k, v in t.items() if k in Training.__dataclass_fields__})
    return config, training


def decays(name: str) -> bool:
    """FedLM's AdamW decays the matrices of linear layers only (not biases, LayerNorm, embeddings)."""
    return name.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")) \
        or name == "lm_head.weight"


class LocalModel:
    """A GPT2LMHeadModel with FedLM's AdamW, addressed by the tensor names releases use."""

    def __init__(self, config, training: Training, device: str):
        from transformers import GPT2LMHeadModel
        self.device = torch.device(device)
        self.training = training
        self.model = GPT2LMHeadModel(config).to(self.device)
        self.model.train()
        self.params = dict(self.model.named_parameters())  # a tied lm_head.weight is transformer.wte.weight
        decay = [p for n, p in self.params.items() if decays(n)]
        rest = [p for n, p in self.params.items() if not decays(n)]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": training.weight_decay},
                                            {"params": rest, "weight_decay": 0.0}],
                                           lr=training.learning_rate, betas=(training.beta1, training.beta2),
                                           eps=training.eps)
        self.steps = 0

    def check(self, specs):
        """Refuses a release whose tensors are not this model's (the config differs)."""
        for name, shape in specs:
            p = self.params.get(name)
            if p is None:
                raise ConfigError(f"the federation's model has a tensor {name} this config's model lacks: "
                                  "give the federation's model config")
            if list(p.shape) != list(shape):
                raise ConfigError(f"tensor {name}: the federation's is {list(shape)}, this config's {list(p.shape)}: "
                                  "give the federation's model config")

    @torch.no_grad()
    def load(self, specs, values: np.ndarray):
        offset = 0
        for name, shape in specs:
            n = int(np.prod(shape))
            self.params[name].copy_(torch.from_numpy(values[offset:offset + n].reshape(shape)))
            offset += n

    @torch.no_grad()
    def flat(self, specs) -> np.ndarray:
        return np.concatenate([self.params[name].detach().float().cpu().numpy().ravel() for name, _ in specs]).astype(np.float32)

    def step(self, inputs: np.ndarray, targets: np.ndarray) -> float:
        """One AdamW step at the scheduled rate, with global-norm clipping; returns the loss."""
        x = torch.from_numpy(inputs).to(self.device)
        y = torch.from_numpy(targets).to(self.device)
        logits = self.model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is not finite ({loss.item()}): training diverged")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.training.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.training.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = self.training.rate(self.steps)
        self.optimizer.step()
        self.steps += 1
        return float(loss.item())
