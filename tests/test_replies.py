"""Tests of the checks on device replies (a bad reply fails its device only), hand-made Messages."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)

from flower_eec.protocol.replies import common_metrics, metric_problem, train_reply_problem


def model() -> ArrayRecord:
    return ArrayRecord({"w": Array(np.zeros((2, 3), np.float32)),
                        "n": Array(np.array(0, np.int64))})


def instruction() -> Message:
    return Message(RecordDict(), dst_node_id=5, message_type="train")


def reply(content: dict, to: Message | None = None) -> Message:
    return Message(RecordDict(content), reply_to=to or instruction())


def good_content(**metrics: float) -> dict:
    return {"arrays": ArrayRecord({"w": Array(np.ones((2, 3), np.float32)),
                                   "n": Array(np.array(4, np.int64))}),
            "metrics": MetricRecord({"num-examples": 12, **metrics})}


def metrics_with(weight: object) -> RecordDict:
    # Flower's MetricRecord refuses such values: a stand-in content holds them, as a payload
    # that slipped past Flower's checks would.
    return cast(RecordDict, SimpleNamespace(metric_records={"metrics": {"num-examples": weight}}))


def test_a_valid_reply_has_no_problem() -> None:
    assert train_reply_problem(reply(good_content()), model()) is None


def test_a_valid_reply_without_reference_has_no_problem() -> None:
    assert train_reply_problem(reply(good_content()), None) is None


def test_a_float_number_of_examples_is_accepted() -> None:
    content = good_content()
    content["metrics"] = MetricRecord({"num-examples": 2.5})
    assert train_reply_problem(reply(content), model()) is None


def test_an_error_reply_names_the_reason() -> None:
    error = Message(Error(code=2, reason="boom"), reply_to=instruction())

    problem = train_reply_problem(error, model())

    assert problem is not None
    assert "error reply" in problem
    assert "boom" in problem


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(bad: float) -> None:
    content = good_content()
    w = np.ones((2, 3), np.float32)
    w[1, 2] = bad
    content["arrays"]["w"] = Array(w)

    problem = train_reply_problem(reply(content), model())

    assert problem is not None
    assert "'w'" in problem
    assert "NaN or infinite" in problem


def test_non_finite_values_are_rejected_without_reference() -> None:
    content = good_content()
    content["arrays"]["w"] = Array(np.full((2, 3), np.nan, np.float32))
    assert "NaN" in str(train_reply_problem(reply(content), None))


def test_wrong_shape_is_rejected() -> None:
    content = good_content()
    content["arrays"]["w"] = Array(np.ones((3, 2), np.float32))

    problem = train_reply_problem(reply(content), model())

    assert problem == "array 'w' is float32[3, 2], expected float32[2, 3]"


def test_wrong_dtype_is_rejected() -> None:
    content = good_content()
    content["arrays"]["w"] = Array(np.ones((2, 3), np.float64))

    problem = train_reply_problem(reply(content), model())

    assert problem == "array 'w' is float64[2, 3], expected float32[2, 3]"


def test_missing_key_is_rejected() -> None:
    content = good_content()
    del content["arrays"]["n"]

    problem = train_reply_problem(reply(content), model())

    assert problem == "array keys differ from the model's (missing ['n'], extra [])"


def test_extra_key_is_rejected() -> None:
    content = good_content()
    content["arrays"]["z"] = Array(np.ones(1, np.float32))

    problem = train_reply_problem(reply(content), model())

    assert problem == "array keys differ from the model's (missing [], extra ['z'])"


def test_two_array_records_are_rejected() -> None:
    content = good_content()
    content["more"] = ArrayRecord({"w": Array(np.ones((2, 3), np.float32))})

    assert train_reply_problem(reply(content), model()) == "expected one ArrayRecord, got 2"


def test_no_array_record_is_rejected() -> None:
    content = good_content()
    del content["arrays"]

    assert train_reply_problem(reply(content), model()) == "expected one ArrayRecord, got 0"


def test_missing_number_of_examples_is_rejected() -> None:
    content = good_content()
    content["metrics"] = MetricRecord({"loss": 0.5})

    problem = train_reply_problem(reply(content), model())

    assert problem == "MetricRecord lacks a numeric 'num-examples'"


def test_missing_metric_record_is_rejected() -> None:
    content = good_content()
    del content["metrics"]

    assert train_reply_problem(reply(content), model()) == "expected one MetricRecord, got 0"


def test_two_metric_records_are_rejected() -> None:
    content = good_content()
    content["more"] = MetricRecord({"num-examples": 3})

    assert train_reply_problem(reply(content), model()) == "expected one MetricRecord, got 2"


@pytest.mark.parametrize("weight", [0, 0.0, -1, -3.5, float("nan"), float("inf")])
def test_non_positive_or_non_finite_number_of_examples_is_rejected(weight: float) -> None:
    problem = metric_problem(RecordDict({"metrics": MetricRecord({"num-examples": weight})}))

    assert problem == f"'num-examples' is {weight}, expected a positive number"


@pytest.mark.parametrize("weight", [True, False, "12", [1, 2]])
def test_non_numeric_number_of_examples_is_rejected(weight: object) -> None:
    problem = metric_problem(metrics_with(weight))

    assert problem == "MetricRecord lacks a numeric 'num-examples'"


def test_metric_problem_reads_the_given_key() -> None:
    content = RecordDict({"metrics": MetricRecord({"num-examples": 0, "samples": 4})})

    assert metric_problem(content, "samples") is None
    assert metric_problem(content) is not None


def test_metric_problem_ignores_config_records() -> None:
    content = RecordDict({"metrics": MetricRecord({"num-examples": 4}),
                          "config": ConfigRecord({"num-examples": 0})})

    assert metric_problem(content) is None


def test_common_metrics_strips_keys_not_shared_by_all() -> None:
    a = reply(good_content(loss=1.0, extra=3.0))
    b = reply(good_content(loss=2.0))
    c = reply(good_content(loss=3.0, other=4.0))

    kept = common_metrics([a, b, c])

    assert kept == [a, b, c]
    for message, loss in zip(kept, (1.0, 2.0, 3.0), strict=True):
        metrics = message.content.metric_records["metrics"]
        assert dict(metrics) == {"num-examples": 12, "loss": loss}
    # The arrays travel on untouched.
    np.testing.assert_array_equal(a.content.array_records["arrays"]["w"].numpy(), np.ones((2, 3)))


def test_common_metrics_keeps_records_that_already_agree() -> None:
    a = reply(good_content(loss=1.0))
    b = reply(good_content(loss=2.0))
    before = a.content.metric_records["metrics"]

    common_metrics([a, b])

    assert a.content.metric_records["metrics"] is before
    assert dict(b.content.metric_records["metrics"]) == {"num-examples": 12, "loss": 2.0}


def test_common_metrics_of_nothing_is_nothing() -> None:
    assert common_metrics([]) == []
    assert common_metrics(iter([])) == []
