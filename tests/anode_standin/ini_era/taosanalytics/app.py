"""The anode's REST face, reduced to /list and /forecast (modelled on taosanalytics.app)."""
from flask import Flask, request

from taosanalytics.algo.forecast import do_forecast, request_params
from taosanalytics.conf import app_logger, conf
from taosanalytics.servicemgmt import loader
from taosanalytics.util import parse_options

app = Flask(__name__)
app_logger.set_handler(conf.get_log_path())
loader.load_all_service()


@app.route("/list")
def list_all_services():
    return loader.get_service_list()


@app.route("/forecast", methods=["POST"])
def handle_forecast_req():
    req = request.get_json()
    names = [column[0] for column in req["schema"]]
    data = req["data"]
    if not 10 <= len(data[0]) <= 40000:
        return {"msg": f"number of rows should between 10 and 40000, actual {len(data[0])} rows",
                "rows": -1}
    params = parse_options(req.get("option"))
    request_params(params, req)
    algo = req.get("algo", "holtwinters").lower()
    past = [data[i] for i, n in enumerate(names) if n.startswith("past_dynamic_real")] or None
    future = [data[i] for i, n in enumerate(names) if n.startswith("dynamic_real")] or None
    try:
        res = do_forecast(data[names.index("val")], data[names.index("ts")], algo, params,
                          past, future)
        reply = {"option": req.get("option"), "rows": params["rows"]}
        reply.update(res)
        return reply
    except Exception as exc:  # the anode answers 200 with the message; taosd shows it
        return {"msg": str(exc), "rows": -1}
