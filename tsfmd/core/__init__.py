"""The core: the registry, requests and their errors, batching, admission and the model table.

Nothing here knows HTTP; torch is imported only where a forward pass runs.
"""
