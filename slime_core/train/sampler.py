"""A resumable, seeded stream of sample indices: the data position a checkpoint stores.

    sampler = ResumableSampler(len(dataset), seed=0)
    it = iter(sampler)
    batch = [next(it) for _ in range(8)]
    state = sampler.state_dict()        # {"n", "seed", "shuffle", "epoch", "position"}
    ...
    sampler.load_state_dict(state)      # iter(sampler) continues with the 9th index

The trainer relies on one protocol only, so any sampler with it can replace this one:
iterating yields indices without end (epoch after epoch), and state_dict() describes the
position after the indices yielded so far; load_state_dict(state) makes the next iter()
continue from there. Epoch e is torch.randperm(n) under the generator seeded with seed + e,
so the order depends on (seed, epoch) only, not on how many processes read it or when.
"""
import torch


class ResumableSampler:
    """Indices 0..n-1 in a fresh seeded permutation each epoch (or in order, shuffle=False),
    epoch after epoch, with a state_dict of where the stream is."""

    def __init__(self, n, seed=0, shuffle=True):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int (the dataset's length), got {n!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.n, self.seed, self.shuffle = n, seed, bool(shuffle)
        self.epoch, self.position = 0, 0

    def __len__(self):
        return self.n

    def _order(self, epoch):
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self):
        while True:
            order = self._order(self.epoch).tolist()
            while self.position < self.n:
                i = order[self.position]
                self.position += 1
                yield i
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self):
        return {"n": self.n, "seed": self.seed, "shuffle": self.shuffle, "epoch": self.epoch,
                "position": self.position}

    def load_state_dict(self, state):
        if state.get("n") != self.n:
            raise ValueError(f"the sampler state is for a dataset of {state.get('n')} samples, "
                             f"this one has {self.n}")
        self.seed, self.shuffle = int(state["seed"]), bool(state["shuffle"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        if not 0 <= self.position <= self.n:
            raise ValueError(f"sampler position {self.position} is outside [0, {self.n}]")
