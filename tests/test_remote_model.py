"""RemoteModel: a model behind HTTP, served here by a stdlib server on 127.0.0.1 in a thread.

The wire protocol (docs/remote.md): POST {"inputs": [...]} -> {"scores": [[...]]} or {"labels": [...]}.
"""

from __future__ import annotations

import email.utils
import gc
import json
import logging
import pickle
import random
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch
from torch import nn

import gauntlet as gt
from gauntlet.errors import CapabilityError, ConfigError, DataError, ModelLoadError, RemoteError
from gauntlet.models.remote import RemoteModel, parse_retry_after

KEY = "sk-test-SECRET-0123456789abcdef"
SHAPE = (1, 8, 8)

Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Seen:
    headers: dict[str, str]
    n: int
    port: int
    at: float


@dataclass
class Server:
    """What the server received; ``respond(call_number, inputs)`` makes each answer."""

    respond: Callable[[int, list[Any]], Answer]
    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def calls(self) -> int:
        return len(self.seen)


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so that connection pooling shows

        def log_message(self, *args: Any) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            # headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm holds the
            # body until the client's delayed ACK (~40 ms per request on Linux)
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            inputs = json.loads(raw)["inputs"]
            with server.lock:
                server.seen.append(Seen(dict(self.headers), len(inputs), self.client_address[1], time.monotonic()))
                k = len(server.seen)
            status, headers, body = server.respond(k, inputs)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture()
def serve() -> Iterator[Callable[[Callable[[int, list[Any]], Answer]], Server]]:
    """Start servers on 127.0.0.1 (port 0) in threads; all are shut down after the test."""
    running: list[ThreadingHTTPServer] = []

    def start(respond: Callable[[int, list[Any]], Answer]) -> Server:
        state = Server(respond)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        running.append(httpd)
        state.url = f"http://127.0.0.1:{httpd.server_address[1]}/predict"
        return state

    yield start
    for httpd in running:
        httpd.shutdown()
        httpd.server_close()


def ok(payload: Any) -> Answer:
    return 200, {}, json.dumps(payload).encode()


def net_respond(net: nn.Module, key: str = "scores") -> Callable[[int, list[Any]], Answer]:
    """The in-process network behind the wire: float32 inputs in, its logits (or argmax) out."""

    def respond(k: int, inputs: list[Any]) -> Answer:
        x = torch.tensor(inputs, dtype=torch.float32)
        with torch.no_grad():
            z = net(x)
        return ok({"scores": z.tolist()} if key == "scores" else {"labels": z.argmax(1).tolist()})

    return respond


def remote(url: str, **kw: Any) -> RemoteModel:
    kw.setdefault("num_classes", 10)
    kw.setdefault("input_shape", list(SHAPE))
    kw.setdefault("retry_seed", 0)
    return RemoteModel(url, **kw)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    """A small seeded MLP on 8×8 digits (untrained: no training time; the wire is what is tested)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return module.eval().requires_grad_(False)


@pytest.fixture()
def local(net: nn.Module) -> gt.models.TorchModel:
    return gt.models.TorchModel(net, bounds=(0.0, 1.0), num_classes=10, input_shape=SHAPE)


def one_line_error(exc_info: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg.startswith("RemoteModel"), msg
    return msg


# -- the happy path -------------------------------------------------------------------------------
def test_scores_equal_the_in_process_model_and_queries_count_per_sample(serve, net, digits_batch, local):
    x, _ = digits_batch
    srv = serve(net_respond(net))
    with remote(srv.url) as model:
        assert isinstance(model, gt.models.RemoteModel) and isinstance(model, gt.models.Model)
        assert model.capabilities == frozenset({"scores", "labels"}) and model.output == "logits"
        assert model.queries == 0 and srv.calls == 0  # nothing is sent at construction
        got = model.scores(x)
        assert got.dtype == torch.float32 and got.shape == (32, 10) and not got.requires_grad
        torch.testing.assert_close(got, local.scores(x).detach(), atol=1e-5, rtol=0)
        assert torch.equal(model.predict(x), local.predict(x))
        assert model.queries == 64 and model.grad_evals == 0 and model.requests == srv.calls == 2
        # inputs that require grad are detached, never differentiated through
        assert not model.scores(x.clone().requires_grad_(True)).requires_grad


def test_labels_mode_returns_labels_and_offers_no_scores(serve, net, digits_batch, local):
    x, _ = digits_batch
    srv = serve(net_respond(net, key="labels"))
    model = remote(srv.url, output="labels")
    assert model.capabilities == frozenset({"labels"}) and model.output == "labels"
    pred = model.predict(x)
    assert pred.dtype == torch.int64 and torch.equal(pred, local.predict(x))
    assert model.queries == 32
    with pytest.raises(CapabilityError, match="labels only"):
        model.scores(x)
    model.close()


def test_a_big_batch_is_split_into_posts_answered_in_order_over_one_pooled_connection(serve, net, digits_batch, local):
    x, _ = digits_batch
    srv = serve(net_respond(net))
    model = remote(srv.url, max_batch_size=5)
    got = model.scores(x[:12])
    assert [s.n for s in srv.seen] == [5, 5, 2]
    torch.testing.assert_close(got, local.scores(x[:12]).detach(), atol=1e-5, rtol=0)
    assert model.queries == 12 and model.requests == 3
    assert len({s.port for s in srv.seen}) == 1  # keep-alive: one connection for all three POSTs
    model.close()


def test_an_empty_batch_sends_nothing(serve, net):
    srv = serve(net_respond(net))
    model = remote(srv.url)
    assert model.scores(torch.zeros(0, *SHAPE)).shape == (0, 10)
    assert srv.calls == 0


# -- retries, backoff, rate limit -----------------------------------------------------------------
def test_429_with_retry_after_on_every_third_call_is_obeyed_and_gives_identical_results(serve, net, digits_batch):
    x, _ = digits_batch
    plain = serve(net_respond(net))
    answer = net_respond(net)
    busy = 0

    def flaky(k: int, inputs: list[Any]) -> Answer:
        nonlocal busy
        if k % 3 == 0:
            busy += 1
            return 429, {"Retry-After": "0.02"}, b'{"error": "slow down"}'
        return answer(k, inputs)

    srv = serve(flaky)
    # a backoff of 5 s per retry with max_total_wait=1 would fail: only Retry-After can pass
    model = remote(srv.url, max_batch_size=4, backoff_base=5.0, max_total_wait=1.0)
    t0 = time.monotonic()
    got = model.scores(x)
    elapsed = time.monotonic() - t0
    assert torch.equal(got, remote(plain.url, max_batch_size=4).scores(x))
    assert busy > 0 and model.retries == busy and model.requests == srv.calls == 8 + busy
    assert model.retry_wait == pytest.approx(0.02 * busy) and elapsed >= 0.02 * busy
    assert model.queries == 32


def test_503_without_retry_after_backs_off_exponentially_with_seeded_jitter(serve, net, digits_batch):
    x, _ = digits_batch
    answer = net_respond(net)
    srv = serve(lambda k, inputs: (503, {}, b"down") if k <= 2 else answer(k, inputs))
    state = random.getstate()
    model = remote(srv.url, backoff_base=0.01, retry_seed=7)
    model.scores(x[:2])
    assert random.getstate() == state  # the jitter has its own generator
    assert model.retries == 2
    twin = remote(srv.url, backoff_base=0.01, retry_seed=7)
    expected = [twin._backoff(0), twin._backoff(1)]
    assert model.retry_wait == pytest.approx(sum(expected))
    assert 0.005 <= expected[0] < 0.01 and 0.01 <= expected[1] < 0.02  # base·2^k times [0.5, 1)
    capped = remote(srv.url, backoff_base=1.0, backoff_max=2.0)
    assert all(1.0 <= capped._backoff(k) < 2.0 for k in range(3, 8))


def test_retries_run_out_with_a_one_line_error(serve):
    srv = serve(lambda k, inputs: (503, {"Retry-After": "0"}, b"maintenance"))
    model = remote(srv.url, max_retries=2)
    with pytest.raises(RemoteError) as info:
        model.scores(torch.zeros(1, *SHAPE))
    msg = one_line_error(info)
    assert "still answered HTTP 503 Service Unavailable after 3 tries and 0 s of waiting; raise max_retries (now 2)" in msg
    assert srv.calls == 3


def test_a_retry_after_beyond_max_total_wait_fails_at_once(serve):
    srv = serve(lambda k, inputs: (429, {"Retry-After": "30"}, b""))
    model = remote(srv.url, max_total_wait=1.0)
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as info:
        model.scores(torch.zeros(1, *SHAPE))
    assert time.monotonic() - t0 < 10.0 and srv.calls == 1  # did not sleep the 30 s
    msg = one_line_error(info)
    assert "HTTP 429 Too Many Requests after 1 try and 0 s of waiting; Retry-After asked for 30 s more, beyond " in msg
    assert "max_total_wait=1 s; raise max_total_wait, lower max_requests_per_second, or try later" in msg


def test_retry_after_reads_seconds_and_http_dates():
    now = 1_700_000_000.0
    assert parse_retry_after("2") == 2.0 and parse_retry_after(" 0.5 ") == 0.5 and parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None and parse_retry_after("nan") is None
    later = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(later, now=now) == pytest.approx(90.0)
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now=now) == 0.0


def test_503_with_an_http_date_retry_after_is_obeyed(serve, net):
    answer = net_respond(net)
    # an HTTP-date has one-second resolution: a date already past means "now"
    srv = serve(lambda k, inputs: (503, {"Retry-After": email.utils.formatdate(usegmt=True)}, b"") if k == 1 else answer(k, inputs))
    model = remote(srv.url, backoff_base=10.0, max_total_wait=2.0)
    model.scores(torch.zeros(1, *SHAPE))
    assert model.retries == 1 and model.retry_wait <= 1.0


def test_the_rate_limit_spaces_requests(serve, net):
    srv = serve(net_respond(net))
    model = remote(srv.url, max_batch_size=1, max_requests_per_second=20)
    t0 = time.monotonic()
    model.scores(torch.zeros(6, *SHAPE))
    elapsed = time.monotonic() - t0
    # burst 1: the first request goes at once and request k no earlier than k/20 s after it, so the
    # sixth starts 0.25 s after the first at the soonest (how long the sleeps were depends on the load)
    assert elapsed >= 0.24 and srv.calls == 6 and model.requests == 6
    fast = remote(srv.url, max_batch_size=1, max_requests_per_second=20, burst=6)
    t0 = time.monotonic()
    fast.scores(torch.zeros(6, *SHAPE))
    assert fast.rate_wait == 0.0


# -- the API key ------------------------------------------------------------------------------------
def test_the_api_key_is_sent_in_a_header_and_never_shown(serve, net, monkeypatch, caplog):
    monkeypatch.setenv("GAUNTLET_API_KEY", KEY)
    srv = serve(net_respond(net))
    model = remote(srv.url)
    model.scores(torch.zeros(2, *SHAPE))
    assert srv.seen[0].headers["Authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(model) and "$GAUNTLET_API_KEY set" in repr(model)
    assert KEY not in json.dumps(model.get_params()) and KEY.encode() not in pickle.dumps(model)

    monkeypatch.setenv("MY_KEY", KEY)
    custom = remote(srv.url, api_key_env="MY_KEY", api_key_header="X-API-Key", api_key_prefix="")
    custom.scores(torch.zeros(1, *SHAPE))
    assert srv.seen[-1].headers["X-API-Key"] == KEY and "Authorization" not in srv.seen[-1].headers

    # a server that echoes the header back in errors, after a retry (logged)
    def echo(k: int, inputs: list[Any]) -> Answer:
        seen = srv_echo.seen[-1].headers.get("Authorization", "")
        return (503, {"Retry-After": "0"}, seen.encode()) if k == 1 else (401, {}, f"bad key {seen}".encode())

    srv_echo = serve(echo)
    with caplog.at_level(logging.DEBUG), pytest.raises(RemoteError) as info:
        remote(srv_echo.url).scores(torch.zeros(1, *SHAPE))
    msg = one_line_error(info)
    assert "HTTP 401" in msg and "refused the API key from $GAUNTLET_API_KEY" in msg and "bad key Bearer ***" in msg
    text = "".join(traceback.format_exception(info.type, info.value, info.tb))
    assert KEY not in text and KEY not in repr(info.value) and KEY not in caplog.text  # httpx's logs included
    assert "RemoteModel: HTTP 503 Service Unavailable from" in caplog.text and "retry 1/5" in caplog.text

    # the key pasted into the URL as well: masked in the model's own repr, logs and errors
    caplog.clear()
    srv_echo.seen.clear()
    leaky = remote(srv_echo.url + f"?token={KEY}")
    with caplog.at_level(logging.INFO, logger="gauntlet"), pytest.raises(RemoteError) as info:
        leaky.scores(torch.zeros(1, *SHAPE))
    assert KEY not in repr(leaky) and KEY not in str(info.value) and "token=***" in str(info.value)
    assert "retry 1/5" in caplog.text and KEY not in caplog.text


def test_without_a_key_no_auth_header_goes_and_a_401_says_which_variable_to_set(serve, monkeypatch):
    monkeypatch.delenv("GAUNTLET_API_KEY", raising=False)
    srv = serve(lambda k, inputs: (401, {}, b'{"detail": "not authenticated"}'))
    model = remote(srv.url)
    assert "$GAUNTLET_API_KEY unset" in repr(model)
    with pytest.raises(RemoteError) as info:
        model.scores(torch.zeros(1, *SHAPE))
    assert "Authorization" not in srv.seen[0].headers
    assert "no API key was sent: set $GAUNTLET_API_KEY" in one_line_error(info)


def test_a_password_in_the_url_is_masked(serve, net):
    model = RemoteModel("http://user:hunter2@127.0.0.1:1/predict", num_classes=10, input_shape=SHAPE, max_retries=0)
    assert "hunter2" not in repr(model) and "user:***@" in repr(model)
    with pytest.raises(RemoteError) as info:
        model.scores(torch.zeros(1, *SHAPE))
    assert "hunter2" not in str(info.value)


# -- a bad server -------------------------------------------------------------------------------
def _scores(n: int, c: int = 10) -> list[list[float]]:
    return [[0.0] * c for _ in range(n)]


BAD_SCORES: dict[str, tuple[Callable[[int], Answer], str]] = {
    "http 500": (lambda n: (500, {}, b"Traceback: boom\n  in model.py"), "answered HTTP 500 Internal Server Error (body 'Traceback: boom in model.py'); the server failed: check its logs"),
    "http 404": (lambda n: (404, {}, b""), "HTTP 404 Not Found (body empty); check the URL's path"),
    "http 400": (lambda n: (400, {}, b"expected 3x32x32"), "body 'expected 3x32x32'); the server rejected the request: check input_shape [1, 8, 8]"),
    "http 413": (lambda n: (413, {}, b""), "lower max_batch_size (now 64)"),
    "redirect": (lambda n: (302, {"Location": "http://elsewhere/v2"}, b""), "redirects to 'http://elsewhere/v2': pass the final URL"),
    "not json": (lambda n: (200, {}, b"<html>oops</html>"), "is not JSON (Expecting value: line 1 column 1 (char 0); body '<html>oops</html>')"),
    "not an object": (lambda n: ok(_scores(n)), "is a JSON array, not an object; the server must answer {\"scores\": [[...], ...]}"),
    "no key": (lambda n: ok({"logits": _scores(n)}), "has no 'scores' key (keys: 'logits')"),
    "labels key": (lambda n: ok({"labels": [0] * n}), "it sent 'labels': pass output='labels'"),
    "ragged": (lambda n: ok({"scores": [[0.0] * 10, [0.0] * 9][:n]}), "'scores' is not a list of equal-length lists of numbers"),
    "strings": (lambda n: ok({"scores": [["a"] * 10] * n}), "'scores' is not a list of equal-length lists of numbers"),
    "1-d": (lambda n: ok({"scores": [0.0] * n}), "'scores' has shape (2,) for a batch of 2 inputs, not (2, 10) (labels? pass output='labels')"),
    "n mismatch": (lambda n: ok({"scores": _scores(n - 1)}), "1 rows of scores for a batch of 2 inputs; the server must answer one row per input"),
    "c mismatch": (lambda n: ok({"scores": _scores(n, 11)}), "11 scores per input but num_classes=10; pass num_classes=11 or fix the server"),
    "nan": (lambda n: (200, {}, json.dumps({"scores": [[float("nan")] * 10] * n}).encode()), "NaN or inf scores for 2 of 2 inputs"),
    "float32 overflow": (lambda n: ok({"scores": [[1e39] * 10] * n}), "NaN or inf scores for 2 of 2 inputs"),
}


@pytest.mark.parametrize("case", list(BAD_SCORES))
def test_a_bad_scores_server_gives_a_one_line_remote_error(serve, case):
    make, expected = BAD_SCORES[case]
    srv = serve(lambda k, inputs: make(len(inputs)))
    model = remote(srv.url, max_retries=0)
    with pytest.raises(RemoteError) as info:
        model.scores(torch.zeros(2, *SHAPE))
    assert isinstance(info.value, ModelLoadError)
    msg = one_line_error(info)
    assert expected in msg, msg
    assert model.queries == 2 and srv.calls == 1  # non-retryable: one POST


BAD_LABELS: dict[str, tuple[Callable[[int], Answer], str]] = {
    "out of range": (lambda n: ok({"labels": [0, 12][:n]}), "labels in [0, 12] but num_classes=10 allows [0, 9]"),
    "negative": (lambda n: ok({"labels": [-1, 0][:n]}), "labels in [-1, 0] but num_classes=10"),
    "not integers": (lambda n: ok({"labels": [0.5, 1][:n]}), "'labels' holds non-integer values"),
    "wrong length": (lambda n: ok({"labels": [1, 2, 3]}), "'labels' has shape (3,) for a batch of 2 inputs"),
    "scores key": (lambda n: ok({"scores": _scores(n)}), "has no 'labels' key (keys: 'scores'); it sent 'scores': pass output='scores'"),
    "nulls": (lambda n: ok({"labels": [None] * n}), "'labels' is not a list of numbers"),
}


@pytest.mark.parametrize("case", list(BAD_LABELS))
def test_a_bad_labels_server_gives_a_one_line_remote_error(serve, case):
    make, expected = BAD_LABELS[case]
    srv = serve(lambda k, inputs: make(len(inputs)))
    model = remote(srv.url, output="labels", max_retries=0)
    with pytest.raises(RemoteError) as info:
        model.predict(torch.zeros(2, *SHAPE))
    assert expected in one_line_error(info)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "url", [f"http://127.0.0.1:{_free_port()}/predict", "http://no-such-host.invalid/predict"], ids=["refused", "dns"]
)
def test_an_unreachable_host_is_a_one_line_error_after_the_retries(url):
    model = RemoteModel(url, num_classes=10, input_shape=SHAPE, max_retries=1, backoff_base=0.01, connect_timeout=2.0)
    with pytest.raises(RemoteError) as info:
        model.scores(torch.zeros(1, *SHAPE))
    msg = one_line_error(info)
    assert msg.startswith(f"RemoteModel: cannot connect to {url} (") and "after 2 tries" in msg
    assert "check the URL's host and port and that the server is running" in msg
    assert model.requests == 2


def test_a_server_that_does_not_answer_in_time_is_a_timeout_after_the_retries(serve, net):
    answer = net_respond(net)

    def slow(k: int, inputs: list[Any]) -> Answer:
        time.sleep(0.4)
        return answer(k, inputs)

    srv = serve(slow)
    model = remote(srv.url, read_timeout=0.1, max_retries=1, backoff_base=0.01)
    with pytest.raises(RemoteError) as info:
        model.scores(torch.zeros(1, *SHAPE))
    msg = one_line_error(info)
    assert "did not answer within read_timeout=0.1 s after 2 tries" in msg
    assert "raise read_timeout, lower max_batch_size (now 64), or raise max_retries (now 1)" in msg
    assert model.requests == 2


# -- bad arguments and bad inputs -------------------------------------------------------------------
BAD_ARGS: list[tuple[dict[str, Any], str]] = [
    ({"url": "ftp://host/predict"}, "url must be an http:// or https:// URL with a host"),
    ({"url": "localhost:8000/predict"}, "url must be an http:// or https:// URL"),
    ({"url": "http:///predict"}, "url must be an http:// or https:// URL with a host"),
    ({"url": "http://host:99999/"}, "url must be an http:// or https:// URL"),
    ({"url": "https://u:pw@"}, "got 'https://u:***@'"),
    ({"url": 42}, "url must be a string"),
    ({"num_classes": 1}, "parameter 'num_classes' must be an int >= 2, got 1"),
    ({"num_classes": None}, "parameter 'num_classes' must be an int >= 2, got None"),
    ({"input_shape": None}, "input_shape must be the per-sample shape as positive ints"),
    ({"input_shape": [0, 8]}, "input_shape must be the per-sample shape as positive ints"),
    ({"input_shape": "abc"}, "input_shape must be the per-sample shape as positive ints"),
    ({"bounds": [1.0, 0.0]}, "bounds must satisfy low < high"),
    ({"bounds": "01"}, "bounds must be a pair (low, high)"),
    ({"output": "probs"}, "parameter 'output' must be one of"),
    ({"max_batch_size": 0}, "parameter 'max_batch_size' must be an int >= 1"),
    ({"read_timeout": 0}, "parameter 'read_timeout' must be a finite number > 0"),
    ({"max_retries": -1}, "parameter 'max_retries' must be an int >= 0"),
    ({"max_requests_per_second": 0}, "parameter 'max_requests_per_second' must be a finite number > 0 or None"),
    ({"api_key_env": "MY-KEY"}, "api_key_env must name an environment variable"),
    ({"api_key_header": "Bad Header"}, "api_key_header must be an HTTP header name"),
    ({"headers": {"Authorization": "Bearer x"}}, "headers sets 'Authorization', which carries the API key"),
    ({"headers": {"X-A": "line\nbreak"}}, "headers must map HTTP header names to printable ASCII strings"),
]


@pytest.mark.parametrize(("kwargs", "expected"), BAD_ARGS, ids=[next(iter(k)) + str(i) for i, (k, _) in enumerate(BAD_ARGS)])
def test_bad_constructor_arguments_are_one_line_config_errors(kwargs, expected):
    args = {"url": "http://127.0.0.1:8000/predict", "num_classes": 10, "input_shape": [1, 8, 8], **kwargs}
    with pytest.raises(ConfigError) as info:
        RemoteModel(args.pop("url"), **args)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("RemoteModel") and expected in msg, msg


def test_a_key_a_header_cannot_carry_is_refused_without_showing_it(monkeypatch):
    monkeypatch.setenv("GAUNTLET_API_KEY", "abc\ndef-SECRET")
    with pytest.raises(ConfigError, match=r"the API key in \$GAUNTLET_API_KEY holds characters") as info:
        remote("http://127.0.0.1:8000/predict")
    assert "SECRET" not in str(info.value)


BAD_X: list[tuple[torch.Tensor, str]] = [
    (torch.zeros(2, *SHAPE, dtype=torch.float64), "x has dtype torch.float64 but the model expects torch.float32"),
    (torch.zeros(2, 1, 4, 4), "x has per-sample shape (1, 4, 4) but the model expects (1, 8, 8)"),
    (torch.full((2, *SHAPE), float("nan")), "x contains NaN or inf in 2 sample(s)"),
    (torch.full((2, *SHAPE), 2.0), "outside the model's bounds [0, 1]"),
    (torch.zeros(2, *SHAPE, dtype=torch.int64), "x must be a float tensor"),
]


@pytest.mark.parametrize(("x", "expected"), BAD_X, ids=["dtype", "shape", "nan", "range", "int"])
def test_bad_inputs_are_data_errors_and_nothing_is_sent(serve, net, x, expected):
    srv = serve(net_respond(net))
    model = remote(srv.url)
    with pytest.raises(DataError, match="^RemoteModel: ") as info:
        model.scores(x)
    assert expected in str(info.value) and srv.calls == 0


# -- attacks ------------------------------------------------------------------------------------
def test_a_gradient_attack_is_refused_with_the_capability_error(serve, net, digits_batch):
    x, y = digits_batch
    srv = serve(net_respond(net))
    model = remote(srv.url)
    with pytest.raises(CapabilityError, match="pgd needs gradients but RemoteModel offers only labels, scores"):
        gt.attacks.create("pgd", eps=0.1).run(model, x, y)
    assert srv.calls == 0


def test_square_against_the_remote_model_equals_square_in_process(serve, net, digits_batch, local):
    x, _ = digits_batch
    y = local.predict(x)  # every point starts correctly classified
    srv = serve(net_respond(net))
    model = remote(srv.url, max_batch_size=64)
    attack = gt.attacks.create("square", eps=0.3, max_queries=30)
    far = attack.run(model, x[:16], y[:16], seed=3)
    near = attack.run(local, x[:16], y[:16], seed=3)
    assert torch.equal(far.x_adv, near.x_adv) and torch.equal(far.success, near.success)
    assert far.queries == near.queries and far.grad_evals == 0
    assert far.success.any()  # the search did something
    assert model.requests == srv.calls


# -- life cycle ------------------------------------------------------------------------------------
def test_close_context_manager_finaliser_and_reopening(serve, net):
    srv = serve(net_respond(net))
    with remote(srv.url) as model:
        model.scores(torch.zeros(1, *SHAPE))
        client = model._client
        assert client is not None and not client.is_closed
    assert client.is_closed and model._client is None
    model.close()  # idempotent
    model.scores(torch.zeros(1, *SHAPE))  # a new pool
    assert model._client is not None and model._client is not client

    other = remote(srv.url)
    other.scores(torch.zeros(1, *SHAPE))
    pool, finalizer = other._client, other._finalizer
    assert pool is not None and finalizer is not None and finalizer.alive
    del other
    gc.collect()
    assert not finalizer.alive and pool.is_closed


def test_params_are_json_and_rebuild_the_model_and_pickling_rereads_the_key(serve, net, monkeypatch):
    monkeypatch.setenv("GAUNTLET_API_KEY", KEY)
    srv = serve(net_respond(net))
    model = remote(srv.url, bounds=(0, 1), max_batch_size=3, headers={"X-Tenant": "lab"})
    params = json.loads(json.dumps(model.get_params()))
    assert params["input_shape"] == [1, 8, 8] and params["bounds"] == [0.0, 1.0] and params["headers"] == {"X-Tenant": "lab"}
    again = RemoteModel(**params)
    assert repr(again) == repr(model) and again.get_params() == params
    model.scores(torch.zeros(1, *SHAPE))
    blob = pickle.dumps(model)
    assert KEY.encode() not in blob
    copy = pickle.loads(blob)
    copy.scores(torch.zeros(1, *SHAPE))
    assert srv.seen[-1].headers["Authorization"] == f"Bearer {KEY}" and srv.seen[-1].headers["X-Tenant"] == "lab"
    model.close()
    copy.close()
