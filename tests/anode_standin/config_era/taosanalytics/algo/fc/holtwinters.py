"""Stand-in of the default algorithm: the anode falls back to it for unknown names."""
from taosanalytics.algo.forecast import insert_ts_list
from taosanalytics.base import AbstractForecastService


class _HoltWintersService(AbstractForecastService):
    name = "holtwinters"
    desc = "naive stand-in: repeats the last value"

    def execute(self):
        values = [float(self.list[-1])] * self.rows
        res = [values, values, values] if self.return_conf else [values]
        return {"res": insert_ts_list(res, self.start_ts, self.time_step, self.rows),
                "conf": self.conf}
