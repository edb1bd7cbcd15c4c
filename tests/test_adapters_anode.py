"""Generated adapters loaded the way each anode generation loads them, against a real tsfmd.

TDgpt cannot be installed from the package registries here, so the anode is one of the
stand-ins in tests/anode_standin/ (modelled on the anode's public code). Each test installs
the adapters with the real CLI into a copy of the stand-in, starts the anode in a fresh
process (its loader imports every adapter module and registers every `_` class), and sends
the anode's /forecast what taosd sends it; the adapters call a real tsfmd (waitress on
loopback, fracast with its bundled weights).
"""
from __future__ import annotations

import pytest

from anode_standin.lab import (
    adapters, direct, fracast_entry, make_anode, run_anode, series, taosd_forecast,
)
from conftest import free_port, start_tsfmd

ROWS = 12
MODELS = (
    fracast_entry("fracast-fc", "    description: fracast through tsfmd\n")
    + fracast_entry("timemoe-fc")  # TDgpt ships an adapter with this name
    + fracast_entry("fracast-short", "    horizon_limit: 16\n")
)


@pytest.fixture(scope="module")
def tsfmd(tmp_path_factory):
    server = start_tsfmd(tmp_path_factory.mktemp("tsfmd"), MODELS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reference(tsfmd):
    """What tsfmd itself answers for the series the tests send (taosd's conf 0.95)."""
    _, values = series()
    reply = tsfmd.post("/fracast-fc", {"input": values, "next_len": ROWS, "conf_interval": 0.95})
    assert reply.status_code == 200
    return reply.json()


@pytest.fixture(scope="module", params=["ini", "config.py"])
def anode(request, tsfmd, tmp_path_factory):
    """The stand-in anode of one generation with tsfmd's adapters installed, run once."""
    era = request.param
    root = tmp_path_factory.mktemp(era.replace(".", "_"))
    anode_dir, config = make_anode(root, era)
    code, out, err = adapters("install", anode_dir, config, tsfmd.config_path)
    assert code == 0, err
    dead = free_port()
    job = {
        "forecasts": [
            taosd_forecast("fracast-fc", 1, ROWS),
            taosd_forecast("fracast-fc", 0, ROWS),
            taosd_forecast("timemoe-fc", 1, ROWS),
            taosd_forecast("fracast-fc", 1, ROWS, f"host=127.0.0.1:{tsfmd.port}"),
            taosd_forecast("fracast-fc", 1, ROWS, f"host=127.0.0.1:{dead}"),
            taosd_forecast("fracast-short", 1, 20),
            taosd_forecast("fracast-fc", 1, ROWS, covariate=True),
            taosd_forecast("FRACAST-FC", 0, ROWS),  # taosd may send any case; the anode lowers it
        ],
        "direct": [direct("fracast-fc", ROWS), direct("fracast-fc", ROWS, return_conf=0)],
    }
    answer = run_anode(anode_dir, era, config, job)
    return {"era": era, "answer": answer, "dead": dead, "install_out": out}


def test_each_name_registered_once_from_the_right_module(anode):
    answer, era = anode["answer"], anode["era"]
    assert "start_error" not in answer
    assert answer["errors"] == []
    assert answer["registered"]["fracast-fc"] == 1
    assert answer["registered"]["fracast-short"] == 1
    assert answer["registered"]["timemoe-fc"] == 1  # the built-in only: no second class
    package = "taosanalytics.algo.fc" if era == "ini" else "taosanalytics.algo.custom.fc"
    assert answer["modules"]["fracast-fc"] == [f"{package}.tsfmd_fracast_fc"]
    assert answer["modules"]["timemoe-fc"] == ["taosanalytics.algo.fc.timemoe"]


def test_list_endpoint_stays_json(anode, tsfmd):
    answer = anode["answer"]
    assert answer["params_json"]["fracast-fc"] is True
    if anode["era"] == "ini":
        # the stand-in's base get_params carries a timezone, as in the release where it broke
        assert answer["params_json"]["holtwinters"] is False
        return
    assert answer["list_status"] == 200
    (forecast,) = answer["list"]["details"]
    entry = next(a for a in forecast["algo"] if a["name"] == "fracast-fc")
    assert entry["desc"] == "fracast through tsfmd"
    assert entry["status"] == "READY"  # tsfmd answered the GET probe
    assert entry["params"]["service"] == f"{tsfmd.url}/fracast-fc"


def check_columns(reply, return_conf, rows=ROWS):
    assert "msg" not in reply, reply.get("msg")
    assert reply["rows"] == rows
    columns = reply["res"]
    assert len(columns) == (4 if return_conf else 2)
    assert all(len(column) == rows for column in columns)
    _, values = series()
    start = taosd_forecast("x", 0)["start"]
    assert columns[0] == [start + i * 1000 for i in range(rows)]
    return columns


def test_forecast_with_intervals_is_tsfmds_answer(anode, reference):
    ts, values, lower, upper = check_columns(anode["answer"]["forecasts"][0], 1)
    assert values == reference["output"]
    assert lower == reference["lower"] and upper == reference["upper"]
    assert all(lo <= v <= hi for lo, v, hi in zip(lower, values, upper))


def test_forecast_without_intervals_has_two_columns(anode, reference):
    _, values = check_columns(anode["answer"]["forecasts"][1], 0)
    assert values == reference["output"]
    _, values = check_columns(anode["answer"]["forecasts"][7], 0)  # 'FRACAST-FC' lowered
    assert values == reference["output"]


def test_builtin_name_reaches_tsfmd_through_the_config(anode, reference):
    # timemoe-fc is TDgpt's own class; install pointed its URL at tsfmd's /timemoe-fc
    _, values, *_ = check_columns(anode["answer"]["forecasts"][2], 1)
    assert values == reference["output"]


def test_host_option_overrides_the_url_per_query(anode, reference, tsfmd):
    _, values, *_ = check_columns(anode["answer"]["forecasts"][3], 1)
    assert values == reference["output"]
    failed = anode["answer"]["forecasts"][4]
    assert failed["rows"] == -1
    assert f"http://127.0.0.1:{anode['dead']}/fracast-fc" in failed["msg"]
    assert "cannot reach tsfmd" in failed["msg"]


def test_tsfmd_refusals_reach_the_sql_user(anode, tsfmd):
    too_far = anode["answer"]["forecasts"][5]
    assert too_far["rows"] == -1
    assert f"{tsfmd.url}/fracast-short" in too_far["msg"] and "HTTP 400" in too_far["msg"]
    assert "at most 16" in too_far["msg"]
    covariates = anode["answer"]["forecasts"][6]
    assert covariates["rows"] == -1
    assert f"{tsfmd.url}/fracast-fc" in covariates["msg"] and "covariates" in covariates["msg"]


def test_execute_leaves_the_shared_object_untouched(anode, reference):
    with_conf, without = anode["answer"]["direct"]
    assert with_conf["registered_unchanged"] and without["registered_unchanged"]
    assert len(with_conf["res"]) == 4 and len(without["res"]) == 2
    assert all(len(column) == ROWS for column in with_conf["res"] + without["res"])
