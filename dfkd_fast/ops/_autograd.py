"""Autograd faces shared by the Triton ops: torch.func support and double backward.

``torch.library.register_autograd`` gives a custom op its autograd formula, but ``torch.func`` refuses the
``autograd.Function`` it builds (one without ``setup_context``). :func:`register` therefore also returns a
setup_context-style ``torch.autograd.Function`` with the same formula, which the functional API applies in eager mode:

* ``torch.func.grad`` / ``vjp`` work through it; ``vmap`` (and so ``jacrev``) through the vmap rule it generates from
  its forward, which reaches the custom op's own rule: one launch per sample, stacked.
* Double backward: every backward op is registered the same way, with a backward of its own (the second-order terms)
  computed by ``torch.func.vjp`` through the reference formula, so second (and higher) derivatives are the
  reference's on every backend.
* Forward-mode AD (``torch.func.jvp``/``jacfwd``/``hessian``) is not implemented: a clear error.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
from torch import Tensor


def _loop_vmap(op: Callable) -> Callable:
    """A vmap rule that runs ``op`` once per sample and stacks the results along dimension 0."""

    def rule(info, in_dims, *args):
        results = [
            op(*(a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)))
            for i in range(info.batch_size)
        ]
        if isinstance(results[0], Tensor):
            return torch.stack(results), 0
        return tuple(torch.stack(r) for r in zip(*results)), (0,) * len(results[0])

    return rule


def _no_jvp(name: str, ctx, *tangents):
    raise NotImplementedError(
        f"dfkd_fast::{name}: forward-mode AD (torch.func.jvp, jacfwd, hessian) is not implemented for the fused "
        "backend; use reverse mode (torch.func.jacrev(torch.func.jacrev(f)) for a Hessian) or backend='reference'"
    )


def register(op, setup_context: Callable, backward: Callable) -> Callable:
    """Register ``backward`` as ``op``'s autograd formula and a per-sample vmap rule; return the function to call
    ``op`` through: an equivalent setup_context-style ``autograd.Function`` in eager mode (torch.func support), the
    op itself under ``torch.compile`` (which traces the op's own registration; not an autograd.Function that calls
    another one in its backward)."""
    torch.library.register_autograd(op, backward, setup_context=setup_context)
    torch.library.register_vmap(op, _loop_vmap(op))
    function = type(
        "".join(part.title() for part in op._name.split("_")),
        (torch.autograd.Function,),
        {
            "forward": staticmethod(lambda *args: op(*args)),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
            "jvp": staticmethod(functools.partial(_no_jvp, op._name)),
            "generate_vmap_rule": True,
        },
    )

    def apply(*args):
        return op(*args) if torch.compiler.is_compiling() else function.apply(*args)

    return apply


def reference_double_backward(
    reference: Callable[..., Tensor], grad_out: Tensor, primals: Sequence[Tensor], grad_grads: Sequence[Tensor]
) -> tuple[Tensor, ...]:
    """The backward of a backward op ``(grad_out, *primals) -> vjp(reference, primals)(grad_out)``.

    Returns the gradients for ``grad_out`` and each primal, by ``torch.func.vjp`` through ``reference``: the
    second-order terms are the reference's own, and the result is differentiable again (to any order) both by
    ``torch.autograd`` with ``create_graph=True`` and under torch.func transforms.
    """

    def backward(g: Tensor, *xs: Tensor) -> tuple[Tensor, ...]:
        return torch.func.vjp(reference, *xs)[1](g)

    return torch.func.vjp(backward, grad_out, *primals)[1](tuple(grad_grads))
