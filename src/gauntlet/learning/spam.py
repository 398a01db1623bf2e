"""An online spam filter and a seeded synthetic mail generator: the learner the boiling-frog attack drifts.

Mail is text of tokens from three Zipf-weighted vocabularies: ham words (``h17``), spam words
(``s3``) and neutral words (``n250``).  A ham message mixes ham and neutral words, a spam message
spam and neutral words (``spam_share`` of its tokens).  With ``drift`` the ham topics move: the
ham vocabulary a round draws from slides by ``drift`` of its size per round (benign drift, what a
defense must tolerate).

:class:`OnlineSpamFilter` is scikit-learn's ``SGDClassifier`` (logistic loss) on
``HashingVectorizer`` features, updated once per round with ``partial_fit`` on that round's
labelled mail.  :func:`run_stream` runs the rounds: each round ``per_round`` messages arrive
(``spam_rate`` of them real spam, labelled spam by users), an attacker may send a share of the
round's mail (labelled ham: its messages are delivered and not reported), a defense may refuse the
round's update, and after every round the filter is measured on held-out real spam (acceptance:
classified ham) and held-out ham of the current topics (false positives).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from gauntlet.errors import ConfigError

__all__ = ["MailGenerator", "OnlineSpamFilter", "StreamResult", "run_stream"]

HAM, SPAM = 0, 1


def _zipf(n: int, s: float = 1.1) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


class MailGenerator:
    """Seeded synthetic mail.  ``ham(n, round=r)``, ``spam(n)`` and ``mix(n, spam_fraction)``
    return lists of messages (space-separated tokens)."""

    def __init__(self, *, ham_words: int = 400, spam_words: int = 300, neutral_words: int = 600, length: int = 30,
                 spam_share: float = 0.5, ham_share: float = 0.5, drift: float = 0.0, topic_words: int = 150,
                 seed: int = 0) -> None:
        for name, v in (("ham_words", ham_words), ("spam_words", spam_words), ("neutral_words", neutral_words),
                        ("length", length), ("topic_words", topic_words)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"MailGenerator: {name} must be an int >= 1, got {v!r}")
        for name, f in (("spam_share", spam_share), ("ham_share", ham_share)):
            if not 0 < f <= 1:
                raise ConfigError(f"MailGenerator: {name} must be in (0, 1], got {f!r}")
        if not 0 <= drift < 1 or topic_words > ham_words:
            raise ConfigError("MailGenerator: drift must be in [0, 1) and topic_words <= ham_words")
        self.ham_words, self.spam_words, self.neutral_words = ham_words, spam_words, neutral_words
        self.length, self.spam_share, self.ham_share = length, spam_share, ham_share
        self.drift, self.topic_words = drift, topic_words
        self.rng = np.random.default_rng(seed)
        self._p_spam = _zipf(spam_words)
        self._p_neutral = _zipf(neutral_words)
        self._p_topic = _zipf(topic_words)

    def _words(self, prefix: str, n: int, p: np.ndarray, offset: int = 0, modulo: int | None = None) -> list[str]:
        idx = self.rng.choice(len(p), size=n, p=p) + offset
        if modulo is not None:
            idx = idx % modulo
        return [f"{prefix}{i}" for i in idx]

    def _ham_tokens(self, k: int, rnd: int) -> list[str]:
        offset = round(self.drift * self.topic_words * rnd)
        return self._words("h", k, self._p_topic, offset, self.ham_words)

    def message(self, kind: str, *, rnd: int = 0, spam_fraction: float | None = None) -> str:
        """One message: ``"ham"``, ``"spam"``, or ``"mix"`` (ham-like mail with ``spam_fraction`` of
        its distinctive words taken from the spam vocabulary: what the boiling frog sends)."""
        n = self.length
        if kind == "spam":
            k = self.rng.binomial(n, self.spam_share)
            toks = self._words("s", k, self._p_spam) + self._words("n", n - k, self._p_neutral)
        else:
            k = self.rng.binomial(n, self.ham_share)
            ks = 0 if kind == "ham" else self.rng.binomial(k, float(spam_fraction or 0.0))
            toks = self._ham_tokens(k - ks, rnd) + self._words("s", ks, self._p_spam) + self._words("n", n - k, self._p_neutral)
        self.rng.shuffle(toks)
        return " ".join(toks)

    def ham(self, n: int, *, rnd: int = 0) -> list[str]:
        return [self.message("ham", rnd=rnd) for _ in range(n)]

    def spam(self, n: int) -> list[str]:
        return [self.message("spam") for _ in range(n)]

    def mix(self, n: int, spam_fraction: float, *, rnd: int = 0) -> list[str]:
        return [self.message("mix", rnd=rnd, spam_fraction=spam_fraction) for _ in range(n)]


class OnlineSpamFilter:
    """``SGDClassifier(loss="log_loss")`` on ``HashingVectorizer`` features, updated by
    ``partial_fit``.  ``spam_probability(texts)``; ``acceptance(spam)`` (share classified ham);
    ``false_positives(ham)`` (share classified spam)."""

    def __init__(self, *, n_features: int = 2**18, alpha: float = 1e-4, eta0: float = 0.05, seed: int = 0) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer  # type: ignore[import-untyped]
        from sklearn.linear_model import SGDClassifier  # type: ignore[import-untyped]

        self.vectorizer = HashingVectorizer(n_features=n_features, alternate_sign=False, norm="l2", token_pattern=r"\S+")
        self.model = SGDClassifier(loss="log_loss", alpha=alpha, learning_rate="constant", eta0=eta0, random_state=seed)
        self.updates = 0

    def features(self, texts: list[str]) -> Any:
        return self.vectorizer.transform(texts)

    def update(self, texts: list[str], labels: np.ndarray) -> None:
        self.model.partial_fit(self.features(texts), labels, classes=np.array([HAM, SPAM]))
        self.updates += 1

    def spam_probability(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.predict_proba(self.features(texts))[:, 1])

    def acceptance(self, spam: list[str]) -> float:
        return float((self.spam_probability(spam) < 0.5).mean())

    def false_positives(self, ham: list[str]) -> float:
        return float((self.spam_probability(ham) >= 0.5).mean())

    def copy(self) -> OnlineSpamFilter:
        return copy.deepcopy(self)


class StreamAttacker(Protocol):
    """What :func:`run_stream` asks of an attacker (:class:`~gauntlet.attacks.poisoning.boiling_frog.BoilingFrog`)."""

    share: float

    def messages(self, gen: MailGenerator, n: int, rnd: int) -> list[str]: ...

    def spam_fraction_at(self, rnd: int) -> float: ...


class StreamDefense(Protocol):
    """What :func:`run_stream` asks of a defense (``gauntlet.defenses.online``): ``fit`` once on
    the trusted data and the initial filter, then ``accept`` decides each round's update."""

    def fit(self, flt: OnlineSpamFilter, trusted_ham: list[str], trusted_spam: list[str]) -> None: ...

    def accept(self, flt: OnlineSpamFilter, candidate: OnlineSpamFilter, texts: list[str], labels: np.ndarray) -> bool: ...


@dataclass
class StreamResult:
    """Per round (index 0 is the filter after its warm-up, before the attacked rounds): held-out spam
    acceptance, false positives on held-out ham of the round's topics, whether the defense refused the
    round's update; and the attacker's spam fraction per round."""

    acceptance: list[float]
    false_positives: list[float]
    refused: list[bool]
    attacker_spam_fraction: list[float]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def false_alarm_rate(self) -> float:
        """Share of the rounds (after warm-up) whose update the defense refused."""
        r = self.refused[1:]
        return sum(r) / len(r) if r else 0.0

    def first_round_above(self, level: float) -> int | None:
        return next((i for i, a in enumerate(self.acceptance) if a > level), None)


def run_stream(*, rounds: int = 30, per_round: int = 200, spam_rate: float = 0.2, warmup_rounds: int = 15,
               attacker: StreamAttacker | None = None, defense: StreamDefense | None = None, drift: float = 0.0,
               eval_size: int = 500, trusted_size: int = 200, seed: int = 0, **generator: Any) -> StreamResult:
    """Warm the filter up for ``warmup_rounds`` clean rounds, then run ``rounds`` rounds of
    ``per_round`` messages (``spam_rate`` real spam labelled spam, the attacker's ``share`` labelled
    ham, the rest ham of the round's topics); see the module docstring."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"run_stream: rounds must be an int >= 1, got {rounds!r}")
    if not 0 <= spam_rate < 1 or (attacker is not None and not 0 < attacker.share < 1 - spam_rate):
        raise ConfigError("run_stream: spam_rate must be in [0, 1) and the attacker's share in (0, 1 - spam_rate)")
    gen = MailGenerator(drift=drift, seed=seed, **generator)
    flt = OnlineSpamFilter(seed=seed)
    rng = np.random.default_rng(seed + 1)
    held_spam = gen.spam(eval_size)
    trusted_ham, trusted_spam = gen.ham(trusted_size), gen.spam(trusted_size)

    def batch(rnd: int, attacked: bool) -> tuple[list[str], np.ndarray, float]:
        n_spam = round(spam_rate * per_round)
        n_att = round(attacker.share * per_round) if attacked and attacker is not None else 0
        texts = gen.spam(n_spam) + gen.ham(per_round - n_spam - n_att, rnd=rnd)
        labels = [SPAM] * n_spam + [HAM] * (per_round - n_spam - n_att)
        frac = 0.0
        if n_att:
            assert attacker is not None
            texts += attacker.messages(gen, n_att, rnd)
            labels += [HAM] * n_att
            frac = float(attacker.spam_fraction_at(rnd))
        order = rng.permutation(len(texts))
        return [texts[i] for i in order], np.asarray(labels)[order], frac

    for w in range(warmup_rounds):
        t, y, _ = batch(0, False)
        flt.update(t, y)
    if defense is not None:
        defense.fit(flt, trusted_ham, trusted_spam)
    res = StreamResult([flt.acceptance(held_spam)], [flt.false_positives(gen.ham(eval_size, rnd=0))], [False], [0.0])
    for rnd in range(1, rounds + 1):
        texts, labels, frac = batch(rnd, True)
        cand = flt.copy()
        cand.update(texts, labels)
        ok = defense is None or defense.accept(flt, cand, texts, labels)
        if ok:
            flt = cand
        res.acceptance.append(flt.acceptance(held_spam))
        res.false_positives.append(flt.false_positives(gen.ham(eval_size, rnd=rnd)))
        res.refused.append(not ok)
        res.attacker_spam_fraction.append(frac if attacker is not None else 0.0)
    return res
