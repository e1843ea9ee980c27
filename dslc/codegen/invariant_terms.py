"""Moving the terms of a loop's body that do not change along the loop out of it.

LLVM hoists a loop-invariant term itself only where it can prove it invariant and where
the loop computes it in the same precision anyway. Two kinds of generated loop need it
done in the source:

- a rows-layout sweep (numba_sweep.ChannelTerms): the channel changes every element, so
  `gamma[c] / math.sqrt(var[cc] + eps)` is a square root and a division per element
  unless it is computed once per channel into a scratch slot;
- a float32 optimizer update (numba_loops.update): Adam's bias corrections
  `1 / (1 - beta ** step)` depend on the step alone. Computed once per segment in
  float64, as PyTorch computes them in Python, they round to float32 without the
  cancellation `1 - 0.999` suffers in float32, and the element's arithmetic can run in
  float32.

A subclass says which leaves are invariant (`leaf`) and where a hoisted term lives
(`new_slot`). A term is invariant when every leaf is a number or an invariant leaf; each
such term with an operation gets one slot (equal texts share it). Division by an
invariant term becomes a product with its reciprocal: one rounding more.
"""
from __future__ import annotations

import ast


class InvariantTerms:
    def __init__(self):
        self.slots: dict[str, str] = {}  # term's text -> its slot's text

    def leaf(self, node: ast.expr) -> bool:
        """Whether a name or subscript is invariant along the loop."""
        raise NotImplementedError

    def new_slot(self) -> str:
        """The text of a fresh slot for one hoisted term."""
        raise NotImplementedError

    def rewrite(self, stmt: ast.stmt) -> bool:
        """Rewrite an assignment's value in place to read its invariant terms from their
        slots; whether anything changed."""
        if not isinstance(stmt, (ast.Assign, ast.AugAssign)):
            return False
        new = self._rewrite(stmt.value)
        changed = new is not stmt.value
        stmt.value = new
        return changed

    def invariant(self, node) -> bool:
        if isinstance(node, ast.Constant):
            return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
        if isinstance(node, (ast.Name, ast.Subscript)):
            return self.leaf(node)
        if isinstance(node, ast.BinOp):
            return self.invariant(node.left) and self.invariant(node.right)
        if isinstance(node, ast.UnaryOp):
            return isinstance(node.op, (ast.USub, ast.UAdd)) and self.invariant(node.operand)
        if isinstance(node, ast.Call):
            f = node.func
            pure = (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "math"
                    or isinstance(f, ast.Name) and f.id in ("max", "min", "abs"))
            return pure and not node.keywords and all(self.invariant(a) for a in node.args)
        return False

    def _slot(self, term) -> ast.expr:
        text = ast.unparse(term)
        if text not in self.slots:
            self.slots[text] = self.new_slot()
        return ast.parse(self.slots[text], mode="eval").body

    def _rewrite(self, node):
        """`node` with its invariant terms read from their slots (the same node if none)."""
        if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Call)) and self.invariant(node):
            return self._slot(node)
        if isinstance(node, ast.BinOp):
            left = self._rewrite(node.left)
            if isinstance(node.op, ast.Div) and self.invariant(node.right):
                inverse = ast.BinOp(ast.Constant(1.0), ast.Div(), node.right)
                return ast.BinOp(left, ast.Mult(), self._slot(inverse))
            right = self._rewrite(node.right)
            if left is node.left and right is node.right:
                return node
            return ast.BinOp(left, node.op, right)
        if isinstance(node, ast.UnaryOp):
            operand = self._rewrite(node.operand)
            return node if operand is node.operand else ast.UnaryOp(node.op, operand)
        if isinstance(node, ast.Call):
            args = [self._rewrite(a) for a in node.args]
            if all(a is b for a, b in zip(args, node.args)):
                return node
            return ast.Call(node.func, args, node.keywords)
        if isinstance(node, ast.IfExp):
            parts = [self._rewrite(x) for x in (node.test, node.body, node.orelse)]
            if all(a is b for a, b in zip(parts, (node.test, node.body, node.orelse))):
                return node
            return ast.IfExp(*parts)
        return node
