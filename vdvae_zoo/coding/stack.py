"""The ANS stack of bits-back coding, whitened per image: before image j pops, the top words of the stack (and the
coder's head) are XORed with a keystream seeded by (KEY, j), so the bits an image pops look random; only the top
of the stack is in the coder, and the words below it, which never change again, are kept aside."""

from __future__ import annotations

import numpy as np

__all__ = ["KEY", "keystream", "Stack"]

KEY = 0x56445A31  # the whitening keystream's key ("VDZ1")


def keystream(j: int, n: int, stream: int = 0) -> np.ndarray:
    """n words of image j's keystream (stream 0 for the words below the head, 2 for the head)."""
    seed = [KEY, j] if stream == 0 else [KEY, j, stream]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed))).integers(0, 2**32, n, dtype=np.uint32)


class Stack:
    """The ANS stack, of which only the top (the live coder, a few times `reserve` words) is in the coder; the
    words below it never change again and are kept aside (`frozen`), so no operation costs more as it grows."""

    def __init__(self, c, reserve: int, words: np.ndarray | None = None, whiten_head: bool = True):
        self.c, self.reserve, self.whiten_head = c, max(int(reserve), 64), whiten_head
        words = np.zeros(0, np.uint32) if words is None else words
        cut = max(0, len(words) - 4 * self.reserve)
        self.frozen: list[np.ndarray] = [words[:cut]] if cut else []
        self.frozen_words = cut
        self.coder = c.stream.stack.AnsCoder(words[cut:].copy()) if len(words) else c.stream.stack.AnsCoder()

    def words(self) -> np.ndarray:
        """The live coder's words (a copy)."""
        return self.coder.get_compressed().astype(np.uint32)

    def restore(self, words: np.ndarray) -> None:
        self.coder = self.c.stream.stack.AnsCoder(words.copy()) if len(words) else self.c.stream.stack.AnsCoder()

    def total_words(self) -> int:
        return self.frozen_words + len(self.words())

    def whiten(self, j: int, w: int, undo: bool = False) -> int:
        """XOR the `w` words below the top two (all of them, on a smaller stack) with image j's keystream (its own
        inverse); returns how many words that was. With `whiten_head`, the coder's head (the top two words, the
        state image j-1's last pushes left there) is whitened too: the lower word by XOR, the top word, which must
        not become zero, by multiplying it with an odd key modulo 2^32 (`undo` divides). Without it, image j's
        first latents, the most influential ones, are decoded from image j-1's prior-coded z_1: their prior
        quantiles, extreme where a posterior lies far from its prior, become the quantiles of image j's posterior
        (docs/compress.md measures the drift this caused)."""
        n = max(0, min(w, self.total_words() - 2))
        self.refill(n + 2)
        words = self.words()
        if n:
            words[-(n + 2) : -2] ^= keystream(j, n)
        if self.whiten_head and len(words) >= 2:
            low, key = keystream(j, 2, stream=2)
            odd = int(key) | 1
            words[-2] ^= low
            words[-1] = np.uint32(int(words[-1]) * (pow(odd, -1, 2**32) if undo else odd) % 2**32)
        if n or (self.whiten_head and len(words) >= 2):
            self.restore(words)
        return n

    def spill(self) -> None:
        """Keep at most 4 x reserve words in the coder (the encoder's stack only grows below the top)."""
        words = self.words()
        if len(words) > 4 * self.reserve:
            cut = len(words) - 2 * self.reserve
            self.frozen.append(words[:cut])
            self.frozen_words += cut
            self.restore(words[cut:])

    def refill(self, need: int) -> None:
        """Make sure the coder holds at least `need` words (or everything), taking them back from `frozen`."""
        words = self.words()
        if len(words) >= need or not self.frozen_words:
            return
        below = np.concatenate(self.frozen) if len(self.frozen) > 1 else self.frozen[0]
        take = min(len(below), max(need - len(words), 2 * self.reserve))
        self.frozen = [below[: len(below) - take]] if len(below) > take else []
        self.frozen_words = len(below) - take
        self.restore(np.concatenate([below[len(below) - take :], words]))

    def payload(self) -> np.ndarray:
        return np.concatenate(self.frozen + [self.words()]) if self.frozen else self.words()
