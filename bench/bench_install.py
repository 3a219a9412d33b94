"""Installer costs, measured side by side in one run (not a test; prints ratios).

    python -m bench.bench_install [--size-mb 512]

1. Reading the KV-cache shape: our bounded header reader vs gguf.GGUFReader (which maps
   the whole file and indexes every tensor), on a GGUF with a 150k-token vocabulary.
2. A second `appliance install` on installed weights: the stamp check vs hashing the file
   again (what a re-run would cost without the stamp).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gguf
import numpy as np

from appliance.ggufmeta import read_kv_shape
from appliance.install.weights import sha256_file, verified_stamp, write_stamp


def best_of(runs: int, fn: object) -> float:
    assert callable(fn)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def big_vocab_gguf(path: Path, vocab: int = 150_000, layers: int = 36) -> Path:
    writer = gguf.GGUFWriter(str(path), "qwen3")
    writer.add_block_count(layers)
    writer.add_head_count(32)
    writer.add_head_count_kv(8)
    writer.add_key_length(128)
    writer.add_value_length(128)
    writer.add_embedding_length(4096)
    writer.add_context_length(40960)
    writer.add_token_list([f"tok{i}" for i in range(vocab)])
    writer.add_token_merges([f"t{i} k{i}" for i in range(vocab)])
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(4096, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=512)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = big_vocab_gguf(Path(tmp) / "vocab.gguf")
        ours = best_of(5, lambda: read_kv_shape(model))
        theirs = best_of(5, lambda: gguf.GGUFReader(model).fields["qwen3.block_count"])
        print(f"KV shape from a {model.stat().st_size / 1e6:.1f} MB GGUF header (150k vocab):")
        print(f"  appliance.ggufmeta  {ours * 1000:8.1f} ms")
        print(f"  gguf.GGUFReader             {theirs * 1000:8.1f} ms   ratio {theirs / ours:.1f}x")

        weights = Path(tmp) / "weights.gguf"
        block = np.random.default_rng(0).bytes(1024 * 1024)
        with weights.open("wb") as handle:
            for _ in range(args.size_mb):
                handle.write(block)
        digest = sha256_file(weights)
        write_stamp(weights, digest)
        rehash = best_of(2, lambda: sha256_file(weights))
        stamp = best_of(5, lambda: verified_stamp(weights, digest))
        print(f"Re-checking {args.size_mb} MB of installed weights on a second install:")
        print(f"  stamp (size, mtime, sha256 recorded)  {stamp * 1000:8.2f} ms")
        print(f"  sha256 of the whole file              {rehash * 1000:8.0f} ms   ratio {rehash / stamp:,.0f}x")
        rate = args.size_mb / rehash
        print(
            f"  sha256 at {rate:.0f} MB/s: ~{5000 / rate:.0f} s for a 5 GB 8B model, ~{47000 / rate:.0f} s for the 72B"
        )


if __name__ == "__main__":
    main()
