"""An audit of a model served over HTTP (``model: {url: ...}``): a black box attacked with what its
answers allow, through a server that throttles, with the numbers of the in-process model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import gauntlet as gt
from gauntlet.audit import load_spec, run_audit
from gauntlet.audit.report import comparable, validate_report
from gauntlet.audit.runner import prepare
from gauntlet.audit.studies.evasion import UnitRecord, run_unit, sections_of
from gauntlet.errors import ConfigError
from tests.test_remote_model import Answer, net_respond, ok, serve  # noqa: F401  (serve is a fixture)


def url_spec(url: str, **over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "model": {"url": url, "name": "digits-remote", "num_classes": 10, "input_shape": [1, 8, 8],
                  "remote": {"retry_seed": 0, "backoff_base": 0.001, "max_batch_size": 16}},
        "data": {"name": "digits", "n": 24, "seed": 0},
        "threats": [{"norm": "linf", "eps": [0.1, 0.2]}],
        "attacks": [{"name": "square", "max_queries": 60}],
        "batch_size": 12,
    }
    s.update(over)
    return s


def test_an_audit_through_a_server_that_answers_429_every_third_call_equals_the_in_process_numbers(
    serve: Any, digits_net: torch.nn.Module
) -> None:
    throttle = {"on": True}
    plain = net_respond(digits_net)

    def respond(k: int, inputs: list[Any]) -> Answer:
        if throttle["on"] and k % 3 == 0:
            return 429, {"Retry-After": "0"}, b'{"error": "slow down"}'
        return plain(k, inputs)

    server = serve(respond)
    spec = load_spec(url_spec(server.url))
    throttled = run_audit(spec, store=None)
    validate_report(throttled.report)
    assert server.calls > 3 and throttled.exit_code == 0
    assert throttled.report["model"]["url"] == server.url and "path" not in throttled.report["model"]
    assert throttled.report["model"]["capabilities"] == ["labels", "scores"]

    throttle["on"] = False  # the same server, never throttling: the same audit, the same numbers
    assert comparable(run_audit(spec, store=None).report) == comparable(throttled.report)

    # the same units, run in process on the network itself, give the same rows
    local = gt.models.TorchModel(digits_net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 8, 8))
    prep = prepare(spec)
    x, y = prep.env.x, prep.env.y
    clean = (local.predict(x) == y).tolist()
    records = [run_unit(local, x, y, t.unit) for t in prep.tasks]
    assert all(isinstance(r, UnitRecord) for r in records)
    expected = sections_of(records, clean)
    got = throttled.report
    assert got["clean_accuracy"] == pytest.approx(sum(clean) / len(clean))
    assert [(r["attack"], r["eps"], r["robust_count"]) for r in got["results"]] == [
        (r["attack"], r["eps"], r["robust_count"]) for r in expected["results"]
    ]


def test_a_labels_only_url_model_is_refused_before_anything_runs_with_the_attack_to_use(serve: Any, digits_net: torch.nn.Module, tmp_path: Path) -> None:
    server = serve(net_respond(digits_net, key="labels"))
    spec = load_spec(url_spec(server.url, model={"url": server.url, "output": "labels", "num_classes": 10, "input_shape": [1, 8, 8]}))
    with pytest.raises(gt.errors.CapabilityError) as info:
        run_audit(spec, store=f"sqlite:///{tmp_path / 'g.db'}")
    assert str(info.value).startswith("attacks[0]: square needs scores") and "\n" not in str(info.value)
    assert not (tmp_path / "g.db").exists()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"url": "http://127.0.0.1:9/p", "num_classes": 10}, "model: a url model needs input_shape"),
        ({"url": "http://127.0.0.1:9/p", "path": "m.pt", "num_classes": 10, "input_shape": [1, 8, 8]},
         "model: give exactly one of path (a model file) or url"),
        ({"url": "http://127.0.0.1:9/p", "num_classes": 10, "input_shape": [1, 8, 8], "arch": "digits_cnn"},
         "model: arch only apply to a model file"),
        ({"path": "m.pt", "remote": {"max_batch_size": 8}}, "model: output and remote only apply to a url model"),
        ({"path": "m.pt", "output": "labels"}, "model: output and remote only apply to a url model"),
    ],
)
def test_a_broken_url_model_block_is_a_one_line_config_error(model: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_spec({**url_spec("http://127.0.0.1:9/p"), "model": model})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_an_unknown_remote_option_and_an_unreachable_server_are_one_line_errors(tmp_path: Path) -> None:
    bad = load_spec(url_spec("http://127.0.0.1:9/p", model={
        "url": "http://127.0.0.1:9/p", "num_classes": 10, "input_shape": [1, 8, 8], "remote": {"max_batchsize": 8}}))
    with pytest.raises(ConfigError, match=r"^model\.remote: .*max_batchsize") as info:
        run_audit(bad, store=None)
    assert "\n" not in str(info.value)
    # port 9 (discard) on loopback: nothing listens; found on the first query, before the store is touched
    down = load_spec(url_spec("http://127.0.0.1:9/p", model={
        "url": "http://127.0.0.1:9/p", "num_classes": 10, "input_shape": [1, 8, 8], "remote": {"max_retries": 0}}))
    with pytest.raises(gt.errors.RemoteError) as err:
        run_audit(down, store=f"sqlite:///{tmp_path / 'g.db'}")
    assert "\n" not in str(err.value) and not (tmp_path / "g.db").exists()
    _ = ok  # the server helpers come from the RemoteModel tests
