"""A small client for OpenAI-compatible chat-completion servers, robust to a real service.

``ChatClient.complete(body)`` posts to ``{base_url}/chat/completions`` with a per-request timeout
and retries with exponential back-off and jitter on what a busy or restarting service answers
(HTTP 408, 409, 429 and 5xx, connection errors, timeouts), honouring ``Retry-After``. Any other
HTTP error (400 bad request, 401/403 authentication, 404 unknown model, 422 ...) is not retried:
it raises :class:`JudgeRequestError` at once with the server's own message. The API key is sent
in the ``Authorization`` header only; it is never part of a message, a log line or an error.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
from collections.abc import Callable
from typing import Any

import requests

RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))


class JudgeRequestError(ValueError):
    """The server refused a request in a way that retrying cannot fix (or retries ran out).

    A ``ValueError``: the commands print it as one line (wrong model, key, URL or settings)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class JudgeCancelledError(RuntimeError):
    """A request was abandoned because another request of the same batch failed."""


def server_message(response: requests.Response) -> str:
    """The error text of an OpenAI-style (``{"error": {"message": ...}}``), FastAPI-style
    (``{"detail": ...}``) or plain-text error response, shortened to one paragraph."""
    try:
        data = response.json()
    except ValueError:
        data = None
    text = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            text = err.get("message") or json.dumps(err)
        elif isinstance(err, str):
            text = err
        elif "detail" in data:
            detail = data["detail"]
            text = detail if isinstance(detail, str) else json.dumps(detail)
        elif "message" in data:
            text = str(data["message"])
    if text is None:
        text = response.text.strip() or response.reason or "(empty response)"
    text = " ".join(str(text).split())
    return text if len(text) <= 500 else text[:497] + "..."


class ChatClient:
    """POST chat completions to one OpenAI-compatible server with retries (module doc).

    ``on_attempt(retry: bool)`` is called before every HTTP attempt (to count requests and
    retries); ``cancel`` is set by the caller to abandon waiting requests after a failure.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout_s: float,
        max_retries: int,
        backoff_s: float,
        backoff_max_s: float,
        on_attempt: Callable[[bool], None] = lambda retry: None,
    ):
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or None
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.on_attempt = on_attempt
        self.cancel = threading.Event()
        self._local = threading.local()

    def __repr__(self) -> str:  # the key stays out of reprs and tracebacks
        return f"ChatClient({self.base_url!r})"

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:  # one connection pool per worker thread
            session = requests.Session()
            session.headers["Content-Type"] = "application/json"
            if self._api_key:
                session.headers["Authorization"] = f"Bearer {self._api_key}"
            self._local.session = session
        return session

    def redact(self, text: str) -> str:
        """``text`` with the API key, should a server echo it, replaced by ``***``."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def _delay(self, attempt: int, response: requests.Response | None) -> float:
        """Exponential back-off with jitter: uniform in [d/2, d], d = backoff_s * 2^attempt
        (capped at backoff_max_s); a server's ``Retry-After`` (seconds) is a lower bound."""
        d = min(self.backoff_max_s, self.backoff_s * 2.0**attempt)
        delay = random.uniform(0.5 * d, d)
        if response is not None:
            with contextlib.suppress(KeyError, ValueError):
                delay = max(delay, min(self.backoff_max_s, float(response.headers["Retry-After"])))
        return delay

    def get(self, path: str) -> requests.Response:
        """One GET (no retries), e.g. ``/models``; connection errors propagate."""
        self.on_attempt(False)
        return self._session().get(f"{self.base_url}{path}", timeout=self.timeout_s)

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/chat/completions``; the parsed JSON of a 200 answer."""
        url = f"{self.base_url}/chat/completions"
        last = ""
        for attempt in range(self.max_retries + 1):
            if self.cancel.is_set():
                raise JudgeCancelledError("cancelled")
            self.on_attempt(attempt > 0)
            response = None
            try:
                response = self._session().post(
                    url, json=body, timeout=(min(10.0, self.timeout_s), self.timeout_s)
                )
            except requests.Timeout:
                last = f"no answer within {self.timeout_s:g} s (timeout_s)"
            except requests.ConnectionError as err:
                last = f"connection failed ({_root_cause(err)})"
            else:
                if response.status_code == 200:
                    try:
                        data = response.json()
                    except ValueError:
                        last = "HTTP 200 with a body that is not JSON"
                    else:
                        if isinstance(data, dict) and data.get("choices"):
                            return data
                        last = f"HTTP 200 without choices: {self.redact(response.text[:300])}"
                        raise JudgeRequestError(f"POST /chat/completions: {last}", 200)
                else:
                    message = self.redact(server_message(response))
                    last = f"HTTP {response.status_code}: {message}"
                    if response.status_code not in RETRYABLE_STATUS:
                        raise JudgeRequestError(
                            f"the server refused the request ({last})", response.status_code
                        )
            if attempt < self.max_retries and self.cancel.wait(self._delay(attempt, response)):
                raise JudgeCancelledError("cancelled")
        raise JudgeRequestError(
            f"gave up after {self.max_retries + 1} attempts "
            f"(max_retries={self.max_retries}); last error: {last}"
        )


def _root_cause(err: BaseException) -> str:
    """The innermost exception's message (e.g. 'Connection refused'), without URLs' noise."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    text = str(err)
    if "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(" (Caused by")[0][:200] or type(err).__name__
