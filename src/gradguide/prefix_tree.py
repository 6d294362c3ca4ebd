"""Group token rows by the prefixes they share, so that each shared prefix is encoded once.

Evaluation rows often repeat a long head: every MultiRC answer option carries its passage, BoolQ
questions share passages, COPA's candidates share their premise, in-context demonstrations start
every row. Grouping works on the rows' *token ids* (each row tokenised exactly as it is scored in
full), never on the text: a shared text whose last token merges with what follows it (" cat" +
"s" → " cats") simply shares one token less, so a cached prefix is always a token prefix of every
row below it and scoring ``prefix + rest`` equals scoring the row.

The groups form a tree: a node's rows share its first ``length`` tokens; a child shares at least
``min_tokens`` more (an in-context prefix, then a passage within it, then a question within that).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise


@dataclass
class PrefixNode:
    """Rows sharing their first ``length`` tokens: ``rows`` are scored against this node's prefix,
    ``children`` share a longer one."""

    length: int
    example: int = -1  # a row below this node: its first ``length`` tokens are the prefix
    rows: list[int] = field(default_factory=list)
    children: list[PrefixNode] = field(default_factory=list)

    def walk(self) -> list[PrefixNode]:
        """This node and every node below it, parents before children."""
        out, stack = [], [self]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(reversed(node.children))
        return out

    def all_rows(self) -> list[int]:
        """Every row at or below this node."""
        return [k for node in self.walk() for k in node.rows]


def common_prefix(a: Sequence[object], b: Sequence[object]) -> int:
    """Number of leading items (token ids, characters) ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def shared_prefix_tree(
    rows: Sequence[Sequence[int]], limits: Sequence[int], min_tokens: int
) -> PrefixNode:
    """The tree of shared prefixes of ``rows``; the root (length 0) holds rows sharing nothing.

    ``limits[k]`` caps how much of row ``k`` may be shared (the scorer must still run the tokens
    whose logits it reads). A group needs two rows or more and ``min_tokens`` shared tokens beyond
    its parent's. Rows are sorted, so the rows sharing a prefix are adjacent and the prefix shared
    by a run of rows is the smallest common prefix of neighbours within it.
    """
    if min_tokens < 1:
        raise ValueError(f"min_tokens must be at least 1, got {min_tokens}")
    order = sorted(range(len(rows)), key=lambda k: list(rows[k]))
    shared = [
        max(0, min(common_prefix(rows[a], rows[b]), limits[a], limits[b]))
        for a, b in pairwise(order)
    ]
    root = PrefixNode(0)
    stack = [(root, 0, len(order))]
    while stack:
        node, lo, hi = stack.pop()
        k = lo
        while k < hi:
            end = k + 1
            while end < hi and shared[end - 1] >= node.length + min_tokens:
                end += 1
            if end - k >= 2:
                child = PrefixNode(min(shared[k : end - 1]), example=order[k])
                node.children.append(child)
                stack.append((child, k, end))
            else:
                node.rows.append(order[k])
            k = end
    return root
