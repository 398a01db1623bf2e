"""AutoAttack: worst case per sample over its suite, each attack only on points still standing."""

from __future__ import annotations

import torch

import gauntlet as gt

SMALL = {"steps": 10, "n_target_classes": 3, "square_queries": 100}


def test_autoattack_is_at_least_as_strong_as_each_of_its_attacks(digits_model, digits_test) -> None:
    x, y = digits_test.x[:100], digits_test.y[:100]
    aa = gt.attacks.create("autoattack", eps=0.1, **SMALL).run(digits_model, x, y, seed=0)
    ce = gt.attacks.create("apgd_ce", eps=0.1, steps=10).run(digits_model, x, y, seed=0)
    pgd = gt.attacks.create("pgd", eps=0.1, steps=10).run(digits_model, x, y, seed=0)
    assert aa.robust_accuracy <= ce.robust_accuracy
    assert aa.robust_accuracy <= pgd.robust_accuracy
    # a strict bar on the undefended model
    big = gt.attacks.create("autoattack", eps=0.2, **SMALL).run(digits_model, x, y, seed=0)
    assert big.robust_accuracy <= 0.02


def test_breakdown_accounts_for_every_broken_point_once(digits_model, digits_test) -> None:
    x, y = digits_test.x[:100], digits_test.y[:100]
    res = gt.attacks.create("autoattack", eps=0.1, **SMALL).run(digits_model, x, y, seed=0)
    rows = res.info["breakdown"]["0.1"]
    assert list(rows) == ["apgd_ce", "apgd_t", "fab_t", "square"]
    broken_by_suite = sum(r["broken"] for r in rows.values())
    clean_wrong = int((~res.clean_correct).sum())
    assert broken_by_suite + clean_wrong == int(res.success.sum())
    # each attack runs only on the points its predecessors left standing
    names = list(rows)
    for a, b in zip(names, names[1:]):
        assert rows[b]["attacked"] == rows[a]["attacked"] - rows[a]["broken"]
    assert rows["apgd_ce"]["attacked"] == int(res.clean_correct.sum())


def test_autoattack_is_reproducible_from_one_seed(digits_model, digits_batch) -> None:
    x, y = digits_batch
    a = gt.attacks.create("autoattack", eps=0.08, **SMALL)
    r1, r2 = a.run(digits_model, x, y, seed=7), a.run(digits_model, x, y, seed=7)
    assert torch.equal(r1.x_adv, r2.x_adv) and torch.equal(r1.success, r2.success)


def test_suites_follow_the_reference_composition() -> None:
    std = gt.attacks.create("autoattack", eps=0.3).suite(10)
    assert [label for label, _, _ in std] == ["apgd_ce", "apgd_t", "fab_t", "square"]
    assert dict((lbl, p) for lbl, _, p in std)["apgd_t"]["n_target_classes"] == 9
    assert dict((lbl, p) for lbl, _, p in std)["square"]["max_queries"] == 5000
    plus = gt.attacks.create("autoattack", eps=0.3, version="plus").suite(10)
    assert [label for label, _, _ in plus] == ["apgd_ce", "apgd_dlr", "fab", "square", "apgd_t", "fab_t"]
    # with 3 classes targeted DLR is impossible and is left out
    assert "apgd_t" not in [label for label, _, _ in gt.attacks.create("autoattack", eps=0.3).suite(3)]
