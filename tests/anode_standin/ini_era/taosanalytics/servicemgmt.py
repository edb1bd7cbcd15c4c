"""Ini-era loader: every `_` class visible in algo/fc/*.py, duplicates kept, errors fatal."""
import copy
import importlib
import inspect
import os
from collections import defaultdict

from taosanalytics.service import AbstractForecastService


class AnalyticsServiceLoader:
    def __init__(self):
        self.services = defaultdict(list)

    def get_service(self, name):
        found = self.services.get(name)
        return copy.copy(found[0]) if found else None

    def get_service_list(self):
        algos = [{"name": name, "desc": objs[0].get_desc(), "params": objs[0].get_params()}
                 for name, objs in self.services.items()]
        return {"protocol": 1.0, "version": 0.1, "details": [{"type": "forecast", "algo": algos}]}

    def load_all_service(self):
        here = os.path.dirname(os.path.abspath(__file__))
        directory = os.path.join(here, "algo", "fc")
        for item in os.listdir(directory):
            if item in ("__init__.py", "__pycache__") or not item.endswith("py"):
                continue
            if os.path.isdir(os.path.join(directory, item)):
                continue
            module = importlib.import_module("taosanalytics.algo.fc." + item.split(".")[0])
            for class_name, cls in inspect.getmembers(module, inspect.isclass):
                if class_name == AbstractForecastService.__name__ or not class_name.startswith("_"):
                    continue
                self.services[cls.name].append(cls())


loader = AnalyticsServiceLoader()
