r"""The OT-Flow potential :math:`\Phi(x, t)`, its parameters, and its exact gradient and Hessian trace.

The potential of a sample :math:`s = (x, t) \in \mathbb{R}^{d+1}` (time last), or
:math:`s = (x, c, t) \in \mathbb{R}^{d+q+1}` for a conditional density given :math:`c \in \mathbb{R}^q`
(conditional OT-Flow: :math:`c` is an input of the potential, and only :math:`x` flows), is

.. math::

    \Phi(s) = w^\top N(s) + \tfrac12 s^\top A^\top A s + b^\top s + c,

with :math:`N` a residual network of width :math:`m` and :math:`M` residual layers,

.. math::

    u_0 = \sigma(K_0 s + b_0), \qquad
    u_i = u_{i-1} + h\,\sigma(K_i u_{i-1} + b_i), \quad h = 1/M, \qquad N(s) = u_M,

and the activation :math:`\sigma(u) = \log(2\cosh u)`, so :math:`\sigma' = \tanh` and
:math:`\sigma'' = 1 - \tanh^2`. The gradient and the trace over :math:`x` are computed by
:mod:`._trace`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._trace import Tracer, Weights, block_entries, grad_and_trace, log_cosh

__all__ = ["Potential", "log_cosh"]


class Potential(nn.Module):
    r"""The OT-Flow potential :math:`\Phi(x, t)` with its exact gradient and Hessian trace.

    Parameters
    ----------
    n_features : int
        Dimension :math:`d` of :math:`x`.
    width : int, default=32
        Width :math:`m` of the residual network.
    n_layers : int, default=1
        Number :math:`M \geq 1` of residual layers (each initialised independently).
    rank : int, default=10
        Rank of :math:`A`; capped at :math:`d + 1`.
    n_context : int, default=0
        Dimension :math:`q` of the condition :math:`c` (0: a plain density).
    generator : torch.Generator or None, default=None
        Draws the initial weights; ``None`` draws them from torch's global generator. With a generator
        of its own the potential leaves the global one untouched, and its weights are those that the
        global generator seeded alike would draw.

    Examples
    --------
    >>> phi = Potential(2, width=8, n_layers=2, generator=torch.Generator().manual_seed(0))
    >>> x = torch.randn(5, 2)
    >>> phi(x, 0.5).shape
    torch.Size([5])
    >>> grad, trace = phi.grad_and_trace(x, 0.5)
    >>> grad.shape, trace.shape
    (torch.Size([5, 3]), torch.Size([5]))
    """

    # Parameters that weight decay leaves alone (glob patterns of their names): the biases, and A, b and c,
    # which carry the potential's Gaussian part (decay would pull it toward the identity map rather than
    # toward a smoother network).
    undecayed = ("[Abc]", "*bias")

    def __init__(
        self,
        n_features: int,
        width: int = 32,
        n_layers: int = 1,
        rank: int = 10,
        n_context: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if n_features < 1 or width < 1 or n_layers < 1 or rank < 1 or n_context < 0:
            raise ValueError(
                "Expected n_features, width, n_layers and rank all >= 1 and n_context >= 0; got "
                f"{n_features}, {width}, {n_layers}, {rank} and {n_context}."
            )
        d, n_s = n_features, n_features + n_context + 1  # s = (x, c, t)
        self.n_features, self.n_context, self.width, self.n_layers = d, n_context, width, n_layers
        self.h = 1.0 / n_layers
        # built without drawing (on the meta device), then drawn by reset_parameters from `generator`
        self.opening = nn.Linear(n_s, width, device="meta")  # K_0, b_0
        layers = (nn.Linear(width, width, device="meta") for _ in range(n_layers))
        self.layers = nn.ModuleList(layers)  # K_i, b_i
        self.A = nn.Parameter(torch.empty(min(rank, n_s), n_s, device="meta"))
        self.b = nn.Parameter(torch.empty(n_s, device="meta"))
        self.c = nn.Parameter(torch.empty((), device="meta"))
        self.w = nn.Parameter(torch.empty(width, device="meta"))
        self.to_empty(device="cpu")
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        r"""Draw the initial weights, in the order and from the distributions of torch's defaults.

        :math:`K_i, b_i`: :class:`torch.nn.Linear`'s (uniform on :math:`\pm 1/\sqrt{\text{fan-in}}`),
        layer by layer; :math:`A`: Glorot-uniform; :math:`b, c` and :math:`w` zero. With :math:`w = 0`
        the network starts switched off and the first flow is the quadratic's linear one, rather than
        the reference code's random nonlinear flow (:math:`w = 1`; evidence: :ref:`the defaults and why
        <benchmarks-defaults>`).

        Examples
        --------
        >>> phi = Potential(2, width=8)
        >>> phi.reset_parameters(torch.Generator().manual_seed(0))
        >>> float(phi.w.abs().sum()), tuple(phi.A.shape)
        (0.0, (3, 3))
        """
        for linear in (self.opening, *self.layers):
            nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(linear.in_features)
            nn.init.uniform_(linear.bias, -bound, bound, generator=generator)
        nn.init.xavier_uniform_(self.A, generator=generator)
        for zero in (self.b, self.c, self.w):
            zero.zero_()

    def _check_context(self, n: int, context: Tensor | None) -> None:
        """A condition for each of ``n`` samples where the potential takes one, else none."""
        shape = None if context is None else tuple(context.shape)
        if shape != ((n, self.n_context) if self.n_context else None):
            expected = f"a context of shape ({n}, {self.n_context})" if self.n_context else "no context"
            raise ValueError(f"Expected {expected}; got {shape}.")

    def _s(self, x: Tensor, t: float | Tensor, context: Tensor | None) -> Tensor:
        self._check_context(x.shape[0], context)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0], 1)
        return torch.cat([x, t] if context is None else [x, context, t], dim=1)

    def forward(self, x: Tensor, t: float | Tensor, context: Tensor | None = None) -> Tensor:
        r"""The value :math:`\Phi(x, t)`, shape (n,). ``x`` is (n, d); ``t`` a scalar or (n, 1);
        ``context`` the condition :math:`c`, (n, q), where ``n_context`` is q > 0.

        Examples
        --------
        >>> import torch
        >>> from sklearn_otflow import Potential
        >>> Potential(2, width=8)(torch.randn(5, 2), 0.5).shape
        torch.Size([5])
        """
        s = self._s(x, t, context)
        u = log_cosh(self.opening(s))
        for layer in self.layers:
            u = u + self.h * log_cosh(layer(u))
        quad = 0.5 * ((s @ self.A.t()) ** 2).sum(1)
        return u @ self.w + quad + s @ self.b + self.c

    def grad_and_trace(
        self,
        x: Tensor,
        t: float | Tensor,
        gemm_dtype: torch.dtype | None = None,
        context: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        r"""Exact :math:`\nabla_s\Phi` and :math:`\operatorname{tr}\nabla_x^2\Phi`, analytic, in one sweep.

        Backward sweep, :math:`z_{M+1} = w`,
        :math:`z_i = z_{i+1} + h K_i^\top(\sigma'(a_i) \odot z_{i+1})`, then
        :math:`\nabla_s\Phi = K_0^\top(\sigma'(a_0) \odot z_1) + A^\top A s + b`. Trace over the first
        :math:`d` coordinates: :math:`t_0 + h\sum_i t_i + \operatorname{tr}((A^\top A)_{1:d,1:d})` with
        :math:`t_0 = \sum_j \sigma''(a_0)_j z_{1,j} \sum_{l \le d} (K_0)_{jl}^2` and
        :math:`t_i = \sum_{j,l} \sigma''(a_i)_j z_{i+1,j} (K_i J_{i-1})_{jl}^2`.

        Parameters
        ----------
        x : Tensor of shape (n, d)
        t : float or Tensor of shape (n, 1)
        gemm_dtype : torch.dtype, default=None
            Precision of the :math:`m \times d` block products (``None``: that of ``x``). A lower one
            such as ``torch.bfloat16`` is for training only; reductions stay in ``x``'s dtype.
        context : Tensor of shape (n, q) or None, default=None
            The condition :math:`c`, where ``n_context`` is q > 0.

        Returns
        -------
        grad : Tensor of shape (n, d + q + 1)
            :math:`\nabla_s\Phi`, :math:`s = (x, c, t)`; the last column is :math:`\partial_t\Phi`.
        trace : Tensor of shape (n,)
            :math:`\operatorname{tr}\nabla_x^2\Phi`.

        Examples
        --------
        >>> import torch
        >>> from sklearn_otflow import Potential
        >>> grad, trace = Potential(3, width=8).grad_and_trace(torch.randn(5, 3), 0.5)
        >>> grad.shape, trace.shape
        (torch.Size([5, 4]), torch.Size([5]))
        """
        s = self._s(x, t, context).t()  # samples last throughout: s is (d + q + 1, n), activations (m, n)
        grad, trace = grad_and_trace(self.weights(), s, gemm_dtype or x.dtype)
        return grad.t(), trace

    def weights(self) -> Weights:
        """The parameters by name, as the trace paths read them (the constant :math:`c` aside).

        Examples
        --------
        >>> weights = Potential(3, width=8, n_layers=2).weights()
        >>> tuple(weights.K0.shape), len(weights.Ks)
        ((8, 4), 2)
        """
        Ks = tuple(layer.weight for layer in self.layers)
        bs = tuple(layer.bias for layer in self.layers)
        weights = (self.opening.weight, self.opening.bias, self.w, self.A, self.b, Ks, bs)
        return Weights(*weights, n_context=self.n_context)

    def tracer(
        self,
        n: int,
        gemm_dtype: torch.dtype,
        n_stages: int = 1,
        training: bool = False,
        context: Tensor | None = None,
    ) -> Tracer:
        """The gradient and trace at every stage of one integration over ``n`` samples
        (:class:`~sklearn_otflow._trace.Tracer`); ``training`` keeps ``n_stages`` stages for a
        backward pass; ``context``, (n, q), the samples' condition.

        Examples
        --------
        >>> tracer = Potential(3, width=8).tracer(5, torch.float32)
        >>> grad, trace, _ = tracer.forward(torch.randn(4, 5))  # s = (x, t): (d + 1, n), samples last
        >>> tuple(grad.shape), tuple(trace.shape)
        ((4, 5), (5,))
        """
        self._check_context(n, context)
        block = block_entries(gemm_dtype)
        return Tracer(self.weights(), gemm_dtype, block, n, n_stages, training, context)

    def extra_repr(self) -> str:
        sizes = (self.n_features, self.n_context, self.width, self.n_layers, self.A.shape[0])
        return "n_features={}, n_context={}, width={}, n_layers={}, rank={}".format(*sizes)
