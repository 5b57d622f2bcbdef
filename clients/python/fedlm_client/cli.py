"""`fedlm-torch-trainer` (or `python -m fedlm_client`): join a FedLM federation from PyTorch."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedlm-torch-trainer",
                                description="Train a transformers GPT2LMHeadModel on FedLM token shards and send "
                                            "pseudo-gradients to a FedLM aggregator (protocol v2).")
    p.add_argument("--join", metavar="FILE", help="an invitation file (fedlm invite): broker, keys, model config, tokenizer and "
                                                  "recipe come from it; give your text with --text")
    p.add_argument("--broker", help="the broker's address for trainers, e.g. tcp://10.0.0.5:5555")
    p.add_argument("--data", help="prepared data directory (fedlm data prepare): manifest.json and shards")
    p.add_argument("--text", nargs="+", metavar="PATH",
                   help="instead of --data: text files or folders (plain, .jsonl with a text field, .gz), tokenized with --tokenizer")
    p.add_argument("--tokenizer", help="the federation's tokenizer.json, with --text")
    p.add_argument("--config", help="the federation's model config file (FedLM TOML, e.g. Config/small.toml)")
    p.add_argument("--name", help="trainer id (default: torch-<host>-<pid>); with CURVE one of the key's names")
    p.add_argument("--clusters", help="clusters of the data to train on, comma-separated (default: all)")
    p.add_argument("--cluster", help="with personalized heads: the cluster this trainer trains in")
    p.add_argument("--local-steps", type=int, default=20, help="H: local AdamW steps per update (default 20)")
    p.add_argument("--tokens", type=int, help="stop after this many tokens are acknowledged")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: PyTorch's)")
    p.add_argument("--state", help="directory for the pending update and stats.json (default runs/trainers/<name>)")
    p.add_argument("--ack-timeout", type=float, default=30.0, help="seconds before an unacknowledged update is resent")
    p.add_argument("--fetch-window", type=int, default=64,
                   help="fetch releases this many 1 MiB chunks at a time, resuming after a loss (0: the whole release at once)")
    p.add_argument("--key", help="CURVE key pair prefix (<prefix>.public, <prefix>.secret), when the broker requires keys")
    p.add_argument("--broker-key", help="the broker's public key file, with --key")
    p.add_argument("--seed", type=int, help="seed of the batches and the model's initialisation (default: the config's)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    import torch
    from .model import ConfigError, load_config
    from .shards import DataError
    from .trainer import Curve, Options, Trainer

    curve = None
    if args.join:
        if args.broker or args.config or args.data or args.key or args.tokenizer:
            parser().error("--join takes the broker, config, tokenizer and keys from the invitation: leave out --broker, --config, --data, --tokenizer and --key")
        if not args.text:
            parser().error("--join needs --text PATH... (your own text)")
        from .invitation import InvitationError, read
        try:
            invitation = read(args.join)
        except InvitationError as e:
            print(f"fedlm-torch-trainer: {e}", file=sys.stderr)
            return 2
        member = args.state or os.path.join("runs", "members", invitation["member"])
        os.makedirs(member, exist_ok=True)
        for name, key in (("model.toml", "modelConfig"), ("tokenizer.json", "tokenizer")):
            with open(os.path.join(member, name), "w", encoding="utf-8") as f:
                f.write(invitation[key])
        args.broker, args.name, args.cluster = invitation["broker"], invitation["member"], invitation.get("cluster")
        args.config, args.tokenizer = os.path.join(member, "model.toml"), os.path.join(member, "tokenizer.json")
        args.local_steps, args.tokens = invitation["localSteps"], invitation.get("tokens")
        args.state = os.path.join(member, "state")
        curve = Curve(public=invitation["publicKey"], secret=invitation["secretKey"], server=invitation["brokerPublicKey"])
    if args.fetch_window < 0:
        parser().error(f"--fetch-window {args.fetch_window}: a chunk count, or 0 for whole releases")
    if not args.broker or not args.config:
        parser().error("give --broker and --config, or --join FILE")
    if bool(args.data) == bool(args.text):
        parser().error("give --data (prepared shards) or --text with --tokenizer")
    if args.text and not args.tokenizer:
        parser().error("--text needs --tokenizer (the federation's tokenizer.json)")
    if args.local_steps < 1:
        parser().error("--local-steps must be >= 1")
    if args.key and not args.broker_key:
        parser().error("--key needs --broker-key (the broker's public key file)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser().error(f"--device {args.device}: PyTorch sees no CUDA device here")
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.name or f"torch-{socket.gethostname()}-{os.getpid()}"
    try:
        config, training = load_config(args.config)
        if args.seed is not None:
            training.seed = args.seed
        if args.tokens:
            # As FedLM's trainers: the schedule (warmup, cosine decay) spans the token budget.
            sequence = training.sequence_length or config.n_positions
            training.max_steps = max(1, args.tokens // (training.batch_size * sequence))
        torch.manual_seed(training.seed)
        options = Options(trainer_id=name, broker=args.broker, data=args.data, text=args.text, tokenizer=args.tokenizer,
                          config=config, training=training,
                          device=args.device, clusters=args.clusters.split(",") if args.clusters else None,
                          cluster=args.cluster, local_steps=args.local_steps, tokens=args.tokens,
                          state=args.state or os.path.join("runs", "trainers", name), ack_timeout=args.ack_timeout, fetch_window=args.fetch_window,
                          curve=curve or (Curve.load(args.key, args.broker_key) if args.key else None))
        stats = Trainer(options).run()
    except (ConfigError, DataError) as e:
        print(f"fedlm-torch-trainer: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(json.dumps({"trainer": name, "tokens": stats.tokens, "updatesAcknowledged": stats.updatesAcknowledged,
                      "trainingSeconds": round(stats.trainingSeconds, 2), "wallSeconds": round(stats.wallSeconds, 2),
                      "tokensPerSecond": round(stats.tokens / stats.trainingSeconds, 1) if stats.trainingSeconds else 0}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
