"""TDgpt integration: generate anode adapters and anode config entries from the registry.

generate.py    one adapter module per registry key, from template/tdgpt_adapter.py
layout.py      where a given anode keeps its adapters, and which names it already ships
ini_config.py  [tsfm-service] edits for ini-era anodes (taosanode.ini)
pyconfig.py    the marked block of top-level URLs for config.py-era anodes (taosanode.config.py)
install.py     `tsfmd adapters install|uninstall|list`
"""
