"""Bad data and bad judges end in a clear error naming the file, line/row and field (or the judge,
index and value), or are read correctly: never a raw traceback, never silently wrong data.

Through the real entry points: ``load_comparisons``, ``load_demonstrations``, ``load_prompts``,
``judge_prob`` / ``sample_labels`` / ``CallableJudge``, and the CLI (``nlhf train-preference``,
``nlhf sft``, ``nlhf train``) with tiny random models.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from nlhf.cli import main
from nlhf.data import load_comparisons, load_demonstrations, load_prompts, write_jsonl
from nlhf.models.judge import (
    CallableJudge,
    JudgeError,
    check_judge_output,
    describe_judge,
    judge_prob,
    sample_labels,
)

GOOD = {"prompt": "Summarize: x.", "response_a": "A.", "response_b": "B.", "label": 1}
HEADER = "prompt,response_a,response_b,label\n"
BOM = b"\xef\xbb\xbf"
MOD = __name__  # judges defined here are named after this module
TINY = {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 64}


def _write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _lines(*rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _error(fn) -> str:
    """The message of the ValueError / FileNotFoundError ``fn()`` raises (never another type:
    the command line prints those two as one line, anything else as a traceback)."""
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        fn()
    return str(err.value)


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    return _write(tmp_path, "tiny.json", json.dumps(TINY))


# ----------------------------------------------------------------------------- 1. not UTF-8

LATIN1_CASES = [
    # (loader, file name, bytes, where the error points)
    (
        load_comparisons,
        "c.jsonl",
        _lines(GOOD).encode() + _lines({**GOOD, "prompt": "café"}).encode("latin-1"),
        "c.jsonl: line 2: not UTF-8 text (byte 0xe9 at byte 16 of the line, offset 95",
    ),
    (
        load_comparisons,
        "c.json",
        b'[\n{"prompt": "x", "response_a": "a", "response_b": "caf\xe9", "label": 1}\n]',
        "c.json: line 2: not UTF-8 text (byte 0xe9 at byte 54 of the line, offset 55",
    ),
    (
        load_comparisons,
        "c.csv",
        (HEADER + "x,a,b,1\ncafé,a,b,1\n").encode("latin-1"),
        "c.csv: line 3: not UTF-8 text (byte 0xe9 at byte 4 of the line, offset 46",
    ),
    (
        load_comparisons,
        "c.tsv",
        (HEADER.replace(",", "\t") + "x\ta\tb\t1\ncafé\ta\tb\t1\n").encode("latin-1"),
        "c.tsv: line 3: not UTF-8 text (byte 0xe9 at byte 4 of the line, offset 46",
    ),
    (
        load_demonstrations,
        "d.jsonl",
        b'{"prompt": "p", "completion": "caf\xe9"}\n',
        "d.jsonl: line 1: not UTF-8 text (byte 0xe9 at byte 35 of the line, offset 34",
    ),
    (load_prompts, "p.txt", b"hello\ncaf\xe9\n", "p.txt, line 2: not UTF-8 text (byte 0xe9 at"),
    (load_prompts, "p.jsonl", b'"hello"\n"caf\xe9"\n', "p.jsonl, line 2: not UTF-8 text"),
    (load_prompts, "p.json", b'["hello",\n "caf\xe9"]', "p.json, line 2: not UTF-8 text"),
    (load_prompts, "p.csv", b"prompt\nhello\ncaf\xe9\n", "p.csv: line 3: not UTF-8 text"),
]


@pytest.mark.parametrize(("load", "name", "data", "where"), LATIN1_CASES)
def test_non_utf8_names_the_file_line_and_byte(tmp_path, load, name, data, where):
    message = _error(lambda: load(_write(tmp_path, name, data)))
    assert str(tmp_path) in message and where in message, message
    assert "save the file as UTF-8" in message and "codec" not in message


@pytest.mark.parametrize(
    ("name", "data", "hint"),
    [
        ("u16.csv", (HEADER + "x,a,b,1\n").encode("utf-16"), "a UTF-16 byte-order mark"),
        ("u16le.csv", (HEADER + "x,a,b,1\n").encode("utf-16-le"), "is it UTF-16"),
        ("gz.jsonl", gzip.compress(_lines(GOOD).encode()), "gzip-compressed"),
        ("pq.jsonl", b"PAR1\x15\x04\x15\xff\x00", "a Parquet file: name it .parquet"),
        ("nul.csv", HEADER + "x\0,a,b,1\n", "line 2: a NUL byte (0x00) at byte 2 of the line"),
    ],
)
def test_other_encodings_and_binary_files_say_what_they_are(tmp_path, name, data, hint):
    message = _error(lambda: load_comparisons(_write(tmp_path, name, data)))
    assert name in message and hint in message, message


def test_cli_non_utf8_data_is_one_line_and_writes_nothing(tmp_path, tiny_config, capsys):
    data = _write(tmp_path, "c.csv", (HEADER + "x,a,b,1\ncafé,a,b,1\n").encode("latin-1"))
    out = tmp_path / "run"
    argv = ["train-preference", "--data", str(data), "--random-init", str(tiny_config)]
    assert main([*argv, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{data}: line 3: not UTF-8 text (byte 0xe9" in err and "Traceback" not in err
    assert not out.exists()


# ----------------------------------------------------------------------------- 2. BOM


@pytest.mark.parametrize(
    ("load", "name", "text"),
    [
        (load_comparisons, "c.jsonl", _lines(GOOD, {**GOOD, "prompt": "y"})),
        (load_comparisons, "c.json", json.dumps([GOOD])),
        (load_comparisons, "c.csv", HEADER + "x,a,b,1\n"),
        (load_comparisons, "c.tsv", HEADER.replace(",", "\t") + "x\ta\tb\t1\n"),
        (load_demonstrations, "d.jsonl", '{"prompt": "p", "completion": "c"}\n'),
        (load_demonstrations, "d.csv", "prompt,completion\np,c\n"),
        (load_prompts, "p.txt", "hello\nworld\n"),
        (load_prompts, "p.jsonl", '"hello"\n{"prompt": "world"}\n'),
        (load_prompts, "p.json", '["hello", "world"]'),
        (load_prompts, "p.csv", "prompt\nhello\n"),
    ],
)
def test_a_utf8_bom_is_accepted(tmp_path, load, name, text):
    plain = load(_write(tmp_path, name, text))
    with_bom = load(_write(tmp_path, "bom_" + name, BOM + text.encode()))
    assert list(with_bom) == list(plain)
    first = with_bom[0] if isinstance(with_bom[0], str) else with_bom[0].prompt
    assert not first.startswith("\ufeff")


def test_cli_trains_on_a_csv_with_bom(tmp_path, tiny_config):
    rows = "".join(f"Question {i}?,Answer {i}.,No idea.,1\n" for i in range(6))
    data = _write(tmp_path, "c.csv", BOM + (HEADER + rows).encode())
    out = tmp_path / "run"
    argv = ["train-preference", "--data", str(data), "--random-init", str(tiny_config)]
    argv += ["--tokenizer-kind", "word", "--steps", "1", "--batch-size", "2", "--eval-fraction"]
    assert main([*argv, "0.3", "--output-dir", str(out)]) == 0
    assert (out / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- 3. CSV


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # no header: the first row of data is taken as the header and fits no format
        (
            "Is 7 prime?,Yes,No,1\nIs 9 prime?,No,Yes,1\n",
            "line 1 (the header): the columns ['Is 7 prime?', 'Yes', 'No', '1'] fit no "
            "comparison format",
        ),
        (
            "question,answer1,answer2,pref\nx,a,b,1\n",
            "the first line of a CSV file names the columns",
        ),
        # a header that fits a format but lacks one of its columns
        (
            "prompt,response_a,response_b,score\nx,a,b,1\n",
            "line 1 (the header): field 'label': no such column (the columns are ['prompt', "
            "'response_a', 'response_b', 'score']); the native format needs prompt, "
            "response_a, response_b, label",
        ),
        (
            "prompt,response_a,response_a,response_b,label\nx,a,c,b,1\n",
            "line 1 (the header): column 3 repeats the name 'response_a' of column 2",
        ),
        (
            "prompt;response_a;response_b;label\nx;a;b;1\n",
            "(the file is read as comma-separated, and this line contains ';')",
        ),
        (HEADER + "x,a,b\n", "row 1 (line 2): 3 cells, but the header (line 1) names 4 columns"),
        (
            HEADER + "Hello, world,a,b,1\n",
            "row 1 (line 2): 5 cells, but the header (line 1) names 4 columns; is a ',' inside "
            "a cell not quoted?",
        ),
        (
            "prompt,response_a,response_b,label,\nx,a,b,1,oops\n",
            "row 1 (line 2): column 5 has no name in the header (line 1) but holds 'oops'",
        ),
        (
            HEADER + '"x,a,b,1\ny,a,b,1\n',
            "lines 2-3: not valid CSV (unexpected end of data); a quote opened in the row "
            "starting on line 2 is never closed",
        ),
        (HEADER + '"x"y,a,b,1\n', "line 2: not valid CSV"),
        ("", "the file is empty (a CSV file starts with a header line)"),
        ("\n\n", "the file is empty"),
        (HEADER, "only a header (line 1), no rows"),
        (HEADER + "\n,,,\n", "only a header (line 1), no rows"),
    ],
)
def test_csv_structure_errors(tmp_path, text, expected):
    path = _write(tmp_path, "c.csv", text)
    message = _error(lambda: load_comparisons(path))
    assert message.startswith(f"{path}: ") and expected in message, message


def test_csv_rows_read_right(tmp_path):
    text = (
        "prompt , response_a,response_b , label,\n"  # names are stripped; a trailing comma
        '"multi\nline\nprompt",a,b,1,\n'  # a quoted cell over three lines
        "\n"  # a blank line
        ",,,,\n"  # a row of empty cells
        "y,a,b,0.25\n"  # the trailing empty cell may be left out
        "z,a,b,1,,,\n"  # extra empty cells
        "long," + "w" * 200_000 + ",b,0\n"  # a cell longer than the csv module's default limit
    )
    rows = load_comparisons(_write(tmp_path, "c.csv", text))
    assert [r.prompt for r in rows] == ["multi\nline\nprompt", "y", "z", "long"]
    assert [r.label for r in rows] == [1.0, 0.25, 1.0, 0.0]
    assert len(rows[3].response_a) == 200_000
    # the line of a row after a multi-line cell is its own first line
    bad = _write(tmp_path, "bad.csv", HEADER + '"x\ny\nz",a,b,1\nq,a,b,2\n')
    assert "bad.csv: row 2 (line 5): field 'label': 2.0 is outside" in _error(
        lambda: load_comparisons(bad)
    )
    spans = _write(tmp_path, "spans.csv", HEADER + '"x\ny",a,b\n')
    assert "row 1 (lines 2-3): 3 cells" in _error(lambda: load_comparisons(spans))


def test_csv_row_errors_are_skippable_and_counted(tmp_path, caplog):
    path = _write(tmp_path, "c.csv", HEADER + "x,a,b,1\ny,a,b\nz,a,b,1,extra\nw,a,b,2\n")
    with caplog.at_level(logging.WARNING):
        rows = load_comparisons(path, skip_invalid=True)
    assert [r.prompt for r in rows] == ["x"]
    summary = rows.skipped_summary()
    assert "skipped 3 of 4 rows" in summary and "2 x wrong number of CSV cells" in summary
    assert "1 x field 'label'" in summary
    # a bad header is never skipped: no row could be read
    header = _write(tmp_path, "h.csv", "a,b\nx,y\n")
    assert "line 1 (the header)" in _error(lambda: load_comparisons(header, skip_invalid=True))


def test_headers_of_demonstrations_prompts_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    message = _error(lambda: load_demonstrations(_write(tmp_path, "d.csv", "Hi,Hello\n")))
    assert "d.csv: line 1 (the header): the columns ['Hi', 'Hello'] fit no demonstration" in (
        message
    )
    message = _error(lambda: load_prompts(_write(tmp_path, "p.csv", "text\nhello\n")))
    assert "p.csv: line 1 (the header): field 'prompt': no such column, nor 'messages'" in message
    assert "only a header (line 1)" in _error(
        lambda: load_prompts(_write(tmp_path, "q.csv", "prompt\n"))
    )
    table = pa.Table.from_pylist([{"question": "x", "good": "a", "bad": "b"}])
    pq.write_table(table, tmp_path / "t.parquet")
    message = _error(lambda: load_comparisons(tmp_path / "t.parquet"))
    assert "t.parquet: the columns ['question', 'good', 'bad'] fit no comparison format" in message
    # chat messages as JSON text in a CSV cell are read as chat lists
    chat = json.dumps([{"role": "user", "content": "Hi"}]).replace('"', '""')
    prompts = load_prompts(_write(tmp_path, "m.csv", f'messages\n"{chat}"\n'))
    assert prompts == [[{"role": "user", "content": "Hi"}]]


# ----------------------------------------------------------------------------- 4, 5. judges

PROMPTS, A, B = ["p1", "p2"], ["a1", "a2"], ["b1", "b2"]


def yes_no_judge(prompts, a, b):
    return ["yes", "no"]


def numeric_string_judge(prompts, a, b):
    return ["0.7", "0.2"]


def broken_judge(prompts, a, b):
    return {"a": 1}[prompts[0]]


class TextJudge:
    """A judge object whose ``prob`` returns strings."""

    def prob(self, prompts, a, b):
        return ["0.7"] * len(prompts)


class ExplodingJudge:
    def prob(self, prompts, a, b):
        raise RuntimeError("CUDA error: device-side assert triggered")


class BadRaters:
    def prob(self, prompts, a, b):
        return torch.full((len(prompts),), 0.5)

    def sample_labels(self, prompts, a, b, generator=None):
        return torch.tensor([1.0, 0.3])


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (
            yes_no_judge,
            f"judge {MOD}.yes_no_judge: returned str 'yes' at index 0, not a number; "
            "a judge returns numbers",
        ),
        (numeric_string_judge, "numeric_string_judge: returned str '0.7' at index 0, not a number"),
        (lambda p, a, b: "0.7", "returned '0.7' (a str), not a sequence of 2 probabilities"),
        (lambda p, a, b: [0.5], "returned 1 value for 2 pairs"),
        (lambda p, a, b: torch.rand(2, 2), "returned 4 values for 2 pairs"),
        (lambda p, a, b: [0.5, float("nan")], "returned P = nan at index 1, not a probability"),
        (lambda p, a, b: np.array([0.2, 1.5]), "returned P = 1.5 at index 1, not a probability"),
        (lambda p, a, b: [-0.25, 0.5], "returned P = -0.25 at index 0"),
        (lambda p, a, b: [0.5, float("inf")], "returned P = inf at index 1"),
        (lambda p, a, b: [0.5, None], "returned NoneType None at index 1, not a number"),
        (lambda p, a, b: [0.5 + 1j, 0.5], "returned complex (0.5+1j) at index 0, not a number"),
        (lambda p, a, b: torch.zeros(2, dtype=torch.complex64), "dtype torch.complex64"),
        (lambda p, a, b: torch.zeros(2, device="meta"), "a tensor on the meta device"),
        (lambda p, a, b: 7, "returned 1 value for 2 pairs"),
        (lambda p, a, b: object(), "(of type object), not a sequence of 2 probabilities"),
    ],
)
def test_bad_judge_output_names_the_judge_index_and_value(fn, expected):
    for call in (
        lambda: CallableJudge(fn).prob(PROMPTS, A, B),
        lambda: judge_prob(CallableJudge(fn), PROMPTS, A, B),
        lambda: sample_labels(CallableJudge(fn), PROMPTS, A, B),
    ):
        with pytest.raises(JudgeError) as err:
            call()
        message = str(err.value)
        assert message.startswith(f"judge {MOD}.") and expected in message, message


def test_good_judge_output_in_any_form_becomes_a_cpu_float_tensor():
    for out in (
        [1, 0],
        [True, False],
        (1.0, 0.0),
        np.array([1.0, 0.0]),
        np.array([1, 0], dtype=np.int64),
        [np.float32(1.0), torch.tensor(0.0)],
        torch.tensor([[1.0], [0.0]], dtype=torch.float64),
        (x for x in [1.0, 0.0]),
        [1 + 1e-7, -1e-7],  # rounding just outside [0, 1] is clamped
    ):
        p = judge_prob(CallableJudge(lambda p, a, b, out=out: out), PROMPTS, A, B)
        assert p.dtype == torch.float32 and p.device.type == "cpu" and p.tolist() == [1.0, 0.0]
    # a judge that forgot no_grad: the result carries no graph (nothing flows back into it)
    weight = torch.tensor(0.5, requires_grad=True)
    p = judge_prob(CallableJudge(lambda p, a, b: weight * torch.ones(len(p))), PROMPTS, A, B)
    assert not p.requires_grad and p.grad_fn is None
    # the call itself runs without a graph
    seen = []
    judge_prob(
        CallableJudge(lambda p, a, b: seen.append(torch.is_grad_enabled()) or [0.5, 0.5]),
        PROMPTS, A, B,
    )  # fmt: skip
    assert seen == [False]
    assert judge_prob(CallableJudge(yes_no_judge), [], [], []).shape == (0,)


def test_judge_objects_and_what_the_caller_calls_them():
    message = str(pytest.raises(JudgeError, judge_prob, TextJudge(), PROMPTS, A, B).value)
    assert message.startswith(f"judge {MOD}.TextJudge: returned str '0.7' at index 0")
    err = pytest.raises(JudgeError, judge_prob, TextJudge(), PROMPTS, A, B, what="--judge x:y")
    assert str(err.value).startswith(f"--judge x:y (judge {MOD}.TextJudge): returned")
    err = pytest.raises(JudgeError, judge_prob, object(), PROMPTS, A, B)
    assert "judge object: has no .prob(prompts, responses_a, responses_b) method" in str(err.value)
    with pytest.raises(ValueError, match="equal batch sizes"):
        judge_prob(TextJudge(), PROMPTS, A, B[:1])
    # a judge's own sample_labels must return 0s and 1s
    err = pytest.raises(JudgeError, sample_labels, BadRaters(), PROMPTS, A, B)
    assert "BadRaters.sample_labels: returned label = 0.3 at index 1, not 0 or 1" in str(err.value)
    with pytest.raises(JudgeError, match="returned label = 0.5 at index 0, not 0 or 1"):
        check_judge_output([0.5], 1, "judge x", labels=True)
    # descriptions: functions, partials, callable objects, judge objects
    import functools

    assert describe_judge(CallableJudge(functools.partial(broken_judge))) == (
        f"judge {MOD}.broken_judge"
    )
    assert describe_judge(CallableJudge(TextJudge().prob)) == (f"judge {MOD}.TextJudge.prob")
    assert describe_judge(ExplodingJudge()) == f"judge {MOD}.ExplodingJudge"


def test_a_judge_that_raises_is_named_with_its_error_and_where():
    for judge in (CallableJudge(broken_judge), ExplodingJudge()):
        for call in (judge_prob, sample_labels):
            with pytest.raises(JudgeError) as err:
                call(judge, PROMPTS, A, B)
            message = str(err.value)
            assert isinstance(err.value, ValueError)  # the command line prints it as one line
            assert err.value.__cause__ is not None  # the original traceback stays attached
            if isinstance(judge, CallableJudge):
                assert message.startswith(f"judge {MOD}.broken_judge: raised KeyError")
                assert "'p1' (at test_faults_data.py:" in message
                assert message.endswith("in broken_judge)")
            else:
                assert message.startswith(
                    f"judge {MOD}.ExplodingJudge: raised RuntimeError: CUDA error: "
                    "device-side assert triggered (at test_faults_data.py:"
                )

    # an interrupt is not a judge error
    def interrupted(p, a, b):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        judge_prob(CallableJudge(interrupted), PROMPTS, A, B)


def test_cli_train_with_a_bad_python_judge(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    from nlhf.models.tokenizer import build_tokenizer

    tok = build_tokenizer(["good bad the cat sat on a mat <sep>"], kind="word")
    torch.manual_seed(0)
    ids = {k: getattr(tok, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tok), n_positions=32, **ids)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    _write(tmp_path, "prompts.txt", "the cat <sep>\na mat <sep>\n")
    judges = _write(
        tmp_path,
        "judges.py",
        "def verdicts(prompts, a, b):\n    return ['A'] * len(prompts)\n\n"
        "def crashing(prompts, a, b):\n    raise ValueError('no API key')\n",
    )
    argv = [
        "train",
        "--policy",
        str(tmp_path / "policy"),
        "--prompts",
        str(tmp_path / "prompts.txt"),
    ]
    argv += ["--steps", "1", "--batch-size", "2", "--max-new-tokens", "3", "--no-progress"]
    for fn, expected in (
        ("verdicts", "(judge judges.verdicts): returned str 'A' at index 0, not a number"),
        ("crashing", "(judge judges.crashing): raised ValueError: no API key (at judges.py:5 in"),
    ):
        out = tmp_path / fn
        rc = main([*argv, "--judge", f"python:{judges}:{fn}", "--output-dir", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and expected in err and "Traceback" not in err, err


# ----------------------------------------------------------------------------- 6. other rows


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({**GOOD, "label": "chosen"}, "field 'label': 'chosen' is not a number"),
        ({**GOOD, "label": [1]}, "field 'label': [1] is not a number"),
        ({**GOOD, "label": True}, None),  # a boolean is 1 / 0
        ({**GOOD, "label": "1"}, None),  # numeric text, as in every CSV cell
        ({**GOOD, "label": " 0.25 "}, None),
        ({k: v for k, v in GOOD.items() if k != "label"}, "field 'label': is missing"),
        ({**GOOD, "prompt": None}, "field 'prompt': is missing"),
        ({**GOOD, "prompt": 42}, "field 'prompt': must be text or a list of chat messages"),
        (
            {**GOOD, "prompt": [{"role": "usr", "content": "hi"}]},
            "field 'prompt': message 0 has role 'usr'; a role is one of system",
        ),
        (
            {**GOOD, "prompt": [{"role": None, "content": "hi"}]},
            "field 'prompt': message 0 has role None",
        ),
        (
            {**GOOD, "prompt": [{"role": "user", "content": 5}]},
            "field 'prompt': message 0 has non-text content 5",
        ),
        (
            {**GOOD, "prompt": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
            "(a list of content parts: only text content is read",
        ),
        (
            {**GOOD, "prompt": [{"from": "human", "value": "hi"}]},
            "message 0 has ShareGPT keys 'from'/'value'; convert the messages to 'role'/'content'",
        ),
        (
            {"info": {"post": "p"}, "summaries": [{"text": "a"}, {"text": "b"}], "choice": True},
            "field 'choice': True is not 0 or 1",
        ),
    ],
)
def test_bad_fields_in_rows(tmp_path, row, expected):
    path = _write(tmp_path, "c.jsonl", _lines(row))
    if expected is None:
        assert load_comparisons(path)[0].label in (1.0, 0.25)
        return
    message = _error(lambda: load_comparisons(path))
    assert message.startswith(f"{path}: line 1: ") and expected in message, message


def test_invalid_text_and_repeated_keys(tmp_path):
    # a JSON escape that is not a character (a lone surrogate) would crash the tokenizer later
    path = _write(
        tmp_path,
        "s.jsonl",
        '{"prompt": "x\\ud800", "response_a": "a", "response_b": "b", "label": 1}\n',
    )
    assert "line 1: field 'prompt': holds an invalid character '\\ud800' (a lone UTF-16" in _error(
        lambda: load_comparisons(path)
    )
    # a repeated key: json keeps the last value silently; which one was meant?
    row = '{"prompt": "x", "response_a": "a", "response_b": "b", "label": 1, "label": 0}'
    for name, text, where in (
        ("k.jsonl", _lines(GOOD) + row + "\n", "k.jsonl: line 2: field 'label': appears twice"),
        ("k.json", f"[{json.dumps(GOOD)}, {row}]", "k.json: row 2: field 'label': appears twice"),
    ):
        path = _write(tmp_path, name, text)
        assert where in _error(lambda path=path: load_comparisons(path))
    dup_prompt = _write(tmp_path, "k2.jsonl", '{"prompt": "a", "prompt": "b"}\n')
    assert "k2.jsonl, line 1: field 'prompt': appears twice" in _error(
        lambda: load_prompts(dup_prompt)
    )
    # numpy numbers (rows from pandas) are numbers
    assert load_comparisons([{**GOOD, "label": np.int64(1)}])[0].label == 1.0


def test_duplicate_rows_are_kept_and_reported(tmp_path, caplog):
    path = _write(tmp_path, "d.jsonl", _lines(GOOD, {**GOOD, "prompt": "y"}, GOOD, GOOD))
    with caplog.at_level(logging.WARNING):
        rows = load_comparisons(path)
    assert len(rows) == 4 and rows.duplicates == 2
    assert (
        "2 comparisons repeat an earlier one exactly (first: line 3 repeats line 1)" in caplog.text
    )
    # chat rows too; and the same pair from another rater is not a duplicate
    chat = {**GOOD, "prompt": [{"role": "user", "content": "hi"}]}
    rows = load_comparisons([chat, chat, {**chat, "rater": "r2"}])
    assert rows.duplicates == 1
    demos = [{"prompt": "p", "completion": "c"}] * 3
    assert load_demonstrations(demos).duplicates == 2


def test_skip_invalid_that_leaves_nothing(tmp_path):
    path = _write(tmp_path, "c.jsonl", _lines({**GOOD, "label": 2}, {**GOOD, "label": 3}))
    message = _error(lambda: load_comparisons(path, skip_invalid=True))
    assert message == (
        f"{path}: no valid comparisons: all 2 rows are invalid (first: line 1: field 'label': "
        "2.0 is outside [0, 1])"
    )
    demos = _write(tmp_path, "d.jsonl", _lines({"prompt": "p"}))
    assert "no valid demonstrations: all 1 rows are invalid" in _error(
        lambda: load_demonstrations(demos, skip_invalid=True)
    )
    assert "no comparisons (the source has no rows)" in _error(
        lambda: load_comparisons(_write(tmp_path, "blank.jsonl", "\n \n"))
    )
    prompts = _write(tmp_path, "p.jsonl", _lines({"prompt": "a", "split": "x"}))
    assert "no prompts with split 'y'" in _error(lambda: load_prompts(prompts, split="y"))
    assert "has no prompts" in _error(lambda: load_prompts(_write(tmp_path, "b.txt", "\n \n")))


def test_files_in_the_wrong_format(tmp_path):
    cases = [
        ("j.parquet", _lines(GOOD), "not a readable Parquet file (", "it looks like JSON"),
        ("t.parquet", HEADER + "x,a,b,1\n", "not a readable Parquet file", "looks like text"),
        ("a.jsonl", json.dumps([GOOD], indent=1), "line 1: not valid JSON", "name it .json"),
        ("o.jsonl", json.dumps(GOOD, indent=1), "line 1: not valid JSON", "one object per line"),
        ("s.json", "[\n" + json.dumps(GOOD) + ",\n{]\n", "line 3: not valid JSON", "column 2"),
        (
            "p.json",
            json.dumps({k: {"0": v} for k, v in GOOD.items()}),
            "a JSON object of columns",
            "orient='records'",
        ),
        ("l.json", json.dumps({k: [v] for k, v in GOOD.items()}), "a JSON object of columns", ""),
        ("n.json", "42", "expected a JSON array of objects or JSON lines, got a JSON int", ""),
    ]
    for name, text, expected, hint in cases:
        path = _write(tmp_path, name, text)
        message = _error(lambda path=path: load_comparisons(path))
        assert (
            message.startswith(f"{tmp_path / name}: ") and expected in message and hint in message
        ), message
    # JSON lines under a .json name, and one object in a .json file, are read
    assert len(load_comparisons(_write(tmp_path, "lines.json", _lines(GOOD, GOOD)))) == 2
    assert len(load_comparisons(_write(tmp_path, "one.json", json.dumps(GOOD, indent=2)))) == 1
    # a .txt prompt file whose lines are JSON objects
    jsonl_txt = _write(tmp_path, "p.txt", _lines({"prompt": "a"}, {"prompt": "b"}))
    assert "every line is a JSON object, but a .txt prompt file is read as one text prompt" in (
        _error(lambda: load_prompts(jsonl_txt))
    )
    # a comparisons file given as demonstrations
    message = _error(lambda: load_demonstrations(_write(tmp_path, "c.jsonl", _lines(GOOD))))
    assert (
        "field 'label': 1 is a number, not a response; a row with a numeric label is a comparison"
        in message
    )


def test_prompt_lines_and_separators(tmp_path):
    # only \n, \r\n and \r end a line: U+2028 and form feeds belong to the prompt
    text = "one\u2028still one\r\ntwo\x0ctwo\rthree\n"
    assert load_prompts(_write(tmp_path, "p.txt", text.encode())) == [
        "one\u2028still one",
        "two\x0ctwo",
        "three",
    ]
    assert load_prompts(_write(tmp_path, "p.jsonl", '"a\u2028b"\n'.encode())) == ["a\u2028b"]
    assert "line 1: field 'prompt': holds an invalid character" in _error(
        lambda: load_prompts(_write(tmp_path, "s.jsonl", '"x\\udc00"\n'))
    )


def test_directories_and_hub_names(tmp_path, tiny_config, monkeypatch, capsys):
    import datasets.config
    import huggingface_hub.constants

    (tmp_path / "rows.jsonl").mkdir()
    message = _error(lambda: load_comparisons(tmp_path / "rows.jsonl"))
    assert f"{tmp_path / 'rows.jsonl'}: a directory, but datasets cannot read it" in message
    assert "doesn't contain any data files" in message and ".jsonl, .json, .csv" in message
    (tmp_path / "prompts.txt").mkdir()
    assert "prompts.txt is a directory, not a .txt file" in _error(
        lambda: load_prompts(tmp_path / "prompts.txt")
    )
    (tmp_path / "empty").mkdir()
    assert "empty: a directory, but datasets cannot read it" in _error(
        lambda: load_prompts(tmp_path / "empty")
    )
    # a directory of data files is a data set
    write_jsonl(load_comparisons([GOOD]), tmp_path / "set" / "train.jsonl")
    assert load_comparisons(tmp_path / "set")[0].prompt == GOOD["prompt"]
    # a name that is no local path goes to the hub, which is offline here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    for load, name in (
        (load_comparisons, "someone/prefs"),
        (load_comparisons, "comparisons"),  # a file name without its suffix
        (load_demonstrations, "trl-lib/tldr"),
        (load_prompts, "someone/prompts:test"),
    ):
        message = _error(lambda load=load, name=name: load(name))
        stem = name.split(":")[0]
        assert message.startswith(
            f"{stem}: no local file or directory of that name, so it was taken as a Hugging Face "
            "hub data set, but the hub is offline (HF_HUB_OFFLINE)"
        ), message
        assert "a .jsonl, .json, .csv, .tsv or .parquet file" in message
    rc = main(["sft", "--data", "trl-lib/tldr", "--random-init", str(tiny_config)])
    assert rc == 2 and "taken as a Hugging Face hub data set" in capsys.readouterr().err


def test_write_jsonl_is_all_or_nothing(tmp_path):
    path = write_jsonl(load_comparisons([GOOD, {**GOOD, "prompt": "y"}]), tmp_path / "out.jsonl")
    before = path.read_text()

    class Broken:
        def to_dict(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_jsonl([load_comparisons([GOOD])[0], Broken()], path)
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
