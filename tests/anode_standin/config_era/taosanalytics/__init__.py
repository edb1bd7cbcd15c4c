"""Stand-in of a config.py-era TDgpt anode package (see tests/anode_standin/README.md)."""
__version__ = "standin-config.py"
