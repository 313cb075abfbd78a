"""The conformance kit: checks any attention variant against the plugin contract.

From Python or the command line (``attnzoo check-plugin NAME``)::

    from attnzoo.testing import check_variant
    check_variant("sigmoid", bias=-2.0).raise_if_failed()

In a plugin's own test suite, through the ``attnzoo_check`` pytest fixture (this
module is registered as a pytest plugin when attnzoo is installed)::

    def test_conformance(attnzoo_check):
        attnzoo_check("sigmoid").raise_if_failed()

Paths are compared in float64 on small tensors, so tolerances can be tight and a
real bug is never mistaken for rounding; several token counts catch code that only
works for one sequence length.

torch is imported inside the functions, never at module level: pytest loads this
module in every session of an environment where attnzoo is installed, and a project
that does not use the kit should not pay for importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

TOKEN_COUNTS = (1, 5, 17)  # 1 catches degenerate softmax / normalization code
BATCH = 2
EXACT = (1e-9, 1e-7)  # (atol, rtol) in float64: paths that agree mathematically agree to ~1e-15
BF16 = (3e-2, 3e-2)  # (atol, rtol) of bf16 autocast against float32: bf16 keeps ~3 digits
PARAMETER_NOISE = 0.05  # moves learnable parameters off their initial value before comparing paths
# (head_dim, num_heads) a variant must also build and run at, beyond head_dim / num_heads: the
# head widths of common ViTs (`attnzoo check-plugin` adds those of the bundled recipes).
SIZES = ((16, 4), (32, 4), (64, 2))


class CheckFailed(Exception):
    """A property of the contract does not hold; the message says which, with numbers."""


@dataclass
class Report:
    """Results of :func:`check_variant`: one (check name, passed, message) per check."""

    variant: str
    settings: str
    results: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(passed for _, passed, _ in self.results)

    @property
    def failed(self) -> list[str]:
        return [name for name, passed, _ in self.results if not passed]

    def summary(self) -> str:
        width = max((len(name) for name, _, _ in self.results), default=0)
        lines = [f"attnzoo conformance of {self.variant} ({self.settings})"]
        for name, passed, message in self.results:
            lines.append(f"  {'PASS' if passed else 'FAIL'}  {name:<{width}}  {message}")
        passed = len(self.results) - len(self.failed)
        verdict = "ok" if self.ok else "FAILED: " + ", ".join(self.failed)
        lines.append(f"{passed}/{len(self.results)} checks passed, {verdict}")
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise AssertionError(self.summary())

    def __str__(self) -> str:
        return self.summary()


# --------------------------------------------------------------------------- the variant under test


@dataclass
class Subject:
    """Builds fresh modules and reproducible inputs for the variant under test."""

    factory: Callable[..., Any]
    head_dim: int
    num_heads: int
    options: dict
    sizes: tuple[tuple[int, int], ...] = SIZES  # for check_head_dims

    def module(self, dtype, *, perturb: bool = False):
        """A fresh module in `dtype`, built under a fixed seed without touching the global RNG."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = self.factory(head_dim=self.head_dim, num_heads=self.num_heads, **self.options)
        if not isinstance(module, torch.nn.Module):
            raise CheckFailed(f"the factory returned {type(module).__name__}, not a torch.nn.Module")
        module = module.to(dtype)
        if perturb:
            _perturb_parameters(module)
        return module

    def inputs(self, tokens: int, dtype, *, batch: int = BATCH, seed: int = 0, scale: float = 1.0):
        """q, k, v of shape (batch, heads, tokens, head_dim), leaves that require grad."""
        import torch

        gen = torch.Generator().manual_seed(seed * 1000 + tokens)
        shape = (batch, self.num_heads, tokens, self.head_dim)
        return tuple(
            (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).requires_grad_()
            for _ in range(3)
        )


def _perturb_parameters(module) -> None:
    """Move parameters off their initial values: a gain initialised to 1 that only one
    path applies would otherwise go unnoticed (the same perturbation the load-time check makes)."""
    from attnzoo.contract.registry import perturb_parameters

    perturb_parameters(module, PARAMETER_NOISE)


def explicit_output(module, q, k, v):
    """The reference path of the contract, ``attention_weights(q, k) @ values(v)``: the one
    definition (attnzoo.contract.variant.explicit_attention) the registry checks at load time."""
    from attnzoo.contract.variant import explicit_attention

    return explicit_attention(module, q, k, v)


def _upstream(output):
    """A fixed random gradient for `output`: a plain sum() would hide errors that cancel."""
    import torch

    gen = torch.Generator().manual_seed(2)
    return torch.randn(output.shape, generator=gen, dtype=torch.float64).to(output.dtype)


def _trainable(module) -> dict:
    return {f"parameter {name}": p for name, p in module.named_parameters() if p.requires_grad}


def _gradients(output, q, k, v, module, upstream) -> dict:
    """Gradients of <output, upstream> w.r.t. q, k, v and every trainable parameter (None if unused)."""
    import torch

    targets = {"q": q, "k": k, "v": v, **_trainable(module)}
    grads = torch.autograd.grad(output, list(targets.values()), upstream, allow_unused=True)
    return dict(zip(targets, grads))


def _compare(what: str, actual, expected, tolerance: tuple[float, float]) -> tuple[float, float]:
    """Raise CheckFailed unless max|actual - expected| <= atol + rtol * max|expected|.
    Returns (max abs diff, tolerance) for the pass message."""
    if tuple(actual.shape) != tuple(expected.shape):
        raise CheckFailed(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    atol, rtol = tolerance
    if expected.numel() == 0:
        return 0.0, atol
    actual, expected = actual.detach().double(), expected.detach().double()
    tol = atol + rtol * expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    if not diff <= tol:  # also catches NaN
        raise CheckFailed(f"{what}: max abs diff {diff:.3g} > tolerance {tol:.3g}")
    return diff, tol


def _require_finite(what: str, tensor) -> None:
    import torch

    bad = (~torch.isfinite(tensor)).sum().item()
    if bad:
        raise CheckFailed(f"{what}: {bad} of {tensor.numel()} values are not finite")


class _Worst:
    """Tracks the comparison closest to its tolerance, for the pass message."""

    def __init__(self):
        self.diff, self.tol = 0.0, 1.0

    def add(self, diff: float, tol: float) -> None:
        if diff / tol >= self.diff / self.tol:
            self.diff, self.tol = diff, tol

    def __str__(self) -> str:
        return f"max abs diff {self.diff:.2g} (tolerance {self.tol:.2g})"


def _tokens(counts=TOKEN_COUNTS) -> str:
    return "N = " + ", ".join(map(str, counts))


# --------------------------------------------------------------------------- the checks


def check_shape_and_dtype(subject: Subject) -> str:
    import torch

    for dtype in (torch.float32, torch.float64):
        module = subject.module(dtype)
        for n in TOKEN_COUNTS:
            q, k, v = subject.inputs(n, dtype)
            with torch.no_grad():
                out = module(q, k, v)
            if not isinstance(out, torch.Tensor):
                raise CheckFailed(f"forward returned {type(out).__name__}, expected a tensor")
            if out.shape != q.shape or out.dtype != q.dtype:
                raise CheckFailed(
                    f"N={n}: forward returned {tuple(out.shape)} {out.dtype} for q of {tuple(q.shape)} {q.dtype}; "
                    "it must match q: (batch, heads, tokens, head_dim), same dtype"
                )
    return f"output shape and dtype equal q's (float32, float64; {_tokens()})"


def check_finite(subject: Subject) -> str:
    import torch

    for scale in (1.0, 10.0):  # 10x inputs catch exp() without max subtraction and similar
        for n in TOKEN_COUNTS:
            module = subject.module(torch.float32).train()
            q, k, v = subject.inputs(n, torch.float32, scale=scale)
            out = module(q, k, v)
            where = f"N={n}, inputs of std {scale:g}"
            _require_finite(f"output ({where})", out)
            grads = _gradients(out, q, k, v, module, _upstream(out))
            for name, grad in grads.items():
                if grad is None:
                    hint = " (an unused parameter also breaks DistributedDataParallel)" if name.startswith("param") else ""
                    raise CheckFailed(f"no gradient reaches {name} ({where}): forward does not use it{hint}")
                _require_finite(f"gradient of {name} ({where})", grad)
    return f"outputs and gradients of q, k, v and parameters finite (inputs of std 1 and 10; {_tokens()})"


def check_fast_path_forward(subject: Subject) -> str:
    import torch

    module, worst = subject.module(torch.float64, perturb=True).eval(), _Worst()
    for n in TOKEN_COUNTS:
        q, k, v = subject.inputs(n, torch.float64)
        with torch.no_grad():
            fast, reference = module(q, k, v), explicit_output(module, q, k, v)
        worst.add(*_compare(f"N={n}: forward vs explicit path", fast, reference, EXACT))
    return f"forward equals the explicit path in float64, {worst} ({_tokens()})"


def check_fast_path_gradients(subject: Subject) -> str:
    import torch

    module, worst = subject.module(torch.float64, perturb=True).eval(), _Worst()
    for n in TOKEN_COUNTS:
        q, k, v = subject.inputs(n, torch.float64)
        fast = module(q, k, v)
        upstream = _upstream(fast)
        fast_grads = _gradients(fast, q, k, v, module, upstream)
        reference_grads = _gradients(explicit_output(module, q, k, v), q, k, v, module, upstream)
        for name, grad in fast_grads.items():
            reference = reference_grads[name]
            # An input one path ignores gets no gradient there: compare it as zeros.
            grad = torch.zeros_like(reference) if grad is None and reference is not None else grad
            reference = torch.zeros_like(grad) if reference is None and grad is not None else reference
            if grad is not None:
                worst.add(*_compare(f"N={n}: gradient of {name}, forward vs explicit path", grad, reference, EXACT))
    return f"gradients of forward equal the explicit path's in float64, {worst} ({_tokens()})"


def check_permutation_equivariance(subject: Subject) -> str:
    import torch

    module, worst = subject.module(torch.float64, perturb=True).eval(), _Worst()
    counts = [n for n in TOKEN_COUNTS if n > 1]
    for n in counts:
        q, k, v = subject.inputs(n, torch.float64)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            expected = module(q, k, v)[:, :, perm]
            permuted = module(q[:, :, perm], k[:, :, perm], v[:, :, perm])
        worst.add(*_compare(f"N={n}: output of permuted tokens vs permuted output", permuted, expected, EXACT))
    return f"permuting tokens permutes the output the same way, {worst} ({_tokens(counts)})"


def check_batch_independence(subject: Subject) -> str:
    import torch

    module, worst = subject.module(torch.float64, perturb=True).eval(), _Worst()
    for n in TOKEN_COUNTS:
        q, k, v = subject.inputs(n, torch.float64, batch=3)
        other = subject.inputs(n, torch.float64, batch=1, seed=1)
        with torch.no_grad():
            out = module(q, k, v)
            # Replace batch element 0 only: elements 1 and 2 must not move.
            changed = module(*(torch.cat([o, x[1:]]) for o, x in zip(other, (q, k, v))))
            alone = module(q[1:2], k[1:2], v[1:2])
        worst.add(*_compare(f"N={n}: elements 1-2 after changing element 0", changed[1:], out[1:], EXACT))
        worst.add(*_compare(f"N={n}: element 1 alone vs in the batch", alone, out[1:2], EXACT))
    return f"batch elements do not affect each other, {worst} ({_tokens()})"


def check_bf16_autocast(subject: Subject) -> str:
    import torch

    module, worst = subject.module(torch.float32).eval(), _Worst()
    for n in TOKEN_COUNTS:
        q, k, v = subject.inputs(n, torch.float32)
        with torch.no_grad():
            reference = module(q, k, v)
        # float32 inputs, and bfloat16 ones as a Linear produces them under autocast.
        for dtype in (torch.float32, torch.bfloat16):
            inputs = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
            where = f"N={n}, {str(dtype).replace('torch.', '')} inputs"
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = module(*inputs)
            _require_finite(f"output under bf16 autocast ({where})", out)
            worst.add(*_compare(f"{where}: bf16 autocast vs float32", out, reference, BF16))
            out.float().sum().backward()
            for name, x in zip("qkv", inputs):
                _require_finite(f"gradient of {name} under bf16 autocast ({where})", x.grad)
    return f"runs under CPU bf16 autocast, finite, close to float32: {worst} ({_tokens()})"


def check_keeps_compute_dtype(subject: Subject) -> str:
    """Under GPU autocast the variant makes no float32 round trip and returns the compute dtype.

    CUDA autocast runs layer_norm, norm, softmax, exp, sum, pow, logsumexp, ... in float32
    and returns float32 (CPU autocast does not). A variant whose low-precision tensors are
    widened so and narrowed again (by a matmul's or SDPA's own cast, or by .to()) makes a
    float32 intermediate each call: extra memory traffic on every step. The check emulates
    CUDA's cast lists on the CPU (attnzoo.cuda_autocast) and counts those casts."""
    import torch

    from attnzoo.contract.cuda_autocast import emulate_cuda_autocast

    module = subject.module(torch.float32).train()  # float32 parameters, as in mixed-precision training
    for dtype in (torch.bfloat16, torch.float16):
        name = str(dtype).replace("torch.", "")
        for n in TOKEN_COUNTS:
            q, k, v = subject.inputs(n, torch.float32)
            inputs = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]  # as a Linear yields them
            with emulate_cuda_autocast(dtype) as record:
                out = module(*inputs)
            # q, k, v and the output are (B, H, N, d); the explicit path's N x N weights are widened by
            # softmax and narrowed for the matmul in any eager attention under CUDA autocast: not asked.
            trips = record.float32_round_trips(q.shape)
            if trips:
                widened = ", ".join(sorted({c.op for c in record.widened()}))
                handed = [d for d in record.sdpa_handed if any(x != dtype for x in d)]
                where = (f"scaled_dot_product_attention was handed {handed[0]} and cast it back to {name} itself"
                         if handed else f"{', '.join(sorted({c.op for c in trips}))} cast it back to {name}")
                raise CheckFailed(
                    f"N={n}, {name}: {len(trips)} float32 round trip(s) of q/k/v under GPU autocast (emulated): "
                    f"{widened} returned float32 and {where}; each is a float32 copy on every call. Run that "
                    "step with autocast disabled, in the input dtype (attnzoo.standardize and "
                    "attnzoo.l2_normalize do), or fuse it into one kernel")
            if out.dtype != dtype:
                raise CheckFailed(
                    f"N={n}: forward returned {out.dtype} for {name} inputs under GPU autocast (emulated); it must "
                    f"return {name}: the next layer then works in float32 and the step slows down")
            out.float().sum().backward()
            for label, x in zip("qkv", inputs):
                if x.grad is None or x.grad.dtype != dtype:
                    got = None if x.grad is None else x.grad.dtype
                    raise CheckFailed(f"N={n}, {name}: gradient of {label} is {got}, expected {dtype}")
    return f"keeps bf16/fp16 through its kernels under emulated CUDA autocast ({_tokens()})"


def check_attention_weights(subject: Subject) -> str:
    import torch

    module = subject.module(torch.float32).eval()
    for n in TOKEN_COUNTS:
        q, k, _ = subject.inputs(n, torch.float32)
        with torch.no_grad():
            weights = module.attention_weights(q, k)
        expected = (BATCH, subject.num_heads, n, n)
        if tuple(weights.shape) != expected:
            raise CheckFailed(f"N={n}: attention_weights returned {tuple(weights.shape)}, expected {expected} "
                              "(batch, heads, queries, keys)")
        _require_finite(f"attention_weights (N={n})", weights)
    return f"attention_weights(q, k) is (batch, heads, N, N) and finite ({_tokens()})"


def check_head_dims(subject: Subject) -> str:
    """The variant builds and runs at other head widths: a factory that only works for the
    default head_dim would pass every other check and then crash a training run. (Whether its
    paths agree is the fast-path checks' question, asked at the default size.)"""
    import torch

    n = 5
    for head_dim, num_heads in subject.sizes:
        sized = dataclasses.replace(subject, head_dim=head_dim, num_heads=num_heads)
        where = f"head_dim={head_dim}, num_heads={num_heads}"
        try:
            module = sized.module(torch.float32, perturb=True).eval()
        except CheckFailed:
            raise
        except Exception as exc:  # noqa: BLE001 - the factory may raise anything
            raise CheckFailed(f"{where}: the factory raised {type(exc).__name__}: {exc}") from exc
        q, k, v = sized.inputs(n, torch.float32)
        with torch.no_grad():
            out, weights = module(q, k, v), module.attention_weights(q, k)
        for what, tensor, expected in (("forward", out, q.shape), ("attention_weights", weights, (BATCH, num_heads, n, n))):
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(expected):
                got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise CheckFailed(f"{where}, N={n}: {what} returned {got}, expected {tuple(expected)}")
            _require_finite(f"{what} ({where}, N={n})", tensor)
    sizes = ", ".join(f"{d}/{h}" for d, h in subject.sizes)
    return f"builds, runs and gives finite outputs and weights of the right shapes at head_dim/num_heads {sizes}"


def check_random_stream(subject: Subject) -> str:
    """The variant's randomness keeps a study's arms paired by seed (see hookspecs, "Randomness"):
    built as the model builds it, inside kernel_random_stream(run seed, layer), it comes out the same
    for the same run seed and layer; and forward, attention_weights and the backward pass leave
    torch's global random stream where it was."""
    import torch

    from attnzoo.contract.hookspecs import kernel_random_stream

    def build():
        with kernel_random_stream(0, 1):
            return subject.factory(head_dim=subject.head_dim, num_heads=subject.num_heads, **subject.options)

    second = dict(build().state_dict())
    for name, tensor in build().state_dict().items():
        if not torch.equal(tensor, second[name]):
            raise CheckFailed(
                f"built twice for the same run seed and layer, its {name!r} differs: draw initial random values "
                "from torch's default generator (the model seeds it from the run seed and layer) or from a "
                "torch.Generator seeded from an option, never from an unseeded source")
    module = subject.module(torch.float32, perturb=True)
    q, k, v = subject.inputs(5, torch.float32)
    calls = [("forward(q, k, v)", lambda: module(q, k, v)),
             ("attention_weights(q, k)", lambda: module.attention_weights(q, k)),
             ("the backward pass", lambda: (module(q, k, v) * _upstream(q)).sum().backward())]
    for what, call in calls:
        torch.manual_seed(0)
        before = torch.get_rng_state()
        call()
        if not torch.equal(torch.get_rng_state(), before):
            raise CheckFailed(
                f"{what} drew from torch's global random stream: every later draw of the run (dropout masks, the "
                "other layers) shifts, so a study's arms no longer pair by seed. Draw from a torch.Generator of "
                "the module's own, seeded when it is built")
    return ("the same for the same run seed and layer; forward, attention_weights and backward leave the global "
            "random stream alone")


CHECKS: dict[str, Callable[[Subject], str]] = {
    "shape_and_dtype": check_shape_and_dtype,
    "finite": check_finite,
    "fast_path_forward": check_fast_path_forward,
    "fast_path_gradients": check_fast_path_gradients,
    "permutation_equivariance": check_permutation_equivariance,
    "batch_independence": check_batch_independence,
    "bf16_autocast": check_bf16_autocast,
    "keeps_compute_dtype": check_keeps_compute_dtype,
    "attention_weights": check_attention_weights,
    "head_dims": check_head_dims,
    "random_stream": check_random_stream,
}


# --------------------------------------------------------------------------- entry point


def _resolve(name_or_factory, options: dict, registry) -> tuple[str, Callable, dict]:
    """(label, factory, options): a registered name goes through the registry, so its
    options are checked and defaulted exactly as a recipe's would be."""
    if callable(name_or_factory):
        label = getattr(name_or_factory, "__qualname__", repr(name_or_factory))
        return label, name_or_factory, dict(options)
    from attnzoo.contract.registry import installed_or, resolve_variant_options

    registry = installed_or(registry)
    # A variant whose plugin failed to load is still examined: the report shows what is wrong.
    # Unknown name: PluginError listing the valid ones.
    variant = registry.get_for_checking(name_or_factory)
    return repr(variant.name), variant.factory, resolve_variant_options(variant, options)


def check_variant(name_or_factory: str | Callable, *, head_dim: int = 8, num_heads: int = 2,
                  checks: list[str] | None = None, skip: tuple[str, ...] = (), registry=None,
                  sizes: tuple[tuple[int, int], ...] = SIZES, **options) -> Report:
    """Run the conformance checks on a variant and return a :class:`Report`.

    `name_or_factory` is a registered variant name, or a factory called as
    ``factory(head_dim=..., num_heads=..., **options)``. `options` are the variant's
    options; `checks` picks a subset of :data:`CHECKS` and `skip` leaves some out
    (e.g. ``skip=("permutation_equivariance",)`` for a variant with positional terms).
    `sizes` are the (head_dim, num_heads) pairs the ``head_dims`` check builds it at.
    A check that raises counts as failed, with the exception in its message.
    """
    unknown = [c for c in [*(checks or ()), *skip] if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; the checks are: {', '.join(CHECKS)}")
    label, factory, resolved = _resolve(name_or_factory, options, registry)
    subject = Subject(factory, head_dim, num_heads, resolved, tuple(sizes))
    settings = ", ".join([f"head_dim={head_dim}", f"num_heads={num_heads}",
                          *(f"{key}={value!r}" for key, value in resolved.items())])
    report = Report(label, settings)
    import torch

    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        for name in checks or CHECKS:
            if name not in skip:
                report.results.append(_run_check(name, CHECKS[name], subject))
    return report


def _run_check(name: str, check: Callable[[Subject], str], subject: Subject) -> tuple[str, bool, str]:
    try:
        return name, True, check(subject)
    except CheckFailed as exc:
        return name, False, str(exc)
    except Exception as exc:  # the variant's own code may raise anything; that is a failure too
        return name, False, f"raised {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- pytest plugin

try:
    import pytest
except ImportError:  # the kit itself works without pytest; only the fixture needs it
    pytest = None

if pytest is not None:

    @pytest.fixture
    def attnzoo_check():
        """:func:`check_variant`, for a plugin's tests: ``attnzoo_check("name").raise_if_failed()``."""
        return check_variant
