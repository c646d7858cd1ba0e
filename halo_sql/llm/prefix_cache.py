"""A block-granular prefix cache: a radix tree over token blocks with LRU eviction.

It models what vLLM's automatic prefix caching does: prompts are split into blocks of `block_size`
tokens, only whole blocks are cached, and a request reuses the longest chain of cached blocks that
starts at its first token. The sim backend uses it so its `cached_prompt_tokens` are real numbers.

    >>> cache = PrefixCache(block_size=2, capacity_blocks=100)
    >>> cache.lookup_and_insert(["a", "b", "c", "d", "e"])   # nothing cached yet
    0
    >>> cache.lookup_and_insert(["a", "b", "c", "x"])        # the block [a, b] is reused
    2
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field


@dataclass
class _Node:
    parent: _Node | None
    key: tuple[Hashable, ...]
    children: dict[tuple[Hashable, ...], _Node] = field(default_factory=dict)
    last_used: int = 0


class PrefixCache:
    """Radix tree of token blocks bounded to `capacity_blocks`, evicting least recently used
    leaves first (a block can only be evicted after the blocks that extend it)."""

    def __init__(self, block_size: int = 32, capacity_blocks: int = 1 << 16) -> None:
        if block_size < 1 or capacity_blocks < 1:
            raise ValueError("block_size and capacity_blocks must be positive")
        self.block_size = block_size
        self.capacity_blocks = capacity_blocks
        self._root = _Node(parent=None, key=())
        self._size = 0
        self._clock = itertools.count(1)

    def __len__(self) -> int:
        return self._size

    def lookup(self, tokens: Sequence[Hashable]) -> int:
        """Number of leading tokens of `tokens` that are cached (a multiple of block_size)."""
        node, matched = self._root, 0
        for block in self._blocks(tokens):
            child = node.children.get(block)
            if child is None:
                break
            node, matched = child, matched + self.block_size
        return matched

    def lookup_and_insert(self, tokens: Sequence[Hashable]) -> int:
        """Return the cached prefix length of `tokens`, then cache all their whole blocks."""
        now = next(self._clock)
        node, matched, hit = self._root, 0, True
        for block in self._blocks(tokens):
            child = node.children.get(block)
            if child is None:
                hit = False
                child = _Node(parent=node, key=block)
                node.children[block] = child
                self._size += 1
            elif hit:
                matched += self.block_size
            child.last_used = now
            node = child
        self._evict(protect=node)
        return matched

    def clear(self) -> None:
        self._root = _Node(parent=None, key=())
        self._size = 0

    def _blocks(self, tokens: Sequence[Hashable]) -> list[tuple[Hashable, ...]]:
        full = len(tokens) - len(tokens) % self.block_size
        return [tuple(tokens[i : i + self.block_size]) for i in range(0, full, self.block_size)]

    def _evict(self, protect: _Node) -> None:
        if self._size <= self.capacity_blocks:
            return
        on_path = set()
        node: _Node | None = protect
        while node is not None:
            on_path.add(id(node))
            node = node.parent
        leaves = sorted(
            (n for n in self._iter_nodes() if not n.children and id(n) not in on_path),
            key=lambda n: n.last_used,
        )
        # Evicting a leaf can expose its parent as a new leaf; loop until under capacity.
        while self._size > self.capacity_blocks and leaves:
            leaf = leaves.pop(0)
            assert leaf.parent is not None
            del leaf.parent.children[leaf.key]
            self._size -= 1
            parent = leaf.parent
            if parent is not self._root and not parent.children and id(parent) not in on_path:
                leaves.append(parent)
                leaves.sort(key=lambda n: n.last_used)

    def _iter_nodes(self) -> list[_Node]:
        out, stack = [], list(self._root.children.values())
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out


def prefix_trie_size(token_lists: Sequence[Sequence[Hashable]]) -> int:
    """Number of nodes of the token trie of all prompts: the fewest prompt tokens any order and
    any cache can compute (the lower bound the benchmark reports against).

    >>> prefix_trie_size([["a", "b", "c"], ["a", "b", "d"], ["x"]])
    5
    """
    root: dict[Hashable, dict] = {}
    count = 0
    for tokens in token_lists:
        node = root
        for token in tokens:
            nxt = node.get(token)
            if nxt is None:
                nxt = node[token] = {}
                count += 1
            node = nxt
    return count
