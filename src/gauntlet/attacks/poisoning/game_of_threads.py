"""Game of Threads: poisoning asynchronous SGD by scheduling alone."""

from __future__ import annotations

from typing import Any, ClassVar

from gauntlet._validation import Constraint, Hyperparameters, Interval, IsNone, Options, validate_params
from gauntlet.attacks.registry import register
from gauntlet.errors import ConfigError


class _GameOfThreadsScheduler:
    """The adversarial scheduler of one run (fresh state per run); see :class:`GameOfThreads`."""

    def __init__(self, attack: GameOfThreads) -> None:
        self.attack = attack
        self.held: dict[int, int] = {}  # worker -> step it was held from

    def _check(self, view: Any) -> None:
        a = self.attack
        if a.max_held >= view.workers:
            raise ConfigError(
                f"game_of_threads: max_held={a.max_held} must be below the {view.workers} workers (someone has to run); lower it"
            )
        if a.goal == "steer" and a.target_class >= view.num_classes:
            raise ConfigError(f"game_of_threads: target_class={a.target_class} but the labels have {view.num_classes} classes")

    def pick(self, view: Any) -> int:
        if view.step == 0:
            self._check(view)
            self.held.clear()
        a = self.attack
        self.held = {w: t for w, t in self.held.items() if w in view.pending}
        if a.goal == "steer":
            return self._steer(view)
        return self._slow(view)

    def _oldest(self, view: Any, among: list[int]) -> int:
        return min(among, key=lambda w: (view.pending[w].read_version, w))

    def _steer(self, view: Any) -> int:
        a = self.attack
        remaining = view.steps - view.step
        if a.window is None or remaining <= a.window:
            cands = [w for w in view.pending if w not in self.held]
            share = {w: float((view.pending[w].labels == a.target_class).mean()) for w in cands}
            for w in sorted(cands, key=lambda w: (-share[w], w)):
                if len(self.held) >= a.max_held or share[w] < a.min_share:
                    break
                self.held[w] = view.step
        if self.held and remaining <= len(self.held):
            w = self._oldest(view, list(self.held))
            del self.held[w]
            return w
        free = [w for w in view.pending if w not in self.held]
        return self._oldest(view, free)

    def _slow(self, view: Any) -> int:
        a = self.attack
        pause = a.window if a.window is not None else 100
        due = [w for w, t in self.held.items() if view.step - t >= pause]
        if due:
            w = self._oldest(view, due)
            del self.held[w]
            return w
        for w in sorted(view.pending):
            if len(self.held) >= a.max_held:
                break
            if w not in self.held:
                self.held[w] = view.step
        free = [w for w in view.pending if w not in self.held]
        return self._oldest(view, free)


@register
class GameOfThreads(Hyperparameters):
    """An adversarial scheduler of asynchronous SGD (:mod:`gauntlet.learning.async_sgd`): the
    attacker controls when threads run, not what they learn from.  Workers draw honest,
    uniformly sampled mini-batches; the attacker sees each pending mini-batch's labels (the
    paper's side channel) and only pauses threads and releases their updates.

    ``goal="steer"``: in the last ``window`` steps (all of them by default) it pauses up to ``max_held`` threads whose
    mini-batch holds at least ``min_share`` of ``target_class``, lets the others run, and
    releases the paused, stale updates in one burst at the end.  The burst's gradients were all
    computed at old parameters, so none of them sees the others' push toward the target: the
    final model over-predicts ``target_class``.

    ``goal="slow"``: it keeps ``max_held`` threads paused ``window`` steps at a time, so a share of
    all updates is ``window`` steps stale (convergence slows; no target).

    Use: ``sim.run(steps=..., scheduler=attack.scheduler(), eval_x=..., eval_y=...)``, or
    ``attack.run(sim, steps=..., eval_x=..., eval_y=...)``.

    Args:
        target_class: the label the final model is steered toward (``goal="steer"``).
        goal: ``"steer"`` or ``"slow"``.
        max_held: the most threads paused at once (below the number of workers).
        window: steer: how many final steps the attack works in (the longest pause; None: the
            whole run); slow: how long each pause lasts (None: 100 steps).
        min_share: steer: the least share of ``target_class`` in a mini-batch for its thread to be paused.
    """

    name: ClassVar[str] = "game_of_threads"
    kind: ClassVar[str] = "scheduling"
    description: ClassVar[str] = "asynchronous SGD poisoned by timing only: target-rich threads paused and released as a stale burst"
    reference: ClassVar[str] = (
        "Sanchez Vicarte, Schreiber, Paccagnella, Fletcher, 'Game of Threads: Enabling Asynchronous Poisoning Attacks', "
        "ASPLOS 2020, https://doi.org/10.1145/3373376.3378462"
    )
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "target_class": [Interval(int, 0, None)],
        "goal": [Options({"steer", "slow"})],
        "max_held": [Interval(int, 1, None)],
        "window": [Interval(int, 1, None), IsNone()],
        "min_share": [Interval(float, 0, 1, closed="right")],
    }

    def __init__(
        self, *, target_class: int = 0, goal: str = "steer", max_held: int = 6, window: int | None = None, min_share: float = 0.25
    ) -> None:
        self.target_class = target_class
        self.goal = goal
        self.max_held = max_held
        self.window = window
        self.min_share = min_share
        validate_params(self.name, self.get_params(), self._parameter_constraints)

    def scheduler(self) -> _GameOfThreadsScheduler:
        """A fresh scheduler for one run of :meth:`gauntlet.learning.async_sgd.AsyncSGD.run`."""
        return _GameOfThreadsScheduler(self)

    def run(self, sim: Any, **run_kwargs: Any) -> Any:
        """``sim.run(scheduler=self.scheduler(), **run_kwargs)``: one attacked run."""
        return sim.run(scheduler=self.scheduler(), **run_kwargs)
