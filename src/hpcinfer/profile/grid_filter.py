"""The filter of an experiment grid: a small arithmetic and comparison expression such as
`tp * pp <= devices` or `ep == 1 or ep == tp * dp`.

The text comes from a user's file, so it is never given to `eval`: it is parsed with `ast`
and only numbers, the grid's names, + - * / // %, comparisons, `and`, `or`, `not` and
parentheses are accepted; anything else (calls, attributes, subscripts, strings) is refused
with the part that is not allowed.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_COMPARE: dict[type[ast.cmpop], Callable[[float, float], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


class FilterSyntaxError(ValueError):
    """The filter text is not an expression of the small language (the message says why)."""


@dataclass(frozen=True)
class GridFilter:
    """One parsed filter; `holds(values)` says whether an experiment passes it."""

    text: str
    tree: ast.Expression
    names: frozenset[str]

    def holds(self, values: Mapping[str, float]) -> bool:
        try:
            return bool(_evaluate(self.tree.body, values))
        except ZeroDivisionError:
            raise FilterSyntaxError(f"{self.text!r} divides by zero for {dict(values)}") from None


def parse_filter(text: str, known: frozenset[str]) -> GridFilter:
    """Parse `text`, allowing only the names in `known`; FilterSyntaxError says what is wrong."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise FilterSyntaxError(f"{text!r} is not an expression ({exc.msg})") from None
    names: set[str] = set()
    _check(tree.body, known, names, text)
    return GridFilter(text, tree, frozenset(names))


def _check(node: ast.AST, known: frozenset[str], names: set[str], text: str) -> None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise FilterSyntaxError(f"{text!r}: only numbers are allowed, not {node.value!r}")
        return
    if isinstance(node, ast.Name):
        if node.id not in known:
            raise FilterSyntaxError(
                f"{text!r}: unknown name {node.id!r}; use {', '.join(sorted(known))}"
            )
        names.add(node.id)
        return
    children: list[ast.AST]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        children = [node.left, node.right]
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd | ast.Not):
        children = [node.operand]
    elif isinstance(node, ast.BoolOp):
        children = list(node.values)
    elif isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        children = [node.left, *node.comparators]
    else:
        part = ast.get_source_segment(text.strip(), node) or type(node).__name__
        raise FilterSyntaxError(
            f"{text!r}: {part!r} is not allowed; a filter uses numbers, names, "
            "+ - * / // %, comparisons, and, or, not and parentheses"
        )
    for child in children:
        _check(child, known, names, text)


def _evaluate(node: ast.expr, values: Mapping[str, float]) -> float | bool:
    """Evaluate a tree `_check` accepted."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, values)
        if isinstance(node.op, ast.Not):
            return not operand
        return -operand if isinstance(node.op, ast.USub) else +operand
    if isinstance(node, ast.BoolOp):
        results = (_evaluate(value, values) for value in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, values)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(right_node, values)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    raise AssertionError(f"unchecked node {type(node).__name__}")
