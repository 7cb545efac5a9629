"""Pairwise-preference data (paper §5): one schema, loaders for the public formats, validation.

```python
from nlhf.data import Comparison, load_comparisons, write_jsonl, split_by_prompt
rows = load_comparisons("comparisons.jsonl")          # or .csv/.parquet/a datasets dir/a hub name
train, evals = split_by_prompt(rows, eval_fraction=0.1, seed=0)   # never share a prompt
```
"""

from nlhf.data.formats import FORMATS, convert_row, detect_format
from nlhf.data.loaders import (
    Comparisons,
    drop_shared_prompts,
    load_comparisons,
    split_by_prompt,
    write_jsonl,
)
from nlhf.data.prompts import load_prompts
from nlhf.data.schema import Comparison, InvalidComparisonError, as_text

__all__ = [
    "FORMATS",
    "Comparison",
    "Comparisons",
    "InvalidComparisonError",
    "as_text",
    "convert_row",
    "detect_format",
    "drop_shared_prompts",
    "load_comparisons",
    "load_prompts",
    "split_by_prompt",
    "write_jsonl",
]
