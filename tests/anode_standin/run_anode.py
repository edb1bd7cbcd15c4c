"""Start a stand-in anode in THIS process and answer one JSON job; run it as a subprocess.

    python run_anode.py <anode lib dir>   < job.json   > answer.json

The lib dir holds `taosanalytics/` (a copy of ini_era/ or config_era/ with tsfmd's adapters
installed). Importing its `app` runs the era's loader, exactly once, as the anode does at
start. Job fields (all optional):
  forecasts: [taosd-like /forecast bodies]      -> answer["forecasts"]: the anode's replies
  direct:    [{"algo", "fields", "params"}]      -> answer["direct"]: execute() on a copy, with
             the fields set as the anode sets them; {"res": ...} or {"error", "type"}
  build:     ["module.path:ClassName"]           -> construct with no arguments, report errors
  status:    [algo names]                        -> answer["status"]: {name: get_status()}, or
             None where the class has none (ini-era base classes)
Always: answer["registered"] = {name: times registered}, answer["modules"] = {name: module},
answer["list"] = the /list reply, answer["errors"] = loader errors (config.py era),
answer["params_json"] = {name: whether get_params() is plain JSON}.
"""
import copy
import importlib
import json
import sys


def main():
    sys.path.insert(0, sys.argv[1])
    job = json.load(sys.stdin)
    answer = {}
    try:
        from taosanalytics import app as anode_app
    except Exception as exc:  # the ini-era anode does not start at all
        print(json.dumps({"start_error": f"{type(exc).__name__}: {exc}"}))
        return
    if hasattr(anode_app, "loader"):  # ini era
        services = anode_app.loader.services
        answer["registered"] = {name: len(objs) for name, objs in services.items()}
        answer["modules"] = {name: [type(o).__module__ for o in objs]
                             for name, objs in services.items()}
        answer["errors"] = []
        get_service = anode_app.loader.get_service
    else:
        services = anode_app.registry.services
        answer["registered"] = {name: 1 for name in services}
        answer["modules"] = {name: [type(o).__module__] for name, o in services.items()}
        answer["errors"] = anode_app.registry.errors
        get_service = anode_app.registry.get_service
    answer["params_json"] = {name: json_ok(get_service(name).get_params()) for name in services}
    client = anode_app.app.test_client()
    listed = client.get("/list")
    answer["list_status"] = listed.status_code
    answer["list"] = listed.get_json(silent=True)
    answer["forecasts"] = [client.post("/forecast", json=body).get_json()
                           for body in job.get("forecasts", [])]
    answer["direct"] = [run_direct(get_service, item) for item in job.get("direct", [])]
    answer["build"] = [build(target) for target in job.get("build", [])]
    answer["status"] = {name: status(get_service(name)) for name in job.get("status", [])}
    print(json.dumps(answer))


def json_ok(value):
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def run_direct(get_service, item):
    service = get_service(item["algo"])
    if service is None:
        return {"error": f"{item['algo']} is not registered", "type": "LookupError"}
    original = copy.deepcopy(service.__dict__)
    try:
        service.set_input_data(*item["fields"])
        service.set_params(item["params"])
        result = {"res": service.execute()["res"]}
    except Exception as exc:
        result = {"error": str(exc), "type": type(exc).__name__}
    fresh = get_service(item["algo"])
    # a request must leave the registered object as it was (the anode shares it)
    result["registered_unchanged"] = fresh.__dict__ == original
    return result


def status(service):
    probe = getattr(service, "get_status", None)
    return probe() if probe is not None else None


def build(target):
    module_name, _, class_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        obj = cls()
        return {"ok": True, "url": obj.service_url(), "params": obj.get_params()}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    main()
