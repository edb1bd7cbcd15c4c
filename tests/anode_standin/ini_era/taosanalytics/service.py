"""Ini-era base classes of every algorithm (the real module is taosanalytics.service)."""
import datetime
from abc import ABC, abstractmethod


class AnalyticsService:
    @abstractmethod
    def execute(self):
        """run the algorithm"""

    def get_desc(self):
        return ""

    def get_params(self):
        return {}


class AbstractAnalyticsService(AnalyticsService, ABC):
    name = ""
    desc = ""

    def __init__(self):
        self.list = None
        self.ts_list = None

    def set_input_list(self, input_list, input_ts_list=None):
        self.list = input_list
        self.ts_list = input_ts_list

    def get_desc(self):
        return self.desc


class AbstractForecastService(AbstractAnalyticsService, ABC):
    def __init__(self):
        super().__init__()
        self.type = "forecast"
        self.period = 0
        self.start_ts = 0
        self.time_step = 0
        self.rows = 0
        self.return_conf = 1
        self.conf = 0.95
        self.precision = "ms"
        self.past_dynamic_real = []
        self.dynamic_real = []
        # a release keeps the query's time zone here; json cannot encode it
        self.tz = datetime.timezone.utc

    def set_input_data(self, input_list, input_ts_list=None, past_dynamic_real_list=None,
                       dynamic_real_list=None):
        if past_dynamic_real_list is not None:
            self.past_dynamic_real = past_dynamic_real_list
        if dynamic_real_list is not None:
            self.dynamic_real = dynamic_real_list
        self.set_input_list(input_list, input_ts_list)

    def set_params(self, params):
        for required in ("start_ts", "time_step", "rows"):
            if required not in params:
                raise ValueError("params are missing, start_ts, time_step, rows are all required")
        self.start_ts = int(params["start_ts"])
        self.time_step = int(params["time_step"])
        if self.time_step <= 0:
            raise ValueError("time_step should be greater than 0")
        self.rows = int(params["rows"])
        if self.rows <= 0:
            raise ValueError("fc rows is not specified yet")
        self.period = int(params.get("period", 0))
        self.conf = float(params.get("conf", 0.95))
        if self.conf < 0 or self.conf >= 1.0:
            raise ValueError("invalid value of conf, should between 0 and 1.0")
        self.return_conf = int(params.get("return_conf", 1))
        self.precision = params.get("precision", "ms")

    def get_params(self):
        return {"period": self.period, "start": self.start_ts, "every": self.time_step,
                "forecast_rows": self.rows, "return_conf": self.return_conf, "conf": self.conf,
                "tz": self.tz}
