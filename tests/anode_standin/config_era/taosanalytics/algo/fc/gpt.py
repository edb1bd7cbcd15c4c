"""Built-in TDtsfm adapter, as the anode ships it (name `tdtsfm_1`)."""
from taosanalytics.algo.tsfm import TsfmBaseService


class _GPTService(TsfmBaseService):
    name = 'tdtsfm_1'
    desc = "TDtsfm (built-in adapter of the anode)"

    def __init__(self):
        super().__init__()
        if self.service_host is None:
            self.service_host = "http://127.0.0.1:6061/tdtsfm"
