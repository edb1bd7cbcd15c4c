"""Stand-in of an ini-era TDgpt anode package (see tests/anode_standin/README.md)."""
__version__ = "standin-ini"
