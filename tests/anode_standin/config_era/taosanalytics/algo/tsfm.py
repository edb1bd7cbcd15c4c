"""TDgpt's own TSFM base class: POST to the configured service (config.py era sends `ts`)."""
import requests

from taosanalytics.algo.forecast import insert_ts_list
from taosanalytics.base import AbstractForecastService
from taosanalytics.conf import Configure


class TsfmBaseService(AbstractForecastService):
    def __init__(self):
        super().__init__()
        self.service_host = Configure.get_instance().get_tsfm_service(self.name)

    def execute(self):
        body = {"input": self.list, "ts": self.ts_list, "next_len": self.rows,
                "past_dynamic_real": self.past_dynamic_real, "dynamic_real": self.dynamic_real,
                "conf_interval": self.conf}
        response = requests.post(self.service_host, json=body, timeout=60)
        if response.status_code != 200:
            raise ValueError(f"failed to request the service, {response.text}")
        reply = response.json()
        if self.return_conf == 0:
            res = {"res": [reply["output"]], "conf": 0}
        elif reply.get("upper") is None:
            res = {"res": [reply["output"]] * 3, "conf": self.conf}
        else:
            res = {"res": [reply["output"], reply["lower"], reply["upper"]], "conf": self.conf}
        insert_ts_list(res["res"], self.start_ts, self.time_step, self.rows)
        return res

    def set_params(self, params):
        super().set_params(params)
        if "host" in params:
            self.service_host = params["host"]

    def get_status(self):
        try:
            requests.get(self.service_host, timeout=5)
        except Exception:
            return "UNAVAIL"
        return super().get_status()
