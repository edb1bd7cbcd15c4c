"""Built-in Time-MoE adapter, as the anode ships it (name `timemoe-fc`)."""
from taosanalytics.algo.tsfm import TsfmBaseService


class _TimeMOEService(TsfmBaseService):
    name = "timemoe-fc"
    desc = "Time-MoE (built-in adapter of the anode)"

    def __init__(self):
        super().__init__()
        if self.service_host is None:
            self.service_host = "http://127.0.0.1:5001/ds_predict"
