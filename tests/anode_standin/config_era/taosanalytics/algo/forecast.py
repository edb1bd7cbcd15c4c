"""Forecast dispatch and result checks, as the anode does them."""
from taosanalytics.service_registry import registry as loader


def request_params(params, req):
    params["rows"] = int(req["forecast_rows"])
    params["start_ts"] = int(req["start"])
    params["time_step"] = int(req["every"])
    params["precision"] = req.get("prec", "ms")
    if "conf" in req:
        params["conf"] = float(req["conf"])
    if "return_conf" in req:
        params["return_conf"] = int(req["return_conf"])


def insert_ts_list(res, start_ts, time_step, fc_rows):
    res.insert(0, [start_ts + i * time_step for i in range(fc_rows)])
    return res


def do_forecast(input_list, ts_list, algo_name, params, past_dynamic_real=None,
                dynamic_real=None):
    service = loader.get_service(algo_name) or loader.get_service("holtwinters")
    service.set_input_data(input_list, ts_list, past_dynamic_real, dynamic_real)
    service.set_params(params)
    res = service.execute()
    res["period"] = service.period
    res["algo"] = algo_name
    check_fc_results(res, params)
    return res


def check_fc_results(res, params):
    columns = res["res"]
    want = 4 if params.get("return_conf", 1) else 2
    if len(columns) != want:
        raise ValueError(f"result has {len(columns)} columns, taosd expects {want}")
    for column in columns:
        if len(column) != params["rows"]:
            raise ValueError("result length is not identical")
