"""Ini-era configuration: a configparser file read once, shared as the module-level `conf`.

The real anode reads /etc/taos/taosanode.ini; the stand-in takes the path from
$TSFMD_STANDIN_ANODE_CONF so tests can use a copy.
"""
import configparser
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


conf = Configure()
