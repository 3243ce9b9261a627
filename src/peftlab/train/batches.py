"""Which examples make each global batch: a pure function of (seed, epoch), so that a resumed run and
every process of a distributed run see exactly the same order without talking to each other.

Single task: a seeded permutation cut into batches. Several tasks: task i is drawn with probability
p_i ~ n_i^(1/T) (T = 1: proportional to its size; larger T flattens it), either per example (mixed-task
batches, with task ids in the batch) or per batch (one task per batch, for per-task adapters).
An epoch has ceil(sum n_i / batch_size) batches.
"""
from __future__ import annotations

import math

import torch

Item = tuple[int, int]      # (task index, example index within that task's training set)


def task_probabilities(sizes: list[int], temperature: float) -> list[float]:
    weights = [n ** (1.0 / temperature) for n in sizes]
    total = sum(weights)
    return [w / total for w in weights]


def batches_per_epoch(sizes: list[int], batch_size: int) -> int:
    return math.ceil(sum(sizes) / batch_size)


def epoch_batches(sizes: list[int], batch_size: int, seed: int, epoch: int, temperature: float = 1.0,
                  mixing: str = "mixed") -> list[list[Item]]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if len(sizes) == 1:
        order = torch.randperm(sizes[0], generator=generator).tolist()
        return [[(0, i) for i in order[s: s + batch_size]] for s in range(0, sizes[0], batch_size)]
    streams = [_Cycle(n, generator) for n in sizes]
    probs = torch.tensor(task_probabilities(sizes, temperature))
    count = batches_per_epoch(sizes, batch_size)
    if mixing == "per_task":
        tasks = torch.multinomial(probs, count, replacement=True, generator=generator).tolist()
        return [[(t, streams[t].next()) for _ in range(batch_size)] for t in tasks]
    draws = torch.multinomial(probs, count * batch_size, replacement=True, generator=generator).tolist()
    items = [(t, streams[t].next()) for t in draws]
    return [items[s: s + batch_size] for s in range(0, len(items), batch_size)]


class _Cycle:
    """Endless reshuffled passes over range(n), from the shared generator."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator, self.order, self.pos = n, generator, [], 0

    def next(self) -> int:
        if self.pos >= len(self.order):
            self.order, self.pos = torch.randperm(self.n, generator=self.generator).tolist(), 0
        self.pos += 1
        return self.order[self.pos - 1]


def shard(batch: list[Item], rank: int, world: int, accumulation: int) -> list[list[Item]]:
    """This process's micro-batches of a global batch: rows rank, rank+world, ... split into
    `accumulation` nearly equal chunks (empty chunks dropped)."""
    mine = batch[rank::world]
    size = math.ceil(len(mine) / accumulation) if mine else 0
    return [mine[s: s + size] for s in range(0, len(mine), size)] if size else []
