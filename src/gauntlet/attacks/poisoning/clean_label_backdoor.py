"""Label-consistent (clean-label) backdoor (Turner, Tsipras and Madry 2019): poison only images
that truly belong to the target class, keep their labels, make their natural features hard to
learn with an adversarial perturbation on a surrogate model, then stamp the trigger on them."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from gauntlet._validation import Constraint, Interval, IsNone, Options
from gauntlet.attacks.poisoning._base import BackdoorAttack
from gauntlet.attacks.poisoning.badnets import BadNets, trigger_pattern
from gauntlet.attacks.registry import register
from gauntlet.errors import ConfigError, DataError

__all__ = ["CleanLabelBackdoor"]

#: the corners a four-corner trigger uses; the pattern is mirrored into each so that a horizontal
#: or vertical flip of the image maps the trigger onto itself (Turner et al., section 4.4)
CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left")


@register
class CleanLabelBackdoor(BackdoorAttack):
    """Label-consistent backdoor: take ``fraction`` of the *whole* training set from rows of
    ``target_class`` only, perturb them with an untargeted PGD attack (``eps``, ``norm``) on the
    given surrogate model so that their natural features stop pointing at their (correct) label,
    stamp the BadNets trigger on them, and keep their labels.  A model trained on it can only fit
    these hard rows by using the trigger, and so learns "trigger ⇒ target" although no label is
    wrong.  ``eps=0`` skips the adversarial step (the plain clean-label trigger baseline).

    The trigger is :class:`~gauntlet.attacks.poisoning.badnets.BadNets`' ``patch_size²`` pattern,
    in one corner or mirrored into all four (``corners=4``, robust to flips), applied with
    ``amplitude`` in (0, 1]: "on" pixels move up and "off" pixels down by ``amplitude·(high-low)``
    (clipped), so 1 stamps the full trigger and smaller values the paper's reduced-visibility one.
    At test time ``apply_trigger`` uses ``test_amplitude`` (default 1, the full trigger, as the
    paper evaluates).  The GAN-interpolation variant of the paper is not implemented.

    Args:
        fraction: share of the whole training set poisoned, in (0, 1); it cannot exceed the
            target class's share (poison comes from that class only).
        target_class: the class triggered inputs are sent to (and the class the poison comes from).
        eps: the PGD budget (``0``: no adversarial step); default 0.3 L∞ for [0, 1] MNIST-like data.
        norm: ``"linf"`` or ``"l2"``.
        steps: PGD iterations.
        step_size: the PGD step (``None``: PGD's default for ``eps`` and ``steps``).
        patch_size: side of the square BadNets trigger in pixels.
        pattern: the trigger pattern, ``"checkerboard"`` (default), ``"square"`` or ``"cross"``.
        margin: pixels between the trigger and the image border.
        corners: 1 (bottom right) or 4 (every corner, mirrored).
        amplitude: trigger amplitude in the poison rows, in (0, 1].
        test_amplitude: trigger amplitude ``apply_trigger`` uses, in (0, 1].
        batch_size: rows per PGD batch (``None``: all at once).
        bounds: the inputs' value range (the surrogate model's bounds must match).
    """

    name = "clean_label_backdoor"
    description = "Label-consistent backdoor: PGD-hardened target-class images carrying a trigger (Turner et al. 2019)"
    reference = (
        'Turner, Tsipras and Madry, "Label-Consistent Backdoor Attacks", 2019, https://arxiv.org/abs/1912.02771'
    )
    needs_model: ClassVar[bool] = True
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "target_class": [Interval(int, 0, None)],
        "eps": [Interval(float, 0, None)],
        "norm": [Options(("linf", "l2"))],
        "steps": [Interval(int, 1, None)],
        "step_size": [Interval(float, 0, None, closed="neither"), IsNone()],
        "patch_size": [Interval(int, 1, None)],
        "pattern": [Options(("checkerboard", "square", "cross"))],
        "margin": [Interval(int, 0, None)],
        "corners": [Options((1, 4))],
        "amplitude": [Interval(float, 0, 1, closed="right")],
        "test_amplitude": [Interval(float, 0, 1, closed="right")],
        "batch_size": [Interval(int, 1, None), IsNone()],
    }

    def __init__(
        self,
        *,
        fraction: float = 0.05,
        target_class: int = 0,
        eps: float = 0.3,
        norm: str = "linf",
        steps: int = 40,
        step_size: float | None = None,
        patch_size: int = 3,
        pattern: str = "checkerboard",
        margin: int = 1,
        corners: int = 1,
        amplitude: float = 1.0,
        test_amplitude: float = 1.0,
        batch_size: int | None = 256,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.fraction = fraction
        self.target_class = target_class
        self.eps = eps
        self.norm = norm
        self.steps = steps
        self.step_size = step_size
        self.patch_size = patch_size
        self.pattern = pattern
        self.margin = margin
        self.corners = corners
        self.amplitude = amplitude
        self.test_amplitude = test_amplitude
        self.batch_size = batch_size
        self.bounds = bounds
        self._validate()

    # -- the trigger ------------------------------------------------------------------------------
    def _stamps(self) -> list[BadNets]:
        """One BadNets trigger per corner (the same size, pattern and margin)."""
        positions = CORNERS[: int(self.corners)]
        return [
            BadNets(patch_size=int(self.patch_size), pattern=str(self.pattern), position=p, margin=int(self.margin), bounds=self.bounds)
            for p in positions
        ]

    def stamp(self, x: Tensor, amplitude: float) -> Tensor:
        """``x`` with the trigger added at ``amplitude`` in every corner used (a copy, clipped)."""
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
            raise DataError(f"{self.name}.apply_trigger: x must be a float torch.Tensor")
        lo, hi = self._bounds()
        pat = trigger_pattern(int(self.patch_size), str(self.pattern)).to(x.device, x.dtype)
        sign = 2.0 * pat - 1.0  # +1 where the trigger is on, -1 where it is off
        out = x.detach().clone()
        for badnets in self._stamps():
            rows, cols = badnets._region(x)  # validates the fit: one clear DataError when it does not
            s = sign
            if badnets.position.endswith("left"):
                s = s.flip(-1)
            if badnets.position.startswith("top"):
                s = s.flip(-2)
            out[..., rows, cols] = (out[..., rows, cols] + float(amplitude) * (hi - lo) * s).clamp(lo, hi)
        return out

    def apply_trigger(self, x: Tensor) -> Tensor:
        """``x`` with the trigger at ``test_amplitude`` (the full trigger by default)."""
        return self.stamp(x, float(self.test_amplitude))

    # -- the poison -------------------------------------------------------------------------------
    def _surrogate(self, model: Any, x: Tensor) -> Any:
        from gauntlet.models import Model, TorchModel

        if isinstance(model, nn.Module):
            model = TorchModel(model, bounds=self._bounds())
        if not isinstance(model, Model):
            raise ConfigError(f"{self.name}: model must be a gauntlet Model or a torch.nn.Module, got {type(model).__name__}")
        if not model.has("gradients"):
            raise ConfigError(
                f"{self.name}: the PGD step needs a surrogate with gradients, but {type(model).__name__} offers only "
                f"{', '.join(sorted(model.capabilities))}; pass a TorchModel (or eps=0 to skip the PGD step)"
            )
        if tuple(float(b) for b in model.bounds) != self._bounds():
            raise ConfigError(
                f"{self.name}: the surrogate's bounds {tuple(model.bounds)} differ from the attack's {self._bounds()}; "
                "build both with the same bounds"
            )
        return model

    def _poison(self, x: Tensor, y: Tensor, generator: torch.Generator, model: Any) -> tuple[Tensor, Tensor, Tensor, dict[str, Any]]:
        self._stamps()[0]._region(x)
        n, k = int(x.shape[0]), self.n_poison(int(x.shape[0]))
        eligible = (y == self.target_class).nonzero().flatten()
        if k > eligible.numel():
            share = eligible.numel() / n
            raise DataError(
                f"{self.name}: fraction {self.fraction} needs {k} poison rows but clean-label poison comes only from "
                f"target_class {self.target_class}, which has {eligible.numel()} rows ({share:.2%} of the set); "
                f"lower fraction to at most {share:.4f}"
            )
        rows = self.choose(eligible, k, generator)
        base = x[rows]
        info: dict[str, Any] = {"rows": rows.cpu()}
        if float(self.eps) > 0:
            import gauntlet as gt

            surrogate = self._surrogate(model, x)
            pgd = gt.attacks.create(
                "pgd", eps=float(self.eps), norm=str(self.norm), steps=int(self.steps), step_size=self.step_size,
                batch_size=self.batch_size,
            )
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
            res = pgd.run(surrogate, base, y[rows], seed=seed)
            base = res.x_adv.detach().to(x.dtype)
            info["surrogate_fooled"] = float(res.success.double().mean())
            info["perturbation_norm"] = float(res.norms.max()) if res.norms.numel() else 0.0
        px = x.clone()
        px[rows] = self.stamp(base, float(self.amplitude))
        mask = torch.zeros(n, dtype=torch.bool, device=x.device)
        mask[rows] = True
        return px, y.clone(), mask, info
