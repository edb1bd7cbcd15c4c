"""Config.py-era configuration: a Python file executed once, kept in a singleton.

The file is $TDGPT_CONF, else /etc/taos/taosanode.config.py. Every top-level value becomes a
setting; each `models` entry with a `port` also gives `algo_name` (or its key) the URL
http://<ip, default 127.0.0.1>:<port><endpoint, default /ds_predict>.
"""
import importlib.util
import os
import threading


class Configure:
    _instance = None
    _lock = threading.Lock()

    def __init__(self, conf_path=None):
        self.path = conf_path or os.environ.get("TDGPT_CONF", "/etc/taos/taosanode.config.py")
        self._conf = {}
        if os.path.exists(self.path):
            self.reload()

    @classmethod
    def get_instance(cls):
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
        return cls._instance

    def get_tsfm_service(self, service_name):
        return self._conf.get(service_name)

    def get_log_path(self):
        """`app_log` of the config; the stand-in lets tests put it in a temp dir instead."""
        return os.environ.get("TSFMD_STANDIN_ANODE_LOG") or self._conf.get(
            "app_log", "/var/log/taos/taosanode/taosanode.app.log")

    def reload(self):
        spec = importlib.util.spec_from_file_location("gunicorn_config", self.path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for key in dir(module):
            value = getattr(module, key)
            if not key.startswith("__") and not callable(value):
                self._conf[key] = value
        for key, cfg in (self._conf.get("models") or {}).items():
            if cfg.get("port"):
                self._conf[cfg.get("algo_name", key)] = "http://%s:%s%s" % (
                    cfg.get("ip", "127.0.0.1"), cfg["port"], cfg.get("endpoint", "/ds_predict"))
