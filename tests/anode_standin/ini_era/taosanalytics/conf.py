"""Ini-era configuration: a configparser file read once, shared as the module-level `conf`.

The real anode reads /etc/taos/taosanode.ini; the stand-in takes the path from
$TSFMD_STANDIN_ANODE_CONF so tests can use a copy.
"""
import configparser
import logging
import os

INI_PATH = os.environ.get("TSFMD_STANDIN_ANODE_CONF", "/etc/taos/taosanode.ini")


class Configure:
    def __init__(self, conf_path=INI_PATH):
        self.path = conf_path
        self.conf = configparser.ConfigParser()
        self.conf.read(self.path)

    def get_tsfm_service(self, service_name):
        if self.conf.has_option("tsfm-service", service_name):
            return self.conf.get("tsfm-service", service_name)
        return None

    def get_log_path(self):
        """[taosanode] app-log; the stand-in lets tests put it in a temp dir instead."""
        return os.environ.get("TSFMD_STANDIN_ANODE_LOG") or self.conf.get(
            "taosanode", "app-log", fallback="/var/log/taos/taosanode/taosanode.app.log")


class AppLogger:
    """The anode's logger: its handler writes the anode's log file."""

    def __init__(self):
        self.log_inst = logging.getLogger(__name__)
        self.log_inst.setLevel(logging.INFO)

    def set_handler(self, file_path):
        handler = logging.FileHandler(file_path)
        handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
        self.log_inst.addHandler(handler)


conf = Configure()
app_logger = AppLogger()
