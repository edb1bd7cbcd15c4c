"""The anode's logger (newer config.py-era releases keep it here, as a singleton).

Its handler writes the anode's log file (`app_log` of the config); anything logged to
another logger that is not below this one never reaches that file.
"""
import logging
import threading


class AppLogger:
    _FORMAT = "%(asctime)s - %(threadName)s - %(levelname)s - %(message)s"
    _instance = None
    _lock = threading.Lock()

    def __new__(cls):
        with cls._lock:
            if cls._instance is None:
                cls._instance = super().__new__(cls)
                cls._instance.log_inst = logging.getLogger(__name__)
                cls._instance.log_inst.setLevel(logging.INFO)
        return cls._instance

    @classmethod
    def get_instance(cls) -> logging.Logger:
        return cls().log_inst

    @classmethod
    def set_handler(cls, file_path):
        handler = logging.FileHandler(file_path)
        handler.setFormatter(logging.Formatter(cls._FORMAT))
        cls.get_instance().addHandler(handler)

    @classmethod
    def error(cls, msg, *args):
        cls.get_instance().error(msg, *args)
