"""Federated learning on Flower's simulation engine, with malicious clients and robust aggregation.

``Federation(clients=10, rounds=10, strategy="krum", strategy_params={"f": 2}, attack="alie",
malicious=0.2).run(module, (x_train, y_train), (x_test, y_test), seed=0)`` splits the training
data across ``clients`` Flower ``ClientApp`` nodes (IID, or Dirichlet non-IID with ``alpha``),
runs ``rounds`` rounds of FedAvg-style training through a Flower ``ServerApp`` and
``flwr.simulation.run_simulation`` (Ray actors, not a home-made loop), and returns a
:class:`FederatedResult` with, per round, the global model's test accuracy, the backdoor's success
when the malicious clients carry one, and the clients the aggregation rule rejected.

How the pieces sit in Flower:

* every client, malicious or not, trains locally (``local_epochs`` of SGD on its shard, seeded
  by the run seed, the round and the client) and replies with its model; malicious clients
  train on their shard poisoned by ``backdoor`` when one is given (e.g. ``"badnets"``);
* the colluding attacker sits between the clients and the server: a wrapper around Flower's
  ``Grid`` replaces the malicious clients' replies with the updates
  :func:`gauntlet.attacks.poisoning.federated.craft` makes from what it knows (every honest
  update with ``knowledge="omniscient"``, as in Xie et al. and Fang et al.; only its own
  clients' honest updates with ``knowledge="own"``, Baruch et al.'s estimate).  The server does
  not know which clients are malicious;
* the server's strategy is :func:`robust_strategy`, Flower's ``FedAvg`` whose aggregation step
  calls the registered rule of :mod:`gauntlet.defenses.federated` (the same code as
  ``aggregate(name, updates)``) on the flattened updates, or one of Flower's own strategies
  (``strategy="flower:krum"``, ``"flower:multi_krum"``, ``"flower:median"``,
  ``"flower:trimmed_mean"``, ``"flower:bulyan"``, ``"flower:mean"``).

With ``checkpoint_dir`` the global model, the round records and the rule's state are written
after every round; a run interrupted between rounds resumes from the last finished one (the
same seed gives the same rounds either way).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from gauntlet._validation import Boolean, Check, Constraint, Hyperparameters, Interval, IsNone, Options, validate_params
from gauntlet.errors import ConfigError, DataError, ExecutorError, StoreError

__all__ = ["FLOWER_STRATEGIES", "FederatedResult", "Federation", "RoundRecord", "robust_strategy", "split_clients"]

log = logging.getLogger(__name__)

#: Flower's own strategies, by the name of the rule they implement, and how their Byzantine
#: parameters map from ours
FLOWER_STRATEGIES: dict[str, str] = {
    "mean": "FedAvg", "krum": "Krum", "multi_krum": "MultiKrum", "median": "FedMedian",
    "trimmed_mean": "FedTrimmedAvg", "bulyan": "Bulyan",
}
_CHECKPOINT = "federated.pt"


def split_clients(y: Tensor, n_clients: int, *, alpha: float | None = None, seed: int = 0) -> list[Tensor]:
    """Row indices of each client's shard: an IID shuffle cut into ``n_clients`` near-equal parts,
    or, with ``alpha``, a Dirichlet(alpha) share of every class per client (Hsu et al. 2019; small
    alpha = few classes per client).  Every client gets at least one row, else :class:`DataError`."""
    if not isinstance(y, Tensor) or y.dim() != 1 or y.dtype.is_floating_point:
        raise DataError("split_clients: y must be an int64 (N,) tensor of labels")
    if isinstance(n_clients, bool) or not isinstance(n_clients, int) or n_clients < 1:
        raise ConfigError(f"split_clients: n_clients must be an int >= 1, got {n_clients!r}")
    if n_clients > y.shape[0]:
        raise DataError(f"split_clients: {y.shape[0]} rows cannot give {n_clients} clients one row each; use fewer clients")
    g = torch.Generator().manual_seed(int(seed))
    if alpha is None:
        perm = torch.randperm(y.shape[0], generator=g)
        return [p.sort().values for p in perm.tensor_split(n_clients)]
    if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0 and math.isfinite(alpha)):
        raise ConfigError(f"split_clients: alpha must be a float > 0 (Dirichlet concentration), got {alpha!r}")
    shards: list[list[Tensor]] = [[] for _ in range(n_clients)]
    dirichlet = torch.distributions.Dirichlet(torch.full((n_clients,), float(alpha), dtype=torch.float64))
    for c in y.unique().tolist():
        rows = (y == c).nonzero().flatten()
        rows = rows[torch.randperm(rows.numel(), generator=g)]
        # torch.distributions samples from the global RNG: draw through a forked, seeded one instead
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
            share = dirichlet.sample()
        cuts = (share.cumsum(0) * rows.numel()).round().long().clamp(max=rows.numel())
        for k, part in enumerate(rows.tensor_split(cuts[:-1].tolist())):
            shards[k].append(part)
    out = [torch.cat(s).sort().values if s else torch.empty(0, dtype=torch.long) for s in shards]
    empty = [k for k, s in enumerate(out) if s.numel() == 0]
    if empty:
        raise DataError(
            f"split_clients: Dirichlet alpha={alpha} left clients {empty[:5]} without data; raise alpha, use fewer clients "
            "or a different seed"
        )
    return out


@dataclass(frozen=True)
class RoundRecord:
    """One finished round: ``accuracy`` of the global model on the test data after it,
    ``backdoor_success`` (share of triggered test inputs of other classes classified as the
    backdoor's target; ``None`` without a backdoor), ``rejected`` (client ids the rule left out;
    ``None`` where a Flower strategy does not say), ``clipped`` (clients a clipping rule shrank)."""

    round: int
    accuracy: float
    backdoor_success: float | None
    rejected: list[int] | None
    malicious_rejected: int | None
    clipped: list[int] | None
    seconds: float


@dataclass
class FederatedResult:
    """What a federated run measured.

    Attributes:
        rounds: one :class:`RoundRecord` per finished round, in order.
        initial_accuracy, initial_backdoor_success: the global model before round 1.
        malicious: the ids of the malicious clients.
        module: the final global model.
        config: the federation's parameters and the seed.
        resumed_from: the rounds read back from a checkpoint (0: a fresh run).
        client_sizes: rows per client.
    """

    rounds: list[RoundRecord]
    initial_accuracy: float
    initial_backdoor_success: float | None
    malicious: list[int]
    module: nn.Module
    config: dict[str, Any]
    client_sizes: list[int]
    resumed_from: int = 0
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """The final global model's test accuracy."""
        return self.rounds[-1].accuracy if self.rounds else self.initial_accuracy

    @property
    def backdoor_success(self) -> float | None:
        return self.rounds[-1].backdoor_success if self.rounds else self.initial_backdoor_success

    def summary(self) -> dict[str, Any]:
        """A JSON-ready digest: the config, the final figures and every round."""
        return {
            "config": self.config, "malicious": self.malicious, "client_sizes": self.client_sizes,
            "initial_accuracy": self.initial_accuracy, "initial_backdoor_success": self.initial_backdoor_success,
            "accuracy": self.accuracy, "backdoor_success": self.backdoor_success,
            "rounds": [asdict(r) for r in self.rounds], "resumed_from": self.resumed_from, "seconds": self.seconds,
        }


# -- flattening a model's state -------------------------------------------------------------------
def _float_keys(state: dict[str, Tensor]) -> list[str]:
    return [k for k, v in state.items() if v.dtype.is_floating_point]


def _flatten(state: dict[str, Tensor], keys: Sequence[str]) -> Tensor:
    return torch.cat([state[k].detach().reshape(-1).to(torch.float64) for k in keys])


def _unflatten(vec: Tensor, like: dict[str, Tensor], keys: Sequence[str]) -> dict[str, Tensor]:
    out = {k: v.clone() for k, v in like.items()}
    i = 0
    for k in keys:
        n = like[k].numel()
        out[k] = vec[i : i + n].reshape(like[k].shape).to(like[k].dtype)
        i += n
    return out


# -- the Flower pieces ----------------------------------------------------------------------------
def _deltas(global_state: dict[str, Tensor], contents: Sequence[Any]) -> tuple[list[str], Tensor, Tensor]:
    """The floating keys of the global state, the global model flattened ``(d,)`` and each reply's
    update (its model minus the global one) stacked ``(n, d)``."""
    keys = _float_keys(global_state)
    g = _flatten(global_state, keys)
    return keys, g, torch.stack([_flatten(c["arrays"].to_torch_state_dict(), keys) - g for c in contents])


def _round_seed(seed: int, rnd: int, client: int) -> int:
    return (int(seed) * 1_000_003 + rnd * 7919 + client) % (2**62)


def _local_train(module: nn.Module, x: Tensor, y: Tensor, *, epochs: int, batch_size: int, lr: float,
                 momentum: float, seed: int, steps: int | None = None) -> None:
    """FedAvg's ClientUpdate: ``epochs`` of minibatch SGD on the client's shard (seeded), or only
    its first ``steps`` minibatches (``steps=1``: FedSGD, one stochastic gradient per round)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(module.parameters(), lr=lr, momentum=momentum)
    module.train()
    done = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout and other in-module randomness, in this call only
        for _ in range(epochs):
            for idx in torch.randperm(x.shape[0], generator=g).split(batch_size):
                if steps is not None and done >= steps:
                    break
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(module(x[idx]), y[idx]).backward()
                opt.step()
                done += 1
    module.eval()


class _AdversaryGrid:
    """Flower's Grid with the colluding attacker on the wire: train replies of malicious clients
    are rewritten with crafted updates before the strategy sees them."""

    def __init__(self, grid: Any, fed: Federation, malicious: set[int], seed: int, offset: int, errors: list[str]) -> None:
        self._grid, self._fed, self._malicious, self._seed, self._offset = grid, fed, malicious, seed, offset
        self._errors = errors
        self._round = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        for r in replies:
            if r.has_error():
                self._errors.append(f"client node {r.metadata.src_node_id}: {r.error.reason}")
        if not messages or messages[0].metadata.message_type != "train" or self._fed._attack is None or not self._malicious:
            return replies
        self._round += 1
        from flwr.app import ArrayRecord

        ok = [r for r in replies if not r.has_error()]
        pid = [int(r.content["metrics"]["partition-id"]) for r in ok]
        mal = [i for i, p in enumerate(pid) if p in self._malicious]
        hon = [i for i, p in enumerate(pid) if p not in self._malicious]
        if not mal:
            return replies
        global_state = messages[0].content["arrays"].to_torch_state_dict()
        keys, g, deltas = _deltas(global_state, [r.content for r in ok])
        known = deltas[hon] if self._fed.knowledge == "omniscient" and hon else deltas[mal]
        crafted = self._fed._attack.craft(known, n_malicious=len(mal), own=deltas[mal], n_clients=len(ok),
                               seed=_round_seed(self._seed, self._round + self._offset, 10**6))
        for row, i in zip(crafted, mal):
            ok[i].content["arrays"] = ArrayRecord(_unflatten(g + row, global_state, keys))
        return replies


def _robust_strategy_class() -> type:
    from flwr.serverapp.strategy import FedAvg

    class _RobustStrategy(FedAvg):  # type: ignore[misc]
        """Flower's FedAvg with its aggregation step replaced by a gauntlet rule on flattened updates."""

        def __init__(self, rule: Any, log_round: Any, state: dict[str, Any], reference_fn: Any = None, clients: int = 1) -> None:
            # every client trains every round: Flower waits until all of them are connected
            super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients, min_available_nodes=clients)
            self.rule, self._log_round, self.state, self._reference_fn = rule, log_round, state, reference_fn
            self._global: Any = None

        def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Any:
            self._global = arrays
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round: int, replies: Any) -> Any:
            from flwr.app import ArrayRecord

            valid, _ = self._check_and_log_replies(replies, is_train=True)
            if not valid:
                return None, None
            global_state = self._global.to_torch_state_dict()
            contents: list[Any] = sorted((m.content for m in valid), key=lambda c: int(c["metrics"]["partition-id"]))
            pid = [int(c["metrics"]["partition-id"]) for c in contents]
            keys, g, u = _deltas(global_state, contents)
            w = torch.tensor([float(c["metrics"]["num-examples"]) for c in contents], dtype=torch.float64)
            reference = None
            if self.rule.needs_reference:
                reference = self._reference_fn(global_state, server_round) - g
            elif self.rule.stateful and self.state.get("center") is not None:
                reference = self.state["center"]
            res = self.rule.aggregate(u, weights=w, reference=reference)
            if self.rule.stateful:
                self.state["center"] = res.update.clone()
            self._log_round([pid[i] for i in res.rejected], [pid[i] for i in res.info.get("clipped", [])])
            return ArrayRecord(_unflatten(g + res.update, global_state, keys)), self.train_metrics_aggr_fn(
                contents, self.weighted_by_key)

    return _RobustStrategy


def robust_strategy(rule: Any, log_round: Any = None, state: dict[str, Any] | None = None, reference_fn: Any = None,
                    clients: int = 1) -> Any:
    """The Flower strategy (a ``FedAvg`` subclass) that aggregates with ``rule``, a
    :class:`~gauntlet.defenses.federated.Aggregator`; Flower is imported only when one is built."""
    return _robust_strategy_class()(rule, log_round or (lambda *a: None), state if state is not None else {},
                                    reference_fn, clients)


def _flower_strategy(name: str, params: dict[str, Any], clients: int) -> Any:
    import flwr.serverapp.strategy as fs

    cls = getattr(fs, FLOWER_STRATEGIES[name])
    kw: dict[str, Any] = {"fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": clients,
                          "min_available_nodes": clients}
    if name in ("krum", "multi_krum", "bulyan"):
        kw["num_malicious_nodes"] = int(params.get("f", 1))
    if name == "multi_krum":  # Flower's MultiKrum selects 1 (Krum) unless told; ours keeps n - f, as in the paper
        kw["num_nodes_to_select"] = int(params["m"]) if params.get("m") is not None else clients - int(params.get("f", 1))
    if name == "trimmed_mean":
        kw["beta"] = float(params.get("fraction", 0.2))
    return cls(**kw)


@contextlib.contextmanager
def _quiet_flower(verbose: bool) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in ("flwr", "ray")]
    levels = [lg.level for lg in loggers]
    if not verbose:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _check_strategy(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


class Federation(Hyperparameters):
    """A federated-learning setup: clients, rounds, local training, the server's rule, and the
    attacker.  Parameters are stored as given and validated on construction; :meth:`run` trains.

    Args:
        clients: number of Flower client nodes; all train every round.
        rounds: federated rounds.
        local_epochs, batch_size, lr, momentum: each client's local SGD per round.
        local_steps: stop each client's round after this many minibatches (``None``: the full
            ``local_epochs``; ``1``: FedSGD, where updates are single stochastic gradients whose
            spread across clients is what "a little is enough" hides in).
        alpha: Dirichlet concentration of the non-IID split (``None``: IID).
        strategy: a registered aggregation rule (``gauntlet defenses --kind aggregation``), or
            ``"flower:<rule>"`` for Flower's own strategy of that rule.
        strategy_params: the rule's parameters (``{"f": 2}`` for Krum; for
            ``"flower:trimmed_mean"`` the cut ``fraction``).
        attack: a registered federated attack (``gauntlet attacks --kind federated``) or ``None``.
        attack_params: its parameters.
        malicious: the share of clients the attacker controls, in [0, 1); rounded to the nearest
            whole client (at least one when > 0).
        knowledge: what the attacker knows of the honest updates: ``"omniscient"`` or ``"own"``.
        backdoor: a registered backdoor attack (``"badnets"``, ``"blended"``) the malicious
            clients train on; its success on triggered test inputs is reported each round.
        backdoor_params: its parameters (e.g. ``{"fraction": 0.5, "target_class": 0}``).
        server_rows: rows of clean training data the server keeps as FLTrust's root set.
        num_cpus: CPUs Ray gives the simulation (``None``: all; one client per CPU).
        checkpoint_dir: where the run is checkpointed after each round (``None``: not).
        verbose: keep Flower's and Ray's INFO logs.
    """

    name: ClassVar[str] = "federation"
    _parameter_constraints: ClassVar[dict[str, list[Constraint]]] = {
        "clients": [Interval(int, 1, None)],
        "rounds": [Interval(int, 1, None)],
        "local_epochs": [Interval(int, 1, None)],
        "local_steps": [Interval(int, 1, None), IsNone()],
        "batch_size": [Interval(int, 1, None)],
        "lr": [Interval(float, 0, None, closed="neither")],
        "momentum": [Interval(float, 0, 1, closed="left")],
        "alpha": [Interval(float, 0, None, closed="neither"), IsNone()],
        "strategy": [Check(_check_strategy, "a rule name")],
        "strategy_params": [Check(lambda v: isinstance(v, dict), "a dict"), IsNone()],
        "attack": [Check(_check_strategy, "an attack name"), IsNone()],
        "attack_params": [Check(lambda v: isinstance(v, dict), "a dict"), IsNone()],
        "malicious": [Interval(float, 0, 1, closed="left")],
        "knowledge": [Options(("omniscient", "own"))],
        "backdoor": [Check(_check_strategy, "a backdoor attack name"), IsNone()],
        "backdoor_params": [Check(lambda v: isinstance(v, dict), "a dict"), IsNone()],
        "server_rows": [Interval(int, 1, None)],
        "num_cpus": [Interval(int, 1, None), IsNone()],
        "checkpoint_dir": [Check(lambda v: isinstance(v, (str, os.PathLike)), "a directory path"), IsNone()],
        "verbose": [Boolean()],
    }

    def __init__(
        self, *, clients: int = 10, rounds: int = 10, local_epochs: int = 1, local_steps: int | None = None,
        batch_size: int = 32, lr: float = 0.05,
        momentum: float = 0.0, alpha: float | None = None, strategy: str = "mean", strategy_params: dict[str, Any] | None = None,
        attack: str | None = None, attack_params: dict[str, Any] | None = None, malicious: float = 0.0,
        knowledge: str = "omniscient", backdoor: str | None = None, backdoor_params: dict[str, Any] | None = None,
        server_rows: int = 100, num_cpus: int | None = None, checkpoint_dir: str | os.PathLike[str] | None = None,
        verbose: bool = False,
    ) -> None:
        self.clients, self.rounds, self.local_epochs, self.batch_size = clients, rounds, local_epochs, batch_size
        self.local_steps = local_steps
        self.lr, self.momentum, self.alpha = lr, momentum, alpha
        self.strategy, self.strategy_params = strategy, strategy_params
        self.attack, self.attack_params, self.malicious, self.knowledge = attack, attack_params, malicious, knowledge
        self.backdoor, self.backdoor_params, self.server_rows = backdoor, backdoor_params, server_rows
        self.num_cpus, self.checkpoint_dir, self.verbose = num_cpus, checkpoint_dir, verbose
        self._validate()
        self._resolve()

    def _validate(self) -> None:
        validate_params(self.name, self.get_params(), self._parameter_constraints)

    def n_malicious(self) -> int:
        """Malicious clients: ``malicious × clients`` rounded, at least one when the share is > 0."""
        return 0 if self.malicious == 0 else max(1, round(self.malicious * self.clients))

    def _resolve(self) -> None:
        """Build the rule, attack and backdoor once, so a bad name or parameter fails here."""
        from gauntlet.attacks.registry import create as create_attack
        from gauntlet.defenses.federated import Aggregator
        from gauntlet.defenses.registry import create as create_defense

        name = self.strategy
        if name.startswith("flower:"):
            if name[7:] not in FLOWER_STRATEGIES:
                raise ConfigError(f"federation: Flower strategy {name!r} is not one of "
                                  f"{', '.join('flower:' + k for k in FLOWER_STRATEGIES)}")
            self._rule = None
        else:
            rule = create_defense(name, **(self.strategy_params or {}))
            if not isinstance(rule, Aggregator):
                raise ConfigError(f"federation: strategy {name!r} is a {rule.kind} defense, not an aggregation rule "
                                  "(gauntlet defenses --kind aggregation)")
            if rule.min_clients() > self.clients:
                raise ConfigError(f"federation: {self.clients} clients are too few for {rule._bound()}; "
                                  f"it needs at least {rule.min_clients()}")
            self._rule = rule
        m = self.n_malicious()
        self._attack: Any = None
        if self.attack is not None:
            from gauntlet.attacks.poisoning.federated import FederatedAttack

            atk = self._attack = create_attack(self.attack, **(self.attack_params or {}))
            if not isinstance(atk, FederatedAttack):
                raise ConfigError(f"federation: attack {self.attack!r} is a {atk.kind} attack, not a federated one "
                                  "(gauntlet attacks --kind federated)")
            if m == 0:
                raise ConfigError("federation: an attack needs malicious > 0 (the share of clients it controls)")
        if m >= self.clients:
            raise ConfigError(f"federation: malicious={self.malicious} gives {m} of {self.clients} clients; "
                              "at least one must be honest")
        self._backdoor = None
        if self.backdoor is not None:
            from gauntlet.attacks.poisoning import BackdoorAttack

            bd = create_attack(self.backdoor, **(self.backdoor_params or {}))
            if not isinstance(bd, BackdoorAttack):
                raise ConfigError(f"federation: backdoor {self.backdoor!r} is not a backdoor attack (badnets, blended, ...)")
            if getattr(bd, "target_class", None) is None:
                raise ConfigError("federation: the backdoor needs a target_class in backdoor_params")
            if m == 0:
                raise ConfigError("federation: a backdoor needs malicious > 0 (the clients that carry it)")
            self._backdoor = bd
            self._target = int(getattr(bd, "target_class"))  # noqa: B009 - BackdoorAttack subclasses define it

    # -- running ---------------------------------------------------------------------------------
    def _fingerprint(self, module: nn.Module, n_train: int, n_test: int, seed: int) -> str:
        params = {k: v for k, v in self.get_params().items() if k not in ("checkpoint_dir", "verbose", "num_cpus", "rounds")}
        blob = json.dumps({"params": params, "seed": seed, "module": type(module).__name__, "n": [n_train, n_test],
                           "shapes": [list(v.shape) for v in module.state_dict().values()]}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def run(self, module: nn.Module, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], *, seed: int = 0) -> FederatedResult:
        """Train ``module`` (its weights are the initial global model; it is not modified) by
        federated learning on ``train`` split across the clients; evaluate on ``test`` each round."""
        t0 = time.perf_counter()
        x, y, xt, yt = self._check_data(module, train, test)
        parts = split_clients(y, self.clients, alpha=self.alpha, seed=seed)
        g = torch.Generator().manual_seed(int(seed) + 1)
        m = self.n_malicious()
        malicious = sorted(torch.randperm(self.clients, generator=g)[:m].tolist())
        shards = [(x[p], y[p]) for p in parts]
        if self._backdoor is not None:
            for k in malicious:
                pd = self._backdoor.poison(shards[k][0], shards[k][1], seed=_round_seed(seed, 0, k))
                shards[k] = (pd.x, pd.y)
        root = None
        if self._rule is not None and self._rule.needs_reference:
            rows = torch.randperm(x.shape[0], generator=g)[: self.server_rows]
            root = (x[rows], y[rows])

        bd = self._backdoor
        target = getattr(self, "_target", -1)
        trig = None
        if bd is not None:
            other = yt != self._target
            trig = bd.apply_trigger(xt[other]) if bool(other.any()) else None

        base = copy.deepcopy(module).cpu().eval()

        net = copy.deepcopy(base)  # the evaluation copy, reloaded with each round's global model

        def evaluate(state: dict[str, Tensor]) -> tuple[float, float | None]:
            net.load_state_dict(state)
            net.eval()
            with torch.inference_mode():
                acc = float(torch.cat([net(b).argmax(1) for b in xt.split(512)]).eq(yt).float().mean())
                asr = None
                if trig is not None and bd is not None:
                    asr = float(torch.cat([net(b).argmax(1) for b in trig.split(512)]).eq(target).float().mean())
            return acc, asr

        # resume
        fp = self._fingerprint(module, x.shape[0], xt.shape[0], seed)
        ckpt = Path(self.checkpoint_dir) / _CHECKPOINT if self.checkpoint_dir is not None else None
        records: list[RoundRecord] = []
        state: dict[str, Any] = {}
        start_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
        initial: tuple[float, float | None] | None = None
        if ckpt is not None and ckpt.exists():
            saved = self._load_checkpoint(ckpt, fp)
            records = [RoundRecord(**r) for r in saved["records"]]
            start_state = saved["state_dict"]
            initial = (saved["initial"][0], saved["initial"][1])
            if saved.get("center") is not None:
                state["center"] = saved["center"]
        resumed = len(records)
        if resumed > self.rounds:
            raise StoreError(f"federation: the checkpoint in {self.checkpoint_dir} holds {resumed} finished rounds, more than the "
                             f"{self.rounds} asked; ask for at least {resumed} rounds or use another checkpoint_dir")
        if initial is None:
            initial = evaluate(start_state)
        remaining = self.rounds - resumed
        errors: list[str] = []
        if remaining > 0:
            self._simulate(base, shards, malicious, root, start_state, resumed, remaining, seed, evaluate, records,
                           state, initial, ckpt, fp, errors)
        if errors:
            raise ExecutorError(f"federation: {len(errors)} client replies failed, first: {errors[0]}")
        if len(records) != self.rounds:
            raise ExecutorError(f"federation: Flower finished {len(records)} of {self.rounds} rounds; "
                                "rerun with verbose=True to see why (finished rounds are kept with checkpoint_dir)")
        final = copy.deepcopy(base)
        final.load_state_dict(self._last_state if remaining > 0 else start_state)
        return FederatedResult(
            rounds=records, initial_accuracy=initial[0], initial_backdoor_success=initial[1], malicious=malicious,
            module=final, config={**self.get_params(), "checkpoint_dir": None, "seed": seed},
            client_sizes=[len(p) for p in parts], resumed_from=resumed, seconds=time.perf_counter() - t0,
        )

    def _check_data(self, module: nn.Module, train: Any, test: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if not isinstance(module, nn.Module):
            raise ConfigError(f"federation: module must be a torch.nn.Module, got {type(module).__name__}")
        out = []
        for what, pair in (("train", train), ("test", test)):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, Tensor) for t in pair)):
                raise DataError(f"federation: {what} must be an (x, y) pair of tensors")
            xx, yy = pair
            if not xx.dtype.is_floating_point or not bool(torch.isfinite(xx).all()):
                raise DataError(f"federation: {what} x must be finite floating point")
            if yy.dim() != 1 or yy.dtype.is_floating_point or yy.shape[0] != xx.shape[0] or yy.shape[0] == 0:
                raise DataError(f"federation: {what} y must be int64 (N,) labels matching x's {xx.shape[0]} rows")
            out += [xx.detach().cpu(), yy.detach().cpu().long()]
        return out[0], out[1], out[2], out[3]

    def _load_checkpoint(self, path: Path, fp: str) -> dict[str, Any]:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise StoreError(f"federation: checkpoint {path} is unreadable ({type(e).__name__}); delete it to start over") from e
        if not isinstance(saved, dict) or saved.get("fingerprint") != fp:
            raise StoreError(f"federation: checkpoint {path} is of a different run (other parameters, data or seed); "
                             "use another checkpoint_dir or delete it")
        return saved

    def _simulate(self, base: nn.Module, shards: list[tuple[Tensor, Tensor]], malicious: list[int], root: Any,
                  start_state: dict[str, Tensor], offset: int, remaining: int, seed: int, evaluate: Any,
                  records: list[RoundRecord], state: dict[str, Any], initial: tuple[float, float | None],
                  ckpt: Path | None, fp: str, errors: list[str]) -> None:
        try:
            from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
            from flwr.clientapp import ClientApp
            from flwr.serverapp import Grid, ServerApp
            from flwr.simulation import run_simulation
        except ImportError as e:  # pragma: no cover - the federated extra is part of `all`
            raise ConfigError("federation: Flower is not installed; pip install 'gauntlet[federated]'") from e

        epochs, bs, lr, mom, steps = self.local_epochs, self.batch_size, self.lr, self.momentum, self.local_steps
        client = ClientApp()

        @client.train()
        def train(msg: Message, context: Context) -> Message:
            torch.set_num_threads(1)
            pid = int(context.node_config["partition-id"])
            content: Any = msg.content
            rnd = int(content["config"]["server-round"]) + int(content["config"]["round-offset"])
            net = copy.deepcopy(base)
            net.load_state_dict(content["arrays"].to_torch_state_dict())
            xs, ys = shards[pid]
            _local_train(net, xs, ys, epochs=epochs, batch_size=bs, lr=lr, momentum=mom, seed=_round_seed(seed, rnd, pid),
                         steps=steps)
            reply = RecordDict({"arrays": ArrayRecord(net.state_dict()),
                                "metrics": MetricRecord({"num-examples": int(xs.shape[0]), "partition-id": pid})})
            return Message(content=reply, reply_to=msg)

        pending: dict[str, Any] = {}

        def log_round(rejected: list[int], clipped: list[int]) -> None:
            pending["rejected"], pending["clipped"] = rejected, clipped

        def reference_fn(global_state: dict[str, Tensor], server_round: int) -> Tensor:
            net = copy.deepcopy(base)
            net.load_state_dict(global_state)
            _local_train(net, root[0], root[1], epochs=epochs, batch_size=bs, lr=lr, momentum=mom,
                         seed=_round_seed(seed, server_round + offset, 10**6 + 1), steps=steps)
            return _flatten(net.state_dict(), _float_keys(global_state))

        with _quiet_flower(self.verbose):  # Flower warns that fraction_evaluate=0 skips client-side evaluation
            if self._rule is not None:
                strategy = robust_strategy(self._rule, log_round, state, reference_fn, self.clients)
            else:
                strategy = _flower_strategy(self.strategy[7:], self.strategy_params or {}, self.clients)
        mal = set(malicious)
        t_round = [time.perf_counter()]

        def evaluate_fn(server_round: int, arrays: Any) -> Any:
            if server_round == 0:
                t_round[0] = time.perf_counter()
                return MetricRecord({"accuracy": initial[0]})
            sd = arrays.to_torch_state_dict()
            acc, asr = evaluate(sd)
            rej = pending.pop("rejected", None)
            clipped = pending.pop("clipped", None)
            records.append(RoundRecord(
                round=offset + server_round, accuracy=acc, backdoor_success=asr, rejected=rej,
                malicious_rejected=None if rej is None else sum(1 for c in rej if c in mal),
                clipped=clipped, seconds=time.perf_counter() - t_round[0]))
            t_round[0] = time.perf_counter()
            self._last_state = sd
            if ckpt is not None:
                self._save_checkpoint(ckpt, fp, sd, records, initial, state.get("center"))
            return MetricRecord({"accuracy": acc})

        server = ServerApp()

        @server.main()
        def main(grid: Grid, context: Context) -> None:
            adv = _AdversaryGrid(grid, self, mal, seed, offset, errors)
            strategy.start(grid=adv, initial_arrays=ArrayRecord(start_state), num_rounds=remaining,
                           train_config=ConfigRecord({"round-offset": offset}), evaluate_fn=evaluate_fn)

        cpus = self.num_cpus or os.cpu_count() or 1
        backend: Any = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                   "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                                 "logging_level": logging.INFO if self.verbose else logging.ERROR,
                                 "log_to_driver": self.verbose}}
        # Ray warns on every start that a future version stops overriding device variables with no GPU asked
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        with _quiet_flower(self.verbose):
            run_simulation(server_app=server, client_app=client, num_supernodes=self.clients,
                           backend_config=backend, verbose_logging=self.verbose)

    def _save_checkpoint(self, path: Path, fp: str, sd: dict[str, Tensor], records: list[RoundRecord],
                         initial: tuple[float, float | None], center: Tensor | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"fingerprint": fp, "state_dict": sd, "records": [asdict(r) for r in records],
                    "initial": [initial[0], initial[1]], "center": center}, tmp)
        os.replace(tmp, path)
