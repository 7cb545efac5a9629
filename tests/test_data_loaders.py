"""Loaders, format converters, validation errors and prompt-disjoint splits of nlhf.data:
comparisons, SFT demonstrations and prompt sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cyclic_raters import cyclic_comparisons, population_prob

from nlhf.data import (
    Comparison,
    InvalidComparisonError,
    as_text,
    convert_demonstration,
    convert_row,
    drop_shared_prompts,
    load_comparisons,
    load_demonstrations,
    load_prompts,
    split_by_prompt,
    write_jsonl,
)

FIXTURES = Path(__file__).parent / "fixtures" / "data"


# ----------------------------------------------------------------------------- fixtures, formats


def test_native_jsonl_fixture():
    rows = load_comparisons(FIXTURES / "native.jsonl")
    assert len(rows) == 5 and not rows.skipped
    assert rows[0].label == 1.0 and rows[1].label == 0.0 and rows[2].label == 0.5
    assert rows[1].rater == "r2" and rows[0].rater is None
    assert rows[3].split == "test"
    chat = rows[4]
    assert chat.prompt[1] == {"role": "user", "content": "Name a primary colour."}
    assert (
        as_text(chat.prompt)
        == "System: You are a concise assistant.\n\nUser: Name a primary colour."
    )
    # split= on a file keeps the rows of that split only
    assert [r.split for r in load_comparisons(FIXTURES / "native.jsonl", split="test")] == [
        "test",
        "test",
    ]


def test_native_csv_and_tsv_fixtures():
    rows = load_comparisons(FIXTURES / "native.csv")
    assert [r.label for r in rows] == [1.0, 0.0, 0.75]
    assert rows[0].rater == "r1" and rows[2].rater is None
    tsv = load_comparisons(FIXTURES / "native.tsv")
    assert len(tsv) == 1 and tsv[0].response_b == "Bridges are long."


def test_chosen_rejected_plain_and_conversational():
    plain = load_comparisons(FIXTURES / "chosen_rejected.jsonl")
    assert plain[0].response_a == "The capital of France is Paris."
    assert all(r.label == 1.0 for r in plain)
    chat = load_comparisons(FIXTURES / "chosen_rejected_chat.jsonl")
    assert chat[0].response_a == [{"role": "assistant", "content": "Chat."}]
    # the prompt repeated inside chosen/rejected is removed
    assert chat[1].prompt == [{"role": "user", "content": "What is 2 + 2?"}]
    assert chat[1].response_b == [{"role": "assistant", "content": "5"}]
    # implicit prompt (no prompt key): the shared leading messages
    assert chat[2].prompt == [{"role": "user", "content": "Say hi."}]
    assert chat[2].response_a == [{"role": "assistant", "content": "Hi!"}]


def test_summarize_from_feedback_jsonl_and_parquet():
    rows = load_comparisons(FIXTURES / "summarize_from_feedback.jsonl")
    first = rows[0]
    assert first.prompt.startswith("SUBREDDIT: r/relationships\n\nTITLE: How do I make friends")
    assert first.prompt.endswith("How do adults make friends?\n\nTL;DR:")
    assert first.response_b == "I have no friends."
    assert first.label == 1.0 and rows[1].label == 0.0  # choice 0 -> a, choice 1 -> b
    assert first.rater == "w01" and rows[2].split == "valid1"
    assert rows[3].prompt.startswith("ARTICLE: Officials said")
    parquet = load_comparisons(FIXTURES / "summarize_from_feedback.parquet")
    assert parquet == rows
    assert [
        r.split
        for r in load_comparisons(FIXTURES / "summarize_from_feedback.parquet", split="valid1")
    ] == ["valid1"]


def test_hh_rlhf_splits_off_the_shared_prompt():
    rows = load_comparisons(FIXTURES / "hh_rlhf.jsonl")
    assert rows[0].prompt == "\n\nHuman: What are some cuss words in english?\n\nAssistant:"
    assert rows[0].response_a.startswith("I'd rather not")
    assert rows[0].response_b == "Here is a list."
    multi = rows[1]  # two turns: the prompt keeps the first exchange
    assert multi.prompt.endswith("How long should it rise?\n\nAssistant:")
    assert "Mix flour" in multi.prompt
    assert multi.response_a == "About an hour, until it doubles in size."
    assert multi.response_b == "Bread does not rise."


def test_datasets_save_to_disk_and_local_dir(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [json.loads(line) for line in (FIXTURES / "chosen_rejected.jsonl").open()]
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows[:2]),
            "test": datasets.Dataset.from_list(rows[2:]),
        }
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    both = load_comparisons(tmp_path / "saved")
    assert [r.split for r in both] == ["train", "train", "test"]
    test = load_comparisons(tmp_path / "saved", split="test")
    assert len(test) == 1 and test[0].prompt == "Is 7 prime?"
    with pytest.raises(ValueError, match=r"no split 'valid'; splits are \['train', 'test'\]"):
        load_comparisons(tmp_path / "saved", split="valid")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    assert len(load_comparisons(tmp_path / "single")) == 3
    # a plain directory of data files goes through datasets.load_dataset
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "train.jsonl").write_text((FIXTURES / "hh_rlhf.jsonl").read_text())
    hh = load_comparisons(tmp_path / "files", format="hh_rlhf")
    assert len(hh) == 3 and hh[0].response_b == "Here is a list."
    # in-memory objects
    assert load_comparisons(dd, split="test")[0].prompt == "Is 7 prime?"
    assert [r.split for r in load_comparisons(dd)] == ["train", "train", "test"]
    assert len(load_comparisons(datasets.Dataset.from_list(rows))) == 3
    assert len(load_comparisons(rows)) == 3  # any iterable of row mappings
    with pytest.raises(ValueError, match=r"list: row 2: field 'label'"):
        load_comparisons([GOOD, {**GOOD, "label": 3}])


def test_write_jsonl_round_trip(tmp_path):
    rows = load_comparisons(FIXTURES / "native.jsonl") + load_comparisons(
        FIXTURES / "chosen_rejected_chat.jsonl"
    )
    path = write_jsonl(rows, tmp_path / "sub" / "out.jsonl")
    back = load_comparisons(path, format="native")
    assert back == rows
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"prompt", "response_a", "response_b", "label"}


# ----------------------------------------------------------------------------- bad input


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = {"prompt": "Summarize: x.", "response_a": "A.", "response_b": "B.", "label": 1}


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        (
            {k: v for k, v in GOOD.items() if k != "response_b"},
            "line 2: field 'response_b': is missing",
        ),
        ({**GOOD, "response_a": ""}, "line 2: field 'response_a': is empty"),
        ({**GOOD, "prompt": "   "}, "line 2: field 'prompt': is empty"),
        ({**GOOD, "label": 1.5}, r"line 2: field 'label': 1.5 is outside \[0, 1\]"),
        ({**GOOD, "label": -0.1}, r"line 2: field 'label': -0.1 is outside \[0, 1\]"),
        ({**GOOD, "label": "yes"}, "line 2: field 'label': 'yes' is not a number"),
        ({**GOOD, "label": None}, "line 2: field 'label': is missing"),
        ({**GOOD, "response_b": "A."}, "line 2: field 'response_b': is identical to response_a"),
        ({**GOOD, "prompt": [{"content": "hi"}]}, "line 2: field 'prompt': message 0 must be"),
        ({**GOOD, "prompt": []}, "line 2: field 'prompt': is an empty message list"),
        ({"text": "hello"}, "line 2: field '\\*': cannot tell the format"),
    ],
)
def test_bad_jsonl_rows_name_file_line_and_field(tmp_path, row, pattern):
    path = _write(tmp_path, "bad.jsonl", json.dumps(GOOD) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=pattern) as err:
        load_comparisons(path)
    assert str(path) in str(err.value)


def test_invalid_json_line(tmp_path):
    path = _write(tmp_path, "broken.jsonl", json.dumps(GOOD) + "\n\n" + '{"prompt": "x", \n')
    with pytest.raises(ValueError, match=r"broken.jsonl: line 3: not valid JSON"):
        load_comparisons(path)


def test_bad_csv_row_names_row_line_and_field(tmp_path):
    path = _write(tmp_path, "bad.csv", "prompt,response_a,response_b,label\nx,a,b,1\ny,a,b,2\n")
    with pytest.raises(
        ValueError, match=r"bad.csv: row 2 \(line 3\): field 'label': 2.0 is outside"
    ):
        load_comparisons(path)
    path = _write(tmp_path, "empty_cell.csv", "prompt,response_a,response_b,label\nx,,b,1\n")
    with pytest.raises(ValueError, match=r"row 1 \(line 2\): field 'response_a': is missing"):
        load_comparisons(path)


def test_bad_public_format_rows():
    sff = json.loads((FIXTURES / "summarize_from_feedback.jsonl").read_text().splitlines()[0])
    with pytest.raises(InvalidComparisonError, match="field 'choice'"):
        convert_row({**sff, "choice": 2})
    with pytest.raises(InvalidComparisonError, match=r"field 'summaries\[1\].text'"):
        convert_row({**sff, "summaries": [sff["summaries"][0], {"text": " "}]})
    with pytest.raises(InvalidComparisonError, match="field 'info.post'"):
        convert_row({**sff, "info": {"title": "t"}})
    with pytest.raises(InvalidComparisonError, match="field 'chosen'.*Assistant"):
        convert_row({"chosen": "Human: hi. Bot: yes", "rejected": "Human: hi. Bot: no"})
    with pytest.raises(InvalidComparisonError, match="field 'rejected': is identical"):
        convert_row(
            {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: b"}
        )
    with pytest.raises(InvalidComparisonError, match="field 'chosen': is missing"):
        convert_row({"prompt": "p", "chosen": None, "rejected": "r"})


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_comparisons(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="unknown file type '.txt'"):
        load_comparisons(_write(tmp_path, "rows.txt", "x"))
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        load_comparisons(_write(tmp_path, "rows.parquet", "not parquet"))
    with pytest.raises(ValueError, match=r"no comparisons \(the source has no rows\)"):
        load_comparisons(_write(tmp_path, "empty.jsonl", "\n"))
    with pytest.raises(ValueError, match="format: unknown format 'tldr'"):
        load_comparisons(FIXTURES / "native.jsonl", format="tldr")
    with pytest.raises(ValueError, match=r"no rows with split 'dev'; splits present"):
        load_comparisons(FIXTURES / "native.jsonl", split="dev")


def test_skip_invalid_counts_and_reports(caplog):
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2: field 'label'"):
        load_comparisons(FIXTURES / "bad.jsonl")
    with caplog.at_level("WARNING"):
        rows = load_comparisons(FIXTURES / "bad.jsonl", skip_invalid=True)
    assert [r.prompt for r in rows] == ["Summarize: a.", "Summarize: g."]
    assert len(rows.skipped) == 5
    assert rows.skipped[0].endswith("line 2: field 'label': 1.5 is outside [0, 1]")
    assert any("line 5: not valid JSON" in m for m in rows.skipped)
    summary = rows.skipped_summary()
    assert "skipped 5 of 7 rows" in summary and "1 x invalid JSON" in summary
    assert "2 x field 'response_b'" in summary
    assert "skipped 5 of 7 rows" in caplog.text


# ----------------------------------------------------------------------------- schema, splits


def test_comparison_schema():
    c = Comparison("p", "a", "b", True)
    assert c.label == 1.0
    s = c.swapped()
    assert (s.response_a, s.response_b, s.label) == ("b", "a", 0.0)
    with pytest.raises(InvalidComparisonError, match="field 'label'"):
        Comparison("p", "a", "b", float("nan"))


def test_split_by_prompt_is_disjoint_and_deterministic():
    data = cyclic_comparisons(n_prompts=30, comparisons_per_prompt=4, seed=3)
    train, evals = split_by_prompt(data, eval_fraction=0.2, seed=1)
    train_prompts = {c.prompt for c in train}
    eval_prompts = {c.prompt for c in evals}
    assert not train_prompts & eval_prompts
    assert len(eval_prompts) == 6 and len(train) + len(evals) == len(data)
    assert split_by_prompt(data, 0.2, seed=1) == (train, evals)
    kept, dropped = drop_shared_prompts(train, evals + train[:3])
    assert dropped == 3 and kept == evals
    with pytest.raises(ValueError, match="eval_fraction"):
        split_by_prompt(data, 1.0)
    with pytest.raises(ValueError, match="1 distinct prompt"):
        split_by_prompt(data[:2], 0.5)


def test_cyclic_synthetic_set_has_a_cyclic_majority():
    assert population_prob("brief", "list") == pytest.approx(0.65)
    assert population_prob("list", "story") == pytest.approx(0.75)
    assert population_prob("story", "brief") == pytest.approx(0.60)
    assert population_prob("list", "brief") == pytest.approx(0.35)
    data = cyclic_comparisons(n_prompts=600, comparisons_per_prompt=6, seed=0)
    wins: dict[tuple[str, str], list[float]] = {}
    for c in data:  # pool both orders: the label of (brief, list) is 1 - that of (list, brief)
        sa, sb = c.response_a.split()[0], c.response_b.split()[0]
        key, label = ((sa, sb), c.label) if sa < sb else ((sb, sa), 1.0 - c.label)
        wins.setdefault(key, []).append(label)
    assert len(wins) == 3
    for (sa, sb), labels in wins.items():
        p = population_prob(sa, sb)
        tolerance = 4.5 * (p * (1 - p) / len(labels)) ** 0.5  # binomial noise, 4.5 sigma
        assert sum(labels) / len(labels) == pytest.approx(p, abs=tolerance)


def test_json_array_json_lines_and_nested_csv_cells(tmp_path):
    rows = [GOOD, {**GOOD, "prompt": "Summarize: y.", "label": 0.25}]
    array = _write(tmp_path, "rows.json", json.dumps(rows))
    assert [r.label for r in load_comparisons(array)] == [1.0, 0.25]
    lines = _write(tmp_path, "lines.json", "\n".join(json.dumps(r) for r in rows))
    assert len(load_comparisons(lines)) == 2
    chat = json.dumps([{"role": "user", "content": "Hi, there"}]).replace('"', '""')
    csv_text = f'prompt,chosen,rejected\n"{chat}",Hello.,Go away.\n'
    loaded = load_comparisons(_write(tmp_path, "chat.csv", csv_text))
    assert loaded[0].prompt == [{"role": "user", "content": "Hi, there"}]
    assert loaded[0].response_a == "Hello." and loaded[0].label == 1.0


def test_local_looking_paths_never_go_to_the_hub(tmp_path):
    for name in (str(tmp_path / "no" / "such" / "dir"), "./missing_dir", "runs/x/y"):
        with pytest.raises(FileNotFoundError, match="no such file or directory"):
            load_comparisons(name)


# ----------------------------------------------------------------------------- public recipe data

RECIPES = Path(__file__).parent / "fixtures" / "recipes"
UF = RECIPES / "ultrafeedback_binarized"  # HuggingFaceH4/ultrafeedback_binarized's layout


def test_ultrafeedback_binarized_prompt_comes_out_of_the_chats():
    rows = load_comparisons(UF, split="train_prefs")
    first = rows[0]
    question = "How can I develop a habit of drawing daily?"
    assert first.prompt == [{"role": "user", "content": question}]
    assert first.response_a == [
        {"role": "assistant", "content": first.response_a[0]["content"]}
    ] and first.response_a[0]["content"].startswith("Start small")
    assert first.response_b == [{"role": "assistant", "content": "Drawing is a skill."}]
    assert first.label == 1.0 and first.split == "train_prefs" and len(rows) == 8
    # the chats' shared user turn is the prompt (even where the text field differs slightly)
    user = {"role": "user", "content": question + " "}
    row = {"prompt": question, "chosen": [user, *first.response_a]}
    row["rejected"] = [user, *first.response_b]
    assert convert_row(row).prompt == [user] and convert_row(row).response_a == first.response_a
    # replies alone (no shared turn): the text prompt stays as it is
    row = {"prompt": "Other.", "chosen": first.response_a, "rejected": first.response_b}
    assert convert_row(row).prompt == "Other."


def test_demonstrations_in_the_public_formats(tmp_path):
    tldr = load_demonstrations(RECIPES / "tldr", split="train")  # trl-lib/tldr: prompt/completion
    assert len(tldr) == 6 and tldr[0].split == "train"
    assert tldr[0].prompt.startswith("SUBREDDIT: r/relationships\n\nTITLE: ")
    assert tldr[0].prompt.endswith("\n\nTL;DR:") and tldr[0].response.startswith(" Moved")
    chat = load_demonstrations(UF, split="test_sft")  # the last assistant message is the reply
    assert chat[0].prompt == [{"role": "user", "content": "What is the capital of Canada?"}]
    assert chat[0].response == [
        {"role": "assistant", "content": "The capital of Canada is Ottawa."}
    ]
    carper = {"prompt": "POST: x\nTL;DR:", "label": " y"}  # CarperAI/openai_summarize_tldr
    assert convert_demonstration(carper).response == " y"
    multi = {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
        ]
    }
    demo = convert_demonstration(multi)
    assert len(demo.prompt) == 3 and demo.response == [multi["messages"][3]]


@pytest.mark.parametrize(
    ("row", "pattern"),
    [
        ({"prompt": "p"}, r"line 2: field '\*': cannot tell the format"),
        ({"prompt": "p", "completion": "  "}, "line 2: field 'completion': is empty"),
        ({"prompt": "", "completion": "c"}, "line 2: field 'prompt': is empty"),
        ({"prompt": "p", "completion": None}, "line 2: field 'completion': is missing"),
        (
            {"messages": [{"role": "user", "content": "hi"}]},
            "line 2: field 'messages': has no assistant message",
        ),
        (
            {"messages": [{"role": "assistant", "content": "hi"}]},
            "line 2: field 'messages': the assistant message has no prompt",
        ),
        ({"messages": [{"content": "hi"}]}, "line 2: field 'messages': message 0 must be"),
    ],
)
def test_bad_demonstrations_name_file_line_and_field(tmp_path, row, pattern):
    good = {"prompt": "p", "completion": "c"}
    path = _write(tmp_path, "sft.jsonl", json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=pattern) as err:
        load_demonstrations(path)
    assert str(path) in str(err.value)
    kept = load_demonstrations(path, skip_invalid=True)
    assert len(kept) == 1 and len(kept.skipped) == 1
    with pytest.raises(ValueError, match="format: unknown format 'chat'"):
        load_demonstrations(path, format="chat")


def test_prompts_from_data_sets_splits_and_chats(tmp_path):
    # NAME:SPLIT on a data set directory (as for a hub name such as trl-lib/tldr:test)
    test = load_prompts(f"{RECIPES / 'tldr'}:test")
    assert len(test) == 3 and all(p.endswith("TL;DR:") for p in test)
    assert load_prompts(RECIPES / "tldr", split="validation") == load_prompts(
        f"{RECIPES / 'tldr'}:validation"
    )
    # UltraFeedback rows: the "messages" chat up to the reply, i.e. the user turn
    chats = load_prompts(f"{UF}:test_gen")
    assert chats[0] == [{"role": "user", "content": "What is the capital of Canada?"}]
    rows = [
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        {"messages": [{"role": "user", "content": "Yo"}, {"role": "assistant", "content": "Hey"}]},
        {"prompt": "plain", "split": "b"},
    ]
    path = _write(tmp_path, "p.jsonl", "\n".join(json.dumps(r) for r in rows))
    prompts = load_prompts(path)
    assert prompts[0] == rows[0]["prompt"] and prompts[1] == [rows[1]["messages"][0]]
    assert load_prompts(path, split="b") == ["plain"] == load_prompts(f"{path}:b")
    parquet = tmp_path / "p.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "x"}, {"prompt": "y"}]), parquet)
    assert load_prompts(parquet) == ["x", "y"]
    bad = _write(tmp_path, "bad.jsonl", '{"prompt": [{"role": "user"}]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 1: field 'prompt': message 0 must"):
        load_prompts(bad)
    with pytest.raises(ValueError, match=r"no \"prompt\" key \(nor \"messages\""):
        load_prompts(_write(tmp_path, "k.jsonl", '{"text": "x"}\n'))
    with pytest.raises(ValueError, match="no prompts with split 'zz'"):
        load_prompts(path, split="zz")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_prompts(tmp_path / "missing.jsonl")
