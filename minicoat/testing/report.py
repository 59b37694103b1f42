"""What a gradient check found: per leaf the error, the budget, the worst entry; and the error.

A check compares, for each leaf of the checked arguments, a number of *probes* (random
directions, or the entries of the leaf one by one): ours (the reverse-mode value) against the
centred difference, and the difference against a tolerance that defaults to the error budget
(``minicoat.testing.budget``). ``GradcheckReport`` holds them; ``GradcheckError`` is raised
when a probe is over its tolerance and says where, by how much, and what was allowed.
"""

from dataclasses import dataclass, field

import numpy as onp

from .budget import SAFETY


@dataclass
class LeafResult:
    """The probes of one leaf (or of the whole tree, for ``"(tree)"``), one entry each.

    Attributes:
        name: the leaf's name (``s3.block0.attn.rel_bias``, ``args[0]``, or ``(tree)``).
        shape: the leaf's shape.
        probes: a label per probe: ``"direction 2"`` or the entry's index ``"[1, 0, 3]"``.
        ours, numeric: the two values per probe (arrays of shape ``(probes,)``).
        truncation, round_off: the budget's two terms per probe (before ``SAFETY``).
        tolerance: the allowed ``|ours - numeric|`` per probe.
    """

    name: str
    shape: tuple
    probes: list
    ours: onp.ndarray
    numeric: onp.ndarray
    truncation: onp.ndarray
    round_off: onp.ndarray
    tolerance: onp.ndarray

    @property
    def errors(self):
        """``|ours - numeric|`` per probe."""
        return onp.abs(self.ours - self.numeric)

    @property
    def ratios(self):
        """error / tolerance per probe (a probe passes at <= 1)."""
        with onp.errstate(divide="ignore", invalid="ignore"):
            ratio = self.errors / self.tolerance
        return onp.where(self.errors == 0, 0.0, ratio)

    @property
    def worst(self):
        """Index of the probe with the largest error / tolerance."""
        return int(onp.argmax(self.ratios))

    @property
    def passed(self):
        """Every probe within its tolerance."""
        return bool(onp.all(self.errors <= self.tolerance))

    @property
    def error(self):
        """The largest ``|ours - numeric|`` of the leaf."""
        return float(onp.max(self.errors))

    @property
    def budget(self):
        """The budget ``SAFETY * (truncation + round-off)`` at the worst probe."""
        i = self.worst
        return float(SAFETY * (self.truncation[i] + self.round_off[i]))

    @property
    def rel_error(self):
        """Normwise ``|ours - numeric| / max(|ours|, |numeric|)`` over the leaf's probes."""
        scale = max(onp.linalg.norm(self.ours), onp.linalg.norm(self.numeric))
        return 0.0 if scale == 0 else float(onp.linalg.norm(self.ours - self.numeric) / scale)

    def describe_worst(self):
        """One line: the worst probe, ours against numeric, the difference and what it was
        allowed (with the budget's two terms)."""
        i = self.worst
        return (
            f"{self.name} {self.probes[i]}: ours {self.ours[i]:.12e} vs numeric "
            f"{self.numeric[i]:.12e}, |difference| {self.errors[i]:.2e} > tolerance "
            f"{self.tolerance[i]:.2e} (budget: truncation {self.truncation[i]:.1e} + "
            f"round-off {self.round_off[i]:.1e}, x{SAFETY:g})"
        )


@dataclass
class GradcheckReport:
    """The result of ``gradcheck`` / ``vjpcheck``: one ``LeafResult`` per checked leaf.

    Attributes:
        mode: ``"directional"`` or ``"elementwise"``.
        eps: the step of the centred differences.
        leaves: the ``LeafResult`` of every leaf (directional mode: ``"(tree)"``, the whole
            tree along each direction, then, if that failed or ``per_leaf`` was asked for,
            one per leaf).
        evaluations: how many times ``f`` was called.
        seconds: wall time of the check.
        what: the name of the checked function, for messages.
        agreement: ``vjpcheck(..., autograd_tol=...)``: the ``AgreementReport`` against
            autograd's VJP, else None.
    """

    mode: str
    eps: float
    leaves: list = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0
    what: str = "f"
    agreement: object = None

    @property
    def passed(self):
        """Every probe of every leaf within its tolerance (and the agreement, if any)."""
        agreed = self.agreement is None or self.agreement.passed
        return agreed and all(leaf.passed for leaf in self.leaves)

    @property
    def failed(self):
        """The ``LeafResult`` of every leaf over its tolerance, worst first."""
        bad = [leaf for leaf in self.leaves if not leaf.passed]
        return sorted(bad, key=lambda leaf: -leaf.ratios[leaf.worst])

    @property
    def worst(self):
        """The leaf with the largest error / tolerance, among the failed ones if any (a named
        leaf before ``(tree)``, which only says that some leaf is wrong)."""
        candidates = self.failed or self.leaves
        named = [leaf for leaf in candidates if leaf.name != "(tree)"] or candidates
        return max(named, key=lambda leaf: leaf.ratios[leaf.worst])

    def __getitem__(self, name):
        for leaf in self.leaves:
            if leaf.name == name:
                return leaf
        raise KeyError(f"no leaf {name!r}; leaves: {[leaf.name for leaf in self.leaves][:8]}")

    def __str__(self):
        status = "passed" if self.passed else f"FAILED ({len(self.failed)} of {len(self.leaves)})"
        lines = [
            f"gradcheck of {self.what}, {self.mode}, eps={self.eps:g}: {status}; "
            f"{self.evaluations} evaluations of f in {self.seconds:.2f} s",
            f"{'leaf':<34} {'probes':>6} {'max error':>10} {'truncation':>10} "
            f"{'round-off':>10} {'tolerance':>10} {'error/tol':>9}",
        ]
        for leaf in self.leaves:
            i = leaf.worst
            lines.append(
                f"{leaf.name[-34:]:<34} {len(leaf.probes):>6} {leaf.errors[i]:>10.2e} "
                f"{leaf.truncation[i]:>10.2e} {leaf.round_off[i]:>10.2e} "
                f"{leaf.tolerance[i]:>10.2e} {leaf.ratios[i]:>9.3f}"
                + ("" if leaf.passed else "  <- over")
            )
        if self.agreement is not None:
            lines.append(str(self.agreement))
        return "\n".join(lines)

    def raise_if_failed(self):
        """Raise ``GradcheckError`` unless the check passed; returns the report otherwise."""
        if not all(leaf.passed for leaf in self.leaves):
            raise GradcheckError(self)
        if self.agreement is not None:
            self.agreement.raise_if_failed()
        return self


class GradcheckError(AssertionError):
    """A gradient over its tolerance: names the worst leaf and probe, ours against numeric,
    and the budget. An ``AssertionError``, so pytest shows it as a failed check.

    Attributes:
        report: the ``GradcheckReport`` that failed.
    """

    def __init__(self, report, message=None):
        self.report = report
        if message is not None:  # an AgreementReport says itself what is wrong
            super().__init__(message)
            return
        failed = report.failed
        worst = report.worst
        others = [leaf.name for leaf in failed if leaf is not worst]
        message = (
            f"gradcheck of {report.what} failed ({report.mode}, eps={report.eps:g}): "
            f"{worst.describe_worst()}"
        )
        if others:
            message += f"; also over: {', '.join(others[:5])}" + (
                f" and {len(others) - 5} more" if len(others) > 5 else "")
        super().__init__(message)


@dataclass
class AgreementReport:
    """Two computations of the same values compared normwise (``rel_error``) per item.

    ``primitivecheck`` (a primitive's VJP against autograd's traced one) and
    ``implementationcheck`` (readable and fast against traced) return one.

    Attributes:
        what: what was compared, for messages.
        errors: ``{item: normwise relative error}``, e.g. ``{"value": 1e-16, "d/dargs[0]": ...}``.
        tol: the pass mark of every item.
        names: ``(ours, theirs)``, how the two sides are called in messages.
    """

    what: str
    errors: dict
    tol: float
    names: tuple = ("ours", "theirs")

    @property
    def passed(self):
        """Every item within ``tol``."""
        return all(err <= self.tol for err in self.errors.values())

    @property
    def worst(self):
        """The item with the largest error."""
        return max(self.errors, key=self.errors.get)

    def __str__(self):
        status = "passed" if self.passed else "FAILED"
        items = ", ".join(f"{key} {err:.1e}" for key, err in self.errors.items())
        return (f"{self.what}: rel_error({self.names[0]}, {self.names[1]}) <= {self.tol:.0e} "
                f"{status}: {items}")

    def raise_if_failed(self):
        """Raise ``GradcheckError`` naming the worst item unless every item passed."""
        if not self.passed:
            worst = self.worst
            over = [key for key, err in self.errors.items() if err > self.tol]
            raise GradcheckError(self, (
                f"{self.what}: {worst}: rel_error({self.names[0]}, {self.names[1]}) = "
                f"{self.errors[worst]:.2e} > {self.tol:.0e} ({len(over)} of {len(self.errors)} "
                f"over: {', '.join(over[:6])})"))
        return self
