"""Time-MoE (Maple728/TimeMoE-50M, -200M) on tsfmd's own torch engine, no remote code.

Modules, one job each:
  config.py   the config.json fields and the released sizes (OFFICIAL)
  model.py    the architecture: embedding, RMSNorm, rotary attention, sparse MoE, heads
  weights.py  official checkpoint <-> model (strict keys); write_random_checkpoint
  generate.py chunked autoregressive generation with a static KV cache, ragged batches
  family.py   the tsfmd family: normalisation, limits, dtype choice
"""
