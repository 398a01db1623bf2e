"""The boiling frog on an online spam filter (gauntlet.learning.spam): a seeded mail generator, the
attacker's drift schedule, held-out spam acceptance rising past 50% undefended, and the two online
defenses: drift detection stops it without false alarms on benign topic drift."""

from __future__ import annotations

import pytest

import gauntlet as gt
from gauntlet.errors import ConfigError
from gauntlet.learning.spam import MailGenerator, run_stream


def test_the_mail_generator_is_seeded_and_keeps_its_vocabularies_apart() -> None:
    a, b = MailGenerator(seed=3), MailGenerator(seed=3)
    assert a.ham(5) == b.ham(5) and a.spam(5) == b.spam(5)
    ham, spam = MailGenerator(seed=0).ham(50), MailGenerator(seed=0).spam(50)
    assert all(not t.startswith("s") for m in ham for t in m.split())
    spam_tokens = [t for m in spam for t in m.split()]
    assert 0.4 < sum(t.startswith("s") for t in spam_tokens) / len(spam_tokens) < 0.6  # spam_share 0.5
    mixed = [t for m in MailGenerator(seed=0).mix(200, 0.5) for t in m.split()]
    share = sum(t.startswith("s") for t in mixed) / sum(not t.startswith("n") for t in mixed)
    assert share == pytest.approx(0.5, abs=0.05)


def test_benign_drift_moves_the_ham_topics() -> None:
    gen = MailGenerator(drift=0.1, seed=0)
    early = {t for m in gen.ham(200, rnd=0) for t in m.split() if t.startswith("h")}
    late = {t for m in gen.ham(200, rnd=10) for t in m.split() if t.startswith("h")}
    assert len(early & late) < 0.2 * len(early)


def test_the_attackers_spam_fraction_grows_by_its_step_up_to_its_cap() -> None:
    frog = gt.attacks.create("boiling_frog", step=0.1, max_fraction=0.5, start=2)
    assert [frog.spam_fraction_at(r) for r in (0, 2, 3, 5, 20)] == pytest.approx([0, 0, 0.1, 0.3, 0.5])
    with pytest.raises(ConfigError, match=r"boiling_frog: parameter 'share' must be"):
        gt.attacks.create("boiling_frog", share=1.0)


@pytest.fixture(scope="module")
def undefended() -> object:
    return run_stream(rounds=30, attacker=gt.attacks.create("boiling_frog", share=0.25), seed=0)


def test_undefended_the_filter_goes_from_rejecting_spam_to_accepting_most_of_it(undefended) -> None:
    assert undefended.acceptance[0] < 0.05
    assert max(undefended.acceptance) > 0.5
    first = undefended.first_round_above(0.5)
    assert first is not None and first > 10  # slowly: no single round gives it away
    assert max(undefended.false_positives) < 0.05  # ham still gets through: nothing looks wrong


def test_drift_detection_stops_the_frog_and_tolerates_benign_topic_drift() -> None:
    attacked = run_stream(rounds=30, attacker=gt.attacks.create("boiling_frog", share=0.25),
                          defense=gt.defenses.create("drift_detection"), seed=0)
    assert max(attacked.acceptance) < 0.1 and sum(attacked.refused) > 20
    for drift in (0.0, 0.05):  # no drift, and ham topics sliding by 5% of the topic vocabulary per round
        benign = run_stream(rounds=30, defense=gt.defenses.create("drift_detection"), drift=drift, seed=0)
        assert benign.false_alarm_rate < 0.05, drift


def test_holdout_validation_stops_the_frog_against_its_fixed_baseline() -> None:
    attacked = run_stream(rounds=30, attacker=gt.attacks.create("boiling_frog", share=0.25),
                          defense=gt.defenses.create("holdout_validation", tolerance=0.05), seed=0)
    assert max(attacked.acceptance) < 0.1


def test_bad_stream_parameters_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"rounds must be an int >= 1"):
        run_stream(rounds=0)
    with pytest.raises(ConfigError, match=r"the attacker's share in \(0, 1 - spam_rate\)"):
        run_stream(spam_rate=0.5, attacker=gt.attacks.create("boiling_frog", share=0.6))
    with pytest.raises(ConfigError, match=r"MailGenerator: length must be an int >= 1"):
        MailGenerator(length=0)
