"""nlhf: Nash learning from human feedback (Munos et al., ICML 2024, arXiv 2312.00886).

Data flows one way: pairwise data -> preference model (and reward model) -> policy training
against an alternative policy -> tournament under a judge -> report.
"""

__version__ = "0.1.0"
