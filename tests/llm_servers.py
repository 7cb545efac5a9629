"""Real OpenAI-compatible servers for the LLM-judge tests, started on loopback and always stopped.

``llama_cpp_server(gguf)``: llama.cpp's server from ``llama-cpp-python[server]`` (returns
log-probabilities). ``transformers_server(checkpoint)``: ``transformers serve`` pinned to one
checkpoint (returns none). Each picks a free port, starts the server as a subprocess with one
thread, waits for ``/v1/models`` and stops it (its whole process group) on exit. Nothing here
imitates a server: the tests talk to the real ones.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

LLAMA_MODEL = "smollm2"
CASES_FILE = Path(__file__).parent / "fixtures" / "data" / "tldr_judge_cases.jsonl"


def tldr_cases() -> tuple[list[str], list[str], list[str]]:
    """(posts, right summaries, off-topic summaries): TL;DR-like comparisons in nlhf's native
    JSONL (``response_a`` is plainly right, label 1; ``response_b`` summarises some other post).
    Written once before any judge saw them, never edited toward a judge's answers."""
    from nlhf.data import load_comparisons

    cases = load_comparisons(CASES_FILE)
    return (
        [str(c.prompt) for c in cases],
        [str(c.response_a) for c in cases],
        [str(c.response_b) for c in cases],
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(
    cmd: list[str], port: int, log: Path, api_key: str | None = None, startup_s: float = 240.0
) -> Iterator[str]:
    """Run ``cmd`` until the ``with`` block ends; yields the API root ``http://.../v1``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[:3]} exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if requests.get(f"{base}/models", headers=headers, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[:3]} not ready after {startup_s} s:\n{log.read_text()}")
            time.sleep(0.2)
        yield base
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """Terminate the server's process group (SIGTERM, then SIGKILL after 3 s: a server still
    busy with abandoned requests would otherwise finish them first)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def llama_cpp_command(gguf: Path, port: int, api_key: str | None = None) -> list[str]:
    """llama.cpp's server for ``gguf`` under the name ``LLAMA_MODEL``, one thread."""
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
        "--model_alias", LLAMA_MODEL, "--host", "127.0.0.1", "--port", str(port),
        "--n_threads", "1", "--n_threads_batch", "1", "--n_ctx", "2048",
    ]  # fmt: skip
    return cmd + ["--api_key", api_key] if api_key else cmd


def transformers_command(checkpoint: Path, port: int) -> list[str]:
    """``transformers serve`` pinned to ``checkpoint`` (requests name it by its path), CPU."""
    cli = Path(sys.executable).with_name("transformers")
    return [
        str(cli), "serve", str(checkpoint), "--host", "127.0.0.1", "--port", str(port),
        "--device", "cpu", "--log-level", "warning",
    ]  # fmt: skip
