"""Syntax-tree helpers the compiler's rewrites share: building calls and named parameters, and a
linear-time pre-order rewrite (sqlglot's `transform` is quadratic on long argument lists)."""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp


def call(name: str, *args: exp.Expression) -> exp.Expression:
    """A call of the SQL function `name` (one of ours, registered on every connection)."""
    return exp.Anonymous(this=name, expressions=list(args))


def placeholder(name: str) -> exp.Placeholder:
    """A named parameter `:name`, bound by the executor."""
    return exp.Placeholder(this=name)


def rewrite_tree(root: exp.Expression, fn: Callable[[exp.Expression], exp.Expression]) -> exp.Expression:
    """Apply `fn` to every node (pre-order; a replaced node is not descended into, as with
    sqlglot's `transform`) and return the new root. Linear in the tree: sqlglot's `transform` re-parents a whole argument list for
    every replaced element, which made a 10,000-item IN list cost seconds."""
    new_root = fn(root)
    if new_root is not root:
        return new_root
    stack = [root]
    lists: dict[tuple[int, str], tuple[exp.Expression, str, dict[int, exp.Expression]]] = {}
    singles: list[tuple[exp.Expression, str, exp.Expression]] = []
    while stack:
        node = stack.pop()
        for key, value in node.args.items():
            if isinstance(value, list):
                for i, child in enumerate(value):
                    if isinstance(child, exp.Expression):
                        new = fn(child)
                        if new is not child:
                            lists.setdefault((id(node), key), (node, key, {}))[2][i] = new
                        else:
                            stack.append(child)
            elif isinstance(value, exp.Expression):
                new = fn(value)
                if new is not value:
                    singles.append((node, key, new))
                else:
                    stack.append(value)
    for node, key, new in singles:
        node.set(key, new)
    for node, key, replaced in lists.values():
        items = list(node.args[key])
        for i, new in replaced.items():
            items[i] = new
        node.set(key, items)  # one re-parenting pass per list
    return new_root
