#!/usr/bin/python3
"""Trains the small character-level GRU that the libtorch text_to_text example serves (issue 13).

It learns Aesop's Fables (examples/data/aesop.txt, public domain: its '#' comment lines are left out) one
character at a time and exports the network with torch.jit.script to a TorchScript file, by default
examples/data/char_rnn.pt, which examples/runtimes/char_rnn.cpp loads with torch::jit::load. The vocabulary
(the characters, in index order) is stored inside the module as the string attribute `vocab`, so the C++ side
needs no second file. The exported module has:

    vocab: str                                   the characters; index i is character vocab[i]
    forward(ids: Tensor[1, T] int64, state)      -> (logits Tensor[1, T, len(vocab)], new state)
    initial_state() -> Tensor[layers, 1, hidden]  the state before the first character (zeros)

Everything is deterministic for the given seed and settings (which are the command-line defaults below and are
printed at the start). It runs on one CPU thread (torch.set_num_threads(1)): the machines it is meant for have
two cores shared with others. The default settings (800 steps of 32 x 100 characters, ~0.6 s each on a quiet
core) take about 8-10 minutes; the committed file took 32 minutes on a machine shared with three builds, and
reached a loss of 0.41 nats/char (0.59 bits/char) over the whole text.

Rebuild the committed file with Debian's python3-torch (1.13.1):

    /usr/bin/python3 scripts/train_char_rnn.py --out examples/data/char_rnn.pt
"""

import argparse
import math
import os
import sys
import time

try:
    import torch
    import torch.nn as nn
except ImportError:  # a python3 without Debian's torch first on PATH (e.g. pyenv)
    sys.exit("train_char_rnn.py needs PyTorch: apt-get install python3-torch, and run it with /usr/bin/python3")

from typing import Tuple


class CharRnn(nn.Module):
    """Embedding -> multi-layer GRU -> linear layer to the next character's logits."""

    vocab: str

    def __init__(self, vocab: str, embedding: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.vocab = vocab
        self.layers = layers
        self.hidden = hidden
        self.embed = nn.Embedding(len(vocab), embedding)
        self.rnn = nn.GRU(embedding, hidden, num_layers=layers, batch_first=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, len(vocab))

    def forward(self, ids: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out, state = self.rnn(self.embed(ids), state)
        return self.head(out), state

    @torch.jit.export
    def initial_state(self) -> torch.Tensor:
        return torch.zeros(self.layers, 1, self.hidden)


def fable_text(path: str) -> str:
    """The file's text without its '#' comment lines."""
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f.read().split("\n") if not line.startswith("#")]
    return "\n".join(lines).strip("\n") + "\n"


def sample(model: CharRnn, prompt: str, length: int, temperature: float, generator: torch.Generator) -> str:
    """A continuation of `prompt` (for the report at the end; the C++ side has its own sampler)."""
    index = {c: i for i, c in enumerate(model.vocab)}
    ids = [index[c] for c in prompt if c in index] or [index["\n"]]
    with torch.no_grad():
        logits, state = model(torch.tensor([ids]), model.initial_state())
        out = []
        for _ in range(length):
            probs = torch.softmax(logits[0, -1] / temperature, dim=-1)
            nxt = int(torch.multinomial(probs, 1, generator=generator))
            out.append(model.vocab[nxt])
            logits, state = model(torch.tensor([[nxt]]), state)
    return "".join(out)


def main() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--text", default=os.path.join(root, "examples", "data", "aesop.txt"))
    p.add_argument("--out", default=os.path.join(root, "examples", "data", "char_rnn.pt"))
    p.add_argument("--embedding", type=int, default=48, help="character embedding size")
    p.add_argument("--hidden", type=int, default=192, help="GRU hidden size")
    p.add_argument("--layers", type=int, default=1, help="GRU layers")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout between GRU layers (none with one layer)")
    p.add_argument("--seq-len", type=int, default=100, help="characters per training sequence")
    p.add_argument("--batch", type=int, default=32, help="sequences per step")
    p.add_argument("--steps", type=int, default=800, help="optimizer steps")
    p.add_argument("--lr", type=float, default=4e-3, help="Adam learning rate (cosine decay to 5%%)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args()
    print("settings:", " ".join(f"{k}={v}" for k, v in sorted(vars(args).items())), flush=True)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    text = fable_text(args.text)
    vocab = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(vocab)}
    data = torch.tensor([index[c] for c in text], dtype=torch.long)
    print(f"text: {len(text)} characters, vocabulary {len(vocab)}: {vocab!r}", flush=True)

    model = CharRnn(vocab, args.embedding, args.hidden, args.layers, args.dropout)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: GRU {args.layers}x{args.hidden}, embedding {args.embedding}, {params} parameters", flush=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(args.seed)

    started = time.monotonic()
    average = None
    model.train()
    for step in range(1, args.steps + 1):
        starts = torch.randint(0, len(data) - args.seq_len - 1, (args.batch,), generator=generator)
        x = torch.stack([data[s:s + args.seq_len] for s in starts.tolist()])
        y = torch.stack([data[s + 1:s + args.seq_len + 1] for s in starts.tolist()])
        state = torch.zeros(args.layers, args.batch, args.hidden)
        logits, _ = model(x, state)
        loss = loss_fn(logits.reshape(-1, len(vocab)), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        average = loss.item() if average is None else 0.95 * average + 0.05 * loss.item()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}: loss {loss.item():.3f} (average {average:.3f}), "
                  f"{time.monotonic() - started:.0f} s", flush=True)

    model.eval()
    with torch.no_grad():  # the loss over the whole text, in one pass (the number to report)
        logits, _ = model(data[:-1].unsqueeze(0), model.initial_state())
        full = loss_fn(logits[0], data[1:]).item()
    print(f"final loss over the whole text: {full:.3f} nats/char ({full / math.log(2):.2f} bits/char)")

    scripted = torch.jit.script(model)
    scripted.save(args.out)
    print(f"saved {args.out} ({os.path.getsize(args.out)} bytes)")
    reloaded = torch.jit.load(args.out)
    assert reloaded.vocab == vocab
    print("sample (temperature 0.8, prompt 'The Fox'):")
    print("The Fox" + sample(model, "The Fox", 300, 0.8, torch.Generator().manual_seed(args.seed)))


if __name__ == "__main__":
    main()
