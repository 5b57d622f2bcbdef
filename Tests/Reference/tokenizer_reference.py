#!/usr/bin/env python3
"""Encodes samples with Hugging Face `tokenizers` for comparison with FedLM's tokenizer.

    python tokenizer_reference.py --tokenizer tokenizer.json --samples samples.json --out ids.json

samples.json is a list of hex strings (raw bytes, possibly invalid UTF-8); each is decoded with
U+FFFD replacement (Python strings cannot hold invalid UTF-8) and encoded. Writes a list of id lists.
"""
import argparse
import json

from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--samples", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    tok = Tokenizer.from_file(a.tokenizer)
    texts = [bytes.fromhex(h).decode("utf-8", errors="replace") for h in json.load(open(a.samples))]
    ids = [e.ids for e in tok.encode_batch(texts)]
    json.dump(ids, open(a.out, "w"))
    print(f"tokenizers {__import__('tokenizers').__version__}: encoded {len(texts)} samples")


if __name__ == "__main__":
    main()
