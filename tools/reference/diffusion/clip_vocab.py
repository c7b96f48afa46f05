#!/usr/bin/env python3
"""Regenerate the real CLIP BPE tokenizer files (vocab.json + merges.txt) from the
`bpe_simple_vocab_16e6.txt.gz` that ships inside PyPI's open_clip_torch wheel.

    python clip_vocab.py OUT_DIR            # writes OUT_DIR/{vocab.json,merges.txt,tokenizer_config.json,special_tokens_map.json}
    python clip_vocab.py OUT_DIR --pad '!'  # SDXL tokenizer_2 flavour (pads with "!" = id 0)

The result is the 49,408-token vocabulary of openai/clip-vit-large-patch14 (the SD1.x / SDXL
tokenizer) in the Hugging Face layout, loadable with `transformers.CLIPTokenizer.from_pretrained(OUT_DIR)`.
Construction (identical to open_clip's and OpenAI's SimpleTokenizer):

    merges = gz_lines[1 : 49152 - 256 - 2 + 1]            # 48,894 merges, line 0 is a header
    vocab  = bytes_to_unicode() values (256, GPT-2 byte->char table, in table order)
           + the same 256 chars each suffixed with "</w>"
           + "".join(merge) for every merge, in file order
           + ["<|startoftext|>", "<|endoftext|>"]          # ids 49406, 49407
    merges.txt = "#version: 0.2\n" + one "a b" merge per line (rank = line order)

The functions are imported by make_fixtures.py (which also builds a *tiny* CLIP tokenizer from the
first K merges of the same file).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2  # 48,894


def bpe_gz_path() -> str:
    import open_clip  # noqa: F401  (only to locate the installed wheel)

    return os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def load_merges(num_merges: int = NUM_MERGES) -> list[tuple[str, str]]:
    with gzip.open(bpe_gz_path()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = lines[1 : 1 + num_merges]
    out = []
    for m in merges:
        a, b = m.split()
        out.append((a, b))
    assert len(out) == num_merges, (len(out), num_merges)
    return out


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate token"
    return vocab


def write_tokenizer_dir(out_dir: str, merges: list[tuple[str, str]], pad_token: str = EOS, model_max_length: int = 77) -> dict[str, int]:
    """Write vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json (HF CLIPTokenizer layout)."""
    os.makedirs(out_dir, exist_ok=True)
    vocab = build_vocab(merges)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(special, f, indent=2, sort_keys=True)
        f.write("\n")
    cfg = dict(special)
    cfg.update(
        {
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": model_max_length,
            "do_lower_case": True,
            "add_prefix_space": False,
            "errors": "replace",
        }
    )
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return vocab


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--pad", default=EOS, help='pad token ("<|endoftext|>" for SD1.x/SDXL tokenizer, "!" for SDXL tokenizer_2)')
    args = ap.parse_args()
    vocab = write_tokenizer_dir(args.out_dir, load_merges(), pad_token=args.pad)
    print(f"wrote {len(vocab)} tokens to {args.out_dir}")
    for name in ("vocab.json", "merges.txt"):
        print(f"  {name} sha256={sha256_file(os.path.join(args.out_dir, name))}")


if __name__ == "__main__":
    main()
