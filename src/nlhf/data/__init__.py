"""Data (paper §5, §7): pairwise comparisons, SFT demonstrations and prompt sets; one schema each,
loaders for the public formats, validation with errors naming file, row and field.

```python
from nlhf.data import Comparison, load_comparisons, write_jsonl, split_by_prompt
rows = load_comparisons("comparisons.jsonl")          # or .csv/.parquet/a datasets dir/a hub name
train, evals = split_by_prompt(rows, eval_fraction=0.1, seed=0)   # never share a prompt
demos = load_demonstrations("trl-lib/tldr", split="train")        # SFT: prompt + response
prompts = load_prompts("prompts.jsonl")               # text or chat prompts; "NAME:SPLIT" too
```
"""

from nlhf.data.demonstrations import (
    DEMONSTRATION_FORMATS,
    Demonstration,
    Demonstrations,
    convert_demonstration,
    load_demonstrations,
)
from nlhf.data.formats import FORMATS, convert_row, detect_format
from nlhf.data.loaders import (
    Comparisons,
    drop_shared_prompts,
    load_comparisons,
    load_rows,
    read_rows,
    split_by_prompt,
    write_jsonl,
)
from nlhf.data.prompts import load_prompts
from nlhf.data.schema import Comparison, InvalidComparisonError, as_text

__all__ = [
    "DEMONSTRATION_FORMATS",
    "FORMATS",
    "Comparison",
    "Comparisons",
    "Demonstration",
    "Demonstrations",
    "InvalidComparisonError",
    "as_text",
    "convert_demonstration",
    "convert_row",
    "detect_format",
    "drop_shared_prompts",
    "load_comparisons",
    "load_demonstrations",
    "load_prompts",
    "load_rows",
    "read_rows",
    "split_by_prompt",
    "write_jsonl",
]
