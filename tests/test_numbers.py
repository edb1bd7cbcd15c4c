"""Extreme numbers over real HTTP: never a 500, never a silently wrong 200.

Every input of the issue's list (and the others found on the way) is sent as raw JSON to
a real tsfmd serving the bundled fracast model, and gets its status and a JSON message;
after each one the daemon still answers a normal forecast. The only 5xx here comes from
`NonFiniteFamily`, a real family defined below that is faulty on purpose (its forecasts
are NaN): a model fault must say the model produced non-finite values.

The magnitudes float32 cannot hold (a counter at 1.7e9 with a small swing, a sine times
1e-12, values near 1e308) must forecast like the plain sine, scaled and shifted: fracast
normalises each series, so f(a*x + b) = a*f(x) + b is the right answer.
"""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import pytest
import requests

from conftest import start_tsfmd
from tsfmd import families
from tsfmd.families.base import Capabilities, Family, Forecast, LoadSpec, SeriesInput

NON_FINITE_FAMILY = "non-finite-test"


class NonFiniteFamily(Family):
    """A faulty model: every forecast is NaN. Not declared affine-equivariant, so tsfmd
    hands it the values as sent and must keep them within float32."""

    name = NON_FINITE_FAMILY

    @classmethod
    def load(cls, spec: LoadSpec) -> "NonFiniteFamily":
        return cls()

    def capabilities(self) -> Capabilities:
        return Capabilities(context_limit=512, horizon_limit=64)

    def forecast(self, batch: Sequence[SeriesInput], horizon: int) -> Forecast:
        return Forecast(point=np.full((len(batch), horizon), np.nan))

    def warm_up(self) -> None:
        pass


MODELS = f"""\
  fc:
    family: fracast
    source: bundled
  faulty:
    family: {NON_FINITE_FAMILY}
    source: none
"""

T = np.arange(200)
SINE = np.sin(T / 6.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    families.register_family(NON_FINITE_FAMILY, f"{__name__}:NonFiniteFamily")
    running = start_tsfmd(tmp_path_factory.mktemp("numbers"), MODELS)
    yield running
    running.stop()
    families._FAMILIES.pop(NON_FINITE_FAMILY, None)  # no public unregister


def post_raw(server, route: str, raw: bytes) -> requests.Response:
    return requests.post(server.url + route, data=raw, timeout=120,
                         headers={"Content-Type": "application/json"})


def numbers(values) -> str:
    return ", ".join(repr(float(v)) for v in values)


def body(input_json: str, next_len: str = "12", extra: str = "") -> bytes:
    return f'{{"input": [{input_json}], "next_len": {next_len}{extra}}}'.encode()


def still_serving(server) -> None:
    assert server.get("/healthz").json() == {"status": "ok"}
    reply = server.post("/fc", {"input": SINE.tolist(), "next_len": 4})
    assert reply.status_code == 200, reply.text


def answer(server, raw: bytes, status: int, route: str = "/fc") -> dict:
    reply = post_raw(server, route, raw)
    assert reply.status_code == status, reply.text
    assert reply.headers["Content-Type"].startswith("application/json")
    payload = reply.json()
    assert payload["status"] == ("success" if status == 200 else "error")
    still_serving(server)
    return payload


def forecast(server, values, conf=None) -> dict:
    extra = "" if conf is None else f', "conf_interval": {conf}'
    return answer(server, body(numbers(values), extra=extra), 200)


HUGE_INT = "1" + "0" * 400  # 401 digits: 1e400, beyond float64
OVER_INT_LIMIT = "7" * 5000  # over Python's 4300-digit int() limit
BEYOND = "beyond the range of a 64-bit float"
SINE_TEXT = numbers(SINE)

REFUSED = [
    ("float literal 1e309", body(SINE_TEXT + ", 1e309"), "the number 1e309, " + BEYOND),
    ("integer of 401 digits", body(SINE_TEXT + ", " + HUGE_INT), BEYOND),
    ("integer over 4300 digits", body(SINE_TEXT + ", " + OVER_INT_LIMIT), "(5000 characters)"),
    ("next_len of 5000 digits", body(SINE_TEXT, OVER_INT_LIMIT), BEYOND),
    ("next_len 1e300", body(SINE_TEXT, "1e300"), "rows (next_len) is 1000000000000000052504760"),
    ("next_len NaN", body(SINE_TEXT, "NaN"), "rows (next_len) must be a positive integer"),
    ("conf_interval of 401 digits", body(SINE_TEXT, extra=', "conf_interval": ' + HUGE_INT),
     BEYOND),
    ("conf_interval NaN", body(SINE_TEXT, extra=', "conf_interval": NaN'),
     "conf (conf_interval) must be a number between 0 and 1"),
    ("100,000 levels of nesting", b"[" * 100_000 + b"]" * 100_000, "nests JSON arrays"),
    ("nesting inside input", body("[" * 500 + "1" + "]" * 500),
     "'input'[0] must be a number, got a list"),
    ("Infinity", body(SINE_TEXT + ", Infinity"), "infinite values at positions [200]"),
    ("-Infinity", body("-Infinity, " + SINE_TEXT), "infinite values at positions [0]"),
    ("a lone surrogate", body(SINE_TEXT + ', "\\ud800"'), "'input'[200] must be a number"),
    ("a forecast beyond float64", body(numbers(np.linspace(1.0e308, 1.79e308, 100))),
     "goes beyond the range of a 64-bit float"),
]


@pytest.mark.parametrize("raw,message", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_numbers_json_or_float64_cannot_hold_are_a_clear_400(server, raw, message):
    assert message in answer(server, raw, 400)["error"]


def test_a_model_answering_non_finite_values_is_a_5xx_that_says_so(server):
    error = answer(server, body(SINE_TEXT), 500, route="/faulty")["error"]
    assert "model faulty produced non-finite values" in error


def test_a_model_reading_float32_refuses_what_float32_cannot_hold(server):
    error = answer(server, body(SINE_TEXT + ", 1e39"), 400, route="/faulty")["error"]
    assert "32-bit floats" in error and "1e+39" in error


# -- what float32 cannot hold forecasts like the plain sine, scaled and shifted ----------


@pytest.fixture(scope="module")
def plain(server):
    return forecast(server, SINE, conf=0.9)


@pytest.mark.parametrize("a,b", [(1.0, 1e8), (1.0, 1.7e9), (1e-12, 0.0), (1e300, 0.0),
                                 (1e-300, 0.0), (1e6, 1e9)])
def test_scaled_and_shifted_sine_forecasts_like_the_sine(server, plain, a, b):
    """sine + 1e8 used to lose its shape, + 1.7e9 came back flat, * 1e-12 was off by
    64-1589x, 1e300 was infinite in float32."""
    got = forecast(server, a * SINE + b, conf=0.9)
    tolerance = 1e-3 * a * SINE.std()
    for key in ("output", "lower", "upper"):
        want = a * np.array(plain[key]) + b
        np.testing.assert_allclose(got[key], want, rtol=0, atol=tolerance, err_msg=key)
    shape = (np.array(got["output"]) - b) / a  # np.std of 1e-300s would underflow
    assert np.std(shape) > 0.1 * np.std(plain["output"])  # not flat
    assert "notes" not in got


def test_integers_of_hundreds_of_digits_are_numbers(server, plain):
    big = [str(int(round(2 + v, 6) * 10**6)) + "0" * 293 for v in SINE]  # 300 digits
    got = answer(server, body(", ".join(big)), 200)
    assert len(big[0]) == 300
    want = (2 + np.array(plain["output"])) * 1e299
    np.testing.assert_allclose(got["output"], want, rtol=0, atol=1e-3 * 1e299 * SINE.std())


def test_one_1e39_among_a_sine_is_kept_and_noted(server):
    """It used to become float32 infinity and be dropped with no note."""
    values = SINE.copy()
    values[150] = 1e39
    got = forecast(server, values)
    assert any("positions [150]" in note and "float32" in note for note in got["notes"])
    assert np.isfinite(got["output"]).all()


def test_values_near_float64s_limit_and_subnormals(server):
    flat = forecast(server, np.full(60, 1.7e308))
    assert flat["output"] == [1.7e308] * 12  # a constant history forecasts the constant
    tiny = forecast(server, SINE * 1e-320)  # subnormal: ~5 significant bits
    assert np.isfinite(tiny["output"]).all() and np.abs(tiny["output"]).max() < 1e-319


def test_missing_literals_are_filled_not_refused(server):
    got = answer(server, body(SINE_TEXT + ", NaN, null, 0.5"), 200)
    assert "filled 2 missing input value(s) at positions [200, 201]" in got["notes"][0]


def test_the_message_is_json_even_for_a_huge_wrong_value(server):
    raw = json.dumps({"input": SINE.tolist() + ["x" * 100_000], "next_len": 3}).encode()
    error = answer(server, raw, 400)["error"]
    assert "'input'[200] must be a number, got a string" in error and len(error) < 200
