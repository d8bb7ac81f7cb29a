#!/usr/bin/env python3
"""Per-character cross-entropy (nats) of the unigram, bigram and trigram models of the text
min_char_rnn trains on by default: the sonnets embedded in min_char_rnn.cpp (or a file given
with --data). The n-gram models are maximum-likelihood estimates fitted to that same text and
scored on it (no smoothing, no held-out data): they are the losses a table of counts reaches
by memorising the text with 0, 1 or 2 characters of context, i.e. the bar --check's threshold
is compared with.

    python3 examples/min_char_rnn/ngram_entropy.py [--data FILE]

Prints V, ln V and each model's entropy, over every predictable position of the text and
over the positions min_char_rnn's 25-character windows actually train on."""
import argparse
import math
import pathlib
import re
from collections import Counter


def embedded_text() -> str:
    src = (pathlib.Path(__file__).parent / "min_char_rnn.cpp").read_text(encoding="utf-8")
    m = re.search(r'kDefaultText = R"\((.*?)\)";', src, re.S)
    if not m:
        raise SystemExit("ngram_entropy: kDefaultText not found in min_char_rnn.cpp")
    return m.group(1)


def ngram_entropy(data: bytes, n: int, positions) -> float:
    """Mean -ln p(data[i] | data[i-n+1:i]) over positions (each >= n-1), with p the
    maximum-likelihood n-gram model of the whole of data."""
    joint = Counter(data[i - n + 1:i + 1] for i in range(n - 1, len(data)))
    context = Counter(data[i - n + 1:i] for i in range(n - 1, len(data)))
    total = 0.0
    for i in positions:
        gram = data[i - n + 1:i + 1]
        total -= math.log(joint[gram] / context[gram[:-1]])
    return total / len(positions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="text file (default: the sonnets embedded in min_char_rnn.cpp)")
    args = ap.parse_args()
    data = pathlib.Path(args.data).read_bytes() if args.data else embedded_text().encode("utf-8")
    V, T = len(set(data)), 25
    print(f"text: {len(data)} bytes, V = {V} distinct, ln V = {math.log(V):.4f} nats (uniform model)")
    # min_char_rnn sweeps windows starting at 0, 25, 50, ... while pos + T + 1 < size; each
    # predicts characters pos+1 .. pos+T.
    trained = [p + t for p in range(0, len(data), T) if p + T + 1 < len(data) for t in range(1, T + 1)]
    for n, name in ((1, "unigram"), (2, "bigram"), (3, "trigram")):
        every = list(range(max(n - 1, 1), len(data)))  # every character that has n-1 before it
        in_windows = [i for i in trained if i >= n - 1]
        print(f"{name:8s} (ML on the text itself): {ngram_entropy(data, n, every):.4f} nats/char over "
              f"{len(every)} positions, {ngram_entropy(data, n, in_windows):.4f} over the "
              f"{len(in_windows)} positions the windows train on")


if __name__ == "__main__":
    main()
