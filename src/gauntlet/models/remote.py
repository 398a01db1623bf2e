"""Adapter for a model behind an HTTP endpoint (black box: scores and labels, or labels only).

The wire protocol (``docs/remote.md``): ``POST url`` with the JSON body ``{"inputs": [...]}``
(nested lists of shape ``(N, *input_shape)``); the server answers ``{"scores": [[...], ...]}``
(``(N, num_classes)``) or, with ``output="labels"``, ``{"labels": [...]}`` (``(N,)``).

Requests go through one pooled :class:`httpx.Client` per model, are split into POSTs of at most
``max_batch_size`` inputs, spaced by a client-side token bucket (``max_requests_per_second``)
and retried with exponential backoff and jitter on timeouts, broken connections and HTTP
429/502/503/504 (obeying ``Retry-After``).  ``httpx`` is imported on first use, so importing
:mod:`gauntlet.models` does not pay for it.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import logging
import math
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import torch
from torch import Tensor

from gauntlet._batch import check_input_batch
from gauntlet._validation import Boolean, Interval, IsNone, Options, parse_bounds, parse_shape, validate_params
from gauntlet.errors import ConfigError, RemoteError, first_line
from gauntlet.models.base import InputSpec, Model

if TYPE_CHECKING:
    import httpx
    from typing_extensions import Self

__all__ = ["RemoteModel"]

logger = logging.getLogger(__name__)

#: HTTP statuses that mean "try again later": retried with backoff, obeying ``Retry-After``
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
_OUTPUTS = ("scores", "logits", "probabilities", "labels")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP header name (RFC 9110 token)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DOCS = "docs/remote.md"


def _import_httpx() -> Any:
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx is a core dependency
        raise ConfigError("RemoteModel needs httpx, which is not installed; pip install 'httpx>=0.27'") from None
    return httpx


def _header_value_ok(value: str) -> bool:
    return all(32 <= ord(c) < 127 or c == "\t" for c in value)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number of seconds (fractions accepted) or
    an HTTP-date (``Wed, 21 Oct 2015 07:28:00 GMT``); ``None`` when absent or unreadable.  A date
    in the past, or a negative number, means 0."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # an HTTP-date is always GMT
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class RemoteModel(Model):
    """A classifier served over HTTP as a black-box model (never gradients).

    Every query POSTs ``{"inputs": x.tolist()}`` (in chunks of ``max_batch_size``) to ``url`` and
    reads ``{"scores": [[...]]}`` or ``{"labels": [...]}`` back; see ``docs/remote.md``.  Queries
    are counted one per sample, as for every model, however many POSTs and retries they take;
    ``requests``, ``retries``, ``retry_wait`` and ``rate_wait`` count the HTTP side.

    All arguments are plain JSON values, so a configuration file can pass them through.

    Args:
        url: the endpoint, ``http://`` or ``https://``.
        output: ``"scores"`` (logits; or the more precise ``"logits"`` / ``"probabilities"``)
            when the server answers ``{"scores": ...}``, ``"labels"`` when it answers
            ``{"labels": ...}`` (a decision-based, labels-only model).
        num_classes: the number of classes; every answer is checked against it.
        input_shape: the per-sample input shape, e.g. ``[1, 28, 28]``.
        bounds: the valid input range.
        max_batch_size: most inputs per POST; larger batches are split and the answers joined.
        connect_timeout, read_timeout: seconds to wait for a connection and for each read
            (writes and the pool wait use ``read_timeout``).
        max_retries: retries per POST after a timeout, a broken connection or HTTP
            429/502/503/504 (0: no retry).
        backoff_base, backoff_max: retry ``k`` (from 0) waits ``min(backoff_max,
            backoff_base * 2**k)`` times a jitter factor in ``[0.5, 1)``, unless the server
            sent ``Retry-After``, which is obeyed as is.
        max_total_wait: most seconds one POST may spend waiting between its retries; a wait
            that would go beyond it fails at once instead.
        max_requests_per_second: client-side rate limit (a token bucket on the monotonic
            clock, retries included); ``None`` for none.
        burst: how many requests may go back to back before the rate limit spaces them.
        api_key_env: the environment variable holding the API key (read at construction, and
            again after unpickling; never stored in a repr, a log or an error); ``None``, or an
            unset variable, sends no key.
        api_key_header, api_key_prefix: the key is sent as ``{api_key_header}:
            {api_key_prefix}{key}``, by default ``Authorization: Bearer <key>``.
        headers: extra request headers (e.g. a tenant id); no secrets, they show in ``get_params``.
        verify_tls: check the server's TLS certificate (https).
        retry_seed: seed of the jitter's own random generator (``None``: fresh entropy); the
            global RNGs are never touched.
    """

    def __init__(
        self,
        url: str,
        *,
        output: str = "scores",
        num_classes: int,
        input_shape: Sequence[int],
        bounds: Sequence[float] = (0.0, 1.0),
        max_batch_size: int = 64,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_retries: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        max_total_wait: float = 120.0,
        max_requests_per_second: float | None = None,
        burst: int = 1,
        api_key_env: str | None = "GAUNTLET_API_KEY",
        api_key_header: str = "Authorization",
        api_key_prefix: str = "Bearer ",
        headers: Mapping[str, str] | None = None,
        verify_tls: bool = True,
        retry_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.url = _check_url(url)
        positive = [Interval(float, 0, None, closed="neither")]
        validate_params(
            "RemoteModel",
            {
                "output": output,
                "num_classes": num_classes,
                "max_batch_size": max_batch_size,
                "connect_timeout": connect_timeout,
                "read_timeout": read_timeout,
                "max_retries": max_retries,
                "backoff_base": backoff_base,
                "backoff_max": backoff_max,
                "max_total_wait": max_total_wait,
                "max_requests_per_second": max_requests_per_second,
                "burst": burst,
                "verify_tls": verify_tls,
                "retry_seed": retry_seed,
            },
            {
                "output": [Options(_OUTPUTS)],
                "num_classes": [Interval(int, 2, None)],
                "max_batch_size": [Interval(int, 1, None)],
                "connect_timeout": positive,
                "read_timeout": positive,
                "max_retries": [Interval(int, 0, None)],
                "backoff_base": [Interval(float, 0, None)],
                "backoff_max": [Interval(float, 0, None)],
                "max_total_wait": [Interval(float, 0, None)],
                "max_requests_per_second": [*positive, IsNone()],
                "burst": [Interval(int, 1, None)],
                "verify_tls": [Boolean()],
                "retry_seed": [Interval(int, 0, None), IsNone()],
            },
        )
        shape = parse_shape("RemoteModel", input_shape)
        if shape is None:
            raise ConfigError(
                "RemoteModel: input_shape must be the per-sample shape as positive ints, e.g. [1, 28, 28], got None"
            )
        lo_hi = parse_bounds("RemoteModel", bounds, finite=False)
        if api_key_env is not None and (not isinstance(api_key_env, str) or not _ENV_NAME.match(api_key_env)):
            raise ConfigError(
                f"RemoteModel: api_key_env must name an environment variable (letters, digits, _), or be None, "
                f"got {api_key_env!r}"
            )
        if not isinstance(api_key_header, str) or not _TOKEN.match(api_key_header):
            raise ConfigError(f"RemoteModel: api_key_header must be an HTTP header name, got {api_key_header!r}")
        if not isinstance(api_key_prefix, str) or not _header_value_ok(api_key_prefix):
            raise ConfigError(
                f"RemoteModel: api_key_prefix must be a printable ASCII string such as 'Bearer ', got {api_key_prefix!r}"
            )
        extra = dict(headers or {}) if isinstance(headers, Mapping) or headers is None else None
        if extra is None or not all(
            isinstance(k, str) and _TOKEN.match(k) and isinstance(v, str) and _header_value_ok(v) for k, v in extra.items()
        ):
            raise ConfigError(
                "RemoteModel: headers must map HTTP header names to printable ASCII strings, "
                f"e.g. {{'X-Tenant': 'lab'}}, got {_short(repr(headers))}"
            )
        if api_key_header.lower() in {k.lower() for k in extra}:
            raise ConfigError(
                f"RemoteModel: headers sets {api_key_header!r}, which carries the API key; put the key in "
                f"${api_key_env or 'GAUNTLET_API_KEY'} (api_key_env) instead"
            )

        self.output = "logits" if output == "scores" else output  # type: ignore[assignment]
        self.capabilities = frozenset({"labels"} if output == "labels" else {"scores", "labels"})
        self.input_spec = InputSpec(shape, torch.float32, lo_hi)
        self._num_classes = int(num_classes)
        self._outputs_checked = True  # every answer is checked in _decode, not once by the base class
        self.max_batch_size = int(max_batch_size)
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.max_retries = int(max_retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.max_total_wait = float(max_total_wait)
        self.max_requests_per_second = None if max_requests_per_second is None else float(max_requests_per_second)
        self.burst = int(burst)
        self.api_key_env = api_key_env
        self.api_key_header = api_key_header
        self.api_key_prefix = api_key_prefix
        self.headers = extra
        self.verify_tls = verify_tls
        self.retry_seed = retry_seed
        self._params = {
            "url": url,
            "output": output,
            "num_classes": self._num_classes,
            "input_shape": list(shape),
            "bounds": list(lo_hi),
            "max_batch_size": self.max_batch_size,
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "max_retries": self.max_retries,
            "backoff_base": self.backoff_base,
            "backoff_max": self.backoff_max,
            "max_total_wait": self.max_total_wait,
            "max_requests_per_second": self.max_requests_per_second,
            "burst": self.burst,
            "api_key_env": api_key_env,
            "api_key_header": api_key_header,
            "api_key_prefix": api_key_prefix,
            "headers": dict(extra),
            "verify_tls": verify_tls,
            "retry_seed": retry_seed,
        }
        #: POSTs sent (retries included), retries, seconds slept before retries and for the rate limit
        self.requests = 0
        self.retries = 0
        self.retry_wait = 0.0
        self.rate_wait = 0.0
        self._rng = random.Random(retry_seed)  # the jitter's own generator: no global RNG state
        self._setup()

    # -- state that is not configuration: the key, the client, locks and the token bucket ---------
    def _setup(self) -> None:
        self._api_key = self._read_key()
        self._client: httpx.Client | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()
        self._tokens = float(self.burst)
        self._refilled = time.monotonic()

    def _read_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            return None
        if not _header_value_ok(self.api_key_prefix + key):
            raise ConfigError(
                f"RemoteModel: the API key in ${self.api_key_env} holds characters an HTTP header cannot carry "
                "(newlines, non-ASCII); check the variable's value"
            )
        return key

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (e.g. for the Ray executor): without the client, the locks and the API key,
        which is read again from ``api_key_env`` in the process that unpickles."""
        state = self.__dict__.copy()
        for name in ("_api_key", "_client", "_finalizer", "_lock", "_tokens", "_refilled"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._setup()

    def get_params(self) -> dict[str, Any]:
        """The constructor's keyword arguments as plain JSON values (no API key):
        ``RemoteModel(**model.get_params())`` builds the same model."""
        return json.loads(json.dumps(self._params))

    @property
    def display_url(self) -> str:
        """The URL as shown in reprs, logs and errors: a password in it is masked."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))

    def __repr__(self) -> str:
        key = "unset" if self._api_key is None else "set"
        env = f"${self.api_key_env} {key}" if self.api_key_env else "no api key"
        return self._scrub(
            f"RemoteModel(url={self.display_url!r}, output={self.output!r}, num_classes={self._num_classes}, "
            f"input_shape={self.input_spec.shape}, bounds={self.bounds}, max_batch_size={self.max_batch_size}, "
            f"{env})"
        )

    # -- the connection ---------------------------------------------------------------------------
    def _get_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                hx = _import_httpx()
                client = hx.Client(
                    timeout=hx.Timeout(self.read_timeout, connect=self.connect_timeout),
                    limits=hx.Limits(max_connections=8, max_keepalive_connections=8),
                    follow_redirects=False,
                    verify=self.verify_tls,
                )
                self._client = client
                # closes the pool when the model is garbage-collected (holds the client, not self)
                self._finalizer = weakref.finalize(self, client.close)
            return self._client

    def close(self) -> None:
        """Close the connection pool (idempotent); a later query opens a new one."""
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
            self._client = None
            self._finalizer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queries ------------------------------------------------------------------------------------
    def _forward(self, x: Tensor) -> Tensor:
        labels = self.output == "labels"
        if isinstance(x, Tensor) and x.dim() >= 2 and x.shape[0] == 0:
            shape = (0,) if labels else (0, self.num_classes or 0)
            return torch.empty(shape, dtype=torch.int64 if labels else torch.float32, device=x.device)
        spec = self.input_spec
        check_input_batch(x, where="RemoteModel", dtype=spec.dtype, shape=spec.shape, bounds=spec.bounds)
        data = x.detach().to("cpu")
        parts = []
        for start in range(0, int(data.shape[0]), self.max_batch_size):
            chunk = data[start : start + self.max_batch_size]
            body = json.dumps({"inputs": chunk.tolist()}, separators=(",", ":"), allow_nan=False).encode()
            parts.append(self._decode(self._post(body), int(chunk.shape[0])))
        return torch.cat(parts).to(x.device)

    def _request_headers(self) -> dict[str, str]:
        from gauntlet import __version__

        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"gauntlet/{__version__}",
            **self.headers,
        }
        if self._api_key is not None:
            headers[self.api_key_header] = self.api_key_prefix + self._api_key
        return headers

    def _throttle(self) -> None:
        """Token bucket: ``burst`` tokens, refilled at ``max_requests_per_second``; a request takes
        one, waiting (outside the lock, its token reserved) when the bucket is empty."""
        rate = self.max_requests_per_second
        if rate is None:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * rate)
            self._refilled = now
            self._tokens -= 1.0
            wait = -self._tokens / rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)
            self.rate_wait += wait

    def _backoff(self, attempt: int) -> float:
        """Retry ``attempt`` (from 0): exponential, capped, times a jitter factor in [0.5, 1)."""
        base = min(self.backoff_max, self.backoff_base * 2.0**attempt)
        return base * (0.5 + 0.5 * self._rng.random())

    def _post(self, body: bytes) -> httpx.Response:
        """One POST with its retries; the 2xx response, or a one-line :class:`RemoteError`."""
        hx = _import_httpx()
        client = self._get_client()
        headers = self._request_headers()
        waited = 0.0
        attempt = 0
        while True:
            self._throttle()
            self.requests += 1
            retry_after: float | None = None
            try:
                response = client.post(self.url, content=body, headers=headers)
            except hx.TimeoutException as exc:
                failure: httpx.Response | Exception = exc
            except (hx.NetworkError, hx.RemoteProtocolError) as exc:
                failure = exc
            except hx.HTTPError as exc:
                raise self._error(
                    f"the request to {self.display_url} failed ({type(exc).__name__}: {first_line(exc)}); "
                    "check the URL and the server"
                ) from None
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return response
                if status not in RETRYABLE_STATUSES:
                    raise self._status_error(response) from None
                failure = response
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            delay = self._backoff(attempt) if retry_after is None else retry_after
            if attempt >= self.max_retries or waited + delay > self.max_total_wait:
                over = attempt < self.max_retries
                raise self._give_up(failure, attempt + 1, waited, delay if over else None, retry_after) from None
            logger.info(
                self._scrub(
                    f"RemoteModel: {self._describe(failure)} from {self.display_url}; "
                    f"retry {attempt + 1}/{self.max_retries} in {delay:.3g} s"
                )
            )
            if delay > 0:
                time.sleep(delay)
            waited += delay
            self.retry_wait += delay
            self.retries += 1
            attempt += 1

    # -- answers ------------------------------------------------------------------------------------
    def _decode(self, response: httpx.Response, n: int) -> Tensor:
        labels = self.output == "labels"
        key = "labels" if labels else "scores"
        where = f"the answer from {self.display_url}"
        want = '{"labels": [...]}' if labels else '{"scores": [[...], ...]}'
        try:
            data = json.loads(response.content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self._error(
                f"{where} is not JSON ({first_line(exc)}; body {self._excerpt(response)}); "
                f"the server must answer {want} ({_DOCS})"
            ) from None
        if not isinstance(data, dict):
            raise self._error(
                f"{where} is a JSON {_json_type(data)}, not an object; the server must answer {want} ({_DOCS})"
            )
        if key not in data:
            other = "scores" if labels else "labels"
            keys = ", ".join(repr(_short(str(k), 30)) for k in list(data)[:5]) or "none"
            hint = f"; it sent {other!r}: pass output={other!r}" if other in data else ""
            raise self._error(
                f"{where} has no {key!r} key (keys: {keys}){hint}; the server must answer {want} ({_DOCS})"
            )
        try:
            out = torch.tensor(data[key], dtype=torch.float64)
        except Exception:  # noqa: BLE001 - ragged lists, strings, nulls, objects: torch raises several types
            raise self._error(
                f"{where}: {key!r} is not a {'list of numbers' if labels else 'list of equal-length lists of numbers'}; "
                f"the server must answer {want} ({_DOCS})"
            ) from None
        c = self._num_classes
        assert c is not None  # required by the constructor
        if labels:
            if out.dim() == 2 and out.shape[1] == 1:
                out = out[:, 0]
            if out.dim() != 1 or out.shape[0] != n:
                raise self._error(
                    f"{where}: 'labels' has shape {tuple(out.shape)} for a batch of {n} inputs; the server must "
                    f"answer one label per input, in order, shape ({n},)"
                )
            if not bool((out == out.round()).all()):
                raise self._error(
                    f"{where}: 'labels' holds non-integer values; the server must answer class indices "
                    "(or use output='scores' with {\"scores\": ...})"
                )
            lo, hi = int(out.min()), int(out.max())
            if lo < 0 or hi >= c:
                raise self._error(
                    f"{where}: labels in [{lo}, {hi}] but num_classes={c} allows [0, {c - 1}]; "
                    "check num_classes or the server's label encoding"
                )
            return out.to(torch.int64)
        if out.dim() != 2:
            hint = " (labels? pass output='labels')" if out.dim() == 1 else ""
            raise self._error(
                f"{where}: 'scores' has shape {tuple(out.shape)} for a batch of {n} inputs, "
                f"not ({n}, {c}){hint}; the server must answer one row of scores per input"
            )
        if out.shape[0] != n:
            raise self._error(
                f"{where}: {out.shape[0]} rows of scores for a batch of {n} inputs; the server must answer "
                "one row per input, in order"
            )
        if out.shape[1] != c:
            raise self._error(
                f"{where}: {out.shape[1]} scores per input but num_classes={c}; "
                f"pass num_classes={out.shape[1]} or fix the server"
            )
        scores = out.to(torch.float32)
        bad = ~torch.isfinite(scores).all(dim=1)
        if bool(bad.any()):
            raise self._error(
                f"{where}: NaN or inf scores for {int(bad.sum())} of {n} inputs; "
                "make the served model numerically safe (e.g. return logits, not log of 0)"
            )
        return scores

    # -- errors -------------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        key = getattr(self, "_api_key", None)
        return text.replace(key, "***") if key else text

    def _error(self, message: str) -> RemoteError:
        line = " ".join(self._scrub(f"RemoteModel: {message}").split())
        return RemoteError(line)

    def _excerpt(self, response: httpx.Response) -> str:
        text = response.content[:1000].decode("utf-8", "replace")
        text = "".join(ch if ch.isprintable() else " " for ch in text)
        text = " ".join(self._scrub(text).split())
        return repr(_short(text, 120)) if text else "empty"

    def _describe(self, failure: httpx.Response | Exception) -> str:
        if isinstance(failure, Exception):
            return f"{type(failure).__name__} ({self._scrub(first_line(failure))})"
        return f"HTTP {failure.status_code} {failure.reason_phrase}".strip()

    def _status_error(self, response: httpx.Response) -> RemoteError:
        status = response.status_code
        if status in (401, 403):
            if self.api_key_env is None:
                fix = "the server wants an API key: pass api_key_env naming the variable that holds it"
            elif self._api_key is None:
                fix = f"no API key was sent: set ${self.api_key_env}"
            else:
                fix = (
                    f"the server refused the API key from ${self.api_key_env}: check its value, and "
                    f"api_key_header={self.api_key_header!r} / api_key_prefix={self.api_key_prefix!r}"
                )
        elif status == 404:
            fix = "check the URL's path"
        elif status == 405:
            fix = "the endpoint must accept POST; check the URL's path"
        elif status == 413:
            fix = f"the request is too large: lower max_batch_size (now {self.max_batch_size})"
        elif status in (400, 415, 422):
            fix = (
                f"the server rejected the request: check input_shape {list(self.input_spec.shape or ())} and the "
                f"wire format ({_DOCS})"
            )
        elif 300 <= status < 400:
            location = _short(response.headers.get("Location", "?"), 100)
            fix = f"the URL redirects to {location!r}: pass the final URL"
        elif status >= 500:
            fix = "the server failed: check its logs"
        else:
            fix = f"check the server and the wire format ({_DOCS})"
        return self._error(
            f"{self.display_url} answered HTTP {status} {response.reason_phrase} "
            f"(body {self._excerpt(response)}); {fix}"
        )

    def _give_up(
        self,
        failure: httpx.Response | Exception,
        tries: int,
        waited: float,
        next_delay: float | None,
        retry_after: float | None,
    ) -> RemoteError:
        hx = _import_httpx()
        done = f"after {tries} {'try' if tries == 1 else 'tries'} and {waited:.3g} s of waiting"
        if next_delay is not None:  # stopped by max_total_wait
            asked = "Retry-After asked for" if retry_after is not None else "the next backoff is"
            stop = f"; {asked} {next_delay:.3g} s more, beyond max_total_wait={self.max_total_wait:g} s"
            more = "raise max_total_wait"
        else:  # stopped by max_retries
            stop = ""
            more = f"raise max_retries (now {self.max_retries})"
        url = self.display_url
        if not isinstance(failure, Exception):
            return self._error(
                f"{url} still answered HTTP {failure.status_code} {failure.reason_phrase} {done}{stop}; "
                f"{more}, lower max_requests_per_second, or try later"
            )
        cause = self._scrub(first_line(failure))
        if isinstance(failure, hx.ConnectTimeout):
            return self._error(
                f"{url} did not accept a connection within connect_timeout={self.connect_timeout:g} s {done}{stop}; "
                f"check the host and port, {more}, or raise connect_timeout"
            )
        if isinstance(failure, hx.TimeoutException):
            return self._error(
                f"{url} did not answer within read_timeout={self.read_timeout:g} s {done}{stop}; raise "
                f"read_timeout, lower max_batch_size (now {self.max_batch_size}), or {more}"
            )
        if isinstance(failure, hx.ConnectError):
            return self._error(
                f"cannot connect to {url} ({cause}) {done}{stop}; check the URL's host and port and that the "
                "server is running and reachable"
            )
        return self._error(
            f"the connection to {url} broke ({type(failure).__name__}: {cause}) {done}{stop}; check the "
            f"server's logs, or {more}"
        )

def _check_url(url: object) -> str:
    if not isinstance(url, str):
        raise ConfigError(f"RemoteModel: url must be a string such as 'http://host:8000/predict', got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number, a bad IPv6 literal
        ok = False
    if not ok:
        shown = _short(_mask_password(url), 80)
        raise ConfigError(
            f"RemoteModel: url must be an http:// or https:// URL with a host, e.g. 'http://127.0.0.1:8000/predict', "
            f"got {shown!r}"
        )
    if any(c.isspace() for c in url):
        raise ConfigError(f"RemoteModel: url must not contain whitespace, got {_short(_mask_password(url), 80)!r}")
    return url


def _mask_password(url: str) -> str:
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"

