"""The strategy names the rest of rankstudy refers to by their role in the study (one place for each).

- :data:`REFERENCE` (``uniform``): the baseline every other strategy is compared with, whose run supplies the
  layer importance S(l) by default (``allocation.profile_from``);
- :data:`BASE` (``base``): the untrained base model, Table 1's first row and a second comparison for every
  strategy;
- :data:`SFT` (``sft``): the label of the SFT warm start's gradient profile (full weights, no LoRA); not a
  strategy of the grid, and no strategy may take the name;
- :data:`SEED_FREE` (0): the seed of a run whose result does not depend on the seed (``per_seed = False``), so
  a grid that gains seeds never repeats it.
"""

REFERENCE = "uniform"
BASE = "base"
SFT = "sft"
SEED_FREE = 0
