"""Stand-in of TDgpt 3.4's service manager, script/taosanode_service.py (model commands only).

    python service_manager.py -c CONFIG [--install-dir DIR] model-status|model-start [NAME|all]

Written for tsfmd's tests from the manager's public code (read, not copied); what it keeps
is how the manager reads taosanode.config.py and decides what to start:
- the config file is executed as a module; `models` is its table of model services when the
  file defines it, else the manager's built-in table of six (tdtsfm, timemoe, moirai,
  chronos, timesfm, moment); a file that raises also gets the built-in table;
- `model-status` and `model-start all` walk the six known names, in that order, that are in
  the table; any other key is never listed or started in bulk;
- `model-start NAME`: a name not in the table is refused ("Unknown model"); a name whose
  directory under `model_dir` is missing is skipped; otherwise the venv's python must exist
  and the entry's `script` is read WITHOUT a guard (a table entry without `script` crashes
  the manager with KeyError, as the real one does), then the script must exist under
  lib/taosanalytics/tsfmservice/.
Nothing is started for real: a start prints the command the manager would run.
"""
import argparse
import importlib.util
import os
import sys

DEFAULT_MODEL_ORDER = ["tdtsfm", "timemoe", "moirai", "chronos", "timesfm", "moment"]
_VENVS = {"timesfm": "timesfm_venv", "moirai": "moirai_venv", "chronos": "chronos_venv",
          "moment": "momentfm_venv"}


def builtin_models():
    """The manager's own table, used when the config file has no `models`."""
    def entry(script, model, port, endpoint, required, algo_name=None):
        found = {"script": script, "default_model": model, "port": port, "endpoint": endpoint}
        if algo_name:
            found["algo_name"] = algo_name
        found["required"] = required
        return found

    return {
        "tdtsfm": entry("tdtsfm-server.py", None, 6061, "/tdtsfm", True, "tdtsfm_1"),
        "timemoe": entry("timemoe-server.py", "Maple728/TimeMoE-200M", 6062, "/ds_predict",
                         True, "timemoe_fc"),
        "moirai": entry("moirai-server.py", "Salesforce/moirai-moe-1.0-R-small", 6064,
                        "/ds_predict", False),
        "chronos": entry("chronos-server.py", "amazon/chronos-bolt-base", 6063, "/ds_predict",
                         False),
        "timesfm": entry("timesfm-server.py", "google/timesfm-2.0-500m-pytorch", 6065,
                         "/ds_predict", False),
        "moment": entry("moment-server.py", "AutonLab/MOMENT-1-base", 6066, "/imputation",
                        False),
    }


def log(level, message):
    print(f"{level}: {message}")


class Config:
    def __init__(self, config_path, install_dir):
        self.install_dir = install_dir
        self.model_dir = os.path.join(install_dir, "data", "model")
        self.venv_dir = os.path.join(install_dir, "venvs", "venv")
        self.venvs = {name: os.path.join(install_dir, "venvs", v) for name, v in _VENVS.items()}
        self.models = builtin_models()
        if not os.path.exists(config_path):
            log("WARNING", f"Config file not found: {config_path}")
            return
        try:
            spec = importlib.util.spec_from_file_location("taosanode_config", config_path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            self.model_dir = getattr(module, "model_dir", self.model_dir)
            self.venv_dir = getattr(module, "virtualenv", self.venv_dir)
            for name, attribute in _VENVS.items():
                self.venvs[name] = getattr(module, attribute, self.venvs[name])
            self.models = module.models if hasattr(module, "models") else builtin_models()
        except Exception as exc:
            log("WARNING", f"Failed to load config: {exc}")
            self.models = builtin_models()


class ModelService:
    def __init__(self, config):
        self.config = config

    def ordered_names(self):
        return [name for name in DEFAULT_MODEL_ORDER if name in self.config.models]

    def status(self):
        rows = []
        for name in self.ordered_names():
            port = self.config.models.get(name, {}).get("port", 0)
            rows.append({"model": name, "running": False, "pid": None, "port": port or None})
        return rows

    def python_of(self, name):
        venv = self.config.venvs.get(name, self.config.venv_dir)
        python = os.path.join(venv, "bin", "python3")
        if not os.path.exists(python):
            log("ERROR", f"Virtual environment not found: {venv}")
            raise FileNotFoundError(f"Python executable not found: {python}")
        return python

    def start(self, name):
        if name == "all":
            return self.start_all()
        models = self.config.models
        if name not in models:
            log("ERROR", f"Unknown model: {name}")
            log("ERROR", f"Supported models: {', '.join(models.keys())}")
            return False
        model_dir = os.path.join(self.config.model_dir, name)
        if not os.path.exists(model_dir):
            log("INFO", f"Skipping model {name} - directory not found: {model_dir}")
            return True
        python = self.python_of(name)
        entry = models[name]
        service_dir = os.path.join(self.config.install_dir, "lib", "taosanalytics",
                                   "tsfmservice")
        script = os.path.join(service_dir, entry["script"])  # unguarded, as in the manager
        if not os.path.exists(script):
            log("ERROR", f"Script not found: {script}")
            return False
        args = [model_dir, "--action", "server"] if name == "tdtsfm" else (
            [model_dir, entry["default_model"], "False"] if entry.get("default_model") else [])
        if entry.get("port"):
            args += ["--port", str(entry["port"])]
        log("INFO", f"Model {name} would start: {' '.join([python, script] + args)}")
        return True

    def start_all(self):
        started, skipped, failed = [], [], []
        for name in self.ordered_names():
            try:
                ok = self.start(name)
            except Exception as exc:  # the manager collects per-model failures in bulk starts
                log("ERROR", f"Error starting model {name}: {exc}")
                ok = False
            if not os.path.exists(os.path.join(self.config.model_dir, name)):
                skipped.append(name)
            elif ok:
                started.append(name)
            else:
                failed.append(name)
        log("INFO", f"Started: {', '.join(started) or 'none'}")
        if skipped:
            log("INFO", f"Skipped (missing model directory): {', '.join(skipped)}")
        if failed:
            log("INFO", f"Failed: {', '.join(failed)}")
        return not failed


def print_status(rows):
    print("-" * 50)
    print(f"{'Model':<15} {'Status':<10} {'PID':<10} {'Port':<8}")
    print("-" * 50)
    for row in rows:
        state = "Running" if row["running"] else "Stopped"
        port = str(row["port"]) if row["port"] else "-"
        print(f"{row['model']:<15} {state:<10} {'-':<10} {port:<8}")
    print("-" * 50)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["model-start", "model-status"])
    parser.add_argument("target", nargs="?")
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--install-dir", default=None)
    args = parser.parse_args(argv)
    install_dir = args.install_dir or os.path.dirname(os.path.dirname(
        os.path.abspath(args.config)))
    models = ModelService(Config(args.config, install_dir))
    if args.command == "model-status":
        print_status(models.status())
        return 0
    if not args.target:
        log("ERROR", "model-start requires a target (model name or 'all')")
        return 1
    return 0 if models.start(args.target) else 1


if __name__ == "__main__":
    sys.exit(main())
