"""Config.py-era loader: algo/fc then algo/custom/fc; bad files are logged and skipped,
only classes defined in the module count, and a second class with a taken name is refused."""
import copy
import importlib
import inspect
import os

from taosanalytics.log import AppLogger


class ServiceRegistry:
    def __init__(self):
        self.services = {}
        self.errors = []

    def get_service(self, name):
        return copy.copy(self.services.get(name))

    def _error(self, message):
        AppLogger.error("%s", message)
        self.errors.append(message)

    def get_service_list(self):
        algos = [{"name": name, "desc": s.get_desc(), "params": s.get_params(),
                  "status": s.get_status()} for name, s in self.services.items()]
        return {"protocol": 1.0, "version": 0.1, "details": [{"type": "forecast", "algo": algos}]}

    def _load_dir(self, prefix, directory, required):
        if not os.path.isdir(directory):
            if required:
                raise FileNotFoundError(directory)
            return
        for item in os.listdir(directory):
            if item in ("__init__.py", "__pycache__") or not item.endswith(".py"):
                continue
            name = prefix + item.split(".")[0]
            try:
                module = importlib.import_module(name)
            except Exception as exc:
                self._error(f"failed to import module {name}: {exc}")
                continue
            for class_name, cls in inspect.getmembers(module, inspect.isclass):
                if not class_name.startswith("_") or cls.__module__ != module.__name__:
                    continue
                if cls.name in self.services:
                    self._error(f"service with name '{cls.name}' already exists")
                    continue
                try:
                    self.services[cls.name] = cls()
                except Exception as exc:
                    self._error(f"failed to register service {class_name}: {exc}")

    def register_all_services(self):
        here = os.path.dirname(os.path.abspath(__file__))
        self._load_dir("taosanalytics.algo.fc.", os.path.join(here, "algo", "fc"), True)
        self._load_dir("taosanalytics.algo.custom.fc.",
                       os.path.join(here, "algo", "custom", "fc"), False)


registry = ServiceRegistry()
