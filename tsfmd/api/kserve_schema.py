"""The data types of KServe's open time-series protocol, as pydantic models.

Field names, nesting, types, defaults and which fields are optional follow KServe's own
definitions (kserve/kserve python/kserve/kserve/protocol/rest/timeseries/types.py), so a
KServe client's request validates here and tsfmd's answer validates in the client's models.
Class names carry a `KServe` prefix so the OpenAPI document's schema names stay apart from
the native API's. The models that KServe leaves open (`extra: allow`) are open here too.
"""
from __future__ import annotations

from enum import Enum
from typing import Dict, List, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, RootModel

#: one series: a list of numbers (univariate) or a list of rows (multivariate)
TimeSeries = Union[List[float], List[List[float]]]

_OPEN = ConfigDict(extra="allow")


class KServeFrequency(str, Enum):
    """How far apart two points of a series are; each has a long and a short name."""

    SECOND = "second"
    SECOND_SHORT = "S"
    MINUTE = "minute"
    MINUTE_SHORT = "T"
    HOUR = "hour"
    HOUR_SHORT = "H"
    DAY = "day"
    DAY_SHORT = "D"
    WEEK = "week"
    WEEK_SHORT = "W"
    MONTH = "month"
    MONTH_SHORT = "M"
    QUARTER = "quarter"
    QUARTER_SHORT = "Q"
    YEAR = "year"
    YEAR_SHORT = "Y"


class KServeStatus(str, Enum):
    """The state of a whole answer or of one of its outputs."""

    COMPLETED = "completed"
    ERROR = "error"
    PENDING = "pending"
    PARTIAL = "partial"


class KServeTimeSeriesType(str, Enum):
    UNIVARIATE = "univariate_time_series"
    MULTIVARIATE = "multivariate_time_series"


class KServeError(BaseModel):
    code: Optional[str] = Field(None, description="The HTTP status, as a string (\"400\").")
    message: str = Field(..., description="What is wrong.")
    param: Optional[str] = Field(None, description="The request field at fault, if any.")
    type: str = Field(..., description="A short name for the kind of error.")


class KServeErrorResponse(BaseModel):
    error: KServeError


class KServeTimeSeriesInput(BaseModel):
    model_config = _OPEN

    type: KServeTimeSeriesType = Field(..., description="Univariate or multivariate.")
    name: str = Field(..., description="The series' name; its forecast carries it back.")
    series: TimeSeries = Field(..., description="The observed values, oldest first.")
    frequency: KServeFrequency = Field(..., description="The spacing of the points.")
    start_timestamp: Optional[str] = Field(
        None, description="ISO 8601 time of the first point, e.g. 2024-01-01T00:00:00Z.")


class KServeForecastOptions(BaseModel):
    model_config = _OPEN

    horizon: int = Field(..., description="How many steps to forecast.")
    quantiles: Optional[List[float]] = Field(
        None, description="Quantile levels to forecast, e.g. [0.1, 0.5, 0.9].")


class KServeMetadata(BaseModel):
    model_config = _OPEN


class KServeForecastRequest(BaseModel):
    model_config = _OPEN

    model: str = Field(..., description="The model: a key of tsfmd's registry.")
    inputs: List[KServeTimeSeriesInput] = Field(..., description="The series to forecast.")
    options: KServeForecastOptions = Field(..., description="Horizon and quantiles.")
    metadata: Optional[KServeMetadata] = Field(None, description="The caller's own data.")


class KServeTimeSeriesForecast(BaseModel):
    model_config = _OPEN

    type: KServeTimeSeriesType
    name: str = Field(..., description="The name of the input series.")
    mean_forecast: TimeSeries = Field(..., description="The point forecast, one per step.")
    frequency: KServeFrequency
    start_timestamp: str = Field(
        ..., description="ISO 8601 time of the first forecast step (\"\" when the input "
                         "had no start_timestamp).")
    quantiles: Optional[Dict[str, TimeSeries]] = Field(
        None, description="Level (as written, e.g. \"0.9\") -> the forecast at that level.")


class KServeForecastOutput(BaseModel):
    model_config = _OPEN

    type: str = Field(..., description="Always \"time_series_forecast\".")
    id: str
    status: KServeStatus
    content: List[KServeTimeSeriesForecast] = Field(
        ..., description="The forecast of one input series (empty when it failed).")
    error: Optional[KServeError] = None


class KServeUsage(BaseModel):
    model_config = _OPEN

    prompt_tokens: int = Field(..., description="Points of history the model read.")
    completion_tokens: int = Field(..., description="Points forecast.")
    total_tokens: int


class KServeForecastResponse(BaseModel):
    model_config = _OPEN

    id: str
    created_at: int = Field(..., description="Unix time the answer was made.")
    status: KServeStatus
    error: Optional[KServeError] = None
    model: str
    outputs: List[KServeForecastOutput] = Field(..., description="One per input series.")
    usage: Optional[KServeUsage] = None


class KServeModelList(RootModel[List[str]]):
    """GET /v1/timeseries/models: the names of the models, nothing else."""
